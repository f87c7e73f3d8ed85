/**
 * Storage behind a virtio-blk device: the {@link BlockDisk} interface and {@link FileDisk} over a
 * regular file or block device (I/O straight between the fd and guest-memory views, io_uring or
 * the threadpool); the in-memory disk is in ram-disk.ts.
 * @module
 */
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import {
  BLKDISCARD, BLKGETSIZE64, BLKZEROOUT, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  HUGETLBFS_MAGIC, RAMFS_MAGIC, RWF_DSYNC, RWF_NOWAIT, SysError, TMPFS_MAGIC, fallocateAsync, fsType, hostIo, ioctl,
  ioctlRangeAsync,
} from '../../sys/index.js';
import { UringEngine, type UringTarget } from '../../sys/uring.js';
import { UringDisk, type AioMode } from './uring-io.js';
import { ImageLock } from './image-lock.js';

/**
 * A disk as the request executor sees it. Offsets and lengths are bytes; the executor has already
 * checked them against `size`. Every method may run concurrently with others.
 */
export interface BlockDisk {
  /** Size in bytes (the device capacity is `floor(size / 512)` sectors). */
  readonly size: number;
  /** Writes, discards and write-zeroes are refused. */
  readonly readOnly: boolean;
  /** Preferred logical block size in bytes (power of two ≥ 512), reported as `blk_size`. */
  readonly blockSize: number;
  /** Whether `discard` / `writeZeroes(.., true)` may deallocate (config `write_zeroes_may_unmap`). */
  readonly canUnmap: boolean;
  /** Fills `views` in order from `offset` (reads past the end of the backing return zeroes). */
  readv(views: readonly Uint8Array[], offset: number): Promise<void>;
  /** Writes `views` in order at `offset`. */
  writev(views: readonly Uint8Array[], offset: number): Promise<void>;
  /** Makes completed writes stable (fdatasync). */
  flush(): Promise<void>;
  /** Hints that the range is unused; contents afterwards are unspecified. */
  discard(offset: number, length: number): Promise<void>;
  /** Zeroes the range; with `mayUnmap` it may also deallocate it. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  /** Releases the backing (idempotent). */
  close(): Promise<void>;
  /** The image lock, for disks over a file others may open (see {@link ImageLock}). */
  readonly imageLock?: ImageLock;
}

/** Total bytes of `views`. */
export function totalLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

/** The views left after the first `done` bytes (slow path for partial transfers only). */
function remainingViews(views: readonly Uint8Array[], done: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = done;
  for (const v of views) {
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    out.push(skip > 0 ? v.subarray(skip) : v);
    skip = 0;
  }
  return out;
}

function isUnsupported(e: unknown): boolean {
  return e instanceof SysError && (e.code === 'ENOTSUP' || e.code === 'EOPNOTSUPP' || e.code === 'ENOTTY' || e.code === 'EINVAL' || e.code === 'ENOSYS');
}

/** Options of {@link FileDisk.open}. */
export interface FileDiskOptions {
  /** Open O_RDONLY and refuse writes. */
  readOnly?: boolean;
  /** Logical block size to report (default 512). */
  blockSize?: number;
  /**
   * How reads, writes and flushes reach the file (default 'threads'). 'io_uring' falls back to
   * 'threads' when the kernel refuses io_uring (ENOSYS, EPERM): see {@link FileDisk.aio} and
   * {@link FileDisk.aioFallbackReason}.
   */
  aio?: AioMode;
  /** io_uring submission entries (default 256). */
  uringEntries?: number;
  /**
   * With io_uring: whether a request reaching an idle ring is first tried synchronously (see
   * {@link FileDisk.inlineIo}). 'auto' (default) picks 'memory' for tmpfs / ramfs / hugetlbfs
   * images and 'nowait' otherwise; 'off' always uses the ring.
   */
  inlineIo?: InlineIoMode | 'auto';
  /**
   * Live-migration destination: open without taking the image lock; whoever serves the disk takes
   * it ({@link ImageLock.acquire}) before the first I/O, once the source released it.
   */
  deferLock?: boolean;
}

/** Largest chunk written per call when a write-zeroes range must be written out as zeroes. */
const ZERO_CHUNK = 1 << 20;
let zeroChunk: Uint8Array | null = null;

/**
 * Largest transfer done inline ({@link FileDisk.inlineIo}) on the event loop: a copy of this size takes
 * tens of µs, longer ones would hold up the thread's other rings (the ring's workers copy those).
 */
export const INLINE_MAX_BYTES = 256 * 1024;

/** See {@link FileDisk.inlineIo}. */
export type InlineIoMode = 'memory' | 'nowait' | 'off';

/**
 * A disk over a regular file or a block device. Reads and writes go straight between the fd and the
 * caller's views (fs.readv / fs.writev on the libuv threadpool); flush is fdatasync; discard and
 * write zeroes use fallocate (or BLKDISCARD / BLKZEROOUT on block devices), falling back to writing
 * zeroes where the file system cannot.
 */
export class FileDisk implements BlockDisk {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: number;
  /** Opened a block device (size from BLKGETSIZE64; discard/zeroes via BLKDISCARD/BLKZEROOUT). */
  readonly isBlockDevice: boolean;
  private fdValue: number;
  /** The image lock (held unless opened with `deferLock` or released for a migration). */
  imageLock?: ImageLock;
  // Learned at run time: once a mode fails as unsupported it is not tried again.
  private punchOk = true;
  private zeroRangeOk = true;
  private uring: UringDisk | null = null;
  /** Borrowed fd (a worker's view of the main thread's disk): close() leaves the fd open. */
  private borrowed = false;
  /** The data path in use: 'io_uring' only when asked for and the kernel allowed it. */
  aio: AioMode = 'threads';
  /** Why io_uring was asked for but not used (null otherwise). */
  aioFallbackReason: string | null = null;
  /**
   * How a request reaching an idle io_uring is first tried inline, with one synchronous
   * preadv2 / pwritev2 on the event loop, when that saves wake-ups: 'memory' for an image on tmpfs
   * / ramfs / hugetlbfs (io_uring would hand each request to a kernel worker thread; reads and
   * writes up to {@link INLINE_MAX_BYTES}), 'nowait' for other files (one RWF_NOWAIT read per JS
   * turn: a page-cache hit completes inline, a miss goes to the ring), 'off' (always the ring).
   */
  inlineIo: InlineIoMode = 'off';
  /** Requests completed inline (diagnostics, tests). */
  inlineOps = 0;
  /** A nowait read was done inline in this JS turn: the rest of the turn's batch takes the ring. */
  private inlineTurn = false;
  private readonly endInlineTurn = (): void => {
    this.inlineTurn = false;
  };

  private constructor(fd: number, size: number, readOnly: boolean, blockSize: number, isBlockDevice: boolean) {
    this.fdValue = fd;
    this.size = size;
    this.readOnly = readOnly;
    this.blockSize = blockSize;
    this.isBlockDevice = isBlockDevice;
  }

  /** Opens `path` (which must exist) read-write, or read-only with `opts.readOnly`. */
  static open(path: string, opts: FileDiskOptions = {}): FileDisk {
    const readOnly = opts.readOnly ?? false;
    const blockSize = opts.blockSize ?? 512;
    if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0 || blockSize > 1 << 20) {
      throw new RangeError(`block size ${blockSize} is not a power of two in [512, 1 MiB]`);
    }
    const fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    try {
      const st = fs.fstatSync(fd);
      let size: number;
      if (st.isBlockDevice()) {
        const b = new Uint8Array(8);
        ioctl(fd, BLKGETSIZE64, b);
        const big = new DataView(b.buffer).getBigUint64(0, true);
        if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`${path}: device size ${big} exceeds 2^53`);
        size = Number(big);
      } else if (st.isFile()) {
        size = st.size;
      } else {
        throw new Error(`${path} is neither a regular file nor a block device`);
      }
      // Two writers on one image corrupt it: hold a lock while serving (shared for a read-only disk
      // so several readers may coexist, but never beside a writer).
      const lock = new ImageLock(path, !readOnly);
      if (opts.deferLock !== true) lock.acquire();
      const disk = new FileDisk(fd, size, readOnly, blockSize, st.isBlockDevice());
      disk.imageLock = lock;
      if (opts.aio === 'io_uring') disk.startUring(opts.uringEntries ?? 256, opts.inlineIo);
      return disk;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /**
   * A disk over an fd another FileDisk of this process owns (e.g. handed to a worker_thread): no
   * lock is taken, and close() releases only this disk's own io_uring, never the fd.
   */
  static borrow(fd: number, info: { size: number; readOnly: boolean; blockSize: number; isBlockDevice: boolean; aio?: AioMode; uringEntries?: number; inlineIo?: InlineIoMode | 'auto' }): FileDisk {
    const disk = new FileDisk(fd, info.size, info.readOnly, info.blockSize, info.isBlockDevice);
    disk.borrowed = true;
    if (info.aio === 'io_uring') disk.startUring(info.uringEntries ?? 256, info.inlineIo);
    return disk;
  }

  private startUring(entries: number, inline: InlineIoMode | 'auto' = 'auto'): void {
    try {
      this.uring = new UringDisk(new UringEngine(entries), (write, views, offset, done) => this.finishShort(write, views, offset, done));
      this.aio = 'io_uring';
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      this.aioFallbackReason = e.message;
      return;
    }
    if (inline !== 'auto') {
      this.inlineIo = inline;
      return;
    }
    let type = 0;
    try {
      type = fsType(this.fdValue);
    } catch {
      // Unknown file system: the generic nowait attempt, which the kernel refuses if it must.
    }
    this.inlineIo = type === TMPFS_MAGIC || type === RAMFS_MAGIC || type === HUGETLBFS_MAGIC ? 'memory' : 'nowait';
  }

  /**
   * @internal A request's transfer of `want` bytes done synchronously, when that is cheaper than
   * the ring: true when all of it was moved (the caller completes the request at once), false
   * when the ring must take it (a partial transfer is simply redone there).
   *
   * Only while the ring is idle (nothing staged or in flight: low queue depth, where latency is
   * the wake-ups). An image in memory (tmpfs, ramfs, hugetlbfs) cannot wait for a device, yet
   * io_uring hands every tmpfs request to a kernel worker thread (shmem has no nowait reads), which
   * costs a wake-up of that worker and one of this thread per request: copying inline costs a
   * syscall. Elsewhere a read is tried with RWF_NOWAIT, which succeeds on a page-cache hit and
   * returns EAGAIN instead of blocking; a file system that refuses nowait reads is not asked again.
   * There io_uring also completes cached reads inside io_uring_enter, so the only saving is the
   * ring round trip of a lone request: one nowait read per JS turn, the rest of a batch goes to
   * the ring in one io_uring_enter (one syscall per request would cost more at depth).
   * Writes are inline only in memory (RWF_DSYNC when `dsync`, i.e. writethrough). Transfers over
   * {@link INLINE_MAX_BYTES} always use the ring. FileDisk opens images buffered (never O_DIRECT),
   * so a nowait read never waits for a device.
   */
  uringInline(write: boolean, pairs: Float64Array, count: number, offset: number, want: number, dsync: boolean): boolean {
    const mode = this.inlineIo;
    if (mode === 'off' || want > INLINE_MAX_BYTES || this.uring === null || this.uring.engine.busy !== 0 || this.fdValue < 0) return false;
    let flags: number;
    if (mode === 'memory') flags = write && dsync ? RWF_DSYNC : 0;
    else if (write || this.inlineTurn) return false;
    else flags = RWF_NOWAIT;
    let r: number;
    try {
      r = hostIo(this.fdValue, write, pairs, count, offset, flags);
    } catch {
      // A range the addon refuses: the ring path refuses it too, and reports it.
      return false;
    }
    if (r !== want) {
      if (r === -osConstants.errno.EOPNOTSUPP && mode === 'nowait') this.inlineIo = 'off';
      return false;
    }
    if (mode === 'nowait') {
      this.inlineTurn = true;
      queueMicrotask(this.endInlineTurn);
    }
    this.inlineOps++;
    return true;
  }

  /** The rest of a transfer the kernel cut short, on the threadpool path. */
  private async finishShort(write: boolean, views: readonly Uint8Array[], offset: number, done: number): Promise<void> {
    const rest = remainingViews(views, done);
    if (write) await this.writevThreads(rest, offset + done);
    else await this.readvThreads(rest, offset + done);
  }

  /**
   * @internal Zero-allocation io_uring path: whether a transfer of `iovCount` host ranges can be
   * staged now (false on the threadpool path, when closed, or when the ring is full).
   */
  uringCanStage(iovCount: number): boolean {
    return this.uring !== null && this.fdValue >= 0 && this.uring.engine.canStage(iovCount);
  }

  /** @internal Stages a transfer of host [address, length] pairs; see {@link uringCanStage}. */
  uringTransfer(write: boolean, pairs: Float64Array, count: number, offset: number, target: UringTarget): boolean {
    if (this.uring === null || this.fdValue < 0 || (write && this.readOnly)) return false;
    return this.uring.engine.transferHost(write, this.fdValue, pairs, count, offset, target);
  }

  /** @internal Stages an fdatasync through the ring; false when it cannot. */
  uringSync(target: UringTarget): boolean {
    return this.uring !== null && this.fdValue >= 0 && this.uring.engine.sync(this.fdValue, true, target);
  }

  /**
   * @internal For adaptive polling: submits staged io_uring operations and completes those already
   * finished, without a syscall per completion. True when it completed something (always false on
   * the threadpool path).
   */
  uringPoll(): boolean {
    return this.uring !== null && this.uring.engine.poll();
  }

  /** Operations this disk submitted through io_uring (0 on the threadpool path). */
  get uringOps(): number {
    return this.uring?.engine.submitted ?? 0;
  }

  /** The open fd (-1 once closed). */
  get fd(): number {
    return this.fdValue;
  }

  /** Regular files can punch holes; block devices can discard. */
  get canUnmap(): boolean {
    return this.punchOk;
  }

  private liveFd(): number {
    if (this.fdValue < 0) throw new Error('disk is closed');
    return this.fdValue;
  }

  readv(views: readonly Uint8Array[], offset: number): Promise<void> {
    if (this.uring !== null) {
      const p = this.uring.transfer(false, this.liveFd(), views, offset, totalLength(views));
      if (p !== null) return p;
    }
    return this.readvThreads(views, offset);
  }

  writev(views: readonly Uint8Array[], offset: number): Promise<void> {
    if (this.readOnly) return Promise.reject(new Error('disk is read-only'));
    if (this.uring !== null) {
      const p = this.uring.transfer(true, this.liveFd(), views, offset, totalLength(views));
      if (p !== null) return p;
    }
    return this.writevThreads(views, offset);
  }

  private async readvThreads(views: readonly Uint8Array[], offset: number): Promise<void> {
    const fd = this.liveFd();
    const want = totalLength(views);
    let done = await readvAt(fd, views, offset);
    while (done < want) {
      // Short read: the libuv IOV_MAX split, or EOF when the file shrank under us.
      const rest = remainingViews(views, done);
      const n = await readvAt(fd, rest, offset + done);
      if (n === 0) {
        for (const v of rest) v.fill(0);
        return;
      }
      done += n;
    }
  }

  private async writevThreads(views: readonly Uint8Array[], offset: number): Promise<void> {
    if (this.readOnly) throw new Error('disk is read-only');
    const fd = this.liveFd();
    const want = totalLength(views);
    let done = await writevAt(fd, views, offset);
    while (done < want) {
      const n = await writevAt(fd, remainingViews(views, done), offset + done);
      if (n === 0) throw new Error(`writev at ${offset + done} made no progress`);
      done += n;
    }
  }

  flush(): Promise<void> {
    const fd = this.liveFd();
    if (this.uring !== null) {
      const p = this.uring.flush(fd);
      if (p !== null) return p;
    }
    return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
  }

  async discard(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw new Error('disk is read-only');
    if (length === 0 || !this.punchOk) return;
    const fd = this.liveFd();
    try {
      if (this.isBlockDevice) await ioctlRangeAsync(fd, BLKDISCARD, offset, length);
      else await fallocateAsync(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    } catch (e) {
      // Discard is a hint: a backing that cannot deallocate simply keeps the data.
      if (!isUnsupported(e)) throw e;
      this.punchOk = false;
    }
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    if (this.readOnly) throw new Error('disk is read-only');
    if (length === 0) return;
    const fd = this.liveFd();
    if (this.isBlockDevice) {
      // BLKZEROOUT falls back to writing zeroes inside the kernel; it never deallocates unless
      // the device guarantees zeroes for discarded blocks.
      await ioctlRangeAsync(fd, BLKZEROOUT, offset, length);
      return;
    }
    if (mayUnmap && this.punchOk) {
      try {
        await fallocateAsync(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
        return;
      } catch (e) {
        if (!isUnsupported(e)) throw e;
        this.punchOk = false;
      }
    }
    if (this.zeroRangeOk) {
      try {
        await fallocateAsync(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
        return;
      } catch (e) {
        if (!isUnsupported(e)) throw e;
        this.zeroRangeOk = false;
      }
    }
    await this.writeZeroBuffers(offset, length);
  }

  /** Last-resort write zeroes: writes a shared zero buffer over the range. */
  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    zeroChunk ??= new Uint8Array(ZERO_CHUNK);
    const z = zeroChunk;
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_CHUNK, length - done);
      await this.writev([n === ZERO_CHUNK ? z : z.subarray(0, n)], offset + done);
      done += n;
    }
  }

  /** @internal Forgets a learned capability (tests exercise the fallbacks). */
  setFallocateSupport(punch: boolean, zeroRange: boolean): void {
    this.punchOk = punch;
    this.zeroRangeOk = zeroRange;
  }

  close(): Promise<void> {
    const fd = this.fdValue;
    if (fd < 0) return Promise.resolve();
    this.fdValue = -1;
    // The ring waits for its operations before it goes, so none can touch the fd or memory later.
    this.uring?.close();
    this.uring = null;
    if (this.borrowed) return Promise.resolve();
    this.imageLock?.release();
    return new Promise((resolve, reject) => fs.close(fd, (e) => (e ? reject(e) : resolve())));
  }
}

function readvAt(fd: number, views: readonly Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.readv(fd, views as NodeJS.ArrayBufferView[], position, (e, n) => (e ? reject(e) : resolve(n)));
  });
}

function writevAt(fd: number, views: readonly Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, views as NodeJS.ArrayBufferView[], position, (e, n) => (e ? reject(e) : resolve(n)));
  });
}
