import { GuestMemoryError, MAX_ADDRESS, checkAddress, hex } from './errors.js';

/** Placeholders for windows not created yet (zero length, so every bounds check sends them to the slow path). */
const EMPTY_U8 = new Uint8Array(0);
const EMPTY_DV = new DataView(new ArrayBuffer(0));

/** Distance between the starts of consecutive backing windows (2 GiB), as in sys `Mapping`. */
export const WINDOW_STRIDE = 2 ** 31;

/**
 * Host memory behind a guest region. Structurally compatible with sys `Mapping`: window `i`
 * starts at byte `i * WINDOW_STRIDE` of the backing and every window but the last is at least
 * `WINDOW_STRIDE` bytes long (sys windows are up to 4 GiB), so any range of at most 2 GiB lies inside
 * window `floor(start / WINDOW_STRIDE)` (or the last window).
 *
 * A backing that provides `window(i)` and `windowCount` is read lazily: a region only creates views
 * of the windows it touches, so a huge sparse region costs nothing up front.
 */
export interface RegionBacking {
  /** Overlapping ArrayBuffer windows over the backing; detached (byteLength 0) once unmapped. */
  readonly windows: readonly ArrayBuffer[];
  /** Number of windows; required together with `window`. */
  readonly windowCount?: number;
  /** Window i, created on demand (preferred over `windows` when present). */
  window?(index: number): ArrayBuffer;
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
  /**
   * @internal Byte views of each backing window (cached so lookups do not allocate). A window not
   * used yet holds the shared empty placeholder; {@link windowFor} creates it on first use.
   */
  readonly u8: Uint8Array[];
  /** @internal DataViews of each backing window for scalar access (same lazy rule as `u8`). */
  readonly dv: DataView[];
  /** Set when the front-end truncated the file behind this region (see onGuestMemoryFault). */
  poisoned = false;
  /** @internal Opaque owner given to mapGuestRegion (the connection handler that mapped it). */
  owner: unknown = undefined;
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
    const n = backing.window !== undefined && backing.windowCount !== undefined ? backing.windowCount : backing.windows.length;
    if (n === 0) throw new GuestMemoryError('invalid', 'backing has no windows');
    this.guestPhysAddr = guestPhysAddr;
    this.size = size;
    this.end = guestPhysAddr + size;
    this.userAddr = userAddr;
    this.mmapOffset = mmapOffset;
    this.backing = backing;
    this.backingOffset = backingOffset;
    this.u8 = new Array<Uint8Array>(n).fill(EMPTY_U8);
    this.dv = new Array<DataView>(n).fill(EMPTY_DV);
    // The windows holding the region's first and last byte are checked now, so a backing that is too
    // short (or already unmapped) is refused at construction as before; the others on first use.
    this.materialize(Math.min(Math.floor(backingOffset / WINDOW_STRIDE), n - 1));
    this.materialize(Math.min(Math.floor((backingOffset + size - 1) / WINDOW_STRIDE), n - 1));
  }

  /** Creates the views of window `w` (the backing's window is created on demand too). */
  private materialize(w: number): void {
    const b = this.backing;
    const n = this.u8.length;
    const ab = b.window !== undefined && b.windowCount !== undefined ? b.window(w) : b.windows[w];
    const needed = w < n - 1 ? WINDOW_STRIDE : b.length - w * WINDOW_STRIDE;
    if (ab === undefined || ab.byteLength < needed) {
      const len = ab?.byteLength ?? 0;
      throw new GuestMemoryError(len === 0 ? 'unmapped' : 'invalid', `backing window ${w} is ${len} bytes, needs ≥ ${needed}`);
    }
    this.u8[w] = new Uint8Array(ab);
    this.dv[w] = new DataView(ab);
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
    let u8 = this.u8[w] as Uint8Array;
    if (o - w * WINDOW_STRIDE + len > u8.length) {
      if (this.released) throw new GuestMemoryError('unmapped', `region ${hex(this.guestPhysAddr)} is no longer mapped`);
      if (u8 === EMPTY_U8) {
        // First use of this window: the only allocation, once per window.
        this.materialize(w);
        u8 = this.u8[w] as Uint8Array;
        if (o - w * WINDOW_STRIDE + len <= u8.length) return w;
      }
      if (u8.length === 0) throw new GuestMemoryError('unmapped', `region ${hex(this.guestPhysAddr)} is no longer mapped`);
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
