/**
 * Hostile transmit batches of the net chain cases, written straight into the split ring: loops,
 * out-of-range indices and heads, overflowing lengths, buffers outside memory or across the
 * region hole, nested and malformed indirect tables, device-writable descriptors, chains shorter
 * than the header, header-only and runt frames, frames over 64 KiB + header, offload fields the
 * driver did not negotiate or that do not fit the frame, random descriptors, and valid frames
 * among them. What may come back on the receive queue carries {@link HOSTILE_TAG}; what the
 * device must drop carries {@link DROP_TAG} and must never be seen there.
 * @module
 */
import type { GuestMemory } from '../src/memory/guest-memory.js';
import { MAX_FRAME_LEN } from '../src/devices/net/header.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../src/queue/index.js';
import { SplitPort, type Desc, type RingPort } from './net-rings.js';
import {
  DROP_TAG, HOSTILE_TAG, TAGGED_MIN, hostileHeader, taggedFrame, txAcceptable, validHeader, type NetFeatures,
} from './net-frames.js';
import type { Rng } from './rng.js';

/** Where hostile chains may put things. */
export interface HostileLayout {
  /** 16 scratch blocks of 4 KiB for headers and frames. */
  scratchGpa: number;
  /** An indirect-table area of 16 KiB (1024 entries). */
  indirectGpa: number;
  /** 96 KiB for frames over 64 KiB. */
  bigGpa: number;
  /** End of region A, whether region B starts right there (else a hole follows), end of guest memory. */
  boundaryGpa: number;
  adjacent: boolean;
  memEnd: number;
  /** Frames up to MAX_FRAME_LEN may loop back without getting stuck (the receive side can hold one). */
  bigOk: boolean;
}

/** What a hostile batch published. */
export interface HostileTx {
  published: number;
  /** Heads published that the device must return (or break the ring). */
  heads: number[];
  /** avail.idx was moved more than a queue size ahead. */
  jump: boolean;
  kinds: string[];
}

/** Kinds that lie about the ring itself (indices, loops, tables, order): a split ring's raw table only. */
const RAW_KINDS = new Set([0, 1, 2, 5, 6, 13, 14]);

/**
 * Writes `n` hostile chains and makes them available: on a split ring straight into descriptor
 * slices of the table (every descriptor is free: the valid batches came back), on a packed ring
 * through its driver (the kinds a driver can place).
 */
export function hostileTxBatch(rng: Rng, port: RingPort, mem: GuestMemory, ft: NetFeatures, L: HostileLayout): HostileTx {
  const d = port instanceof SplitPort ? port.d : null;
  const qsize = port.size;
  const hl = ft.hdrLen;
  const n = rng.range(1, Math.min(16, qsize));
  const per = Math.max(1, Math.floor(qsize / n));
  const heads: number[] = [];
  const kinds: string[] = [];
  let published = 0;
  let bigUsed = false;
  for (let c = 0; c < n; c++) {
    const base = c * per;
    const last = base + per - 1;
    const buf = L.scratchGpa + 0x1000 * c;
    /**
     * Writes header + frame at `buf`; returns their total length. The frame is tagged DROP_TAG
     * unless the chain is one the device may transmit: then it may loop back (HOSTILE_TAG).
     */
    const place = (hdr: Uint8Array, len: number, tag = DROP_TAG): number => {
      mem.write(buf, hdr);
      mem.write(buf + hdr.length, taggedFrame(rng, Math.max(len, TAGGED_MIN), tag, c).subarray(0, len));
      return hdr.length + len;
    };
    let head = base;
    /** A direct chain from `base` (split) or through the driver (packed), cut to the slice. */
    const chain = (descs: Desc[]): void => {
      const k = Math.min(descs.length, per);
      if (d === null) {
        head = port.post(descs.slice(0, k));
        return;
      }
      for (let i = 0; i < k; i++) {
        const [g, l, f] = descs[i] as Desc;
        d.writeDesc(base + i, g, l, f | (i < k - 1 ? VIRTQ_DESC_F_NEXT : 0), i < k - 1 ? base + i + 1 : 0);
      }
    };
    let kind: string;
    let pick = rng.int(17);
    if (d === null && RAW_KINDS.has(pick)) pick = rng.pick([3, 4, 7, 8, 9, 10, 11, 12, 15, 16]);
    // One frame over 64 KiB per batch: they share the big buffer.
    if (pick === 11 && bigUsed) pick = 10;
    // The raw kinds below only run on a split ring (d !== null).
    const raw = d as NonNullable<typeof d>;
    switch (pick) {
      case 0: // a loop: the last descriptor points back into the chain
        kind = 'loop';
        place(new Uint8Array(hl), 60);
        for (let k = base; k <= last; k++) raw.writeDesc(k, buf, 16, VIRTQ_DESC_F_NEXT, k < last ? k + 1 : base + rng.int(per));
        break;
      case 1:
        kind = 'next-range';
        raw.writeDesc(base, buf, 64, VIRTQ_DESC_F_NEXT, qsize + rng.int(0x10000 - qsize));
        break;
      case 2:
        kind = 'head-range';
        head = qsize + rng.int(0x10000 - qsize);
        break;
      case 3: // overflowing lengths and addresses
        kind = 'overflow';
        chain([[rng.pick([buf, 2 ** 53 - 8, L.memEnd - 8, L.boundaryGpa - 8]), rng.pick([0xffffffff, 0x80000000, 0x7fffffff, L.memEnd + 1]), 0]]);
        break;
      case 4: // a payload outside guest memory or in the hole
        kind = 'outside';
        place(new Uint8Array(hl), 0);
        chain([[buf, hl, 0], [rng.pick([L.memEnd, L.boundaryGpa + 4096, 16 * 2 ** 20, 2 ** 40]), 512, 0]]);
        break;
      case 5: { // nested indirect, or INDIRECT with NEXT
        kind = 'indirect-rules';
        const t1 = L.indirectGpa + 64 * c;
        const t2 = L.indirectGpa + 64 * ((c + 1) % 16);
        const total = place(new Uint8Array(hl), 60);
        raw.writeIndirectDesc(t1, 0, buf, hl, VIRTQ_DESC_F_NEXT, 1);
        raw.writeIndirectDesc(t1, 1, t2, 16, VIRTQ_DESC_F_INDIRECT, 0);
        raw.writeIndirectDesc(t2, 0, buf + hl, total - hl, 0, 0);
        raw.writeDesc(base, t1, 32, VIRTQ_DESC_F_INDIRECT | (rng.chance(0.3) ? VIRTQ_DESC_F_NEXT : 0), base);
        break;
      }
      case 6: { // malformed indirect tables: odd, empty, huge, outside memory, looping inside
        kind = 'indirect-table';
        const t = L.indirectGpa + 64 * c;
        const total = place(new Uint8Array(hl), 60);
        // Entry 0 leads into a loop or out of the table, never to the zeroed entry 2, which would end a valid chain.
        raw.writeIndirectDesc(t, 0, buf, total, VIRTQ_DESC_F_NEXT, rng.pick([0, 1, rng.range(3, 300)]));
        raw.writeIndirectDesc(t, 1, buf, total, VIRTQ_DESC_F_NEXT, 0);
        raw.writeDesc(base, rng.chance(0.8) ? t : rng.pick([L.memEnd, 2 ** 45]), rng.pick([0, 15, 17, 48, 0xfff0, 0x100000, 0xffffffff]), VIRTQ_DESC_F_INDIRECT, 0);
        break;
      }
      case 7: { // a frame across the A/B boundary: transmitted when the regions touch, refused across a hole
        kind = 'boundary';
        const at = L.boundaryGpa - rng.range(1, 200);
        if (L.adjacent) {
          mem.write(at, new Uint8Array(hl));
          mem.write(at + hl, taggedFrame(rng, 300, HOSTILE_TAG, c));
        }
        chain([[at, hl + 300, 0]]);
        break;
      }
      case 8: { // device-writable descriptors in a transmit chain
        kind = 'writable';
        const total = place(validHeader(rng, ft, 60), 60);
        // (A one-descriptor slice cannot hold the readable + writable pair: chain() would cut it to a valid frame.)
        chain(per >= 2 && rng.chance(0.5) ? [[buf, total, 0], [buf + 2048, 64, VIRTQ_DESC_F_WRITE]] : [[buf, total, VIRTQ_DESC_F_WRITE]]);
        break;
      }
      case 9: { // fewer bytes than the header, in one or two descriptors
        kind = 'short-header';
        const len = rng.int(hl);
        place(new Uint8Array(hl), 0);
        const cut = rng.int(len + 1);
        chain(rng.chance(0.5) || cut === 0 ? [[buf, len, 0]] : [[buf, cut, 0], [buf + cut, len - cut, 0]]);
        break;
      }
      case 10: { // header only, or a runt frame shorter than an Ethernet header
        kind = 'runt';
        const total = place(new Uint8Array(hl), rng.int(14));
        chain([[buf, total, 0]]);
        break;
      }
      case 11: { // over MAX_FRAME_LEN (or exactly it when the receive side can take one): one descriptor or 4 KiB pieces
        kind = 'oversize';
        bigUsed = true;
        const len = L.bigOk && rng.chance(0.3) ? MAX_FRAME_LEN : MAX_FRAME_LEN + rng.range(1, 4096);
        mem.write(L.bigGpa, new Uint8Array(hl));
        mem.write(L.bigGpa + hl, taggedFrame(rng, len, len > MAX_FRAME_LEN ? DROP_TAG : HOSTILE_TAG, c));
        const total = hl + len;
        if (per >= 2 && rng.chance(0.5)) {
          const pieces: Desc[] = [];
          const size = Math.ceil(total / Math.min(per, 32));
          for (let o = 0; o < total; o += size) pieces.push([L.bigGpa + o, Math.min(size, total - o), 0]);
          chain(pieces);
        } else {
          chain([[L.bigGpa, total, 0]]);
        }
        break;
      }
      case 12: { // offload fields not negotiated or not fitting the frame
        kind = 'offload';
        const len = rng.range(TAGGED_MIN, 1514);
        const hdr = hostileHeader(rng, hl, len);
        const total = place(hdr, len, txAcceptable(ft, hdr, len) ? HOSTILE_TAG : DROP_TAG);
        const cut = rng.range(1, total - 1);
        chain(rng.chance(0.5) ? [[buf, total, 0]] : [[buf, cut, 0], [buf + cut, total - cut, 0]]);
        break;
      }
      case 13: { // a readable descriptor after a writable one
        kind = 'readable-after-writable';
        const total = place(new Uint8Array(hl), 60);
        chain([[buf, hl, VIRTQ_DESC_F_WRITE], [buf + hl, total - hl, 0]]);
        break;
      }
      case 14: // a random descriptor
        kind = 'random';
        raw.writeDesc(base, rng.chance(0.5) ? rng.int(2 * 2 ** 20) : rng.float() * 2 ** 53, rng.u32(), rng.u32() & 0xffff, rng.u32() & 0xffff);
        break;
      case 15: { // zero-length descriptors around a valid frame (allowed: they carry nothing)
        kind = 'zero-len';
        const total = place(validHeader(rng, ft, 100), 100, HOSTILE_TAG);
        chain([[buf, 0, 0], [buf, total, 0], [buf + total, 0, 0]]);
        break;
      }
      default: { // a valid frame, the header cut anywhere
        kind = 'valid';
        const len = rng.range(TAGGED_MIN, 1514);
        const total = place(validHeader(rng, ft, len), len, HOSTILE_TAG);
        const cut = rng.range(1, total - 1);
        chain(rng.chance(0.5) ? [[buf, total, 0]] : [[buf, cut, 0], [buf + cut, total - cut, 0]]);
      }
    }
    kinds.push(kind);
    d?.publish(head);
    heads.push(head);
    published++;
  }
  // The guest can write any avail index: jump so that, counted from what the device last saw,
  // more than the queue size is pending (a larger jump wraps back into a legal distance).
  if (d !== null && rng.chance(0.15) && 0xffff - qsize - published >= 1) {
    d.setAvailIdx(d.availIdx + qsize + rng.range(1, 0xffff - qsize - published));
    return { published, heads, jump: true, kinds };
  }
  return { published, heads, jump: false, kinds };
}
