import type { GuestMemory } from '../memory/index.js';
import { QueueError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from './constants.js';
import type { GuestBuffer, UsedElement } from './driver.js';
import {
  RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, RING_EVENT_FLAGS_MASK,
  VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED, VIRTQ_PACKED_EVENT_SIZE, VIRTQ_PACKED_MAX_SIZE,
  VRING_PACKED_EVENT_F_WRAP_CTR, packedNeedEvent,
} from './packed-constants.js';
import { ringView } from './ring-view.js';

/** Guest-physical placement of the three parts of a packed ring. */
export interface PackedRingLayout {
  /** Descriptor ring (16-byte aligned, 16 bytes per entry). */
  descGpa: number;
  /** Driver event suppression area (4 bytes, written by the driver). */
  driverGpa: number;
  /** Device event suppression area (4 bytes, written by the device). */
  deviceGpa: number;
  /** First byte after the layout. */
  end: number;
}

/** Lays a packed ring of `size` entries out contiguously from `base` (rounded up to 16). */
export function packedRingLayout(size: number, base: number): PackedRingLayout {
  const descGpa = Math.ceil(base / 16) * 16;
  const driverGpa = descGpa + 16 * size;
  const deviceGpa = driverGpa + VIRTQ_PACKED_EVENT_SIZE;
  return { descGpa, driverGpa, deviceGpa, end: deviceGpa + VIRTQ_PACKED_EVENT_SIZE };
}

/** Event suppression structure as read from guest memory. */
export interface PackedEventSuppression {
  /** RING_EVENT_FLAGS_ENABLE, _DISABLE or _DESC (or the reserved 3). */
  flags: number;
  /** Descriptor ring offset (15 bits). */
  off: number;
  /** Wrap counter bit of off_wrap. */
  wrap: boolean;
}

/**
 * The driver (front-end/guest) side of a packed virtqueue, for tests, the front-end harness and
 * benches. It writes the ring as a guest driver does (VIRTIO 1.2 §2.8.21): descriptors of a chain
 * at consecutive positions, the buffer id in every descriptor (the device reads it from the last),
 * each descriptor's AVAIL/USED flags for the wrap counter at its own position, and the first
 * descriptor's flags last with Atomics.store (release). Used descriptors are detected by their
 * flags (Atomics.load: acquire) and skipped over by the chain length recorded for their id.
 *
 * `writeDesc`, `setDriverEvent` and the position setters give raw access for malformed rings.
 */
export class PackedQueueDriver {
  /** Queue size. */
  readonly size: number;
  /** Whether VIRTIO_RING_F_EVENT_IDX semantics (RING_EVENT_FLAGS_DESC) are used. */
  eventIdx: boolean;
  private readonly desc32: Uint32Array;
  private readonly driverEvent32: Uint32Array;
  private readonly deviceEvent32: Uint32Array;
  private readonly freeIds: number[] = [];
  private readonly chainLen: Uint16Array;
  private readonly outstanding: Uint8Array;
  private freeDescs: number;
  private nextAvail = 0;
  private availWrap = true;
  private nextUsed = 0;
  private usedWrap = true;
  private addedSinceKick = 0;

  /**
   * Zeroes the ring parts in `mem` (the initial state the spec requires).
   * @param mem Guest memory holding the ring and, usually, the buffers; the driver does not own it.
   * @param size Queue size: 1 to {@link VIRTQ_PACKED_MAX_SIZE}, any value (else throws QueueError `invalid-size`).
   * @param descGpa Guest-physical address of the descriptor ring (16-byte aligned).
   * @param driverGpa Guest-physical address of the driver event suppression area (4-byte aligned).
   * @param deviceGpa Guest-physical address of the device event suppression area (4-byte aligned).
   * @param opts `eventIdx`: use VIRTIO_RING_F_EVENT_IDX (descriptor-based event suppression).
   */
  constructor(
    readonly mem: GuestMemory, size: number, readonly descGpa: number, readonly driverGpa: number, readonly deviceGpa: number,
    opts: { eventIdx?: boolean } = {},
  ) {
    if (!Number.isInteger(size) || size < 1 || size > VIRTQ_PACKED_MAX_SIZE) {
      throw new QueueError('invalid-size', `packed queue size ${size} is not in [1, ${VIRTQ_PACKED_MAX_SIZE}]`);
    }
    this.size = size;
    this.eventIdx = opts.eventIdx ?? false;
    mem.translate(descGpa, 16 * size).fill(0);
    mem.translate(driverGpa, VIRTQ_PACKED_EVENT_SIZE).fill(0);
    mem.translate(deviceGpa, VIRTQ_PACKED_EVENT_SIZE).fill(0);
    this.desc32 = ringView(mem, descGpa, 16 * size, 'descriptor ring', Uint32Array);
    this.driverEvent32 = ringView(mem, driverGpa, VIRTQ_PACKED_EVENT_SIZE, 'driver area', Uint32Array);
    this.deviceEvent32 = ringView(mem, deviceGpa, VIRTQ_PACKED_EVENT_SIZE, 'device area', Uint32Array);
    this.chainLen = new Uint16Array(size);
    this.outstanding = new Uint8Array(size);
    this.freeDescs = size;
    for (let i = size - 1; i >= 0; i--) this.freeIds.push(i);
  }

  /** Free ring descriptors. */
  get freeCount(): number {
    return this.freeDescs;
  }

  /** Position of the next descriptor the driver will write. */
  get nextAvailPos(): number {
    return this.nextAvail;
  }

  /** Driver ring wrap counter at `nextAvailPos`. */
  get availWrapCounter(): boolean {
    return this.availWrap;
  }

  /** Position where the driver expects the next used descriptor. */
  get nextUsedPos(): number {
    return this.nextUsed;
  }

  /** Device ring wrap counter the driver expects at `nextUsedPos`. */
  get usedWrapCounter(): boolean {
    return this.usedWrap;
  }

  /** AVAIL/USED bits that mark a descriptor available for driver wrap counter `wrap`. */
  static availFlags(wrap: boolean): number {
    return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Writes ring descriptor `pos` (raw): addr, len, then id and flags together with Atomics.store. */
  writeDesc(pos: number, gpa: number, len: number, id: number, flags: number): void {
    const b = 4 * pos;
    this.desc32[b] = gpa % 0x1_0000_0000;
    this.desc32[b + 1] = Math.floor(gpa / 0x1_0000_0000);
    this.desc32[b + 2] = len;
    Atomics.store(this.desc32, b + 3, ((id & 0xffff) | ((flags & 0xffff) << 16)) >>> 0);
  }

  /** Writes entry `i` of an indirect table at `tableGpa` in guest memory (raw). */
  writeIndirectDesc(tableGpa: number, i: number, gpa: number, len: number, flags: number): void {
    const at = tableGpa + 16 * i;
    this.mem.writeU64(at, BigInt(gpa));
    this.mem.writeU32(at + 8, len);
    this.mem.writeU16(at + 12, 0);
    this.mem.writeU16(at + 14, flags);
  }

  /**
   * Moves the driver's positions (raw): pair with `PackedQueue.setState` to start mid-ring or on
   * the other wrap counter. Assumes nothing is outstanding.
   */
  setPositions(nextAvail: number, availWrap: boolean, nextUsed: number = nextAvail, usedWrap: boolean = availWrap): void {
    this.nextAvail = nextAvail;
    this.availWrap = availWrap;
    this.nextUsed = nextUsed;
    this.usedWrap = usedWrap;
  }

  /**
   * Places a chain of device-readable then device-writable buffers at the next positions and
   * makes it available (first descriptor's flags last). Returns the buffer id.
   */
  addChain(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[] = []): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new QueueError('buffer-too-small', 'a chain needs at least one buffer');
    if (n > this.freeDescs || this.freeIds.length === 0) throw new QueueError('buffer-too-small', `need ${n} descriptors, ${this.freeDescs} free`);
    const id = this.freeIds.pop() as number;
    const first = this.nextAvail;
    let headWord = 0;
    for (let k = 0; k < n; k++) {
      const w = k >= readable.length;
      const buf = (w ? writable[k - readable.length] : readable[k]) as GuestBuffer;
      const flags = PackedQueueDriver.availFlags(this.availWrap) | (w ? VIRTQ_DESC_F_WRITE : 0) | (k < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
      const b = 4 * this.nextAvail;
      this.desc32[b] = buf.gpa % 0x1_0000_0000;
      this.desc32[b + 1] = Math.floor(buf.gpa / 0x1_0000_0000);
      this.desc32[b + 2] = buf.len;
      const word = (id | (flags << 16)) >>> 0;
      if (k === 0) headWord = word;
      else this.desc32[b + 3] = word;
      this.advanceAvail();
    }
    this.commit(id, n, first, headWord);
    return id;
  }

  /**
   * Places a chain through an indirect table written at `tableGpa` (16 bytes per buffer), using
   * one ring descriptor. Returns the buffer id.
   */
  addIndirectChain(tableGpa: number, readable: readonly GuestBuffer[], writable: readonly GuestBuffer[] = []): number {
    const n = readable.length + writable.length;
    if (n === 0 || this.freeDescs === 0 || this.freeIds.length === 0) throw new QueueError('buffer-too-small', 'empty chain or no free descriptor');
    for (let k = 0; k < n; k++) {
      const w = k >= readable.length;
      const buf = (w ? writable[k - readable.length] : readable[k]) as GuestBuffer;
      this.writeIndirectDesc(tableGpa, k, buf.gpa, buf.len, w ? VIRTQ_DESC_F_WRITE : 0);
    }
    const id = this.freeIds.pop() as number;
    const first = this.nextAvail;
    const b = 4 * first;
    this.desc32[b] = tableGpa % 0x1_0000_0000;
    this.desc32[b + 1] = Math.floor(tableGpa / 0x1_0000_0000);
    this.desc32[b + 2] = 16 * n;
    const headWord = (id | ((PackedQueueDriver.availFlags(this.availWrap) | VIRTQ_DESC_F_INDIRECT) << 16)) >>> 0;
    this.advanceAvail();
    this.commit(id, 1, first, headWord);
    return id;
  }

  private advanceAvail(): void {
    if (++this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availWrap = !this.availWrap;
    }
  }

  private commit(id: number, n: number, first: number, headWord: number): void {
    this.chainLen[id] = n;
    this.outstanding[id] = 1;
    this.freeDescs -= n;
    this.addedSinceKick += n;
    // Release: every other descriptor of the chain is visible before the head becomes available.
    Atomics.store(this.desc32, 4 * first + 3, headWord);
  }

  /**
   * Whether the device wants an available-buffer notification for the descriptors added since the
   * last call: device area DISABLE → no, ENABLE → yes, DESC (EVENT_IDX) → whether off_wrap was
   * among them. The head's seq-cst flags store is ordered before this load.
   */
  kickNeeded(): boolean {
    const v = Atomics.load(this.deviceEvent32, 0);
    const moved = this.addedSinceKick;
    this.addedSinceKick = 0;
    const flags = (v >>> 16) & RING_EVENT_FLAGS_MASK;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx) return true;
    return packedNeedEvent(v & 0xffff, this.nextAvail, this.availWrap, moved, this.size);
  }

  /** True when the descriptor at `nextUsedPos` is marked used for the expected wrap counter. */
  hasUsed(): boolean {
    const f = Atomics.load(this.desc32, 4 * this.nextUsed + 3) >>> 16;
    return ((f & VIRTQ_DESC_F_AVAIL) !== 0) === this.usedWrap && ((f & VIRTQ_DESC_F_USED) !== 0) === this.usedWrap;
  }

  /**
   * Reaps one used buffer (freeing its descriptors and id), or null. Throws `bad-buffer-id` if
   * the device wrote an id that is not outstanding.
   */
  popUsed(): UsedElement | null {
    if (!this.hasUsed()) return null;
    const b = 4 * this.nextUsed;
    const id = (this.desc32[b + 3] as number) & 0xffff;
    const len = this.desc32[b + 2] as number;
    if (id >= this.size || this.outstanding[id] === 0) throw new QueueError('bad-buffer-id', `device used id ${id}, which is not outstanding`);
    this.outstanding[id] = 0;
    const n = this.chainLen[id] as number;
    this.nextUsed += n;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap = !this.usedWrap;
    }
    this.freeDescs += n;
    this.freeIds.push(id);
    return { id, len };
  }

  /**
   * Asks for a used-buffer notification on the next completion, as a guest driver does before
   * sleeping: DESC at the next used position (EVENT_IDX), else ENABLE.
   */
  enableInterrupts(): void {
    if (this.eventIdx) this.setDriverEvent(RING_EVENT_FLAGS_DESC, this.nextUsed, this.usedWrap);
    else this.setDriverEvent(RING_EVENT_FLAGS_ENABLE, 0, false);
  }

  /** Asks for no used-buffer notifications. */
  disableInterrupts(): void {
    this.setDriverEvent(RING_EVENT_FLAGS_DISABLE, 0, false);
  }

  /** Writes the driver event suppression area (raw; one u32 store, so never torn). */
  setDriverEvent(flags: number, off: number, wrap: boolean): void {
    const offWrap = (off & 0x7fff) | (wrap ? 1 << VRING_PACKED_EVENT_F_WRAP_CTR : 0);
    Atomics.store(this.driverEvent32, 0, (offWrap | ((flags & 0xffff) << 16)) >>> 0);
  }

  /** The device event suppression area as the device last wrote it. */
  get deviceEvent(): PackedEventSuppression {
    const v = Atomics.load(this.deviceEvent32, 0);
    return { flags: (v >>> 16) & RING_EVENT_FLAGS_MASK, off: v & 0x7fff, wrap: (v & 0x8000) !== 0 };
  }
}
