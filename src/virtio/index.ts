/** Virtio definitions shared by every transport: feature bits, device IDs, ring layout. @module */
export * from './features.js';
export * from './ids.js';
export * from './ring.js';
