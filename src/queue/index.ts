// Split virtqueue (VIRTIO 1.2 §2.7): device side, descriptor chains with reader/writer, and a driver-side helper.
export * from './constants.js';
export { DescriptorChain, Reader, Writer } from './chain.js';
export { SplitQueue, type SplitQueueState } from './split-queue.js';
export { SplitQueueDriver, splitRingLayout, type GuestBuffer, type UsedElement, type SplitRingLayout } from './driver.js';
