/**
 * What moves between a virtio-net device and its ports: a frame described in place (views of
 * guest memory or of a port's buffer, never copied on the way), and the endpoint and link
 * interfaces that loopback, the TAP wire and the switch implement.
 * @module
 */
import { VIRTIO_NET_HDR_V1_SIZE } from './header.js';
import type { GuestMemory } from '../../memory/index.js';

/**
 * One Ethernet frame plus its `virtio_net_hdr_v1` (offload fields). The views are valid only
 * during the call that receives the frame: a receiver copies what it keeps.
 */
export class NetFrame {
  /** The 12-byte header (num_buffers is meaningless here). */
  readonly hdr = new Uint8Array(VIRTIO_NET_HDR_V1_SIZE);
  /**
   * The frame bytes: the first `count` entries of `segs`, in order. A frame described by guest
   * ranges (`setGuest`) gets its views on first use: call {@link views} before reading
   * `segs`/`count` directly (copyOut and byteAt do).
   */
  readonly segs: Uint8Array[] = [];
  /** Number of valid entries in `segs` (see {@link views}). */
  count = 0;
  /** Total bytes of the frame (without the header). */
  length = 0;
  // Guest ranges not turned into views yet (a frame that is dropped, or filtered on its first
  // bytes, never pays for the views).
  private lazyMem: GuestMemory | null = null;
  private readonly gpas: number[] = [];
  private readonly glens: number[] = [];
  private lazyCount = 0;

  /** Header `flags`. */
  get flags(): number { return this.hdr[0] as number; }
  /** Header `gso_type`. */
  get gsoType(): number { return this.hdr[1] as number; }
  /** A little-endian u16 of the header at byte `off`. */
  hdrU16(off: number): number { return (this.hdr[off] as number) | ((this.hdr[off + 1] as number) << 8); }

  /** Describes a frame held in one buffer, with an all-zero header. */
  setSingle(data: Uint8Array): this {
    this.hdr.fill(0);
    this.lazyMem = null;
    this.segs[0] = data;
    this.count = 1;
    this.length = data.length;
    return this;
  }

  /**
   * @internal Starts describing a frame of guest memory ranges (already validated against `mem`);
   * add them with {@link addGuest}. The header is set by the caller.
   */
  setGuest(mem: GuestMemory): void {
    this.lazyMem = mem;
    this.lazyCount = 0;
    this.count = 0;
    this.length = 0;
  }

  /** @internal Appends guest range `[gpa, gpa + len)` to a frame begun with {@link setGuest}. */
  addGuest(gpa: number, len: number): void {
    const i = this.lazyCount++;
    this.gpas[i] = gpa;
    this.glens[i] = len;
    this.length += len;
  }

  /** Makes `segs`/`count` valid (views of guest memory for a frame of guest ranges). */
  views(): this {
    const mem = this.lazyMem;
    if (mem !== null) {
      this.lazyMem = null;
      const segs = this.segs;
      segs.length = 0;
      for (let i = 0; i < this.lazyCount; i++) mem.translateSegments(this.gpas[i] as number, this.glens[i] as number, segs);
      this.count = segs.length;
    }
    return this;
  }

  /** Copies `n` bytes of the frame from byte `from` into `out` at `at`. */
  copyOut(out: Uint8Array, at = 0, from = 0, n = this.length - from): void {
    this.views();
    let skip = from;
    let pos = at;
    let left = n;
    for (let i = 0; i < this.count && left > 0; i++) {
      const s = this.segs[i] as Uint8Array;
      if (skip >= s.length) {
        skip -= s.length;
        continue;
      }
      const take = Math.min(s.length - skip, left);
      out.set(skip === 0 && take === s.length ? s : s.subarray(skip, skip + take), pos);
      pos += take;
      left -= take;
      skip = 0;
    }
  }

  /** Byte `i` of the frame (0 past its end). */
  byteAt(i: number): number {
    const mem = this.lazyMem;
    if (mem !== null && i < (this.glens[0] as number)) {
      // The first bytes (MAC addresses) are read where they are, without making views.
      const b = mem.bytesAt((this.gpas[0] as number) + i, 1);
      if (b !== null) return b[mem.bytesOffset] as number;
    }
    this.views();
    let k = i;
    for (let j = 0; j < this.count; j++) {
      const s = this.segs[j] as Uint8Array;
      if (k < s.length) return s[k] as number;
      k -= s.length;
    }
    return 0;
  }
}

/** Outcome of handing a frame to an endpoint: Sent (written into guest buffers or a TAP), Queued (copied into the receiver's bounded backlog: it had no buffer now), Dropped (and counted by the receiver). */
export const Delivery = Object.freeze({
  /** Written into the receiver (guest buffers, a TAP). */
  Sent: 0,
  /** Copied into the receiver's bounded backlog: it had no buffer now. */
  Queued: 1,
  /** Dropped, and counted by the receiver. */
  Dropped: 2,
} as const);
/** One of the {@link Delivery} values. */
export type Delivery = (typeof Delivery)[keyof typeof Delivery];

/** Something frames can be delivered to: a virtio-net device's receive side, or a TAP. */
export interface FrameEndpoint {
  /** Name for logs and statistics. */
  readonly name: string;
  /**
   * Delivers `frame` (copying it); `pairHint` picks the receive queue pair (modulo those in
   * use). Never blocks.
   */
  deliver(frame: NetFrame, pairHint: number): Delivery;
  /** Publishes what was delivered so far (a device batches its receive used-index updates). */
  flush?(): void;
  /** The 6-byte MAC of a guest behind this endpoint, if known (learned by switches anyway). */
  readonly mac?: Uint8Array;
}

/**
 * Where an endpoint sends what it transmits: loopback, a point-to-point wire to a TAP, or a
 * switch. Set once with {@link FrameSource.attach}.
 */
export interface NetLink {
  /** `from` transmitted `frame` on queue pair `pair`. The views die when this returns. */
  transmit(from: FrameEndpoint, pair: number, frame: NetFrame): void;
  /** Publishes the deliveries of the frames transmitted so far (called once per transmit batch). */
  flush?(): void;
}

/** An endpoint that also transmits (device TX, TAP reads). */
export interface FrameSource extends FrameEndpoint {
  /** Connects the endpoint's transmissions to `link`. */
  attach(link: NetLink): void;
  /**
   * Called by a link when `to` has receive buffers again after returning `Delivery.Queued`:
   * a source that paused (a TAP) resumes reading.
   */
  resume?(): void;
}
