/**
 * The front-end (VMM) side of vhost-user: a typed async method per front-end request. Drives any
 * vhost-user back-end; the probe CLI, loopback and interop tests use it.
 * @module
 */
import * as sys from '../sys/index.js';
import type { RawMessage } from './connection.js';
import { decodeFrontendReply, encodeFrontendRequest, type CodecContext } from './codec.js';
import {
  FrontendReq,
  ProtocolFeature,
  VHOST_USER_NEED_REPLY_MASK,
  hasProtocolFeature,
  requestName,
  type DeviceStateDirection,
  type DeviceStatePhase,
} from './constants.js';
import type {
  AnyMemoryRegion,
  Config,
  CryptoSession,
  FrontendReply,
  FrontendReplyOf,
  FrontendRequest,
  Inflight,
  IotlbMsg,
  Log,
  MemoryRegionWithFd,
  ShmemConfig,
  VringAddr,
} from './messages.js';
import { Requester } from './requester.js';
import { BackendChannelEndpoint, type BackendChannelHandler } from './backend-channel.js';
import { UnixListener, connectUnixWithRetry } from './listener.js';

/** The back-end replied to a request with a non-zero REPLY_ACK or error value. */
export class VhostUserRequestFailedError extends Error {
  /** Spec name of the request. */
  readonly request: string;
  /** The non-zero value the back-end returned. */
  readonly value: bigint;
  constructor(request: string, value: bigint) {
    super(`${request}: back-end reported failure ${value}`);
    this.name = 'VhostUserRequestFailedError';
    this.request = request;
    this.value = value;
  }
}

/** Options of a {@link Frontend}. */
export interface FrontendOptions {
  /** Reply timeout per request in ms (0 = none). Default 5000. */
  timeoutMs?: number;
}

/**
 * A vhost-user front-end connection. Requests are serialised (the protocol is synchronous);
 * each method resolves once the back-end replied or, for requests without a reply, once written —
 * or acknowledged, when REPLY_ACK is negotiated (set `replyAck = false` to skip acks).
 *
 * Fds passed to a method stay the caller's: they travel by SCM_RIGHTS, which gives the back-end
 * its own copies, so close yours when you no longer need them. Fds a method resolves with belong
 * to the caller. Methods reject with {@link VhostUserRequestFailedError} when the back-end
 * answers with a non-zero status, {@link VhostUserTimeoutError} when no reply arrives within
 * `timeoutMs` (the connection is then closed, being out of step), and
 * {@link VhostUserClosedError} once the connection is closed.
 */
export class Frontend {
  private readonly requester: Requester;
  private readonly ctx: CodecContext = { protocolFeatures: 0n };
  private backendChannel: BackendChannelEndpoint | null = null;
  /** Whether to ask for a REPLY_ACK on requests without a reply when REPLY_ACK is negotiated. */
  replyAck = true;

  /** Wraps a connected socket (owned from here on). */
  constructor(fd: number, options: FrontendOptions = {}) {
    this.requester = new Requester(fd, 'frontend', options.timeoutMs ?? 5000);
  }

  /** Front-end as client: connects to a back-end listening on `path` (retrying up to `timeoutMs`). */
  static async connect(path: string, options: FrontendOptions & { connectTimeoutMs?: number } = {}): Promise<Frontend> {
    return new Frontend(await connectUnixWithRetry(path, options.connectTimeoutMs ?? 5000), options);
  }

  /** Front-end as server: waits on `listener` for the back-end to connect. */
  static async accept(listener: UnixListener, options: FrontendOptions = {}): Promise<Frontend> {
    return new Frontend(await listener.accept(), options);
  }

  /** Protocol features in effect (what the last SET_PROTOCOL_FEATURES sent). */
  get protocolFeatures(): bigint {
    return this.ctx.protocolFeatures;
  }

  /** Reply timeout in ms. */
  get timeoutMs(): number {
    return this.requester.timeoutMs;
  }
  /** Changes the reply timeout in ms (0 = none) for the requests that follow. */
  set timeoutMs(ms: number) {
    this.requester.timeoutMs = ms;
  }

  /** Whether the connection is closed. */
  get isClosed(): boolean {
    return this.requester.isClosed;
  }

  /** Resolves when the connection closes, with the error that closed it (null if orderly). */
  closed(): Promise<Error | null> {
    return this.requester.waitClosed();
  }

  /** Closes the connection and the back-end channel. */
  close(): void {
    this.backendChannel?.close();
    this.backendChannel = null;
    this.requester.close();
  }

  // --- feature negotiation -------------------------------------------------------------------

  /** VHOST_USER_GET_FEATURES. */
  async getFeatures(): Promise<bigint> {
    return (await this.get(FrontendReq.GET_FEATURES, { request: FrontendReq.GET_FEATURES })).value;
  }
  /** VHOST_USER_SET_FEATURES. */
  setFeatures(features: bigint): Promise<void> {
    return this.set({ request: FrontendReq.SET_FEATURES, features });
  }
  /** VHOST_USER_GET_PROTOCOL_FEATURES. */
  async getProtocolFeatures(): Promise<bigint> {
    return (await this.get(FrontendReq.GET_PROTOCOL_FEATURES, { request: FrontendReq.GET_PROTOCOL_FEATURES })).value;
  }
  /** VHOST_USER_SET_PROTOCOL_FEATURES (REPLY_ACK takes effect for the requests after this one). */
  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.set({ request: FrontendReq.SET_PROTOCOL_FEATURES, features });
    this.ctx.protocolFeatures = features;
  }
  /** VHOST_USER_SET_OWNER. */
  setOwner(): Promise<void> {
    return this.set({ request: FrontendReq.SET_OWNER });
  }
  /** VHOST_USER_RESET_OWNER (deprecated by the spec; still sent by old front-ends). */
  resetOwner(): Promise<void> {
    return this.set({ request: FrontendReq.RESET_OWNER });
  }
  /** VHOST_USER_GET_QUEUE_NUM (needs ProtocolFeature.MQ). */
  async getQueueNum(): Promise<number> {
    return Number((await this.get(FrontendReq.GET_QUEUE_NUM, { request: FrontendReq.GET_QUEUE_NUM })).value);
  }
  /** VHOST_USER_GET_MAX_MEM_SLOTS (needs ProtocolFeature.CONFIGURE_MEM_SLOTS). */
  async getMaxMemSlots(): Promise<number> {
    return Number((await this.get(FrontendReq.GET_MAX_MEM_SLOTS, { request: FrontendReq.GET_MAX_MEM_SLOTS })).value);
  }

  // --- memory --------------------------------------------------------------------------------

  /** VHOST_USER_SET_MEM_TABLE; the fds stay the caller's. */
  setMemTable(regions: readonly MemoryRegionWithFd[]): Promise<void> {
    return this.set({ request: FrontendReq.SET_MEM_TABLE, regions: [...regions] });
  }
  /**
   * VHOST_USER_SET_MEM_TABLE after POSTCOPY_LISTEN, as QEMU's destination sends it: the back-end
   * replies with the table carrying its own mapping addresses, which this resolves with (in
   * region order), after acknowledging them with the empty table the spec describes.
   */
  async setMemTablePostcopy(regions: readonly MemoryRegionWithFd[]): Promise<bigint[]> {
    const r = await this.get(FrontendReq.SET_MEM_TABLE, { request: FrontendReq.SET_MEM_TABLE, regions: [...regions] });
    if (r.kind !== 'postcopy') throw new VhostUserRequestFailedError(requestName(r.request), r.value === 0n ? 1n : r.value);
    await this.requester.request(FrontendReq.SET_MEM_TABLE, encodeFrontendRequest({ request: FrontendReq.SET_MEM_TABLE, regions: [] }, this.ctx), false);
    return r.regions.map((x) => x.userAddr);
  }
  /** VHOST_USER_ADD_MEM_REG. */
  addMemReg(region: MemoryRegionWithFd): Promise<void> {
    return this.set({ request: FrontendReq.ADD_MEM_REG, region });
  }
  /** VHOST_USER_REM_MEM_REG. */
  remMemReg(region: AnyMemoryRegion): Promise<void> {
    return this.set({ request: FrontendReq.REM_MEM_REG, region, fd: null });
  }
  /** VHOST_USER_SET_LOG_BASE; with LOG_SHMFD waits for the back-end's confirmation. */
  async setLogBase(log: Log, fd: number): Promise<void> {
    const msg: FrontendRequest = { request: FrontendReq.SET_LOG_BASE, fd, ...log };
    if (hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.LOG_SHMFD)) {
      const r = await this.get(FrontendReq.SET_LOG_BASE, msg);
      if (r.value !== null && r.value !== 0n) throw new VhostUserRequestFailedError(requestName(r.request), r.value);
      return;
    }
    return this.set(msg);
  }
  /** VHOST_USER_SET_LOG_FD. */
  setLogFd(fd: number): Promise<void> {
    return this.set({ request: FrontendReq.SET_LOG_FD, fd });
  }

  // --- vrings --------------------------------------------------------------------------------

  /** VHOST_USER_SET_VRING_NUM. */
  setVringNum(index: number, num: number): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_NUM, index, num });
  }
  /** VHOST_USER_SET_VRING_ADDR (addresses in the front-end's address space). */
  setVringAddr(addr: VringAddr): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_ADDR, ...addr });
  }
  /** VHOST_USER_SET_VRING_BASE. */
  setVringBase(index: number, base: number): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_BASE, index, num: base });
  }
  /** VHOST_USER_GET_VRING_BASE: stops the ring, returns its base. */
  async getVringBase(index: number): Promise<number> {
    return (await this.get(FrontendReq.GET_VRING_BASE, { request: FrontendReq.GET_VRING_BASE, index, num: 0 })).num;
  }
  /** VHOST_USER_SET_VRING_KICK; `fd` null sets the NOFD bit (the back-end must poll). */
  setVringKick(index: number, fd: number | null): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_KICK, index, fd });
  }
  /** VHOST_USER_SET_VRING_CALL. */
  setVringCall(index: number, fd: number | null): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_CALL, index, fd });
  }
  /** VHOST_USER_SET_VRING_ERR. */
  setVringErr(index: number, fd: number | null): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_ERR, index, fd });
  }
  /** VHOST_USER_SET_VRING_ENABLE. */
  setVringEnable(index: number, enable: boolean): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_ENABLE, index, enable });
  }
  /** VHOST_USER_SET_VRING_ENDIAN (legacy devices). */
  setVringEndian(index: number, bigEndian: boolean): Promise<void> {
    return this.set({ request: FrontendReq.SET_VRING_ENDIAN, index, bigEndian });
  }
  /** VHOST_USER_VRING_KICK (in-band kick, INBAND_NOTIFICATIONS). */
  vringKick(index: number): Promise<void> {
    return this.set({ request: FrontendReq.VRING_KICK, index, num: 0 });
  }

  // --- device --------------------------------------------------------------------------------

  /** VHOST_USER_GET_CONFIG: reads `size` bytes of config space at `offset`. */
  async getConfig(offset: number, size: number, flags = 0): Promise<Uint8Array> {
    const r = await this.get(FrontendReq.GET_CONFIG, { request: FrontendReq.GET_CONFIG, offset, flags, data: new Uint8Array(size) });
    if (r.config === null) throw new VhostUserRequestFailedError(requestName(r.request), 1n);
    return r.config.data;
  }
  /** VHOST_USER_SET_CONFIG. */
  setConfig(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    return this.set({ request: FrontendReq.SET_CONFIG, offset, flags, data } as Config & { request: FrontendReq.SET_CONFIG });
  }
  /** VHOST_USER_SET_STATUS (virtio device status byte). */
  setStatus(status: number): Promise<void> {
    return this.set({ request: FrontendReq.SET_STATUS, status });
  }
  /** VHOST_USER_GET_STATUS. */
  async getStatus(): Promise<number> {
    return (await this.get(FrontendReq.GET_STATUS, { request: FrontendReq.GET_STATUS })).status;
  }
  /** VHOST_USER_RESET_DEVICE. */
  resetDevice(): Promise<void> {
    return this.set({ request: FrontendReq.RESET_DEVICE });
  }
  /** VHOST_USER_SEND_RARP (net): `mac` is 6 bytes. */
  sendRarp(mac: Uint8Array): Promise<void> {
    return this.set({ request: FrontendReq.SEND_RARP, mac });
  }
  /** VHOST_USER_NET_SET_MTU (net). */
  netSetMtu(mtu: number): Promise<void> {
    return this.set({ request: FrontendReq.NET_SET_MTU, mtu });
  }
  /** VHOST_USER_IOTLB_MSG. */
  iotlbMsg(msg: IotlbMsg): Promise<void> {
    return this.set({ request: FrontendReq.IOTLB_MSG, ...msg });
  }
  /** VHOST_USER_GPU_SET_SOCKET. */
  gpuSetSocket(fd: number): Promise<void> {
    return this.set({ request: FrontendReq.GPU_SET_SOCKET, fd });
  }
  /**
   * VHOST_USER_CREATE_CRYPTO_SESSION: resolves with the back-end's session; a negative session id
   * (the spec's failure reply) rejects with {@link VhostUserRequestFailedError} carrying `-id`.
   */
  async createCryptoSession(session: CryptoSession): Promise<CryptoSession> {
    const { request: _r, ...s } = await this.get(FrontendReq.CREATE_CRYPTO_SESSION, { request: FrontendReq.CREATE_CRYPTO_SESSION, ...session });
    if (s.sessionId < 0n) throw new VhostUserRequestFailedError(requestName(FrontendReq.CREATE_CRYPTO_SESSION), -s.sessionId);
    return s;
  }
  /** VHOST_USER_CLOSE_CRYPTO_SESSION. */
  closeCryptoSession(sessionId: bigint): Promise<void> {
    return this.set({ request: FrontendReq.CLOSE_CRYPTO_SESSION, sessionId });
  }

  // --- inflight, postcopy, shared objects, device state ------------------------------------

  /** VHOST_USER_GET_INFLIGHT_FD: resolves with the area and its fd (caller owns; null if none). */
  async getInflightFd(numQueues: number, queueSize: number): Promise<{
    /** The area as the back-end described it (size, offset, queue count and size). */
    inflight: Inflight;
    /** Fd of the area to mmap and keep for SET_INFLIGHT_FD after a reconnect; the caller owns it. Null when none. */
    fd: number | null;
  }> {
    const { request: _r, fd, ...inflight } = await this.get(FrontendReq.GET_INFLIGHT_FD, {
      request: FrontendReq.GET_INFLIGHT_FD, mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize,
    });
    return { inflight, fd };
  }
  /** VHOST_USER_SET_INFLIGHT_FD. */
  setInflightFd(inflight: Inflight, fd: number): Promise<void> {
    return this.set({ request: FrontendReq.SET_INFLIGHT_FD, fd, ...inflight });
  }
  /** VHOST_USER_POSTCOPY_ADVISE: resolves with the back-end's userfaultfd (caller owns). */
  async postcopyAdvise(): Promise<number> {
    return (await this.get(FrontendReq.POSTCOPY_ADVISE, { request: FrontendReq.POSTCOPY_ADVISE })).fd;
  }
  /** VHOST_USER_POSTCOPY_LISTEN. */
  postcopyListen(): Promise<void> {
    return this.set({ request: FrontendReq.POSTCOPY_LISTEN });
  }
  /** VHOST_USER_POSTCOPY_END. */
  async postcopyEnd(): Promise<void> {
    const r = await this.get(FrontendReq.POSTCOPY_END, { request: FrontendReq.POSTCOPY_END });
    if (r.value !== 0n) throw new VhostUserRequestFailedError(requestName(r.request), r.value);
  }
  /** VHOST_USER_GET_SHARED_OBJECT: resolves with the object's fd (caller owns). */
  async getSharedObject(uuid: Uint8Array): Promise<number> {
    const r = await this.get(FrontendReq.GET_SHARED_OBJECT, { request: FrontendReq.GET_SHARED_OBJECT, uuid });
    if (r.value !== 0n || r.fd === null) {
      if (r.fd !== null) sys.close(r.fd);
      throw new VhostUserRequestFailedError(requestName(r.request), r.value === 0n ? 1n : r.value);
    }
    return r.fd;
  }
  /**
   * VHOST_USER_SET_DEVICE_STATE_FD: resolves with the back-end's own pipe end (caller owns), or null
   * when the back-end uses `fd`.
   */
  async setDeviceStateFd(direction: DeviceStateDirection, phase: DeviceStatePhase, fd: number): Promise<number | null> {
    const r = await this.get(FrontendReq.SET_DEVICE_STATE_FD, { request: FrontendReq.SET_DEVICE_STATE_FD, direction, phase, fd });
    if ((r.value & 0xffn) !== 0n) {
      if (r.fd !== null) sys.close(r.fd);
      throw new VhostUserRequestFailedError(requestName(r.request), r.value & 0xffn);
    }
    return r.fd;
  }
  /** VHOST_USER_CHECK_DEVICE_STATE: throws when the back-end reports a failed transfer. */
  async checkDeviceState(): Promise<void> {
    const r = await this.get(FrontendReq.CHECK_DEVICE_STATE, { request: FrontendReq.CHECK_DEVICE_STATE });
    if (r.value !== 0n) throw new VhostUserRequestFailedError(requestName(r.request), r.value);
  }

  /** VHOST_USER_GET_SHMEM_CONFIG (SHMEM): the sizes of the device's VIRTIO shared memory regions. */
  async getShmemConfig(): Promise<ShmemConfig> {
    const { request: _r, ...c } = await this.get(FrontendReq.GET_SHMEM_CONFIG, { request: FrontendReq.GET_SHMEM_CONFIG });
    return c;
  }

  /**
   * VHOST_USER_SET_BACKEND_REQ_FD: creates the back-end channel (a socketpair), hands one end to the
   * back-end and serves back-end requests on the other with `handler`.
   */
  async setBackendReqFd(handler: BackendChannelHandler): Promise<void> {
    const [ours, theirs] = sys.socketpair();
    try {
      await this.set({ request: FrontendReq.SET_BACKEND_REQ_FD, fd: theirs });
    } catch (e) {
      sys.close(ours);
      throw e;
    } finally {
      sys.close(theirs);
    }
    this.backendChannel?.close();
    this.backendChannel = new BackendChannelEndpoint(ours, handler, undefined, this.ctx.protocolFeatures);
  }

  // --- plumbing ------------------------------------------------------------------------------

  /** Sends a request that has a reply body and decodes the reply. */
  private async get<R extends FrontendReq>(request: R, msg: FrontendRequest): Promise<FrontendReplyOf<R>> {
    const raw = await this.requester.request(request, encodeFrontendRequest(msg, this.ctx), true);
    return this.decode(request, raw!) as FrontendReplyOf<R>;
  }

  /** Sends a request without a reply body; with REPLY_ACK, waits for and checks the ack. */
  private async set(msg: FrontendRequest): Promise<void> {
    const r = await this.maybeAck(msg.request, msg);
    const value = r === null ? 0n : (r as { value?: bigint | null }).value;
    if (typeof value === 'bigint' && value !== 0n) throw new VhostUserRequestFailedError(requestName(msg.request), value);
  }

  private async maybeAck(request: FrontendReq, msg: FrontendRequest): Promise<FrontendReply | null> {
    const ack = this.replyAck && hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.REPLY_ACK);
    const raw = await this.requester.request(request, encodeFrontendRequest(msg, this.ctx, ack ? VHOST_USER_NEED_REPLY_MASK : 0), ack);
    return raw === null ? null : this.decode(request, raw);
  }

  private decode(request: FrontendReq, raw: RawMessage): FrontendReply {
    try {
      return decodeFrontendReply(request, raw.header, raw.payload, raw.fds, this.ctx);
    } catch (e) {
      for (const fd of raw.fds) sys.close(fd);
      this.requester.connection.close(e as Error);
      throw e;
    }
  }
}
