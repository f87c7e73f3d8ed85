/**
 * VDUSE (vDPA Device in Userspace, linux/vduse.h): ioctl numbers and wire structs for
 * /dev/vduse/control and /dev/vduse/$NAME: creating and destroying a device, its virtqueue limits,
 * the IOTLB, virtqueue placement, kick eventfds and interrupts, and the request/response messages the kernel sends on the
 * device fd (status changes, IOTLB updates, vq state), which must be answered promptly: the kernel
 * waits for each answer (msg_timeout) while the caller of the vDPA operation blocks.
 *
 * @module
 */
import { io, ior, iow, iowr } from './ioctl.js';

/** The VDUSE ioctl type byte. */
export const VDUSE_BASE = 0x81;
/** API version this code speaks. */
export const VDUSE_API_VERSION = 0;
/** Longest device name including the NUL. */
export const VDUSE_NAME_MAX = 256;
/** sizeof(struct vduse_dev_config) without config[]. */
export const VDUSE_DEV_CONFIG_SIZE = 256 + 4 + 4 + 8 + 4 + 4 + 13 * 4 + 4;
/** sizeof(struct vduse_vq_config). */
export const VDUSE_VQ_CONFIG_SIZE = 32;
/** sizeof(struct vduse_dev_request) and of struct vduse_dev_response. */
export const VDUSE_MSG_SIZE = 152;

/** Negotiated API version (u64). */
export const VDUSE_GET_API_VERSION = ior(VDUSE_BASE, 0x00, 8);
/** Sets the API version (u64). */
export const VDUSE_SET_API_VERSION = iow(VDUSE_BASE, 0x01, 8);
/** Creates a device from struct vduse_dev_config + config space. */
export const VDUSE_CREATE_DEV = iow(VDUSE_BASE, 0x02, VDUSE_DEV_CONFIG_SIZE);
/** Destroys a device by name (char[256]). */
export const VDUSE_DESTROY_DEV = iow(VDUSE_BASE, 0x03, VDUSE_NAME_MAX);
/** Virtqueue limits (struct vduse_vq_config). */
export const VDUSE_VQ_SETUP = iow(VDUSE_BASE, 0x14, VDUSE_VQ_CONFIG_SIZE);
/** Features the driver acked (u64). */
export const VDUSE_DEV_GET_FEATURES = ior(VDUSE_BASE, 0x11, 8);
/** sizeof(struct vduse_vq_info). */
export const VDUSE_VQ_INFO_SIZE = 48;
/** Virtqueue placement after DRIVER_OK (struct vduse_vq_info). */
export const VDUSE_VQ_GET_INFO = iowr(VDUSE_BASE, 0x15, VDUSE_VQ_INFO_SIZE);
/** sizeof(struct vduse_iotlb_entry). */
export const VDUSE_IOTLB_ENTRY_SIZE = 32;
/** The IOTLB mapping overlapping [start, last]: fills the entry, returns an fd of the memory behind it. */
export const VDUSE_IOTLB_GET_FD = iowr(VDUSE_BASE, 0x10, VDUSE_IOTLB_ENTRY_SIZE);
/** sizeof(struct vduse_vq_eventfd). */
export const VDUSE_VQ_EVENTFD_SIZE = 8;
/** Binds the eventfd the kernel signals when the driver kicks a virtqueue. */
export const VDUSE_VQ_SETUP_KICKFD = iow(VDUSE_BASE, 0x16, VDUSE_VQ_EVENTFD_SIZE);
/** Interrupts the driver for a virtqueue (u32 queue index). */
export const VDUSE_VQ_INJECT_IRQ = iow(VDUSE_BASE, 0x17, 4);
/** Interrupts the driver for a config-space change. */
export const VDUSE_DEV_INJECT_CONFIG_IRQ = io(VDUSE_BASE, 0x13);
/** struct vduse_vq_eventfd.fd value unbinding the kick eventfd. */
export const VDUSE_EVENTFD_DEASSIGN = -1;
/** IOTLB permission bits of struct vduse_iotlb_entry.perm. */
export const VDUSE_ACCESS_RO = 0x1;
/** Write permission. */
export const VDUSE_ACCESS_WO = 0x2;
/** Read and write. */
export const VDUSE_ACCESS_RW = 0x3;

/** Request types on /dev/vduse/$NAME. */
export const VDUSE_GET_VQ_STATE = 0;
/** The driver wrote the status byte. */
export const VDUSE_SET_STATUS = 1;
/** IOTLB mappings in [start, last] changed: re-fetch them with VDUSE_IOTLB_GET_FD. */
export const VDUSE_UPDATE_IOTLB = 2;
/** Response result: success. */
export const VDUSE_REQ_RESULT_OK = 0x00;
/** Response result: failure. */
export const VDUSE_REQ_RESULT_FAILED = 0x01;

/** Fields of struct vduse_dev_config. */
export interface VduseDevConfig {
  readonly name: string;
  readonly vendorId: number;
  readonly deviceId: number;
  readonly features: bigint;
  readonly vqNum: number;
  readonly vqAlign: number;
  /** The device's virtio config space. */
  readonly config: Uint8Array;
}

/** struct vduse_dev_config followed by the config space. */
export function encodeDevConfig(c: VduseDevConfig): Uint8Array {
  const name = Buffer.from(c.name, 'utf8');
  if (name.length === 0 || name.length >= VDUSE_NAME_MAX) throw new RangeError(`VDUSE device name of ${name.length} bytes`);
  const out = new Uint8Array(VDUSE_DEV_CONFIG_SIZE + c.config.length);
  const v = new DataView(out.buffer);
  out.set(name, 0);
  v.setUint32(256, c.vendorId, true);
  v.setUint32(260, c.deviceId, true);
  v.setBigUint64(264, c.features, true);
  v.setUint32(272, c.vqNum, true);
  v.setUint32(276, c.vqAlign, true);
  v.setUint32(332, c.config.length, true);
  out.set(c.config, VDUSE_DEV_CONFIG_SIZE);
  return out;
}

/** struct vduse_vq_config {index, max_size}. */
export function encodeVqConfig(index: number, maxSize: number): Uint8Array {
  const out = new Uint8Array(VDUSE_VQ_CONFIG_SIZE);
  const v = new DataView(out.buffer);
  v.setUint32(0, index, true);
  v.setUint16(4, maxSize, true);
  return out;
}

/** A decoded struct vduse_dev_request. */
export interface VduseRequest {
  readonly type: number;
  readonly requestId: number;
  /** SET_STATUS: the status byte. */
  readonly status: number;
  /** UPDATE_IOTLB: the range [start, last]. */
  readonly start: bigint;
  readonly last: bigint;
  /** GET_VQ_STATE: the queue index. */
  readonly vqIndex: number;
}

/** Decodes struct vduse_dev_request. */
export function decodeRequest(b: Uint8Array): VduseRequest {
  if (b.length < VDUSE_MSG_SIZE) throw new RangeError(`VDUSE request of ${b.length} bytes, expected ${VDUSE_MSG_SIZE}`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    type: v.getUint32(0, true), requestId: v.getUint32(4, true),
    status: v.getUint8(24), start: v.getBigUint64(24, true), last: v.getBigUint64(32, true), vqIndex: v.getUint32(24, true),
  };
}

/** struct vduse_dev_response {request_id, result, reserved, union}; `availIndex` answers GET_VQ_STATE. */
export function encodeResponse(buf: Uint8Array, requestId: number, result: number, availIndex = 0): Uint8Array {
  const out = buf.subarray(0, VDUSE_MSG_SIZE);
  out.fill(0);
  const v = new DataView(out.buffer, out.byteOffset, VDUSE_MSG_SIZE);
  v.setUint32(0, requestId, true);
  v.setUint32(4, result, true);
  v.setUint16(28, availIndex, true); // vq_state.split.avail_index after vq_state.index
  return out;
}

/** struct vduse_iotlb_entry as the kernel fills it in (VDUSE_IOTLB_GET_FD). */
export interface VduseIotlbEntry {
  /** Offset of `start` in the file the returned fd refers to. */
  readonly offset: bigint;
  /** First IOVA of the mapping. */
  readonly start: bigint;
  /** Last IOVA of the mapping (inclusive). */
  readonly last: bigint;
  /** VDUSE_ACCESS_* bits. */
  readonly perm: number;
}

/** struct vduse_iotlb_entry asking for the first mapping overlapping [start, last]. */
export function encodeIotlbEntry(buf: Uint8Array, start: bigint, last: bigint): Uint8Array {
  const out = buf.subarray(0, VDUSE_IOTLB_ENTRY_SIZE);
  out.fill(0);
  const v = new DataView(out.buffer, out.byteOffset, VDUSE_IOTLB_ENTRY_SIZE);
  v.setBigUint64(8, start, true);
  v.setBigUint64(16, last, true);
  return out;
}

/** Decodes struct vduse_iotlb_entry. */
export function decodeIotlbEntry(b: Uint8Array): VduseIotlbEntry {
  const v = new DataView(b.buffer, b.byteOffset, VDUSE_IOTLB_ENTRY_SIZE);
  return { offset: v.getBigUint64(0, true), start: v.getBigUint64(8, true), last: v.getBigUint64(16, true), perm: v.getUint8(24) };
}

/** struct vduse_vq_info (split layout). */
export interface VduseVqInfo {
  /** Queue index. */
  readonly index: number;
  /** Queue size the driver chose. */
  readonly num: number;
  /** IOVA of the descriptor table. */
  readonly descAddr: bigint;
  /** IOVA of the available ring (driver area). */
  readonly driverAddr: bigint;
  /** IOVA of the used ring (device area). */
  readonly deviceAddr: bigint;
  /** Split: the next available index to process. */
  readonly availIndex: number;
  /** Whether the driver enabled the queue. */
  readonly ready: boolean;
}

/** struct vduse_vq_info asking about queue `index`. */
export function encodeVqInfoQuery(buf: Uint8Array, index: number): Uint8Array {
  const out = buf.subarray(0, VDUSE_VQ_INFO_SIZE);
  out.fill(0);
  new DataView(out.buffer, out.byteOffset, VDUSE_VQ_INFO_SIZE).setUint32(0, index, true);
  return out;
}

/** Decodes struct vduse_vq_info. */
export function decodeVqInfo(b: Uint8Array): VduseVqInfo {
  const v = new DataView(b.buffer, b.byteOffset, VDUSE_VQ_INFO_SIZE);
  return {
    index: v.getUint32(0, true), num: v.getUint32(4, true),
    descAddr: v.getBigUint64(8, true), driverAddr: v.getBigUint64(16, true), deviceAddr: v.getBigUint64(24, true),
    availIndex: v.getUint16(32, true), ready: v.getUint8(40) !== 0,
  };
}

/** struct vduse_vq_eventfd {index, fd}; fd {@link VDUSE_EVENTFD_DEASSIGN} unbinds. */
export function encodeVqEventfd(buf: Uint8Array, index: number, fd: number): Uint8Array {
  const out = buf.subarray(0, VDUSE_VQ_EVENTFD_SIZE);
  const v = new DataView(out.buffer, out.byteOffset, VDUSE_VQ_EVENTFD_SIZE);
  v.setUint32(0, index, true);
  v.setInt32(4, fd, true);
  return out;
}
