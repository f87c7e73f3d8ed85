import type { DirtyLog, GuestMemory } from '../memory/index.js';
import { QueueError } from './constants.js';

/**
 * One request popped from a split queue: the descriptor buffers flattened (indirect tables
 * expanded), device-readable buffers first, then device-writable ones. Addresses and lengths are
 * copied out of the ring when popped, so later driver writes to the descriptor table cannot change
 * what was validated. A chain object can be recycled with `SplitQueue.popDescriptorChain(chain)`.
 */
export class DescriptorChain {
  /** Head descriptor index: the id to pass to `SplitQueue.addUsed`. */
  headIndex = 0;
  /** Number of buffers in the chain. */
  count = 0;
  /** The first `readableCount` buffers are device-readable; the rest are device-writable. */
  readableCount = 0;
  /** Total bytes of the readable buffers. */
  readableBytes = 0;
  /** Total bytes of the writable buffers. */
  writableBytes = 0;
  /** Whether the chain came (partly) through an indirect table. */
  indirect = false;
  /** Guest-physical address of each buffer (valid for indices < count). */
  readonly addrs: number[] = [];
  /** Length of each buffer. */
  readonly lens: number[] = [];
  /** Cursor over the readable part (reset at every pop). */
  readonly reader: Reader;
  /** Cursor over the writable part (reset at every pop). */
  readonly writer: Writer;
  /**
   * Device-owned scratch attached to this chain object; it survives recycling, so a device can keep
   * per-request buffers here instead of allocating them per request. Never touched by the queue.
   */
  userData: unknown = null;
  private mem: GuestMemory | null = null;

  constructor() {
    this.reader = new Reader(this);
    this.writer = new Writer(this);
  }

  /** The memory snapshot the chain was validated against. */
  get memory(): GuestMemory {
    if (this.mem === null) throw new QueueError('not-ready', 'descriptor chain is empty');
    return this.mem;
  }

  /** @internal Starts a new chain (called by SplitQueue). */
  reset(head: number, memory: GuestMemory): void {
    this.headIndex = head;
    this.mem = memory;
    this.count = 0;
    this.readableCount = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.indirect = false;
  }

  /** @internal Appends a buffer; the caller enforces readable-before-writable. */
  push(addr: number, len: number, writable: boolean): void {
    const i = this.count++;
    this.addrs[i] = addr;
    this.lens[i] = len;
    if (writable) {
      this.writableBytes += len;
    } else {
      this.readableCount = this.count;
      this.readableBytes += len;
    }
  }

  /** @internal Positions the cursors at the start of their parts. */
  finish(): void {
    this.reader.rewind(0, this.readableCount, this.readableBytes);
    this.writer.rewind(this.readableCount, this.count, this.writableBytes);
  }

  /** True when buffer `i` is device-writable. */
  isWritable(i: number): boolean {
    return i >= this.readableCount && i < this.count;
  }

  /**
   * Marks the first `len` bytes of the writable part dirty in the memory's dirty log (no-op when
   * logging is off). Call after data written through `writer.segments()` views has landed.
   * `log` defaults to the chain's snapshot's log; pass the current one when logging may have
   * started while the request was in flight. (The queue-serving framework does this for you.)
   */
  logWritten(len: number, log: DirtyLog | null = this.memory.dirtyLog): void {
    if (log === null) return;
    let left = Math.min(len, this.writableBytes);
    for (let i = this.readableCount; i < this.count && left > 0; i++) {
      const n = Math.min(left, this.lens[i] as number);
      if (n > 0) log.markDirty(this.addrs[i] as number, n);
      left -= n;
    }
  }
}

/** Shared cursor logic for Reader and Writer: a position inside buffers [first, end) of a chain. */
abstract class Cursor {
  /** @internal Index of the buffer the cursor is in. */
  protected idx = 0;
  /** @internal Offset inside buffer `idx`. */
  protected off = 0;
  /** @internal One past the last buffer of this cursor's part. */
  protected end = 0;
  /** @internal Bytes not yet consumed. */
  protected left = 0;
  /** @internal Bytes in this cursor's part. */
  protected total = 0;
  /** @internal Bounce buffer for scalars that straddle two buffers. */
  protected readonly scratch = new Uint8Array(8);
  /** @internal View on `scratch`. */
  protected readonly scratchView = new DataView(this.scratch.buffer);

  /** @internal Cursors are made by their {@link DescriptorChain}, never by users. */
  constructor(protected readonly chain: DescriptorChain) {}

  /** @internal */
  rewind(first: number, end: number, bytes: number): void {
    this.idx = first;
    this.off = 0;
    this.end = end;
    this.left = bytes;
    this.total = bytes;
  }

  /** Bytes not yet consumed. */
  get availableBytes(): number {
    return this.left;
  }

  /** @internal Throws `buffer-too-small` unless `n` more bytes remain. */
  protected need(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.left) {
      throw new QueueError('buffer-too-small', `request needs ${n} more bytes but only ${this.left} remain in the chain`, this.chain.headIndex);
    }
  }

  /**
   * Guest address of the cursor when the next `n` bytes are contiguous in one buffer, else -1.
   * Consumes nothing (lets a device peek at a header before deciding how to serve the request).
   */
  contiguousAddress(n: number): number {
    return n <= this.left ? this.contiguous(n) : -1;
  }

  /** Guest address of the cursor if the next `n` bytes are contiguous in one buffer, else -1. */
  protected contiguous(n: number): number {
    const lens = this.chain.lens;
    while (this.idx < this.end && this.off === lens[this.idx]) {
      this.idx++;
      this.off = 0;
    }
    if (this.idx < this.end && (lens[this.idx] as number) - this.off >= n) {
      return (this.chain.addrs[this.idx] as number) + this.off;
    }
    return -1;
  }

  /** Advances over `n` bytes (already checked with need()), calling `visit` for each piece. */
  protected advance(n: number, visit: ((gpa: number, pos: number, len: number) => void) | null): void {
    const { addrs, lens } = this.chain;
    let pos = 0;
    while (pos < n) {
      const len = lens[this.idx] as number;
      const take = Math.min(len - this.off, n - pos);
      if (take > 0) {
        if (visit !== null) visit((addrs[this.idx] as number) + this.off, pos, take);
        pos += take;
        this.off += take;
      }
      if (this.off === len) {
        this.idx++;
        this.off = 0;
      }
    }
    this.left -= n;
  }

  /** Skips `n` bytes. */
  skip(n: number): void {
    this.need(n);
    this.advance(n, null);
  }

  /**
   * Views of guest memory covering the next `len` bytes, in order, without copying (for
   * fs.readv / fs.writev). Consumes them.
   */
  segments(len: number, out: Uint8Array[] = []): Uint8Array[] {
    this.need(len);
    const mem = this.chain.memory;
    this.advance(len, (gpa, _pos, n) => {
      mem.translateSegments(gpa, n, out);
    });
    return out;
  }
  /**
   * Host [address, length] pairs of the next `len` bytes appended to `out` from pair index `at`
   * (see GuestMemory.hostRanges), consuming them. Returns the next free pair index, or -1 (nothing
   * consumed) when some byte is not host-addressable or more than `max` pairs are needed.
   * Allocates nothing.
   */
  hostSegments(len: number, out: Float64Array, at: number, max: number): number {
    this.need(len);
    const mem = this.chain.memory;
    const { addrs, lens } = this.chain;
    let idx = this.idx;
    let off = this.off;
    let pos = 0;
    let k = at;
    while (pos < len) {
      const blen = lens[idx] as number;
      const take = Math.min(blen - off, len - pos);
      if (take > 0) {
        k = mem.hostRanges((addrs[idx] as number) + off, take, out, k, max);
        if (k < 0) return -1;
        pos += take;
        off += take;
      }
      if (off === blen) {
        idx++;
        off = 0;
      }
    }
    this.idx = idx;
    this.off = off;
    this.left -= len;
    return k;
  }

}

/** Reads the device-readable part of a chain as one byte stream (little-endian scalars). */
export class Reader extends Cursor {
  /** Bytes consumed so far. */
  get bytesRead(): number {
    return this.total - this.left;
  }

  /** Fills `into` from the chain (throws `buffer-too-small` if the chain is shorter). */
  read(into: Uint8Array): void {
    this.need(into.length);
    const mem = this.chain.memory;
    this.advance(into.length, (gpa, pos, n) => mem.read(gpa, into.subarray(pos, pos + n)));
  }

  private small(n: number): DataView {
    this.need(n);
    const mem = this.chain.memory;
    const into = this.scratch;
    this.advance(n, (gpa, pos, k) => mem.read(gpa, into.subarray(pos, pos + k)));
    return this.scratchView;
  }

  /** Reads one byte. */
  readU8(): number {
    const gpa = this.contiguous(1);
    if (gpa < 0 || this.left < 1) return this.small(1).getUint8(0);
    this.off += 1;
    this.left -= 1;
    return this.chain.memory.readU8(gpa);
  }

  /** Reads a little-endian u16. */
  readU16(): number {
    const gpa = this.contiguous(2);
    if (gpa < 0 || this.left < 2) return this.small(2).getUint16(0, true);
    this.off += 2;
    this.left -= 2;
    return this.chain.memory.readU16(gpa);
  }

  /** Reads a little-endian u32. */
  readU32(): number {
    const gpa = this.contiguous(4);
    if (gpa < 0 || this.left < 4) return this.small(4).getUint32(0, true);
    this.off += 4;
    this.left -= 4;
    return this.chain.memory.readU32(gpa);
  }

  /** Reads a little-endian u64 as bigint. */
  readU64(): bigint {
    const gpa = this.contiguous(8);
    if (gpa < 0 || this.left < 8) return this.small(8).getBigUint64(0, true);
    this.off += 8;
    this.left -= 8;
    return this.chain.memory.readU64(gpa);
  }
}

/** Writes the device-writable part of a chain as one byte stream (little-endian scalars). */
export class Writer extends Cursor {
  /** Bytes written (or handed out via segments/skip) so far: the used length to report. */
  get bytesWritten(): number {
    return this.total - this.left;
  }

  /** Copies `from` into the chain (throws `buffer-too-small` if the chain is shorter). */
  write(from: Uint8Array): void {
    this.need(from.length);
    const mem = this.chain.memory;
    this.advance(from.length, (gpa, pos, n) => mem.write(gpa, from.subarray(pos, pos + n)));
  }

  private small(n: number): void {
    const from = this.scratch.subarray(0, n);
    this.write(from);
  }

  /** Writes one byte. */
  writeU8(v: number): void {
    const gpa = this.contiguous(1);
    if (gpa < 0 || this.left < 1) {
      this.scratchView.setUint8(0, v);
      return this.small(1);
    }
    this.off += 1;
    this.left -= 1;
    this.chain.memory.writeU8(gpa, v);
  }

  /** Writes a little-endian u16. */
  writeU16(v: number): void {
    const gpa = this.contiguous(2);
    if (gpa < 0 || this.left < 2) {
      this.scratchView.setUint16(0, v, true);
      return this.small(2);
    }
    this.off += 2;
    this.left -= 2;
    this.chain.memory.writeU16(gpa, v);
  }

  /** Writes a little-endian u32. */
  writeU32(v: number): void {
    const gpa = this.contiguous(4);
    if (gpa < 0 || this.left < 4) {
      this.scratchView.setUint32(0, v, true);
      return this.small(4);
    }
    this.off += 4;
    this.left -= 4;
    this.chain.memory.writeU32(gpa, v);
  }

  /** Writes a little-endian u64. */
  writeU64(v: bigint | number): void {
    const b = BigInt.asUintN(64, BigInt(v));
    const gpa = this.contiguous(8);
    if (gpa < 0 || this.left < 8) {
      this.scratchView.setBigUint64(0, b, true);
      return this.small(8);
    }
    this.off += 8;
    this.left -= 8;
    this.chain.memory.writeU64(gpa, b);
  }
}
