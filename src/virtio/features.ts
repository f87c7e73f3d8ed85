/**
 * Virtio feature bits (transport and device-specific, from the VIRTIO spec chapters), with helpers
 * to render a feature word for logs and `--print-capabilities`. Independent of any transport: the
 * queue layer, vhost-user and the kernel drivers all import from here.
 * @module
 */

/**
 * vhost-user: the back-end supports GET/SET_PROTOCOL_FEATURES. A bit of the virtio feature word,
 * so it is named here; the vhost-user spec defines it.
 */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

// Transport / ring feature bits (VIRTIO "Reserved Feature Bits", linux/virtio_config.h).

/** Legacy: notify when the ring becomes empty. */
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
/** vhost: log all writes to guest memory (dirty page tracking for migration). */
export const VHOST_F_LOG_ALL = 26;
/** Legacy: the device accepts arbitrary descriptor layouts. */
export const VIRTIO_F_ANY_LAYOUT = 27;
/** Indirect descriptors (VIRTIO_F_INDIRECT_DESC in the spec). */
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
/** used_event / avail_event notification suppression (VIRTIO_F_EVENT_IDX in the spec). */
export const VIRTIO_RING_F_EVENT_IDX = 29;
/** Spec name of `VIRTIO_RING_F_INDIRECT_DESC`. */
export const VIRTIO_F_INDIRECT_DESC = VIRTIO_RING_F_INDIRECT_DESC;
/** Spec name of `VIRTIO_RING_F_EVENT_IDX`. */
export const VIRTIO_F_EVENT_IDX = VIRTIO_RING_F_EVENT_IDX;
/** VIRTIO 1.0+ compliance. */
export const VIRTIO_F_VERSION_1 = 32;
/** The device is behind an IOMMU / uses platform DMA translation. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Legacy name of `VIRTIO_F_ACCESS_PLATFORM`, used by the vhost-user spec. */
export const VIRTIO_F_IOMMU_PLATFORM = VIRTIO_F_ACCESS_PLATFORM;
/** Packed virtqueue layout. */
export const VIRTIO_F_RING_PACKED = 34;
/** Buffers are used in the order they were made available. */
export const VIRTIO_F_IN_ORDER = 35;
/** Memory ordering must follow the platform's rules (real hardware). */
export const VIRTIO_F_ORDER_PLATFORM = 36;
/** Single root I/O virtualization. */
export const VIRTIO_F_SR_IOV = 37;
/** The driver passes extra data in notifications. */
export const VIRTIO_F_NOTIFICATION_DATA = 38;
/** The driver uses device-provided notification config data. */
export const VIRTIO_F_NOTIF_CONFIG_DATA = 39;
/** Individual virtqueue reset. */
export const VIRTIO_F_RING_RESET = 40;
/** Administration virtqueues. */
export const VIRTIO_F_ADMIN_VQ = 41;
/** Device suspend via the status field. */
export const VIRTIO_F_SUSPEND = 43;

/** Bit number -> name of the transport / vhost feature bits, valid for every device type. */
export const TRANSPORT_FEATURES: ReadonlyMap<number, string> = new Map([
  [VIRTIO_F_NOTIFY_ON_EMPTY, 'VIRTIO_F_NOTIFY_ON_EMPTY'],
  [VHOST_F_LOG_ALL, 'VHOST_F_LOG_ALL'],
  [VIRTIO_F_ANY_LAYOUT, 'VIRTIO_F_ANY_LAYOUT'],
  [VIRTIO_RING_F_INDIRECT_DESC, 'VIRTIO_RING_F_INDIRECT_DESC'],
  [VIRTIO_RING_F_EVENT_IDX, 'VIRTIO_RING_F_EVENT_IDX'],
  [VHOST_USER_F_PROTOCOL_FEATURES, 'VHOST_USER_F_PROTOCOL_FEATURES'],
  [VIRTIO_F_VERSION_1, 'VIRTIO_F_VERSION_1'],
  [VIRTIO_F_ACCESS_PLATFORM, 'VIRTIO_F_ACCESS_PLATFORM'],
  [VIRTIO_F_RING_PACKED, 'VIRTIO_F_RING_PACKED'],
  [VIRTIO_F_IN_ORDER, 'VIRTIO_F_IN_ORDER'],
  [VIRTIO_F_ORDER_PLATFORM, 'VIRTIO_F_ORDER_PLATFORM'],
  [VIRTIO_F_SR_IOV, 'VIRTIO_F_SR_IOV'],
  [VIRTIO_F_NOTIFICATION_DATA, 'VIRTIO_F_NOTIFICATION_DATA'],
  [VIRTIO_F_NOTIF_CONFIG_DATA, 'VIRTIO_F_NOTIF_CONFIG_DATA'],
  [VIRTIO_F_RING_RESET, 'VIRTIO_F_RING_RESET'],
  [VIRTIO_F_ADMIN_VQ, 'VIRTIO_F_ADMIN_VQ'],
  [VIRTIO_F_SUSPEND, 'VIRTIO_F_SUSPEND'],
]);

/** virtio-blk feature bits (device-types_blk_description.tex; BARRIER and SCSI are legacy). */
export const VIRTIO_BLK_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_BLK_F_BARRIER: 0,
  VIRTIO_BLK_F_SIZE_MAX: 1,
  VIRTIO_BLK_F_SEG_MAX: 2,
  VIRTIO_BLK_F_GEOMETRY: 4,
  VIRTIO_BLK_F_RO: 5,
  VIRTIO_BLK_F_BLK_SIZE: 6,
  VIRTIO_BLK_F_SCSI: 7,
  VIRTIO_BLK_F_FLUSH: 9,
  VIRTIO_BLK_F_TOPOLOGY: 10,
  VIRTIO_BLK_F_CONFIG_WCE: 11,
  VIRTIO_BLK_F_MQ: 12,
  VIRTIO_BLK_F_DISCARD: 13,
  VIRTIO_BLK_F_WRITE_ZEROES: 14,
  VIRTIO_BLK_F_LIFETIME: 15,
  VIRTIO_BLK_F_SECURE_ERASE: 16,
  VIRTIO_BLK_F_ZONED: 17,
});

/**
 * virtio-net feature bits (device-types_net_description.tex; GSO, GUEST_RSC4/6 are legacy). Bits
 * >= 64 exist in the spec but cannot be carried by vhost-user's 64-bit GET/SET_FEATURES.
 */
export const VIRTIO_NET_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_NET_F_CSUM: 0,
  VIRTIO_NET_F_GUEST_CSUM: 1,
  VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: 2,
  VIRTIO_NET_F_MTU: 3,
  VIRTIO_NET_F_MAC: 5,
  VIRTIO_NET_F_GSO: 6,
  VIRTIO_NET_F_GUEST_TSO4: 7,
  VIRTIO_NET_F_GUEST_TSO6: 8,
  VIRTIO_NET_F_GUEST_ECN: 9,
  VIRTIO_NET_F_GUEST_UFO: 10,
  VIRTIO_NET_F_HOST_TSO4: 11,
  VIRTIO_NET_F_HOST_TSO6: 12,
  VIRTIO_NET_F_HOST_ECN: 13,
  VIRTIO_NET_F_HOST_UFO: 14,
  VIRTIO_NET_F_MRG_RXBUF: 15,
  VIRTIO_NET_F_STATUS: 16,
  VIRTIO_NET_F_CTRL_VQ: 17,
  VIRTIO_NET_F_CTRL_RX: 18,
  VIRTIO_NET_F_CTRL_VLAN: 19,
  VIRTIO_NET_F_CTRL_RX_EXTRA: 20,
  VIRTIO_NET_F_GUEST_ANNOUNCE: 21,
  VIRTIO_NET_F_MQ: 22,
  VIRTIO_NET_F_CTRL_MAC_ADDR: 23,
  VIRTIO_NET_F_GUEST_RSC4: 41,
  VIRTIO_NET_F_GUEST_RSC6: 42,
  VIRTIO_NET_F_DEVICE_STATS: 50,
  VIRTIO_NET_F_HASH_TUNNEL: 51,
  VIRTIO_NET_F_VQ_NOTF_COAL: 52,
  VIRTIO_NET_F_NOTF_COAL: 53,
  VIRTIO_NET_F_GUEST_USO4: 54,
  VIRTIO_NET_F_GUEST_USO6: 55,
  VIRTIO_NET_F_HOST_USO: 56,
  VIRTIO_NET_F_HASH_REPORT: 57,
  VIRTIO_NET_F_GUEST_HDRLEN: 59,
  VIRTIO_NET_F_RSS: 60,
  VIRTIO_NET_F_RSC_EXT: 61,
  VIRTIO_NET_F_STANDBY: 62,
  VIRTIO_NET_F_SPEED_DUPLEX: 63,
  VIRTIO_NET_F_RSS_CONTEXT: 64,
  VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO: 65,
  VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO_CSUM: 66,
  VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO: 67,
  VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO_CSUM: 68,
  VIRTIO_NET_F_OUT_NET_HEADER: 69,
  VIRTIO_NET_F_IPSEC: 70,
});

/** virtio-scsi feature bits. */
export const VIRTIO_SCSI_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_SCSI_F_INOUT: 0,
  VIRTIO_SCSI_F_HOTPLUG: 1,
  VIRTIO_SCSI_F_CHANGE: 2,
  VIRTIO_SCSI_F_T10_PI: 3,
});

/** virtio-fs feature bits. */
export const VIRTIO_FS_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_FS_F_NOTIFICATION: 0,
});

/** virtio-vsock feature bits. */
export const VIRTIO_VSOCK_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_VSOCK_F_STREAM: 0,
  VIRTIO_VSOCK_F_SEQPACKET: 1,
  VIRTIO_VSOCK_F_NO_IMPLIED_STREAM: 2,
});

/** virtio-console feature bits. */
export const VIRTIO_CONSOLE_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_CONSOLE_F_SIZE: 0,
  VIRTIO_CONSOLE_F_MULTIPORT: 1,
  VIRTIO_CONSOLE_F_EMERG_WRITE: 2,
});

/** virtio-rng (entropy) defines no feature bits. */
export const VIRTIO_RNG_FEATURES: Readonly<Record<string, number>> = Object.freeze({});

/** virtio-gpio feature bits. */
export const VIRTIO_GPIO_FEATURES: Readonly<Record<string, number>> = Object.freeze({
  VIRTIO_GPIO_F_IRQ: 0,
});

/** virtio-input defines no feature bits. */
export const VIRTIO_INPUT_FEATURES: Readonly<Record<string, number>> = Object.freeze({});

/** Device type name (as used in `--print-capabilities` "type") -> its feature table. */
export const DEVICE_FEATURES: Readonly<Record<string, Readonly<Record<string, number>>>> = Object.freeze({
  blk: VIRTIO_BLK_FEATURES,
  'block': VIRTIO_BLK_FEATURES,
  net: VIRTIO_NET_FEATURES,
  scsi: VIRTIO_SCSI_FEATURES,
  fs: VIRTIO_FS_FEATURES,
  vsock: VIRTIO_VSOCK_FEATURES,
  console: VIRTIO_CONSOLE_FEATURES,
  rng: VIRTIO_RNG_FEATURES,
  entropy: VIRTIO_RNG_FEATURES,
  gpio: VIRTIO_GPIO_FEATURES,
  input: VIRTIO_INPUT_FEATURES,
});

function invert(table: Readonly<Record<string, number>>): Map<number, string> {
  const m = new Map<number, string>();
  for (const [name, bit] of Object.entries(table)) m.set(bit, name);
  return m;
}

const DEVICE_NAMES: ReadonlyMap<string, ReadonlyMap<number, string>> = new Map(
  Object.entries(DEVICE_FEATURES).map(([k, t]) => [k, invert(t)]),
);

/** @internal Bit numbers set in `bits`, lowest first. */
export function setBits(bits: bigint): number[] {
  if (bits < 0n) throw new RangeError('feature bits must be non-negative');
  const out: number[] = [];
  for (let i = 0; bits >> BigInt(i) !== 0n; i++) if (((bits >> BigInt(i)) & 1n) === 1n) out.push(i);
  return out;
}

/**
 * Names of the bits set in a virtio feature word, lowest bit first. Bits 0-23 and 50+ are device
 * specific and only named when `deviceType` (e.g. 'blk', 'net') is given; transport bits always
 * are. Unknown bits render as `bit N`.
 */
export function decodeFeatures(bits: bigint, deviceType?: string): string[] {
  const dev = deviceType === undefined ? undefined : DEVICE_NAMES.get(deviceType);
  if (deviceType !== undefined && dev === undefined) throw new RangeError(`unknown device type '${deviceType}'`);
  return setBits(bits).map((b) => TRANSPORT_FEATURES.get(b) ?? dev?.get(b) ?? `bit ${b}`);
}

/** A feature word as `0x…` hex plus its decoded names. */
export function formatFeatures(bits: bigint, deviceType?: string): {
  /** The word as 16 hex digits with a `0x` prefix. */
  hex: string;
  /** The name of each set bit, lowest bit first; unknown bits as `bit N`. Throws RangeError for an unknown `deviceType`. */
  names: string[];
} {
  return { hex: `0x${bits.toString(16).padStart(16, '0')}`, names: decodeFeatures(bits, deviceType) };
}

/** `1n << BigInt(bit)`: mask of one feature bit. */
export function featureMask(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** True when feature `bit` is set in `bits`. */
export function hasFeature(bits: bigint, bit: number): boolean {
  return ((bits >> BigInt(bit)) & 1n) === 1n;
}
