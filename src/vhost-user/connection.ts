import * as sys from '../sys/index.js';
import { HEADER_SIZE, decodeHeader, type Header, type EncodedMessage } from './codec.js';

/** One framed message as read off the socket, before payload decoding. The receiver owns `fds`. */
export interface RawMessage {
  header: Header;
  payload: Uint8Array;
  fds: number[];
}

/** What a {@link Connection} reports to its owner. */
export interface ConnectionHandler {
  /**
   * A complete message arrived. Returning a promise pauses reading until it settles, which keeps
   * request processing strictly in order, as the protocol requires.
   */
  onMessage(msg: RawMessage): void | Promise<void>;
  /** The connection closed: `error` is null on an orderly EOF or a local close(). */
  onClose(error: Error | null): void;
}

interface Outgoing {
  bytes: Uint8Array;
  fds: readonly number[];
}

/**
 * Message framing over a non-blocking AF_UNIX stream socket: reads a 12-byte header (with the fds
 * that travel with it via SCM_RIGHTS), then exactly `size` payload bytes; writes whole messages,
 * queueing the rest when the socket buffer is full. Owns the socket fd.
 */
export class Connection {
  readonly fd: number;
  private readonly handler: ConnectionHandler;
  private watcher: sys.FdWatcher | null;
  private readonly headerBuf = new Uint8Array(HEADER_SIZE);
  private headerGot = 0;
  private header: Header | null = null;
  private payload: Uint8Array = new Uint8Array(0);
  private payloadGot = 0;
  private fds: number[] = [];
  private readonly outQueue: Outgoing[] = [];
  private paused = false;
  private closed = false;
  private events = sys.POLLIN;

  constructor(fd: number, handler: ConnectionHandler) {
    this.fd = fd;
    this.handler = handler;
    this.watcher = sys.watchFd(fd, sys.POLLIN, (status, events) => this.onPoll(status, events));
  }

  /** Whether close() ran or the peer went away. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Sends one encoded message; fds are duplicated into the peer by the kernel, the caller keeps its own. */
  send(msg: EncodedMessage): void {
    if (this.closed) throw new Error('vhost-user connection is closed');
    if (this.outQueue.length > 0) {
      this.outQueue.push({ bytes: msg.bytes, fds: msg.fds });
      return;
    }
    this.writeSome(msg.bytes, msg.fds);
  }

  /** Keeps the event loop alive only while someone waits on this connection. */
  ref(): void { this.watcher?.ref(); }
  /** See {@link ref}. */
  unref(): void { this.watcher?.unref(); }

  /** Closes the socket and any fds of a partially read message; reports onClose(error) once. */
  close(error: Error | null = null): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    for (const fd of this.fds) safeClose(fd);
    this.fds = [];
    this.outQueue.length = 0;
    safeClose(this.fd);
    this.handler.onClose(error);
  }

  /** Returns true when everything was written; queues the remainder otherwise. */
  private writeSome(bytes: Uint8Array, fds: readonly number[]): boolean {
    let n: number | null;
    try {
      n = sys.sendmsg(this.fd, bytes, fds);
    } catch (e) {
      this.close(e as Error);
      return false;
    }
    if (n === bytes.length) return true;
    // The fds went with the first byte written; the rest must not carry them again.
    this.outQueue.unshift(n === null ? { bytes, fds } : { bytes: bytes.subarray(n), fds: [] });
    this.updateWatcher();
    return false;
  }

  /** Polls for input unless a request is being processed, and for output while data is queued. */
  private updateWatcher(): void {
    if (this.watcher === null) return;
    const ev = (this.paused ? 0 : sys.POLLIN) | (this.outQueue.length > 0 ? sys.POLLOUT : 0);
    if (ev === this.events) return;
    this.events = ev;
    if (ev === 0) this.watcher.stop();
    else this.watcher.start(ev);
  }

  private onPoll(status: number, events: number): void {
    if (this.closed) return;
    if (status < 0) {
      this.close(new Error(`vhost-user socket poll error (${status})`));
      return;
    }
    if (events & sys.POLLOUT) this.flush();
    if (events & sys.POLLIN) this.readAvailable();
  }

  private flush(): void {
    while (this.outQueue.length > 0 && !this.closed) {
      const head = this.outQueue.shift()!;
      // On a short write writeSome puts the remainder back at the head of the queue.
      if (!this.writeSome(head.bytes, head.fds)) return;
    }
    this.updateWatcher();
  }

  private readAvailable(): void {
    while (!this.closed && !this.paused) {
      let r: { bytes: number; fds: number[] } | null;
      const target = this.header === null
        ? this.headerBuf.subarray(this.headerGot)
        : this.payload.subarray(this.payloadGot);
      if (target.length > 0) {
        try {
          r = sys.recvmsg(this.fd, target, sys.MAX_FDS_PER_MESSAGE);
        } catch (e) {
          this.close(e as Error);
          return;
        }
        if (r === null) return;
        if (r.bytes === 0 && r.fds.length === 0) {
          const partial = this.headerGot > 0 || this.header !== null;
          this.close(partial ? new Error('vhost-user peer closed the socket in the middle of a message') : null);
          return;
        }
        if (r.fds.length > 0) {
          for (const fd of r.fds) this.fds.push(fd);
          if (this.fds.length > sys.MAX_FDS_PER_MESSAGE) {
            this.close(new Error(`vhost-user message carried ${this.fds.length} fds (at most ${sys.MAX_FDS_PER_MESSAGE})`));
            return;
          }
        }
        if (this.header === null) this.headerGot += r.bytes;
        else this.payloadGot += r.bytes;
      }
      if (this.header === null) {
        if (this.headerGot < HEADER_SIZE) continue;
        let h: Header;
        try {
          // Checks the version bits and bounds the payload size (MAX_PAYLOAD_SIZE) before any read.
          h = decodeHeader(this.headerBuf);
        } catch (e) {
          // Without a valid header the byte stream cannot be re-synchronised.
          this.close(e as Error);
          return;
        }
        this.header = h;
        this.payload = new Uint8Array(h.size);
        this.payloadGot = 0;
      }
      if (this.payloadGot < this.payload.length) continue;
      const msg: RawMessage = { header: this.header, payload: this.payload, fds: this.fds };
      this.header = null;
      this.headerGot = 0;
      this.fds = [];
      this.deliver(msg);
    }
  }

  private deliver(msg: RawMessage): void {
    let result: void | Promise<void>;
    try {
      result = this.handler.onMessage(msg);
    } catch (e) {
      this.close(e as Error);
      return;
    }
    if (result && typeof (result as Promise<void>).then === 'function') {
      this.paused = true;
      this.updateWatcher();
      (result as Promise<void>).then(
        () => this.resume(),
        (e: unknown) => this.close(e instanceof Error ? e : new Error(String(e))),
      );
    }
  }

  private resume(): void {
    if (this.closed) return;
    this.paused = false;
    this.updateWatcher();
    // Data that arrived while paused is level-triggered, but draining now avoids a loop turn.
    this.readAvailable();
  }
}

function safeClose(fd: number): void {
  try { sys.close(fd); } catch { /* already closed */ }
}
