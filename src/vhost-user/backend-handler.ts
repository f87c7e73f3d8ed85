/**
 * The interface a back-end implements to serve front-end requests: one method per request of the
 * vhost-user spec, as rust-vmm's `VhostUserBackendReqHandler`. The {@link BackendEndpoint} decodes,
 * validates and dispatches; it sends replies and REPLY_ACKs generically.
 *
 * Conventions:
 * - A method may return its value or a promise of it. Requests are processed strictly in order:
 *   the endpoint reads the next request only once the previous one has settled.
 * - Before a method is called the endpoint checks that the feature the spec requires for the
 *   request was negotiated (gating.ts); a handler never sees a request its features do not allow.
 * - Throwing (or rejecting) reports failure; throw a `VhostUserError` to give it a code (other
 *   errors are classified by `toVhostUserError`). With REPLY_ACK the front-end gets a non-zero ack
 *   (`errno` of the error when it has a numeric one, else 1); requests whose reply is mandatory and
 *   cannot carry an error close the connection.
 * - File descriptors passed to a method are borrowed: the endpoint closes them once the method
 *   has settled. Keep one by `dup`-ing it (sys.dup). This makes fd leaks impossible on any path.
 * - A method that is not implemented means the request is not supported: the front-end gets a
 *   failure ack when it asked for one, and the request is logged.
 * @module
 */
import type { BackendChannel } from './backend-channel.js';
import type { DeviceStateDirection, DeviceStatePhase } from './constants.js';
import type {
  AnyMemoryRegion,
  CryptoSession,
  Inflight,
  IotlbMsg,
  Log,
  MemoryRegionWithFd,
  ShmemConfig,
  VringAddr,
} from './messages.js';

/** A value or a promise of it. */
export type MaybePromise<T> = T | Promise<T>;

/** Back-end side handler of front-end requests. */
export interface BackendReqHandler {
  /** VHOST_USER_SET_OWNER: the session starts. */
  setOwner?(): MaybePromise<void>;
  /** VHOST_USER_RESET_OWNER (deprecated): the session ends. */
  resetOwner?(): MaybePromise<void>;
  /** VHOST_USER_GET_FEATURES. */
  getFeatures?(): MaybePromise<bigint>;
  /** VHOST_USER_SET_FEATURES. */
  setFeatures?(features: bigint): MaybePromise<void>;
  /** VHOST_USER_GET_PROTOCOL_FEATURES. */
  getProtocolFeatures?(): MaybePromise<bigint>;
  /** VHOST_USER_SET_PROTOCOL_FEATURES. */
  setProtocolFeatures?(features: bigint): MaybePromise<void>;
  /**
   * VHOST_USER_SET_MEM_TABLE: replaces the whole guest memory table. While postcopy is listening,
   * returns the back-end's host address of each region's first byte: the endpoint replies with
   * the table carrying them (the spec's postcopy reply).
   */
  setMemTable?(regions: readonly MemoryRegionWithFd[]): MaybePromise<void | readonly bigint[]>;
  /** VHOST_USER_SET_LOG_BASE: the dirty log shared memory. */
  setLogBase?(log: Log, fd: number): MaybePromise<void>;
  /** VHOST_USER_SET_LOG_FD. */
  setLogFd?(fd: number): MaybePromise<void>;
  /** VHOST_USER_SET_VRING_NUM: ring size. */
  setVringNum?(index: number, num: number): MaybePromise<void>;
  /** VHOST_USER_SET_VRING_ADDR: ring addresses (front-end user addresses). */
  setVringAddr?(addr: VringAddr): MaybePromise<void>;
  /** VHOST_USER_SET_VRING_BASE: next available index (split) or packed indices. */
  setVringBase?(index: number, base: number): MaybePromise<void>;
  /** VHOST_USER_GET_VRING_BASE: stops the ring and returns its base. */
  getVringBase?(index: number): MaybePromise<number>;
  /** VHOST_USER_SET_VRING_KICK: `fd` null means no fd (the back-end polls). Starts the ring. */
  setVringKick?(index: number, fd: number | null): MaybePromise<void>;
  /** VHOST_USER_SET_VRING_CALL. */
  setVringCall?(index: number, fd: number | null): MaybePromise<void>;
  /** VHOST_USER_SET_VRING_ERR. */
  setVringErr?(index: number, fd: number | null): MaybePromise<void>;
  /** VHOST_USER_GET_QUEUE_NUM. */
  getQueueNum?(): MaybePromise<bigint>;
  /** VHOST_USER_SET_VRING_ENABLE. */
  setVringEnable?(index: number, enable: boolean): MaybePromise<void>;
  /** VHOST_USER_SEND_RARP. */
  sendRarp?(mac: Uint8Array): MaybePromise<void>;
  /** VHOST_USER_NET_SET_MTU. */
  netSetMtu?(mtu: number): MaybePromise<void>;
  /** VHOST_USER_SET_BACKEND_REQ_FD: the back-end's channel to the front-end. */
  setBackendReqFd?(channel: BackendChannel): MaybePromise<void>;
  /** VHOST_USER_IOTLB_MSG. */
  iotlbMsg?(msg: IotlbMsg): MaybePromise<void>;
  /** VHOST_USER_SET_VRING_ENDIAN. */
  setVringEndian?(index: number, bigEndian: boolean): MaybePromise<void>;
  /** VHOST_USER_GET_CONFIG: returns exactly `size` bytes of config space. */
  getConfig?(offset: number, size: number, flags: number): MaybePromise<Uint8Array>;
  /** VHOST_USER_SET_CONFIG. */
  setConfig?(offset: number, data: Uint8Array, flags: number): MaybePromise<void>;
  /** VHOST_USER_CREATE_CRYPTO_SESSION: returns the session with `sessionId` set (negative = failure). */
  createCryptoSession?(session: CryptoSession): MaybePromise<CryptoSession>;
  /** VHOST_USER_CLOSE_CRYPTO_SESSION. */
  closeCryptoSession?(sessionId: bigint): MaybePromise<void>;
  /** VHOST_USER_POSTCOPY_ADVISE: returns a userfaultfd (ownership passes to the endpoint). */
  postcopyAdvise?(): MaybePromise<number>;
  /** VHOST_USER_POSTCOPY_LISTEN. */
  postcopyListen?(): MaybePromise<void>;
  /** VHOST_USER_POSTCOPY_END: returns 0 on success. */
  postcopyEnd?(): MaybePromise<bigint>;
  /** VHOST_USER_GET_INFLIGHT_FD: returns the area (fd ownership passes to the endpoint) or null fd. */
  getInflightFd?(request: Inflight): MaybePromise<{
    /** The area's description; `mmapSize` 0 means no inflight tracking. */
    inflight: Inflight;
    /** Fd of the area (ownership passes to the endpoint, which sends and closes it), or null. */
    fd: number | null;
  }>;
  /** VHOST_USER_SET_INFLIGHT_FD. */
  setInflightFd?(inflight: Inflight, fd: number): MaybePromise<void>;
  /** VHOST_USER_GPU_SET_SOCKET. */
  gpuSetSocket?(fd: number): MaybePromise<void>;
  /** VHOST_USER_RESET_DEVICE. */
  resetDevice?(): MaybePromise<void>;
  /** VHOST_USER_VRING_KICK (in-band notification). */
  vringKick?(index: number): MaybePromise<void>;
  /** VHOST_USER_GET_MAX_MEM_SLOTS. */
  getMaxMemSlots?(): MaybePromise<bigint>;
  /** VHOST_USER_ADD_MEM_REG; while postcopy is listening returns the region's host address for the reply. */
  addMemReg?(region: MemoryRegionWithFd): MaybePromise<void | bigint>;
  /**
   * Postcopy: the front-end acknowledged the addresses of the postcopy memory reply (an empty
   * SET_MEM_TABLE, or an 8-byte ADD_MEM_REG after a series of regions); register the memory with
   * the userfaultfd now. Failing it closes the connection (the front-end expects no reply).
   */
  postcopyAck?(): MaybePromise<void>;
  /** VHOST_USER_REM_MEM_REG. */
  remMemReg?(region: AnyMemoryRegion): MaybePromise<void>;
  /** VHOST_USER_SET_STATUS. */
  setStatus?(status: number): MaybePromise<void>;
  /** VHOST_USER_GET_STATUS. */
  getStatus?(): MaybePromise<number>;
  /** VHOST_USER_GET_SHARED_OBJECT: returns an fd for the object (ownership passes to the endpoint). */
  getSharedObject?(uuid: Uint8Array): MaybePromise<number>;
  /**
   * VHOST_USER_SET_DEVICE_STATE_FD: returns null to use the front-end's pipe end, or an fd of the
   * back-end's own choosing (ownership passes to the endpoint).
   */
  setDeviceStateFd?(direction: DeviceStateDirection, phase: DeviceStatePhase, fd: number): MaybePromise<number | null>;
  /** VHOST_USER_CHECK_DEVICE_STATE: throws when the transfer failed. */
  checkDeviceState?(): MaybePromise<void>;
  /**
   * VHOST_USER_GET_SHMEM_CONFIG (SHMEM): the sizes of the device's VIRTIO shared memory regions.
   * The reply cannot carry an error, so throwing closes the connection.
   */
  getShmemConfig?(): MaybePromise<ShmemConfig>;
  /** The connection ended (EOF, error or close()); `error` is null for an orderly end. */
  disconnected?(error: Error | null): void;
}
