/**
 * VDUSE parts that need no /dev/vduse: the IOTLB cache over real memfds and mmap (the source
 * stands in for VDUSE_IOTLB_GET_FD, handing out fds the way the kernel does), the feature
 * filter, and the errors of VduseDaemon.create on files that are not the VDUSE control device.
 * The daemon against the kernel is covered in the 6.12 guest (test/e2e/kernel-vdpa.test.ts).
 */
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { test } from 'node:test';
import * as sys from '../../src/sys/index.js';
import { mmapDevice } from '../../src/sys/mapping.js';
import { IotlbCache, IotlbMemory, type IotlbSource } from '../../src/kernel/vduse-iotlb.js';
import { VduseDaemon, vduseFeatures } from '../../src/kernel/vduse-daemon.js';
import { VDUSE_ACCESS_RO, VDUSE_ACCESS_RW, VDUSE_ACCESS_WO, type VduseIotlbEntry } from '../../src/kernel/vduse.js';
import { GuestMemoryError } from '../../src/memory/index.js';
import { RamDisk, VhostUserBlkBackend } from '../../src/devices/blk/index.js';
import type { Logger, LogLevel } from '../../src/log.js';

/** An IOTLB of memfd-backed mappings: lookup() dup()s the fd as VDUSE_IOTLB_GET_FD's receive_fd does. */
class MemfdIotlb implements IotlbSource {
  readonly maps: { entry: VduseIotlbEntry; fd: number }[] = [];
  lookups = 0;
  add(start: bigint, size: bigint, perm = VDUSE_ACCESS_RW, fileOffset = 0n): number {
    const fd = sys.memfdCreate('iotlb');
    sys.ftruncate(fd, Number(fileOffset + size));
    this.maps.push({ entry: { offset: fileOffset, start, last: start + size - 1n, perm }, fd });
    return fd;
  }
  lookup(iova: bigint): { fd: number; entry: VduseIotlbEntry } | null {
    this.lookups++;
    const m = this.maps.find((x) => iova >= x.entry.start && iova <= x.entry.last);
    return m === undefined ? null : { fd: sys.dup(m.fd), entry: m.entry };
  }
  close(): void {
    for (const m of this.maps.splice(0)) sys.close(m.fd);
  }
}

class CollectingLogger implements Logger {
  readonly lines: string[] = [];
  log(level: LogLevel, msg: string): void {
    this.lines.push(`${level} ${msg}`);
  }
}

test('IOTLB mappings are fetched on first use, shared by later lookups and dropped on invalidation', (t) => {
  const before = sys.openFdCount();
  const src = new MemfdIotlb();
  const fd = src.add(0x10000n, 0x4000n, VDUSE_ACCESS_RW, 0x2000n);
  src.add(0x14000n, 0x1000n);
  const cache = new IotlbCache(src);
  const mem = new IotlbMemory(cache);
  t.after(() => { cache.clear(); src.close(); });

  assert.equal(cache.regions.length, 0, 'nothing mapped up front');
  mem.writeU32(0x10010, 0xdeadbeef);
  assert.equal(cache.fetched, 1);
  // The write went to the file at the entry's offset: the same memory the kernel maps.
  const check = sys.mmap(fd, 0, 0x6000);
  assert.equal(new DataView(check.windows[0] as ArrayBuffer).getUint32(0x2010, true), 0xdeadbeef);
  check.unmap();
  assert.equal(mem.readU32(0x13ffc), 0);
  assert.equal(src.lookups, 1, 'a held mapping is not looked up again');
  // A range across two adjacent mappings is served in segments.
  const segs = mem.translateSegments(0x13ff0, 0x20);
  assert.deepEqual(segs.map((s) => s.length), [0x10, 0x10]);
  assert.equal(cache.fetched, 2);
  // Nothing mapped there: an ordinary out-of-range error for the queue code.
  assert.throws(() => mem.translate(0x90000, 4), (e: unknown) => e instanceof GuestMemoryError && e.kind === 'out-of-range');
  assert.equal(cache.find(0x90000), null);

  const region = cache.find(0x10000);
  assert.ok(region);
  assert.equal(cache.invalidate(0x14000n, 0x14fffn), 1, 'only the overlapping mapping goes');
  assert.equal(cache.regions.length, 1);
  assert.equal(region.isUnmapped, false);
  cache.clear();
  assert.equal(region.isUnmapped, true, 'cleared mappings are unmapped');
  // After invalidation the next access fetches again.
  assert.equal(mem.readU32(0x10010), 0xdeadbeef);
  assert.equal(cache.fetched, 3);
  cache.clear();
  src.close();
  assert.equal(sys.openFdCount(), before, 'every fd from lookup() was closed after mmap');
});

test('a read-only IOTLB mapping is mapped private: a device write never reaches the driver', (t) => {
  const src = new MemfdIotlb();
  const fd = src.add(0n, 0x1000n, VDUSE_ACCESS_RO);
  const cache = new IotlbCache(src);
  const mem = new IotlbMemory(cache);
  t.after(() => { cache.clear(); src.close(); });
  const view = sys.mmap(fd, 0, 0x1000);
  new Uint8Array(view.windows[0] as ArrayBuffer)[8] = 42;
  assert.equal(mem.readU8(8), 42, 'reads see the driver memory');
  mem.writeU8(9, 7);
  assert.equal(new Uint8Array(view.windows[0] as ArrayBuffer)[9], 0, 'the write stayed private');
  view.unmap();
});

test('unusable IOTLB entries are refused with a log line instead of mapped', (t) => {
  const logger = new CollectingLogger();
  const src = new MemfdIotlb();
  src.add(0x1000n, 0x1000n, VDUSE_ACCESS_WO);
  src.maps.push({ entry: { offset: 0n, start: 0x8000n, last: 0x7000n, perm: VDUSE_ACCESS_RW }, fd: sys.memfdCreate('bad') });
  src.add(0x20000000000000n - 0x1000n, 0x1000n); // its last byte is 2^53 - 1: beyond JS addresses
  const failing: IotlbSource = { lookup: () => { throw new sys.SysError(5, 'ioctl', 'VDUSE_IOTLB_GET_FD'); } };
  const cache = new IotlbCache(src, logger);
  t.after(() => { cache.clear(); src.close(); });
  const before = sys.openFdCount();
  assert.equal(cache.fault(0x1000), null, 'write-only memory cannot be mapped for reading');
  assert.equal(cache.fault(0x20000000000000 - 0x800), null);
  assert.equal(cache.fault(-1), null);
  assert.equal(new IotlbCache(failing, logger).fault(0), null);
  assert.equal(sys.openFdCount(), before, 'refused entries leave no fd behind');
  assert.equal(cache.regions.length, 0);
  assert.ok(logger.lines.some((l) => /not readable/.test(l)), logger.lines.join('\n'));
  assert.ok(logger.lines.some((l) => /below 2\^53/.test(l)), logger.lines.join('\n'));
  assert.ok(logger.lines.some((l) => /VDUSE_IOTLB_GET_FD at IOVA 0x0 failed: .*EIO/.test(l)), logger.lines.join('\n'));
});

test('VDUSE features: the device bits without vhost-user-only ones, plus VERSION_1 and ACCESS_PLATFORM', () => {
  const PROTOCOL = 1n << 30n;
  const LOG_ALL = 1n << 26n;
  const PACKED = 1n << 34n;
  const WCE = 1n << 11n;
  const FLUSH = 1n << 9n;
  const f = vduseFeatures(PROTOCOL | LOG_ALL | PACKED | WCE | FLUSH | (1n << 29n), 2);
  assert.equal(f, FLUSH | (1n << 29n) | (1n << 32n) | (1n << 33n));
  assert.equal(vduseFeatures(WCE, 1) & WCE, WCE, 'bit 11 means something else for other devices');
});

test('VduseDaemon.create fails clearly without a VDUSE control device and leaks no fd', () => {
  const backend = new VhostUserBlkBackend({ disk: new RamDisk({ size: 1 << 20 }) });
  const before = sys.openFdCount();
  assert.throws(() => VduseDaemon.create(backend, { name: 'x', controlPath: '/nonexistent/vduse-control' }), /ENOENT/);
  // Not the VDUSE control device: the first ioctl names itself.
  assert.throws(() => VduseDaemon.create(backend, { name: 'x', controlPath: '/dev/null' }),
    (e: unknown) => e instanceof sys.SysError && e.code === 'ENOTTY' && /VDUSE_SET_API_VERSION/.test(e.message));
  const rng = { numQueues: () => 1, features: () => 0n, deviceType: () => 'rng' };
  assert.throws(() => VduseDaemon.create(rng, { name: 'x', controlPath: '/dev/null' }), /device type 'rng' has no known virtio id/);
  assert.throws(() => VduseDaemon.create({ numQueues: () => 0, features: () => 0n }, { name: 'x', deviceId: 2, controlPath: '/dev/null' }), /0 queues/);
  assert.equal(sys.openFdCount(), before);
});

test('device files without a size map only through mmapDevice, which always guards them', () => {
  const fd = openSync('/dev/zero', 'r+');
  try {
    assert.throws(() => sys.mmap(fd, 0, 4096), (e: unknown) => e instanceof sys.SysError && e.code === 'ENODEV' && /its size cannot be checked/.test(e.message));
    const m = mmapDevice(fd, 0, 8192);
    assert.equal(m.guarded, true, 'the kernel may refuse a page: SIGBUS is recovered');
    const u8 = new Uint8Array(m.windows[0] as ArrayBuffer);
    assert.equal(u8.length, 8192);
    u8[100] = 5;
    assert.equal(u8[100], 5);
    m.unmap();
  } finally {
    closeSync(fd);
  }
});
