import { GuestMemoryError, MAX_ADDRESS, checkAddress, hex } from './errors.js';

/** Distance between the starts of consecutive backing windows (2 GiB), as in sys `Mapping`. */
export const WINDOW_STRIDE = 2 ** 31;

/**
 * Host memory behind a guest region. Structurally compatible with sys `Mapping`: `windows[i]`
 * starts at byte `i * WINDOW_STRIDE` of the backing and every window but the last is at least
 * `WINDOW_STRIDE` bytes long (sys windows are up to 4 GiB), so any range of at most 2 GiB lies inside
 * window `floor(start / WINDOW_STRIDE)` (or the last window).
 */
export interface RegionBacking {
  /** Overlapping ArrayBuffer windows over the backing; detached (byteLength 0) once unmapped. */
  readonly windows: readonly ArrayBuffer[];
  /** Total length of the backing in bytes. */
  readonly length: number;
  /** Releases the backing (munmap). Must be idempotent. */
  unmap?(): void;
}

/** Wraps a plain ArrayBuffer as a backing (tests, or memory that is not shared with a front-end). */
export function arrayBufferBacking(buffer: ArrayBuffer): RegionBacking {
  return { windows: [buffer], length: buffer.byteLength };
}

/** Parameters of {@link GuestRegion}; all addresses are JS numbers ≤ 2^53 - 1. */
export interface GuestRegionOptions {
  /** Guest-physical address of the region's first byte. */
  guestPhysAddr: number;
  /** Region size in bytes (> 0). */
  size: number;
  /** Front-end (QEMU) virtual address of the region's first byte; vring addresses use it. */
  userAddr: number;
  /** mmap offset from the memory-region description (informational once mapped). */
  mmapOffset?: number;
  /** Host memory holding the region. */
  backing: RegionBacking;
  /** Offset of the region's first byte inside `backing` (non-zero when mmap offset was page-rounded). */
  backingOffset?: number;
}

/**
 * One contiguous guest-physical region and its host backing.
 *
 * A region may be shared by several {@link GuestMemory} snapshots; `retain`/`release` count the live
 * snapshots that reference it and the backing is unmapped when the count returns to zero.
 */
export class GuestRegion {
  /** Guest-physical address of the first byte. */
  readonly guestPhysAddr: number;
  /** Size in bytes. */
  readonly size: number;
  /** Guest-physical address one past the last byte. */
  readonly end: number;
  /** Front-end user address of the first byte. */
  readonly userAddr: number;
  /** mmap offset as sent by the front-end. */
  readonly mmapOffset: number;
  /** Host memory. */
  readonly backing: RegionBacking;
  /** Offset of byte 0 of the region inside the backing. */
  readonly backingOffset: number;
  /** @internal Byte views of each backing window (cached so lookups do not allocate). */
  readonly u8: readonly Uint8Array[];
  /** @internal DataViews of each backing window for scalar access. */
  readonly dv: readonly DataView[];
  private refs = 0;
  private released = false;

  constructor(opts: GuestRegionOptions) {
    const { guestPhysAddr, size, userAddr, backing } = opts;
    const mmapOffset = opts.mmapOffset ?? 0;
    const backingOffset = opts.backingOffset ?? 0;
    checkAddress(guestPhysAddr, 'region guest address');
    checkAddress(size, 'region size');
    checkAddress(userAddr, 'region user address');
    checkAddress(mmapOffset, 'region mmap offset');
    checkAddress(backingOffset, 'region backing offset');
    if (size === 0) throw new GuestMemoryError('invalid', `zero-size region at ${hex(guestPhysAddr)}`);
    if (guestPhysAddr > MAX_ADDRESS - size + 1 || userAddr > MAX_ADDRESS - size + 1) {
      throw new GuestMemoryError('overflow', `region ${hex(guestPhysAddr)}+${hex(size)} (user ${hex(userAddr)}) ends beyond 2^53`);
    }
    if (backingOffset + size > backing.length) {
      throw new GuestMemoryError('out-of-range', `region of ${hex(size)} bytes at backing offset ${hex(backingOffset)} exceeds backing length ${hex(backing.length)}`);
    }
    const n = backing.windows.length;
    if (n === 0) throw new GuestMemoryError('invalid', 'backing has no windows');
    for (let i = 0; i < n; i++) {
      const w = backing.windows[i] as ArrayBuffer;
      const needed = i < n - 1 ? WINDOW_STRIDE : backing.length - i * WINDOW_STRIDE;
      if (w.byteLength < needed) {
        throw new GuestMemoryError(w.byteLength === 0 ? 'unmapped' : 'invalid', `backing window ${i} is ${w.byteLength} bytes, needs ≥ ${needed}`);
      }
    }
    this.guestPhysAddr = guestPhysAddr;
    this.size = size;
    this.end = guestPhysAddr + size;
    this.userAddr = userAddr;
    this.mmapOffset = mmapOffset;
    this.backing = backing;
    this.backingOffset = backingOffset;
    this.u8 = backing.windows.map((w) => new Uint8Array(w));
    this.dv = backing.windows.map((w) => new DataView(w));
  }

  /** True when `[gpa, gpa + len)` lies inside this region (len may be 0). */
  contains(gpa: number, len: number): boolean {
    return gpa >= this.guestPhysAddr && gpa - this.guestPhysAddr <= this.size - len && len <= this.size;
  }

  /**
   * @internal Index of the backing window holding `[regionOffset, regionOffset + len)`, or -1 when
   * the range crosses a window boundary (only possible for ranges over 2 GiB).
   * Throws `unmapped` if the backing was released.
   */
  windowFor(regionOffset: number, len: number): number {
    const o = this.backingOffset + regionOffset;
    const n = this.u8.length;
    let w = Math.floor(o / WINDOW_STRIDE);
    if (w >= n) w = n - 1;
    const u8 = this.u8[w] as Uint8Array;
    if (o - w * WINDOW_STRIDE + len > u8.length) {
      if (u8.length === 0 || this.released) throw new GuestMemoryError('unmapped', `region ${hex(this.guestPhysAddr)} is no longer mapped`);
      return -1;
    }
    return w;
  }

  /** True once the backing has been released. */
  get isUnmapped(): boolean {
    return this.released;
  }

  /** Counts one more live snapshot using this region. */
  retain(): void {
    if (this.released) throw new GuestMemoryError('unmapped', `region ${hex(this.guestPhysAddr)} was already unmapped`);
    this.refs++;
  }

  /** Drops one live snapshot; unmaps the backing when none is left. */
  release(): void {
    if (this.refs <= 0) return;
    if (--this.refs === 0) this.unmap();
  }

  /** Unmaps the backing now (idempotent). Stale views become detached. */
  unmap(): void {
    if (this.released) return;
    this.released = true;
    this.backing.unmap?.();
  }

  /** Human-readable description for logs. */
  toString(): string {
    return `GuestRegion[gpa ${hex(this.guestPhysAddr)}..${hex(this.end)} uva ${hex(this.userAddr)} off ${hex(this.mmapOffset)}]`;
  }
}
