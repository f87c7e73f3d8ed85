// Dirty-page logging for live migration, against the real devices (blk over a RAM disk, rng) served
// by the daemon: our Frontend starts logging the way QEMU does (SET_LOG_FD, SET_LOG_BASE,
// SET_FEATURES with VHOST_F_LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG) and the whole bitmap is
// compared bit for bit with the pages the device wrote. Logging off again: not one bit more.
// Hostile logs (smaller than guest memory, beyond their file, a used-ring log address outside the
// log) are refused with a clear error and the connection keeps serving.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend, VhostUserRequestFailedError } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupPackedQueue, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon, type VhostUserBackend } from '../../src/backend/index.js';
import { RamDisk, VhostUserBlkBackend, VIRTIO_BLK_T_IN } from '../../src/devices/blk/index.js';
import { VhostUserRngBackend } from '../../src/devices/rng/index.js';
import { LoopbackLink, VhostUserNetBackend } from '../../src/devices/net/index.js';
import { ProtocolFeature, VHOST_VRING_F_LOG, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VHOST_F_LOG_ALL, VIRTIO_F_RING_PACKED } from '../../src/virtio/features.js';
import { packedRingLayout, splitRingLayout, type PackedQueueDriver } from '../../src/queue/index.js';
import { CapturingLogger } from './fixtures/proto-device.js';

const PAGE = 0x1000;
const MEM = 1 << 20;
const RING = 0x10000;
const RING1 = 0x14000;
const LOG_BYTES = 4096;
const bit = (n: number): bigint => 1n << BigInt(n);

interface Rig {
  fe: Frontend;
  mem: FrontendMemory;
  q: FrontendQueue | FrontendQueue<PackedQueueDriver>;
  /** Queue 1 (split), when asked for. */
  q1: FrontendQueue | null;
  features: bigint;
  logger: CapturingLogger;
  usedGpa: number;
  usedBytes: number;
  bits: Uint8Array;
  logFd: number;
  logEvent: number;
}

async function rig(t: TestContext, dev: VhostUserBackend, packed = false, twoQueues = false): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'vu-dirty-'));
  const sock = join(dir, 'd.sock');
  const logger = new CapturingLogger();
  const daemon = new VhostUserDaemon('dirty', dev, { logger });
  daemon.serve(sock);
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  const mem = new FrontendMemory(MEM);
  const logFd = sys.memfdCreate('dirty-log');
  sys.ftruncate(logFd, LOG_BYTES);
  const logMap = sys.mmap(logFd, 0, LOG_BYTES);
  const logEvent = sys.eventfd();
  const wantProtocolFeatures = protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.LOG_SHMFD) |
    protocolFeatureMask(ProtocolFeature.MQ) | protocolFeatureMask(ProtocolFeature.CONFIG);
  const n = await negotiate(fe, { wantProtocolFeatures, wantFeatures: packed ? ~bit(VHOST_F_LOG_ALL) : ~(bit(VHOST_F_LOG_ALL) | bit(VIRTIO_F_RING_PACKED)) });
  await fe.setMemTable(mem.regions());
  const q = packed ? await setupPackedQueue(fe, mem, 0, 64, RING, { enable: true }) : await setupQueue(fe, mem, 0, 64, RING, { enable: true });
  const q1 = twoQueues ? await setupQueue(fe, mem, 1, 64, RING1, { enable: true }) : null;
  t.after(async () => {
    fe.close();
    q.close();
    q1?.close();
    await daemon.stop();
    mem.close();
    logMap.unmap();
    sys.close(logFd);
    sys.close(logEvent);
    rmSync(dir, { recursive: true, force: true });
  });
  const usedGpa = packed ? packedRingLayout(64, RING).descGpa : splitRingLayout(64, RING).usedGpa;
  const usedBytes = packed ? 64 * 16 : 6 + 8 * 64;
  return { fe, mem, q, q1, features: n.features, logger, usedGpa, usedBytes, bits: new Uint8Array(logMap.windows[0]!), logFd, logEvent };
}

/** Starts logging in QEMU's order (vhost_migration_log): log fd, log base, features, ring addresses. */
async function startLogging(r: Rig): Promise<void> {
  await r.fe.setLogFd(r.logEvent);
  await r.fe.setLogBase({ mmapSize: BigInt(LOG_BYTES), mmapOffset: 0n }, r.logFd);
  await r.fe.setFeatures(r.features | bit(VHOST_F_LOG_ALL));
  await setAddr(r, 1 << VHOST_VRING_F_LOG);
  if (r.q1 !== null) {
    const l = splitRingLayout(64, RING1);
    await r.fe.setVringAddr({ index: 1, flags: 1 << VHOST_VRING_F_LOG, descUserAddr: r.mem.uva(l.descGpa), availUserAddr: r.mem.uva(l.availGpa),
      usedUserAddr: r.mem.uva(l.usedGpa), logGuestAddr: BigInt(l.usedGpa) });
  }
}

function setAddr(r: Rig, flags: number, logGpa = r.usedGpa): Promise<void> {
  const l = r.q.driver instanceof Object && 'driverGpa' in r.q.driver ? packedRingLayout(64, RING) : null;
  const s = splitRingLayout(64, RING);
  return r.fe.setVringAddr({
    index: 0, flags,
    descUserAddr: r.mem.uva(l?.descGpa ?? s.descGpa),
    availUserAddr: r.mem.uva(l?.driverGpa ?? s.availGpa),
    usedUserAddr: r.mem.uva(l?.deviceGpa ?? s.usedGpa),
    logGuestAddr: BigInt(logGpa),
  });
}

/** The bitmap QEMU expects: one bit per page of each range. */
function expected(ranges: ReadonlyArray<readonly [number, number]>): Uint8Array {
  const e = new Uint8Array(LOG_BYTES);
  for (const [gpa, len] of ranges) {
    for (let p = Math.floor(gpa / PAGE); p <= Math.floor((gpa + len - 1) / PAGE); p++) e[p >> 3]! |= 1 << (p & 7);
  }
  return e;
}

function dirtyPages(bits: Uint8Array): string[] {
  const out: string[] = [];
  bits.forEach((b, i) => { for (let k = 0; k < 8; k++) if ((b >> k) & 1) out.push(`0x${((i * 8 + k) * PAGE).toString(16)}`); });
  return out;
}

/** A virtio-blk read of `len` bytes into `dataGpa`, status byte at `statusGpa`. */
async function blkRead(r: Rig, dataGpa: number, len: number, statusGpa: number): Promise<void> {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(VIRTIO_BLK_T_IN, 0);
  r.mem.memory.write(0x80000, hdr);
  r.q.driver.addChain([{ gpa: 0x80000, len: 16 }], [{ gpa: dataGpa, len }, { gpa: statusGpa, len: 1 }]);
  r.q.kick();
  assert.equal((await r.q.nextUsed()).len, len + 1);
}

for (const packed of [false, true]) {
  test(`dirty log (blk, ${packed ? 'packed' : 'split'} ring): exactly the written data pages, the status byte and the used ring; nothing once logging stops`, async (t) => {
    const r = await rig(t, new VhostUserBlkBackend({ disk: new RamDisk({ size: 1 << 20 }), logger: new CapturingLogger() }), packed);
    await blkRead(r, 0x41800, 0x1800, 0x45020);
    assert.deepEqual(dirtyPages(r.bits), [], 'nothing is logged before logging starts');
    await startLogging(r);
    await blkRead(r, 0x41800, 0x1800, 0x45020);
    assert.deepEqual(dirtyPages(r.bits), dirtyPages(expected([[0x41800, 0x1800], [0x45020, 1], [r.usedGpa, r.usedBytes]])));
    assert.ok((sys.eventfdRead(r.logEvent) ?? 0n) >= 1n, 'the SET_LOG_FD eventfd was signalled after the log update');
    // Migration ends (or is cancelled): QEMU clears VHOST_F_LOG_ALL and the ring log flag.
    await r.fe.setFeatures(r.features);
    await setAddr(r, 0);
    r.bits.fill(0);
    await blkRead(r, 0x61000, 0x1000, 0x62020);
    assert.deepEqual(dirtyPages(r.bits), [], 'logging off: nothing marked');
    assert.equal(sys.eventfdRead(r.logEvent), null, 'and no log signal');
    assert.deepEqual(r.logger.lines, []);
  });
}

test('dirty log (rng): the random bytes\' pages and the used ring are marked, nothing else', async (t) => {
  const r = await rig(t, new VhostUserRngBackend({ logger: new CapturingLogger() }));
  await startLogging(r);
  r.q.driver.addChain([], [{ gpa: 0x30ff0, len: 0x20 }, { gpa: 0x50000, len: 8 }]);
  r.q.kick();
  assert.equal((await r.q.nextUsed()).len, 0x28);
  assert.deepEqual(dirtyPages(r.bits), dirtyPages(expected([[0x30ff0, 0x20], [0x50000, 8], [r.usedGpa, r.usedBytes]])));
});

test('dirty log (net, loopback link): the received frame\'s buffer pages and both used rings are marked, the transmitted frame\'s are not', async (t) => {
  const dev = new VhostUserNetBackend({});
  new LoopbackLink(dev);
  const r = await rig(t, dev, false, true);
  const tx = r.q1 as FrontendQueue;
  await startLogging(r);
  r.q.driver.addChain([], [{ gpa: 0x70800, len: 2048 }]);
  r.q.kick(true);
  const frame = Buffer.alloc(12 + 100);
  Buffer.from('ffffffffffff525400123456', 'hex').copy(frame, 12);
  r.mem.memory.write(0x90000, frame);
  tx.driver.addChain([{ gpa: 0x90000, len: frame.length }], []);
  tx.kick(true);
  assert.equal((await tx.nextUsed()).len, 0);
  assert.equal((await r.q.nextUsed()).len, frame.length, 'looped back into the receive buffer');
  assert.deepEqual(dirtyPages(r.bits), dirtyPages(expected([[0x70800, frame.length], [r.usedGpa, r.usedBytes], [splitRingLayout(64, RING1).usedGpa, 6 + 8 * 64]])));
});

test('dirty log, hostile: a log smaller than guest memory, beyond its file, or a used-ring log address outside it is refused; the connection serves on', async (t) => {
  const r = await rig(t, new VhostUserRngBackend({ logger: new CapturingLogger() }));
  const refused = async (p: Promise<unknown>, what: RegExp, req: string): Promise<void> => {
    const before = r.logger.lines.length;
    await assert.rejects(p, VhostUserRequestFailedError);
    const line = r.logger.lines.slice(before).join(' | ');
    assert.match(line, new RegExp(`${req}( failed|:)`), "logged with the request name");
    assert.match(line, what);
  };
  // 16 bytes of log cover 512 KiB; the guest has 1 MiB.
  await refused(r.fe.setLogBase({ mmapSize: 16n, mmapOffset: 0n }, r.logFd), /covers guest addresses below 0x80000, but guest memory reaches 0x100000/, 'VHOST_USER_SET_LOG_BASE');
  await refused(r.fe.setLogBase({ mmapSize: 4096n, mmapOffset: 4096n }, r.logFd), /dirty log/, 'VHOST_USER_SET_LOG_BASE');
  await refused(r.fe.setLogBase({ mmapSize: 1n << 62n, mmapOffset: 0n }, r.logFd), /log/, 'VHOST_USER_SET_LOG_BASE');
  await refused(r.fe.setLogBase({ mmapSize: 0n, mmapOffset: 0n }, r.logFd), /log area empty/, 'VHOST_USER_SET_LOG_BASE');
  // A good log, then a ring whose used-ring log address lies beyond what it covers (128 MiB).
  await r.fe.setLogBase({ mmapSize: BigInt(LOG_BYTES), mmapOffset: 0n }, r.logFd);
  await r.fe.setFeatures(r.features | bit(VHOST_F_LOG_ALL));
  await refused(setAddr(r, 1 << VHOST_VRING_F_LOG, LOG_BYTES * 8 * PAGE - 16), /beyond the 0x1000-byte dirty log/, 'VHOST_USER_SET_VRING_ADDR');
  await setAddr(r, 1 << VHOST_VRING_F_LOG);
  r.q.driver.addChain([], [{ gpa: 0x30000, len: 16 }]);
  r.q.kick();
  assert.equal((await r.q.nextUsed()).len, 16, 'the device still serves');
  assert.deepEqual(dirtyPages(r.bits), dirtyPages(expected([[0x30000, 16], [r.usedGpa, r.usedBytes]])));
});
