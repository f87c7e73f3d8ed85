import { mmap, PROT_READ, PROT_WRITE, MAP_SHARED } from '../sys/index.js';
import { GuestMemoryError, MAX_ADDRESS, u64ToNumber, hex } from './errors.js';
import { GuestRegion } from './region.js';
import { DirtyLog } from './dirty-log.js';

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
 * Maps a region sent with SET_MEM_TABLE / ADD_MEM_REG: mmap(fd, offset rounded down, size + slack)
 * shared read/write. The fd may be closed by the caller afterwards; the mapping is released by
 * `region.unmap()` (or by GuestMemoryAtomic when no snapshot uses the region any more).
 * Throws GuestMemoryError for unrepresentable values and SysError if mmap fails.
 */
export function mapGuestRegion(desc: MemoryRegionDescription, fd: number): GuestRegion {
  const guestPhysAddr = num(desc.guestPhysAddr, 'guest address');
  const size = num(desc.memorySize, 'region size');
  const userAddr = num(desc.userAddr, 'user address');
  const mmapOffset = num(desc.mmapOffset, 'mmap offset');
  if (size === 0) throw new GuestMemoryError('invalid', `zero-size region at ${hex(guestPhysAddr)}`);
  const aligned = mmapOffset - (mmapOffset % MMAP_OFFSET_ALIGN);
  const slack = mmapOffset - aligned;
  if (size > MAX_ADDRESS - slack) throw new GuestMemoryError('overflow', `region size ${hex(size)} too large`);
  const mapping = mmap(fd, aligned, size + slack, PROT_READ | PROT_WRITE, MAP_SHARED);
  try {
    return new GuestRegion({ guestPhysAddr, size, userAddr, mmapOffset, backing: mapping, backingOffset: slack });
  } catch (e) {
    mapping.unmap();
    throw e;
  }
}

/**
 * Maps the dirty log sent with VHOST_USER_SET_LOG_BASE (log description: size, offset) shared
 * read/write. The caller may close the fd afterwards; `log.unmap()` releases the mapping.
 */
export function mapDirtyLog(fd: number, logSize: bigint | number, logOffset: bigint | number): DirtyLog {
  const size = num(logSize, 'log size');
  const offset = num(logOffset, 'log offset');
  if (size === 0) throw new GuestMemoryError('invalid', 'zero-size dirty log');
  const aligned = offset - (offset % MMAP_OFFSET_ALIGN);
  const slack = offset - aligned;
  const mapping = mmap(fd, aligned, size + slack, PROT_READ | PROT_WRITE, MAP_SHARED);
  try {
    return new DirtyLog(mapping, slack, size);
  } catch (e) {
    mapping.unmap();
    throw e;
  }
}
