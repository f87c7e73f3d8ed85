/**
 * The guest memory table of one connection: SET_MEM_TABLE replaces it, ADD_MEM_REG / REM_MEM_REG
 * edit it one region at a time. The handler decides what follows a change (rings re-translated,
 * workers and the device told, postcopy answers); this module owns the mappings.
 * @module
 */
import { GuestMemory, GuestMemoryAtomic, mapGuestRegion, u64ToNumber, type GuestRegion } from '../memory/index.js';
import type { AnyMemoryRegion, MemoryRegionWithFd } from '../vhost-user/messages.js';
import type { Logger } from '../log.js';

/** Memory slots offered with CONFIGURE_MEM_SLOTS (QEMU asks for at least its DIMM count). */
export const MAX_MEM_SLOTS = 32;

/** How REM_MEM_REG identifies a region: guest address, size and front-end user address. */
function regionKey(r: { guestPhysAddr: bigint | number; memorySize?: bigint; size?: number; userAddr: bigint | number }): string {
  return `${BigInt(r.guestPhysAddr)}/${BigInt(r.memorySize ?? r.size ?? 0)}/${BigInt(r.userAddr)}`;
}

/** The mapped regions of a connection, as the snapshot every ring and worker reads. */
export class MemoryTable {
  /** The current snapshot; replaced, never mutated, so a request in flight keeps its own. */
  readonly memory = new GuestMemoryAtomic();
  /** Extra ADD_MEM_REGs of a mapped region, by {@link regionKey}. */
  private readonly repeats = new Map<string, number>();

  constructor(private readonly logger: Logger) {}

  /** SET_MEM_TABLE: maps `regions` as the new table, all or nothing; returns them as mapped. */
  set(regions: readonly MemoryRegionWithFd[], owner: object): GuestRegion[] {
    const mapped: GuestRegion[] = [];
    let next: GuestMemory;
    try {
      for (const r of regions) mapped.push(mapGuestRegion(r, r.fd, owner));
      next = new GuestMemory(mapped, this.memory.memory.dirtyLog);
    } catch (e) {
      for (const r of mapped) r.unmap();
      throw e;
    }
    this.memory.replace(next);
    this.repeats.clear();
    this.logger.log('info', `memory table: ${mapped.length} region(s): ${mapped.map((r) => `gpa 0x${r.guestPhysAddr.toString(16)}+0x${r.size.toString(16)}`).join(', ')}`);
    return mapped;
  }

  /**
   * ADD_MEM_REG: maps one more region and returns it (`repeat` false), or returns the mapped
   * region it repeats exactly (`repeat` true, nothing changed). QEMU before 8.0 sends
   * ADD_MEM_REG/REM_MEM_REG once per vhost device, and a multi-queue NIC is one vhost device per
   * queue pair on the same connection: the same region arrives once per pair. A repeat is counted
   * instead of refused as an overlap; each REM_MEM_REG drops one count, the last one unmaps.
   */
  add(region: MemoryRegionWithFd, owner: object): { region: GuestRegion; repeat: boolean } {
    const key = regionKey(region);
    const same = this.memory.memory.regions.find((r) => regionKey(r) === key && r.mmapOffset === Number(region.mmapOffset));
    if (same !== undefined) {
      this.repeats.set(key, (this.repeats.get(key) ?? 0) + 1);
      this.logger.log('debug', `ADD_MEM_REG repeats region ${same.toString()}: counted, not mapped again`);
      return { region: same, repeat: true };
    }
    if (this.memory.memory.regions.length >= MAX_MEM_SLOTS) throw new Error(`all ${MAX_MEM_SLOTS} memory slots are in use`);
    const r = mapGuestRegion(region, region.fd, owner);
    try {
      this.memory.withRegionAdded(r);
    } catch (e) {
      r.unmap();
      throw e;
    }
    return { region: r, repeat: false };
  }

  /** REM_MEM_REG: drops one repeat of the region, or unmaps it; true when the table changed. */
  remove(region: AnyMemoryRegion): boolean {
    const key = regionKey(region);
    const repeats = this.repeats.get(key) ?? 0;
    if (repeats > 0) {
      if (repeats === 1) this.repeats.delete(key);
      else this.repeats.set(key, repeats - 1);
      return false;
    }
    this.memory.withRegionRemoved(
      u64ToNumber(region.guestPhysAddr, 'guest address'),
      u64ToNumber(region.memorySize, 'region size'),
      u64ToNumber(region.userAddr, 'user address'),
    );
    return true;
  }

  /** Unmaps everything once nothing pins the snapshot. */
  close(): void {
    this.memory.close();
  }
}
