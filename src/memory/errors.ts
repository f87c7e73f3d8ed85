/**
 * Error kinds raised by guest-memory operations.
 *
 * - `out-of-range`: the address range is not (entirely) backed by guest memory.
 * - `overflow`: address + length exceeds 2^64 or cannot be represented exactly (> 2^53).
 * - `spans-regions`: a single contiguous view was requested for a range that crosses a region
 *   (or host mapping window) boundary; use the scatter variant instead.
 * - `overlap`: two regions overlap in guest-physical or front-end user address space.
 * - `unmapped`: the backing mapping has already been released.
 * - `invalid`: a malformed argument (zero-size region, negative length, non-integer address...).
 */
export type GuestMemoryErrorKind = 'out-of-range' | 'overflow' | 'spans-regions' | 'overlap' | 'unmapped' | 'invalid';

/** Error thrown by every guest-memory operation; `kind` says which rule was violated. */
export class GuestMemoryError extends Error {
  /** Which rule was violated. */
  readonly kind: GuestMemoryErrorKind;

  constructor(kind: GuestMemoryErrorKind, message: string) {
    super(message);
    this.name = 'GuestMemoryError';
    this.kind = kind;
  }
}

/** Largest address the JS-number based API accepts (2^53 - 1). */
export const MAX_ADDRESS = Number.MAX_SAFE_INTEGER;

/**
 * Converts a wire (u64) value to a JS number, throwing `overflow` when it cannot be represented
 * exactly. Every address and size arriving from the front-end goes through this.
 */
export function u64ToNumber(value: bigint, what = 'value'): number {
  if (value < 0n || value > BigInt(MAX_ADDRESS)) {
    throw new GuestMemoryError('overflow', `${what} 0x${value.toString(16)} exceeds 2^53 - 1`);
  }
  return Number(value);
}

/** Throws `invalid` unless `v` is a non-negative safe integer. */
export function checkAddress(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new GuestMemoryError(Number.isInteger(v) && v > 0 ? 'overflow' : 'invalid', `${what} ${v} is not an integer in [0, 2^53)`);
  }
}

/** Formats an address for error messages. */
export function hex(v: number): string {
  return '0x' + v.toString(16);
}
