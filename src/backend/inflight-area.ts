/**
 * The shared inflight area of one connection (INFLIGHT_SHMFD): allocated by the daemon for
 * GET_INFLIGHT_FD, or adopted from the front-end with SET_INFLIGHT_FD after a reconnect, and cut
 * into one region per queue (see queue/inflight.ts for the layout).
 * @module
 */
import * as sys from '../sys/index.js';
import { mapFrontendFile, type TrackedBacking } from '../memory/mmap.js';
import { PackedInflightRegion, SplitInflightRegion, inflightQueueRegionSize, InflightError } from '../queue/inflight.js';
import { VIRTQ_PACKED_MAX_SIZE } from '../queue/packed-constants.js';

/** The mapped inflight area of a connection. */
export class InflightArea {
  /** Bytes of each queue's region. */
  readonly regionSize: number;
  /** Set when the front-end truncated the file behind the area: it can no longer be trusted. */
  poisoned = false;
  private closed = false;

  private constructor(
    /** Queues the area covers. */
    readonly numQueues: number,
    /** Largest ring size the regions hold. */
    readonly queueSize: number,
    private readonly backing: TrackedBacking,
    private readonly offset: number,
  ) {
    this.regionSize = inflightQueueRegionSize(queueSize);
  }

  /** Bytes an area for `numQueues` rings of up to `queueSize` entries needs. */
  static sizeFor(numQueues: number, queueSize: number): number {
    return numQueues * inflightQueueRegionSize(queueSize);
  }

  private static checkCounts(numQueues: number, queueSize: number, maxQueues: number): void {
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > maxQueues) {
      throw new InflightError(`inflight area for ${numQueues} queues: the device has ${maxQueues}`);
    }
    if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > VIRTQ_PACKED_MAX_SIZE) {
      throw new InflightError(`inflight queue size ${queueSize} is not in [1, ${VIRTQ_PACKED_MAX_SIZE}]`);
    }
  }

  /**
   * GET_INFLIGHT_FD: a zeroed memfd for `numQueues` rings of `queueSize` entries, sealed against
   * resizing (so its mapping cannot fault). Returns the area and the fd to send (caller owns it).
   */
  static allocate(numQueues: number, queueSize: number, maxQueues: number): { area: InflightArea; fd: number; size: number } {
    InflightArea.checkCounts(numQueues, queueSize, maxQueues);
    const size = InflightArea.sizeFor(numQueues, queueSize);
    const fd = sys.memfdCreate('vhost-user-inflight', sys.MFD_CLOEXEC | sys.MFD_ALLOW_SEALING);
    try {
      sys.ftruncate(fd, size);
      sys.addSeals(fd, sys.F_SEAL_SHRINK | sys.F_SEAL_GROW | sys.F_SEAL_SEAL);
      const file = mapFrontendFile(fd, 0, size, 'inflight area');
      return { area: new InflightArea(numQueues, queueSize, file.backing, file.slack), fd, size };
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /**
   * SET_INFLIGHT_FD: maps the front-end's area after checking that it is large enough for
   * `numQueues` regions of `queueSize` entries and lies inside the file. `owner` is reported with
   * a fault if the front-end truncates the file later. The caller keeps (and closes) `fd`.
   */
  static adopt(fd: number, mmapSize: bigint, mmapOffset: bigint, numQueues: number, queueSize: number, maxQueues: number, owner: unknown): InflightArea {
    InflightArea.checkCounts(numQueues, queueSize, maxQueues);
    const need = InflightArea.sizeFor(numQueues, queueSize);
    if (mmapSize < BigInt(need)) {
      throw new InflightError(`inflight area of ${mmapSize} bytes is too small for ${numQueues} queue(s) of ${queueSize} entries (${need} needed)`);
    }
    if (mmapOffset > BigInt(Number.MAX_SAFE_INTEGER)) throw new InflightError(`inflight mmap offset 0x${mmapOffset.toString(16)} is out of range`);
    // Only what the regions need is mapped: the rest of a larger area is not ours to touch.
    const file = mapFrontendFile(fd, Number(mmapOffset), need, 'inflight area');
    const area = new InflightArea(numQueues, queueSize, file.backing, file.slack);
    file.watchFaults(owner, { description: 'inflight area', poison: () => { area.poisoned = true; } });
    return area;
  }

  private slice(index: number, ringSize: number): { buffer: ArrayBuffer; offset: number } {
    if (this.closed) throw new InflightError('inflight area is closed');
    if (this.poisoned) throw new InflightError('inflight area was truncated by the front-end');
    if (!Number.isInteger(index) || index < 0 || index >= this.numQueues) throw new InflightError(`queue ${index} is not covered by the inflight area (${this.numQueues} queues)`);
    if (ringSize > this.queueSize) throw new InflightError(`ring of ${ringSize} entries exceeds the inflight area's queue size ${this.queueSize}`);
    const start = this.offset + index * this.regionSize;
    return { buffer: this.backing.window(Math.floor(start / sys.WINDOW_STRIDE)), offset: start % sys.WINDOW_STRIDE };
  }

  /** The split-layout region of queue `index`, for a ring of `ringSize` entries. */
  splitRegion(index: number, ringSize: number): SplitInflightRegion {
    const s = this.slice(index, ringSize);
    return new SplitInflightRegion(s.buffer, s.offset, this.regionSize, ringSize);
  }

  /** The packed-layout region of queue `index`, for a ring of `ringSize` entries. */
  packedRegion(index: number, ringSize: number): PackedInflightRegion {
    const s = this.slice(index, ringSize);
    return new PackedInflightRegion(s.buffer, s.offset, this.regionSize, ringSize);
  }

  /** Unmaps the area (idempotent). Regions handed out must no longer be used. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.backing.unmap?.();
  }
}
