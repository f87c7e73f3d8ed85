/**
 * Wire constants of the vhost-user protocol (QEMU docs/interop/vhost-user.rst).
 *
 * Names follow the spec with the `VHOST_USER_` prefix dropped inside the enums; the flag and mask
 * constants keep their full spec names so they can be grepped against the spec text.
 * @module
 */
import { VHOST_USER_F_PROTOCOL_FEATURES, setBits } from '../virtio/features.js';

/** Requests sent by the front-end on the main socket (spec "Front-end message types"). */
export enum FrontendReq {
  /** Ask for the device's virtio feature bits (u64 reply, includes VHOST_USER_F_PROTOCOL_FEATURES when supported). */
  GET_FEATURES = 1,
  /** Set the virtio features the driver acked; sent again with VHOST_F_LOG_ALL to start or stop dirty logging. */
  SET_FEATURES = 2,
  /** Claim the session for this front-end; QEMU sends it once, after feature negotiation. No payload. */
  SET_OWNER = 3,
  /** Deprecated session reset; back-ends treat it like RESET_DEVICE or ignore it. */
  RESET_OWNER = 4,
  /** Replace the guest memory table; one fd per region (up to VHOST_USER_MAX_RAM_SLOTS), each to be mmapped. */
  SET_MEM_TABLE = 5,
  /** Set the dirty-log area: one fd plus size and offset (needs LOG_SHMFD). */
  SET_LOG_BASE = 6,
  /** Set an eventfd to signal after dirty-log updates. */
  SET_LOG_FD = 7,
  /** Set a ring's size (number of descriptors). */
  SET_VRING_NUM = 8,
  /** Set a ring's descriptor/avail/used addresses, in front-end user address space (or IOVA with IOMMU). */
  SET_VRING_ADDR = 9,
  /** Set the next available index (split) or the avail index and wrap counter (packed) to resume from. */
  SET_VRING_BASE = 10,
  /** Stop a ring and return its next available index; the back-end must finish or hand off in-flight work first. */
  GET_VRING_BASE = 11,
  /** Set the eventfd the driver kicks to notify new buffers; starts the ring when no NOFD bit and the ring is enabled. */
  SET_VRING_KICK = 12,
  /** Set the eventfd the back-end writes to interrupt the guest after used-ring updates. */
  SET_VRING_CALL = 13,
  /** Set the eventfd the back-end writes to report a ring error. */
  SET_VRING_ERR = 14,
  /** Ask for the back-end's protocol feature bits (only when VHOST_USER_F_PROTOCOL_FEATURES was offered). */
  GET_PROTOCOL_FEATURES = 15,
  /** Set the protocol features both sides use from now on. */
  SET_PROTOCOL_FEATURES = 16,
  /** Ask for the maximum number of queues (needs MQ). */
  GET_QUEUE_NUM = 17,
  /** Enable or disable a ring; with protocol features negotiated rings start disabled. */
  SET_VRING_ENABLE = 18,
  /** Ask a net back-end to broadcast a RARP for the given MAC after migration (needs RARP). */
  SEND_RARP = 19,
  /** Tell a net back-end the MTU (needs MTU). */
  NET_SET_MTU = 20,
  /** Hand over the socket of the back-end channel (needs BACKEND_REQ); the receiver owns the fd. */
  SET_BACKEND_REQ_FD = 21,
  /** Update or invalidate an IOTLB entry (with VIRTIO_F_IOMMU_PLATFORM). */
  IOTLB_MSG = 22,
  /** Set a legacy device's ring endianness (needs CROSS_ENDIAN). */
  SET_VRING_ENDIAN = 23,
  /** Read part of the device config space (needs CONFIG). */
  GET_CONFIG = 24,
  /** Write part of the device config space (needs CONFIG). */
  SET_CONFIG = 25,
  /** Create a virtio-crypto session (needs CRYPTO_SESSION). */
  CREATE_CRYPTO_SESSION = 26,
  /** Close a virtio-crypto session. */
  CLOSE_CRYPTO_SESSION = 27,
  /** Postcopy migration: the back-end opens a userfaultfd and returns it. */
  POSTCOPY_ADVISE = 28,
  /** Postcopy migration: the back-end starts serving faults. */
  POSTCOPY_LISTEN = 29,
  /** Postcopy migration finished; the back-end closes its userfaultfd. */
  POSTCOPY_END = 30,
  /** Ask the back-end for a shared inflight-tracking area (needs INFLIGHT_SHMFD). */
  GET_INFLIGHT_FD = 31,
  /** Give the back-end its inflight-tracking area (after a reconnect, with its previous contents). */
  SET_INFLIGHT_FD = 32,
  /** Hand a vhost-user-gpu back-end the socket of its display protocol. */
  GPU_SET_SOCKET = 33,
  /** Reset the device to its initial state, keeping the session (needs RESET_DEVICE). */
  RESET_DEVICE = 34,
  /** In-band kick for a ring with no kick fd (needs INBAND_NOTIFICATIONS). */
  VRING_KICK = 35,
  /** Ask how many memory regions the back-end supports (needs CONFIGURE_MEM_SLOTS). */
  GET_MAX_MEM_SLOTS = 36,
  /** Add one memory region with its fd (needs CONFIGURE_MEM_SLOTS). */
  ADD_MEM_REG = 37,
  /** Remove one memory region (needs CONFIGURE_MEM_SLOTS). */
  REM_MEM_REG = 38,
  /** Set the virtio device status byte (needs STATUS). */
  SET_STATUS = 39,
  /** Read the virtio device status byte (needs STATUS). */
  GET_STATUS = 40,
  /** Ask for the dma-buf fd of a shared object by UUID (needs SHARED_OBJECT). */
  GET_SHARED_OBJECT = 41,
  /** Start a device-state transfer over a pipe; the reply may carry the back-end's own fd (needs DEVICE_STATE). */
  SET_DEVICE_STATE_FD = 42,
  /** After a device-state transfer, ask whether it succeeded (needs DEVICE_STATE). */
  CHECK_DEVICE_STATE = 43,
  /** Newer than spec/vhost-user.rst: rust-vmm vhost 0.16 / QEMU's SHMEM series (vhost-user-newer.md). */
  GET_SHMEM_CONFIG = 44,
}

/** Highest front-end request id this implementation knows; ids above it are "unknown". */
export const FRONTEND_REQ_MAX = FrontendReq.GET_SHMEM_CONFIG;

/** Requests sent by the back-end on the back-end channel (spec "Back-end message types"). */
export enum BackendReq {
  /** IOTLB miss or access failure reported to the front-end. */
  IOTLB_MSG = 1,
  /** The device config space changed; the front-end re-reads it and notifies the guest. */
  CONFIG_CHANGE_MSG = 2,
  /** Offer (or withdraw, with NOFD) an mmappable area the guest can write to kick a ring directly (needs HOST_NOTIFIER). */
  VRING_HOST_NOTIFIER_MSG = 3,
  /** In-band call for a ring with no call fd (needs INBAND_NOTIFICATIONS). */
  VRING_CALL = 4,
  /** In-band error notification for a ring with no err fd (needs INBAND_NOTIFICATIONS). */
  VRING_ERR = 5,
  /** Register a shared object (UUID) exported by this back-end (needs SHARED_OBJECT). */
  SHARED_OBJECT_ADD = 6,
  /** Withdraw a shared object registration. */
  SHARED_OBJECT_REMOVE = 7,
  /** Ask the front-end for the fd of a shared object another back-end exported. */
  SHARED_OBJECT_LOOKUP = 8,
  /** Map an fd into a VIRTIO shared memory region (SHMEM; vhost-user-newer.md). */
  SHMEM_MAP = 9,
  /** Unmap a range of a VIRTIO shared memory region (SHMEM). */
  SHMEM_UNMAP = 10,
}

/** Highest back-end request id this implementation knows. */
export const BACKEND_REQ_MAX = BackendReq.SHMEM_UNMAP;

/** Bit numbers of the vhost-user protocol features (`VHOST_USER_PROTOCOL_F_*`). */
export enum ProtocolFeature {
  /** Multiple queues: GET_QUEUE_NUM is supported. */
  MQ = 0,
  /** Dirty logging into shared memory: SET_LOG_BASE carries an fd. */
  LOG_SHMFD = 1,
  /** SEND_RARP is supported. */
  RARP = 2,
  /** The NEED_REPLY header flag is honoured: requests with it get a u64 ack (0 = success). */
  REPLY_ACK = 3,
  /** NET_SET_MTU is supported. */
  MTU = 4,
  /** The back-end channel (SET_BACKEND_REQ_FD) is supported. */
  BACKEND_REQ = 5,
  /** SET_VRING_ENDIAN is supported. */
  CROSS_ENDIAN = 6,
  /** CREATE_CRYPTO_SESSION / CLOSE_CRYPTO_SESSION are supported. */
  CRYPTO_SESSION = 7,
  /** Postcopy migration (POSTCOPY_* requests) is supported. */
  PAGEFAULT = 8,
  /** GET_CONFIG / SET_CONFIG and CONFIG_CHANGE_MSG are supported. */
  CONFIG = 9,
  /** Back-end channel messages may carry fds. */
  BACKEND_SEND_FD = 10,
  /** VRING_HOST_NOTIFIER_MSG is supported. */
  HOST_NOTIFIER = 11,
  /** Inflight tracking in shared memory (GET_INFLIGHT_FD / SET_INFLIGHT_FD) is supported. */
  INFLIGHT_SHMFD = 12,
  /** RESET_DEVICE is supported. */
  RESET_DEVICE = 13,
  /** Kicks and calls may travel as messages (VRING_KICK, VRING_CALL) instead of eventfds. */
  INBAND_NOTIFICATIONS = 14,
  /** GET_MAX_MEM_SLOTS / ADD_MEM_REG / REM_MEM_REG are supported. */
  CONFIGURE_MEM_SLOTS = 15,
  /** SET_STATUS / GET_STATUS are supported. */
  STATUS = 16,
  /** Memory regions carry Xen mmap flags and a domain id (larger region layout). */
  XEN_MMAP = 17,
  /** Shared objects (GET_SHARED_OBJECT, SHARED_OBJECT_*) are supported. */
  SHARED_OBJECT = 18,
  /** Device-state transfer for migration (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE) is supported. */
  DEVICE_STATE = 19,
  /**
   * GET_VRING_BASE may stop a ring without draining it, leaving in-flight requests recorded in the
   * inflight region (needs INFLIGHT_SHMFD). Name and bit as in rust-vmm vhost 0.16; the semantics
   * are not final upstream (vhost-user-newer.md). The daemon offers it with INFLIGHT_SHMFD: when
   * negotiated, GET_VRING_BASE stops the ring without waiting for its requests in flight.
   */
  GET_VRING_BASE_INFLIGHT = 20,
  /**
   * VIRTIO shared memory regions: GET_SHMEM_CONFIG, BACKEND_SHMEM_MAP / SHMEM_UNMAP.
   * Bit number: sources disagree. We follow vhost-user-newer.md (20 = GET_VRING_BASE_INFLIGHT,
   * 21 = SHMEM, as issue 9 also assumes). QEMU's SHMEM series (v11, Jan 2026) and an earlier
   * rust-vmm `message.rs` use bit 20 for SHMEM, which collides with GET_VRING_BASE_INFLIGHT as
   * QEMU's own patch for that feature numbers it; re-check before interoperating with a SHMEM peer.
   */
  SHMEM = 21,
}

/** Mask of every protocol feature bit this implementation understands. */
export const PROTOCOL_FEATURES_KNOWN: bigint = (1n << 22n) - 1n;

/** `1n << BigInt(bit)` for a protocol feature: the form used in negotiated bitmasks. */
export function protocolFeatureMask(bit: ProtocolFeature): bigint {
  return 1n << BigInt(bit);
}

/** True when `bits` (a negotiated protocol feature bitmask) contains `feature`. */
export function hasProtocolFeature(bits: bigint, feature: ProtocolFeature): boolean {
  return ((bits >> BigInt(feature)) & 1n) === 1n;
}

/** Current protocol version, carried in the two low bits of the header flags. */
export const VHOST_USER_VERSION = 0x1;
/** Header flags bits holding the version. */
export const VHOST_USER_VERSION_MASK = 0x3;
/** Header flag set on every reply. */
export const VHOST_USER_REPLY_MASK = 0x1 << 2;
/** Header flag asking the receiver for a REPLY_ACK (needs `ProtocolFeature.REPLY_ACK`). */
export const VHOST_USER_NEED_REPLY_MASK = 0x1 << 3;
/** Every header flag bit the spec defines; the rest are reserved. */
export const VHOST_USER_FLAGS_KNOWN_MASK =
  VHOST_USER_VERSION_MASK | VHOST_USER_REPLY_MASK | VHOST_USER_NEED_REPLY_MASK;

/** Bits 0-7 of the SET_VRING_KICK/CALL/ERR payload: the vring index. */
export const VHOST_USER_VRING_IDX_MASK = 0xff;
/** Bit 8 of the SET_VRING_KICK/CALL/ERR payload: no fd in the ancillary data (poll instead). */
export const VHOST_USER_VRING_NOFD_MASK = 0x1 << 8;

/** Virtio feature bit (in GET_FEATURES) announcing protocol-feature negotiation support. */
export { VHOST_USER_F_PROTOCOL_FEATURES };

/** Maximum number of regions in one SET_MEM_TABLE message (QEMU VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_USER_MAX_RAM_SLOTS = 8;

/** Maximum size of a config-space access in GET_CONFIG/SET_CONFIG (QEMU VHOST_USER_MAX_CONFIG_SIZE). */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;

/** Maximum number of fds carried by one message (QEMU VHOST_MEMORY_BASELINE_NREGIONS / backend channel). */
export const VHOST_USER_MAX_FDS = 8;

/** `vhost_vring_addr.flags` bit: the log address is valid and used-ring writes must be logged. */
export const VHOST_VRING_F_LOG = 0;

/** IOTLB permission (`vhost_iotlb_msg.perm`): no access. */
export const VHOST_ACCESS_NONE = 0x0;
/** Read access. */
export const VHOST_ACCESS_RO = 0x1;
/** Write access. */
export const VHOST_ACCESS_WO = 0x2;
/** Read/write access. */
export const VHOST_ACCESS_RW = 0x3;

/** IOTLB message types (`vhost_iotlb_msg.type`). */
export enum IotlbType {
  /** Back-end to front-end: no translation for `iova`; the front-end answers with an UPDATE. */
  MISS = 1,
  /** Front-end to back-end: add a translation `iova` -> `userAddr` for `size` bytes with `perm`. */
  UPDATE = 2,
  /** Front-end to back-end: drop translations covering `iova`..`iova + size`. */
  INVALIDATE = 3,
  /** Back-end to front-end: an access was denied by `perm`. */
  ACCESS_FAIL = 4,
  /** Start of a batch of updates (optional hint). */
  BATCH_BEGIN = 5,
  /** End of a batch of updates. */
  BATCH_END = 6,
}

/** SET_CONFIG flags: front-end message for a writable field. */
export const VHOST_SET_CONFIG_TYPE_FRONTEND = 0;
/** SET_CONFIG flags: front-end message used for live migration (may write read-only fields). */
export const VHOST_SET_CONFIG_TYPE_MIGRATION = 1;

/** Direction of a device-state transfer (SET_DEVICE_STATE_FD). */
export enum DeviceStateDirection {
  /** Back-end state flows to the front-end (migration source). */
  SAVE = 0,
  /** Front-end state flows to the back-end (migration destination). */
  LOAD = 1,
}

/** Migration phase of a device-state transfer (SET_DEVICE_STATE_FD). */
export enum DeviceStatePhase {
  /** The guest is stopped and the device suspended. */
  STOPPED = 0,
}

/** Bit 8 of the SET_DEVICE_STATE_FD reply: no fd returned (the front-end keeps its channel). */
export const VHOST_USER_DEVICE_STATE_NOFD_MASK = 0x1 << 8;
/** Bits 0-7 of the SET_DEVICE_STATE_FD reply: 0 on success, an error otherwise. */
export const VHOST_USER_DEVICE_STATE_ERROR_MASK = 0xff;

/**
 * Inflight tracking (INFLIGHT_SHMFD): the descriptor-state layout version stored in
 * `VringInflight.version` of the shared buffer.
 */
export const INFLIGHT_VERSION = 1;

/** Xen mmap flags of a memory region (XEN_MMAP): foreign mapping. */
export const VHOST_USER_XEN_MMAP_FLAG_FOREIGN = 0x1;
/** Xen grant mapping. */
export const VHOST_USER_XEN_MMAP_FLAG_GRANT = 0x2;
/** The region must be mapped piecemeal, on demand. */
export const VHOST_USER_XEN_MMAP_FLAG_UNMAP_ON_DEMAND = 0x1 << 8;

/** Most VIRTIO shared memory regions a device can have (shmid is a u8; GET_SHMEM_CONFIG's array). */
export const VHOST_USER_MAX_SHMEM_REGIONS = 256;

/** SHMEM_MAP flags bit 0: the mapping is writable (else read-only). rust-vmm `VhostUserMMapFlags::WRITABLE`. */
export const VHOST_USER_MMAP_FLAG_WRITABLE = 0x1;
/** Every SHMEM_MAP / SHMEM_UNMAP flag bit defined; the rest are reserved and rejected. */
export const VHOST_USER_MMAP_FLAGS_KNOWN = VHOST_USER_MMAP_FLAG_WRITABLE;

/** Mask of the 15-bit free-running index in a packed-ring vring base. */
export const PACKED_VRING_IDX_MASK = 0x7fff;
/** Bit 15 of a packed-ring vring base: driver (available) ring wrap counter. */
export const PACKED_VRING_AVAIL_WRAP = 0x1 << 15;
/** Shift of the used index / used wrap counter half of a packed-ring vring base. */
export const PACKED_VRING_USED_SHIFT = 16;

/** The two indices of a packed virtqueue carried in SET_VRING_BASE / GET_VRING_BASE `num`. */
export interface PackedVringBase {
  /** Next Available Ring descriptor the back-end will process (15 bits). */
  lastAvailIdx: number;
  /** Driver ring wrap counter. */
  lastAvailWrap: boolean;
  /** Next Used Ring entry the back-end will fill (15 bits). */
  usedIdx: number;
  /** Device ring wrap counter. */
  usedWrap: boolean;
}

/** Packs packed-ring indices into the 32-bit `num` of a vring state; indices are masked to 15 bits. */
export function encodePackedVringBase(b: PackedVringBase): number {
  const lo = (b.lastAvailIdx & PACKED_VRING_IDX_MASK) | (b.lastAvailWrap ? PACKED_VRING_AVAIL_WRAP : 0);
  const hi = (b.usedIdx & PACKED_VRING_IDX_MASK) | (b.usedWrap ? PACKED_VRING_AVAIL_WRAP : 0);
  return ((hi << PACKED_VRING_USED_SHIFT) | lo) >>> 0;
}

/** Splits the 32-bit `num` of a packed-ring vring state into its indices and wrap counters. */
export function decodePackedVringBase(num: number): PackedVringBase {
  const hi = num >>> PACKED_VRING_USED_SHIFT;
  return {
    lastAvailIdx: num & PACKED_VRING_IDX_MASK,
    lastAvailWrap: (num & PACKED_VRING_AVAIL_WRAP) !== 0,
    usedIdx: hi & PACKED_VRING_IDX_MASK,
    usedWrap: (hi & PACKED_VRING_AVAIL_WRAP) !== 0,
  };
}

/**
 * Split-ring vring base: only bits 0-15 are defined, 16-31 are reserved (zero). Returns null when
 * reserved bits are set so the caller can reject the message.
 */
export function decodeSplitVringBase(num: number): number | null {
  return num >>> 16 === 0 ? num : null;
}

const FRONTEND_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(FrontendReq)
    .filter((e): e is [string, number] => typeof e[1] === 'number')
    .map(([k, v]) => [v, k]),
);
const BACKEND_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(BackendReq)
    .filter((e): e is [string, number] => typeof e[1] === 'number')
    .map(([k, v]) => [v, k]),
);

/** Which socket a request id belongs to: ids overlap between the two channels. */
export type Channel = 'frontend' | 'backend';

/**
 * Spec name of a request, e.g. `VHOST_USER_GET_FEATURES` or `VHOST_USER_BACKEND_IOTLB_MSG`;
 * `unknown(N)` for ids the spec does not define. Channel defaults to front-end.
 */
export function requestName(request: FrontendReq | BackendReq | number, channel: Channel = 'frontend'): string {
  const n = (channel === 'frontend' ? FRONTEND_NAMES : BACKEND_NAMES).get(request);
  if (n === undefined) return `unknown(${request})`;
  return channel === 'frontend' ? `VHOST_USER_${n}` : `VHOST_USER_BACKEND_${n}`;
}

const PROTOCOL_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(ProtocolFeature)
    .filter((e): e is [string, number] => typeof e[1] === 'number')
    .map(([k, v]) => [v, `VHOST_USER_PROTOCOL_F_${k}`]),
);

/** Names of the bits set in a vhost-user protocol feature word; unknown bits render as `bit N`. */
export function decodeProtocolFeatures(bits: bigint): string[] {
  return setBits(bits).map((b) => PROTOCOL_NAMES.get(b) ?? `bit ${b}`);
}
