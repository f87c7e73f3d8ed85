/**
 * Packed virtqueue flags, event suppression values and layout constants (VIRTIO 1.2 §2.8,
 * linux/virtio_ring.h: vring_packed_desc, vring_packed_desc_event).
 * @module
 */

/** Descriptor flag: set to the driver's wrap counter when the driver makes it available. */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
/** Descriptor flag: set to the device's wrap counter (with AVAIL equal to it) when used. */
export const VIRTQ_DESC_F_USED = 1 << 15;
/** Event suppression flags: notifications wanted. */
export const RING_EVENT_FLAGS_ENABLE = 0x0;
/** Event suppression flags: no notifications. */
export const RING_EVENT_FLAGS_DISABLE = 0x1;
/** Event suppression flags: notify when the descriptor at off_wrap is made available/used (EVENT_IDX only). */
export const RING_EVENT_FLAGS_DESC = 0x2;
/** Mask of the event flags in the event suppression `flags` word (the other 14 bits are reserved). */
export const RING_EVENT_FLAGS_MASK = 0x3;
/** Bit of `off_wrap` holding the wrap counter (linux: VRING_PACKED_EVENT_F_WRAP_CTR). */
export const VRING_PACKED_EVENT_F_WRAP_CTR = 15;
/** Largest packed-queue size: offsets are 15 bits. Sizes need not be powers of two. */
export const VIRTQ_PACKED_MAX_SIZE = 32768;
/** Required guest alignment of the descriptor ring. */
export const VIRTQ_PACKED_DESC_ALIGN = 16;
/** Required guest alignment of the driver and device event suppression areas. */
export const VIRTQ_PACKED_EVENT_ALIGN = 4;
/** Bytes of one event suppression structure. */
export const VIRTQ_PACKED_EVENT_SIZE = 4;

/**
 * Packed-ring position state as carried by vhost-user GET/SET_VRING_BASE: the next descriptor the
 * device reads and the next one it writes, each with its wrap counter.
 */
export interface PackedQueueState {
  /** Ring position of the next descriptor the device will read (0 ≤ n < size). */
  nextAvail: number;
  /** Driver ring wrap counter expected at `nextAvail`. */
  availWrap: boolean;
  /** Ring position where the device writes its next used descriptor (0 ≤ n < size). */
  nextUsed: number;
  /** Device ring wrap counter written with the next used descriptor. */
  usedWrap: boolean;
}

/**
 * Encodes a packed state as the 32-bit vring base `num` (QEMU/DPDK layout, same as
 * vhost-user's encodePackedVringBase): last avail idx | avail wrap << 15 | (used idx | used wrap << 15) << 16.
 */
export function encodePackedState(s: PackedQueueState): number {
  const lo = (s.nextAvail & 0x7fff) | (s.availWrap ? 0x8000 : 0);
  const hi = (s.nextUsed & 0x7fff) | (s.usedWrap ? 0x8000 : 0);
  return ((hi << 16) | lo) >>> 0;
}

/** Inverse of {@link encodePackedState}. */
export function decodePackedState(num: number): PackedQueueState {
  return {
    nextAvail: num & 0x7fff,
    availWrap: (num & 0x8000) !== 0,
    nextUsed: (num >>> 16) & 0x7fff,
    usedWrap: (num & 0x8000_0000) !== 0,
  };
}

/**
 * Packed-ring event check (linux vring_need_event with the wrap adjustment of
 * virtqueue_kick_prepare_packed): true when the `moved` descriptors just made available/used,
 * ending at ring position `newPos` with wrap counter `wrap`, include the position named by
 * `offWrap`. `moved` ≥ `size` always notifies (every position was passed).
 */
export function packedNeedEvent(offWrap: number, newPos: number, wrap: boolean, moved: number, size: number): boolean {
  if (moved >= size) return true;
  let off = offWrap & 0x7fff;
  // An event offset from the previous lap lies `size` positions behind in the same number line.
  if (((offWrap >>> VRING_PACKED_EVENT_F_WRAP_CTR) & 1) !== (wrap ? 1 : 0)) off -= size;
  const old = newPos - moved;
  return ((newPos - off - 1) & 0xffff) < ((newPos - old) & 0xffff);
}
