/**
 * Per-thread event dispatch (rust-vmm's `VringEpollHandler`): watches the kick eventfds of the
 * vrings a thread owns, plus any fds the device registers, on that thread's libuv loop, and serves
 * kicked rings with a {@link QueueServer} over {@link VhostUserBackend.processChain} (or calls
 * the low-level {@link VhostUserBackend.handleEvent}).
 * @module
 */
import * as sys from '../sys/index.js';
import type { VhostUserBackend } from './backend.js';
import type { Vring } from './vring.js';
import { QueueServer } from './queue-server.js';
import type { Logger } from '../log.js';

/** Dispatches the events of one group of vrings. */
export class VringEventHandler {
  private readonly kickWatchers = new Map<number, sys.FdWatcher>();
  private readonly listeners = new Map<number, { watcher: sys.FdWatcher; data: number }>();
  private exitWatcher: sys.FdWatcher | null = null;
  private stopped = false;
  /** Per queue index: the framework's server, when the device implements processChain. */
  private readonly servers = new Map<number, QueueServer>();

  /**
   * @param threadId index of this handler among the daemon's handlers
   * @param vrings the vrings this handler serves
   */
  constructor(
    readonly threadId: number,
    readonly vrings: readonly Vring[],
    private readonly backend: VhostUserBackend,
    private readonly logger: Logger,
  ) {
    const serve = backend.processChain;
    if (typeof serve === 'function') {
      for (const v of vrings) {
        const index = v.index;
        this.servers.set(index, new QueueServer(v, (chain, vring, done) => serve.call(backend, index, chain, vring, done), {
          maxInFlight: backend.maxInFlight?.(index),
          ...backend.servingOptions?.(index),
          logger,
          name: `vring ${index}`,
          // A broken ring must cost nothing: its kicks are not even read until it is reset.
          onBroken: (vring) => this.unwatchKick(vring),
        }));
      }
    }
    const exitFd = backend.exitEvent?.(threadId) ?? null;
    if (exitFd !== null) {
      this.exitWatcher = sys.watchFd(exitFd, sys.POLLIN, () => {
        sys.eventfdRead(exitFd);
        this.logger.log('info', `event handler ${threadId}: exit event`);
        this.stop();
      });
      this.exitWatcher.unref();
    }
  }

  /** Whether this handler still dispatches events. */
  get running(): boolean {
    return !this.stopped;
  }

  /**
   * Watches a device-owned fd; when it is ready, `handleEvent(data, events, ...)` is called.
   * `data` must be ≥ numQueues() so it cannot be mistaken for a queue index.
   */
  registerListener(fd: number, events: number, data: number): void {
    if (data < this.backend.numQueues()) throw new RangeError(`listener data ${data} collides with a queue index`);
    if (this.listeners.has(fd)) throw new Error(`fd ${fd} is already registered`);
    const watcher = sys.watchFd(fd, events, (status, ev) => {
      if (status < 0) this.logger.log('warn', `listener fd ${fd}: poll error ${status}`);
      this.dispatch(data, ev);
    });
    this.listeners.set(fd, { watcher, data });
  }

  /** Stops watching a device-owned fd. */
  unregisterListener(fd: number): void {
    const l = this.listeners.get(fd);
    if (!l) return;
    l.watcher.close();
    this.listeners.delete(fd);
  }

  /** The framework's server of queue `index` (null for handleEvent devices). */
  queueServer(index: number): QueueServer | null {
    return this.servers.get(index) ?? null;
  }

  /** @internal Resolves once `vring`'s framework-served requests completed (GET_VRING_BASE). */
  quiesceRing(vring: Vring): Promise<void> {
    const s = this.servers.get(vring.index);
    if (s === undefined) return Promise.resolve();
    this.queueStopped(vring.index);
    // A queue the device fills itself has nothing in flight once the device stopped it.
    if (this.backend.fillsQueue?.(vring.index) === true) return Promise.resolve();
    return s.quiesce();
  }

  /**
   * @internal GET_VRING_BASE_INFLIGHT: `vring` stops without waiting for its requests; those
   * still in flight complete without touching the ring (they stay recorded as in flight).
   */
  async suspendRing(vring: Vring): Promise<void> {
    const s = this.servers.get(vring.index);
    if (s === undefined) return;
    this.queueStopped(vring.index);
    // The returned promise is the drain of the old generation: not waited for, by definition.
    void s.reset();
    await Promise.resolve();
  }

  /** @internal Device reset: in-flight requests complete without touching the rings; resolves when all did. */
  async resetRings(): Promise<void> {
    // Generations first, so whatever the device settles now does not reach the rings.
    const idle = Array.from(this.servers.values(), (s) => s.reset());
    for (const index of this.servers.keys()) this.queueStopped(index);
    await Promise.all(idle);
  }

  private queueStopped(index: number): void {
    try {
      this.backend.queueStopped?.(index);
    } catch (e) {
      this.logger.log('error', `queueStopped(${index}) threw: ${(e as Error).message}`);
    }
  }

  /** @internal Starts watching `vring`'s kick fd. */
  watchKick(vring: Vring): void {
    this.unwatchKick(vring);
    const fd = vring.kickFd;
    if (fd === null || this.stopped || vring.queue.broken) return;
    const watcher = sys.watchFd(fd, sys.POLLIN, (status) => {
      if (status < 0) {
        this.logger.log('warn', `vring ${vring.index}: kick fd poll error ${status}`);
        this.unwatchKick(vring);
        return;
      }
      // Drain the counter first: kicks arriving during processing re-arm the watcher.
      try {
        sys.eventfdRead(fd);
      } catch (e) {
        this.logger.log('warn', `vring ${vring.index}: reading kick fd: ${(e as Error).message}`);
        this.unwatchKick(vring);
        return;
      }
      this.kick(vring);
    });
    this.kickWatchers.set(vring.index, watcher);
  }

  /** @internal Stops watching `vring`'s kick fd. */
  unwatchKick(vring: Vring): void {
    const w = this.kickWatchers.get(vring.index);
    if (w) {
      w.close();
      this.kickWatchers.delete(vring.index);
    }
  }

  /** @internal A kick (eventfd or in-band VRING_KICK) for `vring`. */
  kick(vring: Vring): void {
    if (this.stopped) return;
    if (!vring.started) vring.setStarted(true);
    // A disabled ring consumes the kick without processing (as rust-vmm and libvhost-user do);
    // SET_VRING_ENABLE re-kicks it so queued buffers are not forgotten.
    if (!vring.ready) return;
    this.dispatch(vring.index, sys.POLLIN);
  }

  /** Stops dispatching: closes every watcher (the fds stay open; they belong to vrings/device). */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const w of this.kickWatchers.values()) w.close();
    this.kickWatchers.clear();
    for (const l of this.listeners.values()) l.watcher.close();
    this.listeners.clear();
    this.exitWatcher?.close();
    this.exitWatcher = null;
  }

  private dispatch(event: number, evset: number): void {
    const server = this.servers.get(event);
    // Asked per kick: which queues a device fills can depend on the negotiated features.
    if (server !== undefined && this.backend.fillsQueue?.(event) !== true) {
      server.kick();
      return;
    }
    if (typeof this.backend.handleEvent !== 'function') {
      this.logger.log('warn', `event ${event}: the device has neither processChain nor handleEvent`);
      return;
    }
    try {
      const r = this.backend.handleEvent(event, evset, this.vrings, this.threadId);
      if (r instanceof Promise) {
        r.catch((e: unknown) => this.logger.log('error', `handleEvent(${event}) failed: ${(e as Error).message}`));
      }
    } catch (e) {
      // A device bug must not take the daemon down; it is logged with the event that caused it.
      this.logger.log('error', `handleEvent(${event}) threw: ${(e as Error).stack ?? String(e)}`);
    }
  }
}
