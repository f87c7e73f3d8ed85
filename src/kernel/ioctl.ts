/**
 * Linux vhost ioctl numbers, computed from the kernel's `_IOC` encoding (include/uapi/asm-generic/
 * ioctl.h), and the wire structs of linux/vhost_types.h. The numbers are checked against the C
 * headers by test/unit/kernel-ioctl.test.ts (a C program compiled at test time).
 *
 * @module
 */

// asm-generic layout (x86, arm64, riscv): nr 8 bits, type 8 bits, size 14 bits, dir 2 bits.
const IOC_NRBITS = 8;
const IOC_TYPEBITS = 8;
const IOC_SIZEBITS = 14;
const IOC_NRSHIFT = 0;
const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;

/** `_IOC_NONE`: no data transferred. */
export const IOC_NONE = 0;
/** `_IOC_WRITE`: userspace writes, the kernel reads the argument. */
export const IOC_WRITE = 1;
/** `_IOC_READ`: the kernel writes the argument. */
export const IOC_READ = 2;

/**
 * `_IOC(dir, type, nr, size)` as an unsigned 32-bit number (READ requests have bit 31 set, so the
 * result can exceed 2^31; the addon passes it as an unsigned long).
 */
export function ioc(dir: number, type: number, nr: number, size: number): number {
  if (!Number.isInteger(size) || size < 0 || size >= 1 << IOC_SIZEBITS) throw new RangeError(`ioctl size ${size} does not fit in ${IOC_SIZEBITS} bits`);
  if (type < 0 || type > 0xff || nr < 0 || nr > 0xff || dir < 0 || dir > 3) throw new RangeError(`bad ioctl fields dir=${dir} type=${type} nr=${nr}`);
  return ((dir << IOC_DIRSHIFT) | (size << IOC_SIZESHIFT) | (type << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)) >>> 0;
}
/** `_IO(type, nr)`. */
export const io = (type: number, nr: number): number => ioc(IOC_NONE, type, nr, 0);
/** `_IOR(type, nr, size)`. */
export const ior = (type: number, nr: number, size: number): number => ioc(IOC_READ, type, nr, size);
/** `_IOW(type, nr, size)`. */
export const iow = (type: number, nr: number, size: number): number => ioc(IOC_WRITE, type, nr, size);
/** `_IOWR(type, nr, size)`. */
export const iowr = (type: number, nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, type, nr, size);

// ---------------------------------------------------------------------------------------------
// Struct sizes (linux/vhost_types.h, x86-64 / LP64).

/** sizeof(struct vhost_vring_state): index u32, num u32. */
export const VHOST_VRING_STATE_SIZE = 8;
/** sizeof(struct vhost_vring_file): index u32, fd s32. */
export const VHOST_VRING_FILE_SIZE = 8;
/** sizeof(struct vhost_vring_addr): index, flags, then five u64 addresses. */
export const VHOST_VRING_ADDR_SIZE = 40;
/** sizeof(struct vhost_memory) without regions: nregions u32, padding u32. */
export const VHOST_MEMORY_SIZE = 8;
/** sizeof(struct vhost_memory_region): gpa, size, uaddr, flags_padding (u64 each). */
export const VHOST_MEMORY_REGION_SIZE = 32;
/** sizeof(struct vhost_iotlb_msg): iova, size, uaddr u64, perm u8, type u8, padded to 8. */
export const VHOST_IOTLB_MSG_SIZE = 32;
/** sizeof(struct vhost_msg_v2): type u32, asid u32, union { iotlb; u8 padding[64] }. */
export const VHOST_MSG_V2_SIZE = 72;
/** sizeof(struct vhost_vdpa_config) without buf: off u32, len u32. */
export const VHOST_VDPA_CONFIG_SIZE = 8;
/** sizeof(struct vhost_vdpa_iova_range): first u64, last u64. */
export const VHOST_VDPA_IOVA_RANGE_SIZE = 16;
/** sizeof(struct vhost_scsi_target). */
export const VHOST_SCSI_TARGET_SIZE = 232;

// ---------------------------------------------------------------------------------------------
// Ioctl numbers (linux/vhost.h).

/** The vhost ioctl type byte. */
export const VHOST_VIRTIO = 0xaf;
const U8 = 1;
const U16 = 2;
const U32 = 4;
const U64 = 8;
const INT = 4;

/** Device feature bits offered by the kernel (u64). */
export const VHOST_GET_FEATURES = ior(VHOST_VIRTIO, 0x00, U64);
/** Acked feature bits (u64). */
export const VHOST_SET_FEATURES = iow(VHOST_VIRTIO, 0x00, U64);
/** Binds the device to the calling process's mm; required before anything else. */
export const VHOST_SET_OWNER = io(VHOST_VIRTIO, 0x01);
/** Releases ownership and resets the device. */
export const VHOST_RESET_OWNER = io(VHOST_VIRTIO, 0x02);
/** struct vhost_memory + regions. */
export const VHOST_SET_MEM_TABLE = iow(VHOST_VIRTIO, 0x03, VHOST_MEMORY_SIZE);
/** Userspace address of the dirty log bitmap (u64). */
export const VHOST_SET_LOG_BASE = iow(VHOST_VIRTIO, 0x04, U64);
/** eventfd signalled when the log is written (int). */
export const VHOST_SET_LOG_FD = iow(VHOST_VIRTIO, 0x07, INT);
/** Ring size. */
export const VHOST_SET_VRING_NUM = iow(VHOST_VIRTIO, 0x10, VHOST_VRING_STATE_SIZE);
/** Ring addresses. */
export const VHOST_SET_VRING_ADDR = iow(VHOST_VIRTIO, 0x11, VHOST_VRING_ADDR_SIZE);
/** Next available index to process. */
export const VHOST_SET_VRING_BASE = iow(VHOST_VIRTIO, 0x12, VHOST_VRING_STATE_SIZE);
/** Stops the ring and returns its next available index. */
export const VHOST_GET_VRING_BASE = iowr(VHOST_VIRTIO, 0x12, VHOST_VRING_STATE_SIZE);
/** Legacy big-endian ring (cross-endian hosts only). */
export const VHOST_SET_VRING_ENDIAN = iow(VHOST_VIRTIO, 0x13, VHOST_VRING_STATE_SIZE);
/** The header declares it _IOW although the kernel writes the result. */
export const VHOST_GET_VRING_ENDIAN = iow(VHOST_VIRTIO, 0x14, VHOST_VRING_STATE_SIZE);
/** Kick eventfd (guest to device). */
export const VHOST_SET_VRING_KICK = iow(VHOST_VIRTIO, 0x20, VHOST_VRING_FILE_SIZE);
/** Call eventfd (device to guest). */
export const VHOST_SET_VRING_CALL = iow(VHOST_VIRTIO, 0x21, VHOST_VRING_FILE_SIZE);
/** Error eventfd. */
export const VHOST_SET_VRING_ERR = iow(VHOST_VIRTIO, 0x22, VHOST_VRING_FILE_SIZE);
/** Busy-poll timeout in µs. */
export const VHOST_SET_VRING_BUSYLOOP_TIMEOUT = iow(VHOST_VIRTIO, 0x23, VHOST_VRING_STATE_SIZE);
/** Declared _IOW in the header although it reads back. */
export const VHOST_GET_VRING_BUSYLOOP_TIMEOUT = iow(VHOST_VIRTIO, 0x24, VHOST_VRING_STATE_SIZE);
/** VHOST_BACKEND_F_* acked (u64). */
export const VHOST_SET_BACKEND_FEATURES = iow(VHOST_VIRTIO, 0x25, U64);
/** VHOST_BACKEND_F_* offered (u64). */
export const VHOST_GET_BACKEND_FEATURES = ior(VHOST_VIRTIO, 0x26, U64);
/** vhost-net: attach a TAP/packet socket fd to a queue (fd -1 detaches). */
export const VHOST_NET_SET_BACKEND = iow(VHOST_VIRTIO, 0x30, VHOST_VRING_FILE_SIZE);
/** vhost-scsi. */
export const VHOST_SCSI_SET_ENDPOINT = iow(VHOST_VIRTIO, 0x40, VHOST_SCSI_TARGET_SIZE);
/** vhost-scsi. */
export const VHOST_SCSI_CLEAR_ENDPOINT = iow(VHOST_VIRTIO, 0x41, VHOST_SCSI_TARGET_SIZE);
/** vhost-scsi. */
export const VHOST_SCSI_GET_ABI_VERSION = iow(VHOST_VIRTIO, 0x42, INT);
/** vhost-vsock: the guest's context id (u64). */
export const VHOST_VSOCK_SET_GUEST_CID = iow(VHOST_VIRTIO, 0x60, U64);
/** vhost-vsock: start (1) / stop (0) the device (int). */
export const VHOST_VSOCK_SET_RUNNING = iow(VHOST_VIRTIO, 0x61, INT);
/** vhost-vdpa: virtio device id (u32). */
export const VHOST_VDPA_GET_DEVICE_ID = ior(VHOST_VIRTIO, 0x70, U32);
/** vhost-vdpa: device status (u8). */
export const VHOST_VDPA_GET_STATUS = ior(VHOST_VIRTIO, 0x71, U8);
/** vhost-vdpa: device status (u8). */
export const VHOST_VDPA_SET_STATUS = iow(VHOST_VIRTIO, 0x72, U8);
/** vhost-vdpa: struct vhost_vdpa_config + buf. */
export const VHOST_VDPA_GET_CONFIG = ior(VHOST_VIRTIO, 0x73, VHOST_VDPA_CONFIG_SIZE);
/** vhost-vdpa: struct vhost_vdpa_config + buf. */
export const VHOST_VDPA_SET_CONFIG = iow(VHOST_VIRTIO, 0x74, VHOST_VDPA_CONFIG_SIZE);
/** vhost-vdpa: struct vhost_vring_state {index, enable}. */
export const VHOST_VDPA_SET_VRING_ENABLE = iow(VHOST_VIRTIO, 0x75, VHOST_VRING_STATE_SIZE);
/** vhost-vdpa: largest ring size (u16). */
export const VHOST_VDPA_GET_VRING_NUM = ior(VHOST_VIRTIO, 0x76, U16);
/** vhost-vdpa: eventfd for config-change interrupts (int). */
export const VHOST_VDPA_SET_CONFIG_CALL = iow(VHOST_VIRTIO, 0x77, INT);
/** vhost-vdpa: struct vhost_vdpa_iova_range. */
export const VHOST_VDPA_GET_IOVA_RANGE = ior(VHOST_VIRTIO, 0x78, VHOST_VDPA_IOVA_RANGE_SIZE);
/** vhost-vdpa: config space size (u32). */
export const VHOST_VDPA_GET_CONFIG_SIZE = ior(VHOST_VIRTIO, 0x79, U32);
/** vhost-vdpa: number of address spaces (unsigned int). */
export const VHOST_VDPA_GET_AS_NUM = ior(VHOST_VIRTIO, 0x7a, U32);
/** vhost-vdpa: struct vhost_vring_state {index in, group out}. */
export const VHOST_VDPA_GET_VRING_GROUP = iowr(VHOST_VIRTIO, 0x7b, VHOST_VRING_STATE_SIZE);
/** vhost-vdpa: struct vhost_vring_state {group, asid}. */
export const VHOST_VDPA_SET_GROUP_ASID = iow(VHOST_VIRTIO, 0x7c, VHOST_VRING_STATE_SIZE);
/** vhost-vdpa: stop the device keeping its state (needs VHOST_BACKEND_F_SUSPEND). */
export const VHOST_VDPA_SUSPEND = io(VHOST_VIRTIO, 0x7d);
/** vhost-vdpa: number of virtqueues (u32). */
export const VHOST_VDPA_GET_VQS_COUNT = ior(VHOST_VIRTIO, 0x80, U32);
/** vhost-vdpa: number of virtqueue groups (u32). */
export const VHOST_VDPA_GET_GROUP_NUM = ior(VHOST_VIRTIO, 0x81, U32);

/** Every ioctl above by its C name (for diagnostics and the header check). */
export const VHOST_IOCTLS: Readonly<Record<string, number>> = Object.freeze({
  VHOST_GET_FEATURES, VHOST_SET_FEATURES, VHOST_SET_OWNER, VHOST_RESET_OWNER, VHOST_SET_MEM_TABLE,
  VHOST_SET_LOG_BASE, VHOST_SET_LOG_FD, VHOST_SET_VRING_NUM, VHOST_SET_VRING_ADDR, VHOST_SET_VRING_BASE,
  VHOST_GET_VRING_BASE, VHOST_SET_VRING_ENDIAN, VHOST_GET_VRING_ENDIAN, VHOST_SET_VRING_KICK,
  VHOST_SET_VRING_CALL, VHOST_SET_VRING_ERR, VHOST_SET_VRING_BUSYLOOP_TIMEOUT, VHOST_GET_VRING_BUSYLOOP_TIMEOUT,
  VHOST_SET_BACKEND_FEATURES, VHOST_GET_BACKEND_FEATURES, VHOST_NET_SET_BACKEND, VHOST_SCSI_SET_ENDPOINT,
  VHOST_SCSI_CLEAR_ENDPOINT, VHOST_SCSI_GET_ABI_VERSION, VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING,
  VHOST_VDPA_GET_DEVICE_ID, VHOST_VDPA_GET_STATUS, VHOST_VDPA_SET_STATUS, VHOST_VDPA_GET_CONFIG,
  VHOST_VDPA_SET_CONFIG, VHOST_VDPA_SET_VRING_ENABLE, VHOST_VDPA_GET_VRING_NUM, VHOST_VDPA_SET_CONFIG_CALL,
  VHOST_VDPA_GET_IOVA_RANGE, VHOST_VDPA_GET_CONFIG_SIZE, VHOST_VDPA_GET_AS_NUM, VHOST_VDPA_GET_VRING_GROUP,
  VHOST_VDPA_SET_GROUP_ASID, VHOST_VDPA_SUSPEND, VHOST_VDPA_GET_VQS_COUNT, VHOST_VDPA_GET_GROUP_NUM,
});

/** Name of a vhost ioctl number, or its hex form. */
export function vhostIoctlName(request: number): string {
  for (const [name, value] of Object.entries(VHOST_IOCTLS)) if (value === request) return name;
  return `0x${request.toString(16)}`;
}

// ---------------------------------------------------------------------------------------------
// Constants of linux/vhost_types.h.

/** vhost_vring_addr.flags bit: log used-ring writes. */
export const VHOST_VRING_F_LOG = 0;
/** IOTLB permission: read only. */
export const VHOST_ACCESS_RO = 0x1;
/** IOTLB permission: write only. */
export const VHOST_ACCESS_WO = 0x2;
/** IOTLB permission: read and write. */
export const VHOST_ACCESS_RW = 0x3;
/** IOTLB message types. */
export const VHOST_IOTLB_MISS = 1;
/** Adds a mapping. */
export const VHOST_IOTLB_UPDATE = 2;
/** Removes mappings in a range. */
export const VHOST_IOTLB_INVALIDATE = 3;
/** Reported by the kernel on a permission fault. */
export const VHOST_IOTLB_ACCESS_FAIL = 4;
/** Starts a batch of updates applied at BATCH_END. */
export const VHOST_IOTLB_BATCH_BEGIN = 5;
/** Ends a batch. */
export const VHOST_IOTLB_BATCH_END = 6;
/** struct vhost_msg type. */
export const VHOST_IOTLB_MSG = 0x1;
/** struct vhost_msg_v2 type. */
export const VHOST_IOTLB_MSG_V2 = 0x2;
/** Dirty log granule. */
export const VHOST_PAGE_SIZE = 0x1000;
/** Feature bit: log all writes. */
export const VHOST_F_LOG_ALL = 26;
/** vhost-net feature bit: the kernel adds the virtio-net header itself. */
export const VHOST_NET_F_VIRTIO_NET_HDR = 27;
/** Backend feature bit: vhost_msg_v2 IOTLB messages. */
export const VHOST_BACKEND_F_IOTLB_MSG_V2 = 0x1;
/** Backend feature bit: BATCH_BEGIN/END. */
export const VHOST_BACKEND_F_IOTLB_BATCH = 0x2;
/** Backend feature bit: per-address-space IOTLBs (asid). */
export const VHOST_BACKEND_F_IOTLB_ASID = 0x3;
/** Backend feature bit: VHOST_VDPA_SUSPEND. */
export const VHOST_BACKEND_F_SUSPEND = 0x4;

// ---------------------------------------------------------------------------------------------
// Wire struct encoders. Each writes into a caller-owned buffer (preallocated per device) and
// returns the bytes to pass to ioctl/write.

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}
function need(buf: Uint8Array, size: number, what: string): void {
  if (buf.byteLength < size) throw new RangeError(`${what}: buffer of ${buf.byteLength} bytes, needs ${size}`);
}
function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${what} ${v} is not a u32`);
  return v;
}
function u64(v: bigint, what: string): bigint {
  if (v < 0n || v > 0xffffffffffffffffn) throw new RangeError(`${what} ${v} is not a u64`);
  return v;
}

/** struct vhost_vring_state {index, num}. */
export function encodeVringState(buf: Uint8Array, index: number, num: number): Uint8Array {
  need(buf, VHOST_VRING_STATE_SIZE, 'vhost_vring_state');
  const v = view(buf);
  v.setUint32(0, u32(index, 'vring index'), true);
  v.setUint32(4, u32(num, 'vring num'), true);
  return buf.subarray(0, VHOST_VRING_STATE_SIZE);
}
/** Reads vhost_vring_state.num back (after GET_VRING_BASE / GET_VRING_GROUP). */
export function decodeVringStateNum(buf: Uint8Array): number {
  return view(buf).getUint32(4, true);
}

/** struct vhost_vring_file {index, fd}; fd -1 unbinds. */
export function encodeVringFile(buf: Uint8Array, index: number, fd: number): Uint8Array {
  need(buf, VHOST_VRING_FILE_SIZE, 'vhost_vring_file');
  if (!Number.isInteger(fd) || fd < -1 || fd > 0x7fffffff) throw new RangeError(`fd ${fd} is not a file descriptor or -1`);
  const v = view(buf);
  v.setUint32(0, u32(index, 'vring index'), true);
  v.setInt32(4, fd, true);
  return buf.subarray(0, VHOST_VRING_FILE_SIZE);
}

/** Fields of struct vhost_vring_addr (addresses are userspace addresses or IOVAs). */
export interface VhostVringAddr {
  /** Vring index. */
  readonly index: number;
  /** `1 << VHOST_VRING_F_LOG` or 0. */
  readonly flags: number;
  /** Descriptor table. */
  readonly descUserAddr: bigint;
  /** Used ring. */
  readonly usedUserAddr: bigint;
  /** Available ring. */
  readonly availUserAddr: bigint;
  /** Guest physical address of the used ring, for dirty logging. */
  readonly logGuestAddr: bigint;
}
/** struct vhost_vring_addr. */
export function encodeVringAddr(buf: Uint8Array, a: VhostVringAddr): Uint8Array {
  need(buf, VHOST_VRING_ADDR_SIZE, 'vhost_vring_addr');
  const v = view(buf);
  v.setUint32(0, u32(a.index, 'vring index'), true);
  v.setUint32(4, u32(a.flags, 'vring flags'), true);
  v.setBigUint64(8, u64(a.descUserAddr, 'desc_user_addr'), true);
  v.setBigUint64(16, u64(a.usedUserAddr, 'used_user_addr'), true);
  v.setBigUint64(24, u64(a.availUserAddr, 'avail_user_addr'), true);
  v.setBigUint64(32, u64(a.logGuestAddr, 'log_guest_addr'), true);
  return buf.subarray(0, VHOST_VRING_ADDR_SIZE);
}

/** One struct vhost_memory_region. */
export interface VhostMemRegion {
  /** Guest physical address. */
  readonly guestPhysAddr: bigint;
  /** Size in bytes. */
  readonly memorySize: bigint;
  /** Address of the region in the calling process. */
  readonly userAddr: bigint;
}
/** Bytes needed for a struct vhost_memory with `n` regions. */
export const vhostMemorySize = (n: number): number => VHOST_MEMORY_SIZE + n * VHOST_MEMORY_REGION_SIZE;
/** struct vhost_memory {nregions, padding, regions[]}. */
export function encodeMemory(buf: Uint8Array, regions: readonly VhostMemRegion[]): Uint8Array {
  const size = vhostMemorySize(regions.length);
  need(buf, size, 'vhost_memory');
  const v = view(buf);
  v.setUint32(0, regions.length, true);
  v.setUint32(4, 0, true);
  regions.forEach((r, i) => {
    const o = VHOST_MEMORY_SIZE + i * VHOST_MEMORY_REGION_SIZE;
    v.setBigUint64(o, u64(r.guestPhysAddr, 'guest_phys_addr'), true);
    v.setBigUint64(o + 8, u64(r.memorySize, 'memory_size'), true);
    v.setBigUint64(o + 16, u64(r.userAddr, 'userspace_addr'), true);
    v.setBigUint64(o + 24, 0n, true);
  });
  return buf.subarray(0, size);
}

/** Fields of struct vhost_iotlb_msg. */
export interface VhostIotlbMsg {
  /** I/O virtual address. */
  readonly iova: bigint;
  /** Length in bytes. */
  readonly size: bigint;
  /** Address in the calling process (UPDATE only). */
  readonly uaddr: bigint;
  /** VHOST_ACCESS_*. */
  readonly perm: number;
  /** VHOST_IOTLB_*. */
  readonly type: number;
}
/** struct vhost_msg_v2 {type = VHOST_IOTLB_MSG_V2, asid, iotlb}, zero-padded to 72 bytes. */
export function encodeMsgV2(buf: Uint8Array, asid: number, m: VhostIotlbMsg): Uint8Array {
  need(buf, VHOST_MSG_V2_SIZE, 'vhost_msg_v2');
  const out = buf.subarray(0, VHOST_MSG_V2_SIZE);
  out.fill(0);
  const v = view(out);
  v.setUint32(0, VHOST_IOTLB_MSG_V2, true);
  v.setUint32(4, u32(asid, 'asid'), true);
  v.setBigUint64(8, u64(m.iova, 'iova'), true);
  v.setBigUint64(16, u64(m.size, 'size'), true);
  v.setBigUint64(24, u64(m.uaddr, 'uaddr'), true);
  v.setUint8(32, m.perm & 0xff);
  v.setUint8(33, m.type & 0xff);
  return out;
}

/** struct vhost_vdpa_config {off, len} followed by `data` (SET) or room for `len` bytes (GET). */
export function encodeVdpaConfig(buf: Uint8Array, off: number, len: number, data?: Uint8Array): Uint8Array {
  need(buf, VHOST_VDPA_CONFIG_SIZE + len, 'vhost_vdpa_config');
  const v = view(buf);
  v.setUint32(0, u32(off, 'config offset'), true);
  v.setUint32(4, u32(len, 'config length'), true);
  const out = buf.subarray(0, VHOST_VDPA_CONFIG_SIZE + len);
  if (data) out.set(data.subarray(0, len), VHOST_VDPA_CONFIG_SIZE);
  else out.fill(0, VHOST_VDPA_CONFIG_SIZE);
  return out;
}

/** struct vhost_vdpa_iova_range read back. */
export function decodeIovaRange(buf: Uint8Array): { first: bigint; last: bigint } {
  const v = view(buf);
  return { first: v.getBigUint64(0, true), last: v.getBigUint64(8, true) };
}
