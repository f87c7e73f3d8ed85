/**
 * The vhost-user-blk device: a {@link VhostUserBackend} serving virtio-blk request queues from a
 * {@link BlockDisk} with asynchronous, bounded in-flight I/O.
 *
 * A request is acknowledged (its used entry written) only after its I/O finished and its status
 * byte landed, and `quiesce()` waits for every in-flight request, so a stopped ring never loses an
 * acknowledged write and nothing touches guest memory after GET_VRING_BASE returns.
 * @module
 */
import type { VhostUserBackend, Vring } from '../../backend/index.js';
import type { GuestMemoryAtomic, GuestMemoryGuard } from '../../memory/index.js';
import { QueueError } from '../../queue/index.js';
import { ProtocolFeature } from '../../vhost-user/constants.js';
import {
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../../virtio/features.js';
import { defaultLogger, type Logger } from '../../log.js';
import {
  VIRTIO_BLK_CONFIG_OFFSETS, VIRTIO_BLK_CONFIG_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_SECTOR_SIZE, encodeBlkConfig, encodeBlkSerial,
} from './config.js';
import type { BlockDisk } from './disk.js';
import { BlkRequestExecutor, BlkRequestSlot } from './request.js';

/** Options of {@link VhostUserBlkBackend}. */
export interface VhostUserBlkBackendOptions {
  /** The storage. */
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
}

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

class BlkSlot extends BlkRequestSlot {
  guard: GuestMemoryGuard | null = null;
  vring: Vring | null = null;
  gen = 0;
  /** Bound once: the completion callback, so starting a request allocates no closure. */
  readonly done: (used: number) => void;
  constructor(readonly queue: QueueState, complete: (slot: BlkSlot, used: number) => void) {
    super();
    this.done = (used) => complete(this, used);
  }
}

class QueueState {
  vring: Vring | null = null;
  inFlight = 0;
  /** Stopped popping at the in-flight bound: the next completion resumes the drain. */
  throttled = false;
  /** Bumped on device reset: completions of an older generation leave the ring alone. */
  gen = 0;
  /** Used entries were added since the last interrupt decision. */
  needSignal = false;
  /** A flush of the interrupt decision is scheduled (setImmediate). */
  flushScheduled = false;
  readonly free: BlkSlot[] = [];
  /** Bound once: the coalesced interrupt + idle notification for this queue. */
  flush: () => void = () => {};
  constructor(readonly index: number) {}
}

/** virtio-blk over vhost-user. */
export class VhostUserBlkBackend implements VhostUserBackend {
  /** The request executor (exposed for tests and benches). */
  readonly executor: BlkRequestExecutor;
  private readonly disk: BlockDisk;
  private readonly nQueues: number;
  private readonly queueSize: number;
  private readonly maxInFlight: number;
  private readonly readOnly: boolean;
  private readonly discard: boolean;
  private readonly logger: Logger;
  private readonly initialWriteback: number;
  private writeback: number;
  private acked = 0n;
  private readonly queues: QueueState[] = [];
  private inFlightTotal = 0;
  private idleWaiters: (() => void)[] = [];
  private readonly configBuf = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE);

  constructor(opts: VhostUserBlkBackendOptions) {
    this.disk = opts.disk;
    this.nQueues = opts.numQueues ?? 1;
    if (!Number.isInteger(this.nQueues) || this.nQueues < 1 || this.nQueues > 0xffff) throw new RangeError(`numQueues ${this.nQueues} out of range`);
    this.queueSize = opts.queueSize ?? 256;
    if (!Number.isInteger(this.queueSize) || this.queueSize < 4 || this.queueSize > 32768 || (this.queueSize & (this.queueSize - 1)) !== 0) {
      throw new RangeError(`queueSize ${this.queueSize} is not a power of two in [4, 32768]`);
    }
    this.maxInFlight = opts.maxInFlight ?? Math.min(this.queueSize, 128);
    if (!Number.isInteger(this.maxInFlight) || this.maxInFlight < 1) throw new RangeError(`maxInFlight ${this.maxInFlight} must be ≥ 1`);
    this.readOnly = (opts.readOnly ?? false) || opts.disk.readOnly;
    this.discard = (opts.discard ?? true) && !this.readOnly;
    this.logger = opts.logger ?? defaultLogger;
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
    for (let i = 0; i < this.nQueues; i++) {
      const qs = new QueueState(i);
      qs.flush = () => this.flushQueue(qs);
      this.queues.push(qs);
    }
    this.updateCacheMode();
  }

  numQueues(): number {
    return this.nQueues;
  }

  maxQueueSize(): number {
    return this.queueSize;
  }

  features(): bigint {
    let f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VHOST_USER_F_PROTOCOL_FEATURES)
      | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY)
      | bit(VIRTIO_BLK_F_CONFIG_WCE);
    if (this.nQueues > 1) f |= bit(VIRTIO_BLK_F_MQ);
    if (this.readOnly) f |= bit(VIRTIO_BLK_F_RO);
    if (this.discard) f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    return f;
  }

  protocolFeatures(): bigint {
    return [ProtocolFeature.CONFIG, ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS,
      ProtocolFeature.RESET_DEVICE, ProtocolFeature.STATUS].reduce((m, b) => m | bit(b), 0n);
  }

  ackedFeatures(features: bigint): void {
    this.acked = features;
    // VIRTIO 1.2 §5.2.5.2: with CONFIG_WCE but not FLUSH the device must start in writethrough.
    if ((features & bit(VIRTIO_BLK_F_CONFIG_WCE)) !== 0n && (features & bit(VIRTIO_BLK_F_FLUSH)) === 0n) this.writeback = 0;
    this.updateCacheMode();
  }

  setEventIdx(_enabled: boolean): void {
    // The daemon sets queue.eventIdx; the device only uses signalUsedIfNeeded().
  }

  updateMemory(_mem: GuestMemoryAtomic): void {
    // Each vring carries its snapshot; in-flight requests pin theirs with acquireMemory().
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

  /** Requests currently in flight (all queues). */
  get inFlight(): number {
    return this.inFlightTotal;
  }

  handleEvent(deviceEvent: number, _evset: number, vrings: readonly Vring[], _threadId: number): void {
    const qs = this.queues[deviceEvent];
    if (qs === undefined) {
      this.logger.log('warn', `vhost-user-blk: event ${deviceEvent} for no queue (device has ${this.nQueues})`);
      return;
    }
    let vring: Vring | undefined = vrings[deviceEvent];
    if (vring === undefined || vring.index !== deviceEvent) vring = vrings.find((v) => v.index === deviceEvent);
    if (vring === undefined) return;
    qs.vring = vring;
    this.drain(qs);
  }

  /** Pops and starts requests until the ring is empty or the in-flight bound is reached. */
  private drain(qs: QueueState): void {
    const vring = qs.vring;
    // Disabled rings are left alone (not processed), as QEMU and rust-vmm do.
    if (vring === null || !vring.ready) return;
    const q = vring.queue;
    let usedNow = false;
    do {
      q.disableNotification();
      for (;;) {
        if (qs.inFlight >= this.maxInFlight) {
          // Keep notifications off: a completion will resume the drain.
          qs.throttled = true;
          if (usedNow) vring.signalUsedIfNeeded();
          return;
        }
        const slot = qs.free.pop() ?? new BlkSlot(qs, this.complete);
        let chain;
        try {
          chain = q.popDescriptorChain(slot.chain);
        } catch (e) {
          qs.free.push(slot);
          if (!(e instanceof QueueError)) throw e;
          if (e.headIndex !== null) {
            this.logger.log('warn', `vhost-user-blk q${qs.index}: malformed chain (head ${e.headIndex}, ${e.kind}): ${e.message}; completing with used length 0`);
            q.addUsed(e.headIndex, 0);
            usedNow = true;
            continue;
          }
          this.logger.log('error', `vhost-user-blk q${qs.index}: ring is broken (${e.kind}): ${e.message}`);
          q.broken = true;
          vring.signalError();
          if (usedNow) vring.signalUsedIfNeeded();
          return;
        }
        if (chain === null) {
          qs.free.push(slot);
          break;
        }
        this.start(qs, vring, slot);
      }
      if (usedNow) {
        vring.signalUsedIfNeeded();
        usedNow = false;
      }
    } while (q.enableNotification());
  }

  private start(qs: QueueState, vring: Vring, slot: BlkSlot): void {
    slot.guard = vring.acquireMemory();
    slot.vring = vring;
    slot.gen = qs.gen;
    qs.inFlight++;
    this.inFlightTotal++;
    void this.executor.execute(slot).then(slot.done);
  }

  private readonly complete = (slot: BlkSlot, used: number): void => {
    const qs = slot.queue;
    const vring = slot.vring;
    try {
      if (vring !== null && slot.gen === qs.gen) {
        vring.queue.addUsed(slot.chain.headIndex, used);
        qs.needSignal = true;
      }
    } catch (e) {
      this.logger.log('error', `vhost-user-blk q${qs.index}: cannot complete head ${slot.chain.headIndex}: ${(e as Error).message}`);
    } finally {
      slot.guard?.release();
      slot.guard = null;
      slot.vring = null;
      qs.inFlight--;
      this.inFlightTotal--;
      qs.free.push(slot);
    }
    // One interrupt decision per event-loop turn: setImmediate runs after every fs callback that
    // libuv delivers in this poll phase (and after all microtask-completed RAM-disk requests).
    if (!qs.flushScheduled) {
      qs.flushScheduled = true;
      setImmediate(qs.flush);
    }
    if (qs.throttled && qs.inFlight < this.maxInFlight) {
      qs.throttled = false;
      try {
        this.drain(qs);
      } catch (e) {
        this.logger.log('error', `vhost-user-blk q${qs.index}: drain failed: ${(e as Error).message}`);
      }
    }
  };

  /** Signals the guest for the entries completed since the last flush, then wakes quiesce() waiters. */
  private flushQueue(qs: QueueState): void {
    qs.flushScheduled = false;
    if (qs.needSignal) {
      qs.needSignal = false;
      const vring = qs.vring;
      try {
        if (vring !== null) vring.signalUsedIfNeeded();
      } catch (e) {
        this.logger.log('error', `vhost-user-blk q${qs.index}: cannot signal: ${(e as Error).message}`);
      }
    }
    // Resolved only here, so no interrupt can follow a resolved quiesce().
    if (this.inFlightTotal === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  quiesce(): Promise<void> {
    if (this.inFlightTotal === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  async resetDevice(): Promise<void> {
    // Requests still running after a reset must not touch the (reset) rings: bump the generation,
    // then wait for them so their guest-memory views are released before we report done.
    for (const qs of this.queues) {
      qs.gen++;
      qs.throttled = false;
      qs.needSignal = false;
      qs.vring = null;
    }
    await this.quiesce();
    this.acked = 0n;
    this.writeback = this.initialWriteback;
    this.updateCacheMode();
  }
}
