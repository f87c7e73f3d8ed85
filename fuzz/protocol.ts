/**
 * Protocol cases: one connection per case, a valid negotiation (as QEMU does it) followed by a
 * stream of mutated requests — hostile field values, wrong fd counts with real memfds and
 * eventfds, regions over short or huge sparse memfds with rings placed in them and kicked — and
 * sometimes a framing mutation (flipped header bits, lying sizes, truncation, garbage) at the end.
 * @module
 */
import * as sys from '../src/sys/index.js';
import { FrontendReq, ProtocolFeature, protocolFeatureMask } from '../src/vhost-user/constants.js';
import {
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../src/virtio/features.js';
import { HEADER_SIZE, NEED_REPLY_FLAG, VERSION_1, message, type RawClient } from './client.js';
import type { Rng } from './rng.js';
import {
  Bytes, FdBag, memTablePayload, singleRegionPayload, u64Payload, vringAddr, vringState, type WireRegion,
} from './wire.js';

const bit = (n: number): bigint => 1n << BigInt(n);
const KiB = 1024;
const MiB = 1024 * KiB;

/** Features a blk front-end would acknowledge. */
export const BLK_FRONTEND_FEATURES: bigint =
  bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC);

/**
 * What protocol cases aim at for one device: the features its usual front-end acknowledges (the
 * valid negotiation and the base of mutated SET_FEATURES) and how many queues it has (valid queue
 * indices are below it; hostile ones start there).
 */
export interface ProtocolTarget {
  frontendFeatures: bigint;
  numQueues: number;
}

/** The blk daemon as the fuzzer runs it (2 request queues). */
export const BLK_PROTOCOL: ProtocolTarget = { frontendFeatures: BLK_FRONTEND_FEATURES, numQueues: 2 };

/** Protocol features the fuzzer acknowledges: REPLY_ACK first, so rejected requests keep the connection. */
export const FUZZ_PROTOCOL_FEATURES: bigint = [
  ProtocolFeature.REPLY_ACK, ProtocolFeature.MQ, ProtocolFeature.CONFIG, ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS, ProtocolFeature.RESET_DEVICE,
].reduce((m, b) => m | protocolFeatureMask(b), 0n);

/** One message to send: bytes, fds to attach (owned by `bag`). */
export interface Outgoing {
  bytes: Uint8Array;
  fds: number[];
}

/** What a session has declared so far, so later messages aim at it. */
class SessionState {
  /** Regions sent in SET_MEM_TABLE / ADD_MEM_REG. */
  regions: WireRegion[] = [];
  /** Kick eventfds handed to the daemon (kept open to kick them later). */
  kicks: number[] = [];
  /** Fds that live for the whole session. */
  readonly keep = new FdBag();
}

/** A valid request with flags version 1 (+ NEED_REPLY with probability `ack`). */
function req(rng: Rng, request: number, payload: Uint8Array, ack = 0.97): Uint8Array {
  return message(request, VERSION_1 | (rng.chance(ack) ? NEED_REPLY_FLAG : 0), payload);
}

/** The negotiation prefix: QEMU's order, with REPLY_ACK acknowledged in almost every session. */
export function negotiation(rng: Rng, target: ProtocolTarget): Uint8Array[] {
  const pf = rng.chance(0.95) ? FUZZ_PROTOCOL_FEATURES : rng.u64() & ((1n << 20n) - 1n);
  const f = rng.chance(0.9) ? target.frontendFeatures : rng.interesting64();
  return [
    message(FrontendReq.GET_FEATURES, VERSION_1, new Uint8Array(0)),
    message(FrontendReq.GET_PROTOCOL_FEATURES, VERSION_1, new Uint8Array(0)),
    message(FrontendReq.SET_PROTOCOL_FEATURES, VERSION_1, u64Payload(pf)),
    req(rng, FrontendReq.SET_OWNER, new Uint8Array(0)),
    req(rng, FrontendReq.SET_FEATURES, u64Payload(f)),
  ];
}

/** A queue index: mostly valid (below `n`), sometimes just out of range, sometimes anything. */
function queueIndex(rng: Rng, n: number): number {
  const r = rng.int(10);
  return r < 7 ? rng.int(n) : r < 9 ? rng.range(n, 300) : rng.u32();
}

/** A memfd size: a page, a MiB, or large and sparse. */
function memfdSize(rng: Rng): number {
  return rng.pick([4 * KiB, 64 * KiB, 1 * MiB, 2 ** rng.range(24, 40)]);
}

/** A region over `fdSize` bytes of file: exact, larger than the file (SIGBUS bait), huge, or wild. */
function region(rng: Rng, fdSize: number, index: number): WireRegion {
  const r = rng.int(10);
  const size = r < 4 ? BigInt(fdSize)
    : r < 7 ? BigInt(fdSize) * BigInt(rng.range(2, 256))
      : r < 9 ? 1n << BigInt(rng.range(40, 46))
        : rng.interesting64();
  const gpa = rng.chance(0.8) ? BigInt(index) << 32n : rng.interesting64();
  const uaddr = rng.chance(0.8) ? 0x7f00_0000_0000n + (BigInt(index) << 36n) : rng.interesting64();
  const offset = rng.chance(0.85) ? 0n : rng.chance(0.5) ? BigInt(rng.int(fdSize * 2)) : rng.interesting64();
  return { gpa, size, uaddr, offset };
}

/** An address inside a declared region (so rings and buffers land in mapped memory), or anywhere. */
function userAddrIn(rng: Rng, st: SessionState, span: number): bigint {
  const reg = st.regions.length > 0 && rng.chance(0.85) ? rng.pick(st.regions) : null;
  if (reg === null) return rng.interesting64();
  const room = reg.size > BigInt(span) ? reg.size - BigInt(span) : 1n;
  // Early in the region (where a short file still has pages) or anywhere in it.
  const off = rng.chance(0.5) ? BigInt(rng.int(0x4000)) & ~0xfn : (BigInt(rng.u32()) * BigInt(rng.u32())) % room & ~0xfn;
  return BigInt.asUintN(64, reg.uaddr + off);
}

/** Random extra fds: a wrong count of real fds of a wrong or right kind. */
function extraFds(rng: Rng, bag: FdBag, max: number): number[] {
  const out: number[] = [];
  const n = rng.int(max + 1);
  for (let i = 0; i < n; i++) {
    const k = rng.int(3);
    out.push(k === 0 ? bag.eventfd() : k === 1 ? bag.memfd(4 * KiB) : bag.socket());
  }
  return out;
}

/**
 * One body message with hostile values, keeping session state (regions, kick fds) so that later
 * messages use it. `bag` owns the message's fds (closed after sending); `st.keep` the session's.
 */
function bodyMessage(rng: Rng, t: ProtocolTarget, st: SessionState, bag: FdBag): Outgoing {
  const wrongFds = rng.chance(0.1);
  const kind = rng.int(100);
  if (kind < 12) {
    // SET_MEM_TABLE with 0..9 regions over real memfds (count mismatches sometimes).
    const n = rng.chance(0.9) ? rng.range(1, 3) : rng.range(0, 9);
    const regions: WireRegion[] = [];
    const fds: number[] = [];
    for (let i = 0; i < n; i++) {
      const size = memfdSize(rng);
      regions.push(region(rng, size, i));
      fds.push(bag.memfd(size));
    }
    if (!wrongFds) st.regions = regions.slice();
    const declared = rng.chance(0.9) ? n : rng.int(12);
    const fdList = wrongFds ? fds.slice(0, rng.int(fds.length + 1)).concat(extraFds(rng, bag, 2)).slice(0, 8) : fds.slice(0, 8);
    return { bytes: req(rng, FrontendReq.SET_MEM_TABLE, memTablePayload(regions, declared)), fds: fdList };
  }
  if (kind < 18) {
    const size = memfdSize(rng);
    const r = region(rng, size, rng.int(8));
    const add = rng.chance(0.7);
    if (add) st.regions.push(r);
    const fds = add ? [bag.memfd(size)] : [];
    return { bytes: req(rng, add ? FrontendReq.ADD_MEM_REG : FrontendReq.REM_MEM_REG, singleRegionPayload(r)), fds: wrongFds ? extraFds(rng, bag, 3) : fds };
  }
  if (kind < 28) {
    const num = rng.chance(0.7) ? 2 ** rng.range(0, 9) : rng.interesting32();
    return { bytes: req(rng, FrontendReq.SET_VRING_NUM, vringState(queueIndex(rng, t.numQueues), num)), fds: [] };
  }
  if (kind < 38) {
    const desc = userAddrIn(rng, st, 4096);
    const avail = rng.chance(0.8) ? desc + 4096n : userAddrIn(rng, st, 4096);
    const used = rng.chance(0.8) ? desc + 8192n : userAddrIn(rng, st, 4096);
    const flags = rng.chance(0.9) ? 0 : rng.interesting32();
    const log = rng.chance(0.9) ? 0n : rng.interesting64();
    return { bytes: req(rng, FrontendReq.SET_VRING_ADDR, vringAddr(queueIndex(rng, t.numQueues), flags, BigInt.asUintN(64, desc), BigInt.asUintN(64, used), BigInt.asUintN(64, avail), log)), fds: [] };
  }
  if (kind < 44) {
    const num = rng.chance(0.6) ? 0 : rng.chance(0.5) ? rng.int(0x10000) : rng.interesting32();
    return { bytes: req(rng, rng.chance(0.7) ? FrontendReq.SET_VRING_BASE : FrontendReq.GET_VRING_BASE, vringState(queueIndex(rng, t.numQueues), num), 1), fds: [] };
  }
  if (kind < 56) {
    // SET_VRING_KICK / CALL / ERR with an eventfd, without (NOFD bit), or with the wrong count.
    const request = rng.pick([FrontendReq.SET_VRING_KICK, FrontendReq.SET_VRING_KICK, FrontendReq.SET_VRING_CALL, FrontendReq.SET_VRING_ERR]);
    const nofd = rng.chance(0.1);
    let idx = BigInt(queueIndex(rng, t.numQueues) & (rng.chance(0.9) ? 0xff : 0xffffffff)) | (nofd ? 0x100n : 0n);
    if (rng.chance(0.05)) idx = rng.interesting64();
    let fds: number[] = [];
    if (!nofd) {
      const efd = st.keep.eventfd();
      if (request === FrontendReq.SET_VRING_KICK) st.kicks.push(efd);
      fds = [efd];
    }
    if (wrongFds) fds = fds.concat(extraFds(rng, bag, 3));
    return { bytes: req(rng, request, u64Payload(idx)), fds };
  }
  if (kind < 64) {
    const enable = rng.chance(0.8) ? 1 : rng.interesting32();
    return { bytes: req(rng, FrontendReq.SET_VRING_ENABLE, vringState(queueIndex(rng, t.numQueues), enable)), fds: [] };
  }
  if (kind < 68) {
    const f = rng.chance(0.5) ? t.frontendFeatures ^ (1n << BigInt(rng.int(64))) : rng.interesting64();
    return { bytes: req(rng, rng.chance(0.7) ? FrontendReq.SET_FEATURES : FrontendReq.SET_PROTOCOL_FEATURES, u64Payload(f)), fds: [] };
  }
  if (kind < 74) {
    // GET_CONFIG / SET_CONFIG with lying offsets and sizes.
    const offset = rng.chance(0.6) ? rng.int(64) : rng.interesting32();
    const size = rng.chance(0.6) ? rng.int(64) : rng.interesting32();
    const dataLen = rng.chance(0.8) ? Math.min(size, 256) : rng.int(300);
    const payload = new Bytes().u32(offset).u32(size).u32(rng.chance(0.9) ? 0 : rng.interesting32()).raw(rng.fill(new Uint8Array(dataLen))).done();
    return { bytes: req(rng, rng.chance(0.6) ? FrontendReq.GET_CONFIG : FrontendReq.SET_CONFIG, payload, 0.5), fds: [] };
  }
  if (kind < 78) {
    const status = rng.chance(0.7) ? rng.pick([0, 1, 3, 7, 15, 0x40, 0x80]) : rng.interesting64();
    return { bytes: req(rng, rng.chance(0.7) ? FrontendReq.SET_STATUS : FrontendReq.GET_STATUS, rng.chance(0.8) ? u64Payload(status) : new Uint8Array(0)), fds: [] };
  }
  if (kind < 82) {
    // In-band kick (needs INBAND_NOTIFICATIONS, which is not negotiated) and the log requests.
    const r = rng.int(3);
    if (r === 0) return { bytes: req(rng, FrontendReq.VRING_KICK, vringState(queueIndex(rng, t.numQueues), rng.interesting32())), fds: [] };
    if (r === 1) return { bytes: req(rng, FrontendReq.SET_LOG_BASE, new Bytes().u64(rng.interesting64()).u64(rng.interesting64()).done()), fds: [bag.memfd(memfdSize(rng))] };
    return { bytes: req(rng, FrontendReq.SET_LOG_FD, new Uint8Array(0)), fds: [bag.eventfd()] };
  }
  if (kind < 86) {
    // GET/SET_INFLIGHT_FD with hostile sizes.
    const payload = new Bytes().u64(rng.interesting64()).u64(rng.interesting64()).u16(rng.interesting32()).u16(rng.interesting32()).done();
    const set = rng.chance(0.5);
    return { bytes: req(rng, set ? FrontendReq.SET_INFLIGHT_FD : FrontendReq.GET_INFLIGHT_FD, payload), fds: set ? [bag.memfd(memfdSize(rng))] : [] };
  }
  if (kind < 90) {
    // Payload-less requests and requests with a socket fd.
    const r = rng.pick([FrontendReq.GET_FEATURES, FrontendReq.GET_PROTOCOL_FEATURES, FrontendReq.GET_QUEUE_NUM, FrontendReq.GET_MAX_MEM_SLOTS,
      FrontendReq.RESET_DEVICE, FrontendReq.RESET_OWNER, FrontendReq.SET_OWNER, FrontendReq.POSTCOPY_ADVISE, FrontendReq.POSTCOPY_LISTEN,
      FrontendReq.POSTCOPY_END, FrontendReq.CHECK_DEVICE_STATE, FrontendReq.SET_BACKEND_REQ_FD, FrontendReq.GPU_SET_SOCKET]);
    const fds = r === FrontendReq.SET_BACKEND_REQ_FD || r === FrontendReq.GPU_SET_SOCKET ? [bag.socket()] : [];
    return { bytes: req(rng, r, new Uint8Array(0)), fds: wrongFds ? extraFds(rng, bag, 4) : fds };
  }
  // Any request id (known, just past the newest, or wild) over random bytes and random fds.
  const r = rng.chance(0.7) ? rng.range(0, 47) : rng.u32();
  const payload = rng.fill(new Uint8Array(rng.chance(0.8) ? rng.int(80) : rng.int(4096)));
  return { bytes: req(rng, r, payload), fds: rng.chance(0.3) ? extraFds(rng, bag, 8) : [] };
}

/**
 * The "map a region and touch it" scenario that finds mapping bugs: a table with one region over a
 * memfd that may be shorter than the region, a ring inside the region (possibly past the end of
 * the file), a kick fd, enable, and a kick.
 */
function ringScenario(rng: Rng, t: ProtocolTarget, st: SessionState, bag: FdBag): Outgoing[] {
  const fdSize = rng.pick([4 * KiB, 64 * KiB, 1 * MiB]);
  const regSize = rng.chance(0.5) ? fdSize * rng.pick([2, 16, 256]) : rng.chance(0.5) ? fdSize : 2 ** rng.range(40, 46);
  const reg: WireRegion = { gpa: 0n, size: BigInt(regSize), uaddr: 0x7f00_0000_0000n, offset: 0n };
  st.regions = [reg];
  const q = rng.int(t.numQueues);
  const size = 2 ** rng.range(2, 8);
  // Ring offset: inside the file, just past it, or far into the region.
  const ringOff = BigInt(rng.pick([0, fdSize, Math.max(0, fdSize - 64), rng.int(regSize) & ~0xfff]));
  const desc = reg.uaddr + ringOff;
  const kick = st.keep.eventfd();
  st.kicks.push(kick);
  const out: Outgoing[] = [
    { bytes: req(rng, FrontendReq.SET_MEM_TABLE, memTablePayload([reg])), fds: [bag.memfd(fdSize)] },
    { bytes: req(rng, FrontendReq.SET_VRING_NUM, vringState(q, size)), fds: [] },
    { bytes: req(rng, FrontendReq.SET_VRING_BASE, vringState(q, 0)), fds: [] },
    { bytes: req(rng, FrontendReq.SET_VRING_ADDR, vringAddr(q, 0, desc, desc + BigInt(16 * size + 4096), desc + BigInt(16 * size), 0n)), fds: [] },
    { bytes: req(rng, FrontendReq.SET_VRING_CALL, u64Payload(q)), fds: [st.keep.eventfd()] },
    { bytes: req(rng, FrontendReq.SET_VRING_KICK, u64Payload(q)), fds: [kick] },
    { bytes: req(rng, FrontendReq.SET_VRING_ENABLE, vringState(q, 1)), fds: [] },
  ];
  return out;
}

/** A framing mutation of a valid message: bit flips, a lying size, a truncation or garbage. */
function framingMutation(rng: Rng): Uint8Array {
  const base = req(rng, rng.pick([FrontendReq.SET_VRING_NUM, FrontendReq.SET_FEATURES, FrontendReq.GET_FEATURES, FrontendReq.SET_VRING_ADDR]), rng.fill(new Uint8Array(rng.pick([0, 8, 40]))));
  const dv = new DataView(base.buffer);
  switch (rng.int(5)) {
    case 0: {
      const flips = rng.range(1, 4);
      for (let i = 0; i < flips; i++) base[rng.int(HEADER_SIZE)]! ^= 1 << rng.int(8);
      return base;
    }
    case 1: dv.setUint32(8, rng.interesting32(), true); return base;
    case 2: return base.subarray(0, rng.int(base.length));
    case 3: dv.setUint32(4, rng.interesting32(), true); return base;
    default: return rng.fill(new Uint8Array(rng.range(1, 200)));
  }
}

/** Counters of one protocol case. */
export interface ProtocolCaseStats {
  messages: number;
  kicks: number;
  /** The session ended with a framing mutation (no same-connection check). */
  framed: boolean;
  /** The same-connection GET_FEATURES check: 'ok', 'closed' (the daemon dropped us: allowed) or 'timeout'. */
  check: 'ok' | 'closed' | 'timeout' | 'skipped';
}

/** Runs one protocol case on `client` against the device `target` describes. */
export async function protocolCase(rng: Rng, client: RawClient, timeoutMs: number, target: ProtocolTarget = BLK_PROTOCOL): Promise<ProtocolCaseStats> {
  const st = new SessionState();
  const stats: ProtocolCaseStats = { messages: 0, kicks: 0, framed: false, check: 'skipped' };
  try {
    for (const m of negotiation(rng, target)) if (await client.send(m)) stats.messages++;
    const n = rng.chance(0.7) ? rng.range(20, 400) : rng.range(400, 2000);
    for (let i = 0; i < n && !client.closed; i++) {
      const bag = new FdBag();
      try {
        const batch = rng.chance(0.05) ? ringScenario(rng, target, st, bag) : [bodyMessage(rng, target, st, bag)];
        for (const m of batch) if (await client.send(m.bytes, m.fds)) stats.messages++;
      } finally {
        bag.close();
      }
      if (st.kicks.length > 0 && rng.chance(0.15)) {
        sys.eventfdWrite(rng.pick(st.kicks), 1);
        stats.kicks++;
      }
    }
    if (!client.closed && rng.chance(0.25)) {
      stats.framed = true;
      if (await client.send(framingMutation(rng))) stats.messages++;
      return stats;
    }
    const r = await client.roundTrip(message(FrontendReq.GET_FEATURES, VERSION_1, new Uint8Array(0)), [], timeoutMs);
    if (r !== 'closed' && r !== 'timeout') stats.messages++;
    stats.check = r === 'closed' || r === 'timeout' ? r : 'ok';
    return stats;
  } finally {
    st.keep.close();
  }
}

