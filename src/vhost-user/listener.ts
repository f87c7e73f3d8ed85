import { unlinkSync, lstatSync } from 'node:fs';
import * as sys from '../sys/index.js';

/**
 * A listening AF_UNIX socket whose pending connections are accepted on this thread's event loop.
 * Used by the backend in server mode (QEMU's default) and by the frontend in server mode
 * (QEMU's `reconnect`-less "server" chardev).
 */
export class UnixListener {
  /** The listening socket. */
  readonly fd: number;
  /** Filesystem path, when this listener created the socket file (it unlinks it on close). */
  readonly path: string | null;
  private watcher: sys.FdWatcher | null = null;
  private waiting: Array<{ resolve(fd: number): void; reject(e: Error): void }> = [];
  private pending: number[] = [];
  private handler: ((fd: number) => void) | null = null;
  private closed = false;

  private constructor(fd: number, path: string | null) {
    this.fd = fd;
    this.path = path;
  }

  /**
   * Binds and listens on `path`. A stale socket file left by a dead process is removed first;
   * any other kind of file at that path is an error rather than something we silently delete.
   */
  static listen(path: string, backlog = 16): UnixListener {
    try {
      const st = lstatSync(path);
      if (!st.isSocket()) throw new Error(`refusing to replace ${path}: it exists and is not a socket`);
      unlinkSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return new UnixListener(sys.listenUnix(path, backlog), path);
  }

  /** Wraps an inherited listening socket (QEMU backend convention `--fd N`). */
  static fromFd(fd: number): UnixListener {
    sys.setNonBlocking(fd, true);
    return new UnixListener(fd, null);
  }

  /** Calls `handler` with each accepted connection fd (which the handler then owns). */
  onConnection(handler: (fd: number) => void): void {
    this.handler = handler;
    for (const fd of this.pending.splice(0)) handler(fd);
    this.ensureWatching();
  }

  /** Resolves with the next accepted connection fd (which the caller then owns). */
  accept(): Promise<number> {
    const fd = this.pending.shift();
    if (fd !== undefined) return Promise.resolve(fd);
    if (this.closed) return Promise.reject(new Error('listener closed'));
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.ensureWatching();
    });
  }

  /** Stops listening, closes pending connections and unlinks the socket file it created. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    for (const fd of this.pending.splice(0)) sys.close(fd);
    for (const w of this.waiting.splice(0)) w.reject(new Error('listener closed'));
    sys.close(this.fd);
    if (this.path !== null) {
      try { unlinkSync(this.path); } catch { /* already gone */ }
    }
  }

  private ensureWatching(): void {
    if (this.watcher !== null || this.closed) return;
    this.watcher = sys.watchFd(this.fd, sys.POLLIN, () => this.drain());
  }

  private drain(): void {
    for (;;) {
      let fd: number | null;
      try {
        fd = sys.accept(this.fd);
      } catch (e) {
        // ECONNABORTED and friends concern one peer, not the listener.
        if (e instanceof sys.SysError && (e.code === 'ECONNABORTED' || e.code === 'EPROTO')) continue;
        throw e;
      }
      if (fd === null) break;
      const w = this.waiting.shift();
      if (w) w.resolve(fd);
      else if (this.handler) this.handler(fd);
      else this.pending.push(fd);
    }
    if (this.handler === null && this.waiting.length === 0) {
      // Nobody is waiting: stop polling so an idle listener does not keep the loop alive.
      this.watcher?.close();
      this.watcher = null;
    }
  }
}

/**
 * Connects to a Unix socket, retrying while it does not exist yet or refuses connections
 * (a peer that is still starting), until `timeoutMs` elapses.
 */
export async function connectUnixWithRetry(path: string, timeoutMs = 5000, intervalMs = 20): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return sys.connectUnix(path);
    } catch (e) {
      const code = e instanceof sys.SysError ? e.code : '';
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() >= deadline) throw e;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
