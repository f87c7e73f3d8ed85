/**
 * End to end: QEMU 7.2 (TCG) boots the test guest with a vhost-user-blk-pci disk served by our
 * `vhost-user-blk` daemon (a separate node process, as users run it), guest memory in a shared
 * memfd. The guest does O_DIRECT I/O; the image file on the host is checked byte for byte.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { startQemu, vhostUserBlkArgs, type QemuHandle, type VtestResult } from '../helpers/qemu.js';
import { createRawImage, readRange, sha256Range } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';
import { raceTimeout } from '../helpers/process.js';
import { startOurDaemon } from '../helpers/our-daemon.js';

const MiB = 1024 * 1024;

async function expectPass(vm: QemuHandle, timeoutMs = 90_000): Promise<VtestResult> {
  const r = await vm.result(timeoutMs);
  assert.ok(r.pass, `guest test failed: ${r.line}\n${vm.diagnostics()}`);
  return r;
}

async function expectCleanExit(vm: QemuHandle): Promise<void> {
  assert.ok(await raceTimeout(vm.exited, 15_000), `QEMU did not exit after the guest powered off\n${vm.diagnostics()}`);
  assert.deepEqual(await vm.exited, { code: 0, signal: null }, vm.diagnostics());
}

test('QEMU guest writes and reads our vhost-user-blk (2 queues, O_DIRECT); the image holds the bytes', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourblk');
  const image = tmp.file('disk.img');
  const size = 64 * MiB;
  await createRawImage(image, size, 0xa5);
  const sock = tmp.socketPath('blk');
  const daemon = await startOurDaemon('blk', sock, ['--blk-file', image, '--num-queues', '2'], t);
  const offset = 5 * MiB;
  const length = MiB;
  const vm = await startQemu({ test: 'blk-rw', params: { offset, size: length, bs: 65536 }, args: vhostUserBlkArgs(sock, { numQueues: 2 }), t });
  const r = await expectPass(vm);
  assert.equal(r.details.disk_bytes, String(size));
  assert.equal(r.details.ro, '0');
  assert.equal(await sha256Range(image, offset, length), r.details.sha256, 'image bytes differ from what the guest wrote');
  const before = await readRange(image, offset - 65536, 65536);
  const after = await readRange(image, offset + length, 65536);
  assert.ok(before.every((b) => b === 0xa5) && after.every((b) => b === 0xa5), 'bytes outside the written range changed');
  await expectCleanExit(vm);
  assert.equal(daemon.proc.exitStatusNow, undefined, `daemon died\n${daemon.proc.diagnostics()}`);
  // SIGTERM: finish in-flight requests, unlink the socket, exit 0.
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.proc.diagnostics());
  assert.equal(existsSync(sock), false, 'socket left behind');
  t.diagnostic(`our blk-rw: QEMU spawn -> VTEST-RESULT ${r.elapsedMs.toFixed(0)} ms`);
});

test('read-only vhost-user-blk: the guest sees a read-only disk, its write fails, the image is unchanged', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourblkro');
  const image = tmp.file('disk.img');
  const size = 16 * MiB;
  await createRawImage(image, size, 0x3c);
  const whole = await sha256Range(image, 0, size);
  const sock = tmp.socketPath('blk');
  await startOurDaemon('blk', sock, ['--blk-file', image, '--read-only'], t);
  const vm = await startQemu({ test: 'blk-ro', params: { size: 65536 }, args: vhostUserBlkArgs(sock), t });
  const r = await expectPass(vm);
  assert.equal(r.details.ro, '1');
  assert.match(r.details.write ?? '', /^failed/);
  assert.equal(r.details.sha256, await sha256Range(image, 0, 65536));
  await expectCleanExit(vm);
  assert.equal(await sha256Range(image, 0, size), whole, 'read-only image was modified');
});

test('QEMU killed mid-I/O: our daemon survives and serves a second QEMU', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourblkkill');
  const image = tmp.file('disk.img');
  await createRawImage(image, 16 * MiB);
  const sock = tmp.socketPath('blk');
  const daemon = await startOurDaemon('blk', sock, ['--blk-file', image, '--num-queues', '2'], t);
  const vm1 = await startQemu({ test: 'blk-stress', params: { span: 8 * MiB }, args: vhostUserBlkArgs(sock, { numQueues: 2 }), t });
  await vm1.waitFor(/^VTEST-PROGRESS blk-stress iter=3\n/m, 90_000);
  vm1.kill('SIGKILL');
  assert.equal((await vm1.exited).signal, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(daemon.proc.exitStatusNow, undefined, `daemon died with its front-end\n${daemon.proc.diagnostics()}`);
  const offset = 9 * MiB;
  const length = MiB;
  const vm2 = await startQemu({ test: 'blk-rw', params: { offset, size: length, bs: 65536 }, args: vhostUserBlkArgs(sock, { numQueues: 2 }), t });
  const r = await expectPass(vm2);
  assert.equal(await sha256Range(image, offset, length), r.details.sha256);
  await expectCleanExit(vm2);
  assert.match(daemon.proc.stderr, /connection 2/, 'second front-end connection was served');
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.proc.diagnostics());
});
