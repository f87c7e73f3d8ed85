/**
 * TAP interfaces through /dev/net/tun (linux/if_tun.h), for {@link VhostKernNet} back-ends.
 *
 * @module
 */
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import * as sys from '../sys/index.js';
import { ior, iow } from './ioctl.js';

/** The tun ioctl type byte ('T'). */
const TUN_TYPE = 0x54;
/** TUNSETIFF: _IOW('T', 202, int); the argument is really a struct ifreq. */
export const TUNSETIFF = iow(TUN_TYPE, 202, 4);
/** TUNGETIFF: _IOR('T', 210, unsigned int). */
export const TUNGETIFF = ior(TUN_TYPE, 210, 4);
/** TUNSETOFFLOAD: _IOW('T', 208, unsigned int). */
export const TUNSETOFFLOAD = iow(TUN_TYPE, 208, 4);
/** TUNGETVNETHDRSZ: _IOR('T', 215, int). */
export const TUNGETVNETHDRSZ = ior(TUN_TYPE, 215, 4);
/** TUNSETVNETHDRSZ: _IOW('T', 216, int). */
export const TUNSETVNETHDRSZ = iow(TUN_TYPE, 216, 4);
/** ifr_flags: layer-2 TAP device. */
export const IFF_TAP = 0x0002;
/** ifr_flags: no packet-information prefix. */
export const IFF_NO_PI = 0x1000;
/** ifr_flags: frames carry a struct virtio_net_hdr. */
export const IFF_VNET_HDR = 0x4000;
/** ifr_flags: several queues on one interface. */
export const IFF_MULTI_QUEUE = 0x0100;
/** sizeof(struct ifreq) on LP64. */
export const IFREQ_SIZE = 40;
/** IFNAMSIZ. */
export const IFNAMSIZ = 16;

/** An open TAP queue. */
export interface Tap {
  /** The /dev/net/tun fd bound to the interface (give it to VHOST_NET_SET_BACKEND). */
  readonly fd: number;
  /** Interface name the kernel chose or confirmed. */
  readonly name: string;
  /** Closes the fd (the interface disappears with its last queue unless persistent). */
  close(): void;
}

/** Options for {@link openTap}. */
export interface TapOptions {
  /** Interface name or pattern ('tap%d', the default). */
  readonly name?: string;
  /** Open as one queue of a multi-queue interface. */
  readonly multiQueue?: boolean;
  /**
   * virtio-net header size the TAP reads and writes: 12 with VIRTIO_F_VERSION_1 or
   * VIRTIO_NET_F_MRG_RXBUF, 10 otherwise (default 12).
   */
  readonly vnetHdrSize?: number;
  /** /dev/net/tun path (default). */
  readonly path?: string;
}

/**
 * Creates (or attaches to) a TAP interface with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and sets its
 * virtio-net header size. Offloads stay off, so frames arrive with a plain header (no GSO, no
 * partial checksum).
 */
export function openTap(opts: TapOptions = {}): Tap {
  const name = opts.name ?? 'tap%d';
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length >= IFNAMSIZ) throw new RangeError(`TAP name '${name}' is longer than ${IFNAMSIZ - 1} bytes`);
  const fd = openSync(opts.path ?? '/dev/net/tun', fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
  try {
    const ifr = new Uint8Array(IFREQ_SIZE);
    ifr.set(nameBytes, 0);
    const flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (opts.multiQueue ? IFF_MULTI_QUEUE : 0);
    new DataView(ifr.buffer).setUint16(IFNAMSIZ, flags, true);
    sys.ioctl(fd, TUNSETIFF, ifr);
    const end = ifr.indexOf(0);
    const actual = Buffer.from(ifr.subarray(0, end < 0 ? IFNAMSIZ : end)).toString('utf8');
    const hdr = new Uint8Array(4);
    new DataView(hdr.buffer).setInt32(0, opts.vnetHdrSize ?? 12, true);
    sys.ioctl(fd, TUNSETVNETHDRSZ, hdr);
    let open = true;
    return {
      fd, name: actual,
      close() { if (open) { open = false; closeSync(fd); } },
    };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** TUNSETOFFLOAD flag: the TAP may hand over frames with a partial checksum. */
export const TUN_F_CSUM = 0x01;
/** TUNSETOFFLOAD flag: ... TSO over IPv4 frames (needs TUN_F_CSUM). */
export const TUN_F_TSO4 = 0x02;
/** TUNSETOFFLOAD flag: ... TSO over IPv6 frames (needs TUN_F_CSUM). */
export const TUN_F_TSO6 = 0x04;
/** TUNSETOFFLOAD flag: ... TSO frames with ECN. */
export const TUN_F_TSO_ECN = 0x08;
/** TUNSETOFFLOAD flag: ... UFO frames. */
export const TUN_F_UFO = 0x10;

/**
 * TUNSETOFFLOAD: which offloaded frames (partial checksum, TSO) the TAP may hand to the reader,
 * i.e. what the consumer of its frames (a guest) negotiated. TSO flags need TUN_F_CSUM.
 */
export function setTapOffload(fd: number, flags: number): void {
  sys.ioctl(fd, TUNSETOFFLOAD, flags);
}
