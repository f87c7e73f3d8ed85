/**
 * virtio-net wire formats (VIRTIO 1.2 §5.1): feature bits, the per-frame `virtio_net_hdr`, the
 * config space, control-queue classes and commands, and the frames the device builds itself
 * (gratuitous RARP).
 * @module
 */

/** Device handles packets with partial checksum (guest to device offload). */
export const VIRTIO_NET_F_CSUM = 0;
/** Driver handles packets with partial checksum. */
export const VIRTIO_NET_F_GUEST_CSUM = 1;
/** Device maximum MTU reporting (config `mtu`). */
export const VIRTIO_NET_F_MTU = 3;
/** Device has a given MAC address (config `mac`). */
export const VIRTIO_NET_F_MAC = 5;
/** Driver can receive TSOv4. */
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
/** Driver can receive TSOv6. */
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
/** Driver can receive TSO with ECN. */
export const VIRTIO_NET_F_GUEST_ECN = 9;
/** Driver can receive UFO. */
export const VIRTIO_NET_F_GUEST_UFO = 10;
/** Device can receive TSOv4. */
export const VIRTIO_NET_F_HOST_TSO4 = 11;
/** Device can receive TSOv6. */
export const VIRTIO_NET_F_HOST_TSO6 = 12;
/** Device can receive TSO with ECN. */
export const VIRTIO_NET_F_HOST_ECN = 13;
/** Driver can merge receive buffers. */
export const VIRTIO_NET_F_MRG_RXBUF = 15;
/** Config `status` is valid. */
export const VIRTIO_NET_F_STATUS = 16;
/** Control channel available. */
export const VIRTIO_NET_F_CTRL_VQ = 17;
/** Control channel RX mode support. */
export const VIRTIO_NET_F_CTRL_RX = 18;
/** Driver can send gratuitous packets (ANNOUNCE). */
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
/** Several queue pairs (config `max_virtqueue_pairs`). */
export const VIRTIO_NET_F_MQ = 22;
/** Set the MAC address through the control channel. */
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;

/** `flags`: use csum_start / csum_offset (partial checksum). */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
/** `flags`: the checksum is valid. */
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
/** `flags`: RSC information in the checksum fields. */
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;
/** `gso_type`: not a GSO frame. */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
/** `gso_type`: TCP over IPv4 segmentation. */
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
/** `gso_type`: UDP fragmentation offload. */
export const VIRTIO_NET_HDR_GSO_UDP = 3;
/** `gso_type`: TCP over IPv6 segmentation. */
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
/** `gso_type` bit: TCP with ECN. */
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** `struct virtio_net_hdr_v1` size (with num_buffers): VERSION_1 or MRG_RXBUF. */
export const VIRTIO_NET_HDR_V1_SIZE = 12;
/** Legacy header without num_buffers. */
export const VIRTIO_NET_HDR_LEGACY_SIZE = 10;
/** Offsets inside the header. */
export const VIRTIO_NET_HDR_OFFSETS = Object.freeze({
  /** u8 VIRTIO_NET_HDR_F_*. */
  flags: 0,
  /** u8 VIRTIO_NET_HDR_GSO_*. */
  gsoType: 1,
  /** le16 length of the headers to copy into each segment. */
  hdrLen: 2,
  /** le16 payload bytes per segment. */
  gsoSize: 4,
  /** le16 where the checksummed part starts. */
  csumStart: 6,
  /** le16 where the checksum goes, from csumStart. */
  csumOffset: 8,
  /** le16 buffers a mergeable frame took. */
  numBuffers: 10,
});

/** Ethernet header (destination, source, ethertype). */
export const ETH_HLEN = 14;
/** Largest frame accepted from a guest or a port, without the virtio-net header: 64 KiB of IP packet plus an Ethernet header and a VLAN tag. */
export const MAX_FRAME_LEN = 65535 + ETH_HLEN + 4;

/** Config `status`: link is up. */
export const VIRTIO_NET_S_LINK_UP = 1;
/** Config `status`: an announcement is needed. */
export const VIRTIO_NET_S_ANNOUNCE = 2;
/** Config space bytes served (mac, status, max_virtqueue_pairs, mtu). */
export const VIRTIO_NET_CONFIG_SIZE = 12;
/** Config field offsets. */
export const VIRTIO_NET_CONFIG_OFFSETS = Object.freeze({
  /** 6-byte MAC. */
  mac: 0,
  /** le16 VIRTIO_NET_S_*. */
  status: 6,
  /** le16 queue pairs. */
  maxVirtqueuePairs: 8,
  /** le16 MTU. */
  mtu: 10,
});

/** Control-queue ack: success. */
export const VIRTIO_NET_OK = 0;
/** Control-queue ack: failure (also for unknown classes and commands). */
export const VIRTIO_NET_ERR = 1;
/** Control class: receive filtering. */
export const VIRTIO_NET_CTRL_RX = 0;
/** CTRL_RX command: promiscuous mode on/off. */
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
/** CTRL_RX command: all-multicast on/off. */
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
/** Control class: MAC filtering. */
export const VIRTIO_NET_CTRL_MAC = 1;
/** CTRL_MAC command: set the unicast and multicast filter tables. */
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0;
/** CTRL_MAC command: set the default MAC address. */
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;
/** Control class: announcements. */
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
/** CTRL_ANNOUNCE command: the driver announced itself. */
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;
/** Control class: multiqueue. */
export const VIRTIO_NET_CTRL_MQ = 4;
/** CTRL_MQ command: number of queue pairs in use. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
/** Fewest queue pairs VQ_PAIRS_SET accepts. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;
/** Most queue pairs VQ_PAIRS_SET accepts. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;

/** Most queue pairs a device may have. */
export const MAX_QUEUE_PAIRS = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX;

/** Parses `aa:bb:cc:dd:ee:ff` into 6 bytes; throws RangeError on anything else. */
export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(s);
  if (m === null) throw new RangeError(`MAC address '${s}' is not six hex bytes separated by colons`);
  return Uint8Array.from(m.slice(1, 7), (h) => parseInt(h, 16));
}

/** Formats 6 bytes (from `off`) as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(b: Uint8Array, off = 0): string {
  const parts: string[] = [];
  for (let i = 0; i < 6; i++) parts.push((b[off + i] ?? 0).toString(16).padStart(2, '0'));
  return parts.join(':');
}

/** The config space of a device (12 bytes). */
export function encodeNetConfig(c: { mac: Uint8Array; status: number; maxVirtqueuePairs: number; mtu: number }, out = new Uint8Array(VIRTIO_NET_CONFIG_SIZE)): Uint8Array {
  out.set(c.mac.subarray(0, 6), VIRTIO_NET_CONFIG_OFFSETS.mac);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  v.setUint16(VIRTIO_NET_CONFIG_OFFSETS.status, c.status, true);
  v.setUint16(VIRTIO_NET_CONFIG_OFFSETS.maxVirtqueuePairs, c.maxVirtqueuePairs, true);
  v.setUint16(VIRTIO_NET_CONFIG_OFFSETS.mtu, c.mtu, true);
  return out;
}

/** EtherType of RARP. */
const ETHERTYPE_RARP = 0x8035;
/** RARP opcode "reverse request", what QEMU's self-announcement sends. */
const RARP_OP_REQUEST_REVERSE = 3;
/** Shortest Ethernet frame without the FCS: shorter frames are padded. */
export const ETH_ZLEN = 60;

/**
 * A gratuitous RARP for `mac` (as QEMU announces a migrated guest): broadcast, so switches on
 * the path learn where the MAC now lives.
 */
export function buildRarp(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(ETH_ZLEN);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, 6);
  f.set(mac.subarray(0, 6), 6);
  v.setUint16(12, ETHERTYPE_RARP);
  v.setUint16(14, 1); // hardware type: Ethernet
  v.setUint16(16, 0x0800); // protocol type: IPv4
  f[18] = 6;
  f[19] = 4;
  v.setUint16(20, RARP_OP_REQUEST_REVERSE);
  f.set(mac.subarray(0, 6), 22); // sender hardware address; sender IP stays 0
  f.set(mac.subarray(0, 6), 32); // target hardware address; target IP stays 0
  return f;
}

/**
 * Completes a partial checksum in software (for a receiver without GUEST_CSUM): the 16-bit
 * one's-complement sum of `frame` from `start` to its end is folded into the 2 bytes at
 * `start + offset` (which hold the pseudo-header sum, as the sender left them). Returns false
 * when the fields do not fit the frame.
 */
export function completeChecksum(frame: Uint8Array, start: number, offset: number): boolean {
  const at = start + offset;
  if (start >= frame.length || at + 2 > frame.length) return false;
  let sum = 0;
  let i = start;
  for (; i + 1 < frame.length; i += 2) sum += ((frame[i] as number) << 8) | (frame[i + 1] as number);
  if (i < frame.length) sum += (frame[i] as number) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  const c = ~sum & 0xffff;
  frame[at] = c >>> 8;
  frame[at + 1] = c & 0xff;
  return true;
}
