// Byte-exact wire images computed by hand from the spec's struct layouts, so the layout is checked
// independently of the encoder; plus the constant/feature helpers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  HEADER_SIZE,
  decodeFrontendReply,
  decodeFrontendRequest,
  decodeHeader,
  encodeBackendRequest,
  encodeFrontendReply,
  encodeFrontendRequest,
  maxPayloadSize,
  type CodecContext,
} from '../../src/vhost-user/codec.js';
import {
  BackendReq,
  FrontendReq,
  IotlbType,
  ProtocolFeature,
  VHOST_USER_NEED_REPLY_MASK,
  decodePackedVringBase,
  decodeSplitVringBase,
  encodePackedVringBase,
  requestName,
} from '../../src/vhost-user/constants.js';
import { decodeFeatures, formatFeatures, VIRTIO_F_VERSION_1 } from '../../src/virtio/features.js';
import { decodeProtocolFeatures } from '../../src/vhost-user/constants.js';

const CTX: CodecContext = { protocolFeatures: 0n };

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (x) => parseInt(x, 16));
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

test('SET_VRING_ADDR wire image', () => {
  const image = hex(`
    09000000 09000000 28000000
    02000000 01000000
    0010000000000000 0030000000000000 0020000000000000 0040000000000000`);
  const msg = { request: FrontendReq.SET_VRING_ADDR, index: 2, flags: 1, descUserAddr: 0x1000n, usedUserAddr: 0x3000n, availUserAddr: 0x2000n, logGuestAddr: 0x4000n } as const;
  const e = encodeFrontendRequest(msg, CTX, VHOST_USER_NEED_REPLY_MASK);
  assert.equal(toHex(e.bytes), toHex(image));
  const h = decodeHeader(image);
  assert.deepEqual(decodeFrontendRequest(h, image.subarray(HEADER_SIZE), [], CTX), msg);
});

test('SET_MEM_TABLE with two regions wire image', () => {
  const image = hex(`
    05000000 01000000 48000000
    02000000 00000000
    0000000000000000 0000004000000000 00000000007f0000 0000000000000000
    0000000001000000 0000008000000000 00000040007f0000 0000004000000000`);
  const regions = [
    { guestPhysAddr: 0n, memorySize: 0x4000_0000n, userAddr: 0x7f00_0000_0000n, mmapOffset: 0n, fd: 10 },
    { guestPhysAddr: 0x1_0000_0000n, memorySize: 0x8000_0000n, userAddr: 0x7f00_4000_0000n, mmapOffset: 0x4000_0000n, fd: 11 },
  ];
  const e = encodeFrontendRequest({ request: FrontendReq.SET_MEM_TABLE, regions }, CTX);
  assert.equal(toHex(e.bytes), toHex(image));
  assert.deepEqual(e.fds, [10, 11]);
  const h = decodeHeader(image, 0, 'frontend');
  assert.deepEqual(decodeFrontendRequest(h, image.subarray(HEADER_SIZE), [10, 11], CTX), { request: FrontendReq.SET_MEM_TABLE, regions });
});

test('SET_VRING_KICK with the NOFD bit, decoded from a hand-made image', () => {
  const image = hex('0c000000 01000000 08000000 0301000000000000');
  const h = decodeHeader(image, 0, 'frontend');
  assert.deepEqual(decodeFrontendRequest(h, image.subarray(HEADER_SIZE), [], CTX), { request: FrontendReq.SET_VRING_KICK, index: 3, fd: null });
  assert.equal(toHex(encodeFrontendRequest({ request: FrontendReq.SET_VRING_KICK, index: 3, fd: null }, CTX).bytes), toHex(image));
});

test('GET_FEATURES reply wire image (VERSION_1 | PROTOCOL_FEATURES)', () => {
  const image = hex('01000000 05000000 08000000 0000004001000000');
  const e = encodeFrontendReply(FrontendReq.GET_FEATURES, { request: FrontendReq.GET_FEATURES, value: 0x1_4000_0000n }, CTX);
  assert.equal(toHex(e.bytes), toHex(image));
  const h = decodeHeader(image);
  assert.deepEqual(decodeFrontendReply(FrontendReq.GET_FEATURES, h, image.subarray(HEADER_SIZE), [], CTX), { request: FrontendReq.GET_FEATURES, value: 0x1_4000_0000n });
});

test('IOTLB message wire image: 32 bytes, perm at 24, type at 25, zero padding', () => {
  const image = hex('01000000 01000000 20000000 0050000000000000 0000000000000000 0000000000000000 0201 000000000000');
  const e = encodeBackendRequest({ request: BackendReq.IOTLB_MSG, iova: 0x5000n, size: 0n, userAddr: 0n, perm: 2, type: IotlbType.MISS }, CTX);
  assert.equal(toHex(e.bytes), toHex(image));
});

test('GET_INFLIGHT_FD uses the 24-byte padded layout; SET_CONFIG places data after 12 bytes', () => {
  const inflight = encodeFrontendRequest({ request: FrontendReq.GET_INFLIGHT_FD, mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 256 }, CTX);
  assert.equal(toHex(inflight.bytes), toHex(hex('1f000000 01000000 18000000 0000000000000000 0000000000000000 0200 0001 00000000')));
  const cfg = encodeFrontendRequest({ request: FrontendReq.SET_CONFIG, offset: 4, flags: 1, data: new Uint8Array([0xaa, 0xbb]) }, CTX);
  assert.equal(toHex(cfg.bytes), toHex(hex('19000000 01000000 0e000000 04000000 02000000 01000000 aabb')));
});

test('maxPayloadSize bounds', () => {
  assert.equal(maxPayloadSize('frontend', FrontendReq.SET_MEM_TABLE), 8 + 8 * 40);
  assert.equal(maxPayloadSize('frontend', FrontendReq.SET_CONFIG), 12 + 256);
  assert.equal(maxPayloadSize('frontend', 0), 0);
  assert.equal(maxPayloadSize('frontend', FrontendReq.GET_SHMEM_CONFIG), 8 + 256 * 8);
  assert.equal(maxPayloadSize('frontend', 45), 0);
  assert.equal(maxPayloadSize('backend', BackendReq.SHARED_OBJECT_LOOKUP), 16);
  assert.equal(maxPayloadSize('backend', BackendReq.SHMEM_MAP), 40);
  assert.equal(maxPayloadSize('backend', BackendReq.SHMEM_UNMAP), 40);
  assert.equal(maxPayloadSize('backend', 11), 0);
});

test('requestName uses spec names per channel', () => {
  assert.equal(requestName(FrontendReq.GET_FEATURES), 'VHOST_USER_GET_FEATURES');
  assert.equal(requestName(FrontendReq.CHECK_DEVICE_STATE), 'VHOST_USER_CHECK_DEVICE_STATE');
  assert.equal(requestName(BackendReq.SHARED_OBJECT_LOOKUP, 'backend'), 'VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP');
  assert.equal(requestName(FrontendReq.GET_SHMEM_CONFIG), 'VHOST_USER_GET_SHMEM_CONFIG');
  assert.equal(requestName(BackendReq.SHMEM_MAP, 'backend'), 'VHOST_USER_BACKEND_SHMEM_MAP');
  assert.deepEqual(decodeProtocolFeatures((1n << 20n) | (1n << 21n) | (1n << 22n)),
    ['VHOST_USER_PROTOCOL_F_GET_VRING_BASE_INFLIGHT', 'VHOST_USER_PROTOCOL_F_SHMEM', 'bit 22']);
  assert.equal(requestName(77), 'unknown(77)');
  assert.equal(ProtocolFeature.DEVICE_STATE, 19);
});

test('packed and split vring base helpers', () => {
  const b = { lastAvailIdx: 0x1234, lastAvailWrap: true, usedIdx: 0x7fff, usedWrap: false };
  const num = encodePackedVringBase(b);
  assert.equal(num, 0x7fff_9234);
  assert.deepEqual(decodePackedVringBase(num), b);
  assert.deepEqual(decodePackedVringBase(0x8000_0000), { lastAvailIdx: 0, lastAvailWrap: false, usedIdx: 0, usedWrap: true });
  assert.equal(decodeSplitVringBase(0xffff), 0xffff);
  assert.equal(decodeSplitVringBase(0x1_0000), null);
});

test('feature decoding', () => {
  const bits = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << 30n) | (1n << 9n) | (1n << 1n) | (1n << 45n);
  assert.deepEqual(decodeFeatures(bits, 'blk'), ['VIRTIO_BLK_F_SIZE_MAX', 'VIRTIO_BLK_F_FLUSH', 'VHOST_USER_F_PROTOCOL_FEATURES', 'VIRTIO_F_VERSION_1', 'bit 45']);
  assert.deepEqual(decodeFeatures(bits), ['bit 1', 'bit 9', 'VHOST_USER_F_PROTOCOL_FEATURES', 'VIRTIO_F_VERSION_1', 'bit 45']);
  assert.deepEqual(decodeFeatures(1n << 15n, 'net'), ['VIRTIO_NET_F_MRG_RXBUF']);
  assert.deepEqual(decodeFeatures(1n, 'rng'), ['bit 0']);
  assert.throws(() => decodeFeatures(1n, 'nope'), RangeError);
  assert.deepEqual(decodeProtocolFeatures((1n << 17n) | (1n << 3n) | (1n << 25n)), ['VHOST_USER_PROTOCOL_F_REPLY_ACK', 'VHOST_USER_PROTOCOL_F_XEN_MMAP', 'bit 25']);
  assert.deepEqual(formatFeatures(0x1_0000_0000n), { hex: '0x0000000100000000', names: ['VIRTIO_F_VERSION_1'] });
});
