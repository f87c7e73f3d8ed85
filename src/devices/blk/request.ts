/**
 * virtio-blk request execution (VIRTIO 1.2 §5.2.6): parses a descriptor chain
 * (`virtio_blk_req`: 16-byte readable header, data, final writable status byte), validates it
 * against the disk and runs it asynchronously. Data moves directly between the disk and guest memory
 * through the chain's `segments()` views; nothing is copied in between.
 * @module
 */
import { DescriptorChain } from '../../queue/chain.js';
import type { Logger } from '../../log.js';
import type { BlockDisk } from './disk.js';
import { FastRequest, isUringCapable, type UringCapableDisk } from './fast-path.js';
import { PENDING, type CompletionCallback } from '../../backend/queue-server.js';
import {
  VIRTIO_BLK_DWZ_SEGMENT_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, blkRequestTypeName,
} from './config.js';

/** Limits and identity the executor validates requests against. */
export interface BlkExecutorOptions {
  /** The backing disk. */
  disk: BlockDisk;
  /** Refuse OUT / DISCARD / WRITE_ZEROES with VIRTIO_BLK_S_IOERR (forced on when the disk is read-only). */
  readOnly?: boolean;
  /** The 20-byte GET_ID string (see encodeBlkSerial). */
  serial: Uint8Array;
  /** Whether DISCARD is offered (else answered VIRTIO_BLK_S_UNSUPP). */
  discard?: boolean;
  /** Whether WRITE_ZEROES is offered (else answered VIRTIO_BLK_S_UNSUPP). */
  writeZeroes?: boolean;
  /** max_discard_sectors (default 0x3fffff). */
  maxDiscardSectors?: number;
  /** max_discard_seg (default 1). */
  maxDiscardSeg?: number;
  /** max_write_zeroes_sectors (default 0x3fffff). */
  maxWriteZeroesSectors?: number;
  /** max_write_zeroes_seg (default 1). */
  maxWriteZeroesSeg?: number;
  /** Where rejected requests are reported. */
  logger: Logger;
  /** Prefix for log lines (e.g. 'vhost-user-blk q0'). */
  name?: string;
}

/**
 * Per-in-flight-request scratch: the recyclable chain and the arrays handed to readv/writev, so a
 * request allocates nothing beyond the views themselves and its promise.
 */
export class BlkRequestSlot {
  /** Chain to pass to `SplitQueue.popDescriptorChain(slot.chain)`. */
  chain: DescriptorChain = new DescriptorChain();
  /** Guest-memory views of the data part. */
  readonly views: Uint8Array[] = [];
  /** Raw discard / write-zeroes segments. */
  segs: Uint8Array = new Uint8Array(0);
  /** @internal io_uring fast-path state (created on first use, see fast-path.ts). */
  fast: FastRequest | null = null;
  /** Segment decoder over `segs`. */
  segView: DataView = new DataView(this.segs.buffer);
  /** Request type of the last executed request (diagnostics). */
  type = -1;
  /** Status written for the last executed request. */
  status = 0;
}

/** Default per-segment limit: just under 2 GiB, as QEMU (BDRV_REQUEST_MAX_SECTORS). */
export const DEFAULT_MAX_DWZ_SECTORS = 0x3fffff;

/** Parses and runs virtio-blk requests against one disk. Stateless per request; share it between queues. */
export class BlkRequestExecutor {
  /** The disk requests run against; the executor never closes it. */
  readonly disk: BlockDisk;
  /** Writes are refused. */
  readonly readOnly: boolean;
  /** Capacity in sectors. */
  readonly capacity: number;
  /** DISCARD served. */
  readonly discardEnabled: boolean;
  /** WRITE_ZEROES served. */
  readonly writeZeroesEnabled: boolean;
  /** Validation limits. */
  readonly maxDiscardSectors: number;
  /** Validation limits. */
  readonly maxDiscardSeg: number;
  /** Validation limits. */
  readonly maxWriteZeroesSectors: number;
  /** Validation limits. */
  readonly maxWriteZeroesSeg: number;
  /**
   * Writethrough cache mode: make writes stable (flush) before completing them. Set by the device
   * from the negotiated features and the config `writeback` field.
   */
  writethrough = true;
  private readonly serial: Uint8Array;
  private readonly logger: Logger;
  private readonly name: string;
  private readonly capacityBig: bigint;
  private readonly uringDisk: UringCapableDisk | null;

  constructor(opts: BlkExecutorOptions) {
    this.disk = opts.disk;
    this.readOnly = (opts.readOnly ?? false) || opts.disk.readOnly;
    this.capacity = Math.floor(opts.disk.size / VIRTIO_BLK_SECTOR_SIZE);
    this.capacityBig = BigInt(this.capacity);
    this.uringDisk = isUringCapable(opts.disk) ? opts.disk : null;
    if (opts.serial.length !== VIRTIO_BLK_ID_BYTES) throw new RangeError(`serial must be ${VIRTIO_BLK_ID_BYTES} bytes`);
    this.serial = opts.serial;
    this.discardEnabled = (opts.discard ?? true) && !this.readOnly;
    this.writeZeroesEnabled = (opts.writeZeroes ?? true) && !this.readOnly;
    this.maxDiscardSectors = positive(opts.maxDiscardSectors ?? DEFAULT_MAX_DWZ_SECTORS, 'maxDiscardSectors');
    this.maxDiscardSeg = positive(opts.maxDiscardSeg ?? 1, 'maxDiscardSeg');
    this.maxWriteZeroesSectors = positive(opts.maxWriteZeroesSectors ?? DEFAULT_MAX_DWZ_SECTORS, 'maxWriteZeroesSectors');
    this.maxWriteZeroesSeg = positive(opts.maxWriteZeroesSeg ?? 1, 'maxWriteZeroesSeg');
    this.logger = opts.logger;
    this.name = opts.name ?? 'vhost-user-blk';
  }

  /**
   * Serves `chain` (the device's processChain, main thread or worker): its recycled slot, then
   * {@link start}.
   */
  serve(chain: DescriptorChain, done: CompletionCallback | undefined): number | Promise<number> | typeof PENDING {
    let slot = chain.userData as BlkRequestSlot | null;
    if (slot === null) {
      slot = new BlkRequestSlot();
      chain.userData = slot;
    }
    slot.chain = chain;
    return this.start(slot, done);
  }

  /**
   * Runs the request in `slot.chain`: IN / OUT on an io_uring disk without allocating (returns
   * {@link PENDING}, `done` receiving the used length later, or the used length itself when the
   * disk did the transfer inline), everything else as {@link execute}.
   */
  start(slot: BlkRequestSlot, done: CompletionCallback | undefined): number | Promise<number> | typeof PENDING {
    const disk = this.uringDisk;
    if (disk === null || done === undefined) return this.execute(slot);
    slot.type = -1;
    const fast = slot.fast ??= new FastRequest(slot, this, disk);
    const r = fast.start(done);
    if (r === true) return PENDING;
    if (r === false) return this.execute(slot);
    return r;
  }

  /**
   * Runs the request in `slot.chain` and writes its status byte. Resolves to the used length
   * (every writable byte: data for IN / GET_ID plus the status), or 0 for a chain without room for
   * a status byte. Never rejects: I/O failures become VIRTIO_BLK_S_IOERR.
   */
  async execute(slot: BlkRequestSlot): Promise<number> {
    const chain = slot.chain;
    slot.type = -1;
    if (chain.writableBytes < 1) {
      this.logger.log('warn', `${this.name}: request head ${chain.headIndex}: no writable byte for the status; completing with used length 0`);
      return 0;
    }
    if (chain.readableBytes < VIRTIO_BLK_OUTHDR_SIZE) {
      return this.finishStatus(slot, this.reject(slot, VIRTIO_BLK_S_IOERR, `header is ${chain.readableBytes} bytes, needs ${VIRTIO_BLK_OUTHDR_SIZE}`));
    }
    const r = chain.reader;
    const type = r.readU32();
    r.readU32(); // reserved (legacy ioprio)
    return this.executeParsed(slot, type, r.readU64());
  }

  /** The request after its header was read: runs it, then writes the status byte. */
  async executeParsed(slot: BlkRequestSlot, type: number, sector: bigint): Promise<number> {
    slot.type = type;
    let status: number;
    try {
      status = await this.run(slot, type, sector);
    } catch (e) {
      status = this.reject(slot, VIRTIO_BLK_S_IOERR, `sector ${sector}: ${(e as Error).message}`);
    }
    return this.finishStatus(slot, status);
  }

  /**
   * Writes `status` as the chain's last writable byte; returns the used length (every writable
   * byte), or 0 when the status cannot be written.
   */
  finishStatus(slot: BlkRequestSlot, status: number): number {
    const chain = slot.chain;
    slot.status = status;
    try {
      const w = chain.writer;
      // The status is the last writable byte whatever the data part consumed.
      if (w.availableBytes > 1) w.skip(w.availableBytes - 1);
      w.writeU8(status);
    } catch (e) {
      this.logger.log('error', `${this.name}: request head ${chain.headIndex}: cannot write status: ${(e as Error).message}`);
      return 0;
    }
    return Math.min(chain.writableBytes, 0xffff_ffff);
  }

  /** Logs why the request fails and returns `status`. */
  reject(slot: BlkRequestSlot, status: number, reason: string): number {
    const kind = status === VIRTIO_BLK_S_UNSUPP ? 'UNSUPP' : 'IOERR';
    this.logger.log('warn', `${this.name}: ${slot.type < 0 ? 'request' : blkRequestTypeName(slot.type)} (head ${slot.chain.headIndex}) -> ${kind}: ${reason}`);
    return status;
  }

  /** Byte offset of [sector, sector + len bytes) or -1 when it is outside the disk. */
  /** @internal */
  offsetOf(sector: bigint, len: number): number {
    if (sector > this.capacityBig) return -1;
    const first = Number(sector);
    // sector ≤ capacity < 2^44, so both sides are exact doubles.
    if (len > (this.capacity - first) * VIRTIO_BLK_SECTOR_SIZE) return -1;
    return first * VIRTIO_BLK_SECTOR_SIZE;
  }

  private async run(slot: BlkRequestSlot, type: number, sector: bigint): Promise<number> {
    const chain = slot.chain;
    switch (type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT:
        return this.transfer(slot, type === VIRTIO_BLK_T_OUT, sector);
      case VIRTIO_BLK_T_FLUSH:
        await this.disk.flush();
        return VIRTIO_BLK_S_OK;
      case VIRTIO_BLK_T_GET_ID: {
        const w = chain.writer;
        const n = Math.min(w.availableBytes - 1, VIRTIO_BLK_ID_BYTES);
        w.write(this.serial.subarray(0, n));
        return VIRTIO_BLK_S_OK;
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        return this.discardOrZero(slot, type === VIRTIO_BLK_T_DISCARD);
      default:
        return this.reject(slot, VIRTIO_BLK_S_UNSUPP, 'unsupported request type');
    }
  }

  /** IN / OUT: data goes straight between the disk and the guest-memory views of the chain. */
  private async transfer(slot: BlkRequestSlot, write: boolean, sector: bigint): Promise<number> {
    if (write && this.readOnly) return this.reject(slot, VIRTIO_BLK_S_IOERR, 'write to a read-only device');
    const chain = slot.chain;
    // Data in the wrong direction is a broken driver: reporting OK would silently drop an OUT's
    // data (or return nothing for an IN), so it fails the request (VIRTIO 1.2 §5.2.6.1).
    if (write ? chain.writer.availableBytes !== 1 : chain.reader.availableBytes !== 0) {
      return this.reject(slot, VIRTIO_BLK_S_IOERR, write
        ? `${chain.writer.availableBytes - 1} bytes of device-writable data on a write`
        : `${chain.reader.availableBytes} bytes of device-readable data on a read`);
    }
    // IN: every writable byte but the trailing status byte is data.
    const len = write ? chain.reader.availableBytes : chain.writer.availableBytes - 1;
    if (len % VIRTIO_BLK_SECTOR_SIZE !== 0) return this.reject(slot, VIRTIO_BLK_S_IOERR, `data length ${len} is not a multiple of 512`);
    const off = this.offsetOf(sector, len);
    if (off < 0) return this.reject(slot, VIRTIO_BLK_S_IOERR, `sector ${sector} + ${len} bytes is past the end (${this.capacity} sectors)`);
    if (len === 0) return VIRTIO_BLK_S_OK;
    const views = slot.views;
    views.length = 0;
    if (write) {
      chain.reader.segments(len, views);
      await this.disk.writev(views, off);
    } else {
      chain.writer.segments(len, views);
      await this.disk.readv(views, off);
    }
    views.length = 0;
    if (write && this.writethrough) await this.disk.flush();
    return VIRTIO_BLK_S_OK;
  }

  private async discardOrZero(slot: BlkRequestSlot, discard: boolean): Promise<number> {
    if (!(discard ? this.discardEnabled : this.writeZeroesEnabled)) {
      return this.reject(slot, this.readOnly ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_UNSUPP, this.readOnly ? 'write to a read-only device' : 'not offered');
    }
    const r = slot.chain.reader;
    const len = r.availableBytes;
    if (slot.chain.writer.availableBytes !== 1) {
      return this.reject(slot, VIRTIO_BLK_S_IOERR, `${slot.chain.writer.availableBytes - 1} bytes of device-writable data on a ${discard ? 'discard' : 'write-zeroes'}`);
    }
    const maxSeg = discard ? this.maxDiscardSeg : this.maxWriteZeroesSeg;
    const maxSectors = discard ? this.maxDiscardSectors : this.maxWriteZeroesSectors;
    if (len === 0 || len % VIRTIO_BLK_DWZ_SEGMENT_SIZE !== 0) {
      return this.reject(slot, VIRTIO_BLK_S_IOERR, `data length ${len} is not a non-zero multiple of ${VIRTIO_BLK_DWZ_SEGMENT_SIZE}`);
    }
    const count = len / VIRTIO_BLK_DWZ_SEGMENT_SIZE;
    if (count > maxSeg) return this.reject(slot, VIRTIO_BLK_S_UNSUPP, `${count} segments exceed the maximum ${maxSeg}`);
    if (slot.segs.length < len) {
      slot.segs = new Uint8Array(maxSeg * VIRTIO_BLK_DWZ_SEGMENT_SIZE);
      slot.segView = new DataView(slot.segs.buffer);
    }
    // Copied once so the guest cannot change a segment between validation and execution.
    r.read(slot.segs.subarray(0, len));
    const dv = slot.segView;
    for (let i = 0; i < count; i++) {
      const at = i * VIRTIO_BLK_DWZ_SEGMENT_SIZE;
      const sector = dv.getBigUint64(at, true);
      const num = dv.getUint32(at + 8, true);
      const flags = dv.getUint32(at + 12, true);
      if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) return this.reject(slot, VIRTIO_BLK_S_UNSUPP, `segment ${i}: unknown flags 0x${flags.toString(16)}`);
      if (discard && flags !== 0) return this.reject(slot, VIRTIO_BLK_S_UNSUPP, `segment ${i}: unmap flag set on a discard`);
      if (num > maxSectors) return this.reject(slot, VIRTIO_BLK_S_IOERR, `segment ${i}: ${num} sectors exceed the maximum ${maxSectors}`);
      if (this.offsetOf(sector, num * VIRTIO_BLK_SECTOR_SIZE) < 0) {
        return this.reject(slot, VIRTIO_BLK_S_IOERR, `segment ${i}: sector ${sector} + ${num} is past the end (${this.capacity} sectors)`);
      }
    }
    for (let i = 0; i < count; i++) {
      const at = i * VIRTIO_BLK_DWZ_SEGMENT_SIZE;
      const off = Number(dv.getBigUint64(at, true)) * VIRTIO_BLK_SECTOR_SIZE;
      const bytes = dv.getUint32(at + 8, true) * VIRTIO_BLK_SECTOR_SIZE;
      if (discard) await this.disk.discard(off, bytes);
      else await this.disk.writeZeroes(off, bytes, (dv.getUint32(at + 12, true) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0);
    }
    if (this.writethrough) await this.disk.flush();
    return VIRTIO_BLK_S_OK;
  }
}

function positive(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 1 || n > 0xffff_ffff) throw new RangeError(`${what} ${n} is not a u32 ≥ 1`);
  return n;
}
