import { GuestMemoryError, checkAddress, hex } from './errors.js';
import { eventfdWrite } from '../sys/index.js';
import { WINDOW_STRIDE, type RegionBacking } from './region.js';

/** Granularity of the dirty log: one bit per 4 KiB guest page (VHOST_LOG_PAGE). */
export const VHOST_LOG_PAGE = 0x1000;

/**
 * Dirty-page bitmap shared with the front-end during live migration (VHOST_F_LOG_ALL).
 *
 * Bit `page % 8` of byte `page / 8` (page = gpa / VHOST_LOG_PAGE) is set with an atomic OR because
 * the front-end and other queues may update the same byte concurrently.
 */
export class DirtyLog {
  /** Log backing (usually the mapping of the VHOST_USER_SET_LOG_BASE fd). */
  readonly backing: RegionBacking;
  /** Offset of the log's byte 0 inside the backing. */
  readonly offset: number;
  /** Log size in bytes; covers guest addresses below size * 8 * VHOST_LOG_PAGE. */
  readonly size: number;
  private readonly u8: readonly Uint8Array[];
  /** Set when the front-end truncated the file behind the log (see onGuestMemoryFault). */
  poisoned = false;
  /**
   * VHOST_USER_SET_LOG_FD: an eventfd (borrowed; its owner closes it) signalled by {@link notify}
   * once pages were marked since the last signal, as libvhost-user does. Null: no signal.
   */
  notifyFd: number | null = null;
  private pending = false;
  private refs = 0;
  private released = false;

  /** Throws GuestMemoryError when `[offset, offset + size)` is not inside the backing. */
  constructor(backing: RegionBacking, offset: number, size: number) {
    checkAddress(offset, 'log offset');
    checkAddress(size, 'log size');
    if (offset + size > backing.length || backing.windows.length === 0) {
      throw new GuestMemoryError('out-of-range', `log ${hex(offset)}+${hex(size)} exceeds its backing of ${hex(backing.length)} bytes`);
    }
    this.backing = backing;
    this.offset = offset;
    this.size = size;
    this.u8 = backing.windows.map((w) => new Uint8Array(w));
  }

  /** Exclusive upper bound of the guest addresses this log covers. */
  get coveredBytes(): number {
    return this.size * 8 * VHOST_LOG_PAGE;
  }

  /** Marks every page touched by `[gpa, gpa + len)` dirty. Throws `out-of-range` beyond the log. */
  markDirty(gpa: number, len: number): void {
    if (len === 0) return;
    checkAddress(gpa, 'guest address');
    checkAddress(len, 'length');
    const first = Math.floor(gpa / VHOST_LOG_PAGE);
    const last = Math.floor((gpa + len - 1) / VHOST_LOG_PAGE);
    if (last >= this.size * 8) {
      throw new GuestMemoryError('out-of-range', `dirty range ${hex(gpa)}+${hex(len)} is beyond the ${hex(this.size)}-byte log`);
    }
    this.pending = true;
    let page = first;
    while (page <= last) {
      const byte = Math.floor(page / 8);
      const bit = page % 8;
      // Pages of this byte covered by the range: bits [bit, min(7, bit + last - page)].
      const hiBit = Math.min(7, bit + (last - page));
      const mask = ((0xff >> (7 - hiBit)) & (0xff << bit)) & 0xff;
      this.orByte(byte, mask);
      page += hiBit - bit + 1;
    }
  }

  private orByte(byte: number, mask: number): void {
    const o = this.offset + byte;
    let w = Math.floor(o / WINDOW_STRIDE);
    if (w >= this.u8.length) w = this.u8.length - 1;
    const u8 = this.u8[w] as Uint8Array;
    const i = o - w * WINDOW_STRIDE;
    if (i >= u8.length) throw new GuestMemoryError('unmapped', 'dirty log is no longer mapped');
    Atomics.or(u8, i, mask);
  }

  /**
   * Tells the front-end the log changed (SET_LOG_FD eventfd), when anything was marked since the
   * last call. Called once per batch of completions, after the used ring was updated.
   */
  notify(): void {
    if (!this.pending || this.notifyFd === null) return;
    this.pending = false;
    try {
      eventfdWrite(this.notifyFd, 1);
    } catch {
      // A full counter (nobody reads it) or not an eventfd: the front-end reads the log anyway.
    }
  }

  /** True when the page holding `gpa` is marked dirty (for tests and diagnostics). */
  isDirty(gpa: number): boolean {
    const page = Math.floor(gpa / VHOST_LOG_PAGE);
    if (page >= this.size * 8) return false;
    const o = this.offset + Math.floor(page / 8);
    let w = Math.floor(o / WINDOW_STRIDE);
    if (w >= this.u8.length) w = this.u8.length - 1;
    const u8 = this.u8[w] as Uint8Array;
    return ((Atomics.load(u8, o - w * WINDOW_STRIDE) >> (page % 8)) & 1) === 1;
  }

  /** Counts one more snapshot using this log. */
  retain(): void {
    this.refs++;
  }

  /** Drops one user; unmaps the backing when none is left. */
  release(): void {
    if (this.refs <= 0) return;
    if (--this.refs === 0) this.unmap();
  }

  /** Unmaps the backing now (idempotent). */
  unmap(): void {
    if (this.released) return;
    this.released = true;
    this.backing.unmap?.();
  }
}
