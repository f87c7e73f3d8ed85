/**
 * The zero-allocation path of virtio-blk IN / OUT on an io_uring {@link FileDisk}: the header is
 * read as 32-bit halves (no BigInt), the data buffers are translated to host [address, length]
 * pairs in the slot's preallocated table (no views), the transfer (and a writethrough flush) is
 * staged on the ring with the slot as its completion target (no promise, no closure), and the
 * status byte is written and the request completed through the queue server's bound callback.
 * Everything else (other request types, malformed requests, non-mmap'ed memory, a full ring)
 * takes the promise-based {@link BlkRequestExecutor.execute} path, which handles every error.
 * @module
 */
import type { CompletionCallback, ServingOptions } from '../../backend/index.js';
import type { UringTarget } from '../../sys/uring.js';
import { VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './config.js';
import type { BlkRequestExecutor, BlkRequestSlot } from './request.js';

/** Host ranges one request may use on the fast path (more: the view-based path). */
export const FAST_MAX_RANGES = 32;

/** What the fast path needs from a disk (FileDisk implements it). */
export interface UringCapableDisk {
  uringCanStage(iovCount: number): boolean;
  uringTransfer(write: boolean, pairs: Float64Array, count: number, offset: number, target: UringTarget): boolean;
  uringSync(target: UringTarget): boolean;
  /** Submits what is staged and completes what finished, without waiting (adaptive polling). */
  uringPoll(): boolean;
  /** Optional: the transfer done synchronously when cheaper (see FileDisk.uringInline). */
  uringInline?(write: boolean, pairs: Float64Array, count: number, offset: number, want: number, dsync: boolean): boolean;
}

/**
 * A blk queue's serving options for adaptive polling (`pollUs` 0: none): the spin also reaps the
 * disk's io_uring completions when it has a ring.
 */
export function pollingOptions(pollUs: number, disk: unknown): ServingOptions {
  if (pollUs === 0) return {};
  return { pollUs, pollHook: isUringCapable(disk) ? () => disk.uringPoll() : undefined };
}

/** True when `disk` offers the io_uring fast path. */
export function isUringCapable(disk: unknown): disk is UringCapableDisk {
  return typeof (disk as Partial<UringCapableDisk>).uringTransfer === 'function';
}

const PHASE_DATA = 1;
const PHASE_SYNC = 2;

/** Per-slot state of a fast request; lives on the recycled {@link BlkRequestSlot}. */
export class FastRequest implements UringTarget {
  readonly pairs = new Float64Array(2 * FAST_MAX_RANGES);
  done: CompletionCallback | null = null;
  phase = 0;
  want = 0;
  write = false;
  constructor(private readonly slot: BlkRequestSlot, private readonly exec: BlkRequestExecutor, private readonly disk: UringCapableDisk) {}

  uringComplete(result: number): void {
    const slot = this.slot;
    const exec = this.exec;
    if (this.phase === PHASE_DATA && result === this.want && this.write && exec.writethrough) {
      this.phase = PHASE_SYNC;
      if (this.disk.uringSync(this)) return;
      // Ring full (rare): the threadpool flush, with its promise.
      exec.disk.flush().then(() => this.uringComplete(0), (e: unknown) => this.fail(`flush: ${(e as Error).message}`));
      return;
    }
    let status = VIRTIO_BLK_S_OK;
    if (result < 0) {
      status = exec.reject(slot, VIRTIO_BLK_S_IOERR, `${this.phase === PHASE_SYNC ? 'fdatasync' : this.write ? 'write' : 'read'} failed: errno ${-result}`);
    } else if (this.phase === PHASE_DATA && result !== this.want) {
      // Regular files and block devices only come up short at the end of the backing.
      status = exec.reject(slot, VIRTIO_BLK_S_IOERR, `${this.write ? 'write' : 'read'} transferred ${result} of ${this.want} bytes (backing shrank?)`);
    }
    this.finish(status);
  }

  private fail(reason: string): void {
    this.finish(this.exec.reject(this.slot, VIRTIO_BLK_S_IOERR, reason));
  }

  private finish(status: number): void {
    const done = this.done as CompletionCallback;
    this.done = null;
    this.phase = 0;
    done(this.exec.finishStatus(this.slot, status));
  }

  /**
   * Starts the request of `slot.chain` if it is a well-formed IN / OUT the ring can take now and
   * returns true (it completes through `done`), or its used length when the disk did it inline;
   * returns false, having consumed nothing, otherwise; or the slow path's promise when the header
   * was consumed before the fast path gave up.
   */
  start(done: CompletionCallback): boolean | number | Promise<number> {
    const chain = this.slot.chain;
    const exec = this.exec;
    if (chain.writableBytes < 1 || chain.readableBytes < VIRTIO_BLK_OUTHDR_SIZE) return false;
    const r = chain.reader;
    const w = chain.writer;
    // Header peeked in place: the reader is consumed only once the request is known to be fast.
    const hdr = r.contiguousAddress(VIRTIO_BLK_OUTHDR_SIZE);
    if (hdr < 0 || r.availableBytes !== chain.readableBytes) return false;
    const mem = chain.memory;
    const type = mem.readU32(hdr);
    if (type !== VIRTIO_BLK_T_IN && type !== VIRTIO_BLK_T_OUT) return false;
    const write = type === VIRTIO_BLK_T_OUT;
    if (write && exec.readOnly) return false;
    // Data in the wrong direction and odd lengths are errors the slow path reports.
    if (write ? w.availableBytes !== 1 : chain.readableBytes !== VIRTIO_BLK_OUTHDR_SIZE) return false;
    const len = write ? chain.readableBytes - VIRTIO_BLK_OUTHDR_SIZE : w.availableBytes - 1;
    if (len === 0 || len % VIRTIO_BLK_SECTOR_SIZE !== 0) return false;
    const lo = mem.readU32(hdr + 8);
    const hi = mem.readU32(hdr + 12);
    if (hi >= 0x200000) return false; // ≥ 2^53 bytes: out of range, reported by the slow path
    const sector = hi * 0x1_0000_0000 + lo;
    if (sector > exec.capacity || len > (exec.capacity - sector) * VIRTIO_BLK_SECTOR_SIZE) return false;
    if (!this.disk.uringCanStage(FAST_MAX_RANGES)) return false;
    r.skip(VIRTIO_BLK_OUTHDR_SIZE);
    const n = (write ? r : w).hostSegments(len, this.pairs, 0, FAST_MAX_RANGES);
    // Not mmap'ed memory or too many pieces: the view-based path, after the header.
    if (n < 0) return exec.executeParsed(this.slot, type, BigInt(sector));
    const offset = sector * VIRTIO_BLK_SECTOR_SIZE;
    if (this.disk.uringInline?.(write, this.pairs, n, offset, len, write && exec.writethrough) === true) {
      this.slot.type = type;
      return exec.finishStatus(this.slot, VIRTIO_BLK_S_OK);
    }
    this.done = done;
    this.phase = PHASE_DATA;
    this.want = len;
    this.write = write;
    this.slot.type = type;
    // canStage held and nothing ran since, so staging succeeds; a failure is still answered.
    if (!this.disk.uringTransfer(write, this.pairs, n, offset, this)) this.fail('the ring refused the request');
    return true;
  }
}
