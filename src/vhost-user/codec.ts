/**
 * Encoder/decoder of vhost-user messages (header + payload) for both channels.
 *
 * The codec is pure: it never reads sockets and never opens or closes fds. Decoders validate every
 * size, count and reserved bit against the spec and throw `VhostUserProtocolError`; on error the
 * caller still owns (and must close) the fds that arrived with the message.
 * @module
 */
import {
  FRONTEND_REQ_MAX,
  FrontendReq,
  VHOST_USER_FLAGS_KNOWN_MASK,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_USER_MAX_RAM_SLOTS,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
  requestName,
  type Channel,
} from './constants.js';
import { VhostUserProtocolError } from './errors.js';
import { HEADER_SIZE, LE, viewOf } from './codec-wire.js';
import {
  CONFIG_HEADER_SIZE,
  CRYPTO_SESSION_SIZE,
  DEVICE_STATE_TRANSFER_SIZE,
  INFLIGHT_SIZE,
  IOTLB_MSG_SIZE,
  LOG_SIZE,
  MEMORY_HEADER_SIZE,
  MMAP_SIZE,
  SHARED_OBJECT_SIZE,
  SHMEM_CONFIG_SIZE,
  SINGLE_MEM_REGION_PADDING,
  VRING_ADDR_SIZE,
  VRING_AREA_SIZE,
  XEN_MEMORY_REGION_SIZE,
} from './messages.js';

export { HEADER_SIZE };

/**
 * Upper bound on any payload, checked from the header alone so a reader can reject a message before
 * reading its body. The largest message defined is the GET_SHMEM_CONFIG reply (2056 bytes).
 */
export const MAX_PAYLOAD_SIZE = 4096;

/** A decoded message header. */
export interface Header {
  /** Request id (front-end or back-end numbering depending on the channel). */
  request: number;
  /** Flags word: version, REPLY, NEED_REPLY. */
  flags: number;
  /** Payload size in bytes. */
  size: number;
}

/** Negotiated state that changes the wire layout. */
export interface CodecContext {
  /** Negotiated protocol features (e.g. XEN_MMAP widens memory regions to 40 bytes). */
  protocolFeatures: bigint;
  /**
   * Back-end side only: POSTCOPY_LISTEN has been received. QEMU then acknowledges the back-end's
   * SET_MEM_TABLE reply with a SET_MEM_TABLE request whose payload is a u64 zero, which decodes as
   * a table with no regions instead of being rejected.
   */
  postcopyListening?: boolean;
}

/** An encoded message: header + payload bytes, and the fds to send with them (SCM_RIGHTS). */
export interface EncodedMessage {
  /** Header followed by payload. */
  bytes: Uint8Array;
  /** Fds to attach, in order; empty when none. */
  fds: number[];
}

/** True when the header carries the REPLY flag. */
export function isReply(h: Header): boolean {
  return (h.flags & VHOST_USER_REPLY_MASK) !== 0;
}

/** True when the sender asked for a REPLY_ACK. */
export function needsReply(h: Header): boolean {
  return (h.flags & VHOST_USER_NEED_REPLY_MASK) !== 0;
}

/**
 * Largest payload each request may carry (replies included), indexed by request id; 0 for ids the
 * spec does not define. Lets a reader reject an oversized message from its header alone.
 */
const FRONTEND_MAX: readonly number[] = buildFrontendMax();
const BACKEND_MAX: readonly number[] = [
  0, IOTLB_MSG_SIZE, 8, VRING_AREA_SIZE, 8, 8, SHARED_OBJECT_SIZE, SHARED_OBJECT_SIZE, SHARED_OBJECT_SIZE, MMAP_SIZE, MMAP_SIZE,
];

function buildFrontendMax(): number[] {
  const t = new Array<number>(FRONTEND_REQ_MAX + 1).fill(8);
  t[0] = 0;
  const table = MEMORY_HEADER_SIZE + VHOST_USER_MAX_RAM_SLOTS * XEN_MEMORY_REGION_SIZE;
  t[FrontendReq.SET_MEM_TABLE] = table;
  t[FrontendReq.SET_LOG_BASE] = LOG_SIZE;
  t[FrontendReq.SET_VRING_ADDR] = VRING_ADDR_SIZE;
  t[FrontendReq.IOTLB_MSG] = IOTLB_MSG_SIZE;
  t[FrontendReq.GET_CONFIG] = CONFIG_HEADER_SIZE + VHOST_USER_MAX_CONFIG_SIZE;
  t[FrontendReq.SET_CONFIG] = CONFIG_HEADER_SIZE + VHOST_USER_MAX_CONFIG_SIZE;
  t[FrontendReq.CREATE_CRYPTO_SESSION] = CRYPTO_SESSION_SIZE;
  t[FrontendReq.GET_INFLIGHT_FD] = INFLIGHT_SIZE;
  t[FrontendReq.SET_INFLIGHT_FD] = INFLIGHT_SIZE;
  t[FrontendReq.ADD_MEM_REG] = SINGLE_MEM_REGION_PADDING + XEN_MEMORY_REGION_SIZE;
  t[FrontendReq.REM_MEM_REG] = SINGLE_MEM_REGION_PADDING + XEN_MEMORY_REGION_SIZE;
  t[FrontendReq.GET_SHARED_OBJECT] = SHARED_OBJECT_SIZE;
  t[FrontendReq.SET_DEVICE_STATE_FD] = DEVICE_STATE_TRANSFER_SIZE;
  t[FrontendReq.GET_SHMEM_CONFIG] = SHMEM_CONFIG_SIZE;
  return t;
}

/**
 * Upper bound on the payload of `request` (request or reply) on `channel`, or 0 when the id is
 * unknown. Per-request checks in the decoders are exact; this bound only needs the header.
 */
export function maxPayloadSize(channel: Channel, request: number): number {
  return (channel === 'frontend' ? FRONTEND_MAX : BACKEND_MAX)[request] ?? 0;
}

/**
 * Decodes and validates a header at `offset`: 12 bytes available, version bits == 1, no reserved
 * flag bits, size ≤ `MAX_PAYLOAD_SIZE`. When `channel` is given, also rejects request ids unknown on
 * that channel and sizes above `maxPayloadSize(channel, request)`, so the reader can refuse the
 * message before reading its body.
 */
export function decodeHeader(buf: Uint8Array, offset = 0, channel?: Channel): Header {
  const avail = buf.length - offset;
  if (offset < 0 || avail < HEADER_SIZE) {
    const name = offset >= 0 && avail >= 4 ? requestName(viewOf(buf).getUint32(buf.byteOffset + offset, LE), channel) : 'header';
    throw new VhostUserProtocolError(name, 'truncated', `header needs ${HEADER_SIZE} bytes, got ${Math.max(0, avail)}`);
  }
  const v = viewOf(buf);
  const o = buf.byteOffset + offset;
  const request = v.getUint32(o, LE);
  const flags = v.getUint32(o + 4, LE);
  const size = v.getUint32(o + 8, LE);
  if ((flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION || (flags & ~VHOST_USER_FLAGS_KNOWN_MASK) !== 0) {
    throw new VhostUserProtocolError(requestName(request, channel), 'version', `bad header flags 0x${(flags >>> 0).toString(16)}`);
  }
  if (size > MAX_PAYLOAD_SIZE) {
    throw new VhostUserProtocolError(requestName(request, channel), 'size', `payload size ${size} exceeds ${MAX_PAYLOAD_SIZE}`);
  }
  if (channel !== undefined) {
    const max = maxPayloadSize(channel, request);
    if (max === 0) throw new VhostUserProtocolError(requestName(request, channel), 'unknown-request', `unknown ${channel} request id`);
    if (size > max) throw new VhostUserProtocolError(requestName(request, channel), 'size', `payload size ${size} exceeds ${max}`);
  }
  return { request, flags, size };
}

export { decodeFrontendRequest, encodeFrontendRequest } from './codec-frontend.js';
export { decodeFrontendReply, encodeFrontendReply, encodeReplyAck } from './codec-reply.js';
export { decodeBackendRequest, encodeBackendRequest, decodeBackendReply, encodeBackendReply } from './codec-backend.js';
