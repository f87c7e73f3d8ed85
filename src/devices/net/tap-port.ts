/**
 * A Linux TAP interface as a port of the net device: one TAP queue (IFF_MULTI_QUEUE) per queue
 * pair, frames read and written with their virtio-net header (IFF_VNET_HDR, 12 bytes), offloads
 * (TUNSETOFFLOAD) following what the guest negotiated. Reading is event-driven (a uv_poll
 * watcher per queue, non-blocking read(2) until EAGAIN or a per-wake-up budget), and pauses while
 * the guest has no receive buffer, so frames wait in the kernel's bounded TAP queue.
 * @module
 */
import { readSync, writevSync } from 'node:fs';
import * as sys from '../../sys/index.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, openTap, setTapOffload, type Tap } from '../../kernel/tap.js';
import { defaultLogger, type Logger } from '../../log.js';
import { DropCounters, PacketCounters } from './counters.js';
import { Delivery, NetFrame, type FrameSource, type NetLink } from './frame.js';
import { MAX_FRAME_LEN, VIRTIO_NET_HDR_V1_SIZE } from './header.js';

/** Frames read per queue per wake-up before yielding to the event loop. */
export const TAP_READ_BUDGET = 64;

/** Options of {@link TapPort.open}. */
export interface TapPortOptions {
  /** Interface name (created if absent). */
  name: string;
  /** TAP queues (one per queue pair; > 1 opens the interface with IFF_MULTI_QUEUE). Default 1. */
  queues?: number;
  /** Logger for write errors. */
  logger?: Logger;
}

/** Offloads a receiver accepts. */
export interface GuestOffloads {
  /** Partial checksums. */
  csum: boolean;
  /** TSO over IPv4. */
  tso4: boolean;
  /** TSO over IPv6. */
  tso6: boolean;
  /** TSO with ECN. */
  ecn: boolean;
  /** UFO. */
  ufo: boolean;
}

/** A TAP interface serving as a port. */
export class TapPort implements FrameSource {
  /** Interface name. */
  readonly name: string;
  /** Frames read from the TAP (towards the guests), per TAP queue. */
  readonly rxCounters: PacketCounters[];
  /** Frames written to the TAP (from the guests), per TAP queue. */
  readonly txCounters: PacketCounters[];
  /** Drops by reason. */
  readonly drops = new DropCounters();
  private readonly taps: Tap[];
  private readonly watchers: (sys.FdWatcher | null)[];
  private readonly logger: Logger;
  private link: NetLink | null = null;
  private paused = false;
  private running = false;
  private closed = false;
  private offloadFlags = -1;
  private readonly buf = Buffer.alloc(VIRTIO_NET_HDR_V1_SIZE + MAX_FRAME_LEN);
  private readonly frame = new NetFrame();
  private readonly iov: Uint8Array[] = [];

  private constructor(taps: Tap[], logger: Logger) {
    this.taps = taps;
    this.name = taps[0]?.name ?? '';
    this.logger = logger;
    this.watchers = taps.map(() => null);
    this.rxCounters = taps.map(() => new PacketCounters());
    this.txCounters = taps.map(() => new PacketCounters());
  }

  /** Opens (creating if absent) the TAP interface with one queue per queue pair. */
  static open(opts: TapPortOptions): TapPort {
    const n = opts.queues ?? 1;
    const taps: Tap[] = [];
    try {
      for (let i = 0; i < n; i++) taps.push(openTap({ name: opts.name, multiQueue: n > 1, vnetHdrSize: VIRTIO_NET_HDR_V1_SIZE }));
    } catch (e) {
      for (const t of taps) t.close();
      throw e;
    }
    const p = new TapPort(taps, opts.logger ?? defaultLogger);
    p.setOffload({ csum: false, tso4: false, tso6: false, ecn: false, ufo: false });
    return p;
  }

  /** The TAP queue fds (owned by the port). */
  get fds(): number[] {
    return this.taps.map((t) => t.fd);
  }

  attach(link: NetLink): void {
    this.link = link;
  }

  /** Starts reading the TAP (call once a link is attached). */
  start(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.taps.forEach((t, i) => {
      this.watchers[i] = sys.watchFd(t.fd, sys.POLLIN, (status) => {
        if (status < 0) {
          this.logger.log('warn', `${this.name}: TAP queue ${i} poll error ${status}`);
          return;
        }
        this.readQueue(i);
      });
    });
  }

  /** Stops reading until {@link resume}: frames wait in the kernel's TAP queue. */
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    for (const w of this.watchers) w?.stop();
  }

  resume(): void {
    if (!this.paused || this.closed) return;
    this.paused = false;
    for (const w of this.watchers) w?.start(sys.POLLIN);
  }

  /** TUNSETOFFLOAD on every queue from what the receiving guest(s) negotiated. */
  setOffload(o: GuestOffloads): void {
    let flags = 0;
    if (o.csum) {
      flags |= TUN_F_CSUM;
      if (o.tso4) flags |= TUN_F_TSO4;
      if (o.tso6) flags |= TUN_F_TSO6;
      if ((o.tso4 || o.tso6) && o.ecn) flags |= TUN_F_TSO_ECN;
      if (o.ufo) flags |= TUN_F_UFO;
    }
    if (flags === this.offloadFlags) return;
    for (const t of this.taps) setTapOffload(t.fd, flags);
    this.offloadFlags = flags;
  }

  /** The TUNSETOFFLOAD flags in effect. */
  get offload(): number {
    return this.offloadFlags;
  }

  private readQueue(i: number): void {
    const fd = (this.taps[i] as Tap).fd;
    const buf = this.buf;
    const f = this.frame;
    const counters = this.rxCounters[i] as PacketCounters;
    for (let n = 0; n < TAP_READ_BUDGET && !this.paused && !this.closed; n++) {
      let len: number;
      try {
        len = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') this.logger.log('warn', `${this.name}: reading TAP queue ${i}: ${(e as Error).message}`);
        return;
      }
      if (len <= VIRTIO_NET_HDR_V1_SIZE) continue;
      f.setSingle(buf.subarray(VIRTIO_NET_HDR_V1_SIZE, len));
      f.hdr.set(buf.subarray(0, VIRTIO_NET_HDR_V1_SIZE));
      counters.packets++;
      counters.bytes += f.length;
      if (this.link === null) {
        counters.drops++;
        this.drops.add('rx-not-ready');
        continue;
      }
      this.link.transmit(this, i, f);
    }
  }

  /** Writes a frame from a guest into TAP queue `pairHint` (modulo the queues). */
  deliver(frame: NetFrame, pairHint: number): Delivery {
    const q = pairHint % this.taps.length;
    const c = this.txCounters[q] as PacketCounters;
    if (this.closed) {
      c.drops++;
      this.drops.add('port-error');
      return Delivery.Dropped;
    }
    const iov = this.iov;
    iov.length = 0;
    iov.push(frame.hdr);
    frame.views();
    for (let i = 0; i < frame.count; i++) iov.push(frame.segs[i] as Uint8Array);
    try {
      writevSync((this.taps[q] as Tap).fd, iov);
    } catch (e) {
      c.drops++;
      this.drops.add('port-error');
      const code = (e as NodeJS.ErrnoException).code;
      // EAGAIN: the TAP's queue is full; EIO: the interface is down. Both are routine drops.
      if (code !== 'EAGAIN' && code !== 'EIO') this.logger.log('warn', `${this.name}: writing a ${frame.length}-byte frame to TAP queue ${q}: ${(e as Error).message}`);
      return Delivery.Dropped;
    }
    c.packets++;
    c.bytes += frame.length;
    return Delivery.Sent;
  }

  /** Stops reading and closes the TAP queues (the interface goes away unless persistent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.watchers) w?.close();
    this.watchers.fill(null);
    for (const t of this.taps) t.close();
  }
}
