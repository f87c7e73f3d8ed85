/**
 * Wire layouts of the VIRTIO shared memory messages (SHMEM protocol feature, newer than
 * spec/vhost-user.rst; layouts from vhost-user-newer.md, which follows rust-vmm vhost 0.16):
 * VhostUserShMemConfig (GET_SHMEM_CONFIG reply) and VhostUserMMap (BACKEND_SHMEM_MAP / UNMAP).
 * @module
 */
import { VHOST_USER_MAX_SHMEM_REGIONS, VHOST_USER_MMAP_FLAGS_KNOWN, type Channel } from './constants.js';
import { HEADER_SIZE, LE, allocMessage, expectSize, fail, viewOf } from './codec-wire.js';
import { MMAP_SIZE, SHMEM_CONFIG_SIZE, type ShmemConfig, type ShmemMapping } from './messages.js';

const U64_END = 1n << 64n;
const MMAP_FLAGS_KNOWN = BigInt(VHOST_USER_MMAP_FLAGS_KNOWN);

/**
 * Reads a VhostUserShMemConfig. The array is fixed-size on the wire; `nregions` says how many
 * entries are meaningful, and the rest must be zero (a stray size past `nregions` is a confused
 * peer whose other answers cannot be trusted either).
 */
export function readShmemConfig(channel: Channel, request: number, buf: Uint8Array, size: number): ShmemConfig {
  expectSize(channel, request, size, SHMEM_CONFIG_SIZE);
  const v = viewOf(buf);
  const o = buf.byteOffset;
  const n = v.getUint32(o, LE);
  if (n > VHOST_USER_MAX_SHMEM_REGIONS) fail(channel, request, 'regions', `nregions ${n} exceeds ${VHOST_USER_MAX_SHMEM_REGIONS}`);
  if (v.getUint32(o + 4, LE) !== 0) fail(channel, request, 'value', 'reserved padding is not zero');
  const memorySizes = new Array<bigint>(n);
  for (let i = 0; i < VHOST_USER_MAX_SHMEM_REGIONS; i++) {
    const s = v.getBigUint64(o + 8 + i * 8, LE);
    if (i < n) memorySizes[i] = s;
    else if (s !== 0n) fail(channel, request, 'value', `memory_sizes[${i}] is ${s} beyond nregions ${n}`);
  }
  return { memorySizes };
}

/** Encodes a VhostUserShMemConfig message (sizes past `memorySizes.length` are zero). */
export function encodeShmemConfig(channel: Channel, request: number, flags: number, c: ShmemConfig): Uint8Array {
  const n = c.memorySizes.length;
  if (n > VHOST_USER_MAX_SHMEM_REGIONS) fail(channel, request, 'regions', `${n} shared memory regions exceed ${VHOST_USER_MAX_SHMEM_REGIONS}`);
  const bytes = allocMessage(request, flags, SHMEM_CONFIG_SIZE);
  const v = viewOf(bytes);
  const o = bytes.byteOffset + HEADER_SIZE;
  v.setUint32(o, n, LE);
  c.memorySizes.forEach((s, i) => {
    if (s < 0n || s >= U64_END) fail(channel, request, 'value', `memory_sizes[${i}] ${s} does not fit in a u64`);
    v.setBigUint64(o + 8 + i * 8, s, LE);
  });
  return bytes;
}

/**
 * Reads a VhostUserMMap and enforces what makes it meaningful: padding zero, a non-empty range,
 * neither end past 2^64, no unknown flag bit.
 */
export function readMMap(channel: Channel, request: number, buf: Uint8Array, size: number): ShmemMapping {
  expectSize(channel, request, size, MMAP_SIZE);
  const v = viewOf(buf);
  const o = buf.byteOffset;
  for (let i = 1; i < 8; i++) if (v.getUint8(o + i) !== 0) fail(channel, request, 'value', 'reserved padding is not zero');
  const m: ShmemMapping = {
    shmid: v.getUint8(o),
    fdOffset: v.getBigUint64(o + 8, LE),
    shmOffset: v.getBigUint64(o + 16, LE),
    len: v.getBigUint64(o + 24, LE),
    flags: v.getBigUint64(o + 32, LE),
  };
  checkMMap(channel, request, m);
  return m;
}

/** The validity rules of a mapping, shared by the decoder and the encoder. */
export function checkMMap(channel: Channel, request: number, m: ShmemMapping): void {
  if (!Number.isInteger(m.shmid) || m.shmid < 0 || m.shmid > 0xff) fail(channel, request, 'value', `shmid ${m.shmid} does not fit in 8 bits`);
  if (m.len <= 0n || m.len >= U64_END) fail(channel, request, 'value', `length ${m.len} must be in 1..2^64-1`);
  if (m.fdOffset < 0n || m.fdOffset + m.len > U64_END) fail(channel, request, 'value', `fd_offset 0x${m.fdOffset.toString(16)} + length overflows`);
  if (m.shmOffset < 0n || m.shmOffset + m.len > U64_END) fail(channel, request, 'value', `shm_offset 0x${m.shmOffset.toString(16)} + length overflows`);
  if (m.flags < 0n || (m.flags & ~MMAP_FLAGS_KNOWN) !== 0n) fail(channel, request, 'value', `unknown flags 0x${m.flags.toString(16)}`);
}

/** Encodes a VhostUserMMap message. */
export function encodeMMap(channel: Channel, request: number, flags: number, m: ShmemMapping): Uint8Array {
  checkMMap(channel, request, m);
  const bytes = allocMessage(request, flags, MMAP_SIZE);
  const v = viewOf(bytes);
  const o = bytes.byteOffset + HEADER_SIZE;
  v.setUint8(o, m.shmid);
  v.setBigUint64(o + 8, m.fdOffset, LE);
  v.setBigUint64(o + 16, m.shmOffset, LE);
  v.setBigUint64(o + 24, m.len, LE);
  v.setBigUint64(o + 32, m.flags, LE);
  return bytes;
}
