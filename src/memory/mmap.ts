import { fileInfo, mmap, PROT_READ, PROT_WRITE, MAP_SHARED, type Mapping } from '../sys/index.js';
import { GuestMemoryError, MAX_ADDRESS, checkAddress, u64ToNumber, hex } from './errors.js';
import { GuestRegion } from './region.js';
import { DirtyLog } from './dirty-log.js';
import { trackMapping, untrackMapping, type FaultTarget } from './faults.js';

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
 * A {@link RegionBacking} over a front-end file mapping (see {@link mapFrontendFile}) whose
 * ArrayBuffer windows are created on first use, and which is tracked for SIGBUS-guard reports
 * until it is unmapped.
 */
export interface TrackedBacking {
  /**
   * Every window, creating those not created yet: costly on a huge mapping, prefer
   * {@link TrackedBacking.window}.
   */
  readonly windows: readonly ArrayBuffer[];
  /** Number of windows: ceil(length / {@link WINDOW_STRIDE}). */
  readonly windowCount: number;
  /** Length of the mapping in bytes. */
  readonly length: number;
  /** Host address of byte 0 (worker threads wrap the same memory by address). */
  readonly address: bigint;
  /**
   * Window `i`: starts at byte i * {@link WINDOW_STRIDE} (2 GiB) and spans up to 4 GiB, so any range
   * of at most 2 GiB lies inside one window. Created on first call, then cached. Throws RangeError
   * for an index outside [0, windowCount).
   */
  window(i: number): ArrayBuffer;
  /**
   * munmap and stop tracking; every window is detached, so a stale view throws TypeError instead
   * of faulting. Idempotent.
   */
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

/** A checked, SIGBUS-guarded shared mapping of a range of a file the front-end sent. */
export interface MappedFrontendFile {
  /** The mapping as a lazily windowed backing; `backing.unmap()` releases it. */
  readonly backing: TrackedBacking;
  /** Offset of the requested range's first byte inside the backing (the mmap offset is rounded down). */
  readonly slack: number;
  /** False for memfds sealed with F_SEAL_SHRINK: the file cannot shrink, so the mapping cannot fault. */
  readonly guarded: boolean;
  /** Reports faults of this mapping through {@link onGuestMemoryFault} as faults of `target`. */
  watchFaults(owner: unknown, target: FaultTarget): void;
}

/**
 * Maps `[offset, offset + size)` of a front-end's fd shared read/write, for every kind of memory a
 * front-end hands over (regions, the dirty log, the inflight area): the range is validated as
 * integers, checked against the file size (see checkFileRange), mapped from the offset rounded down
 * to {@link MMAP_OFFSET_ALIGN}, and guarded against a later truncation unless the memfd is sealed.
 * `what` names the memory in errors. The caller may close the fd afterwards.
 */
export function mapFrontendFile(fd: number, offset: number, size: number, what: string): MappedFrontendFile {
  checkAddress(offset, `${what} offset`);
  checkAddress(size, `${what} size`);
  if (size === 0) throw new GuestMemoryError('invalid', `${what}: zero size`);
  const aligned = offset - (offset % MMAP_OFFSET_ALIGN);
  const slack = offset - aligned;
  if (size > MAX_ADDRESS - offset) throw new GuestMemoryError('overflow', `${what}: size ${hex(size)} at offset ${hex(offset)} overflows 2^53`);
  checkFileRange(fd, offset, size, what);
  const mapping = mmap(fd, aligned, size + slack, PROT_READ | PROT_WRITE, MAP_SHARED);
  return {
    backing: trackedBacking(mapping),
    slack,
    guarded: mapping.guarded,
    watchFaults(owner: unknown, target: FaultTarget): void {
      if (mapping.guarded && mapping.mapped) trackMapping(mapping.id, owner, target);
    },
  };
}

/**
 * Maps a region sent with SET_MEM_TABLE / ADD_MEM_REG (see {@link mapFrontendFile}). The mapping is
 * released by `region.unmap()` (or by GuestMemoryAtomic when no snapshot uses the region any more).
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
  const file = mapFrontendFile(fd, mmapOffset, size, `region at guest address ${hex(guestPhysAddr)}`);
  try {
    const region = new GuestRegion({ guestPhysAddr, size, userAddr, mmapOffset, backing: file.backing, backingOffset: file.slack });
    region.owner = owner;
    file.watchFaults(owner, { region });
    return region;
  } catch (e) {
    file.backing.unmap();
    throw e;
  }
}

/**
 * Maps the dirty log sent with VHOST_USER_SET_LOG_BASE (log description: size, offset), see
 * {@link mapFrontendFile}. The caller may close the fd afterwards; `log.unmap()` releases the mapping.
 */
export function mapDirtyLog(fd: number, logSize: bigint | number, logOffset: bigint | number, owner?: unknown): DirtyLog {
  const size = num(logSize, 'log size');
  const offset = num(logOffset, 'log offset');
  if (size === 0) throw new GuestMemoryError('invalid', 'zero-size dirty log');
  const file = mapFrontendFile(fd, offset, size, 'dirty log');
  try {
    const log = new DirtyLog(file.backing, file.slack, size);
    file.watchFaults(owner, { log });
    return log;
  } catch (e) {
    file.backing.unmap();
    throw e;
  }
}
