/**
 * Frames and headers of the net chain cases: what the fuzzer transmits (tagged Ethernet frames
 * behind a virtio_net_hdr, offload fields within or outside what was negotiated) and what the
 * loopback must hand back on the receive queue for each of them, per VIRTIO 1.2 §5.1.6 and the
 * device's documented handling (offloads the receiver did not negotiate are completed or dropped).
 * @module
 */
import {
  MAX_FRAME_LEN, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_OFFSETS, completeChecksum,
} from '../src/devices/net/header.js';
import type { Rng } from './rng.js';

/** A local experimental EtherType (IEEE 802 "local experimental 1"): the fuzzer's frames carry it. */
export const FUZZ_ETHERTYPE = 0x88b5;
/** Tag of frames sent in hostile batches that the device may transmit: never matched against a valid batch. */
export const HOSTILE_TAG = 0;
/** Tag of frames in chains the device must drop (malformed, writable, bad offloads...): must never loop back. */
export const DROP_TAG = 0xffffffff;
/** Bytes before the payload that identify a frame: Ethernet header, tag, index. */
export const TAGGED_MIN = 14 + 8;
/** Largest valid frame the fuzzer sends (a standard Ethernet frame without FCS). */
export const VALID_MAX = 1514;

/** What the driver negotiated that shapes headers, in both directions. */
export interface NetFeatures {
  /** virtio_net_hdr size: 12 with VERSION_1 or MRG_RXBUF, 10 otherwise. */
  hdrLen: number;
  mergeable: boolean;
  /** Transmit offloads the device accepts. */
  csum: boolean;
  hostTso4: boolean;
  hostTso6: boolean;
  /** Receive offloads the driver takes. */
  guestCsum: boolean;
  guestTso4: boolean;
  guestTso6: boolean;
}

/** One frame to transmit: its header bytes (hdrLen of them) and the Ethernet frame. */
export interface TxFrame {
  hdr: Uint8Array;
  data: Uint8Array;
}

/** What must arrive on the receive queue for a transmitted frame. */
export interface RxExpected {
  /** The header without num_buffers (10 bytes). */
  hdr: Uint8Array;
  data: Uint8Array;
}

/**
 * The first byte of a received header (without num_buffers) that differs from `exp` where the
 * spec gives it a meaning, or -1: flags and gso_type always, hdr_len and gso_size for a GSO
 * frame, csum_start and csum_offset with NEEDS_CSUM (VIRTIO 1.2 §5.1.6.4.1; otherwise they are
 * unused and the device may leave anything there).
 */
export function headerDifference(got: Uint8Array, exp: Uint8Array): number {
  const o = VIRTIO_NET_HDR_OFFSETS;
  const fields: Array<[number, number]> = [[o.flags, 1], [o.gsoType, 1]];
  if ((exp[o.gsoType] as number) !== VIRTIO_NET_HDR_GSO_NONE) fields.push([o.hdrLen, 2], [o.gsoSize, 2]);
  if (((exp[o.flags] as number) & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) fields.push([o.csumStart, 2], [o.csumOffset, 2]);
  for (const [at, n] of fields) for (let i = at; i < at + n; i++) if (got[i] !== exp[i]) return i;
  return -1;
}

/** A frame of `len` bytes (≥ {@link TAGGED_MIN}): broadcast, local source MAC, tag and index, random payload. */
export function taggedFrame(rng: Rng, len: number, tag: number, index: number): Uint8Array {
  const f = rng.fill(new Uint8Array(len));
  f.fill(0xff, 0, 6);
  f.set([0x02, 0xf0, 0x22, 0, 0, 1], 6);
  const dv = new DataView(f.buffer);
  dv.setUint16(12, FUZZ_ETHERTYPE);
  dv.setUint32(14, tag >>> 0);
  dv.setUint32(18, index >>> 0);
  return f;
}

/** The tag and index of a received frame, or null when it is not one of the fuzzer's tagged frames. */
export function frameTag(f: Uint8Array): { tag: number; index: number } | null {
  if (f.length < TAGGED_MIN) return null;
  const dv = new DataView(f.buffer, f.byteOffset, f.length);
  if (dv.getUint16(12) !== FUZZ_ETHERTYPE) return null;
  return { tag: dv.getUint32(14), index: dv.getUint32(18) };
}

/**
 * A header the device must accept for a frame of `len` bytes: no offload, or NEEDS_CSUM with the
 * checksum field inside the frame (when CSUM was negotiated), or a TCP GSO frame (HOST_TSO*), or
 * DATA_VALID. Fields an offload-free header does not use hold garbage: the device must ignore it.
 */
export function validHeader(rng: Rng, ft: NetFeatures, len: number): Uint8Array {
  const h = new Uint8Array(ft.hdrLen);
  const dv = new DataView(h.buffer);
  const r = rng.int(10);
  if (r < 5) {
    if (rng.chance(0.3)) rng.fill(h.subarray(2));
    return h;
  }
  if (r < 8 && ft.csum && len >= TAGGED_MIN + 2) {
    // The checksum field lies past the tag: a receiver without GUEST_CSUM gets it filled in.
    const start = rng.range(14, len - 2);
    const at = rng.range(Math.max(start, TAGGED_MIN), len - 2);
    dv.setUint16(VIRTIO_NET_HDR_OFFSETS.csumStart, start, true);
    dv.setUint16(VIRTIO_NET_HDR_OFFSETS.csumOffset, at - start, true);
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const tso = [ft.hostTso4 ? VIRTIO_NET_HDR_GSO_TCPV4 : -1, ft.hostTso6 ? VIRTIO_NET_HDR_GSO_TCPV6 : -1].filter((g) => g >= 0);
    if (tso.length > 0 && rng.chance(0.4)) {
      h[1] = rng.pick(tso);
      dv.setUint16(VIRTIO_NET_HDR_OFFSETS.hdrLen, rng.range(14, 128), true);
      dv.setUint16(VIRTIO_NET_HDR_OFFSETS.gsoSize, rng.range(1, 9000), true);
    }
    return h;
  }
  if (r < 9) {
    h[0] = VIRTIO_NET_HDR_F_DATA_VALID;
    return h;
  }
  rng.fill(h.subarray(2));
  return h;
}

/**
 * A header the device should refuse (drop the frame, return the head): offloads that were not
 * negotiated, a checksum field past the frame, GSO without NEEDS_CSUM or with gso_size 0, unknown
 * GSO types, ECN. Some draws are acceptable under the negotiated features; the case does not
 * count on a drop.
 */
export function hostileHeader(rng: Rng, hdrLen: number, len: number): Uint8Array {
  const h = rng.fill(new Uint8Array(hdrLen));
  const dv = new DataView(h.buffer);
  switch (rng.int(5)) {
    case 0: // NEEDS_CSUM, checksum field at or past the end of the frame
      h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
      h[1] = 0;
      dv.setUint16(VIRTIO_NET_HDR_OFFSETS.csumStart, rng.pick([len - 1, len, len + 1, 0xffff, rng.int(0x10000)]), true);
      dv.setUint16(VIRTIO_NET_HDR_OFFSETS.csumOffset, rng.pick([0, 1, 0xffff, rng.int(0x10000)]), true);
      break;
    case 1: // a GSO type: TCP, UDP, unknown, with ECN
      h[0] = rng.chance(0.5) ? VIRTIO_NET_HDR_F_NEEDS_CSUM : 0;
      h[1] = rng.pick([VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, 2, 5, 0x7f, VIRTIO_NET_HDR_GSO_ECN | VIRTIO_NET_HDR_GSO_TCPV4, 0xff]);
      break;
    case 2: // GSO with gso_size 0
      h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
      h[1] = VIRTIO_NET_HDR_GSO_TCPV4;
      dv.setUint16(VIRTIO_NET_HDR_OFFSETS.csumStart, 14, true);
      dv.setUint16(VIRTIO_NET_HDR_OFFSETS.gsoSize, 0, true);
      break;
    case 3: // unknown flag bits
      h[0] = rng.int(256);
      break;
    default: // all random
  }
  return h;
}

/**
 * Whether the device accepts a transmit header for a frame of `len` bytes (the back-end's rules,
 * VIRTIO 1.2 §5.1.6.2): NEEDS_CSUM needs CSUM and a checksum field inside the frame; a GSO type
 * needs the HOST_TSO of its kind (ECN is not offered), NEEDS_CSUM and a non-zero gso_size.
 */
export function txAcceptable(ft: NetFeatures, hdr: Uint8Array, len: number): boolean {
  const dv = new DataView(hdr.buffer, hdr.byteOffset, hdr.length);
  const flags = hdr[0] as number;
  const gso = hdr[1] as number;
  const o = VIRTIO_NET_HDR_OFFSETS;
  if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
    if (!ft.csum || dv.getUint16(o.csumStart, true) + dv.getUint16(o.csumOffset, true) + 2 > len) return false;
  }
  if (gso === VIRTIO_NET_HDR_GSO_NONE) return true;
  const ok = (gso === VIRTIO_NET_HDR_GSO_TCPV4 && ft.hostTso4) || (gso === VIRTIO_NET_HDR_GSO_TCPV6 && ft.hostTso6);
  return ok && (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 && dv.getUint16(o.gsoSize, true) !== 0;
}

/**
 * Why a received frame breaks what any frame on a receive queue must respect, or null: between an
 * Ethernet header and MAX_FRAME_LEN bytes, no partial checksum for a driver without GUEST_CSUM nor
 * one whose field lies outside the frame, no GSO type the driver did not negotiate, never a frame
 * from a chain the device had to drop.
 */
export function rxViolation(ft: NetFeatures, hdr: Uint8Array, data: Uint8Array): string | null {
  if (data.length < 14 || data.length > MAX_FRAME_LEN) return `a ${data.length}-byte frame (outside 14..${MAX_FRAME_LEN})`;
  const t = frameTag(data);
  if (t !== null && t.tag === DROP_TAG) return `a frame (${data.length} bytes, hostile chain ${t.index}) from a chain the device had to drop`;
  const dv = new DataView(hdr.buffer, hdr.byteOffset, hdr.length);
  const flags = hdr[0] as number;
  const o = VIRTIO_NET_HDR_OFFSETS;
  if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
    if (!ft.guestCsum) return 'NEEDS_CSUM for a driver without GUEST_CSUM';
    const start = dv.getUint16(o.csumStart, true);
    const off = dv.getUint16(o.csumOffset, true);
    if (start + off + 2 > data.length) return `checksum field at ${start}+${off} outside the ${data.length}-byte frame`;
  }
  const gso = hdr[1] as number;
  if (gso !== VIRTIO_NET_HDR_GSO_NONE && !(gso === VIRTIO_NET_HDR_GSO_TCPV4 && ft.guestTso4) && !(gso === VIRTIO_NET_HDR_GSO_TCPV6 && ft.guestTso6)) {
    return `GSO type ${gso} the driver did not negotiate`;
  }
  return null;
}

/**
 * What the receive queue must show for `tx` under `ft`, or null when the device must drop it on
 * the receive side (a GSO type the driver did not negotiate). The device keeps NEEDS_CSUM and
 * DATA_VALID and the offload fields for a driver with GUEST_CSUM; for one without, it completes a
 * partial checksum itself and hands a zeroed header. A header without flags or GSO type is
 * all zero on the way in (its other fields are unused on transmit).
 */
export function expectedRx(tx: TxFrame, ft: NetFeatures): RxExpected | null {
  const hdr = new Uint8Array(10);
  const flagsIn = tx.hdr[0] as number;
  const gso = tx.hdr[1] as number;
  if ((flagsIn | gso) !== 0) hdr.set(tx.hdr.subarray(0, 10));
  if (gso !== VIRTIO_NET_HDR_GSO_NONE) {
    const t = gso & ~VIRTIO_NET_HDR_GSO_ECN;
    const ok = t === VIRTIO_NET_HDR_GSO_TCPV4 ? ft.guestTso4 : t === VIRTIO_NET_HDR_GSO_TCPV6 ? ft.guestTso6 : false;
    if (!ok || (gso & VIRTIO_NET_HDR_GSO_ECN) !== 0) return null;
  }
  let data = tx.data;
  let flags = flagsIn & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID);
  if (!ft.guestCsum) {
    if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
      data = data.slice();
      const dv = new DataView(tx.hdr.buffer, tx.hdr.byteOffset);
      if (!completeChecksum(data, dv.getUint16(VIRTIO_NET_HDR_OFFSETS.csumStart, true), dv.getUint16(VIRTIO_NET_HDR_OFFSETS.csumOffset, true))) return null;
    }
    flags = 0;
    hdr.fill(0, 2);
  }
  hdr[0] = flags;
  return { hdr, data };
}

/** Where two byte arrays first differ (-1 when equal, their common length when one is a prefix). */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
