/**
 * virtio-blk over vhost-user (`vhost-user/devices/blk`): the config space layout and feature bits,
 * disks ({@link RamDisk}, {@link FileDisk}, or any {@link BlockDisk}), request parsing and
 * execution ({@link BlkRequestExecutor}), and the device ({@link VhostUserBlkBackend}) to serve
 * with the root package's `VhostUserDaemon`.
 * @module
 */
export * from './config.js';
export { FileDisk, INLINE_MAX_BYTES, type BlockDisk, type FileDiskOptions, type InlineIoMode } from './disk.js';
export { RamDisk, RAM_DISK_CHUNK, type RamDiskOptions } from './ram-disk.js';
export { ImageLock } from './image-lock.js';
export { BlkRequestExecutor, BlkRequestSlot, DEFAULT_MAX_DWZ_SECTORS, type BlkExecutorOptions } from './request.js';
export { VhostUserBlkBackend, type VhostUserBlkBackendOptions } from './backend.js';
export type { AioMode } from './uring-io.js';
