// Split virtqueue (VIRTIO 1.2 §2.7): device side, descriptor chains with reader/writer, and a driver-side helper.
export * from './constants.js';
export { DescriptorChain, Reader, Writer } from './chain.js';
export { SplitQueue, type SplitQueueState } from './split-queue.js';
export { SplitQueueDriver, splitRingLayout, type GuestBuffer, type UsedElement, type SplitRingLayout } from './driver.js';
// Packed virtqueue (VIRTIO 1.2 §2.8) and the interface both ring formats share.
export * from './packed-constants.js';
export { PackedQueue } from './packed-queue.js';
export { PackedQueueDriver, packedRingLayout, type PackedRingLayout, type PackedEventSuppression } from './packed-driver.js';
export type { VirtQueue, VirtQueueDriver } from './virtqueue.js';
// Inflight I/O tracking regions (INFLIGHT_SHMFD), which both queue formats record into.
export {
  SplitInflightRegion, PackedInflightRegion, InflightError, inflightQueueRegionSize, INFLIGHT_ALIGNMENT, INFLIGHT_REGION_VERSION,
  type InflightPackedChain, type InflightPackedDesc, type InflightPackedRecovery,
} from './inflight.js';
