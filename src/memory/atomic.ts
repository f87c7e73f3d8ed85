import { GuestMemoryError } from './errors.js';
import { GuestMemory } from './guest-memory.js';
import type { GuestRegion } from './region.js';
import type { DirtyLog } from './dirty-log.js';

/** A counted reference to one memory snapshot; its mappings stay valid until `release()`. */
export interface GuestMemoryGuard {
  /** The snapshot this guard pins. */
  readonly memory: GuestMemory;
  /** Drops the reference (idempotent). */
  release(): void;
}

class Slot {
  users = 1; // the holder's own reference while current
  constructor(readonly memory: GuestMemory) {
    for (const r of memory.regions) r.retain();
    memory.dirtyLog?.retain();
  }

  drop(): void {
    if (--this.users > 0) return;
    for (const r of this.memory.regions) r.release();
    this.memory.dirtyLog?.release();
  }
}

class Guard implements GuestMemoryGuard {
  private slot: Slot | null;
  constructor(slot: Slot) {
    this.slot = slot;
  }
  get memory(): GuestMemory {
    if (this.slot === null) throw new GuestMemoryError('unmapped', 'guest memory guard already released');
    return this.slot.memory;
  }
  release(): void {
    const s = this.slot;
    if (s === null) return;
    this.slot = null;
    s.drop();
  }
}

/**
 * Holder of the current guest-memory snapshot (the `GuestMemoryAtomic` of vm-memory).
 *
 * Each region counts the live snapshots that contain it; a snapshot is live while it is current or
 * while a guard obtained from `acquire()` pins it. A region's mapping is released only when no live
 * snapshot contains it any more, so an in-flight async I/O into a view never sees its mapping vanish.
 * Regions passed in become owned by the holder (they are unmapped when no longer used).
 */
export class GuestMemoryAtomic {
  private slot: Slot | null;

  /** Starts with `initial` (default: empty memory) as the current snapshot. */
  constructor(initial: GuestMemory = new GuestMemory()) {
    this.slot = new Slot(initial);
  }

  /** The current snapshot (not pinned: hold a guard across any await). */
  get memory(): GuestMemory {
    if (this.slot === null) throw new GuestMemoryError('unmapped', 'guest memory holder is closed');
    return this.slot.memory;
  }

  /** Pins the current snapshot. */
  acquire(): GuestMemoryGuard {
    if (this.slot === null) throw new GuestMemoryError('unmapped', 'guest memory holder is closed');
    this.slot.users++;
    return new Guard(this.slot);
  }

  /** Makes `memory` current; the previous snapshot's mappings go away once its guards are released. */
  replace(memory: GuestMemory): void {
    if (this.slot === null) throw new GuestMemoryError('unmapped', 'guest memory holder is closed');
    const old = this.slot;
    this.slot = new Slot(memory); // retain the new regions before releasing shared ones
    old.drop();
  }

  /** VHOST_USER_ADD_MEM_REG: installs and returns a snapshot with `region` added. */
  withRegionAdded(region: GuestRegion): GuestMemory {
    const next = this.memory.withRegionAdded(region);
    this.replace(next);
    return next;
  }

  /** VHOST_USER_REM_MEM_REG: installs and returns a snapshot without the matching region. */
  withRegionRemoved(gpa: number, size: number, userAddr: number): GuestMemory {
    const next = this.memory.withRegionRemoved(gpa, size, userAddr);
    this.replace(next);
    return next;
  }

  /** Installs a snapshot with the given dirty log (null turns logging off). */
  setDirtyLog(log: DirtyLog | null): GuestMemory {
    const next = this.memory.withDirtyLog(log);
    this.replace(next);
    return next;
  }

  /** Drops the holder's reference; mappings go once the last guard is released. Idempotent. */
  close(): void {
    const s = this.slot;
    if (s === null) return;
    this.slot = null;
    s.drop();
  }
}
