/**
 * fd watchers: uv_poll handles on the calling thread's own libuv loop (works in worker_threads).
 * @module
 */
import { constants as osConstants } from 'node:os';
import { native, SysError, type NativeHandle } from './native.js';

/** A uv_poll watcher on the calling thread's libuv loop. */
export interface FdWatcher {
  /** (Re)starts watching for POLLIN and/or POLLOUT. */
  start(events: number): void;
  /** Stops watching; start() may be called again. */
  stop(): void;
  /** Stops and frees; idempotent; the callback never runs after close(). Safe inside the callback. */
  close(): void;
  /** Makes the watcher keep the loop alive (default). */
  ref(): void;
  /** Lets the loop exit while the watcher is active. */
  unref(): void;
}

/** Open watchers of this thread by fd: libuv allows one poll handle per fd per loop. */
const watchers = new Map<number, WatcherImpl>();

/** @internal Closes the watcher of fd in this thread, if any (sys `close` calls it before close(2)). */
export function closeWatcherOf(fd: number): void {
  watchers.get(fd)?.close();
}

class WatcherImpl implements FdWatcher {
  readonly #fd: number;
  #handle: NativeHandle | null;

  constructor(fd: number, handle: NativeHandle) {
    this.#fd = fd;
    this.#handle = handle;
  }

  #live(syscall: string): NativeHandle {
    if (this.#handle === null) throw new SysError(osConstants.errno.EBADF, syscall, 'watcher is closed');
    return this.#handle;
  }

  start(events: number): void {
    native.watchStart(this.#live('uv_poll_start'), events);
  }

  stop(): void {
    if (this.#handle !== null) native.watchStop(this.#handle);
  }

  close(): void {
    const h = this.#handle;
    if (h === null) return;
    this.#handle = null;
    watchers.delete(this.#fd);
    native.watchClose(h);
  }

  ref(): void {
    if (this.#handle !== null) native.watchRef(this.#handle, true);
  }

  unref(): void {
    if (this.#handle !== null) native.watchRef(this.#handle, false);
  }
}

/**
 * Watches fd on the calling thread's own libuv loop (works in worker_threads). The callback is
 * invoked directly from libuv as callback(status, events); status < 0 is a negated errno from
 * libuv (e.g. -EBADF). An exception thrown by the callback is raised as an uncaught exception of
 * the thread (process 'uncaughtException', or 'error' on the Worker), never swallowed.
 * One watcher per fd per thread (EEXIST otherwise); close the watcher before the fd, or use
 * {@link close} which does both.
 */
export function watchFd(fd: number, events: number, callback: (status: number, events: number) => void): FdWatcher {
  if (watchers.has(fd)) throw new SysError(osConstants.errno.EEXIST, 'uv_poll_init', `fd ${fd} is already watched in this thread`);
  const w = new WatcherImpl(fd, native.watch(fd, events, callback));
  watchers.set(fd, w);
  return w;
}
