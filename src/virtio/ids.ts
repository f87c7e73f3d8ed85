/**
 * Virtio device IDs (VIRTIO 1.2 §5 "Device Types", linux/virtio_ids.h): the `device type` a
 * transport reports, e.g. VDUSE's device_id or vDPA's GET_DEVICE_ID.
 * @module
 */

/** Network card. */
export const VIRTIO_ID_NET = 1;
/** Block device. */
export const VIRTIO_ID_BLOCK = 2;
/** Console. */
export const VIRTIO_ID_CONSOLE = 3;
/** Entropy source. */
export const VIRTIO_ID_RNG = 4;
/** Memory balloon (traditional). */
export const VIRTIO_ID_BALLOON = 5;
/** SCSI host. */
export const VIRTIO_ID_SCSI = 8;
/** 9P transport. */
export const VIRTIO_ID_9P = 9;
/** GPU. */
export const VIRTIO_ID_GPU = 16;
/** Input device. */
export const VIRTIO_ID_INPUT = 18;
/** Socket device (vsock). */
export const VIRTIO_ID_VSOCK = 19;
/** Crypto device. */
export const VIRTIO_ID_CRYPTO = 20;
/** File system (virtio-fs). */
export const VIRTIO_ID_FS = 26;
/** Sound device. */
export const VIRTIO_ID_SOUND = 25;
/** I2C adapter. */
export const VIRTIO_ID_I2C_ADAPTER = 34;
/** SCMI. */
export const VIRTIO_ID_SCMI = 32;
/** GPIO device. */
export const VIRTIO_ID_GPIO = 41;
