/**
 * {@link RamDisk}: a virtio-blk disk in memory, allocated lazily (the CLI's default without
 * --blk-file, and a fixture for tests and examples).
 * @module
 */
import { totalLength, type BlockDisk } from './disk.js';

/** Options of {@link RamDisk}. */
export interface RamDiskOptions {
  /** Size in bytes (default 64 MiB; multiple of 512). */
  size?: number;
  /** Refuse writes. */
  readOnly?: boolean;
}

/** Allocation unit of a RamDisk: chunks are allocated on first write and freed by discard. */
export const RAM_DISK_CHUNK = 1 << 20;

/**
 * An in-memory disk. Memory is allocated lazily in {@link RAM_DISK_CHUNK} chunks on first write
 * (never-written chunks read as zeroes) and whole chunks are freed again by discard / write zeroes.
 * Operations complete without blocking.
 */
export class RamDisk implements BlockDisk {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize = 512;
  readonly canUnmap = true;
  private readonly chunks: (Uint8Array | undefined)[];

  constructor(opts: RamDiskOptions = {}) {
    const size = opts.size ?? 64 * 1024 * 1024;
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new RangeError(`RAM disk size ${size} is not a positive multiple of 512`);
    this.size = size;
    this.readOnly = opts.readOnly ?? false;
    this.chunks = new Array<Uint8Array | undefined>(Math.ceil(size / RAM_DISK_CHUNK));
  }

  /** Bytes currently allocated (diagnostics, tests). */
  get allocatedBytes(): number {
    let n = 0;
    for (const c of this.chunks) if (c !== undefined) n += c.length;
    return n;
  }

  private chunk(i: number): Uint8Array {
    let c = this.chunks[i];
    if (c === undefined) {
      c = new Uint8Array(Math.min(RAM_DISK_CHUNK, this.size - i * RAM_DISK_CHUNK));
      this.chunks[i] = c;
    }
    return c;
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`range ${offset}+${length} outside RAM disk of ${this.size} bytes`);
    }
  }

  /** Copies [offset, offset + len) into `dst` (synchronous core of readv, also used by tests). */
  readSync(dst: Uint8Array, offset: number): void {
    this.check(offset, dst.length);
    let pos = 0;
    while (pos < dst.length) {
      const at = offset + pos;
      const i = Math.floor(at / RAM_DISK_CHUNK);
      const inChunk = at - i * RAM_DISK_CHUNK;
      const c = this.chunks[i];
      const n = Math.min(dst.length - pos, (c?.length ?? RAM_DISK_CHUNK) - inChunk);
      if (c === undefined) dst.fill(0, pos, pos + n);
      else dst.set(c.subarray(inChunk, inChunk + n), pos);
      pos += n;
    }
  }

  private writeSync(src: Uint8Array, offset: number): void {
    let pos = 0;
    while (pos < src.length) {
      const at = offset + pos;
      const i = Math.floor(at / RAM_DISK_CHUNK);
      const inChunk = at - i * RAM_DISK_CHUNK;
      const c = this.chunk(i);
      const n = Math.min(src.length - pos, c.length - inChunk);
      c.set(src.subarray(pos, pos + n), inChunk);
      pos += n;
    }
  }

  readv(views: readonly Uint8Array[], offset: number): Promise<void> {
    try {
      this.check(offset, totalLength(views));
      let at = offset;
      for (const v of views) {
        this.readSync(v, at);
        at += v.length;
      }
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  writev(views: readonly Uint8Array[], offset: number): Promise<void> {
    try {
      if (this.readOnly) throw new Error('disk is read-only');
      this.check(offset, totalLength(views));
      let at = offset;
      for (const v of views) {
        this.writeSync(v, at);
        at += v.length;
      }
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length, true);
  }

  writeZeroes(offset: number, length: number, _mayUnmap: boolean): Promise<void> {
    try {
      if (this.readOnly) throw new Error('disk is read-only');
      this.check(offset, length);
      let pos = offset;
      const end = offset + length;
      while (pos < end) {
        const i = Math.floor(pos / RAM_DISK_CHUNK);
        const start = i * RAM_DISK_CHUNK;
        const c = this.chunks[i];
        const chunkEnd = start + (c?.length ?? Math.min(RAM_DISK_CHUNK, this.size - start));
        const stop = Math.min(end, chunkEnd);
        if (c !== undefined) {
          // Whole chunk covered: free it (reads as zeroes); partial: zero in place.
          if (pos === start && stop === chunkEnd) this.chunks[i] = undefined;
          else c.fill(0, pos - start, stop - start);
        }
        pos = stop;
      }
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  close(): Promise<void> {
    this.chunks.fill(undefined);
    return Promise.resolve();
  }
}
