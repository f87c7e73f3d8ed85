/**
 * The back-end channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ): a second socket, handed over with
 * SET_BACKEND_REQ_FD, on which the back-end sends requests to the front-end.
 * {@link BackendChannel} is the back-end side (sender), {@link BackendChannelEndpoint} the front-end
 * side that serves a {@link BackendChannelHandler}.
 * @module
 */
import * as sys from '../sys/index.js';
import { Connection, type RawMessage } from './connection.js';
import { decodeBackendReply, decodeBackendRequest, encodeBackendReply, encodeBackendRequest, encodeReplyAck, needsReply, type CodecContext } from './codec.js';
import { BackendReq, VHOST_USER_NEED_REPLY_MASK, requestName } from './constants.js';
import type { BackendReply, BackendRequest, IotlbMsg, ShmemMapping, VringArea } from './messages.js';
import { VhostUserError, toVhostUserError } from './errors.js';
import { checkBackendGate } from './gating.js';
import { Requester } from './requester.js';
import type { MaybePromise } from './backend-handler.js';
import { defaultLogger, type Logger } from '../log.js';

/** The front-end answered a back-end request with a failure code. */
export class BackendRequestFailedError extends Error {
  /** Non-zero value of the front-end's reply. */
  readonly value: bigint;
  constructor(request: string, value: bigint) {
    super(`${request}: front-end replied with failure ${value}`);
    this.name = 'BackendRequestFailedError';
    this.value = value;
  }
}

/** A mapping request of a device: {@link ShmemMapping} plus the file to map. */
export interface ShmemMapRequest extends ShmemMapping {
  /** File to map (borrowed: the caller keeps and closes it). */
  fd: number;
}

/** Back-end side of the back-end channel: one method per back-end request. */
export class BackendChannel {
  private readonly requester: Requester;
  private readonly ctx: CodecContext = { protocolFeatures: 0n };
  private readonly replyAck: boolean;
  private readonly protocolFeatures: bigint | null;

  /**
   * @param fd the channel socket (owned from here on)
   * @param options replyAck: REPLY_ACK was negotiated, so every request waits for the front-end's
   *   ack; protocolFeatures: the negotiated protocol features, when known, so requests whose
   *   feature was not negotiated (see `BACKEND_REQUEST_GATES`) are refused here, before sending
   */
  constructor(fd: number, options: { replyAck: boolean; timeoutMs?: number; protocolFeatures?: bigint }) {
    this.replyAck = options.replyAck;
    this.protocolFeatures = options.protocolFeatures ?? null;
    this.requester = new Requester(fd, 'backend', options.timeoutMs ?? 5000);
  }

  /** Whether the channel has closed. */
  get isClosed(): boolean {
    return this.requester.isClosed;
  }

  /** VHOST_USER_BACKEND_CONFIG_CHANGE_MSG: the device config space changed. */
  configChange(): Promise<void> {
    return this.ack({ request: BackendReq.CONFIG_CHANGE_MSG });
  }

  /** VHOST_USER_BACKEND_IOTLB_MSG (miss or access failure). */
  iotlbMsg(msg: IotlbMsg): Promise<void> {
    return this.ack({ request: BackendReq.IOTLB_MSG, ...msg });
  }

  /** VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG: `fd` null de-registers the notifier area. */
  vringHostNotifier(area: VringArea, fd: number | null): Promise<void> {
    return this.ack({ request: BackendReq.VRING_HOST_NOTIFIER_MSG, ...area, fd });
  }

  /** VHOST_USER_BACKEND_VRING_CALL (in-band call notification). */
  vringCall(index: number): Promise<void> {
    return this.ack({ request: BackendReq.VRING_CALL, index, num: 0 });
  }

  /** VHOST_USER_BACKEND_VRING_ERR (in-band error notification). */
  vringErr(index: number): Promise<void> {
    return this.ack({ request: BackendReq.VRING_ERR, index, num: 0 });
  }

  /** VHOST_USER_BACKEND_SHARED_OBJECT_ADD. */
  sharedObjectAdd(uuid: Uint8Array): Promise<void> {
    return this.ack({ request: BackendReq.SHARED_OBJECT_ADD, uuid });
  }

  /** VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE. */
  sharedObjectRemove(uuid: Uint8Array): Promise<void> {
    return this.ack({ request: BackendReq.SHARED_OBJECT_REMOVE, uuid });
  }

  /** VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP: resolves with an fd the caller owns. */
  async sharedObjectLookup(uuid: Uint8Array): Promise<number> {
    const req = BackendReq.SHARED_OBJECT_LOOKUP;
    checkBackendGate(req, this.protocolFeatures);
    const raw = await this.requester.request(req, encodeBackendRequest({ request: req, uuid }, this.ctx), true);
    const reply = this.decode(req, raw!) as Extract<BackendReply, { request: BackendReq.SHARED_OBJECT_LOOKUP }>;
    if (reply.value !== 0n || reply.fd === null) {
      if (reply.fd !== null) sys.close(reply.fd);
      throw new BackendRequestFailedError(requestName(req, 'backend'), reply.value === 0n ? 1n : reply.value);
    }
    return reply.fd;
  }

  /**
   * VHOST_USER_BACKEND_SHMEM_MAP (SHMEM): asks the front-end to map `len` bytes of `fd` from
   * `fdOffset` at `shmOffset` inside VIRTIO shared memory region `shmid`; `flags` may set
   * VHOST_USER_MMAP_FLAG_WRITABLE. `fd` stays the caller's. Resolves once acknowledged (with
   * REPLY_ACK) or sent; rejects with the front-end's failure, or with a `VhostUserError`
   * (`not-negotiated`, `invalid-argument`) before sending anything.
   */
  shmemMap(m: ShmemMapRequest): Promise<void> {
    const { fd, ...mapping } = m;
    return this.shmem({ request: BackendReq.SHMEM_MAP, ...mapping, fd });
  }

  /** VHOST_USER_BACKEND_SHMEM_UNMAP (SHMEM): unmaps `[shmOffset, shmOffset + len)` of region `shmid`. */
  shmemUnmap(m: { shmid: number; shmOffset: bigint; len: bigint }): Promise<void> {
    return this.shmem({ request: BackendReq.SHMEM_UNMAP, shmid: m.shmid, fdOffset: 0n, shmOffset: m.shmOffset, len: m.len, flags: 0n });
  }

  /** Closes the channel. */
  close(): void {
    this.requester.close();
  }

  private async shmem(msg: Extract<BackendRequest, { request: BackendReq.SHMEM_MAP | BackendReq.SHMEM_UNMAP }>): Promise<void> {
    const name = requestName(msg.request, 'backend');
    checkBackendGate(msg.request, this.protocolFeatures);
    try {
      encodeBackendRequest(msg, this.ctx);
    } catch (e) {
      throw new VhostUserError('invalid-argument', name, (e as Error).message.slice(name.length + 2), { cause: e });
    }
    return this.ack(msg);
  }

  private async ack(msg: BackendRequest): Promise<void> {
    checkBackendGate(msg.request, this.protocolFeatures);
    const flags = this.replyAck ? VHOST_USER_NEED_REPLY_MASK : 0;
    const raw = await this.requester.request(msg.request, encodeBackendRequest(msg, this.ctx, flags), this.replyAck);
    if (raw === null) return;
    const reply = this.decode(msg.request, raw);
    if (reply.value !== 0n) throw new BackendRequestFailedError(requestName(msg.request, 'backend'), reply.value);
  }

  private decode(request: BackendReq, raw: RawMessage): BackendReply {
    try {
      return decodeBackendReply(request, raw.header, raw.payload, raw.fds, this.ctx);
    } catch (e) {
      for (const fd of raw.fds) sys.close(fd);
      this.requester.connection.close(e as Error);
      throw e;
    }
  }
}

/** Front-end side handler of back-end requests; a missing method means "not supported". */
export interface BackendChannelHandler {
  /** VHOST_USER_BACKEND_IOTLB_MSG. */
  iotlbMsg?(msg: IotlbMsg): MaybePromise<void>;
  /** VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. */
  configChange?(): MaybePromise<void>;
  /** VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG; `fd` is borrowed (dup to keep). */
  vringHostNotifier?(area: VringArea, fd: number | null): MaybePromise<void>;
  /** VHOST_USER_BACKEND_VRING_CALL. */
  vringCall?(index: number): MaybePromise<void>;
  /** VHOST_USER_BACKEND_VRING_ERR. */
  vringErr?(index: number): MaybePromise<void>;
  /** VHOST_USER_BACKEND_SHARED_OBJECT_ADD. */
  sharedObjectAdd?(uuid: Uint8Array): MaybePromise<void>;
  /** VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE. */
  sharedObjectRemove?(uuid: Uint8Array): MaybePromise<void>;
  /** VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP: returns an fd (ownership passes to the endpoint). */
  sharedObjectLookup?(uuid: Uint8Array): MaybePromise<number>;
  /** VHOST_USER_BACKEND_SHMEM_MAP: map `fd` (borrowed; dup to keep) as `m` describes. */
  shmemMap?(m: ShmemMapping, fd: number): MaybePromise<void>;
  /** VHOST_USER_BACKEND_SHMEM_UNMAP. */
  shmemUnmap?(m: ShmemMapping): MaybePromise<void>;
}

/** Front-end side of the back-end channel: serves back-end requests with a handler. */
export class BackendChannelEndpoint {
  private readonly conn: Connection;
  private readonly ctx: CodecContext = { protocolFeatures: 0n };

  /**
   * Serves `fd` (owned from here on). `protocolFeatures`, when given, are the features negotiated
   * on the main socket: SHMEM requests are refused (error ack) without SHMEM.
   */
  constructor(fd: number, private readonly handler: BackendChannelHandler, private readonly logger: Logger = defaultLogger,
    private readonly protocolFeatures: bigint | null = null) {
    this.conn = new Connection(fd, { onMessage: (m) => this.onMessage(m), onClose: () => undefined });
    // The back-end channel must not keep a process alive on its own.
    this.conn.unref();
  }

  /** Closes the channel. */
  close(): void {
    this.conn.close(null);
  }

  private onMessage(msg: RawMessage): void | Promise<void> {
    let req: BackendRequest;
    try {
      req = decodeBackendRequest(msg.header, msg.payload, msg.fds, this.ctx);
    } catch (e) {
      for (const fd of msg.fds) sys.close(fd);
      this.logger.log('warn', `back-end channel: rejected ${(e as Error).message}`);
      if (needsReply(msg.header)) this.conn.send(encodeReplyAck(msg.header.request, 1n));
      else this.conn.close(e as Error);
      return;
    }
    const done = (value: bigint, fd: number | null): void => {
      for (const f of msg.fds) sys.close(f);
      if (req.request === BackendReq.SHARED_OBJECT_LOOKUP) {
        this.conn.send(encodeBackendReply(req.request, { request: req.request, value, fd }, this.ctx));
        if (fd !== null) sys.close(fd);
      } else if (needsReply(msg.header)) {
        this.conn.send(encodeReplyAck(req.request, value));
      }
    };
    const failed = (e: unknown): void => {
      const name = requestName(req.request, 'backend');
      const err = toVhostUserError(e, name);
      this.logger.log('warn', `back-end channel: ${name} failed [${err.code}]: ${err.message}`);
      done(BigInt(err.errno), null);
    };
    try {
      const r = this.dispatch(req);
      if (r instanceof Promise) return r.then((fd) => done(0n, fd), failed);
      done(0n, r);
    } catch (e) {
      failed(e);
    }
  }

  private dispatch(req: BackendRequest): MaybePromise<number | null> {
    checkBackendGate(req.request, this.protocolFeatures);
    const h = this.handler;
    const need = <T>(fn: T | undefined): T => {
      if (fn === undefined) throw new VhostUserError('not-supported', requestName(req.request, 'backend'), 'not supported by this front-end');
      return fn;
    };
    const noFd = (v: MaybePromise<void>): MaybePromise<number | null> => (v instanceof Promise ? v.then(() => null) : null);
    switch (req.request) {
      case BackendReq.IOTLB_MSG: {
        const { request: _r, ...m } = req;
        return noFd(need(h.iotlbMsg).call(h, m));
      }
      case BackendReq.CONFIG_CHANGE_MSG:
        return noFd(need(h.configChange).call(h));
      case BackendReq.VRING_HOST_NOTIFIER_MSG:
        return noFd(need(h.vringHostNotifier).call(h, { index: req.index, size: req.size, offset: req.offset }, req.fd));
      case BackendReq.VRING_CALL:
        return noFd(need(h.vringCall).call(h, req.index));
      case BackendReq.VRING_ERR:
        return noFd(need(h.vringErr).call(h, req.index));
      case BackendReq.SHARED_OBJECT_ADD:
        return noFd(need(h.sharedObjectAdd).call(h, req.uuid));
      case BackendReq.SHARED_OBJECT_REMOVE:
        return noFd(need(h.sharedObjectRemove).call(h, req.uuid));
      case BackendReq.SHARED_OBJECT_LOOKUP:
        return need(h.sharedObjectLookup).call(h, req.uuid);
      case BackendReq.SHMEM_MAP:
      case BackendReq.SHMEM_UNMAP: {
        const m: ShmemMapping = { shmid: req.shmid, fdOffset: req.fdOffset, shmOffset: req.shmOffset, len: req.len, flags: req.flags };
        return req.request === BackendReq.SHMEM_MAP ? noFd(need(h.shmemMap).call(h, m, req.fd)) : noFd(need(h.shmemUnmap).call(h, m));
      }
    }
  }
}
