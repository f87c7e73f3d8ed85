// Guest memory: regions, snapshots, the atomic holder and the dirty log (the vm-memory equivalent).
export { GuestMemoryError, MAX_ADDRESS, u64ToNumber, type GuestMemoryErrorKind } from './errors.js';
export { GuestRegion, WINDOW_STRIDE, arrayBufferBacking, type RegionBacking, type GuestRegionOptions } from './region.js';
export { GuestMemory } from './guest-memory.js';
export { GuestMemoryAtomic, type GuestMemoryGuard } from './atomic.js';
export { DirtyLog, VHOST_LOG_PAGE } from './dirty-log.js';
export {
  mapGuestRegion, mapDirtyLog, mapFrontendFile, MMAP_OFFSET_ALIGN, type MemoryRegionDescription, type MappedFrontendFile, type TrackedBacking,
} from './mmap.js';
export { onGuestMemoryFault, type GuestMemoryFault, type GuestMemoryFaultListener, type FaultTarget } from './faults.js';
