/**
 * Payload builders for hand-made vhost-user messages: the fuzzer writes wire structs itself so any
 * field can take any value, which the codec's encoder (rightly) refuses to produce.
 * @module
 */
import * as sys from '../src/sys/index.js';
import { FrontendReq } from '../src/vhost-user/constants.js';

/** Little-endian byte builder. */
export class Bytes {
  private b = new Uint8Array(64);
  private dv = new DataView(this.b.buffer);
  private n = 0;

  private room(k: number): void {
    if (this.n + k <= this.b.length) return;
    const nb = new Uint8Array(Math.max(this.b.length * 2, this.n + k));
    nb.set(this.b.subarray(0, this.n));
    this.b = nb;
    this.dv = new DataView(nb.buffer);
  }

  u8(v: number): this { this.room(1); this.dv.setUint8(this.n, v & 0xff); this.n += 1; return this; }
  u16(v: number): this { this.room(2); this.dv.setUint16(this.n, v & 0xffff, true); this.n += 2; return this; }
  u32(v: number): this { this.room(4); this.dv.setUint32(this.n, v >>> 0, true); this.n += 4; return this; }
  u64(v: bigint | number): this {
    this.room(8);
    this.dv.setBigUint64(this.n, BigInt.asUintN(64, BigInt(v)), true);
    this.n += 8;
    return this;
  }
  raw(b: Uint8Array): this { this.room(b.length); this.b.set(b, this.n); this.n += b.length; return this; }
  done(): Uint8Array { return this.b.slice(0, this.n); }
}

/** A memory region as on the wire (VhostUserMemoryRegion). */
export interface WireRegion {
  gpa: bigint;
  size: bigint;
  uaddr: bigint;
  offset: bigint;
}

/** Appends one VhostUserMemoryRegion. */
export function putRegion(b: Bytes, r: WireRegion): Bytes {
  return b.u64(r.gpa).u64(r.size).u64(r.uaddr).u64(r.offset);
}

/** SET_MEM_TABLE payload: nregions, padding, regions. */
export function memTablePayload(regions: readonly WireRegion[], declared = regions.length): Uint8Array {
  const b = new Bytes().u32(declared).u32(0);
  for (const r of regions) putRegion(b, r);
  return b.done();
}

/** ADD_MEM_REG / REM_MEM_REG payload: padding then one region. */
export function singleRegionPayload(r: WireRegion): Uint8Array {
  return putRegion(new Bytes().u64(0), r).done();
}

/** vhost_vring_state payload. */
export function vringState(index: number, num: number): Uint8Array {
  return new Bytes().u32(index).u32(num).done();
}

/** vhost_vring_addr payload. */
export function vringAddr(index: number, flags: number, desc: bigint, used: bigint, avail: bigint, log: bigint): Uint8Array {
  return new Bytes().u32(index).u32(flags).u64(desc).u64(used).u64(avail).u64(log).done();
}

/** u64 payload. */
export function u64Payload(v: bigint | number): Uint8Array {
  return new Bytes().u64(v).done();
}

/** One message of a case's session set-up: [name, request, payload, fds]. */
export type SetupStep = [string, number, Uint8Array, number[]];

/**
 * The messages that bring ring `q` up: its size, base, addresses (front-end user addresses; the
 * wire's "avail" field carries the driver area and "used" the device area, for packed rings too),
 * call, error and kick eventfds, then SET_VRING_ENABLE.
 */
export function vringSetupSteps(
  q: number, size: number, base: number, area: { desc: bigint; driver: bigint; device: bigint }, fds: { call: number; err: number; kick: number },
): SetupStep[] {
  return [
    ['SET_VRING_NUM', FrontendReq.SET_VRING_NUM, vringState(q, size), []],
    ['SET_VRING_BASE', FrontendReq.SET_VRING_BASE, vringState(q, base), []],
    ['SET_VRING_ADDR', FrontendReq.SET_VRING_ADDR, vringAddr(q, 0, area.desc, area.device, area.driver, 0n), []],
    ['SET_VRING_CALL', FrontendReq.SET_VRING_CALL, u64Payload(q), [fds.call]],
    ['SET_VRING_ERR', FrontendReq.SET_VRING_ERR, u64Payload(q), [fds.err]],
    ['SET_VRING_KICK', FrontendReq.SET_VRING_KICK, u64Payload(q), [fds.kick]],
    ['SET_VRING_ENABLE', FrontendReq.SET_VRING_ENABLE, vringState(q, 1), []],
  ];
}

/** The fds of one message and their owner: everything is closed once the message went out. */
export class FdBag {
  readonly fds: number[] = [];

  /** An eventfd. */
  eventfd(): number {
    return this.add(sys.eventfd());
  }

  /** A memfd of `size` bytes (sparse: nothing is written). */
  memfd(size: number): number {
    const fd = sys.memfdCreate('fuzz-guest');
    this.fds.push(fd);
    sys.ftruncate(fd, size);
    return fd;
  }

  /** One end of a socketpair (the other end is closed at once: a dead peer). */
  socket(): number {
    const [a, b] = sys.socketpair();
    sys.close(b);
    return this.add(a);
  }

  add(fd: number): number {
    this.fds.push(fd);
    return fd;
  }

  /** Closes every fd. */
  close(): void {
    for (const fd of this.fds.splice(0)) {
      try { sys.close(fd); } catch { /* already closed */ }
    }
  }
}
