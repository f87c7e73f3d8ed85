import * as sys from '../sys/index.js';
import { HEADER_SIZE, decodeHeader, type Header, type EncodedMessage } from './codec.js';

/** One framed message as read off the socket, before payload decoding. The receiver owns `fds`. */
export interface RawMessage {
  /** The decoded 12-byte header (request id, flags, payload size). */
  header: Header;
  /** Exactly `header.size` payload bytes, not yet decoded or validated. */
  payload: Uint8Array;
  /** Fds received with the message (SCM_RIGHTS), in order; the receiver must close every one it does not keep. */
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

/** Limits of a {@link Connection}. */
export interface ConnectionOptions {
  /**
   * Stop reading while more than this many reply bytes wait to be written (default
   * {@link DEFAULT_MAX_QUEUED_BYTES}): a peer that sends requests but never reads the replies
   * cannot grow our memory; reading resumes once the queue drained to half the bound.
   */
  maxQueuedBytes?: number;
  /**
   * Close the connection when no complete message arrived within this many ms of its start
   * (default: no limit). A front-end that connects and stays silent then cannot hold a daemon
   * that serves one front-end at a time.
   */
  handshakeTimeoutMs?: number | null;
  /**
   * Close the connection when a message started (part of a header or payload arrived) is not
   * complete within this many ms (default {@link DEFAULT_MESSAGE_TIMEOUT_MS}; null: no limit).
   */
  messageTimeoutMs?: number | null;
}

/** Default bound of unsent reply bytes before a connection stops reading. */
export const DEFAULT_MAX_QUEUED_BYTES = 256 * 1024;
/** Default time a started message has to complete. */
export const DEFAULT_MESSAGE_TIMEOUT_MS = 5000;

/** Why a connection was closed by one of its timeouts. */
export class ConnectionTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionTimeoutError';
  }
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
  /** The socket fd; owned by the connection, which closes it in close(). Do not close it yourself. */
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
  private queuedBytes = 0;
  private readonly maxQueuedBytes: number;
  private readonly messageTimeoutMs: number | null;
  /** Reading is paused because the peer does not read our replies. */
  private backPressure = false;
  private paused = false;
  private closed = false;
  private events = sys.POLLIN;
  private messagesReceived = 0;
  /** Armed while a message (or, before the first one, the handshake) is incomplete. */
  private timer: NodeJS.Timeout | null = null;

  constructor(fd: number, handler: ConnectionHandler, options: ConnectionOptions = {}) {
    this.fd = fd;
    this.handler = handler;
    this.maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    if (!(this.maxQueuedBytes > 0)) throw new RangeError('maxQueuedBytes must be positive');
    this.messageTimeoutMs = options.messageTimeoutMs === undefined ? DEFAULT_MESSAGE_TIMEOUT_MS : options.messageTimeoutMs;
    this.watcher = sys.watchFd(fd, sys.POLLIN, (status, events) => this.onPoll(status, events));
    const handshake = options.handshakeTimeoutMs ?? null;
    if (handshake !== null) this.arm(handshake, `no complete message within the ${handshake} ms handshake timeout`);
  }

  /** Bytes of replies waiting for the peer to read them. */
  get pendingOutputBytes(): number {
    return this.queuedBytes;
  }

  /** Complete messages received so far. */
  get messageCount(): number {
    return this.messagesReceived;
  }

  /** Whether reading is paused because too many replies are unsent. */
  get readingPausedByBackPressure(): boolean {
    return this.backPressure;
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
      this.queuedBytes += msg.bytes.length;
      this.checkBackPressure();
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
    this.disarm();
    for (const fd of this.fds) safeClose(fd);
    this.fds = [];
    this.outQueue.length = 0;
    this.queuedBytes = 0;
    this.payload = new Uint8Array(0);
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
    const rest = n === null ? { bytes, fds } : { bytes: bytes.subarray(n), fds: [] };
    this.outQueue.unshift(rest);
    this.queuedBytes += rest.bytes.length;
    this.checkBackPressure();
    this.updateWatcher();
    return false;
  }

  /** Pauses reading above the bound, resumes below half of it (hysteresis avoids flapping). */
  private checkBackPressure(): void {
    const on = this.backPressure ? this.queuedBytes > this.maxQueuedBytes / 2 : this.queuedBytes > this.maxQueuedBytes;
    if (on === this.backPressure) return;
    this.backPressure = on;
    this.updateWatcher();
    if (!on && !this.paused) setImmediate(() => this.readAvailable());
  }

  /** Polls for input unless a request is being processed, and for output while data is queued. */
  private updateWatcher(): void {
    if (this.watcher === null) return;
    const ev = (this.paused || this.backPressure ? 0 : sys.POLLIN) | (this.outQueue.length > 0 ? sys.POLLOUT : 0);
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
      this.queuedBytes -= head.bytes.length;
      // On a short write writeSome puts the remainder back at the head of the queue.
      if (!this.writeSome(head.bytes, head.fds)) return;
    }
    this.checkBackPressure();
    this.updateWatcher();
  }

  private arm(ms: number, reason: string): void {
    this.disarm();
    this.timer = setTimeout(() => this.close(new ConnectionTimeoutError(`vhost-user peer: ${reason}`)), ms);
    // A timeout guards against a peer; it must not keep the process alive by itself.
    this.timer.unref();
  }

  private disarm(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  /**
   * After a read: a message left incomplete gets one deadline from the moment it started (more
   * bytes trickling in do not extend it). Before the first message the handshake deadline rules.
   */
  private updateTimer(): void {
    if (this.closed || this.timer !== null || this.messageTimeoutMs === null) return;
    if (this.headerGot > 0 || this.header !== null) this.arm(this.messageTimeoutMs, `message incomplete after ${this.messageTimeoutMs} ms`);
  }

  private readAvailable(): void {
    this.readMessages();
    this.updateTimer();
  }

  private readMessages(): void {
    while (!this.closed && !this.paused && !this.backPressure) {
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
      this.messagesReceived++;
      this.disarm();
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
