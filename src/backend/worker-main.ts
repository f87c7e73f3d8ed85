/**
 * Entry point of a vring worker_thread (started by {@link WorkerVringGroup}): loads the device's
 * worker module, watches the group's kick fds on this thread's libuv loop and applies the vring and
 * memory state the main thread mirrors.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as sys from '../sys/index.js';
import { DirtyLog, GuestMemory, GuestMemoryAtomic, GuestRegion, type RegionBacking } from '../memory/index.js';
import type { Logger, LogLevel } from '../log.js';
import type { SplitQueue } from '../queue/index.js';
import type { VhostUserBackend } from './backend.js';
import { VringEventHandler } from './event-handler.js';
import { Vring } from './vring.js';
import type { CreateVringWorker, FromWorker, ToWorker, VringWorker, WireVring, WorkerInit } from './worker-protocol.js';

/** A Vring whose fds belong to the main thread: it uses them but never closes them. */
class WorkerVring extends Vring {
  #kick: number | null = null;
  #call: number | null = null;
  #err: number | null = null;
  override get kickFd(): number | null { return this.#kick; }
  override get callFd(): number | null { return this.#call; }
  override get errFd(): number | null { return this.#err; }
  override setKickFd(fd: number | null): void { this.#kick = fd; }
  override setCallFd(fd: number | null): void { this.#call = fd; }
  override setErrFd(fd: number | null): void { this.#err = fd; }
  override signalUsedQueue(): void {
    if (this.#call !== null) sys.eventfdWrite(this.#call, 1);
  }
  override signalUsedIfNeeded(): void {
    if (this.#call !== null && this.queue.needsNotification()) sys.eventfdWrite(this.#call, 1);
  }
  override signalError(): void {
    if (this.#err !== null) sys.eventfdWrite(this.#err, 1);
  }
}

const port = parentPort;
if (port === null) throw new Error('worker-main.js must run in a worker_thread');
const init = workerData as WorkerInit;
const send = (m: FromWorker): void => port.postMessage(m);
const logger: Logger = { log: (level: LogLevel, msg: string) => send({ type: 'log', level, msg }) };

const vrings = init.indices.map((i) => new WorkerVring(i, init.maxQueueSize));
const byIndex = new Map(vrings.map((v) => [v.index, v]));
const atomic = new GuestMemoryAtomic();
let device: VringWorker | null = null;

/** Counts the live windows of each memory generation; 'released' goes out when it reaches zero. */
const liveWindows = new Map<number, number>();
function backing(gen: number, hostAddress: bigint, hostLength: number): RegionBacking {
  const m = sys.wrapMemory(hostAddress, hostLength);
  liveWindows.set(gen, (liveWindows.get(gen) ?? 0) + 1);
  let done = false;
  return {
    get windows(): readonly ArrayBuffer[] {
      return m.windows;
    },
    windowCount: m.windowCount,
    window: (i: number): ArrayBuffer => m.window(i),
    length: m.length,
    unmap(): void {
      if (done) return;
      done = true;
      m.unmap();
      const left = (liveWindows.get(gen) ?? 1) - 1;
      if (left > 0) {
        liveWindows.set(gen, left);
      } else {
        liveWindows.delete(gen);
        send({ type: 'released', gen });
      }
    },
  };
}

// The event loop of VringEventHandler (and the framework's queue servers), fed by the worker
// device instead of a VhostUserBackend. Created once the device is loaded.
let events: VringEventHandler = null as unknown as VringEventHandler;

function makeEvents(d: VringWorker): VringEventHandler {
  const adapter: VhostUserBackend = {
    numQueues: () => init.numQueues,
    maxQueueSize: () => init.maxQueueSize,
    features: () => 0n,
    protocolFeatures: () => 0n,
  };
  if (typeof d.processChain === 'function') {
    const serve = d.processChain;
    adapter.processChain = (q, chain, v, done) => serve.call(d, q, chain, v, done);
    if (typeof d.maxInFlight === 'function') {
      const bound = d.maxInFlight;
      adapter.maxInFlight = (q) => bound.call(d, q);
    }
    if (typeof d.queueStopped === 'function') {
      const stopped = d.queueStopped;
      adapter.queueStopped = (q) => stopped.call(d, q);
    }
  }
  if (typeof d.servingOptions === 'function') {
    const options = d.servingOptions;
    adapter.servingOptions = (q) => options.call(d, q);
  }
  if (typeof d.handleEvent === 'function') {
    const handle = d.handleEvent;
    adapter.handleEvent = (ev, evset, vs, t) => handle.call(d, ev, evset, vs, t);
  }
  return new VringEventHandler(init.threadId, vrings, adapter, logger);
}

function applyMemory(gen: number, m: Extract<ToWorker, { type: 'memory' }>): void {
  const regions: GuestRegion[] = [];
  let log: DirtyLog | null = null;
  try {
    for (const r of m.regions) {
      const b = backing(gen, r.hostAddress, r.hostLength);
      try {
        regions.push(new GuestRegion({ guestPhysAddr: r.gpa, size: r.size, userAddr: r.userAddr, mmapOffset: r.mmapOffset, backing: b, backingOffset: r.backingOffset }));
      } catch (e) {
        b.unmap?.();
        throw e;
      }
    }
    if (m.log !== null) {
      const b = backing(gen, m.log.hostAddress, m.log.hostLength);
      try {
        log = new DirtyLog(b, m.log.offset, m.log.size);
      } catch (e) {
        b.unmap?.();
        throw e;
      }
    }
    atomic.replace(new GuestMemory(regions, log));
  } catch (e) {
    for (const r of regions) r.unmap();
    (log as DirtyLog | null)?.unmap();
    throw e;
  }
  if (!liveWindows.has(gen)) send({ type: 'released', gen }); // an empty table pins nothing
  for (const v of vrings) {
    try {
      v.setMemory(atomic);
    } catch (e) {
      logger.log('warn', `vring ${v.index}: rings not usable with the new memory table: ${(e as Error).message}`);
    }
  }
  device?.updateMemory?.(atomic);
}

function applyVring(w: WireVring): void {
  const v = byIndex.get(w.index);
  if (v === undefined) throw new RangeError(`vring ${w.index} is not served by this worker`);
  // A worker serves split rings only (the main thread refuses RING_PACKED with worker groups).
  const q = v.queue as SplitQueue;
  const resized = q.size !== w.size;
  if (resized) q.setSize(w.size);
  if (resized || q.descGpa !== w.desc || q.availGpa !== w.avail || q.usedGpa !== w.used) {
    try {
      q.setAddresses(w.desc, w.avail, w.used);
    } catch (e) {
      logger.log('warn', `vring ${w.index}: ${(e as Error).message}`);
    }
  }
  q.setUsedLog(w.usedLog);
  q.eventIdx = w.eventIdx;
  if (w.state !== undefined) q.setState(w.state);
  if (w.syncUsed === true) q.syncNextUsedFromRing();
  v.setEnabled(w.enabled);
  const rewatch = v.kickFd !== w.kick || v.started !== w.started;
  v.setCallFd(w.call);
  v.setErrFd(w.err);
  if (rewatch) {
    events.unwatchKick(v);
    v.setKickFd(w.kick);
    v.setStarted(w.started);
    if (w.kick !== null && w.started) events.watchKick(v);
  }
}

async function stopAll(): Promise<void> {
  for (const v of vrings) {
    events.unwatchKick(v);
    v.setStarted(false);
  }
  await events.resetRings();
  await device?.quiesce?.();
}

async function handle(m: ToWorker): Promise<void> {
  switch (m.type) {
    case 'memory':
      try {
        applyMemory(m.gen, m);
      } finally {
        send({ type: 'ack', seq: m.seq });
      }
      return;
    case 'vring':
      try {
        applyVring(m.vring);
      } finally {
        send({ type: 'ack', seq: m.seq });
      }
      return;
    case 'features':
      device?.setEventIdx?.(m.eventIdx);
      device?.ackedFeatures?.(m.features);
      return;
    case 'kick': {
      const v = byIndex.get(m.index);
      if (v !== undefined) events.kick(v);
      return;
    }
    case 'stop-ring': {
      const v = byIndex.get(m.index);
      if (v === undefined) throw new RangeError(`vring ${m.index} is not served by this worker`);
      events.unwatchKick(v);
      v.setStarted(false);
      // Only this ring's requests are waited for.
      await events.quiesceRing(v);
      if (typeof device?.processChain !== 'function') await device?.quiesce?.();
      v.queue.broken = false;
      send({ type: 'reply', id: m.id, value: v.queue.vringBase });
      return;
    }
    case 'reset':
      await stopAll();
      for (const v of vrings) {
        v.reset();
        v.setMemory(atomic);
      }
      await device?.resetDevice?.();
      send({ type: 'reply', id: m.id });
      return;
    case 'shutdown':
      await stopAll();
      events.stop();
      for (const v of vrings) v.reset();
      atomic.close();
      send({ type: 'reply', id: m.id });
      return;
  }
}

// Messages are applied strictly in order, each after the previous one settled (as the endpoint
// does with requests), so a reply is only sent once everything before it took effect.
const ready = (async () => {
  const mod = (await import(init.url)) as { createVringWorker?: CreateVringWorker };
  if (typeof mod.createVringWorker !== 'function') throw new Error(`${init.url} does not export createVringWorker`);
  device = await mod.createVringWorker(init.data, init.threadId);
  events = makeEvents(device);
  send({ type: 'ready' });
})();
// Without a device the worker cannot serve: exit, which ends the connection on the main thread.
ready.catch((e: unknown) => {
  logger.log('error', `loading ${init.url}: ${(e as Error).stack ?? String(e)}`);
  process.exit(1);
});
let chain: Promise<void> = ready.catch(() => new Promise<void>(() => undefined));
port.on('message', (m: ToWorker) => {
  chain = chain.then(() => handle(m)).catch((e: unknown) => {
    const err = e as Error;
    logger.log('error', `${m.type}: ${err.stack ?? String(e)}`);
    if ('id' in m) send({ type: 'reply', id: m.id, error: `${m.type}: ${err.message}` });
  });
});
