import { GuestMemoryError, MAX_ADDRESS, checkAddress, hex, u64ToNumber } from './errors.js';
import { GuestRegion, WINDOW_STRIDE } from './region.js';
import type { DirtyLog } from './dirty-log.js';
import { hostAddressOf } from '../sys/mapping.js';

/**
 * An immutable snapshot of guest memory: regions sorted by guest-physical address, non-overlapping.
 *
 * Addresses are JS numbers (validated ≤ 2^53 - 1); the `*U64` methods take wire values as bigint.
 * Lookups cache the last region hit and fall back to binary search. Views returned by `translate*`
 * alias guest memory (no copy) and stay valid while the snapshot is held (see GuestMemoryAtomic).
 */
export class GuestMemory {
  /** Regions sorted by guest-physical address. */
  readonly regions: readonly GuestRegion[];
  /** Dirty-page log for live migration, or null when logging is off. */
  readonly dirtyLog: DirtyLog | null;
  // The region of the last lookup (empty range until one hits).
  private lastStart = 0;
  private lastEnd = 0;
  private lastRegion: GuestRegion | null = null;
  private readonly scratch = new DataView(new ArrayBuffer(8));
  private readonly scratchU8 = new Uint8Array(this.scratch.buffer);

  /**
   * Builds a snapshot. Throws GuestMemoryError `overlap` if two regions overlap in guest-physical
   * space. (Zero-size and > 2^53 regions are already rejected by GuestRegion.)
   */
  constructor(regions: readonly GuestRegion[] = [], dirtyLog: DirtyLog | null = null) {
    const sorted = [...regions].sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1] as GuestRegion;
      const cur = sorted[i] as GuestRegion;
      if (cur.guestPhysAddr < prev.end) {
        throw new GuestMemoryError('overlap', `${cur.toString()} overlaps ${prev.toString()}`);
      }
    }
    this.regions = Object.freeze(sorted);
    this.dirtyLog = dirtyLog;
  }

  /** True when the front-end truncated the file behind one of the regions or the dirty log. */
  get poisoned(): boolean {
    for (const r of this.regions) if (r.poisoned) return true;
    return this.dirtyLog?.poisoned ?? false;
  }

  /** Sum of region sizes in bytes. */
  get totalSize(): number {
    let s = 0;
    for (const r of this.regions) s += r.size;
    return s;
  }

  /** Returns a new snapshot with `region` added (throws `overlap` on conflict). */
  withRegionAdded(region: GuestRegion): GuestMemory {
    return new GuestMemory([...this.regions, region], this.dirtyLog);
  }

  /**
   * Returns a new snapshot without the region identified by (guest address, size, user address),
   * as VHOST_USER_REM_MEM_REG identifies it. Throws `out-of-range` when no region matches.
   */
  withRegionRemoved(gpa: number, size: number, userAddr: number): GuestMemory {
    const idx = this.regions.findIndex((r) => r.guestPhysAddr === gpa && r.size === size && r.userAddr === userAddr);
    if (idx < 0) {
      throw new GuestMemoryError('out-of-range', `no region at gpa ${hex(gpa)} size ${hex(size)} uva ${hex(userAddr)}`);
    }
    return new GuestMemory(this.regions.filter((_, i) => i !== idx), this.dirtyLog);
  }

  /** Returns a new snapshot with the same regions and the given dirty log (null turns logging off). */
  withDirtyLog(log: DirtyLog | null): GuestMemory {
    return new GuestMemory(this.regions, log);
  }

  /** The region containing `gpa`, or null. */
  findRegion(gpa: number): GuestRegion | null {
    // Per-packet paths hit the same region again and again: two number compares on this object.
    if (gpa >= this.lastStart && gpa < this.lastEnd) return this.lastRegion;
    const regions = this.regions;
    let lo = 0;
    let hi = regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regions[mid] as GuestRegion;
      if (gpa < r.guestPhysAddr) hi = mid - 1;
      else if (gpa >= r.end) lo = mid + 1;
      else {
        this.lastStart = r.guestPhysAddr;
        this.lastEnd = r.end;
        this.lastRegion = r;
        return r;
      }
    }
    return null;
  }

  /** True when every byte of `[gpa, gpa + len)` is guest memory (possibly across adjacent regions). */
  checkRange(gpa: number, len: number): boolean {
    if (gpa >= this.lastStart && len >= 0 && gpa + len <= this.lastEnd) return Number.isInteger(gpa) && Number.isInteger(len);
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0 || gpa > MAX_ADDRESS + 1 - len) return false;
    let addr = gpa;
    let left = len;
    do {
      const r = this.findRegion(addr);
      if (r === null) return false;
      const n = Math.min(left, r.end - addr);
      addr += n;
      left -= n;
    } while (left > 0);
    return true;
  }

  /** Like {@link checkRange} but throws a GuestMemoryError (`out-of-range`/`overflow`/`invalid`) explaining the failure. */
  assertRange(gpa: number, len: number): void {
    this.validate(gpa, len);
    if (!this.checkRange(gpa, len)) {
      throw new GuestMemoryError('out-of-range', `guest range ${hex(gpa)}+${hex(len)} is not backed by guest memory`);
    }
  }

  /**
   * A view of `[gpa, gpa + len)`. The range must lie inside one region (and, for ranges over 2 GiB,
   * one host window); otherwise throws `spans-regions` (use {@link translateSegments}) or
   * `out-of-range`.
   */
  translate(gpa: number, len: number): Uint8Array {
    const r = this.findRegion(gpa);
    if (r === null || len > r.end - gpa || !(len >= 0)) return this.translateFail(gpa, len);
    const ro = gpa - r.guestPhysAddr;
    const w = r.windowFor(ro, len);
    if (w < 0) {
      throw new GuestMemoryError('spans-regions', `guest range ${hex(gpa)}+${hex(len)} crosses a host window; use translateSegments`);
    }
    const off = r.backingOffset + ro - w * WINDOW_STRIDE;
    return (r.u8[w] as Uint8Array).subarray(off, off + len);
  }

  private translateFail(gpa: number, len: number): never {
    this.validate(gpa, len);
    if (this.checkRange(gpa, len)) {
      throw new GuestMemoryError('spans-regions', `guest range ${hex(gpa)}+${hex(len)} spans several regions; use translateSegments`);
    }
    throw new GuestMemoryError('out-of-range', `guest range ${hex(gpa)}+${hex(len)} is not backed by guest memory`);
  }

  private validate(gpa: number, len: number): void {
    checkAddress(gpa, 'guest address');
    checkAddress(len, 'length');
    if (gpa > MAX_ADDRESS + 1 - len) throw new GuestMemoryError('overflow', `guest range ${hex(gpa)}+${hex(len)} overflows 2^53`);
  }

  /**
   * Views covering `[gpa, gpa + len)` in order, split at region and host-window boundaries
   * (scatter list for readv/writev). Appends to `out` when given. Throws `out-of-range` if any byte
   * is not guest memory.
   */
  translateSegments(gpa: number, len: number, out: Uint8Array[] = []): Uint8Array[] {
    this.validate(gpa, len);
    let addr = gpa;
    let left = len;
    while (left > 0) {
      const r = this.findRegion(addr);
      if (r === null) {
        throw new GuestMemoryError('out-of-range', `guest range ${hex(gpa)}+${hex(len)} is not backed by guest memory at ${hex(addr)}`);
      }
      let n = Math.min(left, r.end - addr);
      const ro = addr - r.guestPhysAddr;
      let w = r.windowFor(ro, n);
      if (w < 0) {
        // Cut at the end of the window that holds the start.
        const o = r.backingOffset + ro;
        w = Math.min(Math.floor(o / WINDOW_STRIDE), r.u8.length - 1);
        n = w * WINDOW_STRIDE + (r.u8[w] as Uint8Array).length - o;
      }
      const off = r.backingOffset + ro - w * WINDOW_STRIDE;
      out.push((r.u8[w] as Uint8Array).subarray(off, off + n));
      addr += n;
      left -= n;
    }
    return out;
  }

  /**
   * Host addresses covering `[gpa, gpa + len)`, appended to `out` as [address, length] pairs from
   * pair index `at` (for io_uring). Returns the next free pair index, or -1 when a part is not in
   * a live mmap'ed region of this thread or more than `max` pairs would be needed (the caller takes
   * its view-based path then). Throws `out-of-range` like {@link translateSegments}. Allocates nothing.
   */
  hostRanges(gpa: number, len: number, out: Float64Array, at: number, max: number): number {
    this.validate(gpa, len);
    let addr = gpa;
    let left = len;
    let k = at;
    while (left > 0) {
      const r = this.findRegion(addr);
      if (r === null) {
        throw new GuestMemoryError('out-of-range', `guest range ${hex(gpa)}+${hex(len)} is not backed by guest memory at ${hex(addr)}`);
      }
      const n = Math.min(left, r.end - addr);
      const ro = addr - r.guestPhysAddr;
      const w = r.windowFor(ro, n);
      if (w < 0 || k >= max) return -1;
      const base = hostAddressOf(r.u8[w] as Uint8Array);
      if (base < 0) return -1;
      out[2 * k] = base + r.backingOffset + ro - w * WINDOW_STRIDE;
      out[2 * k + 1] = n;
      k++;
      addr += n;
      left -= n;
    }
    return k;
  }

  /** Guest-physical address of front-end user address `uva`; `[uva, uva + len)` must lie in one region. */
  uvaToGpa(uva: number, len: number): number {
    checkAddress(uva, 'user address');
    checkAddress(len, 'length');
    for (const r of this.regions) {
      if (uva >= r.userAddr && uva - r.userAddr < r.size) {
        if (len > r.size - (uva - r.userAddr)) {
          throw new GuestMemoryError('spans-regions', `user range ${hex(uva)}+${hex(len)} runs past the end of ${r.toString()}`);
        }
        return r.guestPhysAddr + (uva - r.userAddr);
      }
    }
    throw new GuestMemoryError('out-of-range', `user address ${hex(uva)} is not in any region`);
  }

  /** {@link uvaToGpa} for a wire (u64) user address. */
  uvaToGpaU64(uva: bigint, len: number): number {
    return this.uvaToGpa(u64ToNumber(uva, 'user address'), len);
  }

  /** {@link translate} for a wire (u64) guest address. */
  translateU64(gpa: bigint, len: number): Uint8Array {
    return this.translate(u64ToNumber(gpa, 'guest address'), len);
  }

  /** {@link checkRange} for a wire (u64) guest address; false when it exceeds 2^53. */
  checkRangeU64(gpa: bigint, len: number): boolean {
    return gpa >= 0n && gpa <= BigInt(MAX_ADDRESS) && this.checkRange(Number(gpa), len);
  }

  /** Copies guest memory at `gpa` into `into` (may span regions). */
  read(gpa: number, into: Uint8Array): void {
    if (into.length === 0) return;
    const r = this.findRegion(gpa);
    if (r !== null && into.length <= r.end - gpa) {
      const ro = gpa - r.guestPhysAddr;
      const w = r.windowFor(ro, into.length);
      if (w >= 0) {
        const off = r.backingOffset + ro - w * WINDOW_STRIDE;
        into.set((r.u8[w] as Uint8Array).subarray(off, off + into.length));
        return;
      }
    }
    let pos = 0;
    for (const seg of this.translateSegments(gpa, into.length)) {
      into.set(seg, pos);
      pos += seg.length;
    }
  }

  /** Copies `from` into guest memory at `gpa` (may span regions) and marks the pages dirty if logging. */
  write(gpa: number, from: Uint8Array): void {
    if (from.length === 0) return;
    const r = this.findRegion(gpa);
    let done = false;
    if (r !== null && from.length <= r.end - gpa) {
      const ro = gpa - r.guestPhysAddr;
      const w = r.windowFor(ro, from.length);
      if (w >= 0) {
        (r.u8[w] as Uint8Array).set(from, r.backingOffset + ro - w * WINDOW_STRIDE);
        done = true;
      }
    }
    if (!done) {
      let pos = 0;
      for (const seg of this.translateSegments(gpa, from.length)) {
        seg.set(from.subarray(pos, pos + seg.length));
        pos += seg.length;
      }
    }
    if (this.dirtyLog !== null) this.dirtyLog.markDirty(gpa, from.length);
  }

  /**
   * @internal DataView and byte offset holding `[gpa, gpa + n)` contiguously, or null when the
   * scalar straddles a region/window boundary. Result is returned through `this.dvOff`.
   */
  private scalarView(gpa: number, n: number): DataView | null {
    const r = this.findRegion(gpa);
    if (r === null || n > r.end - gpa) return null;
    const ro = gpa - r.guestPhysAddr;
    const w = r.windowFor(ro, n);
    if (w < 0) return null;
    this.dvOff = r.backingOffset + ro - w * WINDOW_STRIDE;
    return r.dv[w] as DataView;
  }
  private dvOff = 0;

  /**
   * The window holding all of `[gpa, gpa + len)`, without allocating: the range starts at byte
   * {@link bytesOffset} of the returned array. Null when the range is not guest memory or is not
   * contiguous in one window (use {@link read}/{@link translateSegments} then). For hot paths that
   * read a few bytes (a header) where a subarray would cost more than the bytes.
   */
  bytesAt(gpa: number, len: number): Uint8Array | null {
    const r = this.findRegion(gpa);
    if (r === null || len < 0 || len > r.end - gpa) return null;
    const ro = gpa - r.guestPhysAddr;
    const w = r.windowFor(ro, len);
    if (w < 0) return null;
    this.bytesOffset = r.backingOffset + ro - w * WINDOW_STRIDE;
    return r.u8[w] as Uint8Array;
  }
  /** Where the range of the last non-null {@link bytesAt} starts in the array it returned. */
  bytesOffset = 0;

  private slowRead(gpa: number, n: number): DataView {
    this.read(gpa, this.scratchU8.subarray(0, n));
    return this.scratch;
  }

  /** Reads a byte. */
  readU8(gpa: number): number {
    const dv = this.scalarView(gpa, 1);
    if (dv === null) return this.slowRead(gpa, 1).getUint8(0);
    return dv.getUint8(this.dvOff);
  }

  /** Reads a little-endian u16. */
  readU16(gpa: number): number {
    const dv = this.scalarView(gpa, 2);
    if (dv === null) return this.slowRead(gpa, 2).getUint16(0, true);
    return dv.getUint16(this.dvOff, true);
  }

  /** Reads a little-endian u32. */
  readU32(gpa: number): number {
    const dv = this.scalarView(gpa, 4);
    if (dv === null) return this.slowRead(gpa, 4).getUint32(0, true);
    return dv.getUint32(this.dvOff, true);
  }

  /** Reads a little-endian u64 as bigint. */
  readU64(gpa: number): bigint {
    const dv = this.scalarView(gpa, 8);
    if (dv === null) return this.slowRead(gpa, 8).getBigUint64(0, true);
    return dv.getBigUint64(this.dvOff, true);
  }

  private scalarWrite(gpa: number, n: number, put: (dv: DataView, off: number) => void): void {
    const dv = this.scalarView(gpa, n);
    if (dv === null) {
      put(this.scratch, 0);
      this.write(gpa, this.scratchU8.slice(0, n));
      return;
    }
    put(dv, this.dvOff);
    if (this.dirtyLog !== null) this.dirtyLog.markDirty(gpa, n);
  }

  /** Writes a byte. */
  writeU8(gpa: number, v: number): void {
    this.scalarWrite(gpa, 1, (dv, o) => dv.setUint8(o, v));
  }

  /** Writes a little-endian u16. */
  writeU16(gpa: number, v: number): void {
    this.scalarWrite(gpa, 2, (dv, o) => dv.setUint16(o, v, true));
  }

  /** Writes a little-endian u32. */
  writeU32(gpa: number, v: number): void {
    this.scalarWrite(gpa, 4, (dv, o) => dv.setUint32(o, v, true));
  }

  /** Writes a little-endian u64. */
  writeU64(gpa: number, v: bigint | number): void {
    const b = BigInt.asUintN(64, BigInt(v));
    this.scalarWrite(gpa, 8, (dv, o) => dv.setBigUint64(o, b, true));
  }
}
