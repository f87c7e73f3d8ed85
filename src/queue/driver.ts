import type { GuestMemory } from '../memory/index.js';
import {
  QueueError, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
  VIRTQ_MAX_SIZE, VIRTQ_USED_F_NO_NOTIFY, availRingSize, descTableSize, usedRingSize, vringNeedEvent,
} from './constants.js';

/** A guest buffer: guest-physical address and length. */
export interface GuestBuffer {
  /** Guest-physical address. */
  gpa: number;
  /** Length in bytes. */
  len: number;
}

/** A completed chain as reaped from the used ring. */
export interface UsedElement {
  /** Head index returned by the device. */
  id: number;
  /** Bytes the device wrote. */
  len: number;
}

/** Guest-physical placement of the three parts of a split ring. */
export interface SplitRingLayout {
  /** Descriptor table (16-byte aligned). */
  descGpa: number;
  /** Available ring. */
  availGpa: number;
  /** Used ring (4-byte aligned). */
  usedGpa: number;
  /** First byte after the used ring. */
  end: number;
}

/** Lays a ring of `size` entries out contiguously from `base` (rounded up to 16). */
export function splitRingLayout(size: number, base: number): SplitRingLayout {
  const descGpa = Math.ceil(base / 16) * 16;
  const availGpa = descGpa + descTableSize(size);
  const usedGpa = Math.ceil((availGpa + availRingSize(size)) / 4) * 4;
  return { descGpa, availGpa, usedGpa, end: usedGpa + usedRingSize(size) };
}

function view<T extends Uint16Array | Uint32Array>(
  mem: GuestMemory, gpa: number, bytes: number,
  Ctor: { new (b: ArrayBufferLike, o: number, n: number): T; BYTES_PER_ELEMENT: number },
): T {
  const v = mem.translate(gpa, bytes);
  if (v.byteOffset % Ctor.BYTES_PER_ELEMENT !== 0) throw new QueueError('misaligned', `ring at 0x${gpa.toString(16)} is not host-aligned`);
  return new Ctor(v.buffer, v.byteOffset, Math.floor(bytes / Ctor.BYTES_PER_ELEMENT));
}

/**
 * The driver (front-end/guest) side of a split virtqueue, for tests and loopback setups: places
 * buffers on the ring, decides whether to kick, and reaps used entries. It writes the rings of the
 * given guest memory exactly as a guest driver would (little-endian, used.idx read with
 * Atomics.load, avail.idx published with Atomics.store after the ring entry).
 *
 * The `write*`/`publish*`/`setAvailIdx` methods give raw access for building malformed rings.
 */
export class SplitQueueDriver {
  /** Queue size. */
  readonly size: number;
  /** Whether VIRTIO_RING_F_EVENT_IDX semantics are used for kicks and interrupts. */
  eventIdx: boolean;
  private readonly desc32: Uint32Array;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly free: number[] = [];
  private readonly owned: (number[] | undefined)[] = [];
  private availIdxShadow = 0;
  private lastKickAvail = 0;
  private lastUsed = 0;

  /**
   * Zeroes the rings in `mem` and puts every descriptor on the free list.
   * @param mem Guest memory holding the rings and, usually, the buffers; the driver does not own it.
   * @param size Queue size: a power of two up to {@link VIRTQ_MAX_SIZE} (else throws QueueError `invalid-size`).
   * @param descGpa Guest-physical address of the descriptor table (16-byte aligned).
   * @param availGpa Guest-physical address of the available ring (2-byte aligned).
   * @param usedGpa Guest-physical address of the used ring (4-byte aligned).
   * @param opts `eventIdx`: use VIRTIO_RING_F_EVENT_IDX for kick and interrupt suppression.
   */
  constructor(
    readonly mem: GuestMemory, size: number, readonly descGpa: number, readonly availGpa: number, readonly usedGpa: number,
    opts: { eventIdx?: boolean } = {},
  ) {
    if (!Number.isInteger(size) || size < 1 || size > VIRTQ_MAX_SIZE || (size & (size - 1)) !== 0) {
      throw new QueueError('invalid-size', `queue size ${size} is not a power of two ≤ ${VIRTQ_MAX_SIZE}`);
    }
    this.size = size;
    this.eventIdx = opts.eventIdx ?? false;
    mem.translate(descGpa, descTableSize(size)).fill(0);
    mem.translate(availGpa, availRingSize(size)).fill(0);
    mem.translate(usedGpa, usedRingSize(size)).fill(0);
    this.desc32 = view(mem, descGpa, descTableSize(size), Uint32Array);
    this.avail16 = view(mem, availGpa, availRingSize(size), Uint16Array);
    this.used16 = view(mem, usedGpa, usedRingSize(size), Uint16Array);
    this.used32 = view(mem, usedGpa, usedRingSize(size), Uint32Array);
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
  }

  /** Number of free descriptors. */
  get freeCount(): number {
    return this.free.length;
  }

  /** Writes descriptor `i` of the ring's table (raw). */
  writeDesc(i: number, gpa: number, len: number, flags: number, next: number): void {
    SplitQueueDriver.putDesc(this.desc32, i, gpa, len, flags, next);
  }

  /** Writes descriptor `i` of an indirect table at `tableGpa` in guest memory (raw). */
  writeIndirectDesc(tableGpa: number, i: number, gpa: number, len: number, flags: number, next: number): void {
    const at = tableGpa + 16 * i;
    this.mem.writeU64(at, BigInt(gpa));
    this.mem.writeU32(at + 8, len);
    this.mem.writeU16(at + 12, flags);
    this.mem.writeU16(at + 14, next);
  }

  private static putDesc(t: Uint32Array, i: number, gpa: number, len: number, flags: number, next: number): void {
    const b = i * 4;
    t[b] = gpa % 0x1_0000_0000;
    t[b + 1] = Math.floor(gpa / 0x1_0000_0000);
    t[b + 2] = len;
    t[b + 3] = (flags & 0xffff) | ((next & 0xffff) << 16);
  }

  /**
   * Starts both free-running indices at `base` as if `base` chains had already gone round the ring
   * (writes avail.idx and used.idx): pair with `SplitQueue.setVringBase(base)` to test wrap-around.
   */
  setRingIndices(base: number): void {
    const b = base & 0xffff;
    this.availIdxShadow = this.lastKickAvail = this.lastUsed = b;
    Atomics.store(this.avail16, 1, b);
    Atomics.store(this.used16, 1, b);
  }

  /** Puts `head` in the next available slot and publishes avail.idx (raw). */
  publish(head: number): void {
    this.avail16[2 + (this.availIdxShadow & (this.size - 1))] = head;
    this.availIdxShadow = (this.availIdxShadow + 1) & 0xffff;
    Atomics.store(this.avail16, 1, this.availIdxShadow);
  }

  /** Overwrites avail.idx (raw, for hostile tests). */
  setAvailIdx(idx: number): void {
    this.availIdxShadow = idx & 0xffff;
    Atomics.store(this.avail16, 1, this.availIdxShadow);
  }

  /**
   * Places a chain of device-readable then device-writable buffers and makes it available.
   * Returns the head index. Throws when not enough descriptors are free.
   */
  addChain(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[] = []): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new QueueError('buffer-too-small', 'a chain needs at least one buffer');
    if (n > this.free.length) throw new QueueError('buffer-too-small', `need ${n} descriptors, ${this.free.length} free`);
    const ids = this.free.splice(this.free.length - n, n).reverse();
    for (let k = 0; k < n; k++) {
      const b = (k < readable.length ? readable[k] : writable[k - readable.length]) as GuestBuffer;
      const flags = (k < readable.length ? 0 : VIRTQ_DESC_F_WRITE) | (k < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
      this.writeDesc(ids[k] as number, b.gpa, b.len, flags, k < n - 1 ? (ids[k + 1] as number) : 0);
    }
    const head = ids[0] as number;
    this.owned[head] = ids;
    this.publish(head);
    return head;
  }

  /**
   * Places a chain through an indirect table written at `tableGpa` (16 bytes per buffer), using a
   * single ring descriptor. Returns the head index.
   */
  addIndirectChain(tableGpa: number, readable: readonly GuestBuffer[], writable: readonly GuestBuffer[] = []): number {
    const n = readable.length + writable.length;
    if (n === 0 || this.free.length === 0) throw new QueueError('buffer-too-small', 'empty chain or no free descriptor');
    for (let k = 0; k < n; k++) {
      const b = (k < readable.length ? readable[k] : writable[k - readable.length]) as GuestBuffer;
      const flags = (k < readable.length ? 0 : VIRTQ_DESC_F_WRITE) | (k < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
      this.writeIndirectDesc(tableGpa, k, b.gpa, b.len, flags, k < n - 1 ? k + 1 : 0);
    }
    const head = this.free.pop() as number;
    this.writeDesc(head, tableGpa, 16 * n, VIRTQ_DESC_F_INDIRECT, 0);
    this.owned[head] = [head];
    this.publish(head);
    return head;
  }

  /** Whether the device asked to be notified of the buffers published since the last kick check. */
  kickNeeded(): boolean {
    const newIdx = this.availIdxShadow;
    const old = this.lastKickAvail;
    this.lastKickAvail = newIdx;
    // The avail.idx store (seq-cst) is ordered before these loads.
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.used16, 2 + 4 * this.size), newIdx, old);
    return (Atomics.load(this.used16, 0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Reaps one used element (freeing its descriptors if addChain placed them), or null. */
  popUsed(): UsedElement | null {
    if (Atomics.load(this.used16, 1) === this.lastUsed) return null;
    const slot = this.lastUsed & (this.size - 1);
    const id = this.used32[1 + 2 * slot] as number;
    const len = this.used32[2 + 2 * slot] as number;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    const ids = this.owned[id];
    if (ids !== undefined) {
      this.owned[id] = undefined;
      for (const d of ids) this.free.push(d);
    }
    return { id, len };
  }

  /** The device's used.idx. */
  get usedIdx(): number {
    return Atomics.load(this.used16, 1);
  }

  /** The driver's avail.idx. */
  get availIdx(): number {
    return this.availIdxShadow;
  }

  /** avail_event as written by the device (EVENT_IDX). */
  get availEvent(): number {
    return Atomics.load(this.used16, 2 + 4 * this.size);
  }

  /** Whether the device set VIRTQ_USED_F_NO_NOTIFY. */
  get noNotify(): boolean {
    return (Atomics.load(this.used16, 0) & VIRTQ_USED_F_NO_NOTIFY) !== 0;
  }

  /** Index of the next used entry popUsed() will reap. */
  get lastUsedIdx(): number {
    return this.lastUsed;
  }

  /**
   * Asks for an interrupt on the next completion, as a guest driver does before sleeping: used_event
   * = next used index to reap (EVENT_IDX), else clears VIRTQ_AVAIL_F_NO_INTERRUPT.
   */
  enableInterrupts(): void {
    if (this.eventIdx) this.setUsedEvent(this.lastUsed);
    else this.setNoInterrupt(false);
  }

  /** Writes used_event (EVENT_IDX): interrupt wanted once used.idx passes `idx`. */
  setUsedEvent(idx: number): void {
    Atomics.store(this.avail16, 2 + this.size, idx & 0xffff);
  }

  /** Sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT. */
  setNoInterrupt(on: boolean): void {
    Atomics.store(this.avail16, 0, on ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0);
  }
}
