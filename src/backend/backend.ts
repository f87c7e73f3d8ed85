/**
 * The interface a virtio device implements to be served by {@link VhostUserDaemon}: the TypeScript
 * counterpart of rust-vmm's `VhostUserBackend` trait.
 * @module
 */
import type { GuestMemoryAtomic } from '../memory/index.js';
import type { BackendChannel } from '../vhost-user/backend-channel.js';
import type { CryptoSession, ShmemConfig } from '../vhost-user/messages.js';
import type { Vring } from './vring.js';
import type { VringWorkerModule } from './worker-protocol.js';

/** A virtio device implementation. */
export interface VhostUserBackend {
  /** Number of virtqueues the device has. */
  numQueues(): number;
  /** Largest queue size the device accepts (power of two). */
  maxQueueSize(): number;
  /**
   * Virtio and vhost feature bits offered. Include VHOST_USER_F_PROTOCOL_FEATURES (bit 30) to
   * negotiate protocol features.
   */
  features(): bigint;
  /** Protocol feature bits offered; the daemon offers only those it also implements. */
  protocolFeatures(): bigint;
  /** The features the driver acknowledged (SET_FEATURES). */
  ackedFeatures?(features: bigint): void;
  /** Whether VIRTIO_RING_F_EVENT_IDX was negotiated. */
  setEventIdx(enabled: boolean): void;
  /** The guest memory changed (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, SET_LOG_BASE). */
  updateMemory(mem: GuestMemoryAtomic): void;
  /** The front-end set up the back-end channel (BACKEND_REQ). */
  setBackendReqFd?(channel: BackendChannel): void;
  /** Reads `size` bytes of device config space at `offset` (throws when out of range). */
  getConfig?(offset: number, size: number): Uint8Array;
  /** Writes device config space. */
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
  /** An eventfd per thread; when it becomes readable the thread's handler stops. */
  exitEvent?(threadIndex: number): number | null;
  /**
   * A vring's kick fired (`deviceEvent` = queue index) or a listener registered with
   * {@link VringEventHandler.registerListener} fired (`deviceEvent` = its `data`, ≥ numQueues()).
   * `vrings` are the vrings of thread `threadId`. The daemon does not wait for a returned promise
   * before dispatching the next event: a device with async I/O tracks its own requests.
   */
  handleEvent(deviceEvent: number, evset: number, vrings: readonly Vring[], threadId: number): void | Promise<void>;
  /**
   * All rings are being stopped (GET_VRING_BASE, disconnect, reset): resolve once no request is
   * in flight, so no guest memory is written and no notification is sent afterwards.
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
  /** CLOSE_CRYPTO_SESSION. */
  closeCryptoSession?(sessionId: bigint): void | Promise<void>;
}
