import { fileInfo, mmap, PROT_READ, PROT_WRITE, MAP_SHARED, type Mapping } from '../sys/index.js';
import { GuestMemoryError, MAX_ADDRESS, u64ToNumber, hex } from './errors.js';
import { GuestRegion } from './region.js';
import { DirtyLog } from './dirty-log.js';
import { trackMapping, untrackMapping } from './faults.js';

/**
 * Alignment used for the mmap offset. 64 KiB is a multiple of every common base page size
 * (4/16/64 KiB), so rounding down to it always yields a valid offset; mapping a few extra bytes
 * before the region is harmless.
 */
export const MMAP_OFFSET_ALIGN = 0x10000;

/** A vhost-user memory region description (wire values are u64, hence bigint or number). */
export interface MemoryRegionDescription {
  /** Guest-physical address of the region. */
  guestPhysAddr: bigint | number;
  /** Region size in bytes. */
  memorySize: bigint | number;
  /** Front-end user (virtual) address of the region. */
  userAddr: bigint | number;
  /** Offset of the region in the fd. */
  mmapOffset: bigint | number;
}

function num(v: bigint | number, what: string): number {
  if (typeof v === 'bigint') return u64ToNumber(v, what);
  if (!Number.isSafeInteger(v) || v < 0) throw new GuestMemoryError('overflow', `${what} ${v} is not an integer in [0, 2^53)`);
  return v;
}

/**
 * Checks that `[offset, offset + size)` of fd lies inside the file before it is mapped: a shared
 * mapping past the end of the file raises SIGBUS on first access, which would kill the daemon.
 * Regular files (memfd, tmpfs such as /dev/shm, hugetlbfs whose st_size is the ftruncate()d size, a
 * multiple of the huge page size) are checked against st_size, block devices against BLKGETSIZE64;
 * other fds (character devices, sockets, pipes) have no size to check and are refused. The addon
 * repeats the check in C; this one gives the error its context.
 */
function checkFileRange(fd: number, offset: number, size: number, what: string): void {
  const info = fileInfo(fd);
  if (info.kind === 'other') {
    throw new GuestMemoryError('invalid', `${what}: fd ${fd} is neither a regular file nor a block device, so its size cannot be checked`);
  }
  if (offset > info.size || size > info.size - offset) {
    throw new GuestMemoryError('out-of-range', `${what}: file range ${hex(offset)}+${hex(size)} ends beyond the end of the file (${hex(info.size)} bytes)`);
  }
}

/**
 * A RegionBacking over a mapping whose windows are created on first use, tracked for SIGBUS-guard
 * reports until it is unmapped.
 */
interface TrackedBacking {
  readonly windows: readonly ArrayBuffer[];
  readonly windowCount: number;
  readonly length: number;
  /** Host address of byte 0 (worker threads wrap the same memory by address). */
  readonly address: bigint;
  window(i: number): ArrayBuffer;
  unmap(): void;
}

function trackedBacking(mapping: Mapping): TrackedBacking {
  return {
    address: mapping.address,
    get windows(): readonly ArrayBuffer[] {
      return mapping.windows;
    },
    windowCount: mapping.windowCount,
    length: mapping.length,
    window: (i: number): ArrayBuffer => mapping.window(i),
    unmap(): void {
      untrackMapping(mapping.id);
      mapping.unmap();
    },
  };
}

/**
 * Maps a region sent with SET_MEM_TABLE / ADD_MEM_REG: mmap(fd, offset rounded down, size + slack)
 * shared read/write. The fd may be closed by the caller afterwards; the mapping is released by
 * `region.unmap()` (or by GuestMemoryAtomic when no snapshot uses the region any more).
 * Throws GuestMemoryError for unrepresentable values or a range beyond the end of the file, and
 * SysError if mmap fails (e.g. ENOMEM when the address space cannot hold the region).
 *
 * `owner` (e.g. the connection handler) is reported with faults of this region, see
 * {@link onGuestMemoryFault}. Regions over memfds sealed with F_SEAL_SHRINK are not tracked: their
 * file cannot shrink, so they cannot fault.
 */
export function mapGuestRegion(desc: MemoryRegionDescription, fd: number, owner?: unknown): GuestRegion {
  const guestPhysAddr = num(desc.guestPhysAddr, 'guest address');
  const size = num(desc.memorySize, 'region size');
  const userAddr = num(desc.userAddr, 'user address');
  const mmapOffset = num(desc.mmapOffset, 'mmap offset');
  if (size === 0) throw new GuestMemoryError('invalid', `zero-size region at ${hex(guestPhysAddr)}`);
  const aligned = mmapOffset - (mmapOffset % MMAP_OFFSET_ALIGN);
  const slack = mmapOffset - aligned;
  if (size > MAX_ADDRESS - slack) throw new GuestMemoryError('overflow', `region size ${hex(size)} too large`);
  checkFileRange(fd, mmapOffset, size, `region at guest address ${hex(guestPhysAddr)}`);
  const mapping = mmap(fd, aligned, size + slack, PROT_READ | PROT_WRITE, MAP_SHARED);
  const backing = trackedBacking(mapping);
  try {
    const region = new GuestRegion({ guestPhysAddr, size, userAddr, mmapOffset, backing, backingOffset: slack });
    region.owner = owner;
    if (mapping.guarded) trackMapping(mapping.id, owner, region, null);
    return region;
  } catch (e) {
    backing.unmap();
    throw e;
  }
}

/**
 * Maps the dirty log sent with VHOST_USER_SET_LOG_BASE (log description: size, offset) shared
 * read/write. The caller may close the fd afterwards; `log.unmap()` releases the mapping.
 */
export function mapDirtyLog(fd: number, logSize: bigint | number, logOffset: bigint | number, owner?: unknown): DirtyLog {
  const size = num(logSize, 'log size');
  const offset = num(logOffset, 'log offset');
  if (size === 0) throw new GuestMemoryError('invalid', 'zero-size dirty log');
  const aligned = offset - (offset % MMAP_OFFSET_ALIGN);
  const slack = offset - aligned;
  if (size > MAX_ADDRESS - slack) throw new GuestMemoryError('overflow', `log size ${hex(size)} too large`);
  checkFileRange(fd, offset, size, 'dirty log');
  const mapping = mmap(fd, aligned, size + slack, PROT_READ | PROT_WRITE, MAP_SHARED);
  const backing = trackedBacking(mapping);
  try {
    const log = new DirtyLog(backing, slack, size);
    if (mapping.guarded) trackMapping(mapping.id, owner, null, log);
    return log;
  } catch (e) {
    backing.unmap();
    throw e;
  }
}
