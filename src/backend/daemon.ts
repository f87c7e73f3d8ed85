/**
 * `VhostUserDaemon`: serves a {@link VhostUserBackend} to vhost-user front-ends, one connection at a
 * time, resetting the device between connections (QEMU reconnect and VM reboot cases).
 * @module
 */
import { BackendEndpoint } from '../vhost-user/backend-endpoint.js';
import { UnixListener, connectUnixWithRetry } from '../vhost-user/listener.js';
import { defaultLogger, type Logger } from '../log.js';
import { onGuestMemoryFault } from '../memory/index.js';
import type { VhostUserBackend } from './backend.js';
import { VhostUserHandler } from './handler.js';
import type { VringEventHandler } from './event-handler.js';

/** Options of a {@link VhostUserDaemon}. */
export interface VhostUserDaemonOptions {
  /** Where the daemon logs (rejected requests name the request and the reason). */
  logger?: Logger;
}

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
  /** Number of front-end connections served so far. */
  connections = 0;

  /**
   * @param name shown in logs
   * @param backend the device
   */
  constructor(readonly name: string, readonly backend: VhostUserBackend, options: VhostUserDaemonOptions = {}) {
    this.logger = options.logger ?? defaultLogger;
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
        if (this.stopping) break;
        await this.serveConnection(fd);
      }
    } catch (e) {
      this.logger.log('error', `${this.name}: accept loop failed: ${(e as Error).message}`);
      this.rejectDone(e as Error);
    }
  }

  private serveConnection(fd: number): Promise<void> {
    this.connections++;
    const id = this.connections;
    this.logger.log('info', `${this.name}: front-end connected (connection ${id})`);
    const handler = new VhostUserHandler(this.backend, this.logger);
    this.handler = handler;
    const endpoint = new BackendEndpoint(fd, handler, { logger: this.logger });
    this.endpoint = endpoint;
    handler.onWorkerFailure = (e) => endpoint.close(e);
    // The front-end shrank a file behind memory it gave us: the guard turned the fatal SIGBUS into
    // zero pages; this connection is hostile or broken, so it ends here and the next one is served.
    const stopFaults = onGuestMemoryFault((f) => {
      if (f.owner !== handler) return;
      const msg = `front-end truncated the file behind ${f.description} (fault at 0x${f.address.toString(16)}, ${f.pages} page(s) replaced by zeroes)`;
      this.logger.log('error', `${this.name}: connection ${id}: ${msg}`);
      endpoint.close(new Error(msg));
    });
    this.sessionEnd = endpoint.closed().then(async (err) => {
      stopFaults();
      this.logger.log('info', `${this.name}: front-end disconnected (connection ${id})${err ? `: ${err.message}` : ''}`);
      try {
        await handler.close();
      } catch (e) {
        this.logger.log('error', `${this.name}: device reset failed: ${(e as Error).message}`);
      }
      if (this.handler === handler) this.handler = null;
      if (this.endpoint === endpoint) this.endpoint = null;
    });
    return this.sessionEnd;
  }
}
