/**
 * A virtqueue as the daemon hands it to a device: the split ring plus its kick/call/err eventfds and
 * the started/enabled states of the spec's "Ring states" section.
 * @module
 */
import * as sys from '../sys/index.js';
import { QueueStats } from './stats.js';
import { SplitQueue } from '../queue/split-queue.js';
import { PackedQueue } from '../queue/packed-queue.js';
import type { GuestMemory, GuestMemoryAtomic, GuestMemoryGuard } from '../memory/index.js';

/** One vring of a device. Fds held here are owned by the Vring (dup'ed from the front-end's). */
export class Vring {
  /** Queue index within the device. */
  readonly index: number;
  /**
   * The device side of the ring (pop chains, add used entries). The framework's {@link QueueServer}
   * drives it; a device that serves chains through a handler does not need to touch it.
   */

  /** The virtqueue: split, or packed once VIRTIO_F_RING_PACKED is negotiated. */
  queue: SplitQueue | PackedQueue;
  /** Counters since the front-end connected (requests, bytes, errors, kicks, interrupts). */
  readonly stats = new QueueStats();
  private kick: number | null = null;
  private call: number | null = null;
  private err: number | null = null;
  private isStarted = false;
  private isEnabled = false;
  private guard: GuestMemoryGuard | null = null;
  private atomic: GuestMemoryAtomic | null = null;
  /** Ring addresses as the front-end sent them (user addresses), re-translated on memory changes. */
  ringUserAddrs: {
    /** Descriptor table / ring. */
    desc: bigint;
    /** Available ring / driver event suppression area. */
    avail: bigint;
    /** Used ring / device event suppression area. */
    used: bigint;
    /** Guest-physical address for used-ring logging, or null when VHOST_VRING_F_LOG was not set. */
    log: bigint | null;
  } | null = null;

  private readonly maxQueueSize: number;

  constructor(index: number, maxQueueSize: number) {
    this.index = index;
    this.maxQueueSize = maxQueueSize;
    this.queue = new SplitQueue(maxQueueSize);
  }

  /** Whether the ring uses the packed layout (VIRTIO_F_RING_PACKED negotiated). */
  get packed(): boolean {
    return this.queue instanceof PackedQueue;
  }

  /**
   * @internal Switches the ring layout (SET_FEATURES, before the ring is configured); a no-op
   * when the layout does not change, so a later SET_FEATURES (e.g. adding VHOST_F_LOG_ALL) keeps
   * the ring's state.
   */
  setRingFormat(packed: boolean): void {
    if (packed === this.packed) return;
    const eventIdx = this.queue.eventIdx;
    this.queue = packed ? new PackedQueue(this.maxQueueSize) : new SplitQueue(this.maxQueueSize);
    this.queue.eventIdx = eventIdx;
    this.queue.ready = this.isStarted;
  }

  /** The kick eventfd, or null. */
  get kickFd(): number | null { return this.kick; }
  /** The call eventfd, or null. */
  get callFd(): number | null { return this.call; }
  /** The error eventfd, or null. */
  get errFd(): number | null { return this.err; }
  /** Started on SET_VRING_KICK (or a kick), stopped on GET_VRING_BASE. */
  get started(): boolean { return this.isStarted; }
  /** SET_VRING_ENABLE state (all rings enabled when protocol features are not negotiated). */
  get enabled(): boolean { return this.isEnabled; }
  /** Whether the device may process the ring now (started, enabled and mapped). */
  get ready(): boolean { return this.isStarted && this.isEnabled && this.queue.isValid(); }

  /** The memory snapshot the queue uses. Throws before SET_MEM_TABLE. */
  get memory(): GuestMemory {
    if (this.guard === null) throw new Error(`vring ${this.index}: no guest memory`);
    return this.guard.memory;
  }

  /** Pins the current memory snapshot for an async operation; call release() when it is done. */
  acquireMemory(): GuestMemoryGuard {
    if (this.atomic === null) throw new Error(`vring ${this.index}: no guest memory`);
    return this.atomic.acquire();
  }

  /** Interrupts the guest: writes the call eventfd. */
  signalUsedQueue(): void {
    if (this.call !== null) {
      sys.eventfdWrite(this.call, 1);
      this.stats.interrupts++;
    }
  }

  /** Interrupts the guest only if the driver asked for it (EVENT_IDX / NO_INTERRUPT). */
  signalUsedIfNeeded(): void {
    this.queue.memory?.dirtyLog?.notify();
    if (this.call !== null && this.queue.needsNotification()) {
      sys.eventfdWrite(this.call, 1);
      this.stats.interrupts++;
    }
  }

  /** Signals a ring error on the err eventfd. */
  signalError(): void {
    if (this.err !== null) sys.eventfdWrite(this.err, 1);
  }

  /** @internal Switches the queue to the current snapshot of `atomic`, pinning it. */
  setMemory(atomic: GuestMemoryAtomic): void {
    const next = atomic.acquire();
    const old = this.guard;
    this.atomic = atomic;
    this.guard = next;
    try {
      this.queue.setMemory(next.memory);
    } finally {
      old?.release();
    }
  }

  /** @internal */
  setKickFd(fd: number | null): void { this.kick = replaceFd(this.kick, fd); }
  /** @internal */
  setCallFd(fd: number | null): void { this.call = replaceFd(this.call, fd); }
  /** @internal */
  setErrFd(fd: number | null): void { this.err = replaceFd(this.err, fd); }
  /** @internal */
  setStarted(v: boolean): void { this.isStarted = v; this.queue.ready = v; }
  /** @internal */
  setEnabled(v: boolean): void { this.isEnabled = v; }

  /** @internal Back to the initial state: stopped, disabled, no fds, no memory. */
  reset(): void {
    this.setKickFd(null);
    this.setCallFd(null);
    this.setErrFd(null);
    this.isStarted = false;
    this.isEnabled = false;
    this.ringUserAddrs = null;
    this.queue.reset();
    this.setRingFormat(false);
    this.guard?.release();
    this.guard = null;
    this.atomic = null;
  }
}

function replaceFd(old: number | null, fd: number | null): number | null {
  if (old !== null && old !== fd) sys.close(old);
  return fd;
}
