/**
 * Dirty-page logging state of one connection (live migration): the log the front-end shared with
 * SET_LOG_BASE, the SET_LOG_FD eventfd, and whether VHOST_F_LOG_ALL is acked.
 *
 * The log is handed to the guest memory (and so to every write path) only while VHOST_F_LOG_ALL
 * is acked: QEMU keeps the last log mapped after migration ends and merely clears the feature, and
 * an unlogged device must pay nothing for logging (one null check per completion).
 * @module
 */
import * as sys from '../sys/index.js';
import { type DirtyLog, type GuestMemory } from '../memory/index.js';
import { VhostUserError } from '../vhost-user/errors.js';

/** Hex for log messages. */
const hex = (n: number): string => `0x${n.toString(16)}`;

/** Owns the mapped dirty log and the log eventfd of a connection. */
export class DirtyLogging {
  private log: DirtyLog | null = null;
  private fd: number | null = null;
  private on = false;

  /** The log writes go to now: the mapped log while VHOST_F_LOG_ALL is acked, else null. */
  get active(): DirtyLog | null {
    return this.on ? this.log : null;
  }

  /** The mapped log, whether logging is on or not (diagnostics and tests). */
  get mapped(): DirtyLog | null {
    return this.log;
  }

  /**
   * SET_LOG_BASE: adopts `log` (already mapped; released on failure) after checking it covers all
   * of `memory`. A log too small for the guest would lose dirty pages silently (or fail every
   * write beyond it), so it is refused with the sizes in the error.
   */
  setBase(log: DirtyLog, memory: GuestMemory): void {
    try {
      checkCovers(log, memory);
    } catch (e) {
      log.unmap();
      throw e;
    }
    log.retain();
    log.notifyFd = this.fd;
    const old = this.log;
    this.log = log;
    old?.release();
  }

  /** SET_LOG_FD: signals `fd` (borrowed: duplicated here) after the log was updated. */
  setFd(fd: number): void {
    const own = sys.dup(fd);
    // Never block the daemon on a front-end's full pipe: the signal is advisory.
    sys.setNonBlocking(own, true);
    if (this.fd !== null) sys.close(this.fd);
    this.fd = own;
    if (this.log !== null) this.log.notifyFd = own;
  }

  /** VHOST_F_LOG_ALL acked or not (SET_FEATURES); returns true when the active log changed. */
  setEnabled(on: boolean): boolean {
    const before = this.active;
    this.on = on;
    return this.active !== before;
  }

  /**
   * Checks that a used ring logged at `logGpa` (VHOST_VRING_F_LOG) lies inside the log, as the spec
   * requires ("the bit offset of the last byte of the ring must fall within the size").
   */
  checkUsedLog(vring: number, logGpa: number, bytes: number): void {
    const log = this.log;
    if (log === null || logGpa + bytes <= log.coveredBytes) return;
    throw new VhostUserError('out-of-range', '', `vring ${vring}: used ring log address ${hex(logGpa)}+${hex(bytes)} is beyond the ` +
      `${hex(log.size)}-byte dirty log (covers ${hex(log.coveredBytes)})`);
  }

  /** Releases the log and the eventfd (the connection ended). */
  close(): void {
    const log = this.log;
    this.log = null;
    this.on = false;
    if (log !== null) log.notifyFd = null;
    log?.release();
    if (this.fd !== null) sys.close(this.fd);
    this.fd = null;
  }
}

/** Throws `out-of-range` when some guest address of `memory` is beyond what `log` covers. */
export function checkCovers(log: DirtyLog, memory: GuestMemory): void {
  let end = 0;
  for (const r of memory.regions) end = Math.max(end, r.guestPhysAddr + r.size);
  if (end > log.coveredBytes) {
    throw new VhostUserError('out-of-range', '', `dirty log of ${hex(log.size)} bytes covers guest addresses below ${hex(log.coveredBytes)}, ` +
      `but guest memory reaches ${hex(end)} (needs at least ${hex(Math.ceil(end / (8 * 0x1000)))} bytes)`);
  }
}
