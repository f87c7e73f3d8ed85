/**
 * Framework-owned serving of one virtqueue: a device supplies a per-request handler and the
 * {@link QueueServer} owns everything around it — the disable/drain/enable notification loop
 * (EVENT_IDX included), the malformed-chain policy, the in-flight bound, per-ring quiesce,
 * interrupt coalescing, memory pinning, dirty-page logging of written buffers and the reset
 * generation that keeps late completions off a reset ring.
 * @module
 */
import { DescriptorChain } from '../queue/chain.js';
import { QueueError } from '../queue/constants.js';
import type { GuestMemoryGuard } from '../memory/index.js';
import { defaultLogger, type Logger } from '../log.js';
import type { Vring } from './vring.js';

/**
 * Serves one request. Returns the number of bytes written into the chain's device-writable
 * buffers (the used length), or a promise of it for asynchronous requests. Throwing or rejecting
 * completes the request with used length 0 (and logs why): the queue keeps serving.
 *
 * The chain (and guest memory views taken from it) stays valid until the returned promise
 * settles; the memory snapshot is pinned for that long.
 */
export type ChainHandler = (chain: DescriptorChain, vring: Vring, done?: CompletionCallback) => number | Promise<number> | typeof PENDING;

/** Completes a request a handler answered with {@link PENDING}: its used length. Call it once. */
export type CompletionCallback = (used: number) => void;

/**
 * What a {@link ChainHandler} returns to complete the request later by calling its `done`
 * callback: the zero-allocation alternative to a promise (the callback is bound once per request
 * slot). The memory snapshot stays pinned until `done` runs; a negative or oversized used length
 * is clamped as for a promise.
 */
export const PENDING: unique symbol = Symbol('vhost-user.pending');

/** Options of a {@link QueueServer}. */
export interface QueueServerOptions {
  /** Requests in flight before the server stops popping (default: unbounded, i.e. the queue size). */
  maxInFlight?: number;
  /** Where malformed chains and failed requests are reported. */
  logger?: Logger;
  /** Prefix of log lines (default `queue <index>`). */
  name?: string;
  /**
   * Chains completed synchronously per used-index update (default {@link DEFAULT_BATCH}). A drain
   * that finds more work publishes every `batch` chains instead of once at the end, so a driver
   * whose ring is full can refill it while the rest is served (otherwise a fast driver and the
   * device take turns, each idle while the other works).
   */
  batch?: number;
  /**
   * Adaptive polling (kernel vhost's `busyloop_timeout`, QEMU's `poll-max-ns`): once the ring is
   * empty, keep checking it for up to this many µs with notifications still off before asking the
   * driver to kick again. A driver that produces steadily then never pays for a kick and a wake-up;
   * the cost is up to this much CPU spent spinning per idle period. 0 (default): never spin.
   */
  pollUs?: number;
  /**
   * Called while polling (see `pollUs`): completes the device's own finished work without waiting
   * for the event loop (e.g. reaps an io_uring's completion queue, after submitting what the
   * handler staged). Returns true when it completed something; those completions are then
   * published and signalled at once, and the poll time starts over.
   */
  pollHook?: () => boolean;
  /**
   * Chains served per turn of the event loop before the drain yields (notifications stay off and
   * it resumes on the next turn), so one busy ring cannot starve the other fds of its thread
   * (default {@link DEFAULT_TURN_BUDGET}).
   */
  turnBudget?: number;
  /**
   * Called after each batch of used entries is published (before the interrupt decision): a
   * device publishes work it did for the batch elsewhere, e.g. the receive queue a transmitted
   * frame was looped into, so it is not held back while this queue polls.
   */
  onPublish?: () => void;
  /**
   * Called once when the ring is found broken (e.g. the avail index jumped past the queue size),
   * after its err eventfd was signalled: the owner stops watching the ring's kick fd.
   */
  onBroken?: (vring: Vring) => void;
}

/** The serving knobs a device may set per queue (`VhostUserBackend.servingOptions`). */
export type ServingOptions = Pick<QueueServerOptions, 'batch' | 'pollUs' | 'pollHook' | 'turnBudget' | 'onPublish'>;

/** Default {@link QueueServerOptions.batch}: DPDK's vhost burst size is 32; 64 halves the stores. */
export const DEFAULT_BATCH = 64;

/** Default {@link QueueServerOptions.turnBudget}. */
export const DEFAULT_TURN_BUDGET = 4096;

/** One in-flight request: a recyclable chain plus the bound completion callbacks. */
class Request {
  readonly chain = new DescriptorChain();
  guard: GuestMemoryGuard | null = null;
  gen = 0;
  /** Bound once, so starting a request allocates no closure. */
  readonly done: (used: number) => void;
  readonly fail: (e: unknown) => void;
  constructor(server: QueueServer) {
    this.done = (used) => server.complete(this, used);
    this.fail = (e) => server.failed(this, e);
  }
}

function isThenable(v: unknown): v is PromiseLike<number> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

/** Serves the requests of one vring through a {@link ChainHandler}. */
export class QueueServer {
  private readonly maxInFlight: number;
  private readonly batch: number;
  private readonly pollMs: number;
  private readonly turnBudget: number;
  private readonly onPublish: (() => void) | null;
  private readonly pollHook: (() => boolean) | null;
  private yieldScheduled = false;
  private readonly resumeBound = (): void => {
    this.yieldScheduled = false;
    this.kick();
  };
  private readonly logger: Logger;
  private readonly name: string;
  private readonly onBroken: ((vring: Vring) => void) | null;
  private inFlightCount = 0;
  /** Stopped popping at the in-flight bound: the next completion resumes the drain. */
  private throttled = false;
  /** Bumped on reset: completions of an older generation leave the ring alone. */
  private gen = 0;
  /** Used entries were added since the last interrupt decision. */
  private needSignal = false;
  private flushScheduled = false;
  private draining = false;
  private readonly free: Request[] = [];
  private idleWaiters: (() => void)[] = [];
  private readonly flushBound = (): void => this.flush();

  /**
   * @param vring the ring served; its memory, fds and state stay owned by the vring
   * @param handler called once per popped chain; resolves to the used length written
   * @param opts in-flight bound, logger, log prefix and broken-ring callback
   */
  constructor(readonly vring: Vring, private readonly handler: ChainHandler, opts: QueueServerOptions = {}) {
    this.maxInFlight = opts.maxInFlight ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isInteger(this.maxInFlight) || this.maxInFlight < 1) throw new RangeError(`maxInFlight ${this.maxInFlight} must be an integer ≥ 1`);
    this.batch = opts.batch ?? DEFAULT_BATCH;
    if (!Number.isInteger(this.batch) || this.batch < 1) throw new RangeError(`batch ${this.batch} must be an integer ≥ 1`);
    const pollUs = opts.pollUs ?? 0;
    if (!Number.isFinite(pollUs) || pollUs < 0 || pollUs > 1_000_000) throw new RangeError(`pollUs ${pollUs} must be in [0, 1000000]`);
    this.pollMs = pollUs / 1000;
    this.onPublish = opts.onPublish ?? null;
    this.pollHook = opts.pollHook ?? null;
    this.turnBudget = opts.turnBudget ?? DEFAULT_TURN_BUDGET;
    if (!Number.isInteger(this.turnBudget) || this.turnBudget < 1) throw new RangeError(`turnBudget ${this.turnBudget} must be an integer ≥ 1`);
    this.logger = opts.logger ?? defaultLogger;
    this.name = opts.name ?? `queue ${vring.index}`;
    this.onBroken = opts.onBroken ?? null;
  }

  /** Requests of this ring currently in flight. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** The ring was kicked: serve what is available (no-op when the ring is not ready or is broken). */
  kick(): void {
    const v = this.vring;
    v.stats.kicks++;
    if (!v.ready || v.queue.broken) return;
    // A kick while requests are throttled finds the bound reached; the completion resumes.
    if (this.throttled) return;
    try {
      this.drain();
    } catch (e) {
      // Only a ring that vanished under us (unmapped) gets here; nothing to serve then.
      this.logger.log('error', `${this.name}: serving failed: ${(e as Error).stack ?? String(e)}`);
    }
  }

  /** Resolves once no request of this ring is in flight and its last interrupt decision was made. */
  quiesce(): Promise<void> {
    if (this.inFlightCount === 0 && !this.flushScheduled) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * The ring is being reset: requests still in flight complete without touching it (no used entry,
   * no interrupt). Resolves once they all completed and released their memory.
   */
  reset(): Promise<void> {
    this.gen++;
    this.throttled = false;
    this.needSignal = false;
    return this.quiesce();
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      this.drainLoop();
    } finally {
      this.draining = false;
    }
  }

  private drainLoop(): void {
    const vring = this.vring;
    const q = vring.queue;
    const batch = this.batch;
    let used = false;
    let unpublished = 0;
    let budget = this.turnBudget;
    for (;;) {
      q.disableNotification();
      for (;;) {
        if (unpublished >= batch) {
          this.publish();
          unpublished = 0;
          used = false;
        }
        if (budget-- === 0) {
          // Fairness: the rest is served on the next turn, after the thread's other fds.
          if (used) this.publish();
          if (!this.yieldScheduled) {
            this.yieldScheduled = true;
            setImmediate(this.resumeBound);
          }
          return;
        }
        if (this.inFlightCount >= this.maxInFlight) {
          // Notifications stay off: a completion resumes the drain.
          this.throttled = true;
          if (used) this.publish();
          return;
        }
        const req = this.free.pop() ?? new Request(this);
        let chain: DescriptorChain | null;
        try {
          chain = q.popDescriptorChain(req.chain);
        } catch (e) {
          this.free.push(req);
          if (e instanceof QueueError && e.headIndex !== null) {
            this.logger.log('warn', `${this.name}: malformed chain (head ${e.headIndex}, ${e.kind}): ${e.message}; completed with used length 0`);
            q.addUsed(e.headIndex, 0);
            vring.stats.requests++;
            vring.stats.errors++;
            used = true;
            unpublished++;
            continue;
          }
          this.markBroken(e);
          if (used) this.publish();
          return;
        }
        if (chain === null) {
          this.free.push(req);
          break;
        }
        let r: number | Promise<number> | typeof PENDING;
        try {
          r = this.handler(chain, vring, req.done);
        } catch (e) {
          this.requestFailed(chain, e);
          r = 0;
        }
        if (r === PENDING) {
          req.guard = vring.acquireMemory();
          req.gen = this.gen;
          this.inFlightCount++;
          continue;
        }
        if (isThenable(r)) {
          req.guard = vring.acquireMemory();
          req.gen = this.gen;
          this.inFlightCount++;
          r.then(req.done, req.fail);
          continue;
        }
        this.finish(chain, r, true);
        this.free.push(req);
        used = true;
        unpublished++;
      }
      if (used) {
        this.publish();
        used = false;
        unpublished = 0;
      }
      if (this.pollMs > 0 && this.poll()) continue;
      if (!q.enableNotification()) return;
    }
  }

  /** Spins (notifications off) until the ring has work or the poll time is up: true if it has. */
  private poll(): boolean {
    const q = this.vring.queue;
    const hook = this.pollHook;
    let deadline = performance.now() + this.pollMs;
    for (;;) {
      // The clock is read once per 16 checks: a check is a few ns, the clock tens.
      for (let i = 0; i < 16; i++) if (q.hasPending()) return true;
      if (hook !== null && hook()) {
        // Completions delivered by the hook are published now: nobody else runs while we spin.
        this.flush();
        deadline = performance.now() + this.pollMs;
      }
      if (performance.now() >= deadline || !this.vring.ready) return false;
    }
  }

  /** Makes the batch's used entries visible (one release store), then interrupts if the driver asked. */
  private publish(): void {
    this.vring.queue.publishUsed();
    this.onPublish?.();
    this.vring.signalUsedIfNeeded();
  }

  /** NEEDS_RESET: the ring is not served again until the front-end resets it. */
  private markBroken(e: unknown): void {
    const vring = this.vring;
    vring.queue.broken = true;
    vring.stats.broken++;
    const kind = e instanceof QueueError ? e.kind : 'error';
    this.logger.log('error', `${this.name}: ring is broken (${kind}): ${(e as Error).message}; not served until the front-end resets it`);
    vring.signalError();
    this.onBroken?.(vring);
  }

  private requestFailed(chain: DescriptorChain, e: unknown): void {
    this.vring.stats.errors++;
    const level = e instanceof QueueError ? 'warn' : 'error';
    const why = e instanceof QueueError ? `${e.kind}: ${e.message}` : ((e as Error | undefined)?.stack ?? String(e));
    this.logger.log(level, `${this.name}: request (head ${chain.headIndex}) failed: ${why}; completed with used length 0`);
  }

  /** Logs the written range in the dirty log, then publishes the used entry. */
  private finish(chain: DescriptorChain, usedLen: number, deferred = false): void {
    let len = usedLen;
    if (!(Number.isInteger(len) && len >= 0 && len <= chain.writableBytes)) {
      this.logger.log('warn', `${this.name}: request (head ${chain.headIndex}) reported used length ${String(usedLen)} for ${chain.writableBytes} writable bytes; clamped`);
      len = Number.isFinite(len) && len > 0 ? Math.min(Math.floor(len), chain.writableBytes) : 0;
    }
    const q = this.vring.queue;
    // Log everything written: the used length, and any writer views handed out beyond it.
    const log = q.memory?.dirtyLog ?? null;
    if (log !== null) chain.logWritten(Math.max(len, chain.writer.bytesWritten), log);
    // A synchronous batch is published once (publish()): one used-index store per wake-up. An
    // asynchronous completion is visible at once, as a polling driver expects.
    if (deferred) q.addUsedDeferred(chain.headIndex, len);
    else q.addUsed(chain.headIndex, len);
    const st = this.vring.stats;
    st.requests++;
    st.bytesIn += chain.readableBytes;
    st.bytesOut += len;
  }

  /** @internal Completion of an asynchronous request. */
  complete(req: Request, used: number): void {
    try {
      if (req.gen === this.gen) {
        this.finish(req.chain, used);
        this.needSignal = true;
      }
    } catch (e) {
      this.logger.log('error', `${this.name}: cannot complete head ${req.chain.headIndex}: ${(e as Error).message}`);
    } finally {
      req.guard?.release();
      req.guard = null;
      this.inFlightCount--;
      this.free.push(req);
    }
    // One interrupt decision per batch of completions: the microtask runs once the callback that
    // delivered them (an io_uring reap, a threadpool wake-up) returns, after the other requests
    // settled in it. A setImmediate would coalesce a whole event-loop turn but costs one more
    // trip through the loop per request at queue depth 1.
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(this.flushBound);
    }
    if (this.throttled && this.inFlightCount < this.maxInFlight) {
      this.throttled = false;
      this.kick();
    }
  }

  /** @internal Rejection of an asynchronous request. */
  failed(req: Request, e: unknown): void {
    this.requestFailed(req.chain, e);
    this.complete(req, 0);
  }

  /** Signals the guest for entries completed since the last flush, then wakes quiesce() waiters. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.needSignal) {
      this.needSignal = false;
      try {
        this.publish();
      } catch (e) {
        this.logger.log('error', `${this.name}: cannot signal: ${(e as Error).message}`);
      }
    }
    // Resolved only here, so no interrupt can follow a resolved quiesce().
    if (this.inFlightCount === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }
}

/**
 * Serves `vring` with `handler` from a low-level `handleEvent` (for devices that dispatch kicks
 * themselves): returns the {@link QueueServer}; call its `kick()` on every kick of the ring.
 */
export function serveQueue(vring: Vring, handler: ChainHandler, opts?: QueueServerOptions): QueueServer {
  return new QueueServer(vring, handler, opts);
}
