/**
 * The back-end end of a vhost-user connection: decodes and validates front-end requests, dispatches
 * them to a {@link BackendReqHandler}, and sends replies and REPLY_ACKs.
 * @module
 */
import * as sys from '../sys/index.js';
import { Connection, type ConnectionOptions, type RawMessage } from './connection.js';
import {
  decodeFrontendRequest,
  encodeFrontendReply,
  encodeReplyAck,
  needsReply,
  type CodecContext,
  type EncodedMessage,
} from './codec.js';
import {
  FrontendReq, ProtocolFeature, hasProtocolFeature, requestName, VHOST_USER_DEVICE_STATE_NOFD_MASK, VHOST_USER_MAX_SHMEM_REGIONS,
} from './constants.js';
import { VhostUserError, VhostUserProtocolError, toVhostUserError } from './errors.js';
import { checkGate, checkProtocolFeatureSet, initialNegotiation, type NegotiationState } from './gating.js';
import type { FrontendReply, FrontendRequest } from './messages.js';
import type { BackendReqHandler, MaybePromise } from './backend-handler.js';
import type { BackendChannel } from './backend-channel.js';
import { UnixListener, connectUnixWithRetry } from './listener.js';
import { defaultLogger, type Logger } from '../log.js';

/** Options of a {@link BackendEndpoint}. */
export interface BackendEndpointOptions {
  /** Where rejected requests and handler failures are logged. */
  logger?: Logger;
  /** Reply timeout of the back-end channel (SET_BACKEND_REQ_FD), in ms. Default 5000. */
  backendChannelTimeoutMs?: number;
  /** Back-pressure and timeouts of the front-end socket. */
  connection?: ConnectionOptions;
}

/** Raised for a request the handler does not implement (code `not-supported`). */
export class NotSupportedError extends VhostUserError {
  constructor(request: string) {
    super('not-supported', request, 'not supported by this back-end');
    this.name = 'NotSupportedError';
  }
}

/** A reply body to send, or null when the request has none (an ack may still be due). */
type Outcome = FrontendReply | null;

/**
 * Serves one front-end connection. Owns the socket; ends when the front-end disconnects, a
 * request is malformed beyond an error reply, or {@link close} is called.
 */
export class BackendEndpoint {
  private readonly conn: Connection;
  private readonly ctx: CodecContext = { protocolFeatures: 0n };
  private readonly logger: Logger;
  private readonly channelTimeoutMs: number;
  private closedWith: Error | null | undefined = undefined;
  private readonly closeWaiters: Array<(e: Error | null) => void> = [];
  private backendChannel: BackendChannel | null = null;
  /** What was negotiated so far: every request is checked against it (see gating.ts). */
  private readonly negotiation: NegotiationState = initialNegotiation();

  /** Serves the already connected socket `fd` (which it then owns). */
  constructor(fd: number, private readonly handler: BackendReqHandler, options: BackendEndpointOptions = {}) {
    this.logger = options.logger ?? defaultLogger;
    this.channelTimeoutMs = options.backendChannelTimeoutMs ?? 5000;
    this.conn = new Connection(fd, {
      onMessage: (msg) => this.onMessage(msg),
      onClose: (e) => this.onClose(e),
    }, options.connection);
  }

  /** Back-end as client: connects to a front-end listening on `path` (retrying until `timeoutMs`). */
  static async connect(path: string, handler: BackendReqHandler, options: BackendEndpointOptions & { timeoutMs?: number } = {}): Promise<BackendEndpoint> {
    return new BackendEndpoint(await connectUnixWithRetry(path, options.timeoutMs ?? 5000), handler, options);
  }

  /** Back-end as server: accepts the next connection on `listener`. */
  static async accept(listener: UnixListener, handler: BackendReqHandler, options: BackendEndpointOptions = {}): Promise<BackendEndpoint> {
    return new BackendEndpoint(await listener.accept(), handler, options);
  }

  /** Protocol features in effect (after SET_PROTOCOL_FEATURES). */
  get protocolFeatures(): bigint {
    return this.ctx.protocolFeatures;
  }

  /** Resolves when the connection ends: null for an orderly end, else the error that ended it. */
  closed(): Promise<Error | null> {
    if (this.closedWith !== undefined) return Promise.resolve(this.closedWith);
    return new Promise((r) => this.closeWaiters.push(r));
  }

  /** Closes the connection (and the back-end channel, if any). */
  close(error: Error | null = null): void {
    this.conn.close(error);
  }

  private onClose(e: Error | null): void {
    this.closedWith = e;
    this.backendChannel?.close();
    this.backendChannel = null;
    if (e) this.logger.log('warn', `connection closed: ${e.message}`);
    try {
      this.handler.disconnected?.(e);
    } catch (err) {
      this.logger.log('error', `disconnected handler threw: ${(err as Error).message}`);
    }
    for (const w of this.closeWaiters.splice(0)) w(e);
  }

  private ackAllowed(msg: RawMessage): boolean {
    return needsReply(msg.header) && hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.REPLY_ACK);
  }

  private send(m: EncodedMessage, owned: readonly number[] = []): void {
    try {
      if (!this.conn.isClosed) this.conn.send(m);
    } finally {
      // Fds a handler handed over are ours once sent (the kernel duplicated them into the peer).
      for (const fd of owned) closeQuietly(fd);
    }
  }

  private onMessage(msg: RawMessage): void | Promise<void> {
    const name = requestName(msg.header.request);
    if (this.ctx.postcopyListening === true && msg.header.request === FrontendReq.ADD_MEM_REG && msg.payload.length === 8 && msg.fds.length === 0) {
      // QEMU acknowledges a series of postcopy ADD_MEM_REG replies with an 8-byte ADD_MEM_REG.
      return this.postcopyAck(msg);
    }
    let req: FrontendRequest;
    try {
      req = decodeFrontendRequest(msg.header, msg.payload, msg.fds, this.ctx);
    } catch (e) {
      for (const fd of msg.fds) closeQuietly(fd);
      const err = e as Error;
      this.logger.log('warn', `rejected ${err instanceof VhostUserProtocolError ? '' : `${name}: `}${err.message}`);
      if (msg.header.request === FrontendReq.SET_LOG_BASE && hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.LOG_SHMFD)) {
        // The front-end waits for this reply (a u64): refuse through it rather than by closing.
        this.send(encodeFrontendReply(FrontendReq.SET_LOG_BASE, { request: FrontendReq.SET_LOG_BASE, value: 1n }, this.ctx));
      } else if (msg.header.request === FrontendReq.SET_DEVICE_STATE_FD) {
        // Its u64 reply carries errors (e.g. an unknown direction or phase): no need to close.
        this.send(encodeFrontendReply(FrontendReq.SET_DEVICE_STATE_FD, {
          request: FrontendReq.SET_DEVICE_STATE_FD, value: 22n | BigInt(VHOST_USER_DEVICE_STATE_NOFD_MASK), fd: null,
        }, this.ctx));
      } else if (this.ackAllowed(msg)) this.send(encodeReplyAck(msg.header.request, 1n));
      else this.conn.close(err);
      return;
    }
    if (this.logger.enabled?.('debug')) this.logger.log('debug', `request ${describeRequest(req)}`);
    let outcome: MaybePromise<Outcome>;
    try {
      checkGate(req.request, this.negotiation);
      outcome = this.dispatch(req);
    } catch (e) {
      this.fail(msg, req, e as Error);
      return;
    }
    if (outcome instanceof Promise) {
      return outcome.then(
        (o) => this.finish(msg, req, o),
        (e: unknown) => this.fail(msg, req, e instanceof Error ? e : new Error(String(e))),
      );
    }
    this.finish(msg, req, outcome);
  }

  /** The 8-byte ADD_MEM_REG acknowledgement (no reply: QEMU reads none). */
  private postcopyAck(msg: RawMessage): void | Promise<void> {
    const req: FrontendRequest = { request: FrontendReq.SET_MEM_TABLE, regions: [] };
    const value = new DataView(msg.payload.buffer, msg.payload.byteOffset, 8).getBigUint64(0, true);
    try {
      if (value !== 0n) throw new VhostUserError('invalid-argument', 'VHOST_USER_ADD_MEM_REG', `postcopy acknowledgement carries error ${value}`);
      const r = this.call(req, 'postcopyAck')();
      if (r instanceof Promise) return r.then(() => undefined, (e: unknown) => this.fail(msg, req, e as Error));
    } catch (e) {
      this.fail(msg, req, e as Error);
    }
    return undefined;
  }

  private finish(msg: RawMessage, req: FrontendRequest, outcome: Outcome): void {
    for (const fd of msg.fds) closeQuietly(fd);
    this.negotiated(req, outcome);
    if (req.request === FrontendReq.POSTCOPY_LISTEN) this.ctx.postcopyListening = true;
    if (req.request === FrontendReq.POSTCOPY_END) this.ctx.postcopyListening = false;
    if (outcome !== null) {
      this.send(encodeFrontendReply(req.request, outcome as never, this.ctx), replyFds(outcome));
    } else if (this.ackAllowed(msg)) {
      this.send(encodeReplyAck(req.request, 0n));
    }
  }

  /** Records what a successfully handled negotiation request agreed, for the gates. */
  private negotiated(req: FrontendRequest, outcome: Outcome): void {
    const n = this.negotiation;
    if (req.request === FrontendReq.SET_PROTOCOL_FEATURES) {
      this.ctx.protocolFeatures = req.features;
      n.protocolFeatures = req.features;
      n.protocolFeaturesSet = true;
    } else if (req.request === FrontendReq.SET_FEATURES) {
      n.ackedFeatures = req.features;
    } else if (outcome?.request === FrontendReq.GET_FEATURES) {
      n.offeredFeatures = outcome.value;
    }
  }

  private fail(msg: RawMessage, req: FrontendRequest, e: Error): void {
    for (const fd of msg.fds) closeQuietly(fd);
    const name = requestName(req.request);
    // Protocol violations (e.g. an invalid feature combination) keep their own kind in the log.
    const err = e instanceof VhostUserProtocolError ? e : toVhostUserError(e, name);
    const tag = err instanceof VhostUserError ? err.code : err.kind;
    this.logger.log('warn', `${name} failed [${tag}]: ${err.message.startsWith(`${name}: `) ? err.message.slice(name.length + 2) : err.message}`);
    const code = err instanceof VhostUserError ? BigInt(err.errno) : 1n;
    switch (req.request) {
      case FrontendReq.GET_CONFIG:
        // An empty GET_CONFIG reply is how the spec reports failure.
        this.send(encodeFrontendReply(req.request, { request: req.request, config: null }, this.ctx));
        return;
      case FrontendReq.GET_SHARED_OBJECT:
      case FrontendReq.CHECK_DEVICE_STATE:
      case FrontendReq.POSTCOPY_END:
        this.send(encodeFrontendReply(req.request, { request: req.request, value: code, fd: null } as never, this.ctx));
        return;
      case FrontendReq.CREATE_CRYPTO_SESSION:
        // A negative session id is the spec's failure reply.
        this.send(encodeFrontendReply(req.request, { ...req, sessionId: -code }, this.ctx));
        return;
      case FrontendReq.SET_LOG_BASE:
        // With LOG_SHMFD the front-end waits for a u64 reply: non-zero tells it the log was refused.
        if (hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.LOG_SHMFD)) {
          this.send(encodeFrontendReply(req.request, { request: req.request, value: code }, this.ctx));
          return;
        }
        break;
      case FrontendReq.SET_DEVICE_STATE_FD:
        this.send(encodeFrontendReply(req.request, {
          request: req.request,
          value: (code & 0xffn) | BigInt(VHOST_USER_DEVICE_STATE_NOFD_MASK),
          fd: null,
        }, this.ctx));
        return;
      default:
        break;
    }
    if (this.ackAllowed(msg) && !hasMandatoryReply(req.request)) {
      this.send(encodeReplyAck(req.request, code));
      return;
    }
    this.conn.close(new VhostUserError(err instanceof VhostUserError ? err.code : 'invalid-argument', name,
      `failed and the front-end cannot be told: ${err.message}`, { cause: err, errno: Number(code) }));
  }

  private call<K extends keyof BackendReqHandler>(req: FrontendRequest, method: K): NonNullable<BackendReqHandler[K]> {
    const fn = this.handler[method];
    if (typeof fn !== 'function') throw new NotSupportedError(requestName(req.request));
    return (fn as (...a: unknown[]) => unknown).bind(this.handler) as NonNullable<BackendReqHandler[K]>;
  }

  /** Calls the handler method for `req` and maps its result to the reply body (null for none). */
  private dispatch(req: FrontendRequest): MaybePromise<Outcome> {
    const R = FrontendReq;
    switch (req.request) {
      case R.GET_FEATURES:
        return then(this.call(req, 'getFeatures')(), (value) => ({ request: req.request, value }));
      case R.SET_FEATURES:
        return none(this.call(req, 'setFeatures')(req.features));
      case R.GET_PROTOCOL_FEATURES:
        return then(this.call(req, 'getProtocolFeatures')(), (value) => ({ request: req.request, value }));
      case R.SET_PROTOCOL_FEATURES: {
        checkProtocolFeatureSet(req.features);
        return none(this.call(req, 'setProtocolFeatures')(req.features));
      }
      case R.SET_OWNER:
        return none(this.call(req, 'setOwner')());
      case R.RESET_OWNER:
        return none(this.call(req, 'resetOwner')());
      case R.SET_MEM_TABLE:
        // While postcopy listens, an empty table is the front-end's acknowledgement of our reply.
        if (req.regions.length === 0) return none(this.call(req, 'postcopyAck')());
        return then(this.call(req, 'setMemTable')(req.regions), (bases) => (Array.isArray(bases) ? {
          request: req.request, kind: 'postcopy',
          regions: req.regions.map((r, i) => ({ guestPhysAddr: r.guestPhysAddr, memorySize: r.memorySize, userAddr: bases[i] as bigint, mmapOffset: r.mmapOffset })),
        } : null));
      case R.SET_LOG_BASE: {
        const r = this.call(req, 'setLogBase')({ mmapSize: req.mmapSize, mmapOffset: req.mmapOffset }, req.fd);
        // With LOG_SHMFD QEMU blocks until the back-end confirms the log is mapped.
        const shm = hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.LOG_SHMFD);
        return then(r, () => (shm ? { request: req.request, value: 0n } : null));
      }
      case R.SET_LOG_FD:
        return none(this.call(req, 'setLogFd')(req.fd));
      case R.SET_VRING_NUM:
        return none(this.call(req, 'setVringNum')(req.index, req.num));
      case R.SET_VRING_ADDR:
        return none(this.call(req, 'setVringAddr')(req));
      case R.SET_VRING_BASE:
        return none(this.call(req, 'setVringBase')(req.index, req.num));
      case R.GET_VRING_BASE:
        return then(this.call(req, 'getVringBase')(req.index), (num) => ({ request: req.request, index: req.index, num }));
      case R.SET_VRING_KICK:
        return none(this.call(req, 'setVringKick')(req.index, req.fd));
      case R.SET_VRING_CALL:
        return none(this.call(req, 'setVringCall')(req.index, req.fd));
      case R.SET_VRING_ERR:
        return none(this.call(req, 'setVringErr')(req.index, req.fd));
      case R.GET_QUEUE_NUM:
        return then(this.call(req, 'getQueueNum')(), (value) => ({ request: req.request, value }));
      case R.SET_VRING_ENABLE:
        return none(this.call(req, 'setVringEnable')(req.index, req.enable));
      case R.SEND_RARP:
        return none(this.call(req, 'sendRarp')(req.mac));
      case R.NET_SET_MTU:
        return none(this.call(req, 'netSetMtu')(req.mtu));
      case R.SET_BACKEND_REQ_FD: {
        const fn = this.call(req, 'setBackendReqFd');
        const replyAck = hasProtocolFeature(this.ctx.protocolFeatures, ProtocolFeature.REPLY_ACK);
        const options = { replyAck, timeoutMs: this.channelTimeoutMs, protocolFeatures: this.ctx.protocolFeatures };
        // Loaded here, not at start-up: most front-ends never open the channel (idle RSS). The
        // connection reads no further message until this one's promise settles.
        return import('./backend-channel.js').then(({ BackendChannel }) => {
          if (this.closedWith !== undefined) return null; // the connection ended meanwhile
          const channel = new BackendChannel(sys.dup(req.fd), options);
          this.backendChannel?.close();
          this.backendChannel = channel;
          return none(fn(channel));
        });
      }
      case R.IOTLB_MSG:
        return none(this.call(req, 'iotlbMsg')(req));
      case R.SET_VRING_ENDIAN:
        return none(this.call(req, 'setVringEndian')(req.index, req.bigEndian));
      case R.GET_CONFIG:
        return then(this.call(req, 'getConfig')(req.offset, req.data.length, req.flags), (data) => {
          if (data.length !== req.data.length) {
            throw new Error(`handler returned ${data.length} config bytes for a ${req.data.length}-byte request`);
          }
          return { request: req.request, config: { offset: req.offset, flags: req.flags, data } };
        });
      case R.SET_CONFIG:
        return none(this.call(req, 'setConfig')(req.offset, req.data, req.flags));
      case R.CREATE_CRYPTO_SESSION:
        return then(this.call(req, 'createCryptoSession')(req), (s) => ({ ...s, request: req.request }));
      case R.CLOSE_CRYPTO_SESSION:
        return none(this.call(req, 'closeCryptoSession')(req.sessionId));
      case R.POSTCOPY_ADVISE:
        return then(this.call(req, 'postcopyAdvise')(), (fd) => ({ request: req.request, fd }));
      case R.POSTCOPY_LISTEN:
        return none(this.call(req, 'postcopyListen')());
      case R.POSTCOPY_END:
        return then(this.call(req, 'postcopyEnd')(), (value) => ({ request: req.request, value }));
      case R.GET_INFLIGHT_FD: {
        const { request: _r, ...inflight } = req;
        return then(this.call(req, 'getInflightFd')(inflight), (r) => ({ request: req.request, ...r.inflight, fd: r.fd }));
      }
      case R.SET_INFLIGHT_FD: {
        const { request: _r, fd, ...inflight } = req;
        return none(this.call(req, 'setInflightFd')(inflight, fd));
      }
      case R.GPU_SET_SOCKET:
        return none(this.call(req, 'gpuSetSocket')(req.fd));
      case R.RESET_DEVICE:
        return none(this.call(req, 'resetDevice')());
      case R.VRING_KICK:
        return none(this.call(req, 'vringKick')(req.index));
      case R.GET_MAX_MEM_SLOTS:
        return then(this.call(req, 'getMaxMemSlots')(), (value) => ({ request: req.request, value }));
      case R.ADD_MEM_REG:
        return then(this.call(req, 'addMemReg')(req.region), (base) => (typeof base === 'bigint' ? {
          request: req.request, kind: 'postcopy',
          region: { guestPhysAddr: req.region.guestPhysAddr, memorySize: req.region.memorySize, userAddr: base, mmapOffset: req.region.mmapOffset },
        } : null));
      case R.REM_MEM_REG:
        return none(this.call(req, 'remMemReg')(req.region));
      case R.SET_STATUS:
        return none(this.call(req, 'setStatus')(req.status));
      case R.GET_STATUS:
        return then(this.call(req, 'getStatus')(), (status) => ({ request: req.request, status }));
      case R.GET_SHARED_OBJECT:
        return then(this.call(req, 'getSharedObject')(req.uuid), (fd) => ({ request: req.request, value: 0n, fd }));
      case R.SET_DEVICE_STATE_FD:
        return then(this.call(req, 'setDeviceStateFd')(req.direction, req.phase, req.fd), (fd) => ({
          request: req.request,
          value: fd === null ? BigInt(VHOST_USER_DEVICE_STATE_NOFD_MASK) : 0n,
          fd,
        }));
      case R.CHECK_DEVICE_STATE:
        return then(this.call(req, 'checkDeviceState')(), () => ({ request: req.request, value: 0n }));
      case R.GET_SHMEM_CONFIG:
        return then(this.call(req, 'getShmemConfig')(), (c) => {
          // Checked here, not in the encoder, so a bad device answer fails like any handler error.
          if (c.memorySizes.length > VHOST_USER_MAX_SHMEM_REGIONS || c.memorySizes.some((x) => x < 0n || x >= 1n << 64n)) {
            throw new VhostUserError('out-of-range', '', `device reported ${c.memorySizes.length} shared memory regions or a size beyond u64`);
          }
          return { request: req.request, memorySizes: [...c.memorySizes] };
        });
    }
  }
}

/** Requests whose reply is mandatory and has no way to carry an error: failing them ends the session. */
function hasMandatoryReply(r: FrontendReq): boolean {
  switch (r) {
    case FrontendReq.GET_FEATURES:
    case FrontendReq.GET_PROTOCOL_FEATURES:
    case FrontendReq.GET_VRING_BASE:
    case FrontendReq.GET_QUEUE_NUM:
    case FrontendReq.GET_INFLIGHT_FD:
    case FrontendReq.GET_MAX_MEM_SLOTS:
    case FrontendReq.GET_STATUS:
    case FrontendReq.POSTCOPY_ADVISE:
    case FrontendReq.GET_SHMEM_CONFIG:
      return true;
    default:
      return false;
  }
}

function replyFds(o: FrontendReply): number[] {
  const fd = (o as { fd?: number | null }).fd;
  return typeof fd === 'number' ? [fd] : [];
}

function then<T>(v: MaybePromise<T>, f: (x: T) => Outcome): MaybePromise<Outcome> {
  return v instanceof Promise ? v.then(f) : f(v);
}

function none(v: MaybePromise<void>): MaybePromise<Outcome> {
  return v instanceof Promise ? v.then(() => null) : null;
}

/** One-line summary of a request for debug logs (fds and byte arrays abbreviated). */
function describeRequest(req: FrontendRequest): string {
  const fields = Object.entries(req)
    .filter(([k]) => k !== 'request')
    .map(([k, v]) => `${k}=${typeof v === 'bigint' ? `0x${v.toString(16)}` : v instanceof Uint8Array ? `[${v.length} bytes]` : JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x))}`);
  return `${requestName(req.request)} ${fields.join(' ')}`.trimEnd();
}

function closeQuietly(fd: number): void {
  try { sys.close(fd); } catch { /* already closed */ }
}
