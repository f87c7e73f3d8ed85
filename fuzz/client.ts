/**
 * A raw vhost-user front-end socket for the fuzzer: sends arbitrary bytes with arbitrary fds,
 * reads and frames whatever comes back, and lets the caller await one reply by request id with a
 * timeout. Unlike {@link Frontend} it never interprets replies, so malformed traffic cannot upset it.
 * @module
 */
import * as sys from '../src/sys/index.js';

/** Size of the vhost-user message header. */
export const HEADER_SIZE = 12;
/** Header flags: protocol version 1. */
export const VERSION_1 = 0x1;
/** Header flags: this is a reply. */
export const REPLY_FLAG = 0x4;
/** Header flags: a reply (REPLY_ACK) is wanted. */
export const NEED_REPLY_FLAG = 0x8;

/** One framed message read from the back-end. */
export interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** Outcome of waiting for a reply. */
export type WaitResult = Reply | 'closed' | 'timeout';

interface Waiter {
  request: number;
  resolve(r: WaitResult): void;
  timer: NodeJS.Timeout;
}

const SCRATCH = new Uint8Array(256 * 1024);

/** Builds a message: header then payload. */
export function message(request: number, flags: number, payload: Uint8Array, size = payload.length): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE + payload.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, request >>> 0, true);
  dv.setUint32(4, flags >>> 0, true);
  dv.setUint32(8, size >>> 0, true);
  b.set(payload, HEADER_SIZE);
  return b;
}

/** A connected raw front-end socket. */
export class RawClient {
  /** Messages written completely. */
  sent = 0;
  /** Replies framed. */
  replies = 0;
  /** Set once the peer closed (EOF, EPIPE, ECONNRESET) or we closed. */
  closed = false;
  private readonly watcher: sys.FdWatcher;
  private pending = new Uint8Array(0);
  private waiters: Waiter[] = [];
  private writable: Array<() => void> = [];

  private constructor(readonly fd: number) {
    this.watcher = sys.watchFd(fd, sys.POLLIN, (status, events) => this.onEvent(status, events));
  }

  /** Connects to the daemon's socket (the daemon accepts it once its previous connection ended). */
  static connect(path: string): RawClient {
    return new RawClient(sys.connectUnix(path));
  }

  /**
   * Writes one message with `fds` (which stay ours: the kernel duplicates them). Resolves false
   * when the peer has gone. A partial write is completed before resolving, so framing is ours to
   * break, never the socket's.
   */
  async send(bytes: Uint8Array, fds: readonly number[] = []): Promise<boolean> {
    let off = 0;
    let first = true;
    while (!this.closed) {
      let n: number | null;
      try {
        n = sys.sendmsg(this.fd, off === 0 ? bytes : bytes.subarray(off), first ? fds : []);
      } catch (e) {
        const code = e instanceof sys.SysError ? e.code : '';
        if (code === 'EPIPE' || code === 'ECONNRESET') {
          this.markClosed();
          return false;
        }
        throw e;
      }
      if (n === null) {
        await this.waitWritable();
        continue;
      }
      first = false;
      off += n;
      if (off >= bytes.length) {
        this.sent++;
        return true;
      }
    }
    return false;
  }

  /**
   * Waits for the next reply to `request`, discarding replies to others; 'closed' if the peer
   * closes first, 'timeout' after `timeoutMs`.
   */
  waitReply(request: number, timeoutMs: number): Promise<WaitResult> {
    if (this.closed) return Promise.resolve('closed');
    return new Promise((resolve) => {
      const w: Waiter = {
        request,
        resolve: (r) => {
          clearTimeout(w.timer);
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve(r);
        },
        timer: setTimeout(() => w.resolve('timeout'), timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Sends a request with NEED_REPLY and waits for its reply (an ack or the request's own reply). */
  async roundTrip(bytes: Uint8Array, fds: readonly number[], timeoutMs: number): Promise<WaitResult> {
    const request = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
    // Wait first: the reply may be read while send() is still waiting for room in the socket.
    const reply = this.waitReply(request, timeoutMs);
    await this.send(bytes, fds);
    return reply;
  }

  /** Closes the socket (idempotent). */
  close(): void {
    if (this.fdClosed) return;
    this.fdClosed = true;
    this.watcher.close();
    if (!this.closed) this.markClosed();
    sys.close(this.fd);
  }

  private fdClosed = false;

  private markClosed(): void {
    this.closed = true;
    for (const w of this.waiters.slice()) w.resolve('closed');
    for (const r of this.writable.splice(0)) r();
  }

  private waitWritable(): Promise<void> {
    return new Promise((resolve) => {
      this.writable.push(resolve);
      this.watcher.start(sys.POLLIN | sys.POLLOUT);
    });
  }

  private onEvent(status: number, events: number): void {
    if (status < 0) {
      this.markClosed();
      this.watcher.stop();
      return;
    }
    if ((events & sys.POLLOUT) !== 0 && this.writable.length > 0) {
      this.watcher.start(sys.POLLIN);
      for (const r of this.writable.splice(0)) r();
    }
    this.readAll();
  }

  private readAll(): void {
    for (;;) {
      let r: { bytes: number; fds: number[] } | null;
      try {
        r = sys.recvmsg(this.fd, SCRATCH);
      } catch {
        r = { bytes: 0, fds: [] };
      }
      if (r === null) return;
      // Fds the back-end sends (inflight area, shared objects) are not the fuzzer's business.
      for (const fd of r.fds) sys.close(fd);
      if (r.bytes === 0) {
        this.markClosed();
        this.watcher.stop();
        return;
      }
      this.append(SCRATCH.subarray(0, r.bytes));
      this.frame();
    }
  }

  private append(b: Uint8Array): void {
    const n = new Uint8Array(this.pending.length + b.length);
    n.set(this.pending);
    n.set(b, this.pending.length);
    this.pending = n;
  }

  private frame(): void {
    let off = 0;
    while (this.pending.length - off >= HEADER_SIZE) {
      const dv = new DataView(this.pending.buffer, this.pending.byteOffset + off);
      const size = dv.getUint32(8, true);
      if (this.pending.length - off - HEADER_SIZE < size) break;
      const reply: Reply = {
        request: dv.getUint32(0, true),
        flags: dv.getUint32(4, true),
        payload: this.pending.slice(off + HEADER_SIZE, off + HEADER_SIZE + size),
      };
      off += HEADER_SIZE + size;
      this.replies++;
      const w = this.waiters.find((x) => x.request === reply.request);
      w?.resolve(reply);
    }
    if (off > 0) this.pending = this.pending.slice(off);
  }
}
