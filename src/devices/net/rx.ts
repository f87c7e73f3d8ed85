/**
 * One receive queue of the net device: frames from the port are written into the buffers the
 * guest posted ahead of time, with mergeable buffers (one frame over several chains, num_buffers
 * in the first header), offload fields adapted to what the guest negotiated, and a bounded
 * backlog while the guest has no buffer.
 * @module
 */
import { RxQueue } from '../../backend/rx-queue.js';
import type { Vring } from '../../backend/vring.js';
import type { DescriptorChain, Writer } from '../../queue/index.js';
import type { Logger } from '../../log.js';
import { DropCounters, PacketCounters } from './counters.js';
import { Delivery, NetFrame } from './frame.js';
import {
  MAX_FRAME_LEN, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_OFFSETS, VIRTIO_NET_HDR_V1_SIZE,
  completeChecksum,
} from './header.js';

/** What the guest negotiated that shapes its receive path. */
export interface RxFeatures {
  /** Header bytes in front of every frame (12 with VERSION_1 or MRG_RXBUF, else 10). */
  hdrLen: number;
  /** VIRTIO_NET_F_MRG_RXBUF. */
  mergeable: boolean;
  /** VIRTIO_NET_F_GUEST_CSUM. */
  guestCsum: boolean;
  /** VIRTIO_NET_F_GUEST_TSO4. */
  guestTso4: boolean;
  /** VIRTIO_NET_F_GUEST_TSO6. */
  guestTso6: boolean;
  /** VIRTIO_NET_F_GUEST_ECN. */
  guestEcn: boolean;
  /** VIRTIO_NET_F_GUEST_UFO. */
  guestUfo: boolean;
}

/** Frames kept while the guest has no buffer. */
export const RX_BACKLOG_FRAMES = 256;
/** Bytes kept while the guest has no buffer. */
export const RX_BACKLOG_BYTES = 4 << 20;

const NO_BUFFER = -1;

/** The receive side of one queue pair. */
export class NetRxQueue {
  /** The framework's queue (pop, batched completion, notifications). */
  readonly rxq: RxQueue;
  /** Chains popped and not yet filled (a mergeable frame needs several; they wait for the next one). */
  private readonly stash: DescriptorChain[] = [];
  private stashBytes = 0;
  private readonly backlog: { hdr: Uint8Array; data: Uint8Array }[] = [];
  private backlogBytes = 0;
  private readonly hdrOut = new Uint8Array(VIRTIO_NET_HDR_V1_SIZE);
  /** The header as written for each header length (views made once). */
  private readonly hdrViews = new Map<number, Uint8Array>();
  private readonly scratch = new NetFrame();
  private bounce = new Uint8Array(2048);
  // Source cursor of the frame being copied.
  private src: NetFrame | null = null;
  private srcIdx = 0;
  private srcOff = 0;

  /**
   * @param vring the receive ring
   * @param features what the guest negotiated (read per frame)
   * @param drops where drops are counted by reason
   * @param logger for malformed receive buffers
   * @param counters frames delivered to the guest on this queue
   */
  constructor(
    readonly vring: Vring, private readonly features: () => RxFeatures, private readonly drops: DropCounters, logger: Logger,
    readonly counters: PacketCounters = new PacketCounters(),
  ) {
    this.rxq = new RxQueue(vring, { logger, name: `rx queue ${vring.index}` });
  }

  /** Frames waiting for guest buffers. */
  get backlogLength(): number {
    return this.backlog.length;
  }

  /** Writes `frame` into guest buffers, or keeps a copy until the guest posts some, or drops it. */
  deliver(frame: NetFrame): Delivery {
    if (!this.rxq.ready) {
      this.drop('rx-not-ready');
      return Delivery.Dropped;
    }
    if (this.backlog.length > 0) return this.enqueue(frame);
    const r = this.fill(frame);
    if (r !== NO_BUFFER) return r as Delivery;
    return this.enqueue(frame);
  }

  /**
   * The guest kicked (posted buffers): the backlog is written into them. Returns true when the
   * backlog is empty afterwards.
   */
  kicked(): boolean {
    this.rxq.kicked();
    while (this.backlog.length > 0) {
      const b = this.backlog[0] as { hdr: Uint8Array; data: Uint8Array };
      const f = this.scratch.setSingle(b.data);
      f.hdr.set(b.hdr);
      const r = this.fill(f);
      if (r === NO_BUFFER) return false;
      this.backlog.shift();
      this.backlogBytes -= b.data.length;
    }
    return true;
  }

  /**
   * The ring stops (GET_VRING_BASE) or resets: chains popped but not filled go back empty, the
   * backlog is dropped, and what was completed is published before the front-end reads the base.
   */
  stop(): void {
    try {
      for (const c of this.stash) this.rxq.complete(c, 0);
      this.rxq.flush();
    } catch { /* rings gone: nothing to return */ }
    this.stash.length = 0;
    this.stashBytes = 0;
    for (let i = 0; i < this.backlog.length; i++) this.drop('rx-no-buffer');
    this.backlog.length = 0;
    this.backlogBytes = 0;
  }

  private drop(r: Parameters<DropCounters['add']>[0]): void {
    this.drops.add(r);
    this.counters.drops++;
  }

  /** Keeps a copy of `frame` for when buffers arrive; Dropped when the backlog is full. */
  private enqueue(frame: NetFrame): Delivery {
    // Buffers may have arrived since the last look: re-arm the kick and look again.
    if (this.backlog.length === 0 && this.rxq.waitForBuffers()) {
      const r = this.fill(frame);
      if (r !== NO_BUFFER) return r as Delivery;
    }
    if (this.backlog.length >= RX_BACKLOG_FRAMES || this.backlogBytes + frame.length > RX_BACKLOG_BYTES) {
      this.drop('rx-no-buffer');
      return Delivery.Dropped;
    }
    const data = new Uint8Array(frame.length);
    frame.copyOut(data);
    this.backlog.push({ hdr: frame.hdr.slice(), data });
    this.backlogBytes += data.length;
    return Delivery.Queued;
  }

  /** Sent, Dropped, or NO_BUFFER (nothing consumed but chains kept in the stash). */
  private fill(input: NetFrame): number {
    const ft = this.features();
    let frame = input;
    if (frame.length > MAX_FRAME_LEN) {
      this.drop('rx-too-big');
      return Delivery.Dropped;
    }
    const hdr = this.hdrOut;
    hdr.set(frame.hdr);
    const gso = frame.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    if (gso !== VIRTIO_NET_HDR_GSO_NONE) {
      const ok = gso === VIRTIO_NET_HDR_GSO_TCPV4 ? ft.guestTso4 : gso === VIRTIO_NET_HDR_GSO_TCPV6 ? ft.guestTso6 : gso === VIRTIO_NET_HDR_GSO_UDP ? ft.guestUfo : false;
      if (!ok || ((frame.gsoType & VIRTIO_NET_HDR_GSO_ECN) !== 0 && !ft.guestEcn)) {
        this.drop('rx-offload');
        return Delivery.Dropped;
      }
    }
    let flags = frame.flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID);
    if (!ft.guestCsum) {
      if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
        // The guest cannot finish the checksum: do it here, in a copy.
        if (this.bounce.length < frame.length) this.bounce = new Uint8Array(frame.length);
        const b = this.bounce.subarray(0, frame.length);
        frame.copyOut(b);
        if (!completeChecksum(b, frame.hdrU16(VIRTIO_NET_HDR_OFFSETS.csumStart), frame.hdrU16(VIRTIO_NET_HDR_OFFSETS.csumOffset))) {
          this.drop('rx-offload');
          return Delivery.Dropped;
        }
        if (input === this.scratch) {
          input.segs[0] = b;
          input.count = 1;
        } else {
          frame = this.scratch.setSingle(b);
        }
      }
      flags = 0;
      hdr[2] = hdr[3] = hdr[4] = hdr[5] = hdr[6] = hdr[7] = hdr[8] = hdr[9] = 0;
    }
    hdr[0] = flags;
    return ft.mergeable ? this.fillMergeable(frame, ft.hdrLen) : this.fillOne(frame, ft.hdrLen);
  }

  private takeChain(hdrLen: number): DescriptorChain | null {
    for (;;) {
      const c = this.rxq.pop();
      if (c === null) return null;
      if (c.readableCount > 0 || c.writableBytes < hdrLen) {
        this.rxq.reject(c, `receive buffer of ${c.writableBytes} writable bytes${c.readableCount > 0 ? ' with device-readable descriptors' : ''} cannot hold the ${hdrLen}-byte header`);
        continue;
      }
      this.stash.push(c);
      this.stashBytes += c.writableBytes;
      return c;
    }
  }

  private fillOne(frame: NetFrame, hdrLen: number): number {
    const c = this.stash[0] ?? this.takeChain(hdrLen);
    if (c === null) return NO_BUFFER;
    const need = hdrLen + frame.length;
    if (c.writableBytes < need) {
      // The chain stays for a smaller frame.
      this.drop('rx-too-big');
      return Delivery.Dropped;
    }
    this.hdrOut[VIRTIO_NET_HDR_OFFSETS.numBuffers] = 1;
    this.hdrOut[VIRTIO_NET_HDR_OFFSETS.numBuffers + 1] = 0;
    this.startCopy(frame);
    c.writer.write(this.hdrView(hdrLen));
    this.copyTo(c.writer, frame.length);
    this.stash.shift();
    this.stashBytes -= c.writableBytes;
    this.rxq.complete(c, need);
    this.sent(frame);
    return Delivery.Sent;
  }

  private fillMergeable(frame: NetFrame, hdrLen: number): number {
    const need = hdrLen + frame.length;
    while (this.stashBytes < need) {
      if (this.takeChain(hdrLen) !== null) continue;
      if (this.stash.length < this.vring.queue.size) return NO_BUFFER;
      // Every buffer of the ring is held and the frame still does not fit: it never will.
      this.drop('rx-too-big');
      return Delivery.Dropped;
    }
    let k = 0;
    for (let acc = 0; acc < need; k++) acc += (this.stash[k] as DescriptorChain).writableBytes;
    this.hdrOut[VIRTIO_NET_HDR_OFFSETS.numBuffers] = k & 0xff;
    this.hdrOut[VIRTIO_NET_HDR_OFFSETS.numBuffers + 1] = k >>> 8;
    this.startCopy(frame);
    let left = frame.length;
    for (let j = 0; j < k; j++) {
      const c = this.stash[j] as DescriptorChain;
      let used = 0;
      if (j === 0) {
        c.writer.write(this.hdrView(hdrLen));
        used = hdrLen;
      }
      const n = Math.min(c.writableBytes - used, left);
      this.copyTo(c.writer, n);
      left -= n;
      this.stashBytes -= c.writableBytes;
      this.rxq.complete(c, used + n);
    }
    this.stash.splice(0, k);
    this.sent(frame);
    return Delivery.Sent;
  }

  private hdrView(hdrLen: number): Uint8Array {
    let v = this.hdrViews.get(hdrLen);
    if (v === undefined) {
      v = this.hdrOut.subarray(0, hdrLen);
      this.hdrViews.set(hdrLen, v);
    }
    return v;
  }

  private sent(frame: NetFrame): void {
    this.counters.packets++;
    this.counters.bytes += frame.length;
    this.src = null;
  }

  private startCopy(frame: NetFrame): void {
    this.src = frame.views();
    this.srcIdx = 0;
    this.srcOff = 0;
  }

  /** Copies the next `n` bytes of the current frame into `w`. */
  private copyTo(w: Writer, n: number): void {
    const f = this.src as NetFrame;
    let left = n;
    while (left > 0) {
      const s = f.segs[this.srcIdx] as Uint8Array;
      const take = Math.min(s.length - this.srcOff, left);
      w.write(this.srcOff === 0 && take === s.length ? s : s.subarray(this.srcOff, this.srcOff + take));
      left -= take;
      this.srcOff += take;
      if (this.srcOff === s.length) {
        this.srcIdx++;
        this.srcOff = 0;
      }
    }
  }
}
