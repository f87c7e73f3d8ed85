/**
 * vhost-user-blk queues served from a worker_thread (`--threads N`): the worker borrows the main
 * thread's open image fd (same process, so no second open and no lock conflict), runs its own
 * request executor and, with aio=io_uring, its own ring on its own event loop.
 * @module
 */
import type { CompletionCallback, PENDING, ServingOptions, Vring, VringWorker } from '../../backend/index.js';
import type { DescriptorChain } from '../../queue/index.js';
import { defaultLogger } from '../../log.js';
import { VIRTIO_BLK_F_FLUSH, encodeBlkSerial } from './config.js';
import { FileDisk, type InlineIoMode } from './disk.js';
import { BlkRequestExecutor } from './request.js';
import { pollingOptions } from './fast-path.js';
import type { AioMode } from './uring-io.js';

/** Structured-cloneable description of the disk and device a blk worker serves. */
export interface BlkWorkerData {
  /** The main thread's open fd of the image (stays owned by the main thread's FileDisk). */
  fd: number;
  size: number;
  readOnly: boolean;
  blockSize: number;
  isBlockDevice: boolean;
  aio: AioMode;
  inlineIo: InlineIoMode;
  /** Adaptive polling of the worker's queues (see VhostUserBlkBackendOptions.pollUs). */
  pollUs: number;
  serial: string;
  discard: boolean;
  maxInFlight: number;
}

/** The worker module's entry point (see VringWorkerModule). */
export function createVringWorker(data: unknown, threadId: number): VringWorker {
  const d = data as BlkWorkerData;
  const disk = FileDisk.borrow(d.fd, d);
  const logger = defaultLogger;
  if (d.aio === 'io_uring' && disk.aioFallbackReason !== null) {
    logger.log('warn', `vhost-user-blk worker thread ${threadId}: io_uring unavailable (${disk.aioFallbackReason}); using the threadpool path`);
  }
  logger.log('info', `vhost-user-blk worker thread ${threadId}: serving its queues, data path aio=${disk.aio}`);
  const executor = new BlkRequestExecutor({
    disk, readOnly: d.readOnly, serial: encodeBlkSerial(d.serial), discard: d.discard, writeZeroes: d.discard,
    maxDiscardSeg: 1, maxWriteZeroesSeg: 1, logger,
  });
  return {
    // The same allocation-free path as the main thread's queues: io_uring fast path, inline I/O.
    processChain(_q: number, chain: DescriptorChain, _vring: Vring, done?: CompletionCallback): number | Promise<number> | typeof PENDING {
      return executor.serve(chain, done);
    },
    servingOptions(): ServingOptions {
      return pollingOptions(d.pollUs, disk);
    },
    maxInFlight: () => d.maxInFlight,
    // The worker follows the negotiated FLUSH feature; a later config `writeback` toggle is only
    // seen by the main thread's queues.
    ackedFeatures(features: bigint) {
      executor.writethrough = (features & (1n << BigInt(VIRTIO_BLK_F_FLUSH))) === 0n;
    },
  };
}
