import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DirtyLog, GuestMemory, GuestMemoryAtomic, GuestMemoryError, GuestRegion, VHOST_LOG_PAGE,
  arrayBufferBacking, mapDirtyLog, mapGuestRegion, u64ToNumber, type RegionBacking,
} from '../../src/memory/index.js';
import { close, ftruncate, memfdCreate, mmap } from '../../src/sys/index.js';

function region(gpa: number, size: number, userAddr = 0x7f00_0000_0000 + gpa): GuestRegion {
  return new GuestRegion({ guestPhysAddr: gpa, size, userAddr, backing: arrayBufferBacking(new ArrayBuffer(size)) });
}

function kindOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof GuestMemoryError) return e.kind;
    throw e;
  }
  return 'no error';
}

/** Backing over an ArrayBuffer that records unmap calls. */
function countingBacking(size: number): RegionBacking & { unmaps: number } {
  const b = { windows: [new ArrayBuffer(size)], length: size, unmaps: 0, unmap(): void { b.unmaps++; } };
  return b;
}

test('translate: inside, last byte, off-by-one at region end, unmapped gaps', () => {
  const mem = new GuestMemory([region(0x1000, 0x1000), region(0x4000, 0x2000)]);
  const v = mem.translate(0x1000, 0x1000);
  assert.equal(v.length, 0x1000);
  v[0x123] = 0xab;
  assert.equal(mem.readU8(0x1123), 0xab);
  assert.equal(mem.translate(0x1fff, 1).length, 1);
  assert.equal(kindOf(() => mem.translate(0x1fff, 2)), 'out-of-range');
  assert.equal(kindOf(() => mem.translate(0x2000, 1)), 'out-of-range');
  assert.equal(kindOf(() => mem.translate(0xfff, 1)), 'out-of-range');
  assert.equal(kindOf(() => mem.translate(0x5fff, 2)), 'out-of-range');
  assert.equal(mem.translate(0x5fff, 1).length, 1);
  assert.equal(mem.checkRange(0x4000, 0x2000), true);
  assert.equal(mem.checkRange(0x4000, 0x2001), false);
  assert.equal(mem.checkRange(0x2000, 0), false);
  assert.equal(kindOf(() => mem.assertRange(0x1000, 0x1001)), 'out-of-range');
  assert.equal(kindOf(() => mem.translate(Number.MAX_SAFE_INTEGER, 2)), 'overflow');
  assert.equal(kindOf(() => mem.translate(-1, 2)), 'invalid');
  assert.equal(mem.totalSize, 0x3000);
});

test('spanning two adjacent regions: translate refuses, translateSegments scatters, read/write and scalars straddle', () => {
  const a = region(0x10000, 0x1000);
  const b = region(0x11000, 0x1000);
  const mem = new GuestMemory([b, a]); // unsorted on purpose
  assert.equal(mem.regions[0], a);
  assert.equal(kindOf(() => mem.translate(0x10ff0, 0x20)), 'spans-regions');
  const segs = mem.translateSegments(0x10ff0, 0x20);
  assert.deepEqual(segs.map((s) => s.length), [0x10, 0x10]);
  const data = Uint8Array.from({ length: 0x20 }, (_, i) => i + 1);
  mem.write(0x10ff0, data);
  const back = new Uint8Array(0x20);
  mem.read(0x10ff0, back);
  assert.deepEqual(back, data);
  assert.equal((segs[1] as Uint8Array)[0], 0x11); // views alias guest memory
  mem.writeU32(0x10ffe, 0xdeadbeef);
  assert.equal(mem.readU32(0x10ffe), 0xdeadbeef);
  mem.writeU64(0x10ffc, 0x0102030405060708n);
  assert.equal(mem.readU64(0x10ffc), 0x0102030405060708n);
  assert.equal(mem.readU16(0x10ffc), 0x0708);
  assert.equal(kindOf(() => mem.translateSegments(0x11ff0, 0x20)), 'out-of-range');
  assert.equal(kindOf(() => mem.readU32(0x11ffe)), 'out-of-range');
});

test('construction rejects overlap, zero size, addresses beyond 2^53', () => {
  assert.equal(kindOf(() => new GuestMemory([region(0, 0x2000), region(0x1fff, 0x10)])), 'overlap');
  assert.equal(kindOf(() => region(0, 0)), 'invalid');
  assert.equal(kindOf(() => new GuestRegion({ guestPhysAddr: 2 ** 53 - 8, size: 16, userAddr: 0, backing: arrayBufferBacking(new ArrayBuffer(16)) })), 'overflow');
  assert.equal(kindOf(() => new GuestRegion({ guestPhysAddr: 0, size: 32, userAddr: 0, backing: arrayBufferBacking(new ArrayBuffer(16)) })), 'out-of-range');
  assert.equal(kindOf(() => u64ToNumber(2n ** 53n)), 'overflow');
  assert.equal(u64ToNumber(2n ** 53n - 1n), Number.MAX_SAFE_INTEGER);
  // Adjacent (touching) regions are fine.
  assert.equal(new GuestMemory([region(0, 0x1000), region(0x1000, 0x1000)]).regions.length, 2);
});

test('uvaToGpa and bigint entry points', () => {
  const mem = new GuestMemory([region(0x0, 0x10000, 0x7f12_3400_0000), region(0x100000, 0x10000, 0x7f55_0000_0000)]);
  assert.equal(mem.uvaToGpa(0x7f12_3400_0010, 16), 0x10);
  assert.equal(mem.uvaToGpa(0x7f55_0000_fff0, 16), 0x10fff0);
  assert.equal(mem.uvaToGpaU64(0x7f55_0000_0000n, 1), 0x100000);
  assert.equal(kindOf(() => mem.uvaToGpa(0x7f55_0000_fff0, 17)), 'spans-regions');
  assert.equal(kindOf(() => mem.uvaToGpa(0x7f00_0000_0000, 1)), 'out-of-range');
  assert.equal(kindOf(() => mem.uvaToGpaU64(2n ** 64n - 1n, 1)), 'overflow');
  assert.equal(mem.translateU64(0x10n, 4).length, 4);
  assert.equal(mem.checkRangeU64(2n ** 60n, 1), false);
});

test('withRegionAdded / withRegionRemoved produce new snapshots', () => {
  const m0 = new GuestMemory([region(0, 0x1000)]);
  const r = region(0x2000, 0x1000, 0x9000);
  const m1 = m0.withRegionAdded(r);
  assert.equal(m0.regions.length, 1);
  assert.equal(m1.regions.length, 2);
  assert.equal(kindOf(() => m1.withRegionAdded(region(0x2800, 0x1000))), 'overlap');
  assert.equal(kindOf(() => m1.withRegionRemoved(0x2000, 0x1000, 0x9001)), 'out-of-range');
  const m2 = m1.withRegionRemoved(0x2000, 0x1000, 0x9000);
  assert.deepEqual(m2.regions.map((x) => x.guestPhysAddr), [0]);
  assert.equal(kindOf(() => m2.translate(0x2000, 1)), 'out-of-range');
});

test('GuestMemoryAtomic: removed region is unmapped only after the last guard is released', () => {
  const bA = countingBacking(0x1000);
  const bB = countingBacking(0x1000);
  const A = new GuestRegion({ guestPhysAddr: 0, size: 0x1000, userAddr: 0x10000, backing: bA });
  const B = new GuestRegion({ guestPhysAddr: 0x1000, size: 0x1000, userAddr: 0x20000, backing: bB });
  const holder = new GuestMemoryAtomic(new GuestMemory([A]));
  holder.withRegionAdded(B);
  const guard = holder.acquire(); // pins {A, B}
  holder.withRegionRemoved(0x1000, 0x1000, 0x20000);
  assert.equal(holder.memory.regions.length, 1);
  assert.equal(bB.unmaps, 0, 'B still used by the guarded snapshot');
  guard.memory.writeU8(0x1000, 7);
  guard.release();
  guard.release(); // idempotent
  assert.equal(bB.unmaps, 1);
  assert.equal(B.isUnmapped, true);
  assert.equal(bA.unmaps, 0, 'A is still current');
  assert.equal(kindOf(() => guard.memory), 'unmapped');
  holder.replace(new GuestMemory());
  assert.equal(bA.unmaps, 1);
  holder.close();
  assert.equal(kindOf(() => holder.acquire()), 'unmapped');
});

test('GuestMemoryAtomic with memfd mappings: a held guard keeps an in-flight view alive', () => {
  const fd = memfdCreate('guard-test');
  try {
    ftruncate(fd, 0x20000);
    const r = mapGuestRegion({ guestPhysAddr: 0n, memorySize: 0x10000n, userAddr: 0x7000_0000n, mmapOffset: 0x10000n }, fd);
    const holder = new GuestMemoryAtomic(new GuestMemory([r]));
    const guard = holder.acquire();
    const view = guard.memory.translate(0x100, 16); // e.g. the target of an fs.readv in flight
    holder.replace(new GuestMemory());
    view.fill(0x5a);
    assert.equal(view[15], 0x5a, 'mapping survives the replace while guarded');
    guard.release();
    assert.equal(view.length, 0, 'view is detached after the last user released it');
    assert.equal(kindOf(() => new GuestMemory([r]).translate(0x100, 1)), 'unmapped');
    holder.close();
  } finally {
    close(fd);
  }
});

test('mapGuestRegion: unaligned mmap offset maps the right bytes of the fd', () => {
  const fd = memfdCreate('offset-test');
  try {
    ftruncate(fd, 0x30000);
    const whole = mmap(fd, 0, 0x30000);
    const wholeU8 = new Uint8Array(whole.windows[0] as ArrayBuffer);
    for (let i = 0; i < 0x30000; i += 0x100) wholeU8[i + 0x34] = (i >> 8) & 0xff;
    const r = mapGuestRegion({ guestPhysAddr: 0x100000n, memorySize: 0x10000n, userAddr: 0x7f00_0000_0000n, mmapOffset: 0x11200n }, fd);
    assert.equal(r.backingOffset, 0x1200);
    const mem = new GuestMemory([r]);
    // gpa 0x100000 is fd offset 0x11200; byte 0x34 of each 0x100 block holds (offset >> 8) & 0xff.
    assert.equal(mem.readU8(0x100034), 0x12);
    assert.equal(mem.readU8(0x100000 + 0xee00 + 0x34), 0x00); // fd offset 0x20034 -> 0x00
    mem.writeU32(0x10fffc, 0xcafef00d);
    assert.equal(new DataView(whole.windows[0] as ArrayBuffer).getUint32(0x211fc, true), 0xcafef00d);
    assert.equal(kindOf(() => mem.translate(0x10fffd, 4)), 'out-of-range');
    r.unmap();
    whole.unmap();
  } finally {
    close(fd);
  }
});

test('6 GiB region over a sparse memfd: windows, 4 GiB crossings, end of region', () => {
  const GiB = 2 ** 30;
  const fd = memfdCreate('big-test');
  try {
    ftruncate(fd, 6 * GiB);
    const r = mapGuestRegion({ guestPhysAddr: BigInt(4 * GiB), memorySize: BigInt(6 * GiB), userAddr: 0x7e00_0000_0000n, mmapOffset: 0n }, fd);
    const mem = new GuestMemory([r, region(0, 0x10000)]);
    const base = 4 * GiB;
    const last = base + 6 * GiB - 1;
    mem.writeU8(last, 0x99);
    assert.equal(mem.translate(last, 1)[0], 0x99);
    assert.equal(kindOf(() => mem.translate(last, 2)), 'out-of-range');
    // Around 4 GiB into the region (a window edge of window 0).
    const edge = base + 4 * GiB - 4;
    mem.writeU64(edge, 0x1122334455667788n);
    assert.equal(mem.readU64(edge), 0x1122334455667788n);
    const v = mem.translate(edge, 8);
    assert.equal(v[0], 0x88);
    assert.equal(v[7], 0x11);
    // 5 GiB in: only reachable through the third window.
    mem.writeU32(base + 5 * GiB + 12, 0xabcdef01);
    assert.equal(mem.readU32(base + 5 * GiB + 12), 0xabcdef01);
    // A 3 GiB range cannot be one view; the scatter list covers it exactly.
    // A 3.5 GiB range starting 1 GiB in crosses the end of window 0: no single view, but the
    // scatter list covers it exactly and its first piece ends at the 4 GiB edge.
    assert.equal(kindOf(() => mem.translate(base + GiB, 3.5 * GiB)), 'spans-regions');
    assert.equal(mem.translate(base + GiB, 3 * GiB).length, 3 * GiB);
    const segs = mem.translateSegments(base + GiB, 3.5 * GiB);
    assert.equal(segs.reduce((s, x) => s + x.length, 0), 3.5 * GiB);
    assert.equal(segs.length, 2);
    const first = segs[0] as Uint8Array;
    assert.equal(first[first.length - 4], 0x88, 'first piece ends at the 4 GiB edge');
    assert.equal((segs[1] as Uint8Array)[3], 0x11);
    r.unmap();
  } finally {
    close(fd);
  }
});

test('DirtyLog: bit per 4 KiB page, ranges crossing bytes, bounds, logging through writes', () => {
  const buf = new ArrayBuffer(64);
  const log = new DirtyLog(arrayBufferBacking(buf), 16, 8); // covers 64 pages
  const bytes = new Uint8Array(buf);
  log.markDirty(0, 1);
  assert.equal(bytes[16], 0b1);
  log.markDirty(3 * VHOST_LOG_PAGE + 4095, 2); // pages 3 and 4
  assert.equal(bytes[16], 0b11001);
  log.markDirty(6 * VHOST_LOG_PAGE, 20 * VHOST_LOG_PAGE); // pages 6..25
  assert.deepEqual([...bytes.subarray(16, 20)], [0b11011001, 0xff, 0xff, 0b11]);
  assert.equal(bytes[15], 0);
  assert.equal(log.isDirty(25 * VHOST_LOG_PAGE), true);
  assert.equal(log.isDirty(26 * VHOST_LOG_PAGE), false);
  assert.equal(kindOf(() => log.markDirty(63 * VHOST_LOG_PAGE, VHOST_LOG_PAGE + 1)), 'out-of-range');
  log.markDirty(63 * VHOST_LOG_PAGE, VHOST_LOG_PAGE);
  assert.equal(bytes[23], 0x80);
  assert.equal(bytes[24], 0);

  const logBuf = new ArrayBuffer(4);
  const mem = new GuestMemory([region(0, 0x20000)]).withDirtyLog(new DirtyLog(arrayBufferBacking(logBuf), 0, 4));
  mem.write(0x5000, new Uint8Array(0x2000)); // pages 5, 6
  mem.writeU16(0x10000, 1); // page 16
  assert.deepEqual([...new Uint8Array(logBuf)], [0b01100000, 0, 1, 0]);
});

test('mapDirtyLog over a memfd with an offset', () => {
  const fd = memfdCreate('log-test');
  try {
    ftruncate(fd, 0x3000);
    const log = mapDirtyLog(fd, 0x100n, 0x2010n);
    log.markDirty(9 * VHOST_LOG_PAGE, 1);
    const m = mmap(fd, 0, 0x3000);
    assert.equal(new Uint8Array(m.windows[0] as ArrayBuffer)[0x2011], 0b10);
    m.unmap();
    log.unmap();
  } finally {
    close(fd);
  }
});

test('a 2^40-byte region over a sparse memfd maps at once; windows are created on first touch only', () => {
  const size = 2 ** 40;
  const fd = memfdCreate('vhu-huge');
  try {
    ftruncate(fd, size);
    const t0 = performance.now();
    const r = mapGuestRegion({ guestPhysAddr: 0x1_0000_0000, memorySize: size, userAddr: 0x7f00_0000_0000, mmapOffset: 0 }, fd);
    const mapMs = performance.now() - t0;
    const mem = new GuestMemory([r]);
    try {
      assert.ok(mapMs < 100, `mapping took ${mapMs.toFixed(1)} ms`);
      const live = (): number => r.u8.filter((u) => u.length > 0).length;
      assert.equal(r.u8.length, 512);
      assert.ok(live() <= 2, `${live()} windows created up front`);
      // Touch three far-apart places, one of them straddling the 2 GiB window stride.
      const at = [0x1_0000_0000 + 2 ** 39 + 3, 0x1_0000_0000 + size - 8, 0x1_0000_0000 + 5 * 2 ** 31 - 2];
      at.forEach((gpa, i) => mem.writeU64(gpa, 0x1122334455667700n + BigInt(i)));
      at.forEach((gpa, i) => assert.equal(mem.readU64(gpa), 0x1122334455667700n + BigInt(i)));
      assert.ok(live() <= 6, `${live()} windows after touching 3 places`);
      // The bytes really are in the file: a second mapping at the same offset sees them.
      const off = 2 ** 39;
      const check = mmap(fd, off, 4096);
      assert.equal(new DataView(check.window(0)).getBigUint64(3, true), 0x1122334455667700n);
      check.unmap();
    } finally {
      r.unmap();
    }
    assert.equal(kindOf(() => mem.readU8(0x1_0000_0000 + 2 ** 38)), 'unmapped', 'an untouched window of an unmapped region');
  } finally {
    close(fd);
  }
});
