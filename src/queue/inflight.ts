/**
 * Inflight I/O tracking (vhost-user spec, "Inflight I/O tracking"): the per-queue region of the
 * shared inflight area, for split and packed rings, updated in the spec's order so that a back-end
 * killed at any instruction leaves a region from which the next back-end finds exactly the
 * requests that were popped and not yet returned to the driver.
 *
 * The area is `num_queues` regions of {@link inflightQueueRegionSize} bytes each. Whether a ring is
 * split or packed is often not known yet when the front-end asks for the area (QEMU sends
 * GET_INFLIGHT_FD before SET_FEATURES), so every region is sized for the larger (packed) layout;
 * a region's layout is fixed when its ring first starts (version 0 = not initialised).
 * @module
 */

/** Byte alignment of each queue region inside the area (a cache line, as libvhost-user and DPDK). */
export const INFLIGHT_ALIGNMENT = 64;
/** `version` of an initialised region. */
export const INFLIGHT_REGION_VERSION = 1;

// QueueRegionSplit: u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx.
const S_VERSION = 8;
const S_DESC_NUM = 10;
const S_LAST_BATCH_HEAD = 12;
const S_USED_IDX = 14;
/** Size of the split region header (desc[] follows). */
export const INFLIGHT_SPLIT_HEADER_SIZE = 16;
// DescStateSplit: u8 inflight, u8 padding[5], u16 next, u64 counter.
const SD_INFLIGHT = 0;
const SD_NEXT = 6;
const SD_COUNTER = 8;
/** Size of one DescStateSplit. */
export const INFLIGHT_SPLIT_DESC_SIZE = 16;

// QueueRegionPacked: u64 features, u16 version, u16 desc_num, u16 free_head, u16 old_free_head,
// u16 used_idx, u16 old_used_idx, u8 used_wrap_counter, u8 old_used_wrap_counter, u8 padding[7],
// then desc[] at the next 8-byte boundary.
const P_VERSION = 8;
const P_DESC_NUM = 10;
const P_FREE_HEAD = 12;
const P_OLD_FREE_HEAD = 14;
const P_USED_IDX = 16;
const P_OLD_USED_IDX = 18;
const P_USED_WRAP = 20;
const P_OLD_USED_WRAP = 21;
/** Size of the packed region header (desc[] follows). */
export const INFLIGHT_PACKED_HEADER_SIZE = 32;
// DescStatePacked: u8 inflight, u8 padding, u16 next, u16 last, u16 num, u64 counter, u16 id,
// u16 flags, u32 len, u64 addr.
const PD_INFLIGHT = 0;
const PD_NEXT = 2;
const PD_LAST = 4;
const PD_NUM = 6;
const PD_COUNTER = 8;
const PD_ID = 16;
const PD_FLAGS = 18;
const PD_LEN = 20;
const PD_ADDR = 24;
/** Size of one DescStatePacked. */
export const INFLIGHT_PACKED_DESC_SIZE = 32;

/** Bytes of one queue's region for rings of up to `queueSize` entries (either layout fits). */
export function inflightQueueRegionSize(queueSize: number): number {
  const packed = INFLIGHT_PACKED_HEADER_SIZE + INFLIGHT_PACKED_DESC_SIZE * queueSize;
  return Math.ceil(packed / INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT;
}

/** A region handed over by the front-end is not consistent: the ring cannot be recovered from it. */
export class InflightError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InflightError';
  }
}

/** Points of the tracking sequence, for {@link setInflightStepHook}. */
export type InflightStep = 'after-pop' | 'before-used' | 'after-used';

let stepHook: ((step: InflightStep) => void) | null = null;

/**
 * Test-only: calls `hook` at each point of the tracking sequence (after a request is recorded on
 * pop; after the region is prepared for a completion but before the ring shows it; after the ring
 * shows it but before the region records it). The crash tests' daemon SIGKILLs itself there. Null
 * removes it. Not for production use: it runs on every request.
 */
export function setInflightStepHook(hook: ((step: InflightStep) => void) | null): void {
  stepHook = hook;
}

function step(s: InflightStep): void {
  if (stepHook !== null) stepHook(s);
}

/** Typed views over one region, with u64 counters as two u32 words (values stay below 2^53). */
class RegionViews {
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  constructor(buffer: ArrayBuffer, byteOffset: number, byteLength: number) {
    if (byteOffset % 8 !== 0) throw new RangeError(`inflight region offset ${byteOffset} is not 8-byte aligned`);
    this.u8 = new Uint8Array(buffer, byteOffset, byteLength);
    this.u16 = new Uint16Array(buffer, byteOffset, byteLength >>> 1);
    this.u32 = new Uint32Array(buffer, byteOffset, byteLength >>> 2);
  }
  get16(off: number): number { return Atomics.load(this.u16, off >>> 1); }
  set16(off: number, v: number): void { Atomics.store(this.u16, off >>> 1, v); }
  get8(off: number): number { return Atomics.load(this.u8, off); }
  set8(off: number, v: number): void { Atomics.store(this.u8, off, v); }
  get64(off: number): number { return (this.u32[(off >>> 2) + 1] as number) * 0x1_0000_0000 + (this.u32[off >>> 2] as number); }
  set64(off: number, v: number): void {
    this.u32[off >>> 2] = v >>> 0;
    this.u32[(off >>> 2) + 1] = Math.floor(v / 0x1_0000_0000);
  }
}

/** Region state shared by both layouts: how the queue of `size` entries is checked and laid out. */
abstract class InflightRegionBase {
  protected readonly v: RegionViews;
  /** Next value of the global counter (orders requests by the time they were popped). */
  protected counter = 1;

  /**
   * @param buffer the area's mapping
   * @param byteOffset where this queue's region starts (8-byte aligned)
   * @param byteLength bytes available to the region (at least {@link inflightQueueRegionSize} of `size`)
   * @param size the ring's size: the number of descriptor states
   */
  constructor(buffer: ArrayBuffer, byteOffset: number, byteLength: number, readonly size: number, headerSize: number, descSize: number) {
    if (!Number.isInteger(size) || size < 1 || size > 32768) throw new RangeError(`inflight region for queue size ${size}`);
    const need = headerSize + descSize * size;
    if (byteLength < need) throw new InflightError(`inflight region of ${byteLength} bytes is too small for ${size} descriptors (${need} needed)`);
    this.v = new RegionViews(buffer, byteOffset, need);
  }

  /** Whether the region holds state from an earlier back-end (version 1) or is blank (0). */
  get initialised(): boolean {
    return this.v.get16(S_VERSION) !== 0;
  }

  protected checkHeader(descNumOff: number): void {
    const version = this.v.get16(S_VERSION);
    if (version !== INFLIGHT_REGION_VERSION) throw new InflightError(`inflight region version ${version} (expected ${INFLIGHT_REGION_VERSION})`);
    const descNum = this.v.get16(descNumOff);
    if (descNum !== (this.size & 0xffff)) throw new InflightError(`inflight region tracks ${descNum} descriptors, the ring has ${this.size}`);
  }

  protected resetCounter(maxSeen: number): void {
    this.counter = maxSeen + 1;
  }
}

/** The QueueRegionSplit of one split ring. */
export class SplitInflightRegion extends InflightRegionBase {
  constructor(buffer: ArrayBuffer, byteOffset: number, byteLength: number, size: number) {
    super(buffer, byteOffset, byteLength, size, INFLIGHT_SPLIT_HEADER_SIZE, INFLIGHT_SPLIT_DESC_SIZE);
  }

  private d(i: number): number {
    return INFLIGHT_SPLIT_HEADER_SIZE + INFLIGHT_SPLIT_DESC_SIZE * i;
  }

  /** Blank state for a ring whose used index is `usedIdx` (nothing in flight). */
  init(usedIdx: number): void {
    this.v.u8.fill(0);
    this.v.set16(S_DESC_NUM, this.size & 0xffff);
    this.v.set16(S_USED_IDX, usedIdx);
    this.v.set16(S_VERSION, INFLIGHT_REGION_VERSION);
    this.counter = 1;
  }

  /**
   * Reconnect: completes the update a killed back-end left half done (the ring's used index moved
   * past `used_idx`: the last batch reached the driver) and returns the heads still in flight in
   * the order they were popped. Throws {@link InflightError} for an inconsistent region.
   */
  recover(ringUsedIdx: number): number[] {
    this.checkHeader(S_DESC_NUM);
    const n = this.size;
    const batch = (ringUsedIdx - this.v.get16(S_USED_IDX)) & 0xffff;
    if (batch !== 0) {
      if (batch > n) throw new InflightError(`used ring index ${ringUsedIdx} is ${batch} entries past the region's used_idx ${this.v.get16(S_USED_IDX)} (queue size ${n})`);
      let i = this.v.get16(S_LAST_BATCH_HEAD);
      for (let k = 0; k < batch; k++) {
        if (i >= n) throw new InflightError(`last batch list reaches descriptor ${i} ≥ queue size ${n}`);
        this.v.set8(this.d(i) + SD_INFLIGHT, 0);
        i = this.v.get16(this.d(i) + SD_NEXT);
      }
      this.v.set16(S_USED_IDX, ringUsedIdx);
    }
    const heads: number[] = [];
    const counters = new Map<number, number>();
    let max = 0;
    for (let i = 0; i < n; i++) {
      const f = this.v.get8(this.d(i) + SD_INFLIGHT);
      if (f === 0) continue;
      if (f !== 1) throw new InflightError(`descriptor ${i}: inflight flag ${f} is neither 0 nor 1`);
      const c = this.v.get64(this.d(i) + SD_COUNTER);
      if (counters.has(c)) throw new InflightError(`descriptors ${counters.get(c)} and ${i} have the same counter ${c}`);
      counters.set(c, i);
      if (c > max) max = c;
      heads.push(i);
    }
    heads.sort((a, b) => this.v.get64(this.d(a) + SD_COUNTER) - this.v.get64(this.d(b) + SD_COUNTER));
    this.resetCounter(max);
    return heads;
  }

  /** A chain with head descriptor `head` was popped. */
  mark(head: number): void {
    const o = this.d(head);
    this.v.set64(o + SD_COUNTER, this.counter++);
    this.v.set8(o + SD_INFLIGHT, 1);
    step('after-pop');
  }

  /** Before the used ring shows `head`: it joins the last batch (the list from last_batch_head). */
  beforeUsed(head: number): void {
    this.v.set16(this.d(head) + SD_NEXT, this.v.get16(S_LAST_BATCH_HEAD));
    this.v.set16(S_LAST_BATCH_HEAD, head);
    step('before-used');
  }

  /** After the used ring's idx became `usedIdx`, covering the batch `heads`. */
  afterUsedBatch(heads: readonly number[], usedIdx: number): void {
    step('after-used');
    for (const h of heads) this.v.set8(this.d(h) + SD_INFLIGHT, 0);
    this.v.set16(S_USED_IDX, usedIdx);
  }

  /** Heads currently marked in flight (diagnostics, tests). */
  inflightHeads(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.v.get8(this.d(i) + SD_INFLIGHT) === 1) out.push(i);
    return out;
  }
}

/** One descriptor as the packed region stores it. */
export interface InflightPackedDesc {
  /** Buffer address (guest-physical). */
  addr: number;
  /** Buffer length. */
  len: number;
  /** Descriptor flags as the driver wrote them. */
  flags: number;
  /** Buffer id field. */
  id: number;
}

/** A chain recovered from a packed region. */
export interface InflightPackedChain {
  /** Buffer id (of the chain's last descriptor). */
  id: number;
  /** The chain's ring descriptors in order. */
  descs: InflightPackedDesc[];
}

/** Result of {@link PackedInflightRegion.recover}. */
export interface InflightPackedRecovery {
  /** Chains in flight, in the order they were popped. */
  chains: InflightPackedChain[];
  /** Next used position and wrap counter: where the killed back-end stopped returning chains. */
  usedIdx: number;
  /** Device ring wrap counter. */
  usedWrap: boolean;
}

const NO_ENTRY = 0xffff;

/** The QueueRegionPacked of one packed ring. */
export class PackedInflightRegion extends InflightRegionBase {
  /** Region entry holding the head of the chain with buffer id `id` (NO_ENTRY when none). */
  private readonly entryOfId: Uint16Array;
  /** Head entry of the chain being recorded by markDesc. */
  private chainHead = -1;

  constructor(buffer: ArrayBuffer, byteOffset: number, byteLength: number, size: number) {
    super(buffer, byteOffset, byteLength, size, INFLIGHT_PACKED_HEADER_SIZE, INFLIGHT_PACKED_DESC_SIZE);
    this.entryOfId = new Uint16Array(size).fill(NO_ENTRY);
  }

  private d(i: number): number {
    return INFLIGHT_PACKED_HEADER_SIZE + INFLIGHT_PACKED_DESC_SIZE * i;
  }

  /** Blank state (every entry on the free list) for a ring whose device position is `usedIdx`/`usedWrap`. */
  init(usedIdx: number, usedWrap: boolean): void {
    const v = this.v;
    v.u8.fill(0);
    for (let i = 0; i < this.size; i++) v.set16(this.d(i) + PD_NEXT, i + 1 < this.size ? i + 1 : NO_ENTRY);
    v.set16(P_DESC_NUM, this.size & 0xffff);
    v.set16(P_FREE_HEAD, 0);
    v.set16(P_OLD_FREE_HEAD, 0);
    v.set16(P_USED_IDX, usedIdx);
    v.set16(P_OLD_USED_IDX, usedIdx);
    v.set8(P_USED_WRAP, usedWrap ? 1 : 0);
    v.set8(P_OLD_USED_WRAP, usedWrap ? 1 : 0);
    v.set16(P_VERSION, INFLIGHT_REGION_VERSION);
    this.entryOfId.fill(NO_ENTRY);
    this.counter = 1;
  }

  /**
   * Reconnect: commits or rolls back the update a killed back-end left half done, then returns the
   * chains in flight in the order they were popped and the device position to resume from.
   * `ringFlags(pos)` reads the flags of the descriptor-ring entry at `pos`. Throws
   * {@link InflightError} for an inconsistent region.
   */
  recover(ringFlags: (pos: number) => number): InflightPackedRecovery {
    this.checkHeader(P_DESC_NUM);
    const v = this.v;
    const n = this.size;
    const oldUsed = v.get16(P_OLD_USED_IDX);
    if (oldUsed >= n) throw new InflightError(`old_used_idx ${oldUsed} ≥ queue size ${n}`);
    if (v.get16(P_USED_IDX) !== oldUsed) {
      // Still an available descriptor for the old wrap counter: the used one never reached the
      // driver, so the update is rolled back below; otherwise it did and is committed.
      const wrap = v.get8(P_OLD_USED_WRAP) !== 0;
      const avail = (wrap ? 1 << 7 : 0) | (wrap ? 0 : 1 << 15);
      if ((ringFlags(oldUsed) & ((1 << 7) | (1 << 15))) !== avail) {
        v.set16(P_OLD_FREE_HEAD, v.get16(P_FREE_HEAD));
        v.set16(P_OLD_USED_IDX, v.get16(P_USED_IDX));
        v.set8(P_OLD_USED_WRAP, v.get8(P_USED_WRAP));
      }
    }
    v.set16(P_FREE_HEAD, v.get16(P_OLD_FREE_HEAD));
    v.set16(P_USED_IDX, v.get16(P_OLD_USED_IDX));
    v.set8(P_USED_WRAP, v.get8(P_OLD_USED_WRAP));
    const usedIdx = v.get16(P_USED_IDX);
    if (usedIdx >= n) throw new InflightError(`used_idx ${usedIdx} ≥ queue size ${n}`);
    // Every entry is either on the free list or in exactly one chain in flight.
    const owner = new Int32Array(n).fill(-1);
    let free = 0;
    for (let i = v.get16(P_FREE_HEAD); i !== NO_ENTRY; i = v.get16(this.d(i) + PD_NEXT)) {
      if (i >= n) throw new InflightError(`free list reaches entry ${i} ≥ queue size ${n}`);
      if (owner[i] !== -1) throw new InflightError(`free list loops at entry ${i}`);
      owner[i] = n;
      free++;
      v.set8(this.d(i) + PD_INFLIGHT, 0);
    }
    const heads: number[] = [];
    for (let i = 0; i < n; i++) {
      const f = v.get8(this.d(i) + PD_INFLIGHT);
      if (f === 0) continue;
      if (f !== 1) throw new InflightError(`entry ${i}: inflight flag ${f} is neither 0 nor 1`);
      heads.push(i);
    }
    heads.sort((a, b) => v.get64(this.d(a) + PD_COUNTER) - v.get64(this.d(b) + PD_COUNTER));
    this.entryOfId.fill(NO_ENTRY);
    const chains: InflightPackedChain[] = [];
    let used = 0;
    let max = 0;
    for (const h of heads) {
      const num = v.get16(this.d(h) + PD_NUM);
      if (num < 1 || num > n) throw new InflightError(`entry ${h}: chain of ${num} descriptors (queue size ${n})`);
      const descs: InflightPackedDesc[] = [];
      let e = h;
      for (let k = 0; ; k++) {
        if (e >= n) throw new InflightError(`chain at entry ${h} reaches entry ${e} ≥ queue size ${n}`);
        if (owner[e] !== -1) throw new InflightError(`entry ${e} belongs to two chains (or to a chain and the free list)`);
        owner[e] = h;
        const o = this.d(e);
        descs.push({ addr: v.get64(o + PD_ADDR), len: v.u32[(o + PD_LEN) >>> 2] as number, flags: v.get16(o + PD_FLAGS), id: v.get16(o + PD_ID) });
        if (k === num - 1) break;
        e = v.get16(o + PD_NEXT);
      }
      if (v.get16(this.d(h) + PD_LAST) !== e) throw new InflightError(`entry ${h}: last ${v.get16(this.d(h) + PD_LAST)} does not end its chain of ${num} (ends at ${e})`);
      const id = (descs[descs.length - 1] as InflightPackedDesc).id;
      if (id >= n) throw new InflightError(`entry ${h}: buffer id ${id} ≥ queue size ${n}`);
      if (this.entryOfId[id] !== NO_ENTRY) throw new InflightError(`buffer id ${id} is in flight twice`);
      this.entryOfId[id] = h;
      used += num;
      max = Math.max(max, v.get64(this.d(h) + PD_COUNTER));
      chains.push({ id, descs });
    }
    if (used + free !== n) throw new InflightError(`${used} entries in flight and ${free} free do not add up to the queue size ${n}`);
    this.resetCounter(max);
    return { chains, usedIdx, usedWrap: v.get8(P_USED_WRAP) !== 0 };
  }

  /**
   * Records one descriptor of a chain being popped (call for each, in ring order; `last` on the
   * chain's final one, whose id is the buffer id). Throws when the free list is exhausted, which
   * the queue's own accounting (≤ size descriptors in flight) rules out.
   */
  markDesc(addr: number, len: number, flags: number, id: number, last: boolean): void {
    const v = this.v;
    const head = v.get16(P_OLD_FREE_HEAD);
    if (this.chainHead < 0) {
      const h = this.d(head);
      v.set16(h + PD_NUM, 0);
      v.set64(h + PD_COUNTER, this.counter++);
      v.set8(h + PD_INFLIGHT, 1);
      this.chainHead = head;
    }
    const f = v.get16(P_FREE_HEAD);
    if (f === NO_ENTRY || f >= this.size) throw new InflightError(`inflight free list exhausted (free_head ${f})`);
    const hd = this.d(head);
    if (last) v.set16(hd + PD_LAST, f);
    v.set16(hd + PD_NUM, v.get16(hd + PD_NUM) + 1);
    const o = this.d(f);
    v.set64(o + PD_ADDR, addr);
    v.u32[(o + PD_LEN) >>> 2] = len >>> 0;
    v.set16(o + PD_FLAGS, flags);
    v.set16(o + PD_ID, id);
    v.set16(P_FREE_HEAD, v.get16(o + PD_NEXT));
    if (last) {
      v.set16(P_OLD_FREE_HEAD, v.get16(P_FREE_HEAD));
      this.entryOfId[id] = head;
      this.chainHead = -1;
      step('after-pop');
    }
  }

  /**
   * Before the used descriptor for buffer `id` is published (alone or as part of a batch whose
   * first descriptor's flags are stored last): its entries return to the free list and the used
   * position advances to `usedIdx`/`usedWrap`.
   */
  beforeUsed(id: number, usedIdx: number, usedWrap: boolean): void {
    const v = this.v;
    const e = this.entryOfId[id] ?? NO_ENTRY;
    if (e === NO_ENTRY) throw new InflightError(`buffer id ${id} is not recorded in flight`);
    v.set16(this.d(v.get16(this.d(e) + PD_LAST)) + PD_NEXT, v.get16(P_FREE_HEAD));
    v.set16(P_FREE_HEAD, e);
    v.set16(P_USED_IDX, usedIdx);
    v.set8(P_USED_WRAP, usedWrap ? 1 : 0);
    step('before-used');
  }

  /** After the used batch of buffers `ids` was published (its first descriptor's flags stored). */
  afterUsedBatch(ids: readonly number[]): void {
    step('after-used');
    const v = this.v;
    for (const id of ids) {
      const e = this.entryOfId[id] ?? NO_ENTRY;
      if (e === NO_ENTRY) continue;
      this.entryOfId[id] = NO_ENTRY;
      v.set8(this.d(e) + PD_INFLIGHT, 0);
    }
    v.set16(P_OLD_FREE_HEAD, v.get16(P_FREE_HEAD));
    v.set16(P_OLD_USED_IDX, v.get16(P_USED_IDX));
    v.set8(P_OLD_USED_WRAP, v.get8(P_USED_WRAP));
  }

  /** Buffer ids recorded in flight (diagnostics, tests). */
  inflightIds(): number[] {
    const out: number[] = [];
    this.entryOfId.forEach((e, id) => { if (e !== NO_ENTRY) out.push(id); });
    return out;
  }
}
