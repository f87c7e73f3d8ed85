/**
 * A virtio-net "guest" for loopback tests: our Frontend connected to a VhostUserNetBackend served by
 * a VhostUserDaemon, with guest memory, receive/transmit queue pairs (split or packed) and the
 * control queue, plus helpers to transmit frames and collect received ones (mergeable buffers
 * reassembled).
 */
import type { TestContext } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, FrontendQueue, setupPackedQueue, setupQueue } from '../../src/driver/frontend-driver.js';
import { DEFAULT_PROTOCOL_FEATURES, negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import type { VirtQueueDriver, GuestBuffer } from '../../src/queue/index.js';
import { VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, featureMask } from '../../src/virtio/features.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { silentLogger, type Logger } from '../../src/log.js';
import {
  VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_V1_SIZE, type VhostUserNetBackend,
} from '../../src/devices/net/index.js';

/** Options of {@link NetGuest.start}. */
export interface NetGuestOptions {
  /** Features to acknowledge (intersected with the offer; default: all but RING_PACKED). */
  features?: bigint;
  /** Use packed rings (adds RING_PACKED to the features). */
  packed?: boolean;
  /** Queue pairs to set up (default 1; > 1 needs MQ in the features). */
  pairs?: number;
  /** Queue size (default 64). */
  qsize?: number;
  /** Set up the control queue (default true). */
  ctrl?: boolean;
  /** The device's queue pairs (to find the control queue; default: the in-process device's, or `pairs`). */
  maxPairs?: number;
  /** Daemon logger (default silent). */
  logger?: Logger;
}

/** A received frame. */
export interface RxFrame {
  /** The 12-byte header as the device wrote it. */
  hdr: Buffer;
  /** The frame. */
  data: Buffer;
  /** Chains it took. */
  buffers: number;
  /** Used lengths of those chains. */
  lens: number[];
}

/** The guest side of one device. */
export class NetGuest {
  readonly rx: FrontendQueue<VirtQueueDriver>[] = [];
  readonly tx: FrontendQueue<VirtQueueDriver>[] = [];
  ctrl: FrontendQueue<VirtQueueDriver> | null = null;
  features = 0n;
  private next = 0x200000;
  private readonly rxBufs = new Map<string, GuestBuffer[]>();

  private constructor(readonly fe: Frontend, readonly mem: FrontendMemory, private readonly served: VhostUserDaemon | null, private readonly device: VhostUserNetBackend | null) {}

  /** The in-process daemon (start() only). */
  get daemon(): VhostUserDaemon {
    if (this.served === null) throw new Error('the device runs in another process');
    return this.served;
  }

  /** The in-process device (start() only). */
  get dev(): VhostUserNetBackend {
    if (this.device === null) throw new Error('the device runs in another process');
    return this.device;
  }

  /** Serves `dev` on a fresh socket and connects a front-end with `opts`' rings. */
  static async start(t: TestContext, dev: VhostUserNetBackend, opts: NetGuestOptions = {}): Promise<NetGuest> {
    const dir = mkdtempSync(join(tmpdir(), 'vu-net-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const sock = join(dir, 'net.sock');
    const daemon = new VhostUserDaemon('net', dev, { logger: opts.logger ?? silentLogger });
    daemon.serve(sock);
    t.after(() => daemon.stop());
    return NetGuest.connect(t, sock, opts, daemon, dev);
  }

  /** Connects a front-end to a net back-end listening on `sock` (e.g. the vhost-user-net CLI). */
  static async connect(t: TestContext, sock: string, opts: NetGuestOptions = {}, daemon: VhostUserDaemon | null = null, dev: VhostUserNetBackend | null = null): Promise<NetGuest> {
    const fe = await Frontend.connect(sock);
    const mem = new FrontendMemory(32 << 20);
    const g = new NetGuest(fe, mem, daemon, dev);
    t.after(() => {
      for (const q of [...g.rx, ...g.tx, ...(g.ctrl ? [g.ctrl] : [])]) q.close();
      fe.close();
      mem.close();
    });
    let want = opts.features ?? ~featureMask(VIRTIO_F_RING_PACKED);
    if (opts.packed === true) want |= featureMask(VIRTIO_F_RING_PACKED);
    else want &= ~featureMask(VIRTIO_F_RING_PACKED);
    const n = await negotiate(fe, { wantFeatures: want | featureMask(VHOST_USER_F_PROTOCOL_FEATURES), wantProtocolFeatures: DEFAULT_PROTOCOL_FEATURES | protocolFeatureMask(ProtocolFeature.RARP) });
    g.features = n.features;
    await fe.setMemTable(mem.regions());
    const qsize = opts.qsize ?? 64;
    const eventIdx = (n.features & featureMask(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    const packed = (n.features & featureMask(VIRTIO_F_RING_PACKED)) !== 0n;
    const setup = (index: number): Promise<FrontendQueue<VirtQueueDriver>> =>
      (packed ? setupPackedQueue : setupQueue)(fe, mem, index, qsize, 0x10000 + index * 0x4000, { eventIdx, enable: true }) as Promise<FrontendQueue<VirtQueueDriver>>;
    const pairs = opts.pairs ?? 1;
    for (let p = 0; p < pairs; p++) {
      g.rx.push(await setup(2 * p));
      g.tx.push(await setup(2 * p + 1));
    }
    if (opts.ctrl ?? true) {
      const mq = (n.features & featureMask(VIRTIO_NET_F_MQ)) !== 0n;
      g.ctrl = await setup(mq ? 2 * (opts.maxPairs ?? dev?.maxPairs ?? pairs) : 2);
    }
    return g;
  }

  /** Whether a feature was negotiated. */
  has(bit: number): boolean {
    return (this.features & featureMask(bit)) !== 0n;
  }

  /** Guest memory for `len` bytes (64-byte aligned bump allocation). */
  alloc(len: number): number {
    const gpa = this.next;
    this.next += (len + 63) & ~63;
    if (this.next > this.mem.size) throw new Error('test guest memory exhausted');
    return gpa;
  }

  /** Posts `count` receive chains of one `size`-byte buffer each (or of the given buffer sizes), then kicks. */
  postRx(pair: number, count: number, size: number | number[] = 2048): void {
    const q = this.rx[pair] as FrontendQueue<VirtQueueDriver>;
    for (let i = 0; i < count; i++) {
      const sizes = typeof size === 'number' ? [size] : size;
      const bufs = sizes.map((s) => ({ gpa: this.alloc(s), len: s }));
      const id = q.driver.addChain([], bufs);
      this.rxBufs.set(`${pair}:${id}`, bufs);
    }
    q.kick(true);
  }

  /**
   * Transmits `frame` with header `hdr` (default all zero) on `pair`, split over buffers of `chunk`
   * bytes, and kicks unless `kick` is false; resolves when the device used the chain.
   */
  async send(pair: number, frame: Uint8Array, hdr: Uint8Array = new Uint8Array(VIRTIO_NET_HDR_V1_SIZE), chunk = 1 << 20, kick = true): Promise<void> {
    const all = Buffer.concat([hdr, frame]);
    const bufs: GuestBuffer[] = [];
    for (let off = 0; off < all.length; off += chunk) {
      const part = all.subarray(off, Math.min(all.length, off + chunk));
      const gpa = this.alloc(part.length);
      this.mem.memory.write(gpa, part);
      bufs.push({ gpa, len: part.length });
    }
    const q = this.tx[pair] as FrontendQueue<VirtQueueDriver>;
    q.driver.addChain(bufs, []);
    // Without the kick only a device that polls the ring sees the chain.
    if (kick) q.kick(true);
    const u = await q.nextUsed();
    if (u.len !== 0) throw new Error(`TX used length ${u.len}`);
  }

  /** The next received frame on `pair` (reassembling mergeable buffers). */
  async recv(pair: number, timeoutMs = 5000): Promise<RxFrame> {
    const q = this.rx[pair] as FrontendQueue<VirtQueueDriver>;
    const first = await q.nextUsed(timeoutMs);
    const parts: Buffer[] = [this.readUsed(pair, first.id, first.len)];
    const lens = [first.len];
    const head = parts[0] as Buffer;
    const mrg = this.has(VIRTIO_NET_F_MRG_RXBUF);
    const n = mrg ? head.readUInt16LE(10) : 1;
    for (let i = 1; i < n; i++) {
      const u = await q.nextUsed(timeoutMs);
      parts.push(this.readUsed(pair, u.id, u.len));
      lens.push(u.len);
    }
    const all = Buffer.concat(parts);
    return { hdr: all.subarray(0, VIRTIO_NET_HDR_V1_SIZE), data: all.subarray(VIRTIO_NET_HDR_V1_SIZE), buffers: n, lens };
  }

  private readUsed(pair: number, id: number, len: number): Buffer {
    const bufs = this.rxBufs.get(`${pair}:${id}`);
    if (bufs === undefined) throw new Error(`used id ${id} on rx ${pair} was not posted`);
    this.rxBufs.delete(`${pair}:${id}`);
    const out: Buffer[] = [];
    let left = len;
    for (const b of bufs) {
      const n = Math.min(left, b.len);
      out.push(Buffer.from(this.mem.memory.translate(b.gpa, n)));
      left -= n;
    }
    return Buffer.concat(out);
  }

  /** Sends a control command; resolves with the ack byte. */
  async command(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0)): Promise<number> {
    const q = this.ctrl;
    if (q === null) throw new Error('no control queue');
    const inGpa = this.alloc(2 + data.length);
    this.mem.memory.write(inGpa, Buffer.concat([Buffer.from([cls, cmd]), data]));
    const ackGpa = this.alloc(1);
    this.mem.memory.writeU8(ackGpa, 0xee);
    q.driver.addChain([{ gpa: inGpa, len: 2 + data.length }], [{ gpa: ackGpa, len: 1 }]);
    q.kick(true);
    const u = await q.nextUsed();
    if (u.len !== 1) throw new Error(`control used length ${u.len}`);
    return this.mem.memory.readU8(ackGpa);
  }
}

/** An Ethernet frame: dst, src, ethertype, then `payloadLen` bytes of a pattern seeded by `seed`. */
export function ethFrame(dst: string, src: string, payloadLen: number, seed = 0, ethertype = 0x88b5): Buffer {
  const f = Buffer.alloc(14 + payloadLen);
  Buffer.from(dst.split(':').map((h) => parseInt(h, 16))).copy(f, 0);
  Buffer.from(src.split(':').map((h) => parseInt(h, 16))).copy(f, 6);
  f.writeUInt16BE(ethertype, 12);
  for (let i = 0; i < payloadLen; i++) f[14 + i] = (i * 7 + seed) & 0xff;
  return f;
}

function ipBytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

function sum16(b: Buffer, start = 0, end = b.length, init = 0): number {
  let s = init;
  for (let i = start; i + 1 < end; i += 2) s += b.readUInt16BE(i);
  if ((end - start) % 2 === 1) s += (b[end - 1] as number) << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/**
 * An IPv4/UDP frame. With `partial` the UDP checksum field holds the pseudo-header sum and the
 * returned header asks for NEEDS_CSUM (csum_start 34, csum_offset 6), as a guest with CSUM sends it;
 * otherwise the checksum is complete and the header is all zero.
 */
export function udpFrame(dstMac: string, srcMac: string, srcIp: string, dstIp: string, sport: number, dport: number, payload: Buffer, partial: boolean): { frame: Buffer; hdr: Buffer } {
  const f = Buffer.alloc(14 + 20 + 8 + payload.length);
  Buffer.from(dstMac.split(':').map((h) => parseInt(h, 16))).copy(f, 0);
  Buffer.from(srcMac.split(':').map((h) => parseInt(h, 16))).copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45;
  f.writeUInt16BE(20 + 8 + payload.length, 16);
  f[22] = 64;
  f[23] = 17;
  ipBytes(srcIp).copy(f, 26);
  ipBytes(dstIp).copy(f, 30);
  f.writeUInt16BE(~sum16(f, 14, 34) & 0xffff, 24);
  f.writeUInt16BE(sport, 34);
  f.writeUInt16BE(dport, 36);
  f.writeUInt16BE(8 + payload.length, 38);
  payload.copy(f, 42);
  const pseudo = sum16(Buffer.concat([f.subarray(26, 34), Buffer.from([0, 17]), f.subarray(38, 40)]));
  const hdr = Buffer.alloc(VIRTIO_NET_HDR_V1_SIZE);
  if (partial) {
    f.writeUInt16BE(pseudo, 40);
    hdr[0] = 1;
    hdr.writeUInt16LE(34, 6);
    hdr.writeUInt16LE(6, 8);
  } else {
    f.writeUInt16BE(~sum16(f, 34, f.length, pseudo) & 0xffff, 40);
  }
  return { frame: f, hdr };
}

/** Whether the UDP checksum of an IPv4/UDP frame verifies. */
export function udpChecksumOk(f: Buffer): boolean {
  const pseudo = sum16(Buffer.concat([f.subarray(26, 34), Buffer.from([0, 17]), f.subarray(38, 40)]));
  return sum16(f, 34, f.length, pseudo) === 0xffff;
}

/** A logger that keeps its records (for rate-limit checks). */
export class CaptureLogger {
  readonly records: { level: string; message: string }[] = [];
  log(level: string, message: string): void {
    this.records.push({ level, message });
  }
}
