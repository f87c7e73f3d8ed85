/**
 * Proves the end-to-end harness: the test guest boots under QEMU/TCG and reports through its
 * serial console, and a virtio-blk disk served over vhost-user by the C reference backend
 * (qemu-storage-daemon) is written and read by the guest with O_DIRECT, checked against the image
 * bytes on the host. Backends written in this project swap in for qemu-storage-daemon.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, ensureGuest, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, startQemu, vhostUserBlkArgs, vhostUserNetArgs } from '../helpers/qemu.js';
import { runGuestBlkReadOnly, runGuestBlkWrite } from '../helpers/guest-blk.js';
import { startTestpmdVhost } from '../helpers/dpdk.js';
import { createRawImage, startStorageDaemon, type StorageDaemon } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

test('guest boots under TCG and reports PASS for vtest=boot', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const t0 = performance.now();
  const guest = await ensureGuest();
  const buildMs = performance.now() - t0;
  const vm = await startQemu({ test: 'boot', guest, t });
  await vm.waitFor(/^VTEST-BEGIN boot\n/m, 60_000);
  const r = await expectPass(vm);
  assert.equal(r.name, 'boot');
  assert.match(r.details.uptime ?? '', /^\d+\.\d+$/);
  assert.equal(r.details.cpus, '1');
  // No module may fail to load: later device tests depend on every one of them.
  assert.doesNotMatch(vm.output, /VTEST-WARN/, vm.diagnostics());
  await expectCleanExit(vm);
  t.diagnostic(`kernel ${guest.kernelVersion}; ensureGuest ${buildMs.toFixed(0)} ms; ` +
    `QEMU spawn -> VTEST-RESULT ${r.elapsedMs.toFixed(0)} ms; guest uptime at result ${r.details.uptime} s`);
});

test('an unknown guest test reports FAIL (the harness can fail)', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const vm = await startQemu({ test: 'no-such-test', t });
  const r = await vm.result();
  assert.equal(r.pass, false);
  assert.equal(r.details.reason, 'no-such-test');
  await expectCleanExit(vm);
});

test('vhost-user-blk via qemu-storage-daemon: guest O_DIRECT write/read matches the image bytes', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'qemu-storage-daemon')) return;
  const tmp = makeTempDir(t, 'blkrw');
  let qsd: StorageDaemon | undefined;
  const r = await runGuestBlkWrite(t, tmp.file('disk.img'), { size: 64 * MiB, offset: 3 * MiB, length: MiB, numQueues: 2 }, async (image) => {
    qsd = await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), numQueues: 2, t });
    return qsd.socketPath;
  });
  assert.ok(qsd !== undefined);
  assert.equal(qsd.proc.exitStatusNow, undefined, `qemu-storage-daemon died\n${qsd.proc.diagnostics()}`);
  t.diagnostic(`blk-rw: QEMU spawn -> VTEST-RESULT ${r.elapsedMs.toFixed(0)} ms`);
});

test('read-only vhost-user-blk: guest reads the image, its writes fail, the image is unchanged', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'qemu-storage-daemon')) return;
  const tmp = makeTempDir(t, 'blkro');
  await runGuestBlkReadOnly(t, tmp.file('disk.img'), async (image) =>
    (await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), readOnly: true, t })).socketPath);
});

test('virtio-rng: rng-read.sh reads entropy from the virtio device', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const vm = await startQemu({ test: 'rng-read', params: { size: 4096 }, args: ['-device', 'virtio-rng-pci'], t });
  const r = await expectPass(vm);
  assert.match(r.details.rng_current ?? '', /^virtio_rng/);
  assert.equal(r.details.bytes, '4096');
  await expectCleanExit(vm);
});

test('vhost-user-net via testpmd (io loopback): guest virtio-net frames go out and come back', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'dpdk-testpmd')) return;
  const tmp = makeTempDir(t, 'net');
  const pmd = await startTestpmdVhost({ socketPath: tmp.socketPath('net'), forwardMode: 'io', t });
  const vm = await startQemu({ test: 'net-link', args: vhostUserNetArgs(pmd.socketPath), t });
  const r = await expectPass(vm);
  await expectCleanExit(vm);
  await pmd.stop();
  const st = pmd.forwardStats();
  assert.ok(st, `testpmd printed no statistics\n${pmd.proc.diagnostics()}`);
  // The frames the guest counted were seen, and returned, by the reference backend.
  assert.ok(st.rxPackets >= Number(r.details.tx_packets), `guest tx ${r.details.tx_packets}, testpmd rx ${st.rxPackets}`);
  assert.ok(st.txPackets >= Number(r.details.rx_packets), `guest rx ${r.details.rx_packets}, testpmd tx ${st.txPackets}`);
  t.diagnostic(`net-link: guest tx ${r.details.tx_packets} rx ${r.details.rx_packets}; testpmd rx ${st.rxPackets} tx ${st.txPackets}`);
});

test('blk-stress: SIGKILL of QEMU mid-I/O leaves the backend alive and stoppable', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'qemu-storage-daemon')) return;
  const tmp = makeTempDir(t, 'blkst');
  const image = tmp.file('disk.img');
  await createRawImage(image, 16 * MiB);
  const qsd = await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), t });
  const vm = await startQemu({ test: 'blk-stress', params: { span: 8 * MiB }, args: vhostUserBlkArgs(qsd.socketPath), t });
  await vm.waitFor(/^VTEST-PROGRESS blk-stress iter=3\n/m, 60_000);
  vm.kill('SIGKILL');
  const st = await vm.exited;
  assert.equal(st.signal, 'SIGKILL');
  assert.doesNotMatch(vm.output, /VTEST-RESULT/, 'stress loop ended on its own');
  // The backend must survive its frontend vanishing mid-request...
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(qsd.proc.exitStatusNow, undefined, `qemu-storage-daemon died with its frontend\n${qsd.proc.diagnostics()}`);
  // ...and shut down cleanly afterwards.
  const qst = await qsd.stop();
  assert.equal(qst.signal === 'SIGKILL', false, `qemu-storage-daemon needed SIGKILL\n${qsd.proc.diagnostics()}`);
});
