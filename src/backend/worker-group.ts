/**
 * Main-thread proxy of a queue group served by a worker_thread: takes the place of that thread's
 * {@link VringEventHandler} for kicks and mirrors vring state and guest memory to the worker.
 *
 * Fds: the worker gets the group's own dups of the vrings' kick/call/err fds; a replaced dup is
 * closed only after the worker acknowledged the message that replaced it, so the worker never
 * writes to a closed (and possibly reused) fd number. Memory: each snapshot sent is pinned by a
 * guard until the worker reports it no longer maps it, so the worker never touches unmapped memory.
 * @module
 */
import { createRequire } from 'node:module';
import type { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import * as sys from '../sys/index.js';
import type { GuestMemoryAtomic, GuestMemoryGuard, RegionBacking } from '../memory/index.js';
import { SplitQueue, type SplitQueueState } from '../queue/split-queue.js';
import type { Logger } from '../log.js';
import type { Vring } from './vring.js';
import type { FromWorker, ToWorker, VringWorkerModule, WireRegion, WireVring, WorkerInit } from './worker-protocol.js';

// node:worker_threads is loaded when the first worker starts, not at startup: loading it costs an
// idle daemon ~1 MiB of RSS, and only `--threads N` > 1 uses it.
const requireBuiltin = createRequire(import.meta.url);
let workerThreads: typeof import('node:worker_threads') | null = null;

/** Default of {@link VringWorkerModule.quiesceTimeoutMs}. */
const QUIESCE_TIMEOUT_MS = 5000;

/** The fds of one vring as last sent to the worker: the source fd and the group's dup of it. */
interface SentFds {
  kick: { src: number | null; dup: number | null };
  call: { src: number | null; dup: number | null };
  err: { src: number | null; dup: number | null };
}

/** Extra state carried by a vring sync. */
export interface VringSyncExtra {
  /** SET_VRING_BASE indices. */
  state?: SplitQueueState;
  /** SET_VRING_ADDR: the worker takes the used index from the ring. */
  syncUsed?: boolean;
}

/** The host address of a sys Mapping backing (plain ArrayBuffer backings cannot be shared). */
function hostAddress(b: RegionBacking): bigint {
  const a = (b as { address?: unknown }).address;
  // 0: a region too large for one hole in the address space, mapped window by window.
  if (typeof a !== 'bigint' || a === 0n) throw new Error('guest memory backing has no single host address (a huge region mapped window by window, or plain memory); it cannot be shared with a worker');
  return a;
}

/** Serves the vrings of one thread from a worker_thread. */
export class WorkerVringGroup {
  private readonly worker: Worker;
  private readonly sent = new Map<number, SentFds>();
  /** Dups to close once the worker acknowledged message `seq`. */
  private readonly retired: Array<{ seq: number; fds: number[] }> = [];
  private readonly guards = new Map<number, GuestMemoryGuard>();
  private readonly pending = new Map<number, { resolve: (v: number) => void; reject: (e: Error) => void }>();
  private seq = 0;
  private acked = 0;
  private readonly flushWaiters: Array<{ seq: number; resolve: () => void }> = [];
  private gen = 0;
  private nextId = 0;
  private stopped = false;
  private exited: Promise<void>;
  private readonly quiesceTimeoutMs: number;

  /**
   * @param threadId index of the thread among the device's queue groups
   * @param vrings the vrings the worker serves (main-thread objects; they keep owning the fds)
   * @param onFatal called once if the worker dies on its own (the connection should end)
   */
  constructor(
    readonly threadId: number,
    readonly vrings: readonly Vring[],
    module: VringWorkerModule,
    numQueues: number,
    maxQueueSize: number,
    private readonly logger: Logger,
    private readonly onFatal: (e: Error) => void,
  ) {
    const url = module.url instanceof URL ? module.url.href : module.url.startsWith('file:') ? module.url : pathToFileURL(module.url).href;
    this.quiesceTimeoutMs = module.quiesceTimeoutMs ?? QUIESCE_TIMEOUT_MS;
    const init: WorkerInit = { url, data: module.data, threadId, maxQueueSize, numQueues, indices: vrings.map((v) => v.index) };
    for (const v of vrings) this.sent.set(v.index, { kick: { src: null, dup: null }, call: { src: null, dup: null }, err: { src: null, dup: null } });
    workerThreads ??= requireBuiltin('node:worker_threads') as typeof import('node:worker_threads');
    this.worker = new workerThreads.Worker(new URL('./worker-main.js', import.meta.url), { workerData: init });
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (e: Error) => {
      this.logger.log('error', `vring worker ${threadId}: ${e.stack ?? e.message}`);
    });
    this.exited = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        this.cleanup();
        if (!this.stopped) {
          this.stopped = true;
          const err = new Error(`vring worker ${threadId} exited unexpectedly (code ${code})`);
          this.logger.log('error', err.message);
          this.onFatal(err);
        }
        resolve();
      });
    });
  }

  /** Whether the worker still serves. */
  get running(): boolean {
    return !this.stopped;
  }

  private post(m: ToWorker): void {
    if (!this.stopped) this.worker.postMessage(m);
  }

  private request(make: (id: number) => ToWorker): Promise<number> {
    if (this.stopped) return Promise.reject(new Error(`vring worker ${this.threadId} is not running`));
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage(make(id));
    });
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'ready':
        break;
      case 'ack':
        this.acked = m.seq;
        while (this.flushWaiters.length > 0 && this.flushWaiters[0]!.seq <= m.seq) this.flushWaiters.shift()!.resolve();
        while (this.retired.length > 0 && this.retired[0]!.seq <= m.seq) {
          for (const fd of this.retired.shift()!.fds) sys.close(fd);
        }
        break;
      case 'released':
        this.guards.get(m.gen)?.release();
        this.guards.delete(m.gen);
        break;
      case 'log':
        this.logger.log(m.level, `vring worker ${this.threadId}: ${m.msg}`);
        break;
      case 'reply': {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.error !== undefined) p?.reject(new Error(m.error));
        else p?.resolve(m.value ?? 0);
        break;
      }
    }
  }

  /** Mirrors `v`'s configuration (and its fds, as dups) to the worker. */
  sync(v: Vring, extra: VringSyncExtra = {}): void {
    if (this.stopped) return;
    const seq = ++this.seq;
    const sent = this.sent.get(v.index);
    if (sent === undefined) throw new Error(`vring ${v.index} is not served by worker ${this.threadId}`);
    const retire: number[] = [];
    const fdOf = (slot: { src: number | null; dup: number | null }, src: number | null): number | null => {
      if (slot.src !== src) {
        if (slot.dup !== null) retire.push(slot.dup);
        slot.dup = src === null ? null : sys.dup(src);
        slot.src = src;
      }
      return slot.dup;
    };
    const q = v.queue;
    // The handler refuses RING_PACKED for devices with worker groups (see setFeatures).
    if (!(q instanceof SplitQueue)) throw new Error(`vring ${v.index}: packed rings are not served by worker threads yet`);
    const a = v.ringUserAddrs;
    const vring: WireVring = {
      index: v.index,
      size: q.size,
      desc: q.descGpa,
      avail: q.availGpa,
      used: q.usedGpa,
      usedLog: a === null || a.log === null ? null : Number(a.log),
      eventIdx: q.eventIdx,
      started: v.started,
      enabled: v.enabled,
      kick: fdOf(sent.kick, v.kickFd),
      call: fdOf(sent.call, v.callFd),
      err: fdOf(sent.err, v.errFd),
      ...extra,
    };
    if (retire.length > 0) this.retired.push({ seq, fds: retire });
    this.post({ type: 'vring', seq, vring });
  }

  /** Resolves once the worker applied every vring and memory update sent so far. */
  flush(): Promise<void> {
    if (this.stopped || this.acked >= this.seq) return Promise.resolve();
    return new Promise((resolve) => this.flushWaiters.push({ seq: this.seq, resolve }));
  }

  /** Sends the current snapshot of `atomic`, pinned until the worker releases it. */
  updateMemory(atomic: GuestMemoryAtomic): void {
    if (this.stopped) return;
    const guard = atomic.acquire();
    try {
      const mem = guard.memory;
      const regions: WireRegion[] = mem.regions.map((r) => ({
        gpa: r.guestPhysAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.mmapOffset,
        hostAddress: hostAddress(r.backing), hostLength: r.backing.length, backingOffset: r.backingOffset,
      }));
      const l = mem.dirtyLog;
      const log = l === null || l === undefined ? null : { hostAddress: hostAddress(l.backing), hostLength: l.backing.length, offset: l.offset, size: l.size };
      const gen = ++this.gen;
      this.guards.set(gen, guard);
      this.post({ type: 'memory', seq: ++this.seq, gen, regions, log });
    } catch (e) {
      guard.release();
      throw e;
    }
  }

  /** Forwards SET_FEATURES to the worker's device. */
  setFeatures(features: bigint, eventIdx: boolean): void {
    this.post({ type: 'features', features, eventIdx });
  }

  /** Kick fds are watched in the worker: mirror the vring (its kick fd and started state). */
  watchKick(v: Vring): void {
    this.sync(v);
  }

  /** Stopping the kick watch happens in the worker as part of {@link stopRing} / {@link resetRings}. */
  unwatchKick(_v: Vring): void {
    // Nothing on the main thread: it never watches this group's kick fds.
  }

  /** A kick (in-band VRING_KICK, or the daemon re-kicking after SET_VRING_KICK / enable). */
  kick(v: Vring): void {
    if (this.stopped) return;
    if (!v.started) v.setStarted(true);
    this.post({ type: 'kick', index: v.index });
  }

  /**
   * GET_VRING_BASE: the worker stops watching the ring, waits for its in-flight requests and
   * answers with the next available index.
   */
  stopRing(v: Vring): Promise<number> {
    return this.request((id) => ({ type: 'stop-ring', id, index: v.index }));
  }

  /** Device reset: the worker stops every ring, quiesces, resets its vrings and its device. */
  async resetRings(): Promise<void> {
    if (this.stopped) return;
    await this.requestWithin((id) => ({ type: 'reset', id }));
  }

  /** A request that fails after the quiesce timeout (the worker may be stuck). */
  private async requestWithin(make: (id: number) => ToWorker): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`vring worker ${this.threadId}: no answer in ${this.quiesceTimeoutMs} ms`)), this.quiesceTimeoutMs);
    });
    try {
      return await Promise.race([this.request(make), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the worker: asks it to quiesce and drop guest memory, then terminates it. */
  async stop(): Promise<void> {
    if (!this.stopped) {
      // A worker stuck in device code must not hold the daemon: it is terminated after a while
      // (its memory stays pinned until it has exited, so terminating it is always safe).
      try {
        await this.requestWithin((id) => ({ type: 'shutdown', id }));
      } catch (e) {
        this.logger.log('warn', `vring worker ${this.threadId}: shutdown: ${(e as Error).message}`);
      }
      this.stopped = true;
      await this.worker.terminate();
    }
    await this.exited;
  }

  /** The worker thread is gone: its windows are detached, so every pin and dup can go. */
  private cleanup(): void {
    for (const g of this.guards.values()) g.release();
    this.guards.clear();
    for (const r of this.retired) for (const fd of r.fds) sys.close(fd);
    this.retired.length = 0;
    for (const s of this.sent.values()) {
      for (const slot of [s.kick, s.call, s.err]) {
        if (slot.dup !== null) sys.close(slot.dup);
        slot.dup = slot.src = null;
      }
    }
    // Nothing will be applied any more; the connection is ending.
    for (const w of this.flushWaiters.splice(0)) w.resolve();
    for (const p of this.pending.values()) p.reject(new Error(`vring worker ${this.threadId} exited`));
    this.pending.clear();
  }
}
