/**
 * Reconnect, vhost-user-net: a QEMU guest keeps sending on a virtio-net NIC served by our
 * `vhost-user-net --loopback` (guest test net-reconnect: ARP requests looped back), while the test
 * SIGKILLs the daemon between rounds and restarts it on the same socket. QEMU
 * (`-chardev socket,...,reconnect=1`) reconnects each time and traffic resumes: the guest sees
 * delays, not errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, startQemu } from '../helpers/qemu.js';
import { makeTempDir } from '../helpers/tmp.js';
import { startOurDaemon, type OurDaemon } from '../helpers/our-daemon.js';

const RESTARTS = 3;

test('reconnect: vhost-user-net SIGKILLed and restarted 3 times while the guest sends; QEMU reconnects and traffic resumes each time', { timeout: 300_000 }, async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'netrc');
  const sock = tmp.socketPath('net');
  const start = (): Promise<OurDaemon> => startOurDaemon('net', sock, ['--loopback'], t);
  let daemon = await start();
  const vm = await startQemu({
    test: 'net-reconnect',
    // The guest pauses 3 s after each round: the restart lands there, so each next round's
    // traffic must go through the restarted daemon.
    params: { rounds: RESTARTS + 1, wait: 60, pause: 3 },
    // vectors=0: see vhostUserNetArgs (QEMU 7.2 TCG and MSI-X on vhost-user NICs).
    args: ['-chardev', `socket,id=vunc0,path=${sock},reconnect=1`, '-netdev', 'type=vhost-user,id=vun0,chardev=vunc0,queues=1',
      '-device', 'virtio-net-pci,netdev=vun0,romfile=,vectors=0'],
    t,
  });
  for (let round = 1; round <= RESTARTS; round++) {
    await vm.waitFor(new RegExp(`^VTEST-PROGRESS net-reconnect round=${round} `, 'm'), 120_000);
    daemon.proc.signal('SIGKILL');
    assert.equal((await daemon.exited).signal, 'SIGKILL');
    daemon = await start();
  }
  const r = await expectPass(vm, 180_000);
  await expectCleanExit(vm);
  // The last daemon carried the final round's frames: its per-queue counters, logged when QEMU
  // went away, show requests.
  await daemon.proc.waitForText(/front-end disconnected/, 10_000, () => daemon.proc.stderr);
  assert.match(daemon.proc.stderr, /queue \d+: .*requests=[1-9]/, daemon.proc.diagnostics());
  t.diagnostic(`net-reconnect: ${RESTARTS} restarts; guest tx ${r.details.tx_packets} rx ${r.details.rx_packets}`);
});
