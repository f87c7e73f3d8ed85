// Device-state transfer (DEVICE_STATE) between two real daemons: our Frontend plays both QEMUs
// (QEMU 7.2 never sends SET_DEVICE_STATE_FD). The source blk daemon's driver-set config
// (writethrough) is saved through a pipe-like socketpair, moved by the test, and loaded into a
// fresh daemon, which then reports the same config. A stream with one byte flipped, a truncated
// one, a wrong phase, a state of another disk size and an unsupported device are refused with a
// clear error through CHECK_DEVICE_STATE / the SET_DEVICE_STATE_FD reply; no fd is leaked.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend, VhostUserRequestFailedError } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon, type VhostUserBackend } from '../../src/backend/index.js';
import { RamDisk, VhostUserBlkBackend, VIRTIO_BLK_CONFIG_OFFSETS, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH } from '../../src/devices/blk/index.js';
import { VhostUserRngBackend } from '../../src/devices/rng/index.js';
import { DeviceStateDirection, DeviceStatePhase, ProtocolFeature, hasProtocolFeature, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { decodeDeviceState, encodeDeviceState } from '../../src/backend/device-state.js';
import { CapturingLogger } from './fixtures/proto-device.js';

const pf = protocolFeatureMask;
const WANT = pf(ProtocolFeature.DEVICE_STATE) | pf(ProtocolFeature.REPLY_ACK) | pf(ProtocolFeature.CONFIG);

interface Side { fe: Frontend; logger: CapturingLogger; protocolFeatures: bigint }

async function daemon(t: TestContext, dev: VhostUserBackend): Promise<Side> {
  const dir = mkdtempSync(join(tmpdir(), 'vu-state-'));
  const sock = join(dir, 'd.sock');
  const logger = new CapturingLogger();
  const d = new VhostUserDaemon('state', dev, { logger });
  d.serve(sock);
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  t.after(async () => {
    fe.close();
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const n = await negotiate(fe, { wantProtocolFeatures: WANT });
  return { fe, logger, protocolFeatures: n.protocolFeatures ?? 0n };
}

const blk = (size = 1 << 20): VhostUserBlkBackend => new VhostUserBlkBackend({ disk: new RamDisk({ size }), logger: new CapturingLogger() });

/** Reads `fd` (non-blocking, the test's end of the channel) until EOF, without blocking the loop the daemon runs on. */
function readAll(fd: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const parts: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    const w = sys.watchFd(fd, sys.POLLIN, () => {
      try {
        for (;;) {
          const r = sys.recvmsg(fd, buf, 0);
          if (r === null) return;
          if (r.bytes === 0) { w.close(); resolve(Buffer.concat(parts)); return; }
          parts.push(buf.slice(0, r.bytes));
        }
      } catch (e) { w.close(); reject(e as Error); }
    });
  });
}

/** Saves the state of `src` the way a source front-end does: pipe end to the back-end, read to EOF, check. */
async function save(src: Side): Promise<Uint8Array> {
  const [mine, theirs] = sys.socketpair();
  try {
    assert.equal(await src.fe.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, theirs), null, 'the back-end uses our channel');
  } finally {
    sys.close(theirs);
  }
  const bytes = await readAll(mine);
  sys.close(mine);
  await src.fe.checkDeviceState();
  return bytes;
}

/** Loads `bytes` into `dst` as a destination front-end does: write them, close our end, check. */
async function load(dst: Side, bytes: Uint8Array): Promise<void> {
  const [mine, theirs] = sys.socketpair();
  try {
    await dst.fe.setDeviceStateFd(DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, theirs);
  } finally {
    sys.close(theirs);
  }
  assert.equal(sys.sendmsg(mine, bytes), bytes.length);
  sys.close(mine);
  await dst.fe.checkDeviceState();
}

async function writebackByte(s: Side): Promise<number> {
  return (await s.fe.getConfig(VIRTIO_BLK_CONFIG_OFFSETS.writeback, 1))[0]!;
}

test('device state: blk config moves from one daemon to a fresh one through SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE', async (t) => {
  const before = sys.openFdCount();
  const src = await daemon(t, blk());
  const dst = await daemon(t, blk());
  assert.ok(hasProtocolFeature(src.protocolFeatures, ProtocolFeature.DEVICE_STATE), 'blk offers DEVICE_STATE');
  assert.ok((await src.fe.getFeatures() & (1n << BigInt(VIRTIO_BLK_F_CONFIG_WCE))) !== 0n);
  assert.ok((await src.fe.getFeatures() & (1n << BigInt(VIRTIO_BLK_F_FLUSH))) !== 0n);
  // The driver switched the source to writethrough; the fresh destination starts in writeback.
  await src.fe.setConfig(VIRTIO_BLK_CONFIG_OFFSETS.writeback, Uint8Array.of(0));
  assert.equal(await writebackByte(src), 0);
  assert.equal(await writebackByte(dst), 1);
  const stream = await save(src);
  assert.deepEqual(JSON.parse(Buffer.from(decodeDeviceState(stream)).toString()), { version: 1, writeback: 0, capacity: 2048, numQueues: 1, readOnly: false });
  await load(dst, stream);
  assert.equal(await writebackByte(dst), 0, 'the destination took over the writethrough mode');
  assert.deepEqual(src.logger.lines, []);
  assert.deepEqual(dst.logger.lines, []);
  src.fe.close();
  dst.fe.close();
  await Promise.all([src.fe.closed(), dst.fe.closed()]);
  t.after(() => assert.equal(sys.openFdCount(), before, 'fd leak'));
});

test('device state, hostile: a flipped byte, a truncated stream, another disk\'s state, a wrong phase; then a good load still works', async (t) => {
  const src = await daemon(t, blk());
  const dst = await daemon(t, blk());
  const good = await save(src);
  const refused = async (bytes: Uint8Array, why: RegExp): Promise<void> => {
    const mark = dst.logger.lines.length;
    await assert.rejects(load(dst, bytes), (e: unknown) => e instanceof VhostUserRequestFailedError && e.request === 'VHOST_USER_CHECK_DEVICE_STATE');
    assert.match(dst.logger.lines.slice(mark).join(' | '), why);
  };
  const flipped = Uint8Array.from(good);
  flipped[20] = flipped[20]! ^ 0x01;
  await refused(flipped, /VHOST_USER_CHECK_DEVICE_STATE failed .*checksum mismatch/);
  await refused(good.subarray(0, good.length - 5), /announces \d+ payload bytes but carries/);
  await refused(new Uint8Array(0), /shorter than its 48-byte frame/);
  const other = await daemon(t, blk(2 << 20));
  await refused(await save(other), /source capacity 4096 differs from this device's 2048/);
  await refused(encodeDeviceState(Buffer.from('{"version":9}')), /blk state version 9/);
  // Only the STOPPED phase exists: another one is refused in the SET_DEVICE_STATE_FD reply.
  const [a, b] = sys.socketpair();
  await assert.rejects(dst.fe.setDeviceStateFd(DeviceStateDirection.LOAD, 7 as DeviceStatePhase, b), VhostUserRequestFailedError);
  sys.close(a);
  sys.close(b);
  await assert.rejects(dst.fe.checkDeviceState(), VhostUserRequestFailedError, 'nothing to check');
  await load(dst, good);
});

test('device state: a device without saveState/loadState (rng) does not offer DEVICE_STATE', async (t) => {
  const s = await daemon(t, new VhostUserRngBackend({ logger: new CapturingLogger() }));
  assert.equal(hasProtocolFeature(await s.fe.getProtocolFeatures(), ProtocolFeature.DEVICE_STATE), false);
});
