/**
 * Crash, with QEMU: a guest runs concurrent O_DIRECT writers of random patterns (guest test
 * blk-writers) on a vhost-user-blk disk served by our `vhost-user-blk` daemon, which the test
 * stops at least 10 times at random moments (SIGKILL, or SIGTERM) and restarts on the same socket.
 * QEMU (`-chardev socket,...,reconnect=1`) reconnects, hands the new daemon the inflight area
 * (INFLIGHT_SHMFD), and the guest sees delays, not errors: every slot reads back as last written,
 * and the image holds what the guest read (host and guest sha256 agree). Split and packed rings.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, startQemu } from '../helpers/qemu.js';
import { createRawImage, sha256Range } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';
import { startOurDaemon, type OurDaemon } from '../helpers/our-daemon.js';

const MiB = 1024 * 1024;
const RESTARTS = 10;
const WRITERS = 8;
const SLOTS = 4;
/** Enough writes that the guest is still writing after the 10th restart on a quiet, fast machine too. */
const ITERS = 48;
/** Bytes per write: large enough that a write is several descriptors and often in flight at a kill. */
const BS = 128 * 1024;

async function reconnectRun(t: TestContext, signal: 'SIGKILL' | 'SIGTERM', packed: boolean): Promise<void> {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, `blkrc${packed ? 'p' : ''}`);
  const image = tmp.file('disk.img');
  await createRawImage(image, 8 * MiB);
  const sock = tmp.socketPath('blk');
  const start = (): Promise<OurDaemon> => startOurDaemon('blk', sock, ['--blk-file', image], t);
  let daemon = await start();
  const vm = await startQemu({
    test: 'blk-writers',
    params: { writers: WRITERS, slots: SLOTS, iters: ITERS, bs: BS },
    args: ['-chardev', `socket,id=vub0,path=${sock},reconnect=1`, '-device', `vhost-user-blk-pci,chardev=vub0,num-queues=1${packed ? ',packed=on' : ''}`],
    smp: 2,
    t,
  });
  await vm.waitFor(/^VTEST-PROGRESS blk-writers /m, 60_000);
  const logs: string[] = [];
  const began = performance.now();
  for (let i = 0; i < RESTARTS; i++) {
    // QEMU reconnected and restarted the ring: the writers' requests flow again.
    await daemon.proc.waitForText(/queue 0 started/, 30_000, () => daemon.proc.stderr);
    // A random moment while they do: just after some writer finished a write (the others are
    // usually mid-request then), plus a random delay that picks the moment (nothing is checked
    // after it).
    const seen = vm.output.length;
    await vm.proc.waitForText(/VTEST-PROGRESS blk-writers /, 30_000, () => vm.output.slice(seen));
    await new Promise((r) => setTimeout(r, Math.random() * 150));
    assert.doesNotMatch(vm.output, /VTEST-RESULT/, `the guest finished after only ${i} restarts: raise ITERS`);
    daemon.proc.signal(signal);
    const st = await daemon.exited;
    assert.equal(signal === 'SIGKILL' ? st.signal : st.code, signal === 'SIGKILL' ? 'SIGKILL' : 0, daemon.proc.diagnostics());
    logs.push(daemon.proc.stderr);
    daemon = await start();
  }
  const restartsMs = performance.now() - began;
  const r = await expectPass(vm, 120_000);
  await expectCleanExit(vm);
  logs.push(daemon.proc.stderr);
  const span = WRITERS * SLOTS * BS;
  assert.equal(r.details.span, String(span));
  assert.equal(await sha256Range(image, 0, span), r.details.sha256, 'the image holds what the guest read back');
  // Every daemon, the first and each restarted one, negotiated inflight tracking and got the area.
  logs.forEach((log, i) => {
    assert.match(log, /protocol features negotiated: .*VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD/, `daemon ${i}: INFLIGHT_SHMFD negotiated`);
    assert.match(log, /inflight area (allocated|set)/, `daemon ${i}: inflight area received`);
    if (packed) assert.match(log, /features negotiated: .*VIRTIO_F_RING_PACKED/, `daemon ${i}: packed rings`);
  });
  const resubmitted = logs.flatMap((l) => [...l.matchAll(/resubmitting (\d+) request/g)].map((m) => Number(m[1])));
  t.diagnostic(`${RESTARTS} ${signal} restarts in ${(restartsMs / 1000).toFixed(1)} s; ${r.details.writes} writes, ${r.details.slots_checked} slots verified; ` +
    `requests resubmitted after restarts: [${resubmitted.join(', ')}]`);
}

test('reconnect: vhost-user-blk SIGKILLed 10 times at random moments under 8 concurrent O_DIRECT writers; QEMU reconnects, inflight requests are resubmitted, every block reads back correct', { timeout: 300_000 }, async (t) => {
  await reconnectRun(t, 'SIGKILL', false);
});

test('reconnect: vhost-user-blk stopped with SIGTERM 10 times under concurrent O_DIRECT writers; every block reads back correct', { timeout: 300_000 }, async (t) => {
  await reconnectRun(t, 'SIGTERM', false);
});

test('reconnect: packed virtqueues (packed=on), vhost-user-blk SIGKILLed 10 times under concurrent O_DIRECT writers; every block reads back correct', { timeout: 300_000 }, async (t) => {
  await reconnectRun(t, 'SIGKILL', true);
});
