/**
 * Shared setup of the virtio-blk unit tests: a memfd-backed guest RAM mapped twice (device side via
 * GuestMemoryAtomic + a real Vring, driver side via SplitQueueDriver), and helpers that place
 * virtio_blk_req chains exactly as a guest driver does.
 */
import {
  GuestMemory, GuestMemoryAtomic, mapGuestRegion, type GuestRegion,
} from '../../src/memory/index.js';
import { SplitQueueDriver, splitRingLayout, type GuestBuffer, type UsedElement } from '../../src/queue/index.js';
import { QueueServer, Vring, type ChainHandler } from '../../src/backend/index.js';
import { close, eventfd, eventfdRead, ftruncate, memfdCreate } from '../../src/sys/index.js';
import type { LogLevel, Logger } from '../../src/log.js';
import { VhostUserBlkBackend, type VhostUserBlkBackendOptions } from '../../src/devices/blk/index.js';

/** Guest-physical base of the test RAM. */
export const RAM = 0x10_0000;
/** Size of the test RAM. */
export const RAM_SIZE = 16 << 20;
/** Queue size used by the tests. */
export const QSIZE = 256;

/** A logger that keeps records for assertions. */
export class CaptureLogger implements Logger {
  readonly records: { level: LogLevel; message: string }[] = [];
  log(level: LogLevel, message: string): void {
    this.records.push({ level, message });
  }
  /** True when some record contains every fragment. */
  has(...fragments: string[]): boolean {
    return this.records.some((r) => fragments.every((f) => r.message.includes(f)));
  }
}

/** One request as placed on the ring. */
export interface PlacedRequest {
  head: number;
  statusGpa: number;
}

/** Options for {@link BlkRig.submit}. */
export interface SubmitOptions {
  /** Device-readable data buffers after the header (OUT data, DISCARD segments). */
  out?: readonly Uint8Array[];
  /** Device-writable data buffer lengths before the status byte (IN / GET_ID). */
  inLens?: readonly number[];
  /** Leave out the status byte (malformed). */
  noStatus?: boolean;
  /** Header length (default 16; shorter = malformed). */
  headerLen?: number;
  /** Reserved field of the header. */
  reserved?: number;
}

/** A device and a driver sharing one memfd-backed guest RAM. */
export class BlkRig {
  readonly fd: number;
  readonly atomic: GuestMemoryAtomic;
  readonly drvMem: GuestMemory;
  readonly drv: SplitQueueDriver;
  readonly vrings: Vring[] = [];
  readonly callFd: number;
  readonly errFd: number;
  readonly backend: VhostUserBlkBackend;
  /** The framework's server of queue 0 (what the daemon's event handler runs). */
  readonly server: QueueServer;
  readonly logger = new CaptureLogger();
  private bump = RAM + 0x10_0000;
  /** Buffers of each placed head, so IN data can be read back. */
  readonly inBufs = new Map<number, GuestBuffer[]>();

  constructor(opts: Omit<VhostUserBlkBackendOptions, 'logger'>, ackAll = true, handler?: ChainHandler) {
    this.fd = memfdCreate('blk-test');
    ftruncate(this.fd, RAM_SIZE);
    const desc = { guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 };
    this.atomic = new GuestMemoryAtomic(new GuestMemory([mapGuestRegion(desc, this.fd)]));
    this.drvMem = new GuestMemory([mapGuestRegion(desc, this.fd)]);
    this.backend = new VhostUserBlkBackend({ ...opts, logger: this.logger });
    const l = splitRingLayout(QSIZE, RAM);
    this.drv = new SplitQueueDriver(this.drvMem, QSIZE, l.descGpa, l.availGpa, l.usedGpa);
    this.callFd = eventfd();
    this.errFd = eventfd();
    const v = new Vring(0, QSIZE);
    v.setMemory(this.atomic);
    v.queue.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
    v.setCallFd(this.callFd);
    v.setErrFd(this.errFd);
    v.setStarted(true);
    v.setEnabled(true);
    this.vrings.push(v);
    this.server = new QueueServer(v, handler ?? ((chain, vring, done) => this.backend.processChain(0, chain, vring, done)), { maxInFlight: this.backend.maxInFlight(0), logger: this.logger, name: 'vhost-user-blk q0' });
    if (ackAll) this.backend.ackedFeatures(this.backend.features());
  }

  /** Allocates `len` bytes of guest RAM (16-byte aligned, never reused). */
  alloc(len: number): number {
    const gpa = this.bump;
    this.bump += Math.ceil(Math.max(len, 1) / 16) * 16;
    if (this.bump > RAM + RAM_SIZE) throw new Error('test RAM exhausted');
    return gpa;
  }

  /** Places a virtio_blk_req chain; returns its head and status address. */
  submit(type: number, sector: bigint | number, o: SubmitOptions = {}): PlacedRequest {
    const hlen = o.headerLen ?? 16;
    const hdr = this.alloc(16);
    this.drvMem.writeU32(hdr, type);
    this.drvMem.writeU32(hdr + 4, o.reserved ?? 0);
    this.drvMem.writeU64(hdr + 8, BigInt.asUintN(64, BigInt(sector)));
    const readable: GuestBuffer[] = [{ gpa: hdr, len: hlen }];
    for (const d of o.out ?? []) {
      const gpa = this.alloc(d.length);
      this.drvMem.write(gpa, d);
      readable.push({ gpa, len: d.length });
    }
    const writable: GuestBuffer[] = [];
    for (const n of o.inLens ?? []) {
      const gpa = this.alloc(n);
      this.drvMem.translate(gpa, n).fill(0xee);
      writable.push({ gpa, len: n });
    }
    const statusGpa = o.noStatus === true ? -1 : this.alloc(1);
    if (statusGpa >= 0) {
      this.drvMem.writeU8(statusGpa, 0xff);
      writable.push({ gpa: statusGpa, len: 1 });
    }
    const head = this.drv.addChain(readable, writable);
    this.inBufs.set(head, writable.slice(0, (o.inLens ?? []).length));
    return { head, statusGpa };
  }

  /** Kicks queue 0 (as the daemon's event handler would). */
  kick(): void {
    this.server.kick();
  }

  /** Kicks, waits until nothing is in flight, and returns every used element. */
  async run(): Promise<UsedElement[]> {
    this.kick();
    await this.server.quiesce();
    const out: UsedElement[] = [];
    for (let u; (u = this.drv.popUsed()) !== null;) out.push(u);
    return out;
  }

  /** Status byte of a completed request. */
  status(r: PlacedRequest): number {
    return this.drvMem.readU8(r.statusGpa);
  }

  /** Concatenated IN data of a completed request. */
  inData(r: PlacedRequest): Uint8Array {
    const bufs = this.inBufs.get(r.head) ?? [];
    const out = new Uint8Array(bufs.reduce((n, b) => n + b.len, 0));
    let at = 0;
    for (const b of bufs) {
      out.set(this.drvMem.translate(b.gpa, b.len), at);
      at += b.len;
    }
    return out;
  }

  /** Whether the call eventfd was signalled since the last check. */
  called(): boolean {
    return eventfdRead(this.callFd) !== null;
  }

  /** Whether the err eventfd was signalled since the last check. */
  errored(): boolean {
    return eventfdRead(this.errFd) !== null;
  }

  /** Releases every fd and mapping. */
  close(): void {
    for (const v of this.vrings) v.reset(); // closes call/err fds
    this.atomic.close();
    for (const r of this.drvMem.regions as readonly GuestRegion[]) r.unmap();
    close(this.fd);
  }
}

/** Deterministic test pattern: byte i = (seed + i * 7) & 0xff. */
export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (seed + i * 7) & 0xff;
  return b;
}

/** Encodes discard / write-zeroes segments. */
export function dwzSegments(segs: readonly { sector: bigint | number; num: number; flags?: number }[]): Uint8Array {
  const b = new Uint8Array(16 * segs.length);
  const dv = new DataView(b.buffer);
  segs.forEach((s, i) => {
    dv.setBigUint64(16 * i, BigInt.asUintN(64, BigInt(s.sector)), true);
    dv.setUint32(16 * i + 8, s.num, true);
    dv.setUint32(16 * i + 12, s.flags ?? 0, true);
  });
  return b;
}
