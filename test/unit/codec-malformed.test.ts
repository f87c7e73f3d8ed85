// Malformed vhost-user messages: each hand-built wire image must be rejected with the expected
// VhostUserProtocolError kind and request name. Images are built byte by byte, not by the encoder.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, fstatSync, openSync } from 'node:fs';
import {
  HEADER_SIZE,
  decodeBackendReply,
  decodeBackendRequest,
  decodeFrontendReply,
  decodeFrontendRequest,
  decodeHeader,
  type CodecContext,
} from '../../src/vhost-user/codec.js';
import { BackendReq, FrontendReq, ProtocolFeature, protocolFeatureMask, type Channel } from '../../src/vhost-user/constants.js';
import { VhostUserProtocolError, type ProtocolErrorKind } from '../../src/vhost-user/errors.js';

const CTX: CodecContext = { protocolFeatures: 0n };
const XEN: CodecContext = { protocolFeatures: protocolFeatureMask(ProtocolFeature.XEN_MMAP) };

type Field = [width: 1 | 2 | 4 | 8, value: number | bigint];

/** Little-endian packing of explicit-width fields. */
function pack(...fields: Field[]): Uint8Array {
  const len = fields.reduce((n, [w]) => n + w, 0);
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  let o = 0;
  for (const [w, x] of fields) {
    if (w === 1) v.setUint8(o, Number(x));
    else if (w === 2) v.setUint16(o, Number(x), true);
    else if (w === 4) v.setUint32(o, Number(x), true);
    else v.setBigUint64(o, BigInt(x), true);
    o += w;
  }
  return b;
}

/** Header + payload; `size` defaults to the payload length. */
function msg(request: number, flags: number, payload: Uint8Array, size = payload.length): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE + payload.length);
  b.set(pack([4, request], [4, flags], [4, size]));
  b.set(payload, HEADER_SIZE);
  return b;
}

const REQ = 0x1;
const REPLY = 0x5;
const u64 = (x: number | bigint): Uint8Array => pack([8, x]);
const region = (gpa: bigint, size: bigint, ua = 0x7f00_0000_0000n, off = 0n): Field[] => [[8, gpa], [8, size], [8, ua], [8, off]];
const table = (n: number, count: number): Uint8Array =>
  pack([4, n], [4, 0], ...Array.from({ length: count }, (_, i) => region(BigInt(i) << 32n, 0x1000n)).flat());
/** VhostUserShMemConfig image: nregions, padding, then 256 sizes (from `sizes`, zero after). */
const shmemConfig = (n: number, sizes: bigint[], padding = 0): Uint8Array =>
  pack([4, n], [4, padding], ...Array.from({ length: 256 }, (_, i): Field => [8, sizes[i] ?? 0n]));
/** VhostUserMMap image; `pad` is written into the first padding byte. */
const mmap = (shmid: number, fdOffset: bigint, shmOffset: bigint, len: bigint, flags: bigint, pad = 0): Uint8Array =>
  pack([1, shmid], [1, pad], [2, 0], [4, 0], [8, fdOffset], [8, shmOffset], [8, len], [8, flags]);
const fds = (n: number): number[] => Array.from({ length: n }, (_, i) => 50 + i);

interface Case {
  name: string;
  run: () => unknown;
  kind: ProtocolErrorKind;
  request: string;
}

/** Decode a request image: generic header check, then the channel decoder. */
function asRequest(channel: Channel, bytes: Uint8Array, f: readonly number[] = [], ctx = CTX): () => unknown {
  return () => {
    const h = decodeHeader(bytes);
    const p = bytes.subarray(HEADER_SIZE);
    return channel === 'frontend' ? decodeFrontendRequest(h, p, f, ctx) : decodeBackendRequest(h, p, f, ctx);
  };
}

function asReply(channel: Channel, request: number, bytes: Uint8Array, f: readonly number[] = [], ctx = CTX): () => unknown {
  return () => {
    const h = decodeHeader(bytes);
    const p = bytes.subarray(HEADER_SIZE);
    return channel === 'frontend' ? decodeFrontendReply(request as FrontendReq, h, p, f, ctx) : decodeBackendReply(request as BackendReq, h, p, f, ctx);
  };
}

const F = FrontendReq;
const B = BackendReq;

const cases: Case[] = [
  // Header.
  { name: 'short header (8 bytes)', run: () => decodeHeader(pack([4, 1], [4, 1])), kind: 'truncated', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'short header (2 bytes)', run: () => decodeHeader(new Uint8Array(2)), kind: 'truncated', request: 'header' },
  { name: 'version bits 0', run: () => decodeHeader(msg(F.GET_FEATURES, 0, new Uint8Array(0))), kind: 'version', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'version bits 2', run: () => decodeHeader(msg(F.SET_OWNER, 2, new Uint8Array(0))), kind: 'version', request: 'VHOST_USER_SET_OWNER' },
  { name: 'reserved flag bit 4', run: () => decodeHeader(msg(F.SET_OWNER, 0x11, new Uint8Array(0))), kind: 'version', request: 'VHOST_USER_SET_OWNER' },
  { name: 'size above MAX_PAYLOAD_SIZE', run: () => decodeHeader(pack([4, F.SET_CONFIG], [4, 1], [4, 5000])), kind: 'size', request: 'VHOST_USER_SET_CONFIG' },
  { name: 'size above per-request bound (header only)', run: () => decodeHeader(pack([4, F.SET_VRING_NUM], [4, 1], [4, 16]), 0, 'frontend'), kind: 'size', request: 'VHOST_USER_SET_VRING_NUM' },
  { name: 'unknown request id (header, frontend)', run: () => decodeHeader(pack([4, 99], [4, 1], [4, 0]), 0, 'frontend'), kind: 'unknown-request', request: 'unknown(99)' },
  { name: 'unknown request id (header, backend)', run: () => decodeHeader(pack([4, 11], [4, 1], [4, 0]), 0, 'backend'), kind: 'unknown-request', request: 'unknown(11)' },
  // Front-end requests: sizes.
  { name: 'unknown front-end request 0', run: asRequest('frontend', msg(0, REQ, new Uint8Array(0))), kind: 'unknown-request', request: 'unknown(0)' },
  { name: 'unknown front-end request 45', run: asRequest('frontend', msg(45, REQ, new Uint8Array(0))), kind: 'unknown-request', request: 'unknown(45)' },
  { name: 'GET_FEATURES with a payload', run: asRequest('frontend', msg(F.GET_FEATURES, REQ, u64(0))), kind: 'size', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'SET_FEATURES with 4 bytes', run: asRequest('frontend', msg(F.SET_FEATURES, REQ, pack([4, 1]))), kind: 'size', request: 'VHOST_USER_SET_FEATURES' },
  { name: 'SET_VRING_NUM larger than spec', run: asRequest('frontend', msg(F.SET_VRING_NUM, REQ, new Uint8Array(16))), kind: 'size', request: 'VHOST_USER_SET_VRING_NUM' },
  { name: 'truncated SET_VRING_ADDR payload', run: asRequest('frontend', msg(F.SET_VRING_ADDR, REQ, new Uint8Array(20), 40)), kind: 'truncated', request: 'VHOST_USER_SET_VRING_ADDR' },
  { name: 'request carrying REPLY flag', run: asRequest('frontend', msg(F.SET_OWNER, REPLY, new Uint8Array(0))), kind: 'version', request: 'VHOST_USER_SET_OWNER' },
  { name: 'IOTLB_MSG packed to 26 bytes', run: asRequest('frontend', msg(F.IOTLB_MSG, REQ, new Uint8Array(26))), kind: 'size', request: 'VHOST_USER_IOTLB_MSG' },
  { name: 'CREATE_CRYPTO_SESSION of 100 bytes', run: asRequest('frontend', msg(F.CREATE_CRYPTO_SESSION, REQ, new Uint8Array(100))), kind: 'size', request: 'VHOST_USER_CREATE_CRYPTO_SESSION' },
  // Config.
  { name: 'SET_CONFIG size field 257', run: asRequest('frontend', msg(F.SET_CONFIG, REQ, pack([4, 0], [4, 257], [4, 0], ...Array.from({ length: 257 }, (): Field => [1, 0])))), kind: 'size', request: 'VHOST_USER_SET_CONFIG' },
  { name: 'GET_CONFIG size field disagrees with payload', run: asRequest('frontend', msg(F.GET_CONFIG, REQ, pack([4, 0], [4, 10], [4, 0], [8, 0], [8, 0], [4, 0]))), kind: 'size', request: 'VHOST_USER_GET_CONFIG' },
  { name: 'GET_CONFIG shorter than config header', run: asRequest('frontend', msg(F.GET_CONFIG, REQ, pack([4, 0], [4, 0]))), kind: 'size', request: 'VHOST_USER_GET_CONFIG' },
  // Memory tables.
  { name: 'SET_MEM_TABLE nregions 2 but one region', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(2, 1)), fds(2)), kind: 'regions', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE nregions 1 but two regions', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(1, 2)), fds(1)), kind: 'regions', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE nregions 9', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(9, 9)), fds(9)), kind: 'regions', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE nregions 0', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(0, 0))), kind: 'regions', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE shorter than its header', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, pack([4, 1]))), kind: 'size', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE size not a whole region', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, pack([4, 1], [4, 0], ...region(0n, 0x1000n), [1, 0])), fds(1)), kind: 'size', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE too few fds', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(2, 2)), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE too many fds', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(2, 2)), fds(3)), kind: 'fds', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE region of size 0', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, pack([4, 1], [4, 0], ...region(0n, 0n))), fds(1)), kind: 'value', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE region wraps 2^64', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, pack([4, 1], [4, 0], ...region(0xffff_ffff_ffff_f000n, 0x2000n))), fds(1)), kind: 'value', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'SET_MEM_TABLE 32-byte regions under XEN_MMAP', run: asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(2, 2)), fds(2), XEN), kind: 'size', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'ADD_MEM_REG without fd', run: asRequest('frontend', msg(F.ADD_MEM_REG, REQ, pack([8, 0], ...region(0n, 0x1000n)))), kind: 'fds', request: 'VHOST_USER_ADD_MEM_REG' },
  { name: 'ADD_MEM_REG with a Xen-sized region without XEN_MMAP', run: asRequest('frontend', msg(F.ADD_MEM_REG, REQ, pack([8, 0], ...region(0n, 0x1000n), [8, 0])), fds(1)), kind: 'size', request: 'VHOST_USER_ADD_MEM_REG' },
  { name: 'REM_MEM_REG with two fds', run: asRequest('frontend', msg(F.REM_MEM_REG, REQ, pack([8, 0], ...region(0n, 0x1000n))), fds(2)), kind: 'fds', request: 'VHOST_USER_REM_MEM_REG' },
  // fd counts.
  { name: 'SET_VRING_KICK NOFD bit with an fd', run: asRequest('frontend', msg(F.SET_VRING_KICK, REQ, u64(0x100)), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_VRING_KICK' },
  { name: 'SET_VRING_KICK without NOFD and without fd', run: asRequest('frontend', msg(F.SET_VRING_KICK, REQ, u64(0))), kind: 'fds', request: 'VHOST_USER_SET_VRING_KICK' },
  { name: 'SET_VRING_CALL with two fds', run: asRequest('frontend', msg(F.SET_VRING_CALL, REQ, u64(1)), fds(2)), kind: 'fds', request: 'VHOST_USER_SET_VRING_CALL' },
  { name: 'SET_VRING_ERR index overflowing 8 bits', run: asRequest('frontend', msg(F.SET_VRING_ERR, REQ, u64(0x200)), fds(1)), kind: 'value', request: 'VHOST_USER_SET_VRING_ERR' },
  { name: 'SET_LOG_BASE without fd', run: asRequest('frontend', msg(F.SET_LOG_BASE, REQ, pack([8, 0x1000], [8, 0]))), kind: 'fds', request: 'VHOST_USER_SET_LOG_BASE' },
  { name: 'SET_LOG_BASE as bare u64', run: asRequest('frontend', msg(F.SET_LOG_BASE, REQ, u64(0)), fds(1)), kind: 'size', request: 'VHOST_USER_SET_LOG_BASE' },
  { name: 'SET_LOG_FD without fd', run: asRequest('frontend', msg(F.SET_LOG_FD, REQ, new Uint8Array(0))), kind: 'fds', request: 'VHOST_USER_SET_LOG_FD' },
  { name: 'SET_BACKEND_REQ_FD with two fds', run: asRequest('frontend', msg(F.SET_BACKEND_REQ_FD, REQ, new Uint8Array(0)), fds(2)), kind: 'fds', request: 'VHOST_USER_SET_BACKEND_REQ_FD' },
  { name: 'GET_FEATURES with an fd', run: asRequest('frontend', msg(F.GET_FEATURES, REQ, new Uint8Array(0)), fds(1)), kind: 'fds', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'SET_VRING_NUM with an fd', run: asRequest('frontend', msg(F.SET_VRING_NUM, REQ, pack([4, 0], [4, 256])), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_VRING_NUM' },
  { name: 'SET_INFLIGHT_FD without fd', run: asRequest('frontend', msg(F.SET_INFLIGHT_FD, REQ, pack([8, 0x1000], [8, 0], [2, 1], [2, 128], [4, 0]))), kind: 'fds', request: 'VHOST_USER_SET_INFLIGHT_FD' },
  { name: 'SET_DEVICE_STATE_FD without fd', run: asRequest('frontend', msg(F.SET_DEVICE_STATE_FD, REQ, pack([4, 0], [4, 0]))), kind: 'fds', request: 'VHOST_USER_SET_DEVICE_STATE_FD' },
  // Values.
  { name: 'SET_VRING_ENABLE num 2', run: asRequest('frontend', msg(F.SET_VRING_ENABLE, REQ, pack([4, 0], [4, 2]))), kind: 'value', request: 'VHOST_USER_SET_VRING_ENABLE' },
  { name: 'VRING_KICK reserved num set', run: asRequest('frontend', msg(F.VRING_KICK, REQ, pack([4, 0], [4, 1]))), kind: 'value', request: 'VHOST_USER_VRING_KICK' },
  { name: 'SET_VRING_ADDR unknown flag', run: asRequest('frontend', msg(F.SET_VRING_ADDR, REQ, pack([4, 0], [4, 2], [8, 0], [8, 0], [8, 0], [8, 0]))), kind: 'value', request: 'VHOST_USER_SET_VRING_ADDR' },
  { name: 'SET_VRING_ADDR misaligned descriptor table', run: asRequest('frontend', msg(F.SET_VRING_ADDR, REQ, pack([4, 0], [4, 0], [8, 0x1008], [8, 0], [8, 0], [8, 0]))), kind: 'value', request: 'VHOST_USER_SET_VRING_ADDR' },
  { name: 'SET_STATUS above 8 bits', run: asRequest('frontend', msg(F.SET_STATUS, REQ, u64(0x100))), kind: 'value', request: 'VHOST_USER_SET_STATUS' },
  { name: 'NET_SET_MTU above 16 bits', run: asRequest('frontend', msg(F.NET_SET_MTU, REQ, u64(0x10000))), kind: 'value', request: 'VHOST_USER_NET_SET_MTU' },
  { name: 'IOTLB_MSG unknown type', run: asRequest('frontend', msg(F.IOTLB_MSG, REQ, pack([8, 0], [8, 0], [8, 0], [1, 1], [1, 9], [2, 0], [4, 0]))), kind: 'value', request: 'VHOST_USER_IOTLB_MSG' },
  { name: 'IOTLB_MSG permission 4', run: asRequest('frontend', msg(F.IOTLB_MSG, REQ, pack([8, 0], [8, 0], [8, 0], [1, 4], [1, 2], [2, 0], [4, 0]))), kind: 'value', request: 'VHOST_USER_IOTLB_MSG' },
  { name: 'SET_INFLIGHT_FD zero queues', run: asRequest('frontend', msg(F.SET_INFLIGHT_FD, REQ, pack([8, 0x1000], [8, 0], [2, 0], [2, 128], [4, 0])), fds(1)), kind: 'value', request: 'VHOST_USER_SET_INFLIGHT_FD' },
  { name: 'SET_DEVICE_STATE_FD direction 2', run: asRequest('frontend', msg(F.SET_DEVICE_STATE_FD, REQ, pack([4, 2], [4, 0])), fds(1)), kind: 'value', request: 'VHOST_USER_SET_DEVICE_STATE_FD' },
  { name: 'SET_DEVICE_STATE_FD phase 1', run: asRequest('frontend', msg(F.SET_DEVICE_STATE_FD, REQ, pack([4, 0], [4, 1])), fds(1)), kind: 'value', request: 'VHOST_USER_SET_DEVICE_STATE_FD' },
  // Replies to front-end requests.
  { name: 'reply without REPLY flag', run: asReply('frontend', F.GET_FEATURES, msg(F.GET_FEATURES, REQ, u64(1))), kind: 'version', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'reply for another request', run: asReply('frontend', F.GET_FEATURES, msg(F.GET_PROTOCOL_FEATURES, REPLY, u64(1))), kind: 'value', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'GET_FEATURES reply of 4 bytes', run: asReply('frontend', F.GET_FEATURES, msg(F.GET_FEATURES, REPLY, pack([4, 1]))), kind: 'size', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'truncated reply payload', run: asReply('frontend', F.GET_FEATURES, msg(F.GET_FEATURES, REPLY, pack([4, 1]), 8)), kind: 'truncated', request: 'VHOST_USER_GET_FEATURES' },
  { name: 'GET_INFLIGHT_FD reply without fd', run: asReply('frontend', F.GET_INFLIGHT_FD, msg(F.GET_INFLIGHT_FD, REPLY, pack([8, 0x1000], [8, 0], [2, 1], [2, 128], [4, 0]))), kind: 'fds', request: 'VHOST_USER_GET_INFLIGHT_FD' },
  { name: 'SET_DEVICE_STATE_FD reply error with fd', run: asReply('frontend', F.SET_DEVICE_STATE_FD, msg(F.SET_DEVICE_STATE_FD, REPLY, u64(1)), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_DEVICE_STATE_FD' },
  { name: 'SET_DEVICE_STATE_FD reply NOFD with fd', run: asReply('frontend', F.SET_DEVICE_STATE_FD, msg(F.SET_DEVICE_STATE_FD, REPLY, u64(0x100)), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_DEVICE_STATE_FD' },
  { name: 'SET_DEVICE_STATE_FD reply reserved bits', run: asReply('frontend', F.SET_DEVICE_STATE_FD, msg(F.SET_DEVICE_STATE_FD, REPLY, u64(0x300))), kind: 'value', request: 'VHOST_USER_SET_DEVICE_STATE_FD' },
  { name: 'GET_SHARED_OBJECT success without fd', run: asReply('frontend', F.GET_SHARED_OBJECT, msg(F.GET_SHARED_OBJECT, REPLY, u64(0))), kind: 'fds', request: 'VHOST_USER_GET_SHARED_OBJECT' },
  { name: 'GET_SHARED_OBJECT failure with fd', run: asReply('frontend', F.GET_SHARED_OBJECT, msg(F.GET_SHARED_OBJECT, REPLY, u64(1)), fds(1)), kind: 'fds', request: 'VHOST_USER_GET_SHARED_OBJECT' },
  { name: 'POSTCOPY_ADVISE reply without userfaultfd', run: asReply('frontend', F.POSTCOPY_ADVISE, msg(F.POSTCOPY_ADVISE, REPLY, new Uint8Array(0))), kind: 'fds', request: 'VHOST_USER_POSTCOPY_ADVISE' },
  { name: 'GET_STATUS reply above 8 bits', run: asReply('frontend', F.GET_STATUS, msg(F.GET_STATUS, REPLY, u64(0x1ff))), kind: 'value', request: 'VHOST_USER_GET_STATUS' },
  { name: 'GET_CONFIG reply size 300', run: asReply('frontend', F.GET_CONFIG, msg(F.GET_CONFIG, REPLY, pack([4, 0], [4, 300], [4, 0]))), kind: 'size', request: 'VHOST_USER_GET_CONFIG' },
  { name: 'SET_MEM_TABLE postcopy reply with fds', run: asReply('frontend', F.SET_MEM_TABLE, msg(F.SET_MEM_TABLE, REPLY, table(1, 1)), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_MEM_TABLE' },
  { name: 'ack reply with an fd', run: asReply('frontend', F.SET_VRING_NUM, msg(F.SET_VRING_NUM, REPLY, u64(0)), fds(1)), kind: 'fds', request: 'VHOST_USER_SET_VRING_NUM' },
  // Back-end channel.
  { name: 'unknown back-end request 11', run: asRequest('backend', msg(11, REQ, new Uint8Array(0))), kind: 'unknown-request', request: 'unknown(11)' },
  // SHMEM (vhost-user-newer.md): VhostUserShMemConfig and VhostUserMMap.
  { name: 'GET_SHMEM_CONFIG with a payload', run: asRequest('frontend', msg(F.GET_SHMEM_CONFIG, REQ, u64(0))), kind: 'size', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'GET_SHMEM_CONFIG with an fd', run: asRequest('frontend', msg(F.GET_SHMEM_CONFIG, REQ, new Uint8Array(0)), fds(1)), kind: 'fds', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'GET_SHMEM_CONFIG reply of 8 bytes', run: asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, pack([4, 0], [4, 0]))), kind: 'size', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'GET_SHMEM_CONFIG reply nregions 257', run: asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, shmemConfig(257, []))), kind: 'regions', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'GET_SHMEM_CONFIG reply padding', run: asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, shmemConfig(1, [4096n], 1))), kind: 'value', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'GET_SHMEM_CONFIG reply size past nregions', run: asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, shmemConfig(1, [4096n, 4096n]))), kind: 'value', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'GET_SHMEM_CONFIG reply with an fd', run: asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, shmemConfig(1, [4096n])), fds(1)), kind: 'fds', request: 'VHOST_USER_GET_SHMEM_CONFIG' },
  { name: 'BACKEND_SHMEM_MAP of 32 bytes', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0n, 4096n, 0n).subarray(0, 32)), fds(1)), kind: 'size', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP without fd', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0n, 4096n, 0n))), kind: 'fds', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP two fds', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0n, 4096n, 0n)), fds(2)), kind: 'fds', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP zero length', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0n, 0n, 0n)), fds(1)), kind: 'value', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP fd_offset overflow', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0xffff_ffff_ffff_f000n, 0n, 0x2000n, 0n)), fds(1)), kind: 'value', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP shm_offset overflow', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0xffff_ffff_ffff_f001n, 0x1000n, 0n)), fds(1)), kind: 'value', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP unknown flag', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0n, 4096n, 2n)), fds(1)), kind: 'value', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_MAP padding', run: asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(1, 0n, 0n, 4096n, 0n, 1)), fds(1)), kind: 'value', request: 'VHOST_USER_BACKEND_SHMEM_MAP' },
  { name: 'BACKEND_SHMEM_UNMAP with an fd', run: asRequest('backend', msg(B.SHMEM_UNMAP, REQ, mmap(1, 0n, 0n, 4096n, 0n)), fds(1)), kind: 'fds', request: 'VHOST_USER_BACKEND_SHMEM_UNMAP' },
  { name: 'BACKEND_SHMEM_UNMAP zero length', run: asRequest('backend', msg(B.SHMEM_UNMAP, REQ, mmap(1, 0n, 0n, 0n, 0n))), kind: 'value', request: 'VHOST_USER_BACKEND_SHMEM_UNMAP' },
  { name: 'BACKEND_VRING_HOST_NOTIFIER_MSG NOFD with fd', run: asRequest('backend', msg(B.VRING_HOST_NOTIFIER_MSG, REQ, pack([8, 0x101], [8, 0x1000], [8, 0])), fds(1)), kind: 'fds', request: 'VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG' },
  { name: 'BACKEND_VRING_HOST_NOTIFIER_MSG without fd', run: asRequest('backend', msg(B.VRING_HOST_NOTIFIER_MSG, REQ, pack([8, 1], [8, 0x1000], [8, 0]))), kind: 'fds', request: 'VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG' },
  { name: 'BACKEND_VRING_CALL reserved num', run: asRequest('backend', msg(B.VRING_CALL, REQ, pack([4, 0], [4, 1]))), kind: 'value', request: 'VHOST_USER_BACKEND_VRING_CALL' },
  { name: 'BACKEND_SHARED_OBJECT_ADD of 8 bytes', run: asRequest('backend', msg(B.SHARED_OBJECT_ADD, REQ, u64(0))), kind: 'size', request: 'VHOST_USER_BACKEND_SHARED_OBJECT_ADD' },
  { name: 'BACKEND_CONFIG_CHANGE_MSG of 16 bytes', run: asRequest('backend', msg(B.CONFIG_CHANGE_MSG, REQ, new Uint8Array(16))), kind: 'size', request: 'VHOST_USER_BACKEND_CONFIG_CHANGE_MSG' },
  { name: 'BACKEND_CONFIG_CHANGE_MSG with fd', run: asRequest('backend', msg(B.CONFIG_CHANGE_MSG, REQ, new Uint8Array(0)), fds(1)), kind: 'fds', request: 'VHOST_USER_BACKEND_CONFIG_CHANGE_MSG' },
  { name: 'BACKEND_SHARED_OBJECT_LOOKUP success without fd', run: asReply('backend', B.SHARED_OBJECT_LOOKUP, msg(B.SHARED_OBJECT_LOOKUP, REPLY, u64(0))), kind: 'fds', request: 'VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP' },
  { name: 'back-end reply without REPLY flag', run: asReply('backend', B.IOTLB_MSG, msg(B.IOTLB_MSG, REQ, u64(0))), kind: 'version', request: 'VHOST_USER_BACKEND_IOTLB_MSG' },
];

test('malformed messages are rejected with the expected kind and request name', () => {
  assert.ok(cases.length >= 60);
  for (const c of cases) {
    assert.throws(c.run, (e: unknown) => {
      assert.ok(e instanceof VhostUserProtocolError, `${c.name}: threw ${String(e)}`);
      assert.equal(e.kind, c.kind, `${c.name}: kind (${e.message})`);
      assert.equal(e.request, c.request, `${c.name}: request name`);
      assert.ok(e.message.startsWith(`${c.request}: `), `${c.name}: message names the request`);
      return true;
    }, c.name);
  }
});

test('a valid neighbour of each rejected shape decodes (the table is not vacuous)', () => {
  const ok: Array<() => unknown> = [
    asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(2, 2)), fds(2)),
    asRequest('frontend', msg(F.SET_VRING_KICK, REQ, u64(0x100))),
    asRequest('frontend', msg(F.SET_VRING_KICK, REQ, u64(1)), fds(1)),
    asRequest('frontend', msg(F.SET_CONFIG, REQ, pack([4, 0], [4, 4], [4, 0], [4, 0xdeadbeef]))),
    asRequest('frontend', msg(F.REM_MEM_REG, REQ, pack([8, 0], ...region(0n, 0x1000n))), fds(1)),
    asReply('frontend', F.GET_SHARED_OBJECT, msg(F.GET_SHARED_OBJECT, REPLY, u64(0)), fds(1)),
    asRequest('backend', msg(B.CONFIG_CHANGE_MSG, REQ, u64(0))),
    asRequest('frontend', msg(F.GET_SHMEM_CONFIG, REQ, new Uint8Array(0))),
    asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, shmemConfig(2, [0n, 4096n]))),
    asReply('frontend', F.GET_SHMEM_CONFIG, msg(F.GET_SHMEM_CONFIG, REPLY, shmemConfig(256, Array.from({ length: 256 }, () => 1n)))),
    asRequest('backend', msg(B.SHMEM_MAP, REQ, mmap(255, 0xffff_ffff_ffff_f000n, 0xffff_ffff_ffff_f000n, 0x1000n, 1n)), fds(1)),
    asRequest('backend', msg(B.SHMEM_UNMAP, REQ, mmap(1, 0n, 0n, 4096n, 0n))),
    // Tolerated: DPDK virtio-user leaves the reserved num of GET_VRING_BASE uninitialised.
    asRequest('frontend', msg(F.GET_VRING_BASE, REQ, pack([4, 1], [4, 0xdeadbeef]))),
    () => decodeHeader(pack([4, F.SET_VRING_NUM], [4, 1], [4, 8]), 0, 'frontend'),
  ];
  for (const f of ok) assert.doesNotThrow(f);
});

test('the decoder never closes the fds of a rejected message', () => {
  const real = [openSync('/dev/null', 'r'), openSync('/dev/null', 'r')];
  try {
    assert.throws(asRequest('frontend', msg(F.SET_MEM_TABLE, REQ, table(1, 1)), real), { kind: 'fds' });
    assert.throws(asRequest('frontend', msg(F.SET_VRING_KICK, REQ, u64(0x100)), real.slice(0, 1)), { kind: 'fds' });
    for (const fd of real) assert.ok(fstatSync(fd).isCharacterDevice());
  } finally {
    for (const fd of real) closeSync(fd);
  }
});
