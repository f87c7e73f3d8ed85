// Round trips of every vhost-user message through the codec: encode -> decodeHeader -> decode must
// reproduce the original object exactly. fds are arbitrary integers: the codec never touches them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  HEADER_SIZE,
  decodeBackendReply,
  decodeBackendRequest,
  decodeFrontendReply,
  decodeFrontendRequest,
  decodeHeader,
  encodeBackendReply,
  encodeBackendRequest,
  encodeFrontendReply,
  encodeFrontendRequest,
  encodeReplyAck,
  isReply,
  needsReply,
  type CodecContext,
} from '../../src/vhost-user/codec.js';
import {
  BackendReq,
  DeviceStateDirection,
  DeviceStatePhase,
  FrontendReq,
  IotlbType,
  ProtocolFeature,
  VHOST_ACCESS_RW,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  protocolFeatureMask,
} from '../../src/vhost-user/constants.js';
import {
  CRYPTO_SESSION_BODY_SIZE,
  CRYPTO_SESSION_LEGACY_BODY_SIZE,
  type BackendReply,
  type BackendRequest,
  type FrontendReply,
  type FrontendRequest,
} from '../../src/vhost-user/messages.js';

const CTX: CodecContext = { protocolFeatures: 0n };
const XEN: CodecContext = { protocolFeatures: protocolFeatureMask(ProtocolFeature.XEN_MMAP) };

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

function region(i: number) {
  return { guestPhysAddr: BigInt(i) << 32n, memorySize: 0x4000_0000n, userAddr: 0x7f00_0000_0000n + (BigInt(i) << 32n), mmapOffset: BigInt(i) * 0x1000n };
}

const uuid = bytes(16, 7);

const frontendRequests: FrontendRequest[] = [
  { request: FrontendReq.GET_FEATURES },
  { request: FrontendReq.SET_FEATURES, features: 0x1_4000_0000n | (1n << 63n) },
  { request: FrontendReq.SET_OWNER },
  { request: FrontendReq.RESET_OWNER },
  { request: FrontendReq.SET_MEM_TABLE, regions: [{ ...region(0), fd: 40 }] },
  { request: FrontendReq.SET_MEM_TABLE, regions: Array.from({ length: 8 }, (_, i) => ({ ...region(i), fd: 100 + i })) },
  { request: FrontendReq.SET_LOG_BASE, mmapSize: 0x10_0000n, mmapOffset: 0x2000n, fd: 9 },
  { request: FrontendReq.SET_LOG_FD, fd: 11 },
  { request: FrontendReq.SET_VRING_NUM, index: 1, num: 256 },
  { request: FrontendReq.SET_VRING_ADDR, index: 2, flags: 1, descUserAddr: 0x7f00_0000_1000n, usedUserAddr: 0x7f00_0000_3000n, availUserAddr: 0x7f00_0000_2002n, logGuestAddr: 0x4000n },
  { request: FrontendReq.SET_VRING_BASE, index: 0, num: 0x8001_8005 },
  { request: FrontendReq.GET_VRING_BASE, index: 3, num: 0 },
  { request: FrontendReq.SET_VRING_KICK, index: 255, fd: 12 },
  { request: FrontendReq.SET_VRING_KICK, index: 0, fd: null },
  { request: FrontendReq.SET_VRING_CALL, index: 1, fd: 13 },
  { request: FrontendReq.SET_VRING_CALL, index: 7, fd: null },
  { request: FrontendReq.SET_VRING_ERR, index: 2, fd: 14 },
  { request: FrontendReq.GET_PROTOCOL_FEATURES },
  { request: FrontendReq.SET_PROTOCOL_FEATURES, features: 0xf_ffffn },
  { request: FrontendReq.GET_QUEUE_NUM },
  { request: FrontendReq.SET_VRING_ENABLE, index: 1, enable: true },
  { request: FrontendReq.SET_VRING_ENABLE, index: 1, enable: false },
  { request: FrontendReq.SEND_RARP, mac: new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]) },
  { request: FrontendReq.NET_SET_MTU, mtu: 9000 },
  { request: FrontendReq.SET_BACKEND_REQ_FD, fd: 15 },
  { request: FrontendReq.IOTLB_MSG, iova: 0x1000n, size: 0x2000n, userAddr: 0x7f00_0000_0000n, perm: VHOST_ACCESS_RW, type: IotlbType.UPDATE },
  { request: FrontendReq.SET_VRING_ENDIAN, index: 0, bigEndian: true },
  { request: FrontendReq.GET_CONFIG, offset: 0, flags: 0, data: new Uint8Array(60) },
  { request: FrontendReq.SET_CONFIG, offset: 8, flags: 1, data: bytes(256, 3) },
  { request: FrontendReq.CREATE_CRYPTO_SESSION, layout: 'current', opCode: 2n, sessionId: -1n, body: bytes(CRYPTO_SESSION_BODY_SIZE, 5) },
  { request: FrontendReq.CREATE_CRYPTO_SESSION, layout: 'legacy', opCode: 0n, sessionId: 0n, body: bytes(CRYPTO_SESSION_LEGACY_BODY_SIZE, 6) },
  { request: FrontendReq.CLOSE_CRYPTO_SESSION, sessionId: 42n },
  { request: FrontendReq.POSTCOPY_ADVISE },
  { request: FrontendReq.POSTCOPY_LISTEN },
  { request: FrontendReq.POSTCOPY_END },
  { request: FrontendReq.GET_INFLIGHT_FD, mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 128 },
  { request: FrontendReq.SET_INFLIGHT_FD, mmapSize: 0x3000n, mmapOffset: 0n, numQueues: 2, queueSize: 128, fd: 16 },
  { request: FrontendReq.GPU_SET_SOCKET, fd: 17 },
  { request: FrontendReq.RESET_DEVICE },
  { request: FrontendReq.VRING_KICK, index: 4, num: 0 },
  { request: FrontendReq.GET_MAX_MEM_SLOTS },
  { request: FrontendReq.ADD_MEM_REG, region: { ...region(3), fd: 18 } },
  { request: FrontendReq.REM_MEM_REG, region: region(3), fd: null },
  { request: FrontendReq.REM_MEM_REG, region: region(4), fd: 19 },
  { request: FrontendReq.SET_STATUS, status: 0x0f },
  { request: FrontendReq.GET_STATUS },
  { request: FrontendReq.GET_SHARED_OBJECT, uuid },
  { request: FrontendReq.SET_DEVICE_STATE_FD, direction: DeviceStateDirection.LOAD, phase: DeviceStatePhase.STOPPED, fd: 20 },
  { request: FrontendReq.CHECK_DEVICE_STATE },
  { request: FrontendReq.GET_SHMEM_CONFIG },
];

function roundTripRequest(msg: FrontendRequest, ctx: CodecContext, flags = 0): void {
  const e = encodeFrontendRequest(msg, ctx, flags);
  const h = decodeHeader(e.bytes, 0, 'frontend');
  assert.equal(h.request, msg.request);
  assert.equal(h.size, e.bytes.length - HEADER_SIZE);
  assert.equal(isReply(h), false);
  assert.equal(needsReply(h), (flags & VHOST_USER_NEED_REPLY_MASK) !== 0);
  const d = decodeFrontendRequest(h, e.bytes.subarray(HEADER_SIZE), e.fds, ctx);
  assert.deepEqual(d, msg, `round trip of request ${msg.request}`);
}

test('every front-end request id has a round-trip sample', () => {
  const covered = new Set(frontendRequests.map((m) => m.request));
  for (const v of Object.values(FrontendReq)) if (typeof v === 'number') assert.ok(covered.has(v), `request ${FrontendReq[v]} not covered`);
});

test('front-end requests round trip (with and without NEED_REPLY)', () => {
  for (const m of frontendRequests) {
    roundTripRequest(m, CTX);
    roundTripRequest(m, CTX, VHOST_USER_NEED_REPLY_MASK);
  }
});

test('memory regions round trip in the XEN_MMAP layout', () => {
  const xr = (i: number) => ({ ...region(i), xenMmapFlags: 0x101, domid: 7 + i });
  roundTripRequest({ request: FrontendReq.SET_MEM_TABLE, regions: [{ ...xr(0), fd: 3 }, { ...xr(1), fd: 4 }] }, XEN);
  roundTripRequest({ request: FrontendReq.ADD_MEM_REG, region: { ...xr(2), fd: 5 } }, XEN);
  roundTripRequest({ request: FrontendReq.REM_MEM_REG, region: xr(2), fd: null }, XEN);
  const e = encodeFrontendRequest({ request: FrontendReq.SET_MEM_TABLE, regions: [{ ...xr(0), fd: 3 }] }, XEN);
  assert.equal(e.bytes.length, HEADER_SIZE + 8 + 40);
});

test('postcopy SET_MEM_TABLE acknowledgement decodes only while postcopy is listening', () => {
  const e = encodeFrontendRequest({ request: FrontendReq.SET_MEM_TABLE, regions: [] }, CTX);
  assert.equal(e.bytes.length, HEADER_SIZE + 8);
  const h = decodeHeader(e.bytes);
  assert.deepEqual(decodeFrontendRequest(h, e.bytes.subarray(HEADER_SIZE), [], { ...CTX, postcopyListening: true }), { request: FrontendReq.SET_MEM_TABLE, regions: [] });
  assert.throws(() => decodeFrontendRequest(h, e.bytes.subarray(HEADER_SIZE), [], CTX), { kind: 'regions' });
});

function frontendReplySamples(): FrontendReply[] {
  const out: FrontendReply[] = [
    { request: FrontendReq.GET_FEATURES, value: 0x1_7000_0000n },
    { request: FrontendReq.GET_PROTOCOL_FEATURES, value: 0x8_ffffn },
    { request: FrontendReq.GET_QUEUE_NUM, value: 4n },
    { request: FrontendReq.GET_MAX_MEM_SLOTS, value: 509n },
    { request: FrontendReq.CHECK_DEVICE_STATE, value: 0n },
    { request: FrontendReq.POSTCOPY_END, value: 1n },
    { request: FrontendReq.GET_VRING_BASE, index: 1, num: 0x8000_0010 },
    { request: FrontendReq.GET_CONFIG, config: { offset: 0, flags: 0, data: bytes(60, 9) } },
    { request: FrontendReq.GET_CONFIG, config: null },
    { request: FrontendReq.GET_INFLIGHT_FD, mmapSize: 0x2000n, mmapOffset: 0n, numQueues: 1, queueSize: 256, fd: 21 },
    { request: FrontendReq.GET_INFLIGHT_FD, mmapSize: 0n, mmapOffset: 0n, numQueues: 1, queueSize: 256, fd: null },
    { request: FrontendReq.GET_STATUS, status: 0x0f },
    { request: FrontendReq.SET_DEVICE_STATE_FD, value: 0n, fd: 22 },
    { request: FrontendReq.SET_DEVICE_STATE_FD, value: 0x100n, fd: null },
    { request: FrontendReq.SET_DEVICE_STATE_FD, value: 0x105n, fd: null },
    { request: FrontendReq.GET_SHARED_OBJECT, value: 0n, fd: 23 },
    { request: FrontendReq.GET_SHARED_OBJECT, value: 2n, fd: null },
    { request: FrontendReq.CREATE_CRYPTO_SESSION, layout: 'current', opCode: 2n, sessionId: 17n, body: bytes(CRYPTO_SESSION_BODY_SIZE, 1) },
    { request: FrontendReq.POSTCOPY_ADVISE, fd: 24 },
    { request: FrontendReq.SET_MEM_TABLE, kind: 'postcopy', regions: [region(0), region(1)] },
    { request: FrontendReq.SET_MEM_TABLE, kind: 'ack', value: 0n },
    { request: FrontendReq.ADD_MEM_REG, kind: 'postcopy', region: region(2) },
    { request: FrontendReq.ADD_MEM_REG, kind: 'ack', value: 1n },
    { request: FrontendReq.SET_LOG_BASE, value: null },
    { request: FrontendReq.SET_LOG_BASE, value: 0n },
    { request: FrontendReq.GET_SHMEM_CONFIG, memorySizes: [] },
    { request: FrontendReq.GET_SHMEM_CONFIG, memorySizes: [0n, 1n << 30n, 0xffff_ffff_ffff_f000n] },
    { request: FrontendReq.GET_SHMEM_CONFIG, memorySizes: Array.from({ length: 256 }, (_, i) => BigInt(i) << 20n) },
  ];
  const withBody = new Set(out.map((r) => r.request));
  for (const v of Object.values(FrontendReq)) {
    if (typeof v !== 'number' || withBody.has(v)) continue;
    out.push({ request: v, value: 0n } as FrontendReply, { request: v, value: 0xffff_ffff_ffff_ffffn } as FrontendReply);
  }
  return out;
}

test('every front-end reply round trips', () => {
  const samples = frontendReplySamples();
  assert.ok(samples.length > 43);
  for (const r of samples) {
    const e = encodeFrontendReply(r.request, r, CTX);
    const h = decodeHeader(e.bytes, 0, 'frontend');
    assert.equal(isReply(h), true);
    assert.equal(h.size, e.bytes.length - HEADER_SIZE);
    assert.deepEqual(decodeFrontendReply(r.request, h, e.bytes.subarray(HEADER_SIZE), e.fds, CTX), r, `reply to ${r.request}`);
  }
});

test('encodeReplyAck produces a u64 REPLY on either channel', () => {
  const e = encodeReplyAck(FrontendReq.SET_VRING_ADDR, 3n);
  assert.deepEqual(e.fds, []);
  const h = decodeHeader(e.bytes, 0, 'frontend');
  assert.equal(h.flags, 1 | VHOST_USER_REPLY_MASK);
  assert.deepEqual(decodeFrontendReply(FrontendReq.SET_VRING_ADDR, h, e.bytes.subarray(HEADER_SIZE), [], CTX), { request: FrontendReq.SET_VRING_ADDR, value: 3n });
  const b = encodeReplyAck(BackendReq.IOTLB_MSG, 0n);
  const hb = decodeHeader(b.bytes, 0, 'backend');
  assert.deepEqual(decodeBackendReply(BackendReq.IOTLB_MSG, hb, b.bytes.subarray(HEADER_SIZE), [], CTX), { request: BackendReq.IOTLB_MSG, value: 0n });
});

const backendRequests: BackendRequest[] = [
  { request: BackendReq.IOTLB_MSG, iova: 0x5000n, size: 0n, userAddr: 0n, perm: 1, type: IotlbType.MISS },
  { request: BackendReq.IOTLB_MSG, iova: 0x6000n, size: 0n, userAddr: 0n, perm: 2, type: IotlbType.ACCESS_FAIL },
  { request: BackendReq.CONFIG_CHANGE_MSG },
  { request: BackendReq.VRING_HOST_NOTIFIER_MSG, index: 3, size: 0x1000n, offset: 0x3000n, fd: 30 },
  { request: BackendReq.VRING_HOST_NOTIFIER_MSG, index: 4, size: 0n, offset: 0n, fd: null },
  { request: BackendReq.VRING_CALL, index: 1, num: 0 },
  { request: BackendReq.VRING_ERR, index: 2, num: 0 },
  { request: BackendReq.SHARED_OBJECT_ADD, uuid },
  { request: BackendReq.SHARED_OBJECT_REMOVE, uuid },
  { request: BackendReq.SHARED_OBJECT_LOOKUP, uuid },
  { request: BackendReq.SHMEM_MAP, shmid: 1, fdOffset: 0x1000n, shmOffset: 0x20_0000n, len: 0x1000n, flags: 1n, fd: 32 },
  { request: BackendReq.SHMEM_MAP, shmid: 255, fdOffset: 0n, shmOffset: 0xffff_ffff_ffff_f000n, len: 0x1000n, flags: 0n, fd: 33 },
  { request: BackendReq.SHMEM_UNMAP, shmid: 0, fdOffset: 0n, shmOffset: 0x20_0000n, len: 0x1000n, flags: 0n },
];

test('every back-end request round trips', () => {
  const covered = new Set(backendRequests.map((m) => m.request));
  for (const v of Object.values(BackendReq)) if (typeof v === 'number') assert.ok(covered.has(v), `backend request ${BackendReq[v]} not covered`);
  for (const m of backendRequests) {
    for (const flags of [0, VHOST_USER_NEED_REPLY_MASK]) {
      const e = encodeBackendRequest(m, CTX, flags);
      const h = decodeHeader(e.bytes, 0, 'backend');
      assert.equal(needsReply(h), flags !== 0);
      assert.deepEqual(decodeBackendRequest(h, e.bytes.subarray(HEADER_SIZE), e.fds, CTX), m);
    }
  }
});

test('every back-end reply round trips', () => {
  const replies: BackendReply[] = [
    { request: BackendReq.SHARED_OBJECT_LOOKUP, value: 0n, fd: 31 },
    { request: BackendReq.SHARED_OBJECT_LOOKUP, value: 22n, fd: null },
  ];
  for (const v of Object.values(BackendReq)) {
    if (typeof v === 'number' && v !== BackendReq.SHARED_OBJECT_LOOKUP) replies.push({ request: v, value: 1n } as BackendReply);
  }
  for (const r of replies) {
    const e = encodeBackendReply(r.request, r, CTX);
    const h = decodeHeader(e.bytes, 0, 'backend');
    assert.equal(isReply(h), true);
    assert.deepEqual(decodeBackendReply(r.request, h, e.bytes.subarray(HEADER_SIZE), e.fds, CTX), r);
  }
});

test('decoding reads at a non-zero offset inside a larger shared buffer', () => {
  const big = new Uint8Array(8192);
  const e = encodeFrontendRequest({ request: FrontendReq.SET_VRING_NUM, index: 5, num: 1024 }, CTX);
  big.set(e.bytes, 1001);
  const h = decodeHeader(big, 1001, 'frontend');
  const payload = big.subarray(1001 + HEADER_SIZE, 1001 + HEADER_SIZE + h.size);
  assert.deepEqual(decodeFrontendRequest(h, payload, [], CTX), { request: FrontendReq.SET_VRING_NUM, index: 5, num: 1024 });
});

test('decoded byte fields are copies, not views of the receive buffer', () => {
  const e = encodeFrontendRequest({ request: FrontendReq.SET_CONFIG, offset: 0, flags: 0, data: bytes(4, 1) }, CTX);
  const h = decodeHeader(e.bytes);
  const d = decodeFrontendRequest(h, e.bytes.subarray(HEADER_SIZE), [], CTX);
  const before = d.request === FrontendReq.SET_CONFIG ? Array.from(d.data) : [];
  e.bytes.fill(0xee);
  assert.deepEqual(d.request === FrontendReq.SET_CONFIG ? Array.from(d.data) : null, before);
});
