/**
 * Descriptor-chain cases: a valid blk session with guest memory in two memfds (adjacent or with a
 * hole between them) and a live queue, then the guest side writes descriptors directly — valid blk
 * requests in bulk, and hostile batches: loops, out-of-range indices and heads, overflowing
 * lengths, nested and malformed indirect tables, chains across the region boundary, avail index
 * jumps, spurious kicks. Every published head must come back exactly once, unless the daemon
 * declares the ring broken by signalling its error fd.
 * @module
 */
import * as sys from '../src/sys/index.js';
import { GuestMemory, GuestRegion } from '../src/memory/index.js';
import { SplitQueueDriver, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, splitRingLayout } from '../src/queue/index.js';
import { FrontendReq } from '../src/vhost-user/constants.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../src/virtio/features.js';
import { VERSION_1, NEED_REPLY_FLAG, message, type RawClient, type WaitResult } from './client.js';
import { FUZZ_PROTOCOL_FEATURES } from './protocol.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT } from '../src/vhost-user/negotiate.js';
import type { Rng } from './rng.js';
import { packedChainCase } from './packed-chains.js';

/** Share of chain cases run on a packed ring (VIRTIO_F_RING_PACKED negotiated). */
const PACKED_SHARE = 0.4;
import { memTablePayload, u64Payload, vringSetupSteps, type SetupStep, type WireRegion } from './wire.js';

export const MiB = 1024 * 1024;
export const REGION_SIZE = 1 * MiB;
export const UADDR_A = 0x7f10_0000_0000;
const UADDR_B = 0x7f20_0000_0000;
/** Guest layout inside region A. */
export const RING_GPA = 0x0;
export const HDR_GPA = 0x10000;
export const STATUS_GPA = 0x11000;
export const INDIRECT_GPA = 0x12000;
export const DATA_GPA = 0x20000;
export const DATA_STRIDE = 0x800;
/** Sectors of the daemon's RAM disk the fuzzer writes (it runs with --ram-size-mib 8). */
export const DISK_SECTORS = (8 * MiB) / 512;
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_S_OK = 0;
export const bit = (n: number): bigint => 1n << BigInt(n);

/** Counters and outcome of one chain case. */
export interface ChainCaseStats {
  messages: number;
  chains: number;
  hostileChains: number;
  batches: number;
  /** The ring was declared broken (error fd signalled). */
  broken: boolean;
  /** A failure seen inside the case (setup refused, heads never returned, wrong status...). */
  failure: { kind: string; detail: string } | null;
  /** The same-connection GET_FEATURES check after the hostile part. */
  check: 'ok' | 'closed' | 'timeout' | 'skipped';
}

/** Guest memory of one case: two 1 MiB memfds, region B adjacent to A or behind a hole. */
export class CaseMemory {
  readonly fds: number[] = [];
  readonly maps: sys.Mapping[] = [];
  readonly memory: GuestMemory;
  readonly wire: WireRegion[];
  readonly bGpa: number;

  constructor(gap: boolean) {
    this.bGpa = gap ? 4 * MiB : REGION_SIZE;
    const regions: GuestRegion[] = [];
    for (const [gpa, uaddr] of [[0, UADDR_A], [this.bGpa, UADDR_B]] as const) {
      const fd = sys.memfdCreate('fuzz-chain');
      this.fds.push(fd);
      sys.ftruncate(fd, REGION_SIZE);
      const m = sys.mmap(fd, 0, REGION_SIZE);
      this.maps.push(m);
      regions.push(new GuestRegion({ guestPhysAddr: gpa, size: REGION_SIZE, userAddr: uaddr, backing: m }));
    }
    this.memory = new GuestMemory(regions);
    this.wire = [
      { gpa: 0n, size: BigInt(REGION_SIZE), uaddr: BigInt(UADDR_A), offset: 0n },
      { gpa: BigInt(this.bGpa), size: BigInt(REGION_SIZE), uaddr: BigInt(UADDR_B), offset: 0n },
    ];
  }

  close(): void {
    for (const m of this.maps) m.unmap();
    for (const fd of this.fds) sys.close(fd);
  }
}

/** Waits on the call and error eventfds of one queue. */
export class QueueEvents {
  errFired = false;
  private wake: (() => void) | null = null;
  private readonly watchers: sys.FdWatcher[];

  constructor(readonly callFd: number, readonly errFd: number) {
    this.watchers = [
      sys.watchFd(callFd, sys.POLLIN, () => { sys.eventfdRead(callFd); this.fire(); }),
      sys.watchFd(errFd, sys.POLLIN, () => { if (sys.eventfdRead(errFd) !== null) this.errFired = true; this.fire(); }),
    ];
  }

  private fire(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Resolves on the next call or error event, or after `ms` (a guard: the caller re-checks its condition). */
  next(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.wake = null; resolve(); }, ms);
      this.wake = () => { clearTimeout(timer); resolve(); };
    });
  }

  close(): void {
    for (const w of this.watchers) w.close();
  }
}

/** What {@link runBatch} needs of a driver: reap used entries, ask for the next interrupt. */
export interface UsedReaper {
  popUsed(): unknown;
  enableInterrupts(): void;
}

/** One request-chain placement inside a batch. */
export interface Placed {
  head: number;
  /** Valid request: its slot (status byte to check); -1 for a hostile chain. */
  slot: number;
}

/** Sends `bytes` with NEED_REPLY semantics and waits for the ack or reply. */
export async function ask(client: RawClient, request: number, payload: Uint8Array, fds: number[], timeoutMs: number): Promise<WaitResult> {
  return client.roundTrip(message(request, VERSION_1 | NEED_REPLY_FLAG, payload), fds, timeoutMs);
}

export function ackOk(r: WaitResult): boolean {
  if (r === 'closed' || r === 'timeout') return false;
  return r.payload.length < 8 || new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true) === 0n || r.request === FrontendReq.GET_FEATURES || r.request === FrontendReq.GET_PROTOCOL_FEATURES;
}

export function u64Of(r: WaitResult): bigint {
  if (r === 'closed' || r === 'timeout' || r.payload.length < 8) return 0n;
  return new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true);
}

/** Runs one chain case on `client`: a split ring, or a packed one ({@link packedChainCase}). */
/**
 * The opening every chain case shares: GET_FEATURES, GET_PROTOCOL_FEATURES, then
 * SET_PROTOCOL_FEATURES with the fuzzer's subset (3 messages). Returns the offered features, or
 * why the session could not start.
 */
export async function openSession(client: RawClient, timeoutMs: number): Promise<bigint | string> {
  const offered = u64Of(await ask(client, FrontendReq.GET_FEATURES, new Uint8Array(0), [], timeoutMs));
  const offeredPf = u64Of(await ask(client, FrontendReq.GET_PROTOCOL_FEATURES, new Uint8Array(0), [], timeoutMs));
  if (offered === 0n) return 'GET_FEATURES got no answer';
  if (!(await client.send(message(FrontendReq.SET_PROTOCOL_FEATURES, VERSION_1, u64Payload(offeredPf & FUZZ_PROTOCOL_FEATURES))))) return 'closed at SET_PROTOCOL_FEATURES';
  return offered;
}

export async function chainCase(rng: Rng, client: RawClient, timeoutMs: number): Promise<ChainCaseStats> {
  if (rng.chance(PACKED_SHARE)) return packedChainCase(rng, client, timeoutMs);
  const stats: ChainCaseStats = { messages: 0, chains: 0, hostileChains: 0, batches: 0, broken: false, failure: null, check: 'skipped' };
  const fail = (kind: string, detail: string): ChainCaseStats => {
    stats.failure ??= { kind, detail };
    return stats;
  };
  const mem = new CaseMemory(rng.chance(0.3));
  const kickFd = sys.eventfd();
  const callFd = sys.eventfd();
  const errFd = sys.eventfd();
  const events = new QueueEvents(callFd, errFd);
  try {
    // --- a valid session: negotiation, memory table, one queue -------------------------------
    const offered = await openSession(client, timeoutMs);
    if (typeof offered === 'string') return fail('setup', offered);
    stats.messages += 3;
    // Everything offered that a plain split-ring front-end can take (FLUSH included: the valid
    // batches send flushes), as negotiate() does.
    let features = offered & ~FEATURES_NEEDING_FRONTEND_SUPPORT;
    if (rng.chance(0.3)) features &= ~bit(VIRTIO_RING_F_EVENT_IDX);
    if (rng.chance(0.2)) features &= ~bit(VIRTIO_RING_F_INDIRECT_DESC);
    const eventIdx = (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    const indirect = (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n;
    const qsize = rng.pick([16, 64, 128, 256, 256, 256]);
    const q = rng.chance(0.8) ? 0 : 1;
    const layout = splitRingLayout(qsize, RING_GPA);
    const uva = (gpa: number): bigint => BigInt(UADDR_A + gpa);
    const steps: SetupStep[] = [
      ['SET_OWNER', FrontendReq.SET_OWNER, new Uint8Array(0), []],
      ['SET_FEATURES', FrontendReq.SET_FEATURES, u64Payload(features), []],
      ['SET_MEM_TABLE', FrontendReq.SET_MEM_TABLE, memTablePayload(mem.wire), mem.fds],
      ...vringSetupSteps(q, qsize, 0, { desc: uva(layout.descGpa), driver: uva(layout.availGpa), device: uva(layout.usedGpa) }, { call: callFd, err: errFd, kick: kickFd }),
    ];
    // The driver zeroes the rings before the back-end may look at them.
    const driver = new SplitQueueDriver(mem.memory, qsize, layout.descGpa, layout.availGpa, layout.usedGpa, { eventIdx });
    for (const [name, request, payload, fds] of steps) {
      const r = await ask(client, request, payload, fds, timeoutMs);
      stats.messages++;
      if (!ackOk(r)) return fail('setup', `${name}: ${typeof r === 'string' ? r : 'refused'}`);
    }

    // --- valid batches, each fully completed and checked ---------------------------------------
    const batches = rng.range(1, 12);
    for (let b = 0; b < batches; b++) {
      const placed = validBatch(rng, driver, mem, qsize, indirect, qsize);
      const res = await runBatch(driver, events, kickFd, placed.length, timeoutMs);
      stats.batches++;
      stats.chains += placed.length;
      if (res !== 'ok') return fail(res === 'broken' ? 'broken-on-valid' : 'stall', `valid batch ${b}: ${placed.length} chains, ${res}`);
      for (const p of placed) {
        const status = mem.memory.readU8(STATUS_GPA + p.slot);
        if (status !== VIRTIO_BLK_S_OK) return fail('wrong-status', `valid batch ${b}: slot ${p.slot} status ${status}`);
      }
    }

    // --- a hostile batch, then the same connection must answer ---------------------------------
    if (rng.chance(0.85)) {
      const { published, jump } = hostileBatch(rng, driver, mem, qsize);
      stats.hostileChains += published;
      stats.chains += published;
      stats.batches++;
      // A jumped avail index makes the number of heads to return meaningless: only a broken ring
      // (error fd) or nothing is acceptable then, so wait for the error fd alone.
      const res = await runBatch(driver, events, kickFd, jump ? Number.POSITIVE_INFINITY : published, timeoutMs);
      stats.broken = res === 'broken';
      // A guest kicks again, whatever the device did with the ring (broken or not): the daemon must
      // neither spin on nor process a broken ring.
      const kicks = rng.range(1, 3);
      for (let k = 0; k < kicks; k++) sys.eventfdWrite(kickFd, 1);
      if (res === 'timeout') fail(jump ? 'silent-stall' : 'stall', `hostile batch (${published} heads${jump ? ', avail idx jump' : ''}): neither completed nor error fd`);
      const r = await ask(client, FrontendReq.GET_FEATURES, new Uint8Array(0), [], timeoutMs);
      stats.messages++;
      stats.check = r === 'closed' || r === 'timeout' ? r : 'ok';
      // A ring that survived must still serve a valid batch.
      if (!stats.broken && !jump && stats.check === 'ok' && stats.failure === null) {
        const placed = validBatch(rng, driver, mem, qsize, indirect, Math.min(qsize, 32));
        const res2 = await runBatch(driver, events, kickFd, placed.length, timeoutMs);
        stats.chains += placed.length;
        stats.batches++;
        if (res2 === 'timeout') fail('stall-after-hostile', `valid batch after a survived hostile batch: ${placed.length} chains not returned`);
      }
    }
    return stats;
  } finally {
    events.close();
    sys.close(kickFd);
    sys.close(callFd);
    sys.close(errFd);
    mem.close();
  }
}

/** Places up to `max` valid blk requests (direct 3-descriptor chains or indirect ones) and publishes them. */
function validBatch(rng: Rng, d: SplitQueueDriver, mem: CaseMemory, qsize: number, indirect: boolean, max: number): Placed[] {
  const placed: Placed[] = [];
  let desc = 0;
  const useIndirect = indirect && rng.chance(0.5);
  const count = Math.min(max, 256, useIndirect ? qsize : Math.floor(qsize / 3));
  for (let s = 0; s < count; s++) {
    const type = rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID]);
    const len = type === VIRTIO_BLK_T_GET_ID ? 20 : 512 * rng.range(1, 4);
    const sector = rng.int(DISK_SECTORS - 4);
    const hdr = HDR_GPA + 16 * s;
    mem.memory.writeU32(hdr, type);
    mem.memory.writeU32(hdr + 4, 0);
    mem.memory.writeU64(hdr + 8, BigInt(sector));
    mem.memory.writeU8(STATUS_GPA + s, 0xff);
    const dataFlags = type === VIRTIO_BLK_T_OUT ? 0 : VIRTQ_DESC_F_WRITE;
    const bufs: Array<[number, number, number]> = [[hdr, 16, 0]];
    if (type !== VIRTIO_BLK_T_FLUSH) bufs.push([DATA_GPA + DATA_STRIDE * s, len, dataFlags]);
    bufs.push([STATUS_GPA + s, 1, VIRTQ_DESC_F_WRITE]);
    let head: number;
    if (useIndirect) {
      const table = INDIRECT_GPA + 64 * s;
      bufs.forEach(([gpa, l, f], k) => d.writeIndirectDesc(table, k, gpa, l, f | (k < bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), k + 1));
      head = desc++;
      d.writeDesc(head, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      head = desc;
      bufs.forEach(([gpa, l, f], k) => d.writeDesc(desc + k, gpa, l, f | (k < bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), desc + k + 1));
      desc += bufs.length;
    }
    d.publish(head);
    placed.push({ head, slot: s });
  }
  return placed;
}

/**
 * Writes a batch of hostile chains (and some valid ones among them) and publishes their heads;
 * sometimes jumps avail.idx past the queue size. Returns the heads published and whether it jumped.
 */
function hostileBatch(rng: Rng, d: SplitQueueDriver, mem: CaseMemory, qsize: number): { published: number; jump: boolean } {
  let published = 0;
  const n = rng.range(1, Math.min(16, qsize));
  const per = Math.max(1, Math.floor(qsize / n));
  const MEM_END = mem.bGpa + REGION_SIZE;
  for (let c = 0; c < n; c++) {
    const base = c * per;
    const last = base + per - 1;
    const slot = 200 + (c % 50);
    const hdr = HDR_GPA + 16 * slot;
    mem.memory.writeU32(hdr, rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, rng.u32()]));
    mem.memory.writeU64(hdr + 8, rng.chance(0.5) ? BigInt(rng.int(DISK_SECTORS)) : rng.interesting64());
    let head = base;
    switch (rng.int(12)) {
      case 0: // a loop: the last descriptor points back into the chain
        for (let k = base; k <= last; k++) d.writeDesc(k, hdr, 16, VIRTQ_DESC_F_NEXT, k < last ? k + 1 : base + rng.int(per));
        break;
      case 1: // next out of range
        d.writeDesc(base, hdr, 16, VIRTQ_DESC_F_NEXT, qsize + rng.int(0x10000 - qsize));
        break;
      case 2: // head out of range in the avail ring
        head = qsize + rng.int(0x10000 - qsize);
        break;
      case 3: // overflowing lengths and addresses
        d.writeDesc(base, rng.pick([hdr, 2 ** 53 - 8, MEM_END - 8, mem.bGpa - 8]), rng.pick([0xffffffff, 0x80000000, 0x7fffffff, REGION_SIZE + 1]), rng.chance(0.5) ? VIRTQ_DESC_F_WRITE : 0, 0);
        break;
      case 4: // a buffer outside guest memory or in the hole between the regions
        d.writeDesc(base, hdr, 16, VIRTQ_DESC_F_NEXT, base + 1);
        d.writeDesc(base + 1 > last ? base : base + 1, rng.pick([2 * MiB + 4096, 16 * MiB, 2 ** 40]), 512, VIRTQ_DESC_F_WRITE, 0);
        break;
      case 5: { // nested indirect: an indirect table that points to another indirect table
        const t1 = INDIRECT_GPA + 64 * slot;
        const t2 = INDIRECT_GPA + 64 * ((slot + 1) % 256);
        d.writeIndirectDesc(t1, 0, hdr, 16, VIRTQ_DESC_F_NEXT, 1);
        d.writeIndirectDesc(t1, 1, t2, 32, VIRTQ_DESC_F_INDIRECT, 0);
        d.writeIndirectDesc(t2, 0, STATUS_GPA + slot, 1, VIRTQ_DESC_F_WRITE, 0);
        d.writeDesc(base, t1, 32, VIRTQ_DESC_F_INDIRECT | (rng.chance(0.3) ? VIRTQ_DESC_F_NEXT : 0), base);
        break;
      }
      case 6: { // malformed indirect tables: odd length, empty, huge, out of memory, looping inside
        const t = INDIRECT_GPA + 64 * slot;
        const tlen = rng.pick([0, 15, 17, 48, 0xfff0, 0x100000, 0xffffffff]);
        d.writeIndirectDesc(t, 0, hdr, 16, VIRTQ_DESC_F_NEXT, rng.chance(0.5) ? 0 : rng.range(1, 300));
        d.writeIndirectDesc(t, 1, hdr, 16, VIRTQ_DESC_F_NEXT, 0);
        d.writeDesc(base, rng.chance(0.8) ? t : rng.pick([MEM_END, 2 ** 45]), tlen, VIRTQ_DESC_F_INDIRECT, 0);
        break;
      }
      case 7: { // a data buffer across the A/B boundary (valid when adjacent, a hole otherwise)
        d.writeDesc(base, hdr, 16, VIRTQ_DESC_F_NEXT, base + 1 <= last ? base + 1 : base);
        if (base + 2 <= last) {
          d.writeDesc(base + 1, REGION_SIZE - 256, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, base + 2);
          d.writeDesc(base + 2, STATUS_GPA + slot, 1, VIRTQ_DESC_F_WRITE, 0);
        }
        break;
      }
      case 8: // a chain longer than the queue through an indirect table of 1024 entries
        for (let k = 0; k < 1024 && INDIRECT_GPA + 16 * k < DATA_GPA; k++) {
          d.writeIndirectDesc(INDIRECT_GPA, k, hdr, 16, VIRTQ_DESC_F_NEXT, k + 1);
        }
        d.writeDesc(base, INDIRECT_GPA, 16 * 1024, VIRTQ_DESC_F_INDIRECT, 0);
        break;
      case 9: // zero-length and write-only header descriptors
        d.writeDesc(base, hdr, 0, rng.chance(0.5) ? VIRTQ_DESC_F_WRITE : 0, 0);
        break;
      case 10: // a random descriptor
        d.writeDesc(base, rng.chance(0.5) ? rng.int(2 * MiB) : rng.float() * 2 ** 53, rng.u32(), rng.u32() & 0xffff, rng.u32() & 0xffff);
        break;
      default: { // a valid request among the hostile ones
        mem.memory.writeU32(hdr, VIRTIO_BLK_T_IN);
        mem.memory.writeU64(hdr + 8, 0n);
        d.writeDesc(base, hdr, 16, VIRTQ_DESC_F_NEXT, base + 1 <= last ? base + 1 : base);
        if (base + 1 <= last) d.writeDesc(base + 1, STATUS_GPA + slot, 1, VIRTQ_DESC_F_WRITE, 0);
      }
    }
    d.publish(head);
    published++;
  }
  // The guest can write any avail index: jump so that, counted from what the device last saw
  // (before this batch), more than the queue size is pending. A larger jump wraps modulo 2^16 back
  // into a legal distance, which is then an ordinary (if odd) batch, not a jump.
  if (rng.chance(0.15) && 0xffff - qsize - published >= 1) {
    d.setAvailIdx(d.availIdx + qsize + rng.range(1, 0xffff - qsize - published));
    return { published, jump: true };
  }
  return { published, jump: false };
}

/**
 * Kicks and waits until `want` used entries arrived ('ok'), the error fd fired ('broken'), or
 * `timeoutMs` passed without either ('timeout').
 */
export async function runBatch(d: UsedReaper, ev: QueueEvents, kickFd: number, want: number, timeoutMs: number): Promise<'ok' | 'broken' | 'timeout'> {
  sys.eventfdWrite(kickFd, 1);
  const deadline = Date.now() + timeoutMs;
  let got = 0;
  for (;;) {
    while (d.popUsed() !== null) got++;
    if (got >= want) return 'ok';
    if (ev.errFired) return 'broken';
    d.enableInterrupts();
    while (d.popUsed() !== null) got++;
    if (got >= want) return 'ok';
    const left = deadline - Date.now();
    if (left <= 0) return 'timeout';
    await ev.next(left);
  }
}
