/**
 * {@link FileDisk}'s io_uring path: one pooled {@link UringDiskOp} per operation in flight carries
 * its promise callbacks, so a read, write or flush costs its promise and nothing else. Short
 * transfers (EOF, a file shrunk under us) finish on the threadpool path.
 * @module
 */
import { SysError } from '../../sys/index.js';
import { UringEngine, type UringTarget } from '../../sys/uring.js';

/** How a {@link FileDisk} moves data: the kernel's io_uring, or the libuv threadpool. */
export type AioMode = 'io_uring' | 'threads';

/** The remaining part of a short transfer, served by the threadpool path. */
export type ShortTransfer = (write: boolean, views: readonly Uint8Array[], offset: number, done: number) => Promise<void>;

/** One operation in flight on the ring; recycled through the pool of its {@link UringDisk}. */
class UringDiskOp implements UringTarget {
  resolve: (() => void) | null = null;
  reject: ((e: Error) => void) | null = null;
  views: readonly Uint8Array[] = [];
  write = false;
  sync = false;
  offset = 0;
  want = 0;
  constructor(private readonly owner: UringDisk) {}

  /** Bound once: storing the promise callbacks allocates no closure per operation. */
  readonly executor = (resolve: () => void, reject: (e: Error) => void): void => {
    this.resolve = resolve;
    this.reject = reject;
  };

  uringComplete(result: number): void {
    const resolve = this.resolve as () => void;
    const reject = this.reject as (e: Error) => void;
    const { views, write, sync, offset, want } = this;
    this.resolve = null;
    this.reject = null;
    this.views = [];
    this.owner.recycle(this);
    if (result < 0) {
      reject(new SysError(-result, sync ? 'io_uring fdatasync' : write ? 'io_uring writev' : 'io_uring readv'));
    } else if (sync || result >= want) {
      resolve();
    } else {
      this.owner.short(write, views, offset, result).then(resolve, reject);
    }
  }
}

/** io_uring reads, writes and flushes for one fd, falling back per call where the ring cannot take it. */
export class UringDisk {
  private readonly pool: UringDiskOp[] = [];

  constructor(readonly engine: UringEngine, readonly short: ShortTransfer) {}

  /** @internal Returns an op to the pool. */
  recycle(op: UringDiskOp): void {
    this.pool.push(op);
  }

  /**
   * The transfer as a promise, or null when the ring cannot take it (views outside guest-memory
   * mappings, ring full): the caller uses the threadpool then.
   */
  transfer(write: boolean, fd: number, views: readonly Uint8Array[], offset: number, want: number): Promise<void> | null {
    const op = this.pool.pop() ?? new UringDiskOp(this);
    if (!this.engine.transfer(write, fd, views, offset, op)) {
      this.pool.push(op);
      return null;
    }
    op.views = views;
    op.write = write;
    op.sync = false;
    op.offset = offset;
    op.want = want;
    return new Promise<void>(op.executor);
  }

  /** fdatasync through the ring, or null when it is full. */
  flush(fd: number): Promise<void> | null {
    const op = this.pool.pop() ?? new UringDiskOp(this);
    if (!this.engine.sync(fd, true, op)) {
      this.pool.push(op);
      return null;
    }
    op.sync = true;
    op.want = 0;
    return new Promise<void>(op.executor);
  }

  /** Closes the ring (after its operations). */
  close(): void {
    this.engine.close();
  }
}
