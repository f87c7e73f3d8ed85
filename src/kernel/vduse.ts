/**
 * VDUSE (vDPA Device in Userspace, linux/vduse.h): ioctl numbers and wire structs for
 * /dev/vduse/control and /dev/vduse/$NAME. Only the control path so far: creating and destroying
 * a device, its virtqueue limits, and the request/response messages the kernel sends on the
 * device fd (status changes, IOTLB updates, vq state), which must be answered promptly: the kernel
 * waits for each answer (msg_timeout) while the caller of the vDPA operation blocks.
 *
 * @module
 */
import { ior, iow, iowr } from './ioctl.js';

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
/** Virtqueue placement after DRIVER_OK (struct vduse_vq_info, 48 bytes). */
export const VDUSE_VQ_GET_INFO = iowr(VDUSE_BASE, 0x15, 48);

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
