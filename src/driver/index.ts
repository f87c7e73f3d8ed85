/**
 * Front-end tools: drive and measure any vhost-user back-end without a VM. Guest memory in a
 * memfd ({@link FrontendMemory}), virtqueues wired with eventfds ({@link setupQueue}), and the
 * virtio-blk load generator behind `vhost-user-bench` ({@link runBlkLoad}).
 * @module
 */
export { FrontendMemory, FrontendQueue, setupQueue, setupPackedQueue, reattachQueue } from './frontend-driver.js';
export { runBlkLoad, type BlkLoadOptions, type BlkLoadProgress, type BlkLoadResult, type BlkRw } from './blk-load.js';
export { LatencyHistogram } from './histogram.js';
