import { GuestMemoryError } from '../memory/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { QueueError } from './constants.js';

/** Constructor of a typed array view usable with Atomics. */
export interface RingViewCtor<T> {
  new (b: ArrayBufferLike, o: number, n: number): T;
  readonly BYTES_PER_ELEMENT: number;
}

/**
 * Typed view over a ring part at `gpa`: the part must lie in one region (`bad-ring`) and be
 * aligned in host memory for its element size (`misaligned`), so Atomics can be used on it.
 */
export function ringView<T extends Uint16Array | Uint32Array>(
  mem: GuestMemory, gpa: number, bytes: number, what: string, Ctor: RingViewCtor<T>,
): T {
  let v: Uint8Array;
  try {
    v = mem.translate(gpa, bytes);
  } catch (e) {
    if (e instanceof GuestMemoryError) throw new QueueError('bad-ring', `${what} at 0x${gpa.toString(16)} (${bytes} bytes): ${e.message}`);
    throw e;
  }
  if (v.byteOffset % Ctor.BYTES_PER_ELEMENT !== 0) {
    throw new QueueError('misaligned', `${what} at 0x${gpa.toString(16)} is not ${Ctor.BYTES_PER_ELEMENT}-byte aligned in host memory`);
  }
  return new Ctor(v.buffer, v.byteOffset, Math.floor(bytes / Ctor.BYTES_PER_ELEMENT));
}
