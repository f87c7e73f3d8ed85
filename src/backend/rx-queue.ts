/**
 * A virtqueue the device fills on its own schedule (a NIC's receive queue, an event queue): the
 * driver posts device-writable buffers ahead of time and the device takes them when it has
 * something to deliver, rather than when the driver kicks. {@link RxQueue} owns the ring side of
 * that pattern: popping (malformed chains completed with used length 0 and counted, a ring that
 * cannot be trusted marked broken), completions batched into one used-index update and at most
 * one interrupt per event-loop task, and the notification dance for "no buffers left: tell me
 * when the driver adds some".
 *
 * Wire it with {@link VhostUserBackend.fillsQueue} returning true for the queue: its kicks then
 * reach {@link VhostUserBackend.handleEvent}, where the device calls {@link RxQueue.kicked}.
 * @module
 */
import { DescriptorChain } from '../queue/chain.js';
import { QueueError } from '../queue/constants.js';
import { defaultLogger, type Logger } from '../log.js';
import type { Vring } from './vring.js';

/** Options of an {@link RxQueue}. */
export interface RxQueueOptions {
  /** Where malformed chains are reported (give it a RateLimitedLogger for guest input). */
  logger?: Logger;
  /** Prefix of log lines (default `rx queue <index>`). */
  name?: string;
}

/** The device side of a queue the device fills itself. */
export class RxQueue {
  private readonly logger: Logger;
  private readonly name: string;
  private readonly pool: DescriptorChain[] = [];
  private flushQueued = false;
  private dirty = false;
  private readonly flushBound = (): void => this.flush();
  /** Chains completed with used length 0 because they were malformed (also in vring.stats.errors). */
  malformed = 0;

  /**
   * @param vring the ring; its memory, fds and started/enabled state stay the framework's
   * @param opts logger and log prefix
   */
  constructor(readonly vring: Vring, opts: RxQueueOptions = {}) {
    this.logger = opts.logger ?? defaultLogger;
    this.name = opts.name ?? `rx queue ${vring.index}`;
  }

  /** Whether the device may fill the ring now (started, enabled, mapped, not broken). */
  get ready(): boolean {
    return this.vring.ready && !this.vring.queue.broken;
  }

  /**
   * The next available chain, or null when the driver has posted none (or the ring is not
   * ready). Malformed chains are completed with used length 0, counted and logged on the way;
   * a ring whose indices cannot be trusted is marked broken (err eventfd signalled) and gives
   * null from then on. Hand the chain back with {@link complete}.
   */
  pop(): DescriptorChain | null {
    if (!this.ready) return null;
    const q = this.vring.queue;
    for (;;) {
      const reuse = this.pool.pop() ?? new DescriptorChain();
      let chain: DescriptorChain | null;
      try {
        chain = q.popDescriptorChain(reuse);
      } catch (e) {
        this.pool.push(reuse);
        if (e instanceof QueueError && e.headIndex !== null) {
          this.reject(e.headIndex, `malformed chain (${e.kind}): ${e.message}`);
          continue;
        }
        this.markBroken(e);
        return null;
      }
      if (chain === null) this.pool.push(reuse);
      return chain;
    }
  }

  /**
   * Gives a popped chain back to the driver with `len` bytes written (logged in the dirty log).
   * The used index is published, and the interrupt decided, once per event-loop task (a
   * microtask after the current batch), or earlier with {@link flush}.
   */
  complete(chain: DescriptorChain, len: number): void {
    const q = this.vring.queue;
    const log = q.memory?.dirtyLog ?? null;
    if (log !== null && len > 0) chain.logWritten(len, log);
    q.addUsedDeferred(chain.headIndex, len);
    const st = this.vring.stats;
    st.requests++;
    st.bytesOut += len;
    this.pool.push(chain);
    this.schedule();
  }

  /**
   * Completes a chain the device cannot use (e.g. a receive buffer smaller than the header) with
   * used length 0, counted in `malformed` and logged with `why`.
   */
  reject(id: number | DescriptorChain, why: string): void {
    const head = typeof id === 'number' ? id : id.headIndex;
    this.logger.log('warn', `${this.name}: ${why} (head ${head}); completed with used length 0`);
    this.vring.queue.addUsedDeferred(head, 0);
    this.malformed++;
    this.vring.stats.requests++;
    this.vring.stats.errors++;
    if (typeof id !== 'number') this.pool.push(id);
    this.schedule();
  }

  /** Publishes the completed entries (one used-index store) and interrupts the guest if it asked. */
  flush(): void {
    this.flushQueued = false;
    if (!this.dirty) return;
    this.dirty = false;
    try {
      this.vring.queue.publishUsed();
      this.vring.signalUsedIfNeeded();
    } catch (e) {
      this.logger.log('error', `${this.name}: cannot publish used entries: ${(e as Error).message}`);
    }
  }

  /**
   * The device has something to deliver but no buffer: asks the driver for a kick when it adds
   * buffers. Returns true when buffers arrived meanwhile (pop again now instead of waiting).
   */
  waitForBuffers(): boolean {
    if (!this.ready) return false;
    try {
      return this.vring.queue.enableNotification();
    } catch {
      return false;
    }
  }

  /**
   * The driver kicked (it added buffers): kicks are switched off again until the device runs out
   * of buffers ({@link waitForBuffers}), so a guest refilling its ring costs no wake-ups.
   */
  kicked(): void {
    this.vring.stats.kicks++;
    if (!this.ready) return;
    try {
      this.vring.queue.disableNotification();
    } catch { /* rings unmapped under us: nothing to do */ }
  }

  private schedule(): void {
    this.dirty = true;
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flushBound);
    }
  }

  private markBroken(e: unknown): void {
    const v = this.vring;
    v.queue.broken = true;
    v.stats.broken++;
    const kind = e instanceof QueueError ? e.kind : 'error';
    this.logger.log('error', `${this.name}: ring is broken (${kind}): ${(e as Error).message}; not filled until the front-end resets it`);
    v.signalError();
  }
}
