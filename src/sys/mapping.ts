/**
 * Shared memory: mmap'ed file ranges exposed as lazily created ArrayBuffer windows, file size and
 * seal queries. Internal to the package (the public entry point does not export raw mmap).
 * @module
 */
import { constant, native, type NativeHandle } from './native.js';

/** mmap protection: readable. */
export const PROT_READ: number = constant('PROT_READ');
/** mmap protection: writable. */
export const PROT_WRITE: number = constant('PROT_WRITE');
/** mmap flag: shared mapping (writes reach the file / other mappings). */
export const MAP_SHARED: number = constant('MAP_SHARED');
/** mmap flag: private copy-on-write mapping. */
export const MAP_PRIVATE: number = constant('MAP_PRIVATE');
/** memfd seal: no further seals can be added. */
export const F_SEAL_SEAL: number = constant('F_SEAL_SEAL');
/** memfd seal: the file cannot shrink (its mappings can never fault past the end of the file). */
export const F_SEAL_SHRINK: number = constant('F_SEAL_SHRINK');
/** memfd seal: the file cannot grow. */
export const F_SEAL_GROW: number = constant('F_SEAL_GROW');
/** memfd seal: the contents cannot be written (refused while a shared writable mapping exists). */
export const F_SEAL_WRITE: number = constant('F_SEAL_WRITE');
/** memfd seal: no new writable mappings or writes; existing mappings stay writable. */
export const F_SEAL_FUTURE_WRITE: number = constant('F_SEAL_FUTURE_WRITE');

/** Start offset step between consecutive windows of a {@link Mapping}. */
export const WINDOW_STRIDE = 2 ** 31;
/** Largest window length (V8's ArrayBuffer limit). */
export const WINDOW_SIZE = 2 ** 32;

/**
 * A mmap'ed region. ArrayBuffer windows are limited to 4 GiB by V8, so the region is exposed as
 * overlapping windows: window(i) starts at byte i * WINDOW_STRIDE (2 GiB) of the mapping and spans
 * min(WINDOW_SIZE (4 GiB), length - i * WINDOW_STRIDE) bytes. Any range of at most 2 GiB therefore
 * lies entirely inside window floor(start / WINDOW_STRIDE). Windows are created on first use, so a
 * huge sparse mapping costs nothing until it is touched.
 *
 * Mappings are always readable and writable: V8 has no read-only ArrayBuffer, and a writable view
 * over a PROT_READ mapping would turn one JS store into a SIGSEGV, so read-only mappings are refused.
 */
export interface Mapping {
  /** Length in bytes. */
  readonly length: number;
  /** Host virtual address of byte 0. */
  readonly address: bigint;
  /** Process-wide id of the mapping, as reported by {@link onMemoryFault}. */
  readonly id: number;
  /**
   * True when faults past the end of the file are recovered by the SIGBUS guard (the file could
   * shrink); false for memfds sealed with F_SEAL_SHRINK and for {@link wrapMemory} views.
   */
  readonly guarded: boolean;
  /** Number of windows (ceil(length / WINDOW_STRIDE)). */
  readonly windowCount: number;
  /**
   * Window i (created on first call, then cached). After unmap it is detached (byteLength 0); a
   * window first requested after unmap is an empty ArrayBuffer.
   */
  window(index: number): ArrayBuffer;
  /** Every window, creating those not created yet: costly on huge mappings, prefer window(i). */
  readonly windows: readonly ArrayBuffer[];
  /** False once unmapped. */
  readonly mapped: boolean;
  /** munmap; detaches every window so any stale view throws TypeError instead of crashing. Idempotent. */
  unmap(): void;
}

/**
 * Host address of byte 0 of every window of a contiguous mapping, so a guest-memory view can be
 * handed to the kernel by address (io_uring) without a native call per view.
 */
const windowBases = new WeakMap<ArrayBuffer, number>();

/**
 * Host address of `view`'s first byte when it lies in a live window of a contiguous {@link Mapping}
 * made by this thread, else -1 (a plain ArrayBuffer, a detached window, a sparse mapping's window).
 * The caller keeps the mapping alive while the kernel uses the address.
 */
export function hostAddressOf(view: Uint8Array): number {
  const buf = view.buffer as ArrayBuffer;
  const base = windowBases.get(buf);
  if (base === undefined || buf.byteLength === 0) return -1;
  return base + view.byteOffset;
}

class MappingImpl implements Mapping {
  readonly length: number;
  readonly address: bigint;
  readonly id: number;
  readonly guarded: boolean;
  readonly windowCount: number;
  #handle: NativeHandle | null;
  readonly #cache: (ArrayBuffer | undefined)[] = [];

  constructor(handle: NativeHandle, length: number, address: bigint, id: number, guarded: boolean) {
    this.#handle = handle;
    this.length = length;
    this.address = address;
    this.id = id;
    this.guarded = guarded;
    this.windowCount = Math.ceil(length / WINDOW_STRIDE);
  }

  get mapped(): boolean {
    return this.#handle !== null;
  }

  window(index: number): ArrayBuffer {
    const cached = this.#cache[index];
    if (cached !== undefined) return cached;
    if (!Number.isInteger(index) || index < 0 || index >= this.windowCount) {
      throw new RangeError(`window index ${index} is not in [0, ${this.windowCount})`);
    }
    if (this.#handle === null) return new ArrayBuffer(0);
    const w = native.window(this.#handle, index);
    this.#cache[index] = w;
    // A sparse mapping (address 0) maps each window separately: its windows have no known base.
    if (this.address !== 0n) windowBases.set(w, Number(this.address) + index * WINDOW_STRIDE);
    return w;
  }

  get windows(): readonly ArrayBuffer[] {
    const all: ArrayBuffer[] = [];
    for (let i = 0; i < this.windowCount; i++) all.push(this.window(i));
    return Object.freeze(all);
  }

  unmap(): void {
    const h = this.#handle;
    if (h === null) return;
    this.#handle = null;
    native.munmap(h);
  }
}

/**
 * Maps `length` bytes of fd at `offset` (MAP_SHARED by default; `prot` must be PROT_READ | PROT_WRITE).
 * The range must lie inside the file: it is checked against the file size (fstat, BLKGETSIZE64 for
 * block devices) and refused with SysError EINVAL otherwise; fds that are neither regular files nor
 * block devices are refused with ENODEV (their size cannot be checked). The mapping is released only
 * by unmap() (or when the thread's environment is torn down), never by GC.
 */
export function mmap(fd: number, offset: number | bigint, length: number, prot: number = PROT_READ | PROT_WRITE, flags: number = MAP_SHARED): Mapping {
  const [handle, address, id, guarded] = native.mmap(fd, offset, length, prot, flags);
  return new MappingImpl(handle, length, address, id, guarded);
}

/**
 * mmap of a device file that has no size (a VDUSE IOTLB fd): the range is not checked against a
 * file size, and faults the kernel refuses (SIGBUS) are recovered by the guard like truncated
 * files' (see {@link onMemoryFault}).
 */
export function mmapDevice(fd: number, offset: number | bigint, length: number, flags: number = MAP_SHARED): Mapping {
  const [handle, address, id, guarded] = native.mmap(fd, offset, length, PROT_READ | PROT_WRITE, flags, true);
  return new MappingImpl(handle, length, address, id, guarded);
}

/**
 * Windows over `length` bytes at host address `address` that another thread of this process
 * mapped (e.g. guest memory a worker_thread receives from the main thread), with the same
 * overlapping-window layout as {@link mmap}. The caller guarantees the memory stays mapped while
 * the windows are in use; unmap() only detaches them (the owner munmaps). Faults are covered by the
 * owner's guard (the guard is process-wide).
 */
export function wrapMemory(address: bigint, length: number): Mapping {
  const [handle, addr, id, guarded] = native.wrapMemory(address, length);
  return new MappingImpl(handle, length, addr, id, guarded);
}

/** Type of file behind an fd, as far as mapping it is concerned. */
export type FileKind = 'regular' | 'block' | 'other';

/** What {@link fileInfo} reports. */
export interface FileInfo {
  /** 'regular' (including memfd, tmpfs, hugetlbfs), 'block' device, or 'other' (not mappable here). */
  readonly kind: FileKind;
  /** Bytes that can be mapped: st_size, or BLKGETSIZE64 for a block device; 0 for 'other'. */
  readonly size: number;
  /** F_GET_SEALS (0 when the file does not support sealing). */
  readonly seals: number;
  /** Page size of the mapping: the huge page size on hugetlbfs, else the base page size. */
  readonly pageSize: number;
}

const KINDS: readonly FileKind[] = ['regular', 'block', 'other'];

/** fstat-based facts about fd used to validate a mapping before mmap. */
export function fileInfo(fd: number): FileInfo {
  const [kind, size, seals, pageSize] = native.fileInfo(fd);
  return { kind: KINDS[kind] ?? 'other', size, seals, pageSize };
}

/** fcntl(F_ADD_SEALS); the memfd must have been created with MFD_ALLOW_SEALING. */
export function addSeals(fd: number, seals: number): void {
  native.addSeals(fd, seals);
}

/** fcntl(F_GET_SEALS); throws EINVAL for files that do not support sealing. */
export function getSeals(fd: number): number {
  return native.getSeals(fd);
}
