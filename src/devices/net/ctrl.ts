/**
 * The virtio-net control queue (VIRTIO 1.2 §5.1.6.5): receive filtering, MAC address and
 * tables, announcements and the number of queue pairs in use. Unknown classes and commands, and
 * commands whose feature was not negotiated, are answered VIRTIO_NET_ERR.
 * @module
 */
import type { DescriptorChain } from '../../queue/index.js';
import {
  VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET,
  VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
  VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
} from './header.js';

/** Most addresses accepted in one MAC filter table (more: the command fails). */
export const MAX_MAC_TABLE_ENTRIES = 64;

/** Receive filter state set through the control queue. */
export class RxFilter {
  /** Promiscuous mode (on until the driver turns it off, as QEMU does). */
  promisc = true;
  /** Accept every multicast frame. */
  allmulti = false;
  /** Extra unicast addresses accepted (as `aa:bb:...` strings). */
  unicast = new Set<string>();
  /** Multicast addresses accepted. */
  multicast = new Set<string>();

  /** Back to the reset state. */
  reset(): void {
    this.promisc = true;
    this.allmulti = false;
    this.unicast.clear();
    this.multicast.clear();
  }
}

/** What a control command may change on the device. */
export interface CtrlTarget {
  /** Negotiated features. */
  readonly acked: bigint;
  /** The receive filter. */
  readonly filter: RxFilter;
  /** The current MAC; `setMac` replaces it. */
  setMac(mac: Uint8Array): void;
  /** Clears VIRTIO_NET_S_ANNOUNCE. */
  announceAcked(): void;
  /** Largest number of queue pairs. */
  readonly maxPairs: number;
  /** VQ_PAIRS_SET accepted. */
  setActivePairs(n: number): void;
}

const bit = (n: number): bigint => 1n << BigInt(n);

function macKey(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * Executes one control command from `chain` (class, command, data in the readable part; the
 * ack byte in the writable part). Returns the used length (1, or 0 when there is no room for the
 * ack) and the ack value.
 */
export function executeCtrl(chain: DescriptorChain, dev: CtrlTarget, features: { ctrlRx: number; ctrlMacAddr: number; mq: number }): { used: number; ack: number; what: string } {
  if (chain.writableBytes < 1) return { used: 0, ack: VIRTIO_NET_ERR, what: 'no room for the ack' };
  let ack = VIRTIO_NET_ERR;
  let what = 'malformed';
  const r = chain.reader;
  const has = (b: number): boolean => (dev.acked & bit(b)) !== 0n;
  try {
    if (r.availableBytes < 2) throw new Error('shorter than class and command');
    const cls = r.readU8();
    const cmd = r.readU8();
    what = `class ${cls} command ${cmd}`;
    if (cls === VIRTIO_NET_CTRL_RX && has(features.ctrlRx) && (cmd === VIRTIO_NET_CTRL_RX_PROMISC || cmd === VIRTIO_NET_CTRL_RX_ALLMULTI)) {
      const on = r.readU8() !== 0;
      if (cmd === VIRTIO_NET_CTRL_RX_PROMISC) dev.filter.promisc = on;
      else dev.filter.allmulti = on;
      ack = VIRTIO_NET_OK;
    } else if (cls === VIRTIO_NET_CTRL_MAC && cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET && has(features.ctrlMacAddr)) {
      const mac = new Uint8Array(6);
      r.read(mac);
      dev.setMac(mac);
      ack = VIRTIO_NET_OK;
    } else if (cls === VIRTIO_NET_CTRL_MAC && cmd === VIRTIO_NET_CTRL_MAC_TABLE_SET && has(features.ctrlRx)) {
      const tables: Set<string>[] = [];
      for (let t = 0; t < 2; t++) {
        const n = r.readU32();
        if (n > MAX_MAC_TABLE_ENTRIES) throw new Error(`MAC table of ${n} entries (at most ${MAX_MAC_TABLE_ENTRIES})`);
        const set = new Set<string>();
        const mac = new Uint8Array(6);
        for (let i = 0; i < n; i++) {
          r.read(mac);
          set.add(macKey(mac));
        }
        tables.push(set);
      }
      dev.filter.unicast = tables[0] as Set<string>;
      dev.filter.multicast = tables[1] as Set<string>;
      ack = VIRTIO_NET_OK;
    } else if (cls === VIRTIO_NET_CTRL_ANNOUNCE && cmd === VIRTIO_NET_CTRL_ANNOUNCE_ACK) {
      dev.announceAcked();
      ack = VIRTIO_NET_OK;
    } else if (cls === VIRTIO_NET_CTRL_MQ && cmd === VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && has(features.mq)) {
      const n = r.readU16();
      if (n >= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN && n <= dev.maxPairs) {
        dev.setActivePairs(n);
        ack = VIRTIO_NET_OK;
      }
    }
  } catch (e) {
    what += `: ${(e as Error).message}`;
    ack = VIRTIO_NET_ERR;
  }
  // The ack is the first device-writable byte (as QEMU writes it).
  chain.writer.writeU8(ack);
  return { used: 1, ack, what };
}

export { macKey };
