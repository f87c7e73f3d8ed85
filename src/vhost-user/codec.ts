/**
 * Encoder/decoder of vhost-user messages (header + payload) for both channels.
 *
 * The codec is pure: it never reads sockets and never opens or closes fds. Decoders validate every
 * size, count and reserved bit against the spec and throw `VhostUserProtocolError`; on error the
 * caller still owns (and must close) the fds that arrived with the message.
 * @module
 */
import {
  BackendReq,
  FrontendReq,
  VHOST_USER_FLAGS_KNOWN_MASK,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
  requestName,
} from './constants.js';
import { VhostUserProtocolError } from './errors.js';
import type { BackendReply, BackendReplyOf, BackendRequest, FrontendReply, FrontendReplyOf, FrontendRequest } from './messages.js';

/** Size of the message header {request u32, flags u32, size u32}. */
export const HEADER_SIZE = 12;

/**
 * Upper bound on any payload, checked from the header alone so a reader can reject a message before
 * reading its body. The largest message the spec defines is CREATE_CRYPTO_SESSION (1072 bytes).
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
 * Decodes and validates a header: enough bytes, version bits == 1, no reserved flag bits, and size
 * within `MAX_PAYLOAD_SIZE`. The request id is checked later, by the channel-specific decoder.
 */
export function decodeHeader(buf: Uint8Array, offset = 0): Header {
  if (offset < 0 || buf.length - offset < HEADER_SIZE) {
    throw new VhostUserProtocolError('header', 'truncated', `header needs ${HEADER_SIZE} bytes, got ${Math.max(0, buf.length - offset)}`);
  }
  const v = new DataView(buf.buffer, buf.byteOffset + offset, HEADER_SIZE);
  const request = v.getUint32(0, true);
  const flags = v.getUint32(4, true);
  const size = v.getUint32(8, true);
  if ((flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION || (flags & ~VHOST_USER_FLAGS_KNOWN_MASK) !== 0) {
    throw new VhostUserProtocolError(`request ${request}`, 'version', `bad header flags 0x${(flags >>> 0).toString(16)}`);
  }
  if (size > MAX_PAYLOAD_SIZE) {
    throw new VhostUserProtocolError(`request ${request}`, 'size', `payload size ${size} exceeds ${MAX_PAYLOAD_SIZE}`);
  }
  return { request, flags, size };
}

function notImplemented(what: string, request: number): never {
  throw new VhostUserProtocolError(requestName(request), 'unknown-request', `${what} not implemented yet`);
}

/** Decodes a front-end request (back-end side). `payload` holds at least `h.size` bytes. */
export function decodeFrontendRequest(h: Header, _payload: Uint8Array, _fds: readonly number[], _ctx: CodecContext): FrontendRequest {
  return notImplemented('decodeFrontendRequest', h.request);
}

/** Encodes a front-end request; `flags` may add `VHOST_USER_NEED_REPLY_MASK`. */
export function encodeFrontendRequest(msg: FrontendRequest, _ctx: CodecContext, _flags = 0): EncodedMessage {
  return notImplemented('encodeFrontendRequest', msg.request);
}

/** Decodes the back-end's reply to front-end request `request` (front-end side). */
export function decodeFrontendReply(request: FrontendReq, _h: Header, _payload: Uint8Array, _fds: readonly number[], _ctx: CodecContext): FrontendReply {
  return notImplemented('decodeFrontendReply', request);
}

/** Encodes the back-end's reply to `request` (REPLY flag set). */
export function encodeFrontendReply<R extends FrontendReq>(request: R, _reply: FrontendReplyOf<R>, _ctx: CodecContext): EncodedMessage {
  return notImplemented('encodeFrontendReply', request);
}

/** Encodes a REPLY_ACK (u64 payload, REPLY flag) for `request` on either channel. */
export function encodeReplyAck(request: FrontendReq | BackendReq, _value: bigint): EncodedMessage {
  return notImplemented('encodeReplyAck', request);
}

/** Decodes a back-end request (front-end side of the back-end channel). */
export function decodeBackendRequest(h: Header, _payload: Uint8Array, _fds: readonly number[], _ctx: CodecContext): BackendRequest {
  return notImplemented('decodeBackendRequest', h.request);
}

/** Encodes a back-end request; `flags` may add `VHOST_USER_NEED_REPLY_MASK`. */
export function encodeBackendRequest(msg: BackendRequest, _ctx: CodecContext, _flags = 0): EncodedMessage {
  return notImplemented('encodeBackendRequest', msg.request);
}

/** Decodes the front-end's reply to back-end request `request` (back-end side). */
export function decodeBackendReply(request: BackendReq, _h: Header, _payload: Uint8Array, _fds: readonly number[], _ctx: CodecContext): BackendReply {
  return notImplemented('decodeBackendReply', request);
}

/** Encodes the front-end's reply to back-end request `request` (REPLY flag set). */
export function encodeBackendReply<R extends BackendReq>(request: R, _reply: BackendReplyOf<R>, _ctx: CodecContext): EncodedMessage {
  return notImplemented('encodeBackendReply', request);
}
