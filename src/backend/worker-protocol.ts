/**
 * Messages between a {@link WorkerVringGroup} (main thread) and its worker_thread
 * (worker-main.ts), and the interface a device implements to run a queue group in a worker.
 * @module
 */
import type { GuestMemoryAtomic } from '../memory/index.js';
import type { DescriptorChain, SplitQueueState } from '../queue/index.js';
import type { Vring } from './vring.js';
import type { CompletionCallback, PENDING, ServingOptions } from './queue-server.js';

/**
 * The part of a device that runs inside a worker_thread: what {@link VhostUserBackend} does for
 * the queues of one thread. Created in the worker by the module's exported
 * `createVringWorker(data, threadId)` function.
 */
export interface VringWorker {
  /**
   * Serves one request of one of this thread's queues, exactly as VhostUserBackend.processChain
   * (including the allocation-free form: return PENDING and call `done` later): the worker runs
   * the framework's queue loop around it.
   */
  processChain?(queueIndex: number, chain: DescriptorChain, vring: Vring, done?: CompletionCallback): number | Promise<number> | typeof PENDING;
  /** How the framework serves the queue in this thread; see VhostUserBackend.servingOptions. */
  servingOptions?(queueIndex: number): ServingOptions;
  /** Requests in flight per queue (see VhostUserBackend.maxInFlight). */
  maxInFlight?(queueIndex: number): number;
  /** See VhostUserBackend.queueStopped. */
  queueStopped?(queueIndex: number): void;
  /** Low-level: a kick of one of this thread's vrings, when there is no processChain; see VhostUserBackend.handleEvent. */
  handleEvent?(deviceEvent: number, evset: number, vrings: readonly Vring[], threadId: number): void | Promise<void>;
  /** Whether VIRTIO_RING_F_EVENT_IDX was negotiated. */
  setEventIdx?(enabled: boolean): void;
  /** The features the driver acknowledged (SET_FEATURES). */
  ackedFeatures?(features: bigint): void;
  /** The worker's view of guest memory changed. */
  updateMemory?(mem: GuestMemoryAtomic): void;
  /** Resolve once no request of the device's own is in flight (reset, shutdown; ring stop without processChain). */
  quiesce?(): Promise<void>;
  /** Drop per-connection state (device reset). */
  resetDevice?(): void | Promise<void>;
}

/** Signature of the `createVringWorker` export of a worker module. */
export type CreateVringWorker = (data: unknown, threadId: number) => VringWorker | Promise<VringWorker>;

/** What {@link VhostUserBackend.workerModule} returns for a thread served by a worker. */
export interface VringWorkerModule {
  /** Module URL (file: URL of compiled JS) exporting `createVringWorker`. */
  url: string | URL;
  /** Structured-cloneable data passed to `createVringWorker`. */
  data?: unknown;
  /**
   * How long the worker may take to answer a reset or shutdown (quiesce included) before it is
   * considered stuck and terminated. Default 5000 ms.
   */
  quiesceTimeoutMs?: number;
}

/** @internal `workerData` of a vring worker. */
export interface WorkerInit {
  url: string;
  data: unknown;
  threadId: number;
  maxQueueSize: number;
  numQueues: number;
  indices: number[];
}

/** @internal One guest region as the worker maps it: a window over the main thread's mapping. */
export interface WireRegion {
  gpa: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
  /** Host address and length of the main thread's mapping holding the region. */
  hostAddress: bigint;
  hostLength: number;
  backingOffset: number;
}

/** @internal The dirty log, as a window over the main thread's mapping. */
export interface WireLog {
  hostAddress: bigint;
  hostLength: number;
  offset: number;
  size: number;
}

/** @internal Vring configuration mirrored to the worker (fds are the group's dups). */
export interface WireVring {
  index: number;
  size: number;
  desc: number;
  avail: number;
  used: number;
  usedLog: number | null;
  eventIdx: boolean;
  started: boolean;
  enabled: boolean;
  kick: number | null;
  call: number | null;
  err: number | null;
  /** SET_VRING_BASE: indices to install. */
  state?: SplitQueueState;
  /** SET_VRING_ADDR: take the used index from the ring. */
  syncUsed?: boolean;
}

/** @internal Main → worker. */
export type ToWorker =
  | { type: 'memory'; seq: number; gen: number; regions: WireRegion[]; log: WireLog | null }
  | { type: 'vring'; seq: number; vring: WireVring }
  | { type: 'features'; features: bigint; eventIdx: boolean }
  | { type: 'kick'; index: number }
  | { type: 'stop-ring'; id: number; index: number }
  | { type: 'reset'; id: number }
  | { type: 'shutdown'; id: number };

/** @internal Worker → main. */
export type FromWorker =
  | { type: 'ready' }
  | { type: 'ack'; seq: number }
  | { type: 'released'; gen: number }
  | { type: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; msg: string }
  | { type: 'reply'; id: number; value?: number; error?: string };
