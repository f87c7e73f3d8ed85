/**
 * io_uring without liburing: {@link IoUring} is the thin wrapper over the addon's ring (staging
 * arrays in, completion array out, no per-operation JS objects), {@link UringEngine} batches
 * vectored reads/writes of guest-memory views per event-loop turn and reaps completions per
 * eventfd wake-up.
 * @module
 */
import { constants as osConstants } from 'node:os';
import { native, SysError, type NativeHandle } from './native.js';
import { hostAddressOf } from './mapping.js';
import { watchFd, type FdWatcher } from './watch.js';
import { close, eventfd, POLLIN } from './index.js';

/** Staged operation: read into the iovecs (IORING_OP_READV). */
export const URING_OP_READ = 0;
/** Staged operation: write from the iovecs (IORING_OP_WRITEV). */
export const URING_OP_WRITE = 1;
/** Staged operation: fsync (IORING_OP_FSYNC). */
export const URING_OP_FSYNC = 2;
/** Staged operation: fdatasync (IORING_OP_FSYNC with IORING_FSYNC_DATASYNC). */
export const URING_OP_FDATASYNC = 3;
/** Staged operation: no-op (IORING_OP_NOP). */
export const URING_OP_NOP = 4;
/** Doubles per staged operation: op, fd, first iovec, iovec count, file offset, user data. */
export const URING_SUBMIT_FIELDS = 6;

interface UringAddon {
  uringSetup(entries: number, eventFd: number, iovCapacity: number): [NativeHandle, Float64Array, Float64Array, Float64Array];
  uringSubmit(handle: NativeHandle, count: number): number;
  uringReap(handle: NativeHandle): number;
  uringReady(handle: NativeHandle): number;
  uringFd(handle: NativeHandle): number;
  uringInFlight(handle: NativeHandle): number;
  uringClose(handle: NativeHandle): void;
}
const addon = native as unknown as UringAddon;

/**
 * One io_uring instance. Operations are staged in {@link sqes} (URING_SUBMIT_FIELDS doubles each)
 * with their buffers in {@link iovs} ([host address, length] pairs), then submitted together;
 * {@link reap} copies completions into {@link cqes} as [user data, result] pairs, result being bytes
 * transferred or a negated errno. Completions signal {@link eventFd}.
 *
 * Every iovec must lie inside a live mapping made by this thread (sys `mmap`/`wrapMemory`): the
 * addon refuses any other address with EINVAL before the kernel sees it.
 */
export class IoUring {
  /** Staging area of operations for {@link submit}. */
  readonly sqes: Float64Array;
  /** Buffer table referenced by staged reads and writes. */
  readonly iovs: Float64Array;
  /** Completions written by {@link reap}. */
  readonly cqes: Float64Array;
  /** Operations that fit in {@link sqes} (submission ring size). */
  readonly entries: number;
  /** Iovecs that fit in {@link iovs}. */
  readonly iovCapacity: number;
  /** Completion entries (twice the submission entries): the most operations in flight. */
  readonly maxInFlight: number;
  /**
   * Non-blocking eventfd the kernel signals on every completion (owned by this ring), or -1 when
   * the ring was opened with `signal: 'ring'`.
   */
  readonly eventFd: number;
  /**
   * The fd to watch for completions (POLLIN): the ring's own fd, readable while its completion
   * queue holds entries (reaping clears it, no syscall), or the eventfd.
   */
  readonly pollFd: number;
  #handle: NativeHandle | null;

  private constructor(handle: NativeHandle, sqes: Float64Array, iovs: Float64Array, cqes: Float64Array, eventFd: number) {
    this.#handle = handle;
    this.sqes = sqes;
    this.iovs = iovs;
    this.cqes = cqes;
    this.entries = sqes.length / URING_SUBMIT_FIELDS;
    this.iovCapacity = iovs.length / 2;
    this.maxInFlight = cqes.length / 2;
    this.eventFd = eventFd;
    this.pollFd = eventFd >= 0 ? eventFd : addon.uringFd(handle);
  }

  /**
   * Sets up a ring of `entries` submission entries (a power of two is used by the kernel) and an
   * iovec table of `iovCapacity` entries. Completions are signalled by the ring fd becoming
   * readable (`signal: 'ring'`, the default: nothing to reset per wake-up) or on a registered
   * eventfd (`'eventfd'`, one read per wake-up). Throws SysError: ENOSYS where the kernel has no
   * io_uring, EPERM where it is disabled (kernel.io_uring_disabled, seccomp).
   */
  static open(entries: number, iovCapacity: number = entries * 4, signal: 'ring' | 'eventfd' = 'ring'): IoUring {
    const efd = signal === 'eventfd' ? eventfd() : -1;
    try {
      const [h, s, i, c] = addon.uringSetup(entries, efd, iovCapacity);
      return new IoUring(h, s, i, c, efd);
    } catch (e) {
      if (efd >= 0) close(efd);
      throw e;
    }
  }

  #live(): NativeHandle {
    if (this.#handle === null) throw new SysError(osConstants.errno.EBADF, 'io_uring_enter', 'ring is closed');
    return this.#handle;
  }

  /** Submits staged operations [0, count); returns how many the kernel took (a prefix). */
  submit(count: number): number {
    return addon.uringSubmit(this.#live(), count);
  }

  /** Moves completed operations into {@link cqes} (clearing the eventfd, if any); returns their number (0 when none). */
  reap(): number {
    return addon.uringReap(this.#live());
  }

  /** Completions waiting to be reaped (reads the CQ indices: no syscall). */
  ready(): number {
    return addon.uringReady(this.#live());
  }

  /** Operations submitted and not reaped yet. */
  get inFlight(): number {
    return this.#handle === null ? 0 : addon.uringInFlight(this.#handle);
  }

  /** False once closed. */
  get open(): boolean {
    return this.#handle !== null;
  }

  /** Waits for operations still in flight, then frees the ring and its eventfd. Idempotent. */
  close(): void {
    const h = this.#handle;
    if (h === null) return;
    this.#handle = null;
    addon.uringClose(h);
    if (this.eventFd >= 0) close(this.eventFd);
  }
}

/** Receives the result of one {@link UringEngine} operation: bytes, or a negated errno. */
export interface UringTarget {
  /** Called once from the completion wake-up (never synchronously from the submitting call). */
  uringComplete(result: number): void;
}

/**
 * Batches operations on one {@link IoUring}: reads and writes of guest-memory views are staged as
 * they come and submitted with one io_uring_enter at the end of the current JS turn (a microtask),
 * i.e. once per kick; completions are reaped once per eventfd wake-up and delivered to each
 * operation's {@link UringTarget}. Nothing is allocated per operation.
 */
export class UringEngine {
  readonly ring: IoUring;
  private readonly targets: (UringTarget | null)[];
  private readonly freeSlots: Int32Array;
  private nFree: number;
  /** Operations submitted to the kernel so far (diagnostics, tests). */
  submitted = 0;
  /** io_uring_enter calls made by {@link flush} (one per batch). */
  batches = 0;
  private staged = 0;
  private iovUsed = 0;
  private flushQueued = false;
  private readonly watcher: FdWatcher;
  private readonly flushBound = (): void => this.flush();

  /** Opens a ring of `entries` entries (throws SysError ENOSYS / EPERM when io_uring is unavailable). */
  constructor(entries = 256) {
    this.ring = IoUring.open(entries, entries * 8);
    const max = this.ring.maxInFlight;
    this.targets = new Array<UringTarget | null>(max).fill(null);
    this.freeSlots = new Int32Array(max);
    for (let i = 0; i < max; i++) this.freeSlots[i] = max - 1 - i;
    this.nFree = max;
    this.watcher = watchFd(this.ring.pollFd, POLLIN, () => this.onWake());
    // Idle, the engine must not keep the process alive; operations in flight are owned by their
    // callers' promises and fds, which do.
    this.watcher.unref();
  }

  /** Operations staged or in flight. */
  get busy(): number {
    return this.targets.length - this.nFree;
  }

  /**
   * Stages a vectored read (or write) of `views` at file `offset` of `fd`. Returns false, staging
   * nothing, when a view is not inside a live guest-memory mapping of this thread or the ring is
   * full: the caller then takes its fallback path.
   */
  transfer(write: boolean, fd: number, views: readonly Uint8Array[], offset: number, target: UringTarget): boolean {
    const n = views.length;
    if (n === 0 || n > this.ring.iovCapacity || this.nFree === 0 || !this.ring.open) return false;
    if (this.staged === this.ring.entries || this.iovUsed + n > this.ring.iovCapacity) this.flush();
    if (this.nFree === 0) return false;
    const iovs = this.ring.iovs;
    const first = this.iovUsed;
    for (let i = 0; i < n; i++) {
      const v = views[i] as Uint8Array;
      const a = hostAddressOf(v);
      if (a < 0 || v.length === 0) return false;
      iovs[2 * (first + i)] = a;
      iovs[2 * (first + i) + 1] = v.length;
    }
    this.iovUsed += n;
    this.stage(write ? URING_OP_WRITE : URING_OP_READ, fd, first, n, offset, target);
    return true;
  }

  /** Whether an operation of `iovCount` buffers can be staged now (then {@link transferHost} cannot fail). */
  canStage(iovCount: number): boolean {
    return this.nFree > 0 && iovCount <= this.ring.iovCapacity && this.ring.open;
  }

  /**
   * Stages a vectored read (or write) of `count` [host address, length] pairs of `pairs` at file
   * `offset`: the zero-allocation variant of {@link transfer} for callers that translated guest
   * addresses themselves (the addon still refuses any range outside this thread's live mappings).
   * Check {@link canStage} first; false when the ring is full.
   */
  transferHost(write: boolean, fd: number, pairs: Float64Array, count: number, offset: number, target: UringTarget): boolean {
    if (!this.canStage(count) || count === 0) return false;
    if (this.staged === this.ring.entries || this.iovUsed + count > this.ring.iovCapacity) this.flush();
    if (this.nFree === 0) return false;
    const first = this.iovUsed;
    const iovs = this.ring.iovs;
    for (let i = 0; i < 2 * count; i++) iovs[2 * first + i] = pairs[i] as number;
    this.iovUsed += count;
    this.stage(write ? URING_OP_WRITE : URING_OP_READ, fd, first, count, offset, target);
    return true;
  }

  /** Stages an fdatasync (or fsync) of `fd`; false when the ring is full. */
  sync(fd: number, dataOnly: boolean, target: UringTarget): boolean {
    if (this.nFree === 0 || !this.ring.open) return false;
    if (this.staged === this.ring.entries) this.flush();
    if (this.nFree === 0) return false;
    this.stage(dataOnly ? URING_OP_FDATASYNC : URING_OP_FSYNC, fd, 0, 0, 0, target);
    return true;
  }

  private stage(op: number, fd: number, iov: number, count: number, offset: number, target: UringTarget): void {
    const slot = this.freeSlots[--this.nFree] as number;
    this.targets[slot] = target;
    const s = this.ring.sqes;
    const at = this.staged * URING_SUBMIT_FIELDS;
    s[at] = op;
    s[at + 1] = fd;
    s[at + 2] = iov;
    s[at + 3] = count;
    s[at + 4] = offset;
    s[at + 5] = slot;
    this.staged++;
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flushBound);
    }
    if (this.busy === 1) this.watcher.ref();
  }

  /** Submits everything staged; operations the kernel refused complete with their errno. */
  flush(): void {
    this.flushQueued = false;
    const count = this.staged;
    if (count === 0) return;
    this.staged = 0;
    this.iovUsed = 0;
    let done = 0;
    let errno = osConstants.errno.EAGAIN;
    try {
      done = this.ring.submit(count);
      this.submitted += done;
      this.batches++;
    } catch (e) {
      errno = e instanceof SysError ? e.errno : osConstants.errno.EIO;
    }
    // Reads from the page cache often complete inside io_uring_enter: delivering them now saves
    // a trip through the event loop per batch (latency at low queue depth). Only when some did:
    // with an eventfd, reaping costs a read, wasted when the kernel punted them to its workers.
    if (done > 0 && this.ring.ready() > 0) this.onWake();
    if (done < count) {
      // Refused operations complete asynchronously like any other, never inside the caller's call.
      const s = this.ring.sqes;
      const failed: UringTarget[] = [];
      for (let i = done; i < count; i++) {
        const slot = s[i * URING_SUBMIT_FIELDS + 5] as number;
        failed.push(this.release(slot));
      }
      setImmediate(() => {
        for (const t of failed) t.uringComplete(-errno);
      });
    }
  }

  private release(slot: number): UringTarget {
    const t = this.targets[slot] as UringTarget;
    this.targets[slot] = null;
    this.freeSlots[this.nFree++] = slot;
    if (this.busy === 0) this.watcher.unref();
    return t;
  }

  /**
   * For a poller (adaptive polling of a queue whose requests this engine serves): submits what is
   * staged (the end-of-turn microtask would come only after the poller returns), then delivers the
   * completions already in the CQ (no syscall on a ring polled on its own fd). True when it
   * completed something.
   */
  poll(): boolean {
    if (!this.ring.open) return false;
    if (this.staged > 0) this.flush();
    if (this.busy === 0 || this.ring.ready() === 0) return false;
    this.onWake();
    return true;
  }

  private onWake(): void {
    const ring = this.ring;
    if (!ring.open) return;
    const c = ring.cqes;
    const cap = ring.maxInFlight;
    let failure: unknown = null;
    let n: number;
    do {
      n = ring.reap();
      for (let i = 0; i < n; i++) {
        const t = this.release(c[2 * i] as number);
        // One faulty target must not strand the completions after it.
        try {
          t.uringComplete(c[2 * i + 1] as number);
        } catch (e) {
          failure ??= e;
        }
      }
    } while (n === cap);
    if (failure !== null) throw failure;
  }

  /**
   * Stops watching and closes the ring. Call it once nothing is in flight; operations still in
   * flight are waited for by the kernel-side drain and their targets get -ECANCELED.
   */
  close(): void {
    if (!this.ring.open) return;
    this.flush();
    this.onWake();
    this.watcher.close();
    this.ring.close();
    for (let slot = 0; slot < this.targets.length; slot++) {
      if (this.targets[slot] !== null) this.release(slot).uringComplete(-osConstants.errno.ECANCELED);
    }
  }
}
