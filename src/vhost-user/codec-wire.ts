/**
 * Low-level helpers shared by the codec modules: native-endian field access without per-message
 * DataView allocation, size/fd checks that throw `VhostUserProtocolError`, and the encoders/decoders
 * of the payload structs used by more than one request.
 * @internal
 * @module
 */
import {
  IotlbType,
  ProtocolFeature,
  VHOST_ACCESS_RW,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_USER_VERSION,
  hasProtocolFeature,
  requestName,
  type Channel,
} from './constants.js';
import { VhostUserProtocolError, type ProtocolErrorKind } from './errors.js';
import {
  CONFIG_HEADER_SIZE,
  CRYPTO_SESSION_BODY_SIZE,
  CRYPTO_SESSION_LEGACY_BODY_SIZE,
  CRYPTO_SESSION_LEGACY_SIZE,
  CRYPTO_SESSION_SIZE,
  IOTLB_MSG_SIZE,
  MEMORY_REGION_SIZE,
  XEN_MEMORY_REGION_SIZE,
  type AnyMemoryRegion,
  type Config,
  type CryptoSession,
  type IotlbMsg,
} from './messages.js';

/** Size of the message header {request u32, flags u32, size u32}. */
export const HEADER_SIZE = 12;

/** The spec says "machine native byte order"; every supported host is little-endian, but be exact. */
export const LE: boolean = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const U64_MAX = (1n << 64n) - 1n;

// One DataView per backing ArrayBuffer: a connection decodes out of a reused receive buffer, so the
// cache hits and decoding allocates nothing but the result object.
let cachedBuffer: ArrayBufferLike | undefined;
let cachedView: DataView = new DataView(new ArrayBuffer(0));

// Encoders build every message in this scratch buffer and copy it out once (`finish`): one
// allocation per message, and the decode-side DataView cache is not evicted by encoding.
const SCRATCH_SIZE = HEADER_SIZE + 4096;
const scratch = new Uint8Array(SCRATCH_SIZE);
const scratchView = new DataView(scratch.buffer);

/** A DataView over the whole backing buffer of `buf`; add `buf.byteOffset` to field offsets. */
export function viewOf(buf: Uint8Array): DataView {
  if (buf.buffer === scratch.buffer) return scratchView;
  if (buf.buffer !== cachedBuffer) {
    cachedBuffer = buf.buffer;
    cachedView = new DataView(buf.buffer);
  }
  return cachedView;
}

/** Throws a protocol error naming `request` on `channel`. */
export function fail(channel: Channel, request: number, kind: ProtocolErrorKind, message: string): never {
  throw new VhostUserProtocolError(requestName(request, channel), kind, message);
}

/** Requires `size === want`. */
export function expectSize(channel: Channel, request: number, size: number, want: number): void {
  if (size !== want) fail(channel, request, 'size', `payload size ${size}, expected ${want}`);
}

/** Requires exactly `want` fds. */
export function expectFds(channel: Channel, request: number, fds: readonly number[], want: number): void {
  if (fds.length !== want) fail(channel, request, 'fds', `got ${fds.length} fds, expected ${want}`);
}

/**
 * Starts a message in the scratch buffer: zeroes header + payload, writes the header, and returns
 * the scratch window (payload at HEADER_SIZE). The caller must pass it to `finish` before starting
 * another message.
 */
export function allocMessage(request: number, flags: number, payloadSize: number): Uint8Array {
  if (payloadSize > SCRATCH_SIZE - HEADER_SIZE) throw new RangeError(`payload of ${payloadSize} bytes exceeds the codec maximum`);
  const bytes = scratch.subarray(0, HEADER_SIZE + payloadSize);
  bytes.fill(0);
  scratchView.setUint32(0, request, LE);
  scratchView.setUint32(4, (flags & ~3) | VHOST_USER_VERSION, LE);
  scratchView.setUint32(8, payloadSize, LE);
  return bytes;
}

/** Copies a message built by `allocMessage` out of the scratch buffer. */
export function finish(bytes: Uint8Array): Uint8Array {
  return bytes.slice();
}

/** Memory region wire size under the negotiated protocol features. */
export function regionSize(protocolFeatures: bigint): number {
  return hasProtocolFeature(protocolFeatures, ProtocolFeature.XEN_MMAP) ? XEN_MEMORY_REGION_SIZE : MEMORY_REGION_SIZE;
}

/**
 * Reads a memory region at byte `off` of `buf` and rejects empty regions and regions whose end
 * wraps the 64-bit address space in guest, user, or file offset space.
 */
export function readRegion(channel: Channel, request: number, buf: Uint8Array, off: number, xen: boolean): AnyMemoryRegion {
  const v = viewOf(buf);
  const o = buf.byteOffset + off;
  const guestPhysAddr = v.getBigUint64(o, LE);
  const memorySize = v.getBigUint64(o + 8, LE);
  const userAddr = v.getBigUint64(o + 16, LE);
  const mmapOffset = v.getBigUint64(o + 24, LE);
  if (memorySize === 0n) fail(channel, request, 'value', 'memory region of size 0');
  if (guestPhysAddr + memorySize - 1n > U64_MAX || userAddr + memorySize - 1n > U64_MAX || mmapOffset + memorySize - 1n > U64_MAX) {
    fail(channel, request, 'value', 'memory region wraps the 64-bit address space');
  }
  if (!xen) return { guestPhysAddr, memorySize, userAddr, mmapOffset };
  return { guestPhysAddr, memorySize, userAddr, mmapOffset, xenMmapFlags: v.getUint32(o + 32, LE), domid: v.getUint32(o + 36, LE) };
}

/** Writes a memory region at byte `off` of `buf`; Xen fields default to 0 if absent. */
export function writeRegion(buf: Uint8Array, off: number, r: AnyMemoryRegion, xen: boolean): void {
  const v = viewOf(buf);
  const o = buf.byteOffset + off;
  v.setBigUint64(o, r.guestPhysAddr, LE);
  v.setBigUint64(o + 8, r.memorySize, LE);
  v.setBigUint64(o + 16, r.userAddr, LE);
  v.setBigUint64(o + 24, r.mmapOffset, LE);
  if (xen) {
    v.setUint32(o + 32, 'xenMmapFlags' in r ? r.xenMmapFlags : 0, LE);
    v.setUint32(o + 36, 'domid' in r ? r.domid : 0, LE);
  }
}

/** Copies a region's plain fields (drops `fd` and any other extra keys). */
export function plainRegion(r: AnyMemoryRegion): AnyMemoryRegion {
  const base = { guestPhysAddr: r.guestPhysAddr, memorySize: r.memorySize, userAddr: r.userAddr, mmapOffset: r.mmapOffset };
  return 'xenMmapFlags' in r ? { ...base, xenMmapFlags: r.xenMmapFlags, domid: r.domid } : base;
}

/** Reads `struct vhost_iotlb_msg` (32 bytes) and checks perm and type. */
export function readIotlb(channel: Channel, request: number, buf: Uint8Array, size: number): IotlbMsg {
  expectSize(channel, request, size, IOTLB_MSG_SIZE);
  const v = viewOf(buf);
  const o = buf.byteOffset;
  const perm = v.getUint8(o + 24);
  const type = v.getUint8(o + 25);
  if (perm > VHOST_ACCESS_RW) fail(channel, request, 'value', `IOTLB permission ${perm} out of range`);
  if (type < IotlbType.MISS || type > IotlbType.BATCH_END) fail(channel, request, 'value', `IOTLB message type ${type} unknown`);
  return { iova: v.getBigUint64(o, LE), size: v.getBigUint64(o + 8, LE), userAddr: v.getBigUint64(o + 16, LE), perm, type };
}

/** Writes `struct vhost_iotlb_msg` at HEADER_SIZE of `bytes`. */
export function writeIotlb(bytes: Uint8Array, m: IotlbMsg): void {
  const v = viewOf(bytes);
  const o = bytes.byteOffset + HEADER_SIZE;
  v.setBigUint64(o, m.iova, LE);
  v.setBigUint64(o + 8, m.size, LE);
  v.setBigUint64(o + 16, m.userAddr, LE);
  v.setUint8(o + 24, m.perm);
  v.setUint8(o + 25, m.type);
}

/** Reads a config space access; `size` must be 12 + the inner size field, which is ≤ 256. */
export function readConfig(channel: Channel, request: number, buf: Uint8Array, size: number): Config {
  if (size < CONFIG_HEADER_SIZE) fail(channel, request, 'size', `payload size ${size} shorter than the ${CONFIG_HEADER_SIZE}-byte config header`);
  const v = viewOf(buf);
  const o = buf.byteOffset;
  const len = v.getUint32(o + 4, LE);
  if (len > VHOST_USER_MAX_CONFIG_SIZE) fail(channel, request, 'size', `config size ${len} exceeds ${VHOST_USER_MAX_CONFIG_SIZE}`);
  if (size !== CONFIG_HEADER_SIZE + len) fail(channel, request, 'size', `payload size ${size} does not match config size ${len} + ${CONFIG_HEADER_SIZE}`);
  // Copy: the payload usually aliases a receive buffer that will be overwritten.
  return { offset: v.getUint32(o, LE), flags: v.getUint32(o + 8, LE), data: buf.slice(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + len) };
}

/** Encodes a config access message. */
export function encodeConfig(channel: Channel, request: number, flags: number, c: Config): Uint8Array {
  if (c.data.length > VHOST_USER_MAX_CONFIG_SIZE) fail(channel, request, 'size', `config size ${c.data.length} exceeds ${VHOST_USER_MAX_CONFIG_SIZE}`);
  const bytes = allocMessage(request, flags, CONFIG_HEADER_SIZE + c.data.length);
  const v = viewOf(bytes);
  const o = bytes.byteOffset + HEADER_SIZE;
  v.setUint32(o, c.offset, LE);
  v.setUint32(o + 4, c.data.length, LE);
  v.setUint32(o + 8, c.flags, LE);
  bytes.set(c.data, HEADER_SIZE + CONFIG_HEADER_SIZE);
  return bytes;
}

/** Reads a crypto session in either QEMU layout, selected by size. */
export function readCryptoSession(channel: Channel, request: number, buf: Uint8Array, size: number): CryptoSession {
  const v = viewOf(buf);
  const o = buf.byteOffset;
  if (size === CRYPTO_SESSION_SIZE) {
    return {
      layout: 'current',
      opCode: v.getBigUint64(o, LE),
      sessionId: v.getBigInt64(o + 8 + CRYPTO_SESSION_BODY_SIZE, LE),
      body: buf.slice(8, 8 + CRYPTO_SESSION_BODY_SIZE),
    };
  }
  if (size === CRYPTO_SESSION_LEGACY_SIZE) {
    return { layout: 'legacy', opCode: 0n, sessionId: v.getBigInt64(o, LE), body: buf.slice(8, 8 + CRYPTO_SESSION_LEGACY_BODY_SIZE) };
  }
  return fail(channel, request, 'size', `payload size ${size}, expected ${CRYPTO_SESSION_SIZE} or ${CRYPTO_SESSION_LEGACY_SIZE}`);
}

/** Encodes a crypto session in the layout it names. */
export function encodeCryptoSession(channel: Channel, request: number, flags: number, s: CryptoSession): Uint8Array {
  const legacy = s.layout === 'legacy';
  const bodySize = legacy ? CRYPTO_SESSION_LEGACY_BODY_SIZE : CRYPTO_SESSION_BODY_SIZE;
  if (s.body.length !== bodySize) fail(channel, request, 'size', `crypto session body is ${s.body.length} bytes, expected ${bodySize}`);
  const bytes = allocMessage(request, flags, legacy ? CRYPTO_SESSION_LEGACY_SIZE : CRYPTO_SESSION_SIZE);
  const v = viewOf(bytes);
  const o = bytes.byteOffset + HEADER_SIZE;
  if (legacy) {
    v.setBigInt64(o, s.sessionId, LE);
  } else {
    v.setBigUint64(o, s.opCode, LE);
    v.setBigInt64(o + 8 + CRYPTO_SESSION_BODY_SIZE, s.sessionId, LE);
  }
  bytes.set(s.body, HEADER_SIZE + 8);
  return bytes;
}

/** Encodes a message whose payload is one u64. */
export function encodeU64(request: number, flags: number, value: bigint): Uint8Array {
  const bytes = allocMessage(request, flags, 8);
  viewOf(bytes).setBigUint64(bytes.byteOffset + HEADER_SIZE, value, LE);
  return bytes;
}

/** Encodes a vring state message. */
export function encodeState(request: number, flags: number, index: number, num: number): Uint8Array {
  const bytes = allocMessage(request, flags, 8);
  const v = viewOf(bytes);
  v.setUint32(bytes.byteOffset + HEADER_SIZE, index, LE);
  v.setUint32(bytes.byteOffset + HEADER_SIZE + 4, num, LE);
  return bytes;
}

/** Encodes a message whose payload is a byte string (UUIDs). */
export function encodeBytes(request: number, flags: number, data: Uint8Array, size: number): Uint8Array {
  const bytes = allocMessage(request, flags, size);
  bytes.set(data.subarray(0, size), HEADER_SIZE);
  return bytes;
}
