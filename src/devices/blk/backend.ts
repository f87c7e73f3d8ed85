/**
 * The vhost-user-blk device: a {@link VhostUserBackend} serving virtio-blk request queues from a
 * {@link BlockDisk} with asynchronous I/O, one {@link VhostUserBackend.processChain} call per
 * request. The framework's queue server bounds the requests in flight, acknowledges a request
 * (its used entry) only after its I/O finished and its status byte landed, and waits for a ring's
 * requests before GET_VRING_BASE answers, so a stopped ring never loses an acknowledged write and
 * nothing touches guest memory afterwards.
 * @module
 */
import type { VhostUserBackend } from '../../backend/index.js';
import type { DescriptorChain } from '../../queue/index.js';
import { ProtocolFeature } from '../../vhost-user/constants.js';
import {
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VHOST_F_LOG_ALL,
} from '../../virtio/features.js';
import { defaultLogger, type Logger } from '../../log.js';
import {
  VIRTIO_BLK_CONFIG_OFFSETS, VIRTIO_BLK_CONFIG_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_SECTOR_SIZE, encodeBlkConfig, encodeBlkSerial,
} from './config.js';
import type { BlockDisk } from './disk.js';
import type { ImageLock } from './image-lock.js';
import { BlkRequestExecutor } from './request.js';
import { pollingOptions } from './fast-path.js';
import { FileDisk } from './disk.js';
import type { BlkWorkerData } from './worker.js';
import type { CompletionCallback, PENDING, ServingOptions, Vring, VringWorkerModule } from '../../backend/index.js';

/** Options of {@link VhostUserBlkBackend}. */
export interface VhostUserBlkBackendOptions {
  /** The storage. The backend does not close it: call `disk.close()` after the daemon stopped. */
  disk: BlockDisk;
  /** Request queues (default 1; MQ is offered when > 1). */
  numQueues?: number;
  /** Largest queue size (power of two, default 256). */
  queueSize?: number;
  /** Offer VIRTIO_BLK_F_RO and refuse writes (forced when the disk is read-only). */
  readOnly?: boolean;
  /** GET_ID string (≤ 20 ASCII bytes; default 'vhost-user-blk'). */
  serial?: string;
  /** Log sink for rejected requests and ring errors. */
  logger?: Logger;
  /** Requests in flight per queue before the device stops popping (default min(queueSize, 128)). */
  maxInFlight?: number;
  /** Initial cache mode reported in `writeback` (default true = writeback). */
  writeback?: boolean;
  /** Offer DISCARD / WRITE_ZEROES (default true; never on a read-only device). */
  discard?: boolean;
  /**
   * Threads serving the queues (default 1): queue q is served by thread q % threads, thread 0
   * being the main thread and the others worker_threads. Needs a {@link FileDisk}; packed rings
   * are not offered then (worker groups serve split rings only).
   */
  threads?: number;
  /**
   * Adaptive polling (default 0: off): after a queue runs empty, keep checking it, and the disk's
   * io_uring completions, for this many µs before waiting for the next kick. Trades CPU for
   * latency at low queue depth, like QEMU's `poll-max-ns`.
   */
  pollUs?: number;
}

/** What {@link VhostUserBlkBackend.saveState} transfers. */
interface BlkState {
  version: 1;
  writeback: number;
  capacity: number;
  numQueues: number;
  readOnly: boolean;
}

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** virtio-blk over vhost-user. */
export class VhostUserBlkBackend implements VhostUserBackend {
  /** The request executor (exposed for tests and benches). */
  readonly executor: BlkRequestExecutor;
  private readonly disk: BlockDisk;
  private readonly nQueues: number;
  private readonly queueSize: number;
  private readonly inFlightBound: number;
  private readonly readOnly: boolean;
  private readonly discard: boolean;
  private readonly logger: Logger;
  private readonly initialWriteback: number;
  private writeback: number;
  private acked = 0n;
  private readonly nThreads: number;
  private readonly pollUs: number;
  private readonly workerData: BlkWorkerData | null;
  /** Queues that served a request since they last stopped (for the image lock hand-over). */
  private readonly running = new Set<number>();
  private readonly configBuf = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE);

  constructor(opts: VhostUserBlkBackendOptions) {
    this.disk = opts.disk;
    this.nQueues = opts.numQueues ?? 1;
    if (!Number.isInteger(this.nQueues) || this.nQueues < 1 || this.nQueues > 0xffff) throw new RangeError(`numQueues ${this.nQueues} out of range`);
    this.queueSize = opts.queueSize ?? 256;
    if (!Number.isInteger(this.queueSize) || this.queueSize < 4 || this.queueSize > 32768 || (this.queueSize & (this.queueSize - 1)) !== 0) {
      throw new RangeError(`queueSize ${this.queueSize} is not a power of two in [4, 32768]`);
    }
    this.inFlightBound = opts.maxInFlight ?? Math.min(this.queueSize, 128);
    if (!Number.isInteger(this.inFlightBound) || this.inFlightBound < 1) throw new RangeError(`maxInFlight ${this.inFlightBound} must be ≥ 1`);
    this.readOnly = (opts.readOnly ?? false) || opts.disk.readOnly;
    this.discard = (opts.discard ?? true) && !this.readOnly;
    this.logger = opts.logger ?? defaultLogger;
    this.pollUs = opts.pollUs ?? 0;
    if (!Number.isFinite(this.pollUs) || this.pollUs < 0 || this.pollUs > 1_000_000) throw new RangeError(`pollUs ${this.pollUs} is not in 0..1000000`);
    this.nThreads = opts.threads ?? 1;
    if (!Number.isInteger(this.nThreads) || this.nThreads < 1 || this.nThreads > this.nQueues) {
      throw new RangeError(`threads ${this.nThreads} must be an integer in [1, numQueues = ${this.nQueues}]`);
    }
    this.workerData = null;
    if (this.nThreads > 1) {
      const d = opts.disk;
      if (!(d instanceof FileDisk)) throw new RangeError('threads > 1 needs a FileDisk (its fd is shared with the worker threads)');
      this.workerData = {
        fd: d.fd, size: d.size, readOnly: this.readOnly, blockSize: d.blockSize, isBlockDevice: d.isBlockDevice, aio: d.aio, inlineIo: d.inlineIo, pollUs: this.pollUs,
        serial: opts.serial ?? 'vhost-user-blk', discard: this.discard, maxInFlight: this.inFlightBound,
      };
    }
    this.initialWriteback = (opts.writeback ?? true) ? 1 : 0;
    this.writeback = this.initialWriteback;
    this.executor = new BlkRequestExecutor({
      disk: opts.disk,
      readOnly: this.readOnly,
      serial: encodeBlkSerial(opts.serial ?? 'vhost-user-blk'),
      discard: this.discard,
      writeZeroes: this.discard,
      // One segment per request, as QEMU: Linux then issues one request per range.
      maxDiscardSeg: 1,
      maxWriteZeroesSeg: 1,
      logger: this.logger,
    });
    this.updateCacheMode();
  }

  deviceType(): string {
    return 'blk';
  }

  numQueues(): number {
    return this.nQueues;
  }

  maxQueueSize(): number {
    return this.queueSize;
  }

  features(): bigint {
    let f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VHOST_USER_F_PROTOCOL_FEATURES)
      | bit(VHOST_F_LOG_ALL)
      | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY)
      | bit(VIRTIO_BLK_F_CONFIG_WCE);
    if (this.nThreads === 1) f |= bit(VIRTIO_F_RING_PACKED);
    if (this.nQueues > 1) f |= bit(VIRTIO_BLK_F_MQ);
    if (this.readOnly) f |= bit(VIRTIO_BLK_F_RO);
    if (this.discard) f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    return f;
  }

  protocolFeatures(): bigint {
    return [ProtocolFeature.CONFIG, ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.LOG_SHMFD, ProtocolFeature.PAGEFAULT, ProtocolFeature.DEVICE_STATE, ProtocolFeature.CONFIGURE_MEM_SLOTS,
      ProtocolFeature.RESET_DEVICE, ProtocolFeature.STATUS].reduce((m, b) => m | bit(b), 0n);
  }

  ackedFeatures(features: bigint): void {
    this.acked = features;
    // VIRTIO 1.2 §5.2.5.2: with CONFIG_WCE but not FLUSH the device must start in writethrough.
    if ((features & bit(VIRTIO_BLK_F_CONFIG_WCE)) !== 0n && (features & bit(VIRTIO_BLK_F_FLUSH)) === 0n) this.writeback = 0;
    this.updateCacheMode();
  }

  queuesPerThread(): number[] {
    // Arithmetic, not bit operators: masks of more than 31 queues exceed int32.
    const masks = new Array<number>(this.nThreads).fill(0);
    for (let q = 0; q < this.nQueues; q++) masks[q % this.nThreads] = (masks[q % this.nThreads] as number) + 2 ** q;
    return masks;
  }

  workerModule(threadIndex: number): VringWorkerModule | null {
    if (threadIndex === 0 || this.workerData === null) return null;
    return { url: new URL('./worker.js', import.meta.url), data: this.workerData };
  }

  maxInFlight(_queueIndex: number): number {
    return this.inFlightBound;
  }

  servingOptions(_queueIndex: number): ServingOptions {
    return pollingOptions(this.pollUs, this.disk);
  }

  /** Writes must be stable at completion unless a writeback cache is in effect (VIRTIO 1.2 §5.2.6.2). */
  private updateCacheMode(): void {
    const flush = (this.acked & bit(VIRTIO_BLK_F_FLUSH)) !== 0n;
    const wce = (this.acked & bit(VIRTIO_BLK_F_CONFIG_WCE)) !== 0n;
    this.executor.writethrough = !flush || (wce && this.writeback === 0);
  }

  /** The current config space (all {@link VIRTIO_BLK_CONFIG_SIZE} bytes). */
  private config(): Uint8Array {
    const blk = this.disk.blockSize;
    const logical = blk / VIRTIO_BLK_SECTOR_SIZE;
    return encodeBlkConfig({
      capacity: BigInt(this.executor.capacity),
      sizeMax: 0,
      // Two descriptors of every chain carry the header and the status (QEMU's convention).
      segMax: this.queueSize - 2,
      geometry: { cylinders: 0, heads: 0, sectors: 0 },
      blkSize: blk,
      physicalBlockExp: 0,
      alignmentOffset: 0,
      minIoSize: 1,
      optIoSize: 0,
      writeback: this.writeback,
      numQueues: this.nQueues,
      maxDiscardSectors: this.executor.maxDiscardSectors,
      maxDiscardSeg: this.executor.maxDiscardSeg,
      discardSectorAlignment: logical,
      maxWriteZeroesSectors: this.executor.maxWriteZeroesSectors,
      maxWriteZeroesSeg: this.executor.maxWriteZeroesSeg,
      writeZeroesMayUnmap: this.disk.canUnmap ? 1 : 0,
    }, this.configBuf);
  }

  getConfig(offset: number, size: number): Uint8Array {
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 0 || offset + size > VIRTIO_BLK_CONFIG_SIZE) {
      throw new RangeError(`config read ${offset}+${size} outside the ${VIRTIO_BLK_CONFIG_SIZE}-byte virtio-blk config`);
    }
    return this.config().slice(offset, offset + size);
  }

  setConfig(offset: number, data: Uint8Array): void {
    // Only `writeback` is driver-writable (and only meaningful with CONFIG_WCE).
    if (offset !== VIRTIO_BLK_CONFIG_OFFSETS.writeback || data.length !== 1) {
      throw new RangeError(`config write ${offset}+${data.length}: only the writeback byte (offset ${VIRTIO_BLK_CONFIG_OFFSETS.writeback}, 1 byte) is writable`);
    }
    const v = data[0] as number;
    if (v > 1) throw new RangeError(`writeback value ${v} is not 0 or 1`);
    this.writeback = v;
    this.updateCacheMode();
  }

  /**
   * One virtio-blk request. Per-request scratch (the readv/writev view arrays, discard segments)
   * lives on the recycled chain object, so a request allocates nothing but its promise.
   */
  processChain(_queueIndex: number, chain: DescriptorChain, _vring?: Vring, done?: CompletionCallback): number | Promise<number> | typeof PENDING {
    const lock = this.disk.imageLock;
    if (lock !== undefined && !lock.held) this.takeImageLock(lock);
    this.running.add(_queueIndex);
    return this.executor.serve(chain, done);
  }

  /**
   * Takes the image lock before the first I/O: on a migration destination (disk opened with
   * `deferLock`), or where the source resumes after handing the image over. Throws (the request
   * fails) while another process, e.g. the other side of the migration, holds it.
   */
  private takeImageLock(lock: ImageLock): void {
    try {
      lock.acquire();
    } catch (e) {
      const msg = `image lock: ${(e as Error).message}; request refused`;
      this.logger.log('error', msg);
      throw new Error(msg);
    }
    this.logger.log('info', `image lock taken on ${lock.path}`);
  }

  /**
   * A ring stopped (GET_VRING_BASE). Once all are stopped while dirty logging is on, this is a
   * live migration's switch-over: the image lock goes, so the destination's daemon can take it.
   * In-flight requests still finish first: the front-end gets the ring base only after them, and
   * the destination starts only after that.
   */
  queueStopped(queueIndex: number): void {
    this.running.delete(queueIndex);
    const lock = this.disk.imageLock;
    if (this.running.size === 0 && lock?.held === true && (this.acked & bit(VHOST_F_LOG_ALL)) !== 0n) {
      lock.release();
      this.logger.log('info', `image lock released on ${lock.path}: device stopped during migration`);
    }
  }

  /**
   * Migration source (DEVICE_STATE): the driver-set config (the writeback cache mode) and the
   * device's shape, so the destination can refuse a disk that does not match. JSON, versioned.
   */
  saveState(): Uint8Array {
    const s: BlkState = { version: 1, writeback: this.writeback, capacity: this.executor.capacity, numQueues: this.nQueues, readOnly: this.readOnly };
    return new TextEncoder().encode(JSON.stringify(s));
  }

  /** Migration destination: restores {@link saveState}'s state; throws when the device differs. */
  loadState(state: Uint8Array): void {
    let s: Partial<BlkState>;
    try {
      s = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(state)) as Partial<BlkState>;
    } catch (e) {
      throw new Error(`blk state is not JSON: ${(e as Error).message}`);
    }
    if (s.version !== 1) throw new Error(`blk state version ${String(s.version)} (this device reads version 1)`);
    const mine = { capacity: this.executor.capacity, numQueues: this.nQueues, readOnly: this.readOnly };
    for (const k of ['capacity', 'numQueues', 'readOnly'] as const) {
      if (s[k] !== mine[k]) throw new Error(`blk state: source ${k} ${String(s[k])} differs from this device's ${String(mine[k])}`);
    }
    if (s.writeback !== 0 && s.writeback !== 1) throw new Error(`blk state: writeback ${String(s.writeback)} is not 0 or 1`);
    this.writeback = s.writeback;
    this.updateCacheMode();
  }

  resetDevice(): void {
    this.running.clear();
    this.acked = 0n;
    this.writeback = this.initialWriteback;
    this.updateCacheMode();
  }
}
