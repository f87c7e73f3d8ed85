/**
 * What moves between a virtio-net device and its ports: a frame described in place (views of
 * guest memory or of a port's buffer, never copied on the way), and the endpoint and link
 * interfaces that loopback, the TAP wire and the switch implement.
 * @module
 */
import { VIRTIO_NET_HDR_V1_SIZE } from './header.js';

/**
 * One Ethernet frame plus its `virtio_net_hdr_v1` (offload fields). The views are valid only
 * during the call that receives the frame: a receiver copies what it keeps.
 */
export class NetFrame {
  /** The 12-byte header (num_buffers is meaningless here). */
  readonly hdr = new Uint8Array(VIRTIO_NET_HDR_V1_SIZE);
  /** The frame bytes: the first `count` entries of `segs`, in order. */
  readonly segs: Uint8Array[] = [];
  /** Number of valid entries in `segs`. */
  count = 0;
  /** Total bytes of the frame (without the header). */
  length = 0;

  /** Header `flags`. */
  get flags(): number { return this.hdr[0] as number; }
  /** Header `gso_type`. */
  get gsoType(): number { return this.hdr[1] as number; }
  /** A little-endian u16 of the header at byte `off`. */
  hdrU16(off: number): number { return (this.hdr[off] as number) | ((this.hdr[off + 1] as number) << 8); }

  /** Describes a frame held in one buffer, with an all-zero header. */
  setSingle(data: Uint8Array): this {
    this.hdr.fill(0);
    this.segs[0] = data;
    this.count = 1;
    this.length = data.length;
    return this;
  }

  /** Copies `n` bytes of the frame from byte `from` into `out` at `at`. */
  copyOut(out: Uint8Array, at = 0, from = 0, n = this.length - from): void {
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
