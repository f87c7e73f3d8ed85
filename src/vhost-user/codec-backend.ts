/**
 * Encoding and decoding of the back-end channel (`SET_BACKEND_REQ_FD` socket): back-end requests
 * and the front-end's replies to them.
 * @module
 */
import {
  BACKEND_REQ_MAX,
  BackendReq,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VRING_IDX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
} from './constants.js';
import type { CodecContext, EncodedMessage, Header } from './codec.js';
import {
  HEADER_SIZE,
  LE,
  allocMessage,
  encodeBytes,
  encodeState,
  encodeU64,
  expectFds,
  expectSize,
  fail,
  finish,
  readIotlb,
  viewOf,
  writeIotlb,
} from './codec-wire.js';
import { checkReply, readAck, readValueWithFd } from './codec-reply.js';
import { encodeMMap, readMMap } from './codec-shmem.js';
import { IOTLB_MSG_SIZE, SHARED_OBJECT_SIZE, VRING_AREA_SIZE, type BackendReply, type BackendReplyOf, type BackendRequest } from './messages.js';

const B = 'backend';
const VRING_FD_PAYLOAD_MASK = BigInt(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK);

/**
 * Decodes a back-end request (front-end side of the back-end channel). `fds` stay owned by the
 * caller.
 */
export function decodeBackendRequest(h: Header, payload: Uint8Array, fds: readonly number[], _ctx: CodecContext): BackendRequest {
  const req = h.request as BackendReq;
  if (req < 1 || req > BACKEND_REQ_MAX) fail(B, req, 'unknown-request', 'unknown back-end request id');
  if ((h.flags & VHOST_USER_REPLY_MASK) !== 0) fail(B, req, 'version', 'request carries the REPLY flag');
  const size = h.size;
  if (payload.length < size) fail(B, req, 'truncated', `payload has ${payload.length} of ${size} bytes`);
  const v = viewOf(payload);
  const o = payload.byteOffset;
  switch (req) {
    case BackendReq.IOTLB_MSG:
      expectFds(B, req, fds, 0);
      return { request: req, ...readIotlb(B, req, payload, size) };
    case BackendReq.CONFIG_CHANGE_MSG:
      // The spec gives no payload (libvhost-user and crosvm send none); tolerate a stray u64 zero
      // from back-ends that treat every message as carrying one, and ignore its value.
      if (size !== 0 && size !== 8) fail(B, req, 'size', `payload size ${size}, expected 0 or 8`);
      expectFds(B, req, fds, 0);
      return { request: req };
    case BackendReq.VRING_HOST_NOTIFIER_MSG: {
      expectSize(B, req, size, VRING_AREA_SIZE);
      const u = v.getBigUint64(o, LE);
      if ((u & ~VRING_FD_PAYLOAD_MASK) !== 0n) fail(B, req, 'value', `reserved bits set in 0x${u.toString(16)}`);
      const nofd = (Number(u) & VHOST_USER_VRING_NOFD_MASK) !== 0;
      expectFds(B, req, fds, nofd ? 0 : 1);
      return {
        request: req,
        index: Number(u) & VHOST_USER_VRING_IDX_MASK,
        size: v.getBigUint64(o + 8, LE),
        offset: v.getBigUint64(o + 16, LE),
        fd: nofd ? null : (fds[0] as number),
      };
    }
    case BackendReq.VRING_CALL:
    case BackendReq.VRING_ERR: {
      expectSize(B, req, size, 8);
      expectFds(B, req, fds, 0);
      const num = v.getUint32(o + 4, LE);
      if (num !== 0) fail(B, req, 'value', `reserved num field is ${num}, must be 0`);
      return { request: req, index: v.getUint32(o, LE), num };
    }
    case BackendReq.SHARED_OBJECT_ADD:
    case BackendReq.SHARED_OBJECT_REMOVE:
    case BackendReq.SHARED_OBJECT_LOOKUP:
      expectSize(B, req, size, SHARED_OBJECT_SIZE);
      expectFds(B, req, fds, 0);
      return { request: req, uuid: payload.slice(0, SHARED_OBJECT_SIZE) };
    case BackendReq.SHMEM_MAP: {
      const m = readMMap(B, req, payload, size);
      expectFds(B, req, fds, 1);
      return { request: req, ...m, fd: fds[0] as number };
    }
    case BackendReq.SHMEM_UNMAP: {
      const m = readMMap(B, req, payload, size);
      expectFds(B, req, fds, 0);
      return { request: req, ...m };
    }
  }
  return fail(B, h.request, 'unknown-request', 'unknown back-end request id');
}

/** Encodes a back-end request; `flags` may add `VHOST_USER_NEED_REPLY_MASK`. */
export function encodeBackendRequest(msg: BackendRequest, _ctx: CodecContext, flags = 0): EncodedMessage {
  const req = msg.request;
  flags &= ~VHOST_USER_REPLY_MASK;
  switch (msg.request) {
    case BackendReq.IOTLB_MSG: {
      const bytes = allocMessage(req, flags, IOTLB_MSG_SIZE);
      writeIotlb(bytes, msg);
      return { bytes: finish(bytes), fds: [] };
    }
    case BackendReq.CONFIG_CHANGE_MSG:
      return { bytes: finish(allocMessage(req, flags, 0)), fds: [] };
    case BackendReq.VRING_HOST_NOTIFIER_MSG: {
      if (msg.index < 0 || msg.index > VHOST_USER_VRING_IDX_MASK) fail(B, req, 'value', `vring index ${msg.index} does not fit in 8 bits`);
      const bytes = allocMessage(req, flags, VRING_AREA_SIZE);
      const v = viewOf(bytes);
      const o = bytes.byteOffset + HEADER_SIZE;
      v.setBigUint64(o, BigInt(msg.fd === null ? msg.index | VHOST_USER_VRING_NOFD_MASK : msg.index), LE);
      v.setBigUint64(o + 8, msg.size, LE);
      v.setBigUint64(o + 16, msg.offset, LE);
      return { bytes: finish(bytes), fds: msg.fd === null ? [] : [msg.fd] };
    }
    case BackendReq.VRING_CALL:
    case BackendReq.VRING_ERR:
      return { bytes: finish(encodeState(req, flags, msg.index, msg.num)), fds: [] };
    case BackendReq.SHARED_OBJECT_ADD:
    case BackendReq.SHARED_OBJECT_REMOVE:
    case BackendReq.SHARED_OBJECT_LOOKUP:
      if (msg.uuid.length !== SHARED_OBJECT_SIZE) fail(B, req, 'value', `UUID has ${msg.uuid.length} bytes, expected 16`);
      return { bytes: finish(encodeBytes(req, flags, msg.uuid, SHARED_OBJECT_SIZE)), fds: [] };
    case BackendReq.SHMEM_MAP: {
      const { request: _r, fd, ...m } = msg;
      return { bytes: finish(encodeMMap(B, req, flags, m)), fds: [fd] };
    }
    case BackendReq.SHMEM_UNMAP: {
      const { request: _r, ...m } = msg;
      return { bytes: finish(encodeMMap(B, req, flags, m)), fds: [] };
    }
  }
  return fail(B, req, 'unknown-request', 'cannot encode unknown back-end request');
}

/** Decodes the front-end's reply to back-end request `request` (back-end side). */
export function decodeBackendReply(request: BackendReq, h: Header, payload: Uint8Array, fds: readonly number[], _ctx: CodecContext): BackendReply {
  if (request < 1 || request > BACKEND_REQ_MAX) fail(B, request, 'unknown-request', 'unknown back-end request id');
  checkReply(B, request, h, payload);
  if (request === BackendReq.SHARED_OBJECT_LOOKUP) return { request, ...readValueWithFd(B, request, h, payload, fds) };
  return { request, value: readAck(B, request, h, payload, fds) };
}

/** Encodes the front-end's reply to back-end request `request` (REPLY flag set). */
export function encodeBackendReply<R extends BackendReq>(request: R, reply: BackendReplyOf<R>, _ctx: CodecContext): EncodedMessage {
  const r = reply as BackendReply;
  if (r.request !== request) fail(B, request, 'value', `reply object is for request ${r.request}`);
  const bytes = encodeU64(request, VHOST_USER_REPLY_MASK, r.value);
  if (r.request === BackendReq.SHARED_OBJECT_LOOKUP && r.fd !== null) return { bytes: finish(bytes), fds: [r.fd] };
  return { bytes: finish(bytes), fds: [] };
}
