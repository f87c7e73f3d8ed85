/**
 * `VhostUserDaemon`: serves a {@link VhostUserBackend} to vhost-user front-ends, one connection at a
 * time, resetting the device between connections (QEMU reconnect and VM reboot cases).
 * @module
 */
import { BackendEndpoint } from '../vhost-user/backend-endpoint.js';
import { UnixListener, connectUnixWithRetry } from '../vhost-user/listener.js';
import type { ConnectionOptions } from '../vhost-user/connection.js';
import * as sys from '../sys/index.js';
import { StderrLogger, toLogger, type Logger, type PinoLikeLogger } from '../log.js';
import { onGuestMemoryFault } from '../memory/index.js';
import type { VhostUserBackend } from './backend.js';
import { VhostUserHandler } from './handler.js';
import { statsFields, type QueueStatsSnapshot } from './stats.js';
import type { VringEventHandler } from './event-handler.js';

/** Options of a {@link VhostUserDaemon}. */
export interface VhostUserDaemonOptions {
  /**
   * Where the daemon logs (rejected requests name the request and the reason): a {@link Logger}
   * or a pino-compatible logger. Default: stderr, records named after the daemon.
   */
  logger?: Logger | PinoLikeLogger;
  /**
   * A front-end that has not sent one complete message within this many ms of being served is
   * disconnected, so a silent or half-open peer cannot block the front-ends behind it
   * (default {@link DEFAULT_HANDSHAKE_TIMEOUT_MS}; null: wait forever).
   */
  handshakeTimeoutMs?: number | null;
  /**
   * What happens to a front-end that connects while another one is served: `queue` (default)
   * accepts it, logs it and serves it once the current one left (at most
   * {@link MAX_WAITING_FRONTENDS} wait; more are refused); `refuse` closes it at once.
   */
  whenBusy?: 'queue' | 'refuse';
  /** Limits of each front-end connection (reply back-pressure, message timeout). */
  connection?: ConnectionOptions;
}

/** Default handshake timeout of an accepted front-end. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 5000;
/** Front-ends that may wait while another is served (`whenBusy: 'queue'`). */
export const MAX_WAITING_FRONTENDS = 8;

/** Serves one virtio device over vhost-user. */
export class VhostUserDaemon {
  private readonly logger: Logger;
  private listener: UnixListener | null = null;
  private endpoint: BackendEndpoint | null = null;
  private handler: VhostUserHandler | null = null;
  private stopping = false;
  private done: Promise<void>;
  private resolveDone!: () => void;
  private rejectDone!: (e: Error) => void;
  private sessionEnd: Promise<void> = Promise.resolve();
  private readonly waiting: number[] = [];
  private serving = false;
  private readonly handshakeTimeoutMs: number | null;
  private readonly whenBusy: 'queue' | 'refuse';
  private readonly connectionOptions: ConnectionOptions;
  /** Number of front-end connections served so far. */
  connections = 0;

  /**
   * @param name shown in logs
   * @param backend the device
   */
  constructor(readonly name: string, readonly backend: VhostUserBackend, options: VhostUserDaemonOptions = {}) {
    this.logger = options.logger === undefined ? new StderrLogger(name) : toLogger(options.logger);
    this.handshakeTimeoutMs = options.handshakeTimeoutMs === undefined ? DEFAULT_HANDSHAKE_TIMEOUT_MS : options.handshakeTimeoutMs;
    this.whenBusy = options.whenBusy ?? 'queue';
    this.connectionOptions = options.connection ?? {};
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    // wait() callers handle rejection; avoid an unhandled rejection when nobody waits.
    this.done.catch(() => undefined);
  }

  /** Listens on `path` (replacing a stale socket file) and serves front-ends that connect. */
  serve(path: string): void {
    this.start(UnixListener.listen(path));
  }

  /**
   * Serves front-ends from `listener` (e.g. `UnixListener.fromFd(3)` for an inherited socket):
   * one connection at a time; the next is accepted after the previous one ended.
   */
  start(listener: UnixListener): void {
    if (this.listener !== null) throw new Error('daemon already started');
    this.listener = listener;
    void this.acceptLoop(listener);
  }

  /** Back-end as client: connects to a front-end listening on `path` and serves that connection. */
  async connect(path: string, timeoutMs = 5000): Promise<void> {
    const fd = await connectUnixWithRetry(path, timeoutMs);
    await this.serveConnection(fd);
    this.resolveDone();
  }

  /**
   * Serves one already-connected front-end socket (e.g. a socketpair end passed by libvirt with
   * `--fd`); the daemon stops when that front-end disconnects.
   */
  serveConnectedFd(fd: number): void {
    if (this.listener !== null || this.serving) throw new Error('daemon already started');
    this.serving = true;
    void this.serveConnection(fd).then(() => {
      this.serving = false;
      this.resolveDone();
    });
  }

  /**
   * Per-queue counters of the front-end being served (empty when none is): requests, bytes in and
   * out, errors, kicks, interrupts, requests in flight.
   */
  stats(): QueueStatsSnapshot[] {
    return this.handler?.stats() ?? [];
  }

  /** Logs the current front-end's per-queue counters (one record per queue). */
  logStats(reason: string): void {
    const h = this.handler;
    if (h === null) {
      this.logger.log('info', `${reason}: no front-end connected`);
      return;
    }
    for (const s of h.stats()) this.logger.log('info', `${reason}: queue ${s.queue}:`, statsFields(s));
  }

  /** The per-thread event handlers of the current connection (rust-vmm's `get_epoll_handlers`). */
  getEpollHandlers(): readonly VringEventHandler[] {
    return this.handler?.eventHandlers ?? [];
  }

  /** Resolves when the daemon stopped (stop() or the end of a client-mode connection). */
  wait(): Promise<void> {
    return this.done;
  }

  /**
   * Stops accepting, ends the current connection after in-flight requests completed (so every
   * acknowledged write is on the disk), and unlinks the socket file.
   */
  async stop(): Promise<void> {
    if (this.stopping) return this.done;
    this.stopping = true;
    this.listener?.close();
    this.listener = null;
    this.endpoint?.close();
    await this.sessionEnd;
    this.resolveDone();
    return this.done;
  }

  private async acceptLoop(listener: UnixListener): Promise<void> {
    try {
      while (!this.stopping) {
        let fd: number;
        try {
          fd = await listener.accept();
        } catch (e) {
          if (this.stopping) break;
          throw e;
        }
        if (this.stopping) {
          closeQuietly(fd);
          break;
        }
        this.admit(fd);
      }
    } catch (e) {
      this.logger.log('error', `accept loop failed: ${(e as Error).message}`);
      this.rejectDone(e as Error);
    } finally {
      for (const fd of this.waiting.splice(0)) closeQuietly(fd);
    }
  }

  /** Serves `fd` now, or queues / refuses it while another front-end is served. */
  private admit(fd: number): void {
    if (!this.serving) {
      void this.serveQueued(fd);
      return;
    }
    if (this.whenBusy === 'refuse' || this.waiting.length >= MAX_WAITING_FRONTENDS) {
      this.logger.log('warn', `front-end refused: another front-end is being served` +
        (this.whenBusy === 'queue' ? ` and ${this.waiting.length} are waiting` : ''));
      closeQuietly(fd);
      return;
    }
    this.waiting.push(fd);
    this.logger.log('info', `front-end waiting (${this.waiting.length} in line): another front-end is being served`);
  }

  /** Serves `fd`, then each waiting front-end in turn. */
  private async serveQueued(first: number): Promise<void> {
    this.serving = true;
    try {
      for (let fd: number | undefined = first; fd !== undefined && !this.stopping; fd = this.waiting.shift()) {
        await this.serveConnection(fd, this.handshakeTimeoutMs);
      }
    } finally {
      this.serving = false;
    }
  }

  private serveConnection(fd: number, handshakeTimeoutMs: number | null = null): Promise<void> {
    this.connections++;
    const id = this.connections;
    this.logger.log('info', `front-end connected (connection ${id})`, { connection: id });
    const handler = new VhostUserHandler(this.backend, this.logger);
    this.handler = handler;
    const endpoint = new BackendEndpoint(fd, handler, {
      logger: this.logger,
      connection: { handshakeTimeoutMs, ...this.connectionOptions },
    });
    this.endpoint = endpoint;
    handler.onWorkerFailure = (e) => endpoint.close(e);
    // The front-end shrank a file behind memory it gave us: the guard turned the fatal SIGBUS into
    // zero pages; this connection is hostile or broken, so it ends here and the next one is served.
    const stopFaults = onGuestMemoryFault((f) => {
      if (f.owner !== handler) return;
      const msg = `front-end truncated the file behind ${f.description} (fault at 0x${f.address.toString(16)}, ${f.pages} page(s) replaced by zeroes)`;
      this.logger.log('error', msg, { connection: id });
      endpoint.close(new Error(msg));
    });
    this.sessionEnd = endpoint.closed().then(async (err) => {
      stopFaults();
      for (const st of handler.stats()) this.logger.log('info', `connection ${id} queue ${st.queue}:`, { connection: id, ...statsFields(st) });
      this.logger.log('info', `front-end disconnected (connection ${id})${err ? `: ${err.message}` : ''}`, { connection: id });
      try {
        await handler.close();
      } catch (e) {
        this.logger.log('error', `device reset failed: ${(e as Error).message}`, { connection: id });
      }
      if (this.handler === handler) this.handler = null;
      if (this.endpoint === endpoint) this.endpoint = null;
    });
    return this.sessionEnd;
  }
}

function closeQuietly(fd: number): void {
  try { sys.close(fd); } catch { /* already closed */ }
}
