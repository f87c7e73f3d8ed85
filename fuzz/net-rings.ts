/**
 * The guest side of one ring of the net chain cases, split or packed behind one interface: place a
 * chain (direct or through an indirect table), reap used entries, ask for interrupts. The split
 * port hands out descriptors itself, so hand-written hostile chains can share its table.
 * @module
 */
import {
  PackedQueueDriver, QueueError, SplitQueueDriver, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, type GuestBuffer,
} from '../src/queue/index.js';

/** One descriptor as the cases describe it: address, length, flags (NEXT is added by the port). */
export type Desc = [gpa: number, len: number, flags: number];

/** A used entry. */
export interface UsedEntry {
  id: number;
  len: number;
}

/** What the net cases need of a ring. */
export interface RingPort {
  readonly size: number;
  /** Descriptors free for new chains. */
  readonly free: number;
  /** Places a direct chain and makes it available; returns its id. */
  post(descs: readonly Desc[]): number;
  /** Places a chain through an indirect table written at `table`; returns its id. */
  postIndirect(table: number, descs: readonly Desc[]): number;
  /** The next used entry, or null; throws when the device returned an id the driver never gave (packed). */
  popUsed(): UsedEntry | null;
  enableInterrupts(): void;
}

/** A split ring whose descriptors this port allocates (hostile chains take theirs with {@link take}). */
export class SplitPort implements RingPort {
  private readonly freeList: number[] = [];
  private readonly owned = new Map<number, number[]>();

  constructor(readonly d: SplitQueueDriver) {
    for (let i = d.size - 1; i >= 0; i--) this.freeList.push(i);
  }

  get size(): number { return this.d.size; }
  get free(): number { return this.freeList.length; }

  /** Descriptors for a hand-written chain; publish it with {@link publishRaw}. */
  take(n: number): number[] {
    return this.freeList.splice(this.freeList.length - n, n).reverse();
  }

  /** Makes a hand-written chain of `ids` available (the descriptors return with its used entry). */
  publishRaw(ids: number[]): number {
    const head = ids[0] as number;
    this.owned.set(head, ids);
    this.d.publish(head);
    return head;
  }

  post(descs: readonly Desc[]): number {
    const ids = this.take(descs.length);
    descs.forEach(([g, l, f], k) => this.d.writeDesc(ids[k] as number, g, l, f | (k < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), k < descs.length - 1 ? ids[k + 1] as number : 0));
    return this.publishRaw(ids);
  }

  postIndirect(table: number, descs: readonly Desc[]): number {
    descs.forEach(([g, l, f], k) => this.d.writeIndirectDesc(table, k, g, l, f | (k < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), k + 1));
    return this.post([[table, 16 * descs.length, VIRTQ_DESC_F_INDIRECT]]);
  }

  popUsed(): UsedEntry | null {
    const u = this.d.popUsed();
    if (u === null) return null;
    const ids = this.owned.get(u.id);
    if (ids !== undefined) {
      this.owned.delete(u.id);
      for (const x of ids) this.freeList.push(x);
    }
    return u;
  }

  enableInterrupts(): void {
    this.d.enableInterrupts();
  }
}

/** A packed ring through its driver (which places descriptors and ids by the ring rules). */
export class PackedPort implements RingPort {
  constructor(readonly d: PackedQueueDriver) {}

  get size(): number { return this.d.size; }
  get free(): number { return this.d.freeCount; }

  post(descs: readonly Desc[]): number {
    const { readable, writable } = PackedPort.split(descs);
    return this.d.addChain(readable, writable);
  }

  postIndirect(table: number, descs: readonly Desc[]): number {
    const { readable, writable } = PackedPort.split(descs);
    return this.d.addIndirectChain(table, readable, writable);
  }

  popUsed(): UsedEntry | null {
    try {
      return this.d.popUsed();
    } catch (e) {
      if (e instanceof QueueError) throw new Error(`packed ring: ${e.message}`);
      throw e;
    }
  }

  enableInterrupts(): void {
    this.d.enableInterrupts();
  }

  /** The driver places readable buffers before writable ones: a chain must come in that order. */
  private static split(descs: readonly Desc[]): { readable: GuestBuffer[]; writable: GuestBuffer[] } {
    const readable: GuestBuffer[] = [];
    const writable: GuestBuffer[] = [];
    for (const [gpa, len, f] of descs) {
      if ((f & VIRTQ_DESC_F_WRITE) !== 0) writable.push({ gpa, len });
      else if (writable.length > 0) throw new Error('a packed chain cannot place a readable buffer after a writable one');
      else readable.push({ gpa, len });
    }
    return { readable, writable };
  }
}
