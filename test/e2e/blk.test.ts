/**
 * End to end: QEMU 7.2 (TCG) boots the test guest with a vhost-user-blk-pci disk served by our
 * `vhost-user-blk` daemon (a separate node process, as users run it), guest memory in a shared
 * memfd. The guest does O_DIRECT I/O; the image file on the host is checked byte for byte.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, startQemu, vhostUserBlkArgs } from '../helpers/qemu.js';
import { runGuestBlkReadOnly, runGuestBlkWrite } from '../helpers/guest-blk.js';
import { createRawImage, sha256Range } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';
import { startOurDaemon, type OurDaemon } from '../helpers/our-daemon.js';

const MiB = 1024 * 1024;

test('QEMU guest (2 vCPUs) writes and reads our vhost-user-blk (2 queues, O_DIRECT); the image holds the bytes', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourblk');
  const sock = tmp.socketPath('blk');
  let daemon: OurDaemon | undefined;
  const r = await runGuestBlkWrite(t, tmp.file('disk.img'), { size: 64 * MiB, offset: 5 * MiB, length: MiB, numQueues: 2, smp: 2 }, async (image) => {
    // Debug logging names every request, which shows QEMU starting both queues below.
    daemon = await startOurDaemon('blk', sock, ['--blk-file', image, '--num-queues', '2'], t, undefined, { VHOST_USER_LOG: 'debug' });
    return sock;
  });
  assert.ok(daemon !== undefined);
  assert.equal(daemon.proc.exitStatusNow, undefined, `daemon died\n${daemon.proc.diagnostics()}`);
  for (const q of [0, 1]) assert.match(daemon.proc.stderr, new RegExp(`SET_VRING_KICK index=${q} `), `queue ${q} was not started`);
  // SIGTERM: finish in-flight requests, unlink the socket, exit 0.
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.proc.diagnostics());
  assert.equal(existsSync(sock), false, 'socket left behind');
  t.diagnostic(`our blk-rw: QEMU spawn -> VTEST-RESULT ${r.elapsedMs.toFixed(0)} ms`);
});

test('QEMU guest on our vhost-user-blk with packed virtqueues (packed=on): O_DIRECT write and read; the image holds the bytes', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourblkp');
  const sock = tmp.socketPath('blk');
  let daemon: OurDaemon | undefined;
  await runGuestBlkWrite(t, tmp.file('disk.img'), { size: 64 * MiB, offset: 5 * MiB, length: MiB, numQueues: 1, deviceProps: ['packed=on'] }, async (image) => {
    daemon = await startOurDaemon('blk', sock, ['--blk-file', image], t);
    return sock;
  });
  assert.ok(daemon !== undefined);
  assert.match(daemon.proc.stderr, /features negotiated: .*VIRTIO_F_RING_PACKED/, 'the guest drove packed rings');
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.proc.diagnostics());
});

test('read-only vhost-user-blk: the guest sees a read-only disk, its write fails, the image is unchanged', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourblkro');
  await runGuestBlkReadOnly(t, tmp.file('disk.img'), async (image) => {
    const sock = tmp.socketPath('blk');
    await startOurDaemon('blk', sock, ['--blk-file', image, '--read-only'], t);
    return sock;
  });
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
  // The daemon logs the disconnect once it has torn the connection down: alive after that event.
  await daemon.proc.waitForText(/front-end disconnected/, 10_000, () => daemon.proc.stderr);
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
