/**
 * The requesting side of a vhost-user channel: sends one request at a time and matches the reply.
 * Used by {@link Frontend} on the main socket and by {@link BackendChannel} on the back-end channel.
 * @module
 */
import { Connection, type RawMessage } from './connection.js';
import { isReply, type EncodedMessage } from './codec.js';
import { requestName, type Channel } from './constants.js';
import * as sys from '../sys/index.js';

/** Raised when a request got no reply in time; the channel is closed since it is out of step. */
export class VhostUserTimeoutError extends Error {
  /** Spec name of the request. */
  readonly request: string;
  constructor(request: string, ms: number) {
    super(`${request}: no reply within ${ms} ms`);
    this.name = 'VhostUserTimeoutError';
    this.request = request;
  }
}

/** Raised for requests made on (or pending at) a closed channel. */
export class VhostUserClosedError extends Error {
  constructor(what: string, cause?: Error | null) {
    super(`${what}: vhost-user channel closed${cause ? ` (${cause.message})` : ''}`, cause ? { cause } : undefined);
    this.name = 'VhostUserClosedError';
  }
}

interface Pending {
  request: number;
  resolve(msg: RawMessage): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout | null;
}

/**
 * Serialises requests on a connection. The protocol is strictly request/reply, so a request is
 * written only after the previous one completed; callers may still issue many without awaiting.
 */
export class Requester {
  readonly connection: Connection;
  private pending: Pending | null = null;
  private tail: Promise<unknown> = Promise.resolve();
  private closeError: Error | null = null;
  private closed = false;
  private readonly closeWaiters: Array<(e: Error | null) => void> = [];

  /**
   * @param fd socket to own
   * @param channel which numbering the request ids use (for error messages)
   * @param timeoutMs per-request reply timeout; 0 disables
   */
  constructor(
    fd: number,
    private readonly channel: Channel,
    public timeoutMs: number,
  ) {
    this.connection = new Connection(fd, {
      onMessage: (msg) => this.onMessage(msg),
      onClose: (e) => this.onClose(e),
    });
    this.connection.unref();
  }

  /** Whether the channel has closed. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Resolves when the channel closes, with the error that closed it (null for an orderly close). */
  waitClosed(): Promise<Error | null> {
    if (this.closed) return Promise.resolve(this.closeError);
    return new Promise((r) => this.closeWaiters.push(r));
  }

  /**
   * Sends `msg` (request id `request`). With `expectReply` resolves with the reply (whose fds the
   * caller then owns), else resolves with null once written.
   */
  request(request: number, msg: EncodedMessage, expectReply: boolean): Promise<RawMessage | null> {
    const run = (): Promise<RawMessage | null> => {
      const name = requestName(request, this.channel);
      if (this.closed) return Promise.reject(new VhostUserClosedError(name, this.closeError));
      if (!expectReply) {
        try {
          this.connection.send(msg);
        } catch (e) {
          return Promise.reject(new VhostUserClosedError(name, e as Error));
        }
        return Promise.resolve(null);
      }
      return new Promise<RawMessage>((resolve, reject) => {
        const p: Pending = { request, resolve, reject, timer: null };
        this.pending = p;
        this.connection.ref();
        if (this.timeoutMs > 0) {
          p.timer = setTimeout(() => {
            const err = new VhostUserTimeoutError(name, this.timeoutMs);
            this.settle(p);
            reject(err);
            this.connection.close(err);
          }, this.timeoutMs);
        }
        try {
          this.connection.send(msg);
        } catch (e) {
          this.settle(p);
          reject(new VhostUserClosedError(name, e as Error));
        }
      });
    };
    const result = this.tail.then(run, run);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /** Closes the channel; pending requests fail with VhostUserClosedError. */
  close(): void {
    this.connection.close(null);
  }

  private settle(p: Pending): void {
    if (p.timer) clearTimeout(p.timer);
    if (this.pending === p) {
      this.pending = null;
      if (!this.closed) this.connection.unref();
    }
  }

  private onMessage(msg: RawMessage): void {
    const p = this.pending;
    if (p !== null && isReply(msg.header) && msg.header.request === p.request) {
      this.settle(p);
      p.resolve(msg);
      return;
    }
    for (const fd of msg.fds) {
      try { sys.close(fd); } catch { /* ignore */ }
    }
    const what = p ? `while waiting for the reply to ${requestName(p.request, this.channel)}` : 'with no request pending';
    this.connection.close(
      new Error(`unexpected ${isReply(msg.header) ? 'reply' : 'request'} ${requestName(msg.header.request, this.channel)} ${what}`),
    );
  }

  private onClose(e: Error | null): void {
    this.closed = true;
    this.closeError = e;
    const p = this.pending;
    if (p) {
      this.settle(p);
      p.reject(new VhostUserClosedError(requestName(p.request, this.channel), e));
    }
    for (const w of this.closeWaiters.splice(0)) w(e);
  }
}
