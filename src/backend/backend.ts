/**
 * The interface a virtio device implements to be served by {@link VhostUserDaemon}: the TypeScript
 * counterpart of rust-vmm's `VhostUserBackend` trait.
 * @module
 */
import type { GuestMemoryAtomic } from '../memory/index.js';
import type { BackendChannel } from '../vhost-user/backend-channel.js';
import type { CryptoSession, ShmemConfig } from '../vhost-user/messages.js';
import type { DescriptorChain } from '../queue/index.js';
import { ProtocolFeature, protocolFeatureMask } from '../vhost-user/constants.js';
import type { CompletionCallback, PENDING, ServingOptions } from './queue-server.js';
import type { Vring } from './vring.js';
import type { VringWorkerModule } from './worker-protocol.js';

/** Queue size limit of a device without `maxQueueSize()`. */
export const DEFAULT_MAX_QUEUE_SIZE = 256;

/** The protocol features offered by a device without `protocolFeatures()`. */
export function defaultProtocolFeatures(backend: VhostUserBackend): bigint {
  let f = [ProtocolFeature.MQ, ProtocolFeature.LOG_SHMFD, ProtocolFeature.PAGEFAULT, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.RESET_DEVICE, ProtocolFeature.STATUS]
    .reduce((m, b) => m | protocolFeatureMask(b), 0n);
  if (typeof backend.getConfig === 'function') f |= protocolFeatureMask(ProtocolFeature.CONFIG);
  return f;
}

/**
 * A virtio device implementation. A minimal device implements `numQueues`, `features` and
 * {@link processChain}; every other hook has a default.
 */
export interface VhostUserBackend {
  /** Number of virtqueues the device has. */
  numQueues(): number;
  /**
   * The device type as the feature tables name it (`blk`, `net`, `rng`...): device-specific
   * feature bits are then logged by name.
   */
  deviceType?(): string;
  /** Largest queue size the device accepts (power of two). Default {@link DEFAULT_MAX_QUEUE_SIZE}. */
  maxQueueSize?(): number;
  /**
   * Virtio and vhost feature bits offered. Include VHOST_USER_F_PROTOCOL_FEATURES (bit 30) to
   * negotiate protocol features.
   */
  features(): bigint;
  /**
   * Protocol feature bits offered; the daemon offers only those it also implements. Default
   * {@link defaultProtocolFeatures}: MQ, LOG_SHMFD (the framework logs every write), PAGEFAULT (postcopy), REPLY_ACK, CONFIGURE_MEM_SLOTS, RESET_DEVICE, STATUS, and
   * CONFIG when the device has `getConfig`.
   */
  protocolFeatures?(): bigint;
  /** The features the driver acknowledged (SET_FEATURES). */
  ackedFeatures?(features: bigint): void;
  /** Whether VIRTIO_RING_F_EVENT_IDX was negotiated (the rings already honour it). */
  setEventIdx?(enabled: boolean): void;
  /** The guest memory changed (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, SET_LOG_BASE). */
  updateMemory?(mem: GuestMemoryAtomic): void;
  /** The front-end set up the back-end channel (BACKEND_REQ). */
  setBackendReqFd?(channel: BackendChannel): void;
  /** Reads `size` bytes of device config space at `offset` (throws when out of range). */
  getConfig?(offset: number, size: number): Uint8Array;
  /**
   * Writes `data` at `offset` of the device config space (SET_CONFIG). Throw to refuse the write;
   * the front-end then gets a failure. Without this hook the config space is read-only.
   */
  setConfig?(offset: number, data: Uint8Array): void;
  /**
   * Bit masks assigning queues to event-handler threads: mask i has bit q set when queue q is
   * served by thread i. Default: one thread serving every queue.
   */
  queuesPerThread?(): number[];
  /**
   * Opt-in: serve thread `threadIndex`'s queues from a worker_thread. The worker imports `url` and
   * calls its exported `createVringWorker(data, threadId)` (a `VringWorker`), which then
   * handles those queues' kicks instead of {@link handleEvent}. Null (or no hook): the main thread
   * serves them. Guest memory must be mmap'ed (it is shared with the worker by address).
   */
  workerModule?(threadIndex: number): VringWorkerModule | null;
  /**
   * An eventfd per thread (or null): when it becomes readable the thread's handler reads it and
   * stops. The device keeps ownership of the fd.
   */
  exitEvent?(threadIndex: number): number | null;
  /**
   * Serves one request of queue `queueIndex` (the safe, request-level API). Return the number of
   * bytes written into the chain's device-writable buffers, or a promise of it. The framework owns
   * the rest: notification suppression and EVENT_IDX, malformed chains (completed with used length
   * 0, or the ring marked broken and its err fd signalled), the in-flight bound
   * ({@link maxInFlight}), per-ring quiesce for GET_VRING_BASE, interrupt coalescing, pinning the
   * memory snapshot while the promise is pending, and dirty-page logging of the written range.
   * A throw or rejection completes the request with used length 0.
   * Instead of a promise the device may return {@link PENDING} and call `done(usedLength)` once
   * later: no allocation per request.
   */
  processChain?(queueIndex: number, chain: DescriptorChain, vring: Vring, done?: CompletionCallback): number | Promise<number> | typeof PENDING;
  /**
   * Whether the device fills queue `queueIndex` on its own schedule (a NIC's receive queues): the
   * framework then does not pop it with {@link processChain}; its kicks go to {@link handleEvent}
   * (with the queue index), and the device serves it through an `RxQueue`. Asked on every kick,
   * so the answer may follow the negotiated features. Default: no queue.
   */
  fillsQueue?(queueIndex: number): boolean;
  /** Requests of queue `queueIndex` in flight before the framework stops popping (default: no bound). */
  maxInFlight?(queueIndex: number): number;
  /**
   * How the framework serves queue `queueIndex`: used-index batch size, adaptive polling
   * (`pollUs`, off by default) and the per-turn fairness budget (see QueueServerOptions).
   */
  servingOptions?(queueIndex: number): ServingOptions;
  /**
   * Queue `queueIndex` is stopping (GET_VRING_BASE) or being reset, and the framework is about to
   * wait for its in-flight requests: settle now the ones that wait on the device itself (timers,
   * rate limits), so the front-end is not kept waiting.
   */
  queueStopped?(queueIndex: number): void;
  /**
   * Low-level escape hatch (rust-vmm's `handle_event`): a vring's kick fired (`deviceEvent` =
   * queue index; only called for queues when there is no {@link processChain}, or for the queues
   * {@link fillsQueue} names) or a listener
   * registered with {@link VringEventHandler.registerListener} fired (`deviceEvent` = its `data`,
   * ≥ numQueues()). `vrings` are the vrings of thread `threadId`. The daemon does not wait for a
   * returned promise: such a device tracks its own requests and must handle malformed chains
   * itself (see {@link QueueServer} / `serveQueue` for the framework's loop).
   */
  handleEvent?(deviceEvent: number, evset: number, vrings: readonly Vring[], threadId: number): void | Promise<void>;
  /**
   * All rings are being reset (disconnect, RESET_DEVICE): resolve once no request of the device's
   * own is in flight. With {@link processChain} the framework already waits for its requests (per
   * ring for GET_VRING_BASE); without it, this is also awaited on GET_VRING_BASE.
   */
  quiesce?(): Promise<void>;
  /** Drop device state (front-end disconnected, RESET_DEVICE, RESET_OWNER). */
  resetDevice?(): void | Promise<void>;
  /**
   * VIRTIO shared memory regions of the device (GET_SHMEM_CONFIG; offer ProtocolFeature.SHMEM).
   * To place a file into a region, call `shmemMap` on the {@link BackendChannel} received in
   * {@link setBackendReqFd} (BACKEND_REQ must be offered too).
   */
  getShmemConfig?(): ShmemConfig | Promise<ShmemConfig>;
  /**
   * GET_SHARED_OBJECT (offer ProtocolFeature.SHARED_OBJECT): an fd for the exported object
   * `uuid`; ownership passes to the daemon, which sends and closes it. Throw when unknown.
   */
  getSharedObject?(uuid: Uint8Array): number | Promise<number>;
  /** GPU_SET_SOCKET: the vhost-user-gpu protocol socket. `fd` is borrowed: dup it to keep it. */
  setGpuSocket?(fd: number): void | Promise<void>;
  /** SEND_RARP (offer ProtocolFeature.RARP): announce the guest's MAC (6 bytes) after migration. */
  sendRarp?(mac: Uint8Array): void | Promise<void>;
  /** NET_SET_MTU (offer ProtocolFeature.MTU): throw when the MTU is not acceptable. */
  setMtu?(mtu: number): void | Promise<void>;
  /**
   * CREATE_CRYPTO_SESSION (offer ProtocolFeature.CRYPTO_SESSION): returns the new session id
   * (>= 0); throwing makes the reply carry a negative id.
   */
  createCryptoSession?(session: CryptoSession): bigint | Promise<bigint>;
  /** CLOSE_CRYPTO_SESSION: release session `sessionId`; a throw fails the request (non-zero REPLY_ACK). */
  closeCryptoSession?(sessionId: bigint): void | Promise<void>;
  /**
   * Live migration, source side (DEVICE_STATE): the device's internal state as bytes, called while
   * the device is stopped (SET_DEVICE_STATE_FD, direction SAVE). The daemon frames and checksums
   * it; the format of the bytes is the device's own (version it if it may change). Throwing makes
   * the front-end's CHECK_DEVICE_STATE fail. Offer DEVICE_STATE only together with {@link loadState}.
   */
  saveState?(): Uint8Array | Promise<Uint8Array>;
  /**
   * Live migration, destination side: restores what {@link saveState} produced on the source
   * (already checked against its checksum). Throw when the state is not acceptable (e.g. an unknown
   * version or a config this device cannot take): CHECK_DEVICE_STATE then reports the failure.
   */
  loadState?(state: Uint8Array): void | Promise<void>;
}
