/**
 * Encoding and decoding of the back-end's replies to front-end requests (main socket), and the
 * generic REPLY_ACK used on both channels.
 * @module
 */
import {
  FRONTEND_REQ_MAX,
  FrontendReq,
  VHOST_USER_DEVICE_STATE_ERROR_MASK,
  VHOST_USER_DEVICE_STATE_NOFD_MASK,
  VHOST_USER_MAX_RAM_SLOTS,
  VHOST_USER_REPLY_MASK,
  type BackendReq,
  type Channel,
} from './constants.js';
import type { CodecContext, EncodedMessage, Header } from './codec.js';
import {
  HEADER_SIZE,
  LE,
  allocMessage,
  encodeConfig,
  encodeCryptoSession,
  encodeState,
  encodeU64,
  expectFds,
  expectSize,
  fail,
  finish,
  readConfig,
  readCryptoSession,
  readRegion,
  regionSize,
  viewOf,
  writeRegion,
} from './codec-wire.js';
import { encodeShmemConfig, readShmemConfig } from './codec-shmem.js';
import {
  INFLIGHT_SIZE,
  MEMORY_HEADER_SIZE,
  SINGLE_MEM_REGION_PADDING,
  type AnyMemoryRegion,
  type FrontendReply,
  type FrontendReplyOf,
} from './messages.js';

const F = 'frontend';
const DEVICE_STATE_KNOWN = BigInt(VHOST_USER_DEVICE_STATE_ERROR_MASK | VHOST_USER_DEVICE_STATE_NOFD_MASK);

/** Common reply checks: the header answers `request`, carries REPLY, and the payload is complete. */
export function checkReply(channel: Channel, request: number, h: Header, payload: Uint8Array): void {
  if (h.request !== request) fail(channel, request, 'value', `reply carries request id ${h.request}`);
  if ((h.flags & VHOST_USER_REPLY_MASK) === 0) fail(channel, request, 'version', 'reply lacks the REPLY flag');
  if (payload.length < h.size) fail(channel, request, 'truncated', `payload has ${payload.length} of ${h.size} bytes`);
}

/** Decodes an 8-byte u64 payload with no fds. */
export function readAck(channel: Channel, request: number, h: Header, payload: Uint8Array, fds: readonly number[]): bigint {
  expectSize(channel, request, h.size, 8);
  expectFds(channel, request, fds, 0);
  return viewOf(payload).getBigUint64(payload.byteOffset, LE);
}

/**
 * "u64 status + optional fd" replies (GET_SHARED_OBJECT, BACKEND_SHARED_OBJECT_LOOKUP): an fd comes
 * with success (0) only.
 */
export function readValueWithFd(channel: Channel, request: number, h: Header, payload: Uint8Array, fds: readonly number[]): { value: bigint; fd: number | null } {
  expectSize(channel, request, h.size, 8);
  const value = viewOf(payload).getBigUint64(payload.byteOffset, LE);
  expectFds(channel, request, fds, value === 0n ? 1 : 0);
  return { value, fd: value === 0n ? (fds[0] as number) : null };
}

function readPostcopyTable(request: number, payload: Uint8Array, size: number, fds: readonly number[], ctx: CodecContext): AnyMemoryRegion[] {
  expectFds(F, request, fds, 0);
  const v = viewOf(payload);
  const n = v.getUint32(payload.byteOffset, LE);
  if (n < 1 || n > VHOST_USER_MAX_RAM_SLOTS) fail(F, request, 'regions', `nregions ${n} not in 1..${VHOST_USER_MAX_RAM_SLOTS}`);
  const rs = regionSize(ctx.protocolFeatures);
  if (size < MEMORY_HEADER_SIZE || (size - MEMORY_HEADER_SIZE) % rs !== 0) fail(F, request, 'size', `payload size ${size} is not ${MEMORY_HEADER_SIZE} + a multiple of ${rs}`);
  if ((size - MEMORY_HEADER_SIZE) / rs !== n) fail(F, request, 'regions', `payload holds ${(size - MEMORY_HEADER_SIZE) / rs} regions but nregions is ${n}`);
  const regions = new Array<AnyMemoryRegion>(n);
  for (let i = 0; i < n; i++) regions[i] = readRegion(F, request, payload, MEMORY_HEADER_SIZE + i * rs, rs !== 32);
  return regions;
}

/**
 * Decodes the back-end's reply to front-end request `request` (front-end side). Requests without
 * a reply body of their own decode as a REPLY_ACK `{ request, value }`.
 */
export function decodeFrontendReply(request: FrontendReq, h: Header, payload: Uint8Array, fds: readonly number[], ctx: CodecContext): FrontendReply {
  checkReply(F, request, h, payload);
  const size = h.size;
  const v = viewOf(payload);
  const o = payload.byteOffset;
  switch (request) {
    case FrontendReq.GET_VRING_BASE:
      expectSize(F, request, size, 8);
      expectFds(F, request, fds, 0);
      return { request, index: v.getUint32(o, LE), num: v.getUint32(o + 4, LE) };
    case FrontendReq.GET_CONFIG:
      expectFds(F, request, fds, 0);
      // An empty payload is the back-end's way of reporting failure.
      return { request, config: size === 0 ? null : readConfig(F, request, payload, size) };
    case FrontendReq.GET_INFLIGHT_FD: {
      expectSize(F, request, size, INFLIGHT_SIZE);
      const mmapSize = v.getBigUint64(o, LE);
      expectFds(F, request, fds, mmapSize === 0n ? 0 : 1);
      return {
        request,
        mmapSize,
        mmapOffset: v.getBigUint64(o + 8, LE),
        numQueues: v.getUint16(o + 16, LE),
        queueSize: v.getUint16(o + 18, LE),
        fd: mmapSize === 0n ? null : (fds[0] as number),
      };
    }
    case FrontendReq.GET_STATUS: {
      const status = readAck(F, request, h, payload, fds);
      if (status > 0xffn) fail(F, request, 'value', `device status ${status} does not fit in 8 bits`);
      return { request, status: Number(status) };
    }
    case FrontendReq.SET_DEVICE_STATE_FD: {
      expectSize(F, request, size, 8);
      const value = v.getBigUint64(o, LE);
      if ((value & ~DEVICE_STATE_KNOWN) !== 0n) fail(F, request, 'value', `reserved bits set in 0x${value.toString(16)}`);
      const nofd = (value & BigInt(VHOST_USER_DEVICE_STATE_NOFD_MASK)) !== 0n;
      if (!nofd && (value & BigInt(VHOST_USER_DEVICE_STATE_ERROR_MASK)) !== 0n) fail(F, request, 'fds', 'error reply must not return an fd (NOFD bit clear)');
      expectFds(F, request, fds, nofd ? 0 : 1);
      return { request, value, fd: nofd ? null : (fds[0] as number) };
    }
    case FrontendReq.GET_SHARED_OBJECT:
      return { request, ...readValueWithFd(F, request, h, payload, fds) };
    case FrontendReq.CREATE_CRYPTO_SESSION:
      expectFds(F, request, fds, 0);
      return { request, ...readCryptoSession(F, request, payload, size) };
    case FrontendReq.POSTCOPY_ADVISE:
      expectSize(F, request, size, 0);
      expectFds(F, request, fds, 1);
      return { request, fd: fds[0] as number };
    case FrontendReq.SET_MEM_TABLE:
      // A u64 is a REPLY_ACK; anything else is the postcopy table (which has >= 1 region, so > 8 bytes).
      if (size === 8) return { request, kind: 'ack', value: readAck(F, request, h, payload, fds) };
      return { request, kind: 'postcopy', regions: readPostcopyTable(request, payload, size, fds, ctx) };
    case FrontendReq.ADD_MEM_REG: {
      if (size === 8) return { request, kind: 'ack', value: readAck(F, request, h, payload, fds) };
      const rs = regionSize(ctx.protocolFeatures);
      expectSize(F, request, size, SINGLE_MEM_REGION_PADDING + rs);
      expectFds(F, request, fds, 0);
      return { request, kind: 'postcopy', region: readRegion(F, request, payload, SINGLE_MEM_REGION_PADDING, rs !== 32) };
    }
    case FrontendReq.SET_LOG_BASE:
      if (size === 0) {
        expectFds(F, request, fds, 0);
        return { request, value: null };
      }
      return { request, value: readAck(F, request, h, payload, fds) };
    case FrontendReq.GET_SHMEM_CONFIG:
      expectFds(F, request, fds, 0);
      return { request, ...readShmemConfig(F, request, payload, size) };
    case FrontendReq.GET_FEATURES:
    case FrontendReq.GET_PROTOCOL_FEATURES:
    case FrontendReq.GET_QUEUE_NUM:
    case FrontendReq.GET_MAX_MEM_SLOTS:
    case FrontendReq.CHECK_DEVICE_STATE:
    case FrontendReq.POSTCOPY_END:
      return { request, value: readAck(F, request, h, payload, fds) };
    default:
      if (request < 1 || request > FRONTEND_REQ_MAX) fail(F, request, 'unknown-request', 'unknown front-end request id');
      // Every remaining id is a FrontendAckOnlyReq; TS cannot see that through the distributive type.
      return { request, value: readAck(F, request, h, payload, fds) } as FrontendReply;
  }
}

function msg(bytes: Uint8Array, fds: number[] = []): EncodedMessage {
  return { bytes: finish(bytes), fds };
}

/** Encodes a REPLY_ACK (u64 payload, REPLY flag) for `request` on either channel. */
export function encodeReplyAck(request: FrontendReq | BackendReq, value: bigint): EncodedMessage {
  return msg(encodeU64(request, VHOST_USER_REPLY_MASK, value));
}

/** Encodes the back-end's reply to `request` (REPLY flag set); `reply.request` must equal `request`. */
export function encodeFrontendReply<R extends FrontendReq>(request: R, reply: FrontendReplyOf<R>, ctx: CodecContext): EncodedMessage {
  const r = reply as FrontendReply;
  if (r.request !== request) fail(F, request, 'value', `reply object is for request ${r.request}`);
  const flags = VHOST_USER_REPLY_MASK;
  switch (r.request) {
    case FrontendReq.GET_VRING_BASE:
      return msg(encodeState(request, flags, r.index, r.num));
    case FrontendReq.GET_CONFIG:
      return msg(r.config === null ? allocMessage(request, flags, 0) : encodeConfig(F, request, flags, r.config));
    case FrontendReq.GET_INFLIGHT_FD: {
      const bytes = allocMessage(request, flags, INFLIGHT_SIZE);
      const v = viewOf(bytes);
      const o = bytes.byteOffset + HEADER_SIZE;
      v.setBigUint64(o, r.mmapSize, LE);
      v.setBigUint64(o + 8, r.mmapOffset, LE);
      v.setUint16(o + 16, r.numQueues, LE);
      v.setUint16(o + 18, r.queueSize, LE);
      return msg(bytes, r.fd === null ? [] : [r.fd]);
    }
    case FrontendReq.GET_STATUS:
      return msg(encodeU64(request, flags, BigInt(r.status)));
    case FrontendReq.SET_DEVICE_STATE_FD:
    case FrontendReq.GET_SHARED_OBJECT:
      return msg(encodeU64(request, flags, r.value), r.fd === null ? [] : [r.fd]);
    case FrontendReq.CREATE_CRYPTO_SESSION:
      return msg(encodeCryptoSession(F, request, flags, r));
    case FrontendReq.POSTCOPY_ADVISE:
      return msg(allocMessage(request, flags, 0), [r.fd]);
    case FrontendReq.SET_MEM_TABLE: {
      if (r.kind === 'ack') return msg(encodeU64(request, flags, r.value));
      const n = r.regions.length;
      if (n < 1 || n > VHOST_USER_MAX_RAM_SLOTS) fail(F, request, 'regions', `${n} regions not in 1..${VHOST_USER_MAX_RAM_SLOTS}`);
      const rs = regionSize(ctx.protocolFeatures);
      const bytes = allocMessage(request, flags, MEMORY_HEADER_SIZE + n * rs);
      viewOf(bytes).setUint32(bytes.byteOffset + HEADER_SIZE, n, LE);
      for (let i = 0; i < n; i++) writeRegion(bytes, HEADER_SIZE + MEMORY_HEADER_SIZE + i * rs, r.regions[i] as AnyMemoryRegion, rs !== 32);
      return msg(bytes);
    }
    case FrontendReq.ADD_MEM_REG: {
      if (r.kind === 'ack') return msg(encodeU64(request, flags, r.value));
      const rs = regionSize(ctx.protocolFeatures);
      const bytes = allocMessage(request, flags, SINGLE_MEM_REGION_PADDING + rs);
      writeRegion(bytes, HEADER_SIZE + SINGLE_MEM_REGION_PADDING, r.region, rs !== 32);
      return msg(bytes);
    }
    case FrontendReq.SET_LOG_BASE:
      return msg(r.value === null ? allocMessage(request, flags, 0) : encodeU64(request, flags, r.value));
    case FrontendReq.GET_SHMEM_CONFIG:
      return msg(encodeShmemConfig(F, request, flags, r));
    default:
      return msg(encodeU64(request, flags, r.value));
  }
}
