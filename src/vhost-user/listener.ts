import { chmodSync, chownSync, lstatSync, readFileSync, unlinkSync } from 'node:fs';
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
   * Binds and listens on `path`, checked before anything at the path is touched:
   * - a path longer than `sun_path` allows is refused (nothing is unlinked);
   * - a socket that a live process answers on is refused: only a stale socket (ECONNREFUSED on
   *   connect) left by a dead daemon is replaced;
   * - anything else at the path (regular file, symlink, directory) is refused and kept.
   * The socket is created with `mode` (default 0600: only the owner may connect) and, with
   * `group`, handed to that group (usually with mode 0660).
   */
  static listen(path: string, backlogOrOptions: number | UnixListenOptions = {}): UnixListener {
    const opts = typeof backlogOrOptions === 'number' ? { backlog: backlogOrOptions } : backlogOrOptions;
    const mode = opts.mode ?? DEFAULT_SOCKET_MODE;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new RangeError(`socket mode ${mode} is not a permission mode (0..0o777)`);
    checkSocketPath(path);
    const gid = opts.group === undefined ? null : resolveGroup(opts.group);
    removeStaleSocket(path);
    // umask governs the mode bind() gives the socket file: set it so there is no window in which
    // the socket is more open than asked; chmod afterwards makes the mode exact whatever the umask.
    const oldMask = process.umask(0o777 & ~mode);
    let fd: number;
    try {
      fd = sys.listenUnix(path, opts.backlog ?? 16);
    } finally {
      process.umask(oldMask);
    }
    try {
      if (gid !== null) chownSync(path, -1, gid);
      chmodSync(path, mode);
    } catch (e) {
      sys.close(fd);
      try { unlinkSync(path); } catch { /* gone */ }
      throw e;
    }
    return new UnixListener(fd, path);
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

/** Options of {@link UnixListener.listen}. */
export interface UnixListenOptions {
  /** listen(2) backlog (default 16). */
  backlog?: number;
  /** Permission bits of the socket file (default {@link DEFAULT_SOCKET_MODE}). */
  mode?: number;
  /** Group (name or numeric gid) that owns the socket file. */
  group?: string | number;
}

/** Only the owner may connect by default: a same-machine peer can do anything a front-end can. */
export const DEFAULT_SOCKET_MODE = 0o600;

/** Bytes of `sockaddr_un.sun_path` including the terminating NUL (Linux). */
export const UNIX_PATH_MAX = 108;

/** Throws when `path` cannot be a Unix socket address (checked before the path is touched). */
export function checkSocketPath(path: string): void {
  if (path.length === 0) throw new Error('socket path is empty');
  if (path.includes('\0')) throw new Error('socket path contains a NUL byte');
  const bytes = Buffer.byteLength(path);
  if (bytes >= UNIX_PATH_MAX) {
    throw new Error(`socket path is ${bytes} bytes; a Unix socket path has at most ${UNIX_PATH_MAX - 1}`);
  }
}

/**
 * Removes `path` only if it is a socket nobody listens on. A live socket, or a file of another
 * type, is an error and stays where it is.
 */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!st.isSocket()) {
    const what = st.isSymbolicLink() ? 'a symbolic link' : st.isDirectory() ? 'a directory' : st.isFile() ? 'a regular file' : 'not a socket';
    throw new Error(`refusing to replace ${path}: it is ${what}`);
  }
  let probe: number;
  try {
    probe = sys.connectUnix(path);
  } catch (e) {
    const code = e instanceof sys.SysError ? e.code : '';
    if (code === 'ECONNREFUSED') {
      unlinkSync(path);
      return;
    }
    if (code === 'ENOENT') return;
    // EAGAIN: a live listener with a full backlog; anything else: we cannot tell, so keep it.
    throw new Error(`refusing to replace ${path}: ${code === 'EAGAIN' ? 'another process is listening on it' : `cannot probe it (${code || (e as Error).message})`}`);
  }
  sys.close(probe);
  throw new Error(`refusing to replace ${path}: another process is listening on it`);
}

function resolveGroup(group: string | number): number {
  if (typeof group === 'number' || /^\d+$/.test(group)) {
    const gid = Number(group);
    if (!Number.isSafeInteger(gid) || gid < 0 || gid > 0xfffffffe) throw new RangeError(`group id ${group} out of range`);
    return gid;
  }
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new Error(`unknown group '${group}'`);
}
