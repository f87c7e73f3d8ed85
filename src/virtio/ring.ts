/**
 * Split virtqueue flags and layout constants (VIRTIO 1.2 §2.7, linux/virtio_ring.h).
 * @module
 */

/** This buffer continues via the next field (VIRTIO 1.2 §2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
/** This buffer is device write-only (otherwise device read-only). */
export const VIRTQ_DESC_F_WRITE = 2;
/** This buffer contains a list of buffer descriptors (VIRTIO_F_INDIRECT_DESC). */
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags: the driver does not want an interrupt (used when EVENT_IDX is off). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device does not want a notification (used when EVENT_IDX is off). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Largest split-queue size (VIRTIO 1.2 §2.7). */
export const VIRTQ_MAX_SIZE = 32768;
/** Size of one descriptor in bytes. */
export const VIRTQ_DESC_SIZE = 16;
/** Largest indirect table we accept: `next` is a u16, so entries beyond 65536 are unreachable. */
export const VIRTQ_MAX_INDIRECT = 65536;
/** Required guest alignment of the descriptor table, available ring and used ring. */
export const VIRTQ_DESC_ALIGN = 16;
/** Required alignment of the available ring. */
export const VIRTQ_AVAIL_ALIGN = 2;
/** Required alignment of the used ring. */
export const VIRTQ_USED_ALIGN = 4;
