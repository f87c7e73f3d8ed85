/**
 * Encoding and decoding of front-end requests (main socket, front-end -> back-end).
 * @module
 */
import {
  DeviceStateDirection,
  DeviceStatePhase,
  FRONTEND_REQ_MAX,
  FrontendReq,
  VHOST_USER_MAX_RAM_SLOTS,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VRING_IDX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  VHOST_VRING_F_LOG,
} from './constants.js';
import type { CodecContext, EncodedMessage, Header } from './codec.js';
import {
  HEADER_SIZE,
  LE,
  allocMessage,
  encodeBytes,
  encodeConfig,
  encodeCryptoSession,
  encodeState,
  encodeU64,
  expectFds,
  expectSize,
  fail,
  finish,
  plainRegion,
  readConfig,
  readCryptoSession,
  readIotlb,
  readRegion,
  regionSize,
  viewOf,
  writeIotlb,
  writeRegion,
} from './codec-wire.js';
import {
  DEVICE_STATE_TRANSFER_SIZE,
  INFLIGHT_SIZE,
  IOTLB_MSG_SIZE,
  LOG_SIZE,
  MEMORY_HEADER_SIZE,
  SHARED_OBJECT_SIZE,
  SINGLE_MEM_REGION_PADDING,
  VRING_ADDR_SIZE,
  type AnyMemoryRegion,
  type FrontendEmptyReq,
  type FrontendRequest,
  type FrontendRequestOf,
  type Inflight,
  type MemoryRegionWithFd,
} from './messages.js';

const F = 'frontend';
const VRING_FD_PAYLOAD_MASK = BigInt(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK);

function checkPayload(h: Header, payload: Uint8Array): void {
  if (h.request < 1 || h.request > FRONTEND_REQ_MAX) fail(F, h.request, 'unknown-request', 'unknown front-end request id');
  if ((h.flags & VHOST_USER_REPLY_MASK) !== 0) fail(F, h.request, 'version', 'request carries the REPLY flag');
  if (payload.length < h.size) fail(F, h.request, 'truncated', `payload has ${payload.length} of ${h.size} bytes`);
}

function readInflight(req: number, payload: Uint8Array, size: number): Inflight {
  expectSize(F, req, size, INFLIGHT_SIZE);
  const v = viewOf(payload);
  const o = payload.byteOffset;
  const numQueues = v.getUint16(o + 16, LE);
  const queueSize = v.getUint16(o + 18, LE);
  if (numQueues === 0 || queueSize === 0) fail(F, req, 'value', `inflight num_queues ${numQueues} / queue_size ${queueSize} must be non-zero`);
  return { mmapSize: v.getBigUint64(o, LE), mmapOffset: v.getBigUint64(o + 8, LE), numQueues, queueSize };
}

/** Reads the single-region description of ADD_MEM_REG / REM_MEM_REG. */
function readSingleRegion(req: number, payload: Uint8Array, size: number, ctx: CodecContext): AnyMemoryRegion {
  const rs = regionSize(ctx.protocolFeatures);
  expectSize(F, req, size, SINGLE_MEM_REGION_PADDING + rs);
  return readRegion(F, req, payload, SINGLE_MEM_REGION_PADDING, rs !== 32);
}

/** Requests without a payload; one list for both directions so they cannot drift apart. */
const EMPTY_PAYLOAD_REQUESTS: ReadonlySet<FrontendReq> = new Set<FrontendEmptyReq>([
  FrontendReq.GET_FEATURES, FrontendReq.SET_OWNER, FrontendReq.RESET_OWNER, FrontendReq.GET_PROTOCOL_FEATURES,
  FrontendReq.GET_QUEUE_NUM, FrontendReq.POSTCOPY_ADVISE, FrontendReq.POSTCOPY_LISTEN, FrontendReq.POSTCOPY_END,
  FrontendReq.RESET_DEVICE, FrontendReq.GET_MAX_MEM_SLOTS, FrontendReq.GET_STATUS, FrontendReq.CHECK_DEVICE_STATE,
  FrontendReq.GET_SHMEM_CONFIG,
]);

function isEmptyPayloadRequest(m: FrontendRequest): m is FrontendRequestOf<FrontendEmptyReq> {
  return EMPTY_PAYLOAD_REQUESTS.has(m.request);
}

/**
 * Decodes a front-end request (back-end side). `payload` must hold at least `h.size` bytes (extra
 * bytes are ignored); `fds` are the descriptors received with the message, which stay owned by the
 * caller (close them if this throws).
 */
export function decodeFrontendRequest(h: Header, payload: Uint8Array, fds: readonly number[], ctx: CodecContext): FrontendRequest {
  checkPayload(h, payload);
  const req = h.request as FrontendReq;
  const size = h.size;
  const v = viewOf(payload);
  const o = payload.byteOffset;
  if (EMPTY_PAYLOAD_REQUESTS.has(req)) {
    expectSize(F, req, size, 0);
    expectFds(F, req, fds, 0);
    return { request: req as FrontendEmptyReq };
  }
  switch (req) {
    case FrontendReq.SET_FEATURES:
    case FrontendReq.SET_PROTOCOL_FEATURES:
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      return { request: req, features: v.getBigUint64(o, LE) };
    case FrontendReq.SET_MEM_TABLE: {
      if (size < MEMORY_HEADER_SIZE) fail(F, req, 'size', `payload size ${size} shorter than the ${MEMORY_HEADER_SIZE}-byte table header`);
      const n = v.getUint32(o, LE);
      if (ctx.postcopyListening === true && size === MEMORY_HEADER_SIZE && n === 0 && v.getUint32(o + 4, LE) === 0 && fds.length === 0) {
        return { request: req, regions: [] };
      }
      if (n < 1 || n > VHOST_USER_MAX_RAM_SLOTS) fail(F, req, 'regions', `nregions ${n} not in 1..${VHOST_USER_MAX_RAM_SLOTS}`);
      const rs = regionSize(ctx.protocolFeatures);
      if ((size - MEMORY_HEADER_SIZE) % rs !== 0) fail(F, req, 'size', `payload size ${size} is not ${MEMORY_HEADER_SIZE} + a multiple of ${rs}`);
      if ((size - MEMORY_HEADER_SIZE) / rs !== n) fail(F, req, 'regions', `payload holds ${(size - MEMORY_HEADER_SIZE) / rs} regions but nregions is ${n}`);
      if (fds.length !== n) fail(F, req, 'fds', `got ${fds.length} fds for ${n} regions`);
      const regions = new Array<MemoryRegionWithFd>(n);
      for (let i = 0; i < n; i++) {
        const r = readRegion(F, req, payload, MEMORY_HEADER_SIZE + i * rs, rs !== 32) as MemoryRegionWithFd;
        r.fd = fds[i] as number;
        regions[i] = r;
      }
      return { request: req, regions };
    }
    case FrontendReq.SET_LOG_BASE: {
      expectSize(F, req, size, LOG_SIZE);
      expectFds(F, req, fds, 1);
      const mmapSize = v.getBigUint64(o, LE);
      const mmapOffset = v.getBigUint64(o + 8, LE);
      if (mmapSize === 0n || mmapOffset + mmapSize > 1n << 64n) fail(F, req, 'value', 'log area empty or wraps the file offset space');
      return { request: req, mmapSize, mmapOffset, fd: fds[0] as number };
    }
    case FrontendReq.SET_LOG_FD:
    case FrontendReq.SET_BACKEND_REQ_FD:
    case FrontendReq.GPU_SET_SOCKET:
      expectSize(F, req, size, 0);
      expectFds(F, req, fds, 1);
      return { request: req, fd: fds[0] as number };
    case FrontendReq.SET_VRING_NUM:
    case FrontendReq.SET_VRING_BASE:
    case FrontendReq.GET_VRING_BASE:
    case FrontendReq.VRING_KICK: {
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      const num = v.getUint32(o + 4, LE);
      // num is reserved (0) for GET_VRING_BASE too, but DPDK virtio-user sends it uninitialised,
      // so only the newer VRING_KICK is held to the spec; GET_VRING_BASE passes num through.
      if (req === FrontendReq.VRING_KICK && num !== 0) fail(F, req, 'value', `reserved num field is ${num}, must be 0`);
      return { request: req, index: v.getUint32(o, LE), num };
    }
    case FrontendReq.SET_VRING_ADDR: {
      expectSize(F, req, size, VRING_ADDR_SIZE);
      expectFds(F, req, fds, 0);
      const flags = v.getUint32(o + 4, LE);
      const descUserAddr = v.getBigUint64(o + 8, LE);
      const usedUserAddr = v.getBigUint64(o + 16, LE);
      const availUserAddr = v.getBigUint64(o + 24, LE);
      if ((flags & ~(1 << VHOST_VRING_F_LOG)) !== 0) fail(F, req, 'value', `unknown vring address flags 0x${flags.toString(16)}`);
      // VIRTIO alignment (split: 16/2/4; packed: 16/4/4): a misaligned ring is a broken front-end.
      if ((descUserAddr & 15n) !== 0n || (availUserAddr & 1n) !== 0n || (usedUserAddr & 3n) !== 0n) fail(F, req, 'value', 'misaligned ring address');
      return { request: req, index: v.getUint32(o, LE), flags, descUserAddr, usedUserAddr, availUserAddr, logGuestAddr: v.getBigUint64(o + 32, LE) };
    }
    case FrontendReq.SET_VRING_KICK:
    case FrontendReq.SET_VRING_CALL:
    case FrontendReq.SET_VRING_ERR: {
      expectSize(F, req, size, 8);
      const u = v.getBigUint64(o, LE);
      if ((u & ~VRING_FD_PAYLOAD_MASK) !== 0n) fail(F, req, 'value', `reserved bits set in 0x${u.toString(16)}`);
      const lo = Number(u);
      const nofd = (lo & VHOST_USER_VRING_NOFD_MASK) !== 0;
      expectFds(F, req, fds, nofd ? 0 : 1);
      return { request: req, index: lo & VHOST_USER_VRING_IDX_MASK, fd: nofd ? null : (fds[0] as number) };
    }
    case FrontendReq.SET_VRING_ENABLE:
    case FrontendReq.SET_VRING_ENDIAN: {
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      const index = v.getUint32(o, LE);
      const num = v.getUint32(o + 4, LE);
      if (num > 1) fail(F, req, 'value', `num ${num} must be 0 or 1`);
      return req === FrontendReq.SET_VRING_ENABLE ? { request: req, index, enable: num === 1 } : { request: req, index, bigEndian: num === 1 };
    }
    case FrontendReq.SEND_RARP:
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      return { request: req, mac: payload.slice(0, 6) };
    case FrontendReq.NET_SET_MTU: {
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      const mtu = v.getBigUint64(o, LE);
      if (mtu > 0xffffn) fail(F, req, 'value', `MTU ${mtu} does not fit virtio-net's 16-bit field`);
      return { request: req, mtu: Number(mtu) };
    }
    case FrontendReq.IOTLB_MSG:
      expectFds(F, req, fds, 0);
      return { request: req, ...readIotlb(F, req, payload, size) };
    case FrontendReq.GET_CONFIG:
    case FrontendReq.SET_CONFIG:
      expectFds(F, req, fds, 0);
      return { request: req, ...readConfig(F, req, payload, size) };
    case FrontendReq.CREATE_CRYPTO_SESSION:
      expectFds(F, req, fds, 0);
      return { request: req, ...readCryptoSession(F, req, payload, size) };
    case FrontendReq.CLOSE_CRYPTO_SESSION:
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      return { request: req, sessionId: v.getBigUint64(o, LE) };
    case FrontendReq.GET_INFLIGHT_FD:
      expectFds(F, req, fds, 0);
      return { request: req, ...readInflight(req, payload, size) };
    case FrontendReq.SET_INFLIGHT_FD: {
      const inflight = readInflight(req, payload, size);
      expectFds(F, req, fds, 1);
      return { request: req, ...inflight, fd: fds[0] as number };
    }
    case FrontendReq.ADD_MEM_REG: {
      const region = readSingleRegion(req, payload, size, ctx) as MemoryRegionWithFd;
      expectFds(F, req, fds, 1);
      region.fd = fds[0] as number;
      return { request: req, region };
    }
    case FrontendReq.REM_MEM_REG: {
      const region = readSingleRegion(req, payload, size, ctx);
      // The spec tolerates one stray fd from old front-ends; the caller must close it.
      if (fds.length > 1) fail(F, req, 'fds', `got ${fds.length} fds, expected at most 1`);
      return { request: req, region, fd: fds.length === 1 ? (fds[0] as number) : null };
    }
    case FrontendReq.SET_STATUS: {
      expectSize(F, req, size, 8);
      expectFds(F, req, fds, 0);
      const status = v.getBigUint64(o, LE);
      if (status > 0xffn) fail(F, req, 'value', `device status ${status} does not fit in 8 bits`);
      return { request: req, status: Number(status) };
    }
    case FrontendReq.GET_SHARED_OBJECT:
      expectSize(F, req, size, SHARED_OBJECT_SIZE);
      expectFds(F, req, fds, 0);
      return { request: req, uuid: payload.slice(0, SHARED_OBJECT_SIZE) };
    case FrontendReq.SET_DEVICE_STATE_FD: {
      expectSize(F, req, size, DEVICE_STATE_TRANSFER_SIZE);
      expectFds(F, req, fds, 1);
      const direction = v.getUint32(o, LE);
      const phase = v.getUint32(o + 4, LE);
      if (direction !== DeviceStateDirection.SAVE && direction !== DeviceStateDirection.LOAD) fail(F, req, 'value', `transfer direction ${direction} unknown`);
      if (phase !== DeviceStatePhase.STOPPED) fail(F, req, 'value', `migration phase ${phase} unknown`);
      return { request: req, direction, phase, fd: fds[0] as number };
    }
  }
  // Unreachable: checkPayload rejected ids outside the enum, and the switch is exhaustive.
  return fail(F, h.request, 'unknown-request', 'unknown front-end request id');
}

function encodeSingleRegion(req: number, flags: number, r: AnyMemoryRegion, ctx: CodecContext): Uint8Array {
  const rs = regionSize(ctx.protocolFeatures);
  const bytes = allocMessage(req, flags, SINGLE_MEM_REGION_PADDING + rs);
  writeRegion(bytes, HEADER_SIZE + SINGLE_MEM_REGION_PADDING, r, rs !== 32);
  return bytes;
}

function encodeInflight(req: number, flags: number, m: Inflight): Uint8Array {
  const bytes = allocMessage(req, flags, INFLIGHT_SIZE);
  const v = viewOf(bytes);
  const o = bytes.byteOffset + HEADER_SIZE;
  v.setBigUint64(o, m.mmapSize, LE);
  v.setBigUint64(o + 8, m.mmapOffset, LE);
  v.setUint16(o + 16, m.numQueues, LE);
  v.setUint16(o + 18, m.queueSize, LE);
  return bytes;
}

const NO_FDS: readonly number[] = Object.freeze([]);

function out(bytes: Uint8Array, fds: readonly number[] = NO_FDS): EncodedMessage {
  return { bytes: finish(bytes), fds: fds === NO_FDS ? [] : (fds as number[]) };
}

/**
 * Encodes a front-end request. `flags` may add `VHOST_USER_NEED_REPLY_MASK`; the version bits are
 * always set to 1. Throws `VhostUserProtocolError` for messages the spec cannot express.
 */
export function encodeFrontendRequest(msg: FrontendRequest, ctx: CodecContext, flags = 0): EncodedMessage {
  const req = msg.request;
  flags &= ~VHOST_USER_REPLY_MASK;
  if (isEmptyPayloadRequest(msg)) return out(allocMessage(req, flags, 0));
  switch (msg.request) {
    case FrontendReq.SET_FEATURES:
    case FrontendReq.SET_PROTOCOL_FEATURES:
      return out(encodeU64(req, flags, msg.features));
    case FrontendReq.SET_MEM_TABLE: {
      const n = msg.regions.length;
      // n == 0 is only the postcopy acknowledgement (a u64 zero on the wire).
      if (n > VHOST_USER_MAX_RAM_SLOTS) fail(F, req, 'regions', `${n} regions exceed ${VHOST_USER_MAX_RAM_SLOTS}`);
      const rs = regionSize(ctx.protocolFeatures);
      const bytes = allocMessage(req, flags, MEMORY_HEADER_SIZE + n * rs);
      viewOf(bytes).setUint32(bytes.byteOffset + HEADER_SIZE, n, LE);
      const fds = new Array<number>(n);
      for (let i = 0; i < n; i++) {
        const r = msg.regions[i] as MemoryRegionWithFd;
        writeRegion(bytes, HEADER_SIZE + MEMORY_HEADER_SIZE + i * rs, r, rs !== 32);
        fds[i] = r.fd;
      }
      return out(bytes, fds);
    }
    case FrontendReq.SET_LOG_BASE: {
      const bytes = allocMessage(req, flags, LOG_SIZE);
      const v = viewOf(bytes);
      v.setBigUint64(bytes.byteOffset + HEADER_SIZE, msg.mmapSize, LE);
      v.setBigUint64(bytes.byteOffset + HEADER_SIZE + 8, msg.mmapOffset, LE);
      return out(bytes, [msg.fd]);
    }
    case FrontendReq.SET_LOG_FD:
    case FrontendReq.SET_BACKEND_REQ_FD:
    case FrontendReq.GPU_SET_SOCKET:
      return out(allocMessage(req, flags, 0), [msg.fd]);
    case FrontendReq.SET_VRING_NUM:
    case FrontendReq.SET_VRING_BASE:
    case FrontendReq.GET_VRING_BASE:
    case FrontendReq.VRING_KICK:
      return out(encodeState(req, flags, msg.index, msg.num));
    case FrontendReq.SET_VRING_ADDR: {
      const bytes = allocMessage(req, flags, VRING_ADDR_SIZE);
      const v = viewOf(bytes);
      const o = bytes.byteOffset + HEADER_SIZE;
      v.setUint32(o, msg.index, LE);
      v.setUint32(o + 4, msg.flags, LE);
      v.setBigUint64(o + 8, msg.descUserAddr, LE);
      v.setBigUint64(o + 16, msg.usedUserAddr, LE);
      v.setBigUint64(o + 24, msg.availUserAddr, LE);
      v.setBigUint64(o + 32, msg.logGuestAddr, LE);
      return out(bytes);
    }
    case FrontendReq.SET_VRING_KICK:
    case FrontendReq.SET_VRING_CALL:
    case FrontendReq.SET_VRING_ERR: {
      if (msg.index < 0 || msg.index > VHOST_USER_VRING_IDX_MASK) fail(F, req, 'value', `vring index ${msg.index} does not fit in 8 bits`);
      const u = msg.fd === null ? msg.index | VHOST_USER_VRING_NOFD_MASK : msg.index;
      return out(encodeU64(req, flags, BigInt(u)), msg.fd === null ? NO_FDS : [msg.fd]);
    }
    case FrontendReq.SET_VRING_ENABLE:
      return out(encodeState(req, flags, msg.index, msg.enable ? 1 : 0));
    case FrontendReq.SET_VRING_ENDIAN:
      return out(encodeState(req, flags, msg.index, msg.bigEndian ? 1 : 0));
    case FrontendReq.SEND_RARP:
      if (msg.mac.length !== 6) fail(F, req, 'value', `MAC address has ${msg.mac.length} bytes, expected 6`);
      return out(encodeBytes(req, flags, msg.mac, 8));
    case FrontendReq.NET_SET_MTU:
      return out(encodeU64(req, flags, BigInt(msg.mtu)));
    case FrontendReq.IOTLB_MSG: {
      const bytes = allocMessage(req, flags, IOTLB_MSG_SIZE);
      writeIotlb(bytes, msg);
      return out(bytes);
    }
    case FrontendReq.GET_CONFIG:
    case FrontendReq.SET_CONFIG:
      return out(encodeConfig(F, req, flags, msg));
    case FrontendReq.CREATE_CRYPTO_SESSION:
      return out(encodeCryptoSession(F, req, flags, msg));
    case FrontendReq.CLOSE_CRYPTO_SESSION:
      return out(encodeU64(req, flags, msg.sessionId));
    case FrontendReq.GET_INFLIGHT_FD:
      return out(encodeInflight(req, flags, msg));
    case FrontendReq.SET_INFLIGHT_FD:
      return out(encodeInflight(req, flags, msg), [msg.fd]);
    case FrontendReq.ADD_MEM_REG:
      return out(encodeSingleRegion(req, flags, msg.region, ctx), [msg.region.fd]);
    case FrontendReq.REM_MEM_REG:
      return out(encodeSingleRegion(req, flags, plainRegion(msg.region), ctx), msg.fd === null ? NO_FDS : [msg.fd]);
    case FrontendReq.SET_STATUS:
      return out(encodeU64(req, flags, BigInt(msg.status)));
    case FrontendReq.GET_SHARED_OBJECT:
      if (msg.uuid.length !== SHARED_OBJECT_SIZE) fail(F, req, 'value', `UUID has ${msg.uuid.length} bytes, expected 16`);
      return out(encodeBytes(req, flags, msg.uuid, SHARED_OBJECT_SIZE));
    case FrontendReq.SET_DEVICE_STATE_FD: {
      const bytes = encodeState(req, flags, msg.direction, msg.phase);
      return out(bytes, [msg.fd]);
    }
  }
  return fail(F, req, 'unknown-request', 'cannot encode unknown front-end request');
}
