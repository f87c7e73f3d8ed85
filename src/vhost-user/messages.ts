/**
 * Typed payloads of every vhost-user message, and the discriminated unions the codec produces.
 *
 * Conventions: u64 fields are `bigint`, u32/u16/u8 fields are `number`. File descriptors are plain
 * integers owned by whoever received them; the codec never opens or closes them.
 * @module
 */
import type { BackendReq, DeviceStateDirection, DeviceStatePhase, FrontendReq, IotlbType } from './constants.js';

// ---------------------------------------------------------------------------------------------
// Wire sizes (bytes) of the payload structs. Fixed by the C layout QEMU sends (natural alignment).

/** A single u64 payload. */
export const U64_SIZE = 8;
/** `struct vhost_vring_state` {index u32, num u32}. */
export const VRING_STATE_SIZE = 8;
/** `struct vhost_vring_addr` {index, flags u32; desc, used, avail, log u64}. */
export const VRING_ADDR_SIZE = 40;
/** Memory region description {guest_phys_addr, memory_size, userspace_addr, mmap_offset u64}. */
export const MEMORY_REGION_SIZE = 32;
/** Memory region description with XEN_MMAP negotiated (+ xen_mmap_flags u32, domid u32). */
export const XEN_MEMORY_REGION_SIZE = 40;
/** Header of the multiple-regions description {nregions u32, padding u32}. */
export const MEMORY_HEADER_SIZE = 8;
/** Padding preceding the region in the single-region description (ADD_MEM_REG / REM_MEM_REG). */
export const SINGLE_MEM_REGION_PADDING = 8;
/** Log description {mmap_size, mmap_offset u64} (SET_LOG_BASE). */
export const LOG_SIZE = 16;
/** `struct vhost_iotlb_msg` {iova, size, uaddr u64; perm u8; type u8} padded to 8-byte alignment. */
export const IOTLB_MSG_SIZE = 32;
/** Config space header {offset, size, flags u32}; followed by `size` bytes. */
export const CONFIG_HEADER_SIZE = 12;
/** Vring area description {u64, size, offset u64}. */
export const VRING_AREA_SIZE = 24;
/** Inflight description {mmap_size, mmap_offset u64; num_queues, queue_size u16}, padded to 24. */
export const INFLIGHT_SIZE = 24;
/** VhostUserShared: a 16-byte UUID. */
export const SHARED_OBJECT_SIZE = 16;
/** Device state transfer parameters {direction u32, phase u32}. */
export const DEVICE_STATE_TRANSFER_SIZE = 8;
/**
 * VhostUserCryptoSession as sent by QEMU >= 8.0: op_code u64, a 1056-byte union (sym or asym session
 * setup data and keys), session_id i64.
 */
export const CRYPTO_SESSION_SIZE = 1072;
/** Pre-8.0 QEMU / DPDK layout: session_id i64, then 624 bytes of sym session setup data and keys. */
export const CRYPTO_SESSION_LEGACY_SIZE = 632;
/** Size of the opaque setup-data union inside the current crypto session layout. */
export const CRYPTO_SESSION_BODY_SIZE = 1056;
/** Size of the opaque setup data inside the legacy crypto session layout. */
export const CRYPTO_SESSION_LEGACY_BODY_SIZE = 624;
/** VhostUserShMemConfig {nregions u32, padding u32, memory_sizes u64[256]} (GET_SHMEM_CONFIG reply). */
export const SHMEM_CONFIG_SIZE = 8 + 256 * 8;
/** VhostUserMMap {shmid u8, padding u8[7], fd_offset, shm_offset, len, flags u64} (SHMEM_MAP / SHMEM_UNMAP). */
export const MMAP_SIZE = 40;

// ---------------------------------------------------------------------------------------------
// Payload structs.

/** Memory region description: one shared-memory area of the guest. */
export interface MemoryRegion {
  /** Guest physical address of the region. */
  guestPhysAddr: bigint;
  /** Size of the region in bytes. */
  memorySize: bigint;
  /** Front-end user (virtual) address of the region; ring addresses are expressed in this space. */
  userAddr: bigint;
  /** Offset of the region in the fd passed with it. */
  mmapOffset: bigint;
}

/** Memory region description when `ProtocolFeature.XEN_MMAP` is negotiated. */
export interface XenMemoryRegion extends MemoryRegion {
  /** `VHOST_USER_XEN_MMAP_FLAG_*` bits. */
  xenMmapFlags: number;
  /** Xen domain id. */
  domid: number;
}

/** Either region layout, depending on `XEN_MMAP`. */
export type AnyMemoryRegion = MemoryRegion | XenMemoryRegion;

/** A memory region together with the fd it is mapped from. */
export type MemoryRegionWithFd = AnyMemoryRegion & {
  /** The region's memory fd, received with the message; owned by the receiver, who must close it. */
  fd: number;
};

/** Multiple memory regions description (SET_MEM_TABLE); `nregions` is `regions.length`. */
export interface VhostUserMemory {
  /** The regions, in wire order. */
  regions: AnyMemoryRegion[];
}

/** Single memory region description (ADD_MEM_REG / REM_MEM_REG); the padding is implicit. */
export interface SingleMemRegion {
  /** The region to add or remove (its fd, for ADD_MEM_REG, travels beside it). */
  region: AnyMemoryRegion;
}

/** Vring state description. */
export interface VringState {
  /** Vring index. */
  index: number;
  /** Request-specific 32-bit value (ring size, base, enable flag...). */
  num: number;
}

/** Vring address description (`struct vhost_vring_addr`). */
export interface VringAddr {
  /** Vring index. */
  index: number;
  /** `1 << VHOST_VRING_F_LOG` or 0. */
  flags: number;
  /** Descriptor table (split) / descriptor ring (packed) address, front-end user address or IOVA. */
  descUserAddr: bigint;
  /** Used ring / device event suppression area address. */
  usedUserAddr: bigint;
  /** Available ring / driver event suppression area address. */
  availUserAddr: bigint;
  /** Guest physical address for logging used-ring writes. */
  logGuestAddr: bigint;
}

/** Log description (SET_LOG_BASE). */
export interface Log {
  /** Size of the log area. */
  mmapSize: bigint;
  /** Offset of the log area in the supplied fd. */
  mmapOffset: bigint;
}

/** Virtio device config space access (GET_CONFIG / SET_CONFIG); wire `size` is `data.length`. */
export interface Config {
  /** Offset into the device config space. */
  offset: number;
  /** `VHOST_SET_CONFIG_TYPE_*`. Not validated by the codec (rust-vmm uses different values). */
  flags: number;
  /** Config bytes (a copy; safe to keep). */
  data: Uint8Array;
}

/** `struct vhost_iotlb_msg`. */
export interface IotlbMsg {
  /** I/O virtual address. */
  iova: bigint;
  /** Size of the range. */
  size: bigint;
  /** Front-end user address (updates). */
  userAddr: bigint;
  /** `VHOST_ACCESS_*`. */
  perm: number;
  /** Message type. */
  type: IotlbType;
}

/** Vring area description (BACKEND_VRING_HOST_NOTIFIER_MSG); the u64 carries index and NOFD bit. */
export interface VringArea {
  /** Vring index (bits 0-7 of the u64 field). */
  index: number;
  /** Size of the mmap area. */
  size: bigint;
  /** Offset of the area in the supplied fd. */
  offset: bigint;
}

/** Inflight description (GET_INFLIGHT_FD / SET_INFLIGHT_FD). */
export interface Inflight {
  /** Size of the inflight tracking area. */
  mmapSize: bigint;
  /** Offset of the area in the supplied fd. */
  mmapOffset: bigint;
  /** Number of virtqueues (u16). */
  numQueues: number;
  /** Size of each virtqueue (u16). */
  queueSize: number;
}

/**
 * Crypto session description (CREATE_CRYPTO_SESSION). The spec does not define the layout; QEMU has
 * used two. The setup data contains front-end pointers and is kept opaque.
 */
export interface CryptoSession {
  /** Which layout was on the wire. */
  layout: 'current' | 'legacy';
  /** `op_code` (current layout only; 0 for legacy). */
  opCode: bigint;
  /** Session id: >= 0 on success, negative on failure (signed i64). */
  sessionId: bigint;
  /** Opaque setup data union (1056 bytes current, 624 bytes legacy), copied. */
  body: Uint8Array;
}

/** VhostUserShared: a 16-byte UUID. */
export interface SharedObject {
  /** UUID bytes as on the wire (first three components big-endian). */
  uuid: Uint8Array;
}

/**
 * VhostUserShMemConfig (GET_SHMEM_CONFIG reply): the sizes of the device's VIRTIO shared memory
 * regions, indexed by shmid. On the wire the array always has 256 entries; entries from `nregions`
 * on are zero. `memorySizes.length` is the wire `nregions`.
 */
export interface ShmemConfig {
  /** Size in bytes of shared memory region i (0 = no such region). At most 256 entries. */
  memorySizes: bigint[];
}

/** VhostUserMMap (BACKEND_SHMEM_MAP / SHMEM_UNMAP): a range of a VIRTIO shared memory region. */
export interface ShmemMapping {
  /** Shared memory region id. */
  shmid: number;
  /** Offset in the fd to map from (SHMEM_MAP; 0 and ignored for SHMEM_UNMAP). */
  fdOffset: bigint;
  /** Offset inside the shared memory region. */
  shmOffset: bigint;
  /** Length of the range in bytes (non-zero). */
  len: bigint;
  /** `VHOST_USER_MMAP_FLAG_*` bits. */
  flags: bigint;
}

/** Device state transfer parameters (SET_DEVICE_STATE_FD). */
export interface DeviceStateTransfer {
  /** Save (back-end -> front-end) or load. */
  direction: DeviceStateDirection;
  /** Migration phase. */
  phase: DeviceStatePhase;
}

// ---------------------------------------------------------------------------------------------
// Front-end requests.

/**
 * `{ request: R } & T` distributed over each member of the enum union `R`, so that `Extract` and
 * `switch` narrowing work per request id rather than per group.
 */
export type PerRequest<R, T = unknown> = R extends unknown
  ? {
      /** The request id (the discriminant). */
      request: R;
    } & T
  : never;

/** Front-end requests whose payload is empty. */
export type FrontendEmptyReq =
  | FrontendReq.GET_FEATURES
  | FrontendReq.SET_OWNER
  | FrontendReq.RESET_OWNER
  | FrontendReq.GET_PROTOCOL_FEATURES
  | FrontendReq.GET_QUEUE_NUM
  | FrontendReq.POSTCOPY_ADVISE
  | FrontendReq.POSTCOPY_LISTEN
  | FrontendReq.POSTCOPY_END
  | FrontendReq.RESET_DEVICE
  | FrontendReq.GET_MAX_MEM_SLOTS
  | FrontendReq.GET_STATUS
  | FrontendReq.CHECK_DEVICE_STATE
  | FrontendReq.GET_SHMEM_CONFIG;

/** Front-end requests carrying a vring state description. */
export type FrontendVringStateReq =
  | FrontendReq.SET_VRING_NUM
  | FrontendReq.SET_VRING_BASE
  | FrontendReq.GET_VRING_BASE
  | FrontendReq.VRING_KICK;

/** Front-end requests carrying an fd-or-NOFD u64 (index in bits 0-7). */
export type FrontendVringFdReq = FrontendReq.SET_VRING_KICK | FrontendReq.SET_VRING_CALL | FrontendReq.SET_VRING_ERR;

/** Front-end requests carrying exactly one fd and no payload. */
export type FrontendFdOnlyReq = FrontendReq.SET_LOG_FD | FrontendReq.SET_BACKEND_REQ_FD | FrontendReq.GPU_SET_SOCKET;

/** A request from the front-end to the back-end; discriminated on `request`. */
export type FrontendRequest =
  | PerRequest<FrontendEmptyReq>
  | {
      request: FrontendReq.SET_FEATURES;
      /** Virtio feature bits acked by the driver (plus VHOST_USER_F_PROTOCOL_FEATURES). */
      features: bigint;
    }
  | {
      request: FrontendReq.SET_PROTOCOL_FEATURES;
      /** `VHOST_USER_PROTOCOL_F_*` bits the front-end enables. */
      features: bigint;
    }
  /**
   * `regions` has 1..8 entries, except while postcopy is listening, where QEMU's 8-byte zero
   * acknowledgement decodes as an empty table (see `CodecContext.postcopyListening`).
   */
  | {
      request: FrontendReq.SET_MEM_TABLE;
      /** The new table; each entry carries its own fd, owned by the receiver. */
      regions: MemoryRegionWithFd[];
    }
  | ({
      request: FrontendReq.SET_LOG_BASE;
      /** Fd of the dirty-log area to mmap; owned by the receiver. */
      fd: number;
    } & Log)
  | PerRequest<FrontendFdOnlyReq, {
      /** The fd carried by the request; owned by the receiver. */
      fd: number;
    }>
  | PerRequest<FrontendVringStateReq, VringState>
  | ({ request: FrontendReq.SET_VRING_ADDR } & VringAddr)
  /** `fd` is null when the NOFD bit was set (the back-end must poll). */
  | PerRequest<FrontendVringFdReq, {
      /** Vring index (bits 0-7 of the u64). */
      index: number;
      /** The eventfd, owned by the receiver; null with NOFD. */
      fd: number | null;
    }>
  | {
      request: FrontendReq.SET_VRING_ENABLE;
      /** Vring index. */
      index: number;
      /** True to enable the ring, false to disable it. */
      enable: boolean;
    }
  /** Only the first 6 bytes of the u64 are meaningful: the guest MAC address. */
  | {
      request: FrontendReq.SEND_RARP;
      /** The 6-byte MAC address. */
      mac: Uint8Array;
    }
  | {
      request: FrontendReq.NET_SET_MTU;
      /** MTU in bytes. */
      mtu: number;
    }
  | ({ request: FrontendReq.IOTLB_MSG } & IotlbMsg)
  | {
      request: FrontendReq.SET_VRING_ENDIAN;
      /** Vring index. */
      index: number;
      /** True for a big-endian legacy ring. */
      bigEndian: boolean;
    }
  | PerRequest<FrontendReq.GET_CONFIG | FrontendReq.SET_CONFIG, Config>
  | ({ request: FrontendReq.CREATE_CRYPTO_SESSION } & CryptoSession)
  | {
      request: FrontendReq.CLOSE_CRYPTO_SESSION;
      /** Id returned by CREATE_CRYPTO_SESSION. */
      sessionId: bigint;
    }
  | ({ request: FrontendReq.GET_INFLIGHT_FD } & Inflight)
  | ({
      request: FrontendReq.SET_INFLIGHT_FD;
      /** Fd of the inflight area to mmap; owned by the receiver. */
      fd: number;
    } & Inflight)
  | {
      request: FrontendReq.ADD_MEM_REG;
      /** The region and its fd (owned by the receiver). */
      region: MemoryRegionWithFd;
    }
  /** The spec tolerates one (useless) fd here; it is surfaced so the caller can close it. */
  | {
      request: FrontendReq.REM_MEM_REG;
      /** The region to remove, matched on guest address, size and user address. */
      region: AnyMemoryRegion;
      /** A stray fd sent with the request, or null; owned (and to be closed) by the receiver. */
      fd: number | null;
    }
  | {
      request: FrontendReq.SET_STATUS;
      /** The virtio device status byte (`VIRTIO_CONFIG_S_*`). */
      status: number;
    }
  | ({ request: FrontendReq.GET_SHARED_OBJECT } & SharedObject)
  | ({
      request: FrontendReq.SET_DEVICE_STATE_FD;
      /** Pipe end to read from (LOAD) or write to (SAVE); owned by the receiver. */
      fd: number;
    } & DeviceStateTransfer);

/** The member of `FrontendRequest` for request id `R`. */
export type FrontendRequestOf<R extends FrontendReq> = Extract<FrontendRequest, { request: R }>;

// ---------------------------------------------------------------------------------------------
// Front-end replies (sent by the back-end, REPLY flag set).

/** Requests whose reply is a u64 value with request-specific meaning. */
export type FrontendU64ReplyReq =
  | FrontendReq.GET_FEATURES
  | FrontendReq.GET_PROTOCOL_FEATURES
  | FrontendReq.GET_QUEUE_NUM
  | FrontendReq.GET_MAX_MEM_SLOTS
  | FrontendReq.CHECK_DEVICE_STATE
  | FrontendReq.POSTCOPY_END;

/** Requests with a reply body of their own (not a plain REPLY_ACK). */
export type FrontendBodyReplyReq =
  | FrontendU64ReplyReq
  | FrontendReq.GET_VRING_BASE
  | FrontendReq.GET_CONFIG
  | FrontendReq.GET_INFLIGHT_FD
  | FrontendReq.GET_STATUS
  | FrontendReq.SET_DEVICE_STATE_FD
  | FrontendReq.GET_SHARED_OBJECT
  | FrontendReq.CREATE_CRYPTO_SESSION
  | FrontendReq.POSTCOPY_ADVISE
  | FrontendReq.SET_MEM_TABLE
  | FrontendReq.ADD_MEM_REG
  | FrontendReq.SET_LOG_BASE
  | FrontendReq.GET_SHMEM_CONFIG;

/** Requests whose only possible reply is a REPLY_ACK (u64: 0 success, non-zero failure). */
export type FrontendAckOnlyReq = Exclude<FrontendReq, FrontendBodyReplyReq>;

/** Reply to a request, discriminated on `request` (and on `kind` where a request has two forms). */
export type FrontendReply =
  | PerRequest<FrontendU64ReplyReq, {
      /** The request-specific u64 (feature bits, queue count, slot count, result). */
      value: bigint;
    }>
  | ({ request: FrontendReq.GET_VRING_BASE } & VringState)
  /** `config` is null when the back-end signalled an error with an empty payload. */
  | {
      request: FrontendReq.GET_CONFIG;
      /** The config bytes read, or null on error. */
      config: Config | null;
    }
  /** `fd` is null when the back-end returned `mmapSize == 0` (no inflight tracking). */
  | ({
      request: FrontendReq.GET_INFLIGHT_FD;
      /** Fd of the inflight area, owned by the receiver; null when not provided. */
      fd: number | null;
    } & Inflight)
  /** The u64 wire value, range-checked to a u8 device status. */
  | {
      request: FrontendReq.GET_STATUS;
      /** The virtio device status byte. */
      status: number;
    }
  /** Bits 0-7 of `value`: error code; bit 8: NOFD. `fd` is the back-end's channel end, if any. */
  | {
      request: FrontendReq.SET_DEVICE_STATE_FD;
      /** Error code in bits 0-7 (0 = success), NOFD in bit 8. */
      value: bigint;
      /** The back-end's own pipe end to use instead, owned by the receiver; null with NOFD. */
      fd: number | null;
    }
  /** `value` 0 with an fd on success; non-zero and no fd on failure. */
  | {
      request: FrontendReq.GET_SHARED_OBJECT;
      /** 0 on success. */
      value: bigint;
      /** The object's fd on success, owned by the receiver; null on failure. */
      fd: number | null;
    }
  | ({ request: FrontendReq.CREATE_CRYPTO_SESSION } & CryptoSession)
  /** Payload-less reply carrying the back-end's userfaultfd. */
  | {
      request: FrontendReq.POSTCOPY_ADVISE;
      /** The back-end's userfaultfd; owned by the receiver. */
      fd: number;
    }
  /** Postcopy: the back-end's mapping bases (in `userAddr`), no fds. */
  | {
      request: FrontendReq.SET_MEM_TABLE;
      /** Postcopy form of the reply. */
      kind: 'postcopy';
      /** The table as sent, with `userAddr` replaced by the back-end's mapping base. */
      regions: AnyMemoryRegion[];
    }
  | {
      request: FrontendReq.SET_MEM_TABLE;
      /** Plain REPLY_ACK form. */
      kind: 'ack';
      /** 0 on success. */
      value: bigint;
    }
  /** Postcopy: the back-end's mapping base of the region. */
  | {
      request: FrontendReq.ADD_MEM_REG;
      /** Postcopy form of the reply. */
      kind: 'postcopy';
      /** The region as sent, with `userAddr` replaced by the back-end's mapping base. */
      region: AnyMemoryRegion;
    }
  | {
      request: FrontendReq.ADD_MEM_REG;
      /** Plain REPLY_ACK form. */
      kind: 'ack';
      /** 0 on success. */
      value: bigint;
    }
  /** With LOG_SHMFD QEMU waits for an empty reply (`value` null); REPLY_ACK gives a u64. */
  | {
      request: FrontendReq.SET_LOG_BASE;
      /** REPLY_ACK value (0 = success), or null for the empty LOG_SHMFD reply. */
      value: bigint | null;
    }
  | ({ request: FrontendReq.GET_SHMEM_CONFIG } & ShmemConfig)
  | PerRequest<FrontendAckOnlyReq, {
      /** REPLY_ACK value: 0 on success, non-zero on failure. */
      value: bigint;
    }>;

/** The reply type(s) for request id `R`. */
export type FrontendReplyOf<R extends FrontendReq> = Extract<FrontendReply, { request: R }>;

// ---------------------------------------------------------------------------------------------
// Back-end channel.

/** A request from the back-end to the front-end (back-end channel); discriminated on `request`. */
export type BackendRequest =
  | ({ request: BackendReq.IOTLB_MSG } & IotlbMsg)
  | { request: BackendReq.CONFIG_CHANGE_MSG }
  /** `fd` null when the NOFD bit was set: de-register the notifier. */
  | ({
      request: BackendReq.VRING_HOST_NOTIFIER_MSG;
      /** Fd of the notifier area to mmap, owned by the receiver; null with NOFD. */
      fd: number | null;
    } & VringArea)
  | PerRequest<BackendReq.VRING_CALL | BackendReq.VRING_ERR, VringState>
  | PerRequest<
      BackendReq.SHARED_OBJECT_ADD | BackendReq.SHARED_OBJECT_REMOVE | BackendReq.SHARED_OBJECT_LOOKUP,
      SharedObject
    >
  /** `fd` is the file to map (SHMEM_MAP); SHMEM_UNMAP carries none. */
  | ({
      request: BackendReq.SHMEM_MAP;
      /** The file to map; owned by the receiver. */
      fd: number;
    } & ShmemMapping)
  | ({ request: BackendReq.SHMEM_UNMAP } & ShmemMapping);

/** The member of `BackendRequest` for request id `R`. */
export type BackendRequestOf<R extends BackendReq> = Extract<BackendRequest, { request: R }>;

/** A reply from the front-end on the back-end channel. */
export type BackendReply =
  /** `value` 0 with an fd on success; non-zero and no fd on failure. */
  | {
      request: BackendReq.SHARED_OBJECT_LOOKUP;
      /** 0 on success. */
      value: bigint;
      /** The object's fd on success, owned by the receiver; null on failure. */
      fd: number | null;
    }
  | PerRequest<Exclude<BackendReq, BackendReq.SHARED_OBJECT_LOOKUP>, {
      /** REPLY_ACK value: 0 on success, non-zero on failure. */
      value: bigint;
    }>;

/** The reply type for back-end request id `R`. */
export type BackendReplyOf<R extends BackendReq> = Extract<BackendReply, { request: R }>;
