// Ring feature bits and layout constants are virtio's; the queue layer re-exports them.
export { VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX } from '../virtio/features.js';
export * from '../virtio/ring.js';
import { VIRTQ_DESC_SIZE } from '../virtio/ring.js';
import { endianness } from 'node:os';

/** Bytes of the descriptor table for `size` entries. */
export function descTableSize(size: number): number {
  return VIRTQ_DESC_SIZE * size;
}
/** Bytes of the available ring (flags, idx, ring[size], used_event). */
export function availRingSize(size: number): number {
  return 6 + 2 * size;
}
/** Bytes of the used ring (flags, idx, ring[size] of {id, len}, avail_event). */
export function usedRingSize(size: number): number {
  return 6 + 8 * size;
}

/**
 * vring_need_event(): true when moving an index from `oldIdx` to `newIdx` crosses `eventIdx`
 * (all u16, wrap-safe). Used both for interrupts (used_event) and notifications (avail_event).
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

// Rings are accessed through native-endian typed arrays; VIRTIO rings are little-endian.
if (endianness() !== 'LE') throw new Error('vhost-user queue code requires a little-endian host');

/**
 * Kinds of {@link QueueError}: configuration errors (`invalid-size`, `misaligned`, `bad-ring`,
 * `not-ready`) and hostile-driver errors found while walking a chain.
 */
export type QueueErrorKind =
  | 'invalid-size'
  | 'misaligned'
  | 'bad-ring'
  | 'not-ready'
  | 'avail-idx-jump'
  | 'bad-index'
  | 'chain-too-long'
  | 'nested-indirect'
  | 'indirect-with-next'
  | 'bad-indirect-len'
  | 'readable-after-writable'
  | 'out-of-range'
  | 'overflow'
  | 'buffer-too-small'
  // Packed ring (VIRTIO 1.2 §2.8): a chain descriptor after the first is not marked available, a
  // buffer id is ≥ the queue size, or a buffer id is made available again while still in flight.
  | 'descriptor-not-available'
  | 'bad-buffer-id'
  | 'buffer-id-in-use';

/**
 * Error for a misconfigured queue or a malformed request. For chain errors `headIndex` is the
 * head of the offending chain (already consumed from the available ring), or null when no valid
 * head exists (the device should then mark the queue broken).
 */
export class QueueError extends Error {
  /** Which rule was violated. */
  readonly kind: QueueErrorKind;
  /** Head descriptor index of the bad chain, when it is a valid index; else null. */
  readonly headIndex: number | null;

  constructor(kind: QueueErrorKind, message: string, headIndex: number | null = null) {
    super(message);
    this.name = 'QueueError';
    this.kind = kind;
    this.headIndex = headIndex;
  }
}
