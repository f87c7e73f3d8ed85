// virtio-blk device over vhost-user: config space, disks, request execution and the backend.
export * from './config.js';
export { FileDisk, RamDisk, RAM_DISK_CHUNK, type BlockDisk, type FileDiskOptions, type RamDiskOptions } from './disk.js';
export { BlkRequestExecutor, BlkRequestSlot, DEFAULT_MAX_DWZ_SECTORS, type BlkExecutorOptions } from './request.js';
export { VhostUserBlkBackend, type VhostUserBlkBackendOptions } from './backend.js';
