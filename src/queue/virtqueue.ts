import type { GuestMemory } from '../memory/index.js';
import type { DescriptorChain } from './chain.js';
import type { GuestBuffer, UsedElement } from './driver.js';

/**
 * Device-side operations common to split and packed virtqueues, so a device framework can hold
 * either ring format behind one type (SplitQueue and PackedQueue both satisfy it).
 */
export interface VirtQueue {
  /** Largest size the queue accepts. */
  readonly maxSize: number;
  /** Current queue size. */
  size: number;
  /** Set when the front-end enabled the queue. */
  ready: boolean;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** Set after an unrecoverable ring error; pop returns null while set. */
  broken: boolean;
  /** The memory snapshot in use, or null. */
  readonly memory: GuestMemory | null;
  /** GET_VRING_BASE value in the ring format's encoding. */
  readonly vringBase: number;
  /** SET_VRING_NUM. */
  setSize(n: number): void;
  /** SET_VRING_ADDR, guest-physical: descriptors, driver area (avail), device area (used). */
  setAddresses(descGpa: number, driverGpa: number, deviceGpa: number): void;
  /** Switches to a new memory snapshot (re-validates and maps the rings). */
  setMemory(mem: GuestMemory): void;
  /** Dirty logging of ring writes on (any address) or off (null). */
  setUsedLog(logGuestAddr: number | null): void;
  /** SET_VRING_BASE in the ring format's encoding. */
  setVringBase(base: number): void;
  /** Rings mapped and queue ready. */
  isValid(): boolean;
  /** Back to the reset state. */
  reset(): void;
  /** True when a chain is available to pop. */
  hasPending(): boolean;
  /** Next available chain (recycling `reuse`), or null; throws QueueError on a malformed chain. */
  popDescriptorChain(reuse?: DescriptorChain): DescriptorChain | null;
  /** Completes the chain with id `id` (split: head index; packed: buffer id), `len` bytes written. */
  addUsed(id: number, len: number): void;
  /** Like addUsed, but invisible to the driver until publishUsed() (or needsNotification()). */
  addUsedDeferred(id: number, len: number): void;
  /** Makes the entries of addUsedDeferred visible to the driver with one release store. */
  publishUsed(): void;
  /** Whether the driver wants a used-buffer notification now. */
  needsNotification(): boolean;
  /** Asks the driver not to notify. */
  disableNotification(): void;
  /** Asks the driver to notify; true if buffers arrived meanwhile. */
  enableNotification(): boolean;
}

/**
 * Driver-side operations common to SplitQueueDriver and PackedQueueDriver, so a front-end
 * harness can drive either ring format.
 */
export interface VirtQueueDriver {
  /** Queue size. */
  readonly size: number;
  /** EVENT_IDX semantics on. */
  eventIdx: boolean;
  /** Free descriptors. */
  readonly freeCount: number;
  /** Makes a chain of readable then writable buffers available; returns its id. */
  addChain(readable: readonly GuestBuffer[], writable?: readonly GuestBuffer[]): number;
  /** Makes a chain available through an indirect table written at `tableGpa`; returns its id. */
  addIndirectChain(tableGpa: number, readable: readonly GuestBuffer[], writable?: readonly GuestBuffer[]): number;
  /** Whether the device wants a notification for what was added since the last call. */
  kickNeeded(): boolean;
  /** Reaps one used buffer, or null. */
  popUsed(): UsedElement | null;
  /** Asks for a used-buffer notification on the next completion. */
  enableInterrupts(): void;
}
