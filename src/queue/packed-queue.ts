import type { GuestMemory } from '../memory/index.js';
import { DescriptorChain } from './chain.js';
import { QueueError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_MAX_INDIRECT } from './constants.js';
import {
  RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, RING_EVENT_FLAGS_MASK,
  VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED, VIRTQ_PACKED_DESC_ALIGN, VIRTQ_PACKED_EVENT_ALIGN,
  VIRTQ_PACKED_EVENT_SIZE, VIRTQ_PACKED_MAX_SIZE, VRING_PACKED_EVENT_F_WRAP_CTR,
  decodePackedState, encodePackedState, packedNeedEvent, type PackedQueueState,
} from './packed-constants.js';
import { ringView } from './ring-view.js';
import type { VirtQueue } from './virtqueue.js';
import type { InflightPackedChain, PackedInflightRegion } from './inflight.js';

const TWO32 = 0x1_0000_0000;
const USED_FLAGS_WRAP1 = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

/** True when descriptor `flags` mark it available for the driver wrap counter `wrap`. */
function isAvailable(flags: number, wrap: boolean): boolean {
  return ((flags & VIRTQ_DESC_F_AVAIL) !== 0) === wrap && ((flags & VIRTQ_DESC_F_USED) !== 0) !== wrap;
}

/** Names a descriptor in messages (built only on failure: the good path allocates nothing). */
function where(idx: number, inTable: boolean): string {
  return inTable ? `indirect entry ${idx}` : `descriptor ${idx}`;
}

/**
 * Device side of a packed virtqueue (VIRTIO 1.2 §2.8), with the same interface as SplitQueue.
 *
 * The driver makes a chain available by writing its descriptors at consecutive ring positions
 * (wrapping, with the wrap counter flipping at the end of the ring) and the first one's flags
 * last; the buffer id is in the chain's last descriptor. `popDescriptorChain` reads the head's
 * flags word with Atomics.load (acquire) before any other field, copies every address and
 * length out of the ring, and records the id as in flight with the number of ring descriptors
 * it took. `addUsed(id, len)` writes one used descriptor at the device's used position (id and
 * len and id first, flags last with Atomics.store: release) and skips that position forward by the
 * chain's descriptor count, so chains may complete in any order.
 *
 * Error policy: a chain whose extent or id cannot be trusted (no end within `size` descriptors,
 * a later descriptor not marked available, id ≥ size, id already in flight, a chain overlapping
 * descriptors still in flight) throws with
 * `headIndex` null, leaves the ring untouched and sets `broken`: the device stops. A chain with
 * a sound extent and id but bad contents (addresses, lengths, indirect rules, ordering) is
 * consumed and throws with `headIndex` = its buffer id, to be completed with `addUsed(id, 0)`.
 */
export class PackedQueue implements VirtQueue {
  /** Largest size this queue accepts (device maximum). */
  readonly maxSize: number;
  /** Queue size (any value in [1, maxSize]: packed sizes need not be powers of two). */
  size: number;
  /** Guest-physical address of the descriptor ring. */
  descGpa = 0;
  /** Guest-physical address of the driver event suppression area (vhost-user "avail" address). */
  driverGpa = 0;
  /** Guest-physical address of the device event suppression area (vhost-user "used" address). */
  deviceGpa = 0;
  /** Set when the front-end enabled the queue. */
  ready = false;
  /** VIRTIO_RING_F_EVENT_IDX negotiated (enables RING_EVENT_FLAGS_DESC both ways). */
  eventIdx = false;
  /** Set after an unrecoverable ring error (also by this class); pop returns null while set. */
  broken = false;
  private nextAvail = 0;
  private availWrap = true;
  private nextUsed = 0;
  private usedWrap = true;
  /** Ring descriptors used since the last needsNotification() (saturates at 0x10000). */
  private usedSinceSignal = 0;
  private signalledValid = false;
  private readonly inflight: Uint8Array;
  private readonly chainLen: Uint16Array;
  private inflightCount = 0;
  /** Position of the first used descriptor written by addUsedDeferred and not yet published, or -1. */
  private pendingPos = -1;
  private pendingFlags = 0;
  /** Ring descriptors held by in-flight chains (≤ size). */
  private inflightDescs = 0;
  private seenWritable = false;
  private mem: GuestMemory | null = null;
  private desc32: Uint32Array | null = null;
  /** Same ring as u16s: flags and ids are accessed as u16 so Atomics stay on small integers. */
  private desc16: Uint16Array | null = null;
  private driverEvent32: Uint32Array | null = null;
  private deviceEvent32: Uint32Array | null = null;
  private indirect32 = new Uint32Array(64);
  private indirect8 = new Uint8Array(this.indirect32.buffer);
  private logging = false;
  /** Inflight tracking (INFLIGHT_SHMFD): the shared region recording popped chains, or null. */
  private inflightRegion: PackedInflightRegion | null = null;
  /** Chains recovered from the region, handed out by pop before new requests. */
  private resubmit: InflightPackedChain[] = [];
  private resubmitPos = 0;
  /** Buffer ids of the unpublished used batch, recorded in the region once it is published. */
  private readonly pendingIds: number[] = [];

  /** `maxSize` bounds `setSize` (1..32768). */
  constructor(maxSize: number = VIRTQ_PACKED_MAX_SIZE) {
    PackedQueue.checkSize(maxSize);
    this.maxSize = maxSize;
    this.size = maxSize;
    this.inflight = new Uint8Array(maxSize);
    this.chainLen = new Uint16Array(maxSize);
  }

  private static checkSize(n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > VIRTQ_PACKED_MAX_SIZE) {
      throw new QueueError('invalid-size', `packed queue size ${n} is not in [1, ${VIRTQ_PACKED_MAX_SIZE}]`);
    }
  }

  /** SET_VRING_NUM. Throws `invalid-size`. Drops cached views (set addresses/memory again). */
  setSize(n: number): void {
    PackedQueue.checkSize(n);
    if (n > this.maxSize) throw new QueueError('invalid-size', `queue size ${n} exceeds the device maximum ${this.maxSize}`);
    this.size = n;
    this.pendingPos = -1;
    this.dropViews();
  }

  /**
   * SET_VRING_ADDR (guest-physical): descriptor ring, driver area, device area. Validates the
   * 16/4/4 alignment; maps if memory is set.
   */
  setAddresses(descGpa: number, driverGpa: number, deviceGpa: number): void {
    if (descGpa % VIRTQ_PACKED_DESC_ALIGN !== 0 || driverGpa % VIRTQ_PACKED_EVENT_ALIGN !== 0 || deviceGpa % VIRTQ_PACKED_EVENT_ALIGN !== 0) {
      throw new QueueError('misaligned', `packed ring addresses desc 0x${descGpa.toString(16)} driver 0x${driverGpa.toString(16)} device 0x${deviceGpa.toString(16)} violate 16/4/4 alignment`);
    }
    this.descGpa = descGpa;
    this.driverGpa = driverGpa;
    this.deviceGpa = deviceGpa;
    this.pendingPos = -1; // a deferred publish belongs to the old ring
    this.dropViews();
    if (this.mem !== null) this.mapRings();
  }

  /**
   * Uses `mem` from now on: re-validates and maps the ring parts (`bad-ring`/`misaligned`). A
   * pending deferred publish is kept and lands through the new mapping.
   */
  setMemory(mem: GuestMemory): void {
    this.mem = mem;
    this.dropViews();
    if (this.descGpa !== 0 || this.driverGpa !== 0 || this.deviceGpa !== 0) this.mapRings();
  }

  /** The snapshot in use, or null. */
  get memory(): GuestMemory | null {
    return this.mem;
  }

  /**
   * VHOST_VRING_F_LOG on (any address) or off (null). Used descriptors are written into the
   * descriptor ring, so they are logged at their own guest addresses rather than at
   * `logGuestAddr` (QEMU passes the device area there for packed rings).
   */
  setUsedLog(logGuestAddr: number | null): void {
    this.logging = logGuestAddr !== null;
  }

  private dropViews(): void {
    this.desc32 = this.driverEvent32 = this.deviceEvent32 = null;
    this.desc16 = null;
  }

  private mapRings(): void {
    const mem = this.mem as GuestMemory;
    this.desc32 = ringView(mem, this.descGpa, 16 * this.size, 'descriptor ring', Uint32Array);
    this.desc16 = ringView(mem, this.descGpa, 16 * this.size, 'descriptor ring', Uint16Array);
    this.driverEvent32 = ringView(mem, this.driverGpa, VIRTQ_PACKED_EVENT_SIZE, 'driver event suppression area', Uint32Array);
    this.deviceEvent32 = ringView(mem, this.deviceGpa, VIRTQ_PACKED_EVENT_SIZE, 'device event suppression area', Uint32Array);
  }

  /** True when the rings are mapped and the queue is ready to serve. */
  isValid(): boolean {
    return this.ready && this.desc32 !== null;
  }

  /** GET_VRING_BASE value: the packed encoding of {@link getState}. */
  get vringBase(): number {
    return encodePackedState(this.getState());
  }

  /**
   * SET_VRING_BASE: decodes the packed encoding (avail idx/wrap in bits 0..15, used in 16..31).
   * Front-ends that send only the avail half (DPDK's virtio_user sends 0x8000 for a fresh ring)
   * mean a ring with nothing in flight: the used position is the avail one, as DPDK's vhost
   * library reads it. (A used half of exactly 0, position 0 with wrap counter 0, is then read
   * the same way; with nothing in flight both halves are equal anyway.)
   */
  setVringBase(base: number): void {
    if (!Number.isInteger(base) || base < 0 || base > 0xffff_ffff) throw new QueueError('bad-index', `vring base ${base} is not a u32`);
    this.setState(decodePackedState(base >>> 16 === 0 ? (base & 0xffff) * 0x10001 : base));
  }

  /** Current positions and wrap counters. */
  getState(): PackedQueueState {
    return { nextAvail: this.nextAvail, availWrap: this.availWrap, nextUsed: this.nextUsed, usedWrap: this.usedWrap };
  }

  /** Restores positions (each < size); forgets chains in flight. */
  setState(s: PackedQueueState): void {
    const ok = (n: number): boolean => Number.isInteger(n) && n >= 0 && n < this.size;
    if (!ok(s.nextAvail) || !ok(s.nextUsed)) {
      throw new QueueError('bad-index', `packed ring positions ${s.nextAvail}/${s.nextUsed} are not below the queue size ${this.size}`);
    }
    this.nextAvail = s.nextAvail;
    this.availWrap = s.availWrap;
    this.nextUsed = s.nextUsed;
    this.usedWrap = s.usedWrap;
    this.clearInflight();
  }

  /**
   * Starts inflight tracking in `region` (at ring start, rings mapped). A blank region is laid out
   * at the current positions; one holding an earlier back-end's state is recovered: the device
   * resumes at the position the region recorded, its chains still in flight are handed out by pop
   * (in their original order) before new ones, and the next available position follows them.
   * Returns how many chains will be resubmitted. Throws InflightError for an inconsistent region.
   */
  startInflight(region: PackedInflightRegion): number {
    const d = this.desc16;
    if (d === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    if (region.size !== this.size) throw new QueueError('invalid-size', `inflight region for ${region.size} descriptors on a ring of ${this.size}`);
    let chains: InflightPackedChain[] = [];
    if (!region.initialised) {
      region.init(this.nextUsed, this.usedWrap);
    } else {
      const r = region.recover((pos) => Atomics.load(d, 8 * pos + 7));
      chains = r.chains;
      this.clearInflight();
      this.nextUsed = r.usedIdx;
      this.usedWrap = r.usedWrap;
      for (const c of chains) {
        this.inflight[c.id] = 1;
        this.chainLen[c.id] = c.descs.length;
        this.inflightCount++;
        this.inflightDescs += c.descs.length;
      }
      let avail = r.usedIdx + this.inflightDescs;
      let wrap = r.usedWrap;
      if (avail >= this.size) {
        avail -= this.size;
        wrap = !wrap;
      }
      this.nextAvail = avail;
      this.availWrap = wrap;
    }
    this.inflightRegion = region;
    this.resubmit = chains;
    this.resubmitPos = 0;
    return chains.length;
  }

  /** Stops recording in the inflight region (the region itself is left as it is). */
  stopInflight(): void {
    this.inflightRegion = null;
    this.pendingIds.length = 0;
    this.resubmit = [];
    this.resubmitPos = 0;
  }

  /** Builds the next recovered chain (its id is already accounted in flight). */
  private popResubmitted(reuse: DescriptorChain | undefined): DescriptorChain {
    const c = this.resubmit[this.resubmitPos++] as InflightPackedChain;
    const chain = reuse ?? new DescriptorChain();
    chain.reset(0, this.mem as GuestMemory);
    this.seenWritable = false;
    let bad: QueueError | null = null;
    const scratch = new Uint32Array(4);
    c.descs.forEach((d, k) => {
      if (bad !== null) return;
      const lo = d.addr % TWO32;
      const hi = Math.floor(d.addr / TWO32);
      if ((d.flags & VIRTQ_DESC_F_INDIRECT) === 0) {
        bad = this.buffer(chain, lo, hi, d.len, (d.flags & VIRTQ_DESC_F_WRITE) !== 0, k, false);
      } else {
        scratch[0] = lo;
        scratch[1] = hi;
        scratch[2] = d.len;
        bad = this.takeIndirect(chain, scratch, 0, d.flags, k > 0);
      }
    });
    chain.headIndex = c.id;
    if (bad !== null) throw new QueueError((bad as QueueError).kind, `buffer id ${c.id} (resubmitted): ${(bad as QueueError).message}`, c.id);
    chain.finish();
    return chain;
  }

  private clearInflight(): void {
    this.resubmit = [];
    this.resubmitPos = 0;
    this.inflight.fill(0);
    this.inflightCount = 0;
    this.inflightDescs = 0;
    this.pendingPos = -1;
    this.usedSinceSignal = 0;
    this.signalledValid = false;
  }

  /** Number of chains popped and not yet completed. */
  get inFlight(): number {
    return this.inflightCount;
  }

  /** Back to the reset state (both wrap counters 1). Keeps maxSize. */
  reset(): void {
    this.size = this.maxSize;
    this.descGpa = this.driverGpa = this.deviceGpa = 0;
    this.ready = false;
    this.eventIdx = false;
    this.broken = false;
    this.nextAvail = this.nextUsed = 0;
    this.availWrap = this.usedWrap = true;
    this.clearInflight();
    this.logging = false;
    this.mem = null;
    this.dropViews();
    this.stopInflight();
  }

  /** True when the descriptor at the device's next read position is available. */
  hasPending(): boolean {
    const d = this.desc16;
    return d !== null && (this.resubmitPos < this.resubmit.length || isAvailable(Atomics.load(d, 8 * this.nextAvail + 7), this.availWrap));
  }

  /**
   * Takes the next available chain, or null when none is (or the queue is not ready or broken).
   * Pass a previously returned chain to recycle it. `chain.headIndex` is the buffer id to pass
   * to `addUsed`. Throws QueueError per the class's error policy.
   */
  popDescriptorChain(reuse?: DescriptorChain): DescriptorChain | null {
    const desc32 = this.desc32;
    const desc16 = this.desc16;
    if (!this.ready || this.broken || desc32 === null || desc16 === null) return null;
    if (this.resubmitPos < this.resubmit.length) return this.popResubmitted(reuse);
    const size = this.size;
    let pos = this.nextAvail;
    let wrap = this.availWrap;
    // Acquire: the head's flags are published last; everything else of the chain is visible after.
    let flags = Atomics.load(desc16, 8 * pos + 7);
    if (!isAvailable(flags, wrap)) return null;
    const chain = reuse ?? new DescriptorChain();
    chain.reset(0, this.mem as GuestMemory);
    this.seenWritable = false;
    let bad: QueueError | null = null;
    let n = 0;
    for (;;) {
      n++;
      if (bad === null) {
        const b = 4 * pos;
        bad = (flags & VIRTQ_DESC_F_INDIRECT) === 0
          ? this.buffer(chain, desc32[b] as number, desc32[b + 1] as number, desc32[b + 2] as number, (flags & VIRTQ_DESC_F_WRITE) !== 0, pos, false)
          : this.takeIndirect(chain, desc32, b, flags, n > 1);
      }
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
      if (n === size) return this.stop('chain-too-long', `chain at ring position ${this.nextAvail} has no end within the queue size ${size}`);
      if (++pos === size) {
        pos = 0;
        wrap = !wrap;
      }
      flags = desc16[8 * pos + 7] as number;
      if (!isAvailable(flags, wrap)) {
        return this.stop('descriptor-not-available', `descriptor ${pos} (${n + 1}th of the chain at ${this.nextAvail}) is not available for wrap counter ${wrap ? 1 : 0} (flags 0x${flags.toString(16)})`);
      }
    }
    const id = desc16[8 * pos + 6] as number;
    if (id >= size) return this.stop('bad-buffer-id', `buffer id ${id} of the chain at ring position ${this.nextAvail} ≥ queue size ${size}`);
    if (this.inflight[id] !== 0) return this.stop('buffer-id-in-use', `buffer id ${id} of the chain at ring position ${this.nextAvail} is already in flight`);
    if (this.inflightDescs + n > size) {
      // Some of these positions still belong to chains the device has not completed: the driver
      // cannot have made them available again (it lapped the device).
      return this.stop('descriptor-not-available', `chain of ${n} at ring position ${this.nextAvail} overlaps the ${this.inflightDescs} descriptors still in flight (queue size ${size})`);
    }
    // The extent and id are sound: consume the chain and account for it.
    const region = this.inflightRegion;
    if (region !== null) {
      for (let k = 0, p = this.nextAvail; k < n; k++, p = p + 1 === size ? 0 : p + 1) {
        region.markDesc((desc32[4 * p + 1] as number) * TWO32 + (desc32[4 * p] as number), desc32[4 * p + 2] as number,
          desc16[8 * p + 7] as number, desc16[8 * p + 6] as number, k === n - 1);
      }
    }
    if (++pos === size) {
      pos = 0;
      wrap = !wrap;
    }
    this.nextAvail = pos;
    this.availWrap = wrap;
    this.inflight[id] = 1;
    this.chainLen[id] = n;
    this.inflightCount++;
    this.inflightDescs += n;
    chain.headIndex = id;
    if (bad !== null) throw new QueueError(bad.kind, `buffer id ${id}: ${bad.message}`, id);
    chain.finish();
    return chain;
  }

  /** Unrecoverable: the ring is left as is and the queue marked broken. */
  private stop(kind: 'chain-too-long' | 'descriptor-not-available' | 'bad-buffer-id' | 'buffer-id-in-use', message: string): never {
    this.broken = true;
    throw new QueueError(kind, message, null);
  }

  /** Validates an indirect ring descriptor and expands its table into `chain`; returns the error instead of throwing. */
  private takeIndirect(chain: DescriptorChain, t: Uint32Array, b: number, flags: number, linked: boolean): QueueError | null {
    const lo = t[b] as number;
    const hi = t[b + 1] as number;
    const len = t[b + 2] as number;
    if (linked || (flags & VIRTQ_DESC_F_NEXT) !== 0) {
      return new QueueError('indirect-with-next', `indirect descriptor ${b >>> 2} is part of a NEXT-linked list`);
    }
    // As the split ring: at most max(queue size, 1024) entries (a chain must not outgrow the queue).
    const maxEntries = Math.min(VIRTQ_MAX_INDIRECT, Math.max(this.size, 1024));
    if (len === 0 || len % 16 !== 0 || len > 16 * maxEntries) {
      return new QueueError('bad-indirect-len', `indirect table length ${len} is not a non-zero multiple of 16 up to ${16 * maxEntries}`);
    }
    const mem = this.mem as GuestMemory;
    const addr = hi * TWO32 + lo;
    if (hi >= 0x20_0000 || !mem.checkRange(addr, len)) {
      return new QueueError('out-of-range', `indirect table 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}+0x${len.toString(16)} is outside guest memory`);
    }
    // Copy the table: the driver cannot change it under us, and its alignment does not matter.
    if (this.indirect8.length < len) {
      this.indirect32 = new Uint32Array(len >>> 2);
      this.indirect8 = new Uint8Array(this.indirect32.buffer);
    }
    mem.read(addr, this.indirect8.subarray(0, len));
    chain.indirect = true;
    const it = this.indirect32;
    for (let i = 0; i < len >>> 4; i++) {
      const f = (it[4 * i + 3] as number) >>> 16;
      // Only WRITE is meaningful in a table entry; INDIRECT would be a nested table (forbidden),
      // NEXT and the buffer id are reserved and ignored by the device (§2.8.12).
      if ((f & VIRTQ_DESC_F_INDIRECT) !== 0) return new QueueError('nested-indirect', `entry ${i} of an indirect table is itself indirect`);
      const e = this.buffer(chain, it[4 * i] as number, it[4 * i + 1] as number, it[4 * i + 2] as number, (f & VIRTQ_DESC_F_WRITE) !== 0, i, true);
      if (e !== null) return e;
    }
    return null;
  }

  private buffer(chain: DescriptorChain, lo: number, hi: number, len: number, writable: boolean, idx: number, inTable: boolean): QueueError | null {
    if (hi >= 0x20_0000) {
      // addr ≥ 2^53 is never guest memory; tell u64 wrap-around apart for the diagnostics.
      const overflow = hi === 0xffff_ffff && lo + len > TWO32;
      return new QueueError(overflow ? 'overflow' : 'out-of-range', `${where(idx, inTable)} address 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}+0x${len.toString(16)} is ${overflow ? 'wrapping past 2^64' : 'outside guest memory'}`);
    }
    const addr = hi * TWO32 + lo;
    if (writable) this.seenWritable = true;
    else if (this.seenWritable) return new QueueError('readable-after-writable', `readable ${where(idx, inTable)} follows a writable one`);
    if (len !== 0 && !(this.mem as GuestMemory).checkRange(addr, len)) {
      return new QueueError('out-of-range', `${where(idx, inTable)} buffer 0x${addr.toString(16)}+0x${len.toString(16)} is outside guest memory`);
    }
    chain.push(addr, len, writable);
    return null;
  }

  /**
   * Completes the in-flight chain with buffer id `id`: writes a used descriptor (len and id, then
   * flags with Atomics.store: release) at the used position, then skips it forward by
   * the chain's descriptor count. `len` is the number of bytes written into the chain. Throws
   * `bad-buffer-id` for an id that is out of range or not in flight.
   */
  addUsed(id: number, len: number): void {
    this.addUsedDeferred(id, len);
    this.publishUsed();
  }

  /**
   * Like addUsed, but the first used descriptor of a batch stays invisible to the driver until
   * `publishUsed()` (or `needsNotification()`): later ones are written with plain stores, and the
   * single release store of the first one's flags publishes them all, since the driver only polls
   * its next used position (§2.8.6, as DPDK's vhost flushes its shadow used ring). One atomic per
   * batch instead of one per chain.
   */
  addUsedDeferred(id: number, len: number): void {
    const desc32 = this.desc32;
    const desc16 = this.desc16;
    if (desc32 === null || desc16 === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    if (!(id >= 0 && id < this.size) || !Number.isInteger(id) || this.inflight[id] === 0) {
      throw new QueueError('bad-buffer-id', `used id ${id} is not a buffer in flight (queue size ${this.size})`);
    }
    const region = this.inflightRegion;
    const pos = this.nextUsed;
    const b = 4 * pos;
    // WRITE in a used descriptor says whether len is meaningful (§2.8.4).
    const flags = (this.usedWrap ? USED_FLAGS_WRAP1 : 0) | (len !== 0 ? VIRTQ_DESC_F_WRITE : 0);
    desc32[b + 2] = len >>> 0;
    desc16[2 * b + 6] = id;
    const n = this.chainLen[id] as number;
    let next = pos + n;
    let nextWrap = this.usedWrap;
    if (next >= this.size) {
      next -= this.size;
      nextWrap = !nextWrap;
    }
    // The region moves first (spec order): a crash before the batch's first flags store rolls
    // the whole batch back, one after it commits it.
    if (region !== null) {
      region.beforeUsed(id, next, nextWrap);
      this.pendingIds.push(id);
    }
    if (this.pendingPos < 0) {
      this.pendingPos = pos;
      this.pendingFlags = flags;
    } else {
      desc16[2 * b + 7] = flags;
    }
    this.inflight[id] = 0;
    this.inflightCount--;
    this.inflightDescs -= n;
    this.usedWrap = nextWrap;
    this.nextUsed = next;
    if (this.usedSinceSignal < 0x10000) this.usedSinceSignal += n;
    if (this.logging) this.mem?.dirtyLog?.markDirty(this.descGpa + 16 * pos, 16);
  }

  /** Makes the used descriptors written by addUsedDeferred visible to the driver (release). */
  publishUsed(): void {
    const pos = this.pendingPos;
    if (pos < 0) return;
    this.pendingPos = -1;
    const d = this.desc16;
    if (d !== null) Atomics.store(d, 8 * pos + 7, this.pendingFlags);
    if (this.pendingIds.length > 0) {
      this.inflightRegion?.afterUsedBatch(this.pendingIds);
      this.pendingIds.length = 0;
    }
  }

  /**
   * Whether the driver wants a used-buffer notification for what was used since the last call:
   * driver area flags ENABLE → yes, DISABLE → no, DESC (with EVENT_IDX) → whether the used
   * descriptors written since cover off_wrap. The seq-cst flags store in addUsed is ordered
   * before the Atomics.load of the driver area here (the full barrier the spec requires).
   * Reserved flag values and DESC without EVENT_IDX notify (a spurious interrupt is harmless).
   */
  needsNotification(): boolean {
    const ev = this.driverEvent32;
    if (ev === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    this.publishUsed();
    const v = Atomics.load(ev, 0);
    const moved = this.usedSinceSignal;
    const valid = this.signalledValid;
    this.usedSinceSignal = 0;
    this.signalledValid = true;
    const flags = (v >>> 16) & RING_EVENT_FLAGS_MASK;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx) return true;
    return !valid || packedNeedEvent(v & 0xffff, this.nextUsed, this.usedWrap, moved, this.size);
  }

  /** Asks the driver not to send available-buffer notifications (device area flags DISABLE). */
  disableNotification(): void {
    this.writeDeviceEvent(RING_EVENT_FLAGS_DISABLE << 16);
  }

  /**
   * Asks the driver to notify again (ENABLE, or with EVENT_IDX: DESC at the next position to read)
   * and returns true if a chain became available meanwhile: use as
   * `do { disable; drain } while (enableNotification())`.
   */
  enableNotification(): boolean {
    const offWrap = this.nextAvail | (this.availWrap ? 1 << VRING_PACKED_EVENT_F_WRAP_CTR : 0);
    // off_wrap and flags share one aligned u32, so the driver never sees a torn pair.
    this.writeDeviceEvent(this.eventIdx ? (offWrap | (RING_EVENT_FLAGS_DESC << 16)) >>> 0 : RING_EVENT_FLAGS_ENABLE << 16);
    // seq-cst store, then seq-cst load: the driver either sees our request or we see its descriptor.
    return this.hasPending();
  }

  private writeDeviceEvent(word: number): void {
    const ev = this.deviceEvent32;
    if (ev === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    Atomics.store(ev, 0, word);
    if (this.logging) this.mem?.dirtyLog?.markDirty(this.deviceGpa, VIRTQ_PACKED_EVENT_SIZE);
  }
}
