/**
 * The IOVA space of a VDUSE device as guest memory. The driver's buffers are reached through
 * the device's IOTLB: VDUSE_IOTLB_GET_FD hands out an fd of the memory behind one mapping (the
 * bounce buffer or a coherent allocation for virtio_vdpa, the vhost-vdpa user's memfd for
 * vhost_vdpa), which is mmap'ed. Mappings are fetched on first use, since virtio_vdpa creates
 * its bounce map only at the first I/O, and dropped when the kernel reports a change
 * (VDUSE_UPDATE_IOTLB).
 *
 * @module
 */
import * as sys from '../sys/index.js';
import { MAP_PRIVATE, MAP_SHARED, mmapDevice } from '../sys/mapping.js';
import { GuestMemory, GuestRegion, MAX_ADDRESS } from '../memory/index.js';
import { defaultLogger, type Logger } from '../log.js';
import { VDUSE_ACCESS_RO, VDUSE_ACCESS_WO, VDUSE_IOTLB_ENTRY_SIZE, VDUSE_IOTLB_GET_FD, decodeIotlbEntry, encodeIotlbEntry, type VduseIotlbEntry } from './vduse.js';

const PAGE_SIZE = 4096;

/** Where IOTLB mappings come from: normally {@link vduseIotlbSource} over /dev/vduse/$NAME. */
export interface IotlbSource {
  /**
   * The mapping containing `iova` and an fd of its memory (the caller closes it), or null when
   * nothing is mapped there.
   */
  lookup(iova: bigint): { fd: number; entry: VduseIotlbEntry } | null;
}

/** {@link IotlbSource} of a VDUSE device fd (VDUSE_IOTLB_GET_FD; EINVAL means "not mapped"). */
export function vduseIotlbSource(devFd: number): IotlbSource {
  const buf = new Uint8Array(VDUSE_IOTLB_ENTRY_SIZE);
  return {
    lookup(iova: bigint): { fd: number; entry: VduseIotlbEntry } | null {
      let fd: number;
      try {
        fd = sys.ioctl(devFd, VDUSE_IOTLB_GET_FD, encodeIotlbEntry(buf, iova, iova));
      } catch (e) {
        if (e instanceof sys.SysError && e.code === 'EINVAL') return null;
        throw e;
      }
      return { fd, entry: decodeIotlbEntry(buf) };
    },
  };
}

function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

/**
 * The mappings fetched so far, each mmap'ed once and owned here until {@link invalidate} or
 * {@link clear}. The owner makes sure no request uses a mapping when it goes (it quiesces the
 * queues before answering UPDATE_IOTLB), as an IOMMU unmap requires.
 */
export class IotlbCache {
  private entries: GuestRegion[] = [];
  private last = 0;
  /** Mappings fetched and mmap'ed since creation (a counter for tests and logs). */
  fetched = 0;

  /**
   * @param source where mappings are looked up
   * @param logger where unusable mappings are reported
   */
  constructor(private readonly source: IotlbSource, private readonly logger: Logger = defaultLogger) {}

  /** Mappings currently held. */
  get regions(): readonly GuestRegion[] {
    return this.entries;
  }

  /** The held mapping containing `iova`, or null (no fetch). */
  find(iova: number): GuestRegion | null {
    const e = this.entries;
    const c = e[this.last];
    if (c !== undefined && iova >= c.guestPhysAddr && iova < c.end) return c;
    let lo = 0;
    let hi = e.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = e[mid] as GuestRegion;
      if (iova < r.guestPhysAddr) hi = mid - 1;
      else if (iova >= r.end) lo = mid + 1;
      else {
        this.last = mid;
        return r;
      }
    }
    return null;
  }

  /** The mapping containing `iova`, fetched from the source and mmap'ed on first use; null if unmapped. */
  fault(iova: number): GuestRegion | null {
    const held = this.find(iova);
    if (held !== null) return held;
    if (!Number.isSafeInteger(iova) || iova < 0) return null;
    let got: { fd: number; entry: VduseIotlbEntry } | null;
    try {
      got = this.source.lookup(BigInt(iova));
    } catch (e) {
      this.logger.log('warn', `VDUSE_IOTLB_GET_FD at IOVA ${hex(iova)} failed: ${(e as Error).message}`);
      return null;
    }
    if (got === null) return null;
    try {
      const region = this.mapEntry(got.fd, got.entry, iova);
      this.insert(region);
      this.fetched++;
      return region;
    } catch (e) {
      this.logger.log('warn', `IOTLB mapping [${hex(got.entry.start)}, ${hex(got.entry.last)}] is not usable: ${(e as Error).message}`);
      return null;
    } finally {
      sys.close(got.fd);
    }
  }

  private mapEntry(fd: number, e: VduseIotlbEntry, iova: number): GuestRegion {
    const max = BigInt(MAX_ADDRESS);
    if (e.start > e.last || e.last >= max || e.offset > max || BigInt(iova) < e.start || BigInt(iova) > e.last) {
      throw new RangeError(`entry [${hex(e.start)}, ${hex(e.last)}] offset ${hex(e.offset)} does not hold IOVA ${hex(iova)} below 2^53`);
    }
    if ((e.perm & VDUSE_ACCESS_RO) === 0) throw new RangeError(`entry permission ${e.perm} is not readable`);
    const start = Number(e.start);
    const size = Number(e.last - e.start) + 1;
    const offset = Number(e.offset);
    const slack = offset % PAGE_SIZE;
    // A read-only mapping is mapped private: a device write into it (a driver bug) then lands in
    // a private copy instead of faulting the process, and never reaches the driver's memory.
    const writable = (e.perm & VDUSE_ACCESS_WO) !== 0;
    const mapping = mmapDevice(fd, offset - slack, size + slack, writable ? MAP_SHARED : MAP_PRIVATE);
    try {
      return new GuestRegion({ guestPhysAddr: start, size, userAddr: start, mmapOffset: offset, backing: mapping, backingOffset: slack });
    } catch (err) {
      mapping.unmap();
      throw err;
    }
  }

  private insert(region: GuestRegion): void {
    const at = this.entries.findIndex((r) => r.guestPhysAddr > region.guestPhysAddr);
    if (at < 0) this.entries.push(region);
    else this.entries.splice(at, 0, region);
    this.last = 0;
  }

  /** Unmaps every held mapping overlapping [start, last]; returns how many went. */
  invalidate(start: bigint, last: bigint): number {
    const keep: GuestRegion[] = [];
    let dropped = 0;
    for (const r of this.entries) {
      if (BigInt(r.end) - 1n < start || BigInt(r.guestPhysAddr) > last) keep.push(r);
      else {
        r.unmap();
        dropped++;
      }
    }
    this.entries = keep;
    this.last = 0;
    return dropped;
  }

  /** Unmaps everything (device reset or close). */
  clear(): void {
    this.invalidate(0n, 0xffffffffffffffffn);
  }
}

/**
 * Guest memory addressed by IOVA: every lookup that misses the (empty) snapshot goes to the
 * {@link IotlbCache}, which fetches the mapping on first use. One instance serves a device for
 * its whole life; mappings are owned by the cache, not by snapshots.
 */
export class IotlbMemory extends GuestMemory {
  /** @param cache the device's IOTLB mappings */
  constructor(readonly cache: IotlbCache) {
    super([]);
  }

  /** The IOTLB mapping containing `iova` (fetched on first use), or null. */
  override findRegion(iova: number): GuestRegion | null {
    return this.cache.fault(iova);
  }
}

