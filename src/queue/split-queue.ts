import type { GuestMemory } from '../memory/index.js';
import { ringView } from './ring-view.js';
import { DescriptorChain } from './chain.js';
import type { SplitInflightRegion } from './inflight.js';
import {
  QueueError, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
  VIRTQ_MAX_INDIRECT, VIRTQ_MAX_SIZE, VIRTQ_USED_F_NO_NOTIFY, VIRTQ_AVAIL_ALIGN, VIRTQ_DESC_ALIGN,
  VIRTQ_USED_ALIGN, availRingSize, descTableSize, usedRingSize, vringNeedEvent,
} from './constants.js';

const TWO32 = 0x1_0000_0000;

/** Queue state carried by GET_VRING_BASE / SET_VRING_BASE (and kept across memory changes). */
export interface SplitQueueState {
  /** Next available-ring index the device will read (u16, free-running). */
  nextAvail: number;
  /** Next used-ring index the device will write (u16, free-running). */
  nextUsed: number;
}

/** Indirect table entries accepted even on small queues (QEMU's VIRTQUEUE_MAX_SIZE). */
const MAX_INDIRECT_SEGMENTS = 1024;

/**
 * Device side of a split virtqueue (VIRTIO 1.2 §2.7).
 *
 * Ring addresses are guest-physical. `setMemory()` (and `setAddresses()` once memory is set)
 * validates the rings and caches typed views over them, so the per-request paths
 * (`popDescriptorChain`, `addUsed`) do not allocate beyond the returned chain (which may be
 * recycled). Those views alias the snapshot's mappings: keep that snapshot pinned (a
 * GuestMemoryGuard) for as long as the queue uses it.
 */
export class SplitQueue {
  /** Largest size this queue accepts (device maximum). */
  readonly maxSize: number;
  /** Queue size (power of two). */
  size: number;
  /** Guest-physical address of the descriptor table. */
  descGpa = 0;
  /** Guest-physical address of the available ring. */
  availGpa = 0;
  /** Guest-physical address of the used ring. */
  usedGpa = 0;
  /** Set when the front-end enabled the queue (kick fd received / SET_VRING_ENABLE). */
  ready = false;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx = false;
  /**
   * Set after an unrecoverable ring error (NEEDS_RESET): pop returns null, hasPending and
   * enableNotification report no work, until SET_VRING_BASE (setState) or reset() clears it.
   */
  broken = false;
  private nextAvail = 0;
  private nextUsed = 0;
  /** Last avail.idx read from the ring (entries before it are known to be published). */
  private shadowAvail = 0;
  private signalledUsed = 0;
  private signalledUsedValid = false;
  private mem: GuestMemory | null = null;
  private desc32: Uint32Array | null = null;
  private avail16: Uint16Array | null = null;
  private used16: Uint16Array | null = null;
  private used32: Uint32Array | null = null;
  private indirect32 = new Uint32Array(64);
  private indirect8 = new Uint8Array(this.indirect32.buffer);
  private logUsedGpa = -1;
  /** Inflight tracking (INFLIGHT_SHMFD): the shared region recording popped heads, or null. */
  private inflightRegion: SplitInflightRegion | null = null;
  /** Heads recovered from the region, handed out by pop before new requests. */
  private resubmit: number[] = [];
  private resubmitPos = 0;
  /** Heads of the unpublished used batch, recorded in the region once it is published. */
  private readonly pendingHeads: number[] = [];
  /** addUsedDeferred wrote entries that used.idx does not cover yet. */
  private unpublished = false;

  /** `maxSize` bounds `setSize` (power of two ≤ 32768). */
  constructor(maxSize: number = VIRTQ_MAX_SIZE) {
    SplitQueue.checkSize(maxSize);
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  private static checkSize(n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > VIRTQ_MAX_SIZE || (n & (n - 1)) !== 0) {
      throw new QueueError('invalid-size', `queue size ${n} is not a power of two in [1, ${VIRTQ_MAX_SIZE}]`);
    }
  }

  /** SET_VRING_NUM. Throws `invalid-size`. Drops cached views (set addresses/memory again). */
  setSize(n: number): void {
    SplitQueue.checkSize(n);
    if (n > this.maxSize) throw new QueueError('invalid-size', `queue size ${n} exceeds the device maximum ${this.maxSize}`);
    this.size = n;
    this.dropViews();
  }

  /** SET_VRING_ADDR (already translated to guest-physical). Validates alignment; maps if memory is set. */
  setAddresses(descGpa: number, availGpa: number, usedGpa: number): void {
    if (descGpa % VIRTQ_DESC_ALIGN !== 0 || availGpa % VIRTQ_AVAIL_ALIGN !== 0 || usedGpa % VIRTQ_USED_ALIGN !== 0) {
      throw new QueueError('misaligned', `ring addresses desc 0x${descGpa.toString(16)} avail 0x${availGpa.toString(16)} used 0x${usedGpa.toString(16)} violate 16/2/4 alignment`);
    }
    this.descGpa = descGpa;
    this.availGpa = availGpa;
    this.usedGpa = usedGpa;
    this.dropViews();
    if (this.mem !== null) this.mapRings();
  }

  /**
   * Uses `mem` from now on: re-validates the rings against it and caches typed views. On failure
   * throws `bad-ring`/`misaligned` and leaves the queue without views (pop returns null).
   */
  setMemory(mem: GuestMemory): void {
    this.mem = mem;
    this.dropViews();
    if (this.descGpa !== 0 || this.availGpa !== 0 || this.usedGpa !== 0) this.mapRings();
  }

  /** The snapshot in use, or null. */
  get memory(): GuestMemory | null {
    return this.mem;
  }

  /**
   * VHOST_VRING_F_LOG: log used-ring writes at `logGuestAddr` (SET_VRING_ADDR log_guest_addr) in the
   * memory's dirty log; null stops logging.
   */
  setUsedLog(logGuestAddr: number | null): void {
    this.logUsedGpa = logGuestAddr ?? -1;
  }

  private dropViews(): void {
    this.desc32 = this.avail16 = this.used16 = this.used32 = null;
  }

  private mapRings(): void {
    const mem = this.mem as GuestMemory;
    const n = this.size;
    this.desc32 = ringView(mem, this.descGpa, descTableSize(n), 'descriptor table', Uint32Array);
    this.avail16 = ringView(mem, this.availGpa, availRingSize(n), 'available ring', Uint16Array);
    this.used16 = ringView(mem, this.usedGpa, usedRingSize(n), 'used ring', Uint16Array);
    // The used ring is 6 + 8n bytes; the u32 view stops before the trailing u16 avail_event.
    this.used32 = ringView(mem, this.usedGpa, usedRingSize(n), 'used ring', Uint32Array);
  }

  /** True when the rings are mapped and the queue is ready to serve. */
  isValid(): boolean {
    return this.ready && this.desc32 !== null;
  }

  /** GET_VRING_BASE value: the next available index. */
  get vringBase(): number {
    return this.nextAvail;
  }

  /** SET_VRING_BASE: both free-running indices start at `base` (as rust-vmm does). */
  setVringBase(base: number): void {
    this.setState({ nextAvail: base, nextUsed: base });
  }

  /** Current indices. */
  getState(): SplitQueueState {
    return { nextAvail: this.nextAvail, nextUsed: this.nextUsed };
  }

  /** Restores indices (u16 each). */
  setState(s: SplitQueueState): void {
    if (!Number.isInteger(s.nextAvail) || !Number.isInteger(s.nextUsed) || s.nextAvail < 0 || s.nextAvail > 0xffff || s.nextUsed < 0 || s.nextUsed > 0xffff) {
      throw new QueueError('bad-index', `ring indices ${s.nextAvail}/${s.nextUsed} are not u16`);
    }
    this.nextAvail = s.nextAvail;
    this.shadowAvail = s.nextAvail;
    this.nextUsed = s.nextUsed;
    this.unpublished = false;
    this.signalledUsedValid = false;
    // New indices from the front-end are a fresh start for a ring that was broken.
    this.broken = false;
    this.resubmit = [];
    this.resubmitPos = 0;
  }

  /**
   * Starts inflight tracking in `region` (at ring start, rings mapped). A blank region is laid out
   * for this ring; one holding an earlier back-end's state is recovered: its heads still in flight
   * are handed out by pop (in their original order) before new requests, and the next available
   * index resumes after them (used idx + their count), as libvhost-user does. Returns how many
   * heads will be resubmitted. Throws InflightError for an inconsistent region.
   */
  startInflight(region: SplitInflightRegion): number {
    const used = Atomics.load(this.usedRing(), 1);
    if (region.size !== this.size) throw new QueueError('invalid-size', `inflight region for ${region.size} descriptors on a ring of ${this.size}`);
    let heads: number[] = [];
    if (!region.initialised) {
      region.init(used);
    } else {
      heads = region.recover(used);
      this.nextUsed = used;
      this.nextAvail = this.shadowAvail = (used + heads.length) & 0xffff;
      this.signalledUsedValid = false;
    }
    this.inflightRegion = region;
    this.resubmit = heads;
    this.resubmitPos = 0;
    return heads.length;
  }

  /** Stops recording in the inflight region (the region itself is left as it is). */
  stopInflight(): void {
    this.inflightRegion = null;
    this.pendingHeads.length = 0;
    this.resubmit = [];
    this.resubmitPos = 0;
  }

  private get resubmitPending(): boolean {
    return this.resubmitPos < this.resubmit.length;
  }

  /** Sets nextUsed from the used ring's idx as the driver sees it (done on SET_VRING_ADDR by QEMU's libvhost-user). */
  syncNextUsedFromRing(): void {
    const u = this.usedRing();
    this.nextUsed = Atomics.load(u, 1);
    this.signalledUsedValid = false;
  }

  /** Back to the reset state (GET_VRING_BASE stops the ring; device reset). Keeps maxSize. */
  reset(): void {
    this.size = this.maxSize;
    this.descGpa = this.availGpa = this.usedGpa = 0;
    this.ready = false;
    this.eventIdx = false;
    this.broken = false;
    this.nextAvail = this.nextUsed = this.shadowAvail = 0;
    this.unpublished = false;
    this.signalledUsedValid = false;
    this.logUsedGpa = -1;
    this.mem = null;
    this.dropViews();
    this.stopInflight();
  }

  private availRing(): Uint16Array {
    if (this.avail16 === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    return this.avail16;
  }

  private usedRing(): Uint16Array {
    if (this.used16 === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    return this.used16;
  }

  /** The driver's available index (Atomics.load: acquire before reading ring entries). */
  availIdx(): number {
    return Atomics.load(this.availRing(), 1);
  }

  /** Next used index the device will publish. */
  usedIdx(): number {
    return this.nextUsed;
  }

  /** True when the driver has made buffers available that were not popped yet. */
  hasPending(): boolean {
    return !this.broken && this.desc32 !== null && (this.resubmitPending || this.availIdx() !== this.nextAvail);
  }

  /**
   * Takes the next available chain, or null when none is pending (or the queue is not ready or
   * broken). Pass a previously returned chain to recycle it (it must no longer be in use).
   *
   * A malformed chain throws QueueError; it has been consumed from the available ring, and
   * `err.headIndex` (when not null) can be completed with `addUsed(head, 0)` so the queue keeps
   * serving. `avail-idx-jump` leaves the ring untouched: the device should mark the queue broken.
   */
  popDescriptorChain(reuse?: DescriptorChain): DescriptorChain | null {
    const desc32 = this.desc32;
    const avail16 = this.avail16;
    if (!this.ready || this.broken || desc32 === null || avail16 === null) return null;
    const size = this.size;
    if (this.resubmitPending) {
      const chain = reuse ?? new DescriptorChain();
      this.walk(chain, this.resubmit[this.resubmitPos++] as number, desc32);
      chain.finish();
      return chain;
    }
    if (this.nextAvail === this.shadowAvail) {
      // Only re-read avail.idx (Atomics.load: acquire) once the entries published so far are used up.
      const availIdx = Atomics.load(avail16, 1);
      const pending = (availIdx - this.nextAvail) & 0xffff;
      if (pending === 0) return null;
      if (pending > size) {
        throw new QueueError('avail-idx-jump', `avail idx ${availIdx} is ${pending} entries ahead of ${this.nextAvail} (queue size ${size})`);
      }
      this.shadowAvail = availIdx;
    }
    const head = avail16[2 + (this.nextAvail & (size - 1))] as number;
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    if (head >= size) throw new QueueError('bad-index', `head descriptor index ${head} ≥ queue size ${size}`);
    this.inflightRegion?.mark(head);
    const chain = reuse ?? new DescriptorChain();
    this.walk(chain, head, desc32);
    chain.finish();
    return chain;
  }

  private walk(chain: DescriptorChain, head: number, ring: Uint32Array): void {
    const mem = this.mem as GuestMemory;
    chain.reset(head, mem);
    let table = ring;
    let tableSize = this.size;
    let ttl = tableSize;
    let idx = head;
    let inIndirect = false;
    let seenWritable = false;
    for (;;) {
      if (idx >= tableSize) {
        throw new QueueError('bad-index', `descriptor index ${idx} ≥ ${inIndirect ? 'indirect table size' : 'queue size'} ${tableSize}`, head);
      }
      if (ttl === 0) {
        throw new QueueError('chain-too-long', `descriptor chain from head ${head} exceeds ${tableSize} ${inIndirect ? 'indirect ' : ''}descriptors (loop?)`, head);
      }
      ttl--;
      const b = idx << 2;
      const lo = table[b] as number;
      const hi = table[b + 1] as number;
      const len = table[b + 2] as number;
      const fn = table[b + 3] as number;
      const flags = fn & 0xffff;
      if (hi >= 0x20_0000) {
        // addr ≥ 2^53: never guest memory; distinguish u64 wrap-around for the diagnostics.
        const overflow = hi === 0xffff_ffff && lo + len > TWO32;
        throw new QueueError(overflow ? 'overflow' : 'out-of-range', `descriptor ${idx} address 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}+0x${len.toString(16)} is ${overflow ? 'wrapping past 2^64' : 'outside guest memory'}`, head);
      }
      const addr = hi * TWO32 + lo;
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (inIndirect) throw new QueueError('nested-indirect', `indirect descriptor ${idx} inside an indirect table`, head);
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) throw new QueueError('indirect-with-next', `descriptor ${idx} has both INDIRECT and NEXT`, head);
        // At most max(queue size, 1024) entries: a driver must not build a chain longer than the
        // queue (VIRTIO 1.2 §2.7.5.3.1), QEMU maps at most 1024 segments, and a bound keeps a
        // hostile table from growing every recycled chain's buffers to 64Ki entries.
        const maxEntries = Math.min(VIRTQ_MAX_INDIRECT, Math.max(this.size, MAX_INDIRECT_SEGMENTS));
        if (len === 0 || len % 16 !== 0 || len > 16 * maxEntries) {
          throw new QueueError('bad-indirect-len', `indirect table length ${len} is not a non-zero multiple of 16 up to ${16 * maxEntries}`, head);
        }
        if (!mem.checkRange(addr, len)) {
          throw new QueueError('out-of-range', `indirect table 0x${addr.toString(16)}+0x${len.toString(16)} is outside guest memory`, head);
        }
        // Copy the table: the driver cannot change it under us and alignment does not matter.
        if (this.indirect8.length < len) {
          this.indirect32 = new Uint32Array(len >>> 2);
          this.indirect8 = new Uint8Array(this.indirect32.buffer);
        }
        mem.read(addr, this.indirect8.subarray(0, len));
        table = this.indirect32;
        tableSize = len >>> 4;
        ttl = tableSize;
        idx = 0;
        inIndirect = true;
        chain.indirect = true;
        continue;
      }
      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (writable) seenWritable = true;
      else if (seenWritable) throw new QueueError('readable-after-writable', `readable descriptor ${idx} follows a writable one`, head);
      if (len !== 0 && !mem.checkRange(addr, len)) {
        throw new QueueError('out-of-range', `descriptor ${idx} buffer 0x${addr.toString(16)}+0x${len.toString(16)} is outside guest memory`, head);
      }
      chain.push(addr, len, writable);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      idx = fn >>> 16;
    }
  }

  /**
   * Returns a chain to the driver: writes the used element, then publishes used.idx with
   * Atomics.store (release). `len` is the number of bytes written into the chain.
   */
  addUsed(headIndex: number, len: number): void {
    this.addUsedDeferred(headIndex, len);
    this.publishUsed();
  }

  /**
   * Like addUsed, but used.idx is not advanced until `publishUsed()` (or `needsNotification()`):
   * a batch of completions (e.g. the several buffers of one mergeable receive frame) becomes
   * visible to the driver with one release store.
   */
  addUsedDeferred(headIndex: number, len: number): void {
    const used32 = this.used32;
    const used16 = this.used16;
    if (used32 === null || used16 === null) throw new QueueError('not-ready', 'queue rings are not mapped');
    if (!(headIndex >= 0 && headIndex < this.size) || !Number.isInteger(headIndex)) {
      throw new QueueError('bad-index', `used id ${headIndex} ≥ queue size ${this.size}`);
    }
    // Spec order: the head joins the region's last batch before used.idx covers it; the batch
    // is marked done in the region only after publishUsed() (so a crash anywhere is recoverable).
    const region = this.inflightRegion;
    if (region !== null) {
      region.beforeUsed(headIndex);
      this.pendingHeads.push(headIndex);
    }
    const slot = this.nextUsed & (this.size - 1);
    used32[1 + 2 * slot] = headIndex;
    used32[2 + 2 * slot] = len >>> 0;
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    this.unpublished = true;
    if (this.logUsedGpa >= 0) {
      const log = (this.mem as GuestMemory).dirtyLog;
      if (log !== null) {
        log.markDirty(this.logUsedGpa + 4 + 8 * slot, 8);
        log.markDirty(this.logUsedGpa + 2, 2);
      }
    }
  }

  /** Publishes used.idx for the entries written by addUsedDeferred (Atomics.store: release). */
  publishUsed(): void {
    if (!this.unpublished) return;
    this.unpublished = false;
    const used16 = this.used16;
    if (used16 !== null) Atomics.store(used16, 1, this.nextUsed);
    if (this.pendingHeads.length > 0) {
      this.inflightRegion?.afterUsedBatch(this.pendingHeads, this.nextUsed);
      this.pendingHeads.length = 0;
    }
  }

  /**
   * Whether the driver wants an interrupt for the used entries added since the last call.
   * With EVENT_IDX: vring_need_event(used_event, new, old). Atomics.store of used.idx (seq-cst) is
   * ordered before the Atomics.load of used_event, which is the full barrier the spec requires.
   */
  needsNotification(): boolean {
    this.publishUsed();
    const avail16 = this.availRing();
    if (!this.eventIdx) {
      return (Atomics.load(avail16, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    const usedEvent = Atomics.load(avail16, 2 + this.size);
    const valid = this.signalledUsedValid;
    const old = this.signalledUsed;
    this.signalledUsed = this.nextUsed;
    this.signalledUsedValid = true;
    return !valid || vringNeedEvent(usedEvent, this.nextUsed, old);
  }

  /** Asks the driver not to kick (no-op with EVENT_IDX, where avail_event is simply not advanced). */
  disableNotification(): void {
    if (this.eventIdx) return;
    const used16 = this.usedRing();
    Atomics.store(used16, 0, Atomics.load(used16, 0) | VIRTQ_USED_F_NO_NOTIFY);
    this.logUsedFlags(0);
  }

  /**
   * Asks the driver to kick again and returns true if buffers became available meanwhile (so the
   * caller must keep processing instead of waiting): the race-free pattern
   * `do { disable; drain } while (enableNotification())`. A broken ring stays quiet (notifications
   * off) and reports no work: its avail index cannot be trusted, and "work" there would never be
   * popped, so that loop would spin.
   */
  enableNotification(): boolean {
    if (this.broken) return false;
    const avail16 = this.availRing();
    const used16 = this.usedRing();
    if (this.eventIdx) {
      Atomics.store(used16, 2 + 4 * this.size, this.nextAvail);
      this.logUsedFlags(4 + 8 * this.size);
    } else {
      Atomics.store(used16, 0, Atomics.load(used16, 0) & ~VIRTQ_USED_F_NO_NOTIFY);
      this.logUsedFlags(0);
    }
    // seq-cst store above, then seq-cst load: the driver either sees our request or we see its idx.
    return this.resubmitPending || Atomics.load(avail16, 1) !== this.nextAvail;
  }

  private logUsedFlags(offset: number): void {
    if (this.logUsedGpa < 0) return;
    const log = (this.mem as GuestMemory).dirtyLog;
    if (log !== null) log.markDirty(this.logUsedGpa + offset, 2);
  }
}
