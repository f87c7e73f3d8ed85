/**
 * The vhost-user-net device: a {@link VhostUserBackend} with receive/transmit queue pairs and a
 * control queue. Transmit chains are served by the framework's queue server (one
 * `processChain` per frame, handed to the {@link NetLink} without copying); receive queues are
 * filled by the device itself ({@link NetRxQueue}) when the link delivers a frame.
 *
 * Queue layout (VIRTIO 1.2 §5.1.2): receiveq1, transmitq1, …, receiveqN, transmitqN, controlq;
 * the control queue is queue 2 when MQ is not negotiated.
 * @module
 */
import type { ServingOptions, VhostUserBackend } from '../../backend/index.js';
import type { Vring } from '../../backend/vring.js';
import type { DescriptorChain } from '../../queue/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES } from '../../vhost-user/constants.js';
import {
  VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VHOST_F_LOG_ALL, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../../virtio/features.js';
import { defaultLogger, type Logger } from '../../log.js';
import { DropCounters, PacketCounters, type DropReason } from './counters.js';
import { RxFilter, executeCtrl, macKey } from './ctrl.js';
import { Delivery, NetFrame, type FrameSource, type NetLink } from './frame.js';
import {
  ETH_HLEN, MAX_FRAME_LEN, MAX_QUEUE_PAIRS, VIRTIO_NET_CONFIG_SIZE, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR,
  VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEGACY_SIZE,
  VIRTIO_NET_HDR_OFFSETS, VIRTIO_NET_HDR_V1_SIZE, VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP, buildRarp, encodeNetConfig, formatMac, parseMac,
} from './header.js';
import { NetRxQueue, type RxFeatures } from './rx.js';
import type { GuestOffloads } from './tap-port.js';
import { decodeNetState, type NetState } from './state.js';

/** Options of {@link VhostUserNetBackend}. */
export interface VhostUserNetBackendOptions {
  /** Name in logs and statistics (default `net`). */
  name?: string;
  /** MAC address offered in the config space (`aa:bb:cc:dd:ee:ff` or 6 bytes; default 52:54:00:12:34:56). */
  mac?: string | Uint8Array;
  /** MTU offered in the config space (default 1500). */
  mtu?: number;
  /** Receive/transmit queue pairs (default 1; MQ is offered when > 1). */
  queuePairs?: number;
  /** Largest queue size (power of two, default 256). */
  queueSize?: number;
  /** Offer checksum and TSO offloads both ways (default true). */
  offloads?: boolean;
  /** Rejected guest input is logged here (give it a RateLimitedLogger). */
  logger?: Logger;
  /**
   * Adaptive polling of the transmit queues: after a queue runs empty, keep checking it for this
   * many µs before waiting for a kick (default 0: never spin). See `QueueServerOptions.pollUs`.
   */
  pollUs?: number;
}

const bit = (n: number): bigint => 1n << BigInt(n);
const OFFLOAD_FEATURES = [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6].reduce((m, b) => m | bit(b), 0n);

/** Default MAC: QEMU's first default NIC address. */
export const DEFAULT_MAC = '52:54:00:12:34:56';

/** Queue roles. */
type Role = 'rx' | 'tx' | 'ctrl' | 'none';

/** virtio-net over vhost-user. */
export class VhostUserNetBackend implements VhostUserBackend, FrameSource {
  /** Name in logs and statistics. */
  readonly name: string;
  /** Largest number of queue pairs. */
  readonly maxPairs: number;
  /** Receive filter state (control queue CTRL_RX / MAC tables). */
  readonly filter = new RxFilter();
  /** Frames the guest transmitted, per queue pair. */
  readonly txCounters: PacketCounters[];
  /** Drops by reason (both directions). */
  readonly drops = new DropCounters();
  /** The link changed negotiated offloads (a TAP port sets TUNSETOFFLOAD). */
  onFeatures: ((dev: VhostUserNetBackend) => void) | null = null;
  /** Receive buffers arrived after a frame was queued (a paused TAP resumes). */
  onRxSpace: (() => void) | null = null;
  /** MTU last set with NET_SET_MTU (or the configured one). */
  mtu: number;
  private readonly configuredMtu: number;
  private readonly initialMac: Uint8Array;
  private macBytes: Uint8Array;
  private readonly queueSize: number;
  private readonly offloads: boolean;
  private readonly logger: Logger;
  private readonly pollUs: number;
  /** After a transmit batch: what it delivered (loopback, switch peers) is published too. */
  private readonly flushLinkBound = (): void => this.link?.flush?.();
  private link: NetLink | null = null;
  private ackedBits = 0n;
  private status = VIRTIO_NET_S_LINK_UP;
  private activePairs = 1;
  // Queue roles under the negotiated features (cached: asked per chain).
  private ctrlIndex = 2;
  private dataQueues = 2;
  private hasCtrl = false;
  private hasCtrlRx = false;
  private readonly rx: (NetRxQueue | null)[];
  private readonly rxCountersKept: PacketCounters[];
  private rxFeatures: RxFeatures = { hdrLen: VIRTIO_NET_HDR_V1_SIZE, mergeable: false, guestCsum: false, guestTso4: false, guestTso6: false, guestEcn: false, guestUfo: false };
  private readonly rxFeaturesBound = (): RxFeatures => this.rxFeatures;
  private txCsum = false;
  private txTso4 = false;
  private txTso6 = false;
  private txEcn = false;
  private hdrLen = VIRTIO_NET_HDR_V1_SIZE;
  private readonly frame = new NetFrame();
  /** `frame.hdr` holds bytes other than zero (see transmitChain). */
  private hdrDirty = true;
  private readonly configBuf = new Uint8Array(VIRTIO_NET_CONFIG_SIZE);

  constructor(opts: VhostUserNetBackendOptions = {}) {
    this.name = opts.name ?? 'net';
    const mac = opts.mac ?? DEFAULT_MAC;
    this.initialMac = typeof mac === 'string' ? parseMac(mac) : Uint8Array.from(mac);
    if (this.initialMac.length !== 6) throw new RangeError('mac must be 6 bytes');
    this.macBytes = this.initialMac.slice();
    this.configuredMtu = opts.mtu ?? 1500;
    if (!Number.isInteger(this.configuredMtu) || this.configuredMtu < 68 || this.configuredMtu > 65535) throw new RangeError(`mtu ${this.configuredMtu} is not in 68..65535`);
    this.mtu = this.configuredMtu;
    this.maxPairs = opts.queuePairs ?? 1;
    if (!Number.isInteger(this.maxPairs) || this.maxPairs < 1 || this.maxPairs > MAX_QUEUE_PAIRS) throw new RangeError(`queuePairs ${this.maxPairs} is not in 1..${MAX_QUEUE_PAIRS}`);
    this.queueSize = opts.queueSize ?? 256;
    if (!Number.isInteger(this.queueSize) || this.queueSize < 2 || this.queueSize > 32768 || (this.queueSize & (this.queueSize - 1)) !== 0) {
      throw new RangeError(`queueSize ${this.queueSize} is not a power of two in [2, 32768]`);
    }
    this.offloads = opts.offloads ?? true;
    this.logger = opts.logger ?? defaultLogger;
    this.pollUs = opts.pollUs ?? 0;
    if (!Number.isFinite(this.pollUs) || this.pollUs < 0 || this.pollUs > 1_000_000) throw new RangeError(`pollUs ${this.pollUs} is not in 0..1000000`);
    this.rx = new Array<NetRxQueue | null>(this.maxPairs).fill(null);
    this.rxCountersKept = Array.from({ length: this.maxPairs }, () => new PacketCounters());
    this.txCounters = Array.from({ length: this.maxPairs }, () => new PacketCounters());
  }

  /** The current MAC (config space, or set through the control queue). */
  get mac(): Uint8Array {
    return this.macBytes;
  }

  /** Frames delivered to the guest, per queue pair (cumulative over connections). */
  get rxCounters(): readonly PacketCounters[] {
    return this.rxCountersKept;
  }

  /** Features the driver acknowledged. */
  get acked(): bigint {
    return this.ackedBits;
  }

  /** Whether the guest negotiated each receive offload (TUNSETOFFLOAD follows these). */
  get guestOffloads(): GuestOffloads {
    const f = this.rxFeatures;
    return { csum: f.guestCsum, tso4: f.guestTso4, tso6: f.guestTso6, ecn: f.guestEcn, ufo: f.guestUfo };
  }

  /** Whether a front-end is connected with at least one receive queue ready. */
  get rxReady(): boolean {
    return this.rx.some((q) => q !== null && q.rxq.ready);
  }

  attach(link: NetLink): void {
    this.link = link;
  }

  deviceType(): string { return 'net'; }
  numQueues(): number { return 2 * this.maxPairs + 1; }
  maxQueueSize(): number { return this.queueSize; }

  features(): bigint {
    let f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_F_RING_PACKED)
      | bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_MTU) | bit(VIRTIO_NET_F_STATUS)
      | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_CTRL_RX) | bit(VIRTIO_NET_F_CTRL_MAC_ADDR)
      | bit(VHOST_F_LOG_ALL); // the framework logs RX (RxQueue) and TX/ctrl (QueueServer) writes
    if (this.offloads) f |= OFFLOAD_FEATURES;
    if (this.maxPairs > 1) f |= bit(VIRTIO_NET_F_MQ);
    return f;
  }

  protocolFeatures(): bigint {
    return [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.RESET_DEVICE,
      ProtocolFeature.STATUS, ProtocolFeature.CONFIG, ProtocolFeature.RARP, ProtocolFeature.MTU, ProtocolFeature.LOG_SHMFD,
      ProtocolFeature.PAGEFAULT, ProtocolFeature.DEVICE_STATE].reduce((m, b) => m | bit(b), 0n);
  }

  ackedFeatures(features: bigint): void {
    this.ackedBits = features;
    const has = (b: number): boolean => (features & bit(b)) !== 0n;
    this.hdrLen = has(VIRTIO_F_VERSION_1) || has(VIRTIO_NET_F_MRG_RXBUF) ? VIRTIO_NET_HDR_V1_SIZE : VIRTIO_NET_HDR_LEGACY_SIZE;
    this.rxFeatures = {
      hdrLen: this.hdrLen, mergeable: has(VIRTIO_NET_F_MRG_RXBUF), guestCsum: has(VIRTIO_NET_F_GUEST_CSUM),
      guestTso4: has(VIRTIO_NET_F_GUEST_TSO4), guestTso6: has(VIRTIO_NET_F_GUEST_TSO6), guestEcn: has(VIRTIO_NET_F_GUEST_ECN), guestUfo: has(VIRTIO_NET_F_GUEST_UFO),
    };
    this.txCsum = has(VIRTIO_NET_F_CSUM);
    this.txTso4 = has(VIRTIO_NET_F_HOST_TSO4);
    this.txTso6 = has(VIRTIO_NET_F_HOST_TSO6);
    this.txEcn = has(VIRTIO_NET_F_HOST_ECN);
    // Without MQ only the first pair exists; with it, all are usable until VQ_PAIRS_SET says otherwise
    // (vhost-user front-ends such as QEMU enable the rings of the pairs in use instead).
    this.activePairs = has(VIRTIO_NET_F_MQ) ? this.maxPairs : 1;
    this.ctrlIndex = 2 * this.activePairs;
    this.dataQueues = 2 * this.activePairs;
    this.hasCtrl = has(VIRTIO_NET_F_CTRL_VQ);
    this.hasCtrlRx = has(VIRTIO_NET_F_CTRL_RX);
    this.onFeatures?.(this);
  }

  /** The role of queue `index` under the negotiated features. */
  private role(index: number): Role {
    if (index === this.ctrlIndex) return this.hasCtrl ? 'ctrl' : 'none';
    if (index >= this.dataQueues) return 'none';
    return (index & 1) === 0 ? 'rx' : 'tx';
  }

  fillsQueue(queueIndex: number): boolean {
    return this.role(queueIndex) === 'rx';
  }

  servingOptions(queueIndex: number): ServingOptions {
    // Only transmit queues (odd indices below the ctrl queue, whatever was negotiated) are polled:
    // receive queues are filled from the link, and ctrl is rare.
    const tx = (queueIndex & 1) === 1 && queueIndex < 2 * this.maxPairs;
    return tx ? { pollUs: this.pollUs, onPublish: this.flushLinkBound } : {};
  }

  /** Publishes the frames delivered into the receive queues so far (used index, interrupt). */
  flush(): void {
    for (const q of this.rx) q?.rxq.flush();
  }

  getConfig(offset: number, size: number): Uint8Array {
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 0 || offset + size > VIRTIO_NET_CONFIG_SIZE) {
      throw new RangeError(`config read ${offset}+${size} outside the ${VIRTIO_NET_CONFIG_SIZE}-byte virtio-net config`);
    }
    encodeNetConfig({ mac: this.macBytes, status: this.status, maxVirtqueuePairs: this.maxPairs, mtu: this.configuredMtu }, this.configBuf);
    return this.configBuf.slice(offset, offset + size);
  }

  /** Serves transmit and control chains (receive queues are filled by the device). */
  processChain(queueIndex: number, chain: DescriptorChain, vring: Vring): number {
    const role = this.role(queueIndex);
    if (role === 'tx') {
      this.transmitChain(queueIndex >>> 1, chain);
      return 0;
    }
    if (role === 'ctrl') {
      const r = executeCtrl(chain, this, { ctrlRx: VIRTIO_NET_F_CTRL_RX, ctrlMacAddr: VIRTIO_NET_F_CTRL_MAC_ADDR, mq: VIRTIO_NET_F_MQ });
      if (r.ack !== 0) this.logger.log('warn', `${this.name}: control command ${r.what} refused (VIRTIO_NET_ERR)`);
      return r.used;
    }
    if (role === 'rx') {
      // Reached only when the kick raced a feature change; the chain goes back empty.
      this.rxQueue(vring);
      return 0;
    }
    this.logger.log('warn', `${this.name}: chain on queue ${queueIndex}, which has no role under the negotiated features; completed empty`);
    return 0;
  }

  /** A kick on a receive queue: the guest posted buffers. */
  handleEvent(deviceEvent: number, _evset: number, vrings: readonly Vring[]): void {
    if (this.role(deviceEvent) !== 'rx') return;
    const v = vrings.find((x) => x.index === deviceEvent);
    if (v === undefined) return;
    const q = this.rxQueue(v);
    if (q.kicked()) this.onRxSpace?.();
  }

  private rxQueue(v: Vring): NetRxQueue {
    const pair = v.index >>> 1;
    let q = this.rx[pair] ?? null;
    if (q === null || q.vring !== v) {
      // Counters survive reconnects.
      q = new NetRxQueue(v, this.rxFeaturesBound, this.drops, this.logger, this.rxCountersKept[pair] as PacketCounters);
      this.rx[pair] = q;
    }
    return q;
  }

  queueStopped(queueIndex: number): void {
    if (queueIndex % 2 !== 0) return;
    const q = this.rx[queueIndex >>> 1];
    q?.stop();
  }

  resetDevice(): void {
    for (const q of this.rx) q?.stop();
    this.rx.fill(null);
    this.ackedBits = 0n;
    this.macBytes = this.initialMac.slice();
    this.filter.reset();
    this.status = VIRTIO_NET_S_LINK_UP;
    this.mtu = this.configuredMtu;
    this.activePairs = 1;
    this.ackedFeatures(0n);
  }

  /** Delivers a frame from the link into a receive queue (copying it). */
  deliver(frame: NetFrame, pairHint: number): Delivery {
    if (this.hasCtrlRx && !this.accepts(frame)) {
      this.drops.add('rx-filtered');
      return Delivery.Dropped;
    }
    const n = this.activePairs;
    let q = this.rx[pairHint % n] ?? null;
    if (q === null || !q.rxq.ready) {
      q = null;
      for (let i = 0; i < n; i++) {
        const c = this.rx[i] ?? null;
        if (c !== null && c.rxq.ready) {
          q = c;
          break;
        }
      }
    }
    if (q === null) {
      this.drops.add('rx-not-ready');
      return Delivery.Dropped;
    }
    return q.deliver(frame);
  }

  /** The receive filter of CTRL_RX: promiscuous, broadcast, multicast rules, own and table MACs. */
  private accepts(frame: NetFrame): boolean {
    const f = this.filter;
    if (f.promisc) return true;
    const b0 = frame.byteAt(0);
    if ((b0 & 1) !== 0) {
      let bcast = true;
      for (let i = 0; i < 6; i++) if (frame.byteAt(i) !== 0xff) bcast = false;
      if (bcast || f.allmulti) return true;
      return f.multicast.has(this.dstKey(frame));
    }
    let own = true;
    for (let i = 0; i < 6; i++) if (frame.byteAt(i) !== this.macBytes[i]) own = false;
    return own || f.unicast.has(this.dstKey(frame));
  }

  private dstKey(frame: NetFrame): string {
    const d = new Uint8Array(6);
    frame.copyOut(d, 0, 0, 6);
    return macKey(d);
  }

  private dropTx(pair: number, reason: DropReason, why: string, head: number): void {
    this.drops.add(reason);
    (this.txCounters[pair] as PacketCounters).drops++;
    this.logger.log('warn', `${this.name}: transmit queue ${2 * pair + 1}: ${why} (head ${head}); frame dropped`);
  }

  private transmitChain(pair: number, chain: DescriptorChain): void {
    const hl = this.hdrLen;
    if (chain.writableBytes > 0 || chain.readableBytes < hl) {
      const why = chain.writableBytes > 0 ? `chain has ${chain.writableBytes} device-writable bytes` : `chain of ${chain.readableBytes} bytes is shorter than the ${hl}-byte header`;
      return this.dropTx(pair, 'tx-bad-chain', why, chain.headIndex);
    }
    const len = chain.readableBytes - hl;
    if (len > MAX_FRAME_LEN || len < ETH_HLEN) {
      return this.dropTx(pair, 'tx-bad-length', `frame of ${len} bytes is outside ${ETH_HLEN}..${MAX_FRAME_LEN}`, chain.headIndex);
    }
    const f = this.frame;
    const hdr = f.hdr;
    const mem = chain.memory;
    const { addrs, lens } = chain;
    // The header is read where it lies when one buffer holds it (always, from Linux and DPDK):
    // no view is made for 12 bytes.
    const hb = (lens[0] as number) >= hl ? mem.bytesAt(addrs[0] as number, hl) : null;
    if (hb !== null) {
      const o = mem.bytesOffset;
      const flags = hb[o] as number;
      const gso = hb[o + 1] as number;
      if ((flags | gso) === 0) {
        // No offload (most frames): the other fields are unused on transmit, so only the first
        // two bytes are read; the rest of our copy is zeroed once, not per frame.
        if (this.hdrDirty) {
          hdr.fill(0);
          this.hdrDirty = false;
        }
      } else {
        for (let i = 0; i < hl; i++) hdr[i] = hb[o + i] as number;
        this.hdrDirty = true;
      }
    } else {
      this.hdrDirty = true;
      chain.reader.read(hl === VIRTIO_NET_HDR_V1_SIZE ? hdr : hdr.subarray(0, hl));
    }
    if (hl !== VIRTIO_NET_HDR_V1_SIZE) hdr[10] = hdr[11] = 0;
    const why = this.checkTxOffload(f, len);
    if (why !== null) return this.dropTx(pair, 'tx-bad-offload', why, chain.headIndex);
    // The frame is described by its guest ranges (validated when the chain was popped); views
    // are made only if a port reads it.
    f.setGuest(mem);
    let skip = hl;
    for (let i = 0; i < chain.readableCount; i++) {
      const l = lens[i] as number;
      if (skip >= l) {
        skip -= l;
        continue;
      }
      f.addGuest((addrs[i] as number) + skip, l - skip);
      skip = 0;
    }
    const c = this.txCounters[pair] as PacketCounters;
    c.packets++;
    c.bytes += len;
    if (this.link === null) {
      this.drops.add('port-error');
      return;
    }
    this.link.transmit(this, pair, f);
  }

  /** Null when the header's offload fields are allowed and fit the frame, else why not. */
  private checkTxOffload(f: NetFrame, len: number): string | null {
    const flags = f.flags;
    if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
      if (!this.txCsum) return 'NEEDS_CSUM without VIRTIO_NET_F_CSUM';
      const start = f.hdrU16(VIRTIO_NET_HDR_OFFSETS.csumStart);
      const off = f.hdrU16(VIRTIO_NET_HDR_OFFSETS.csumOffset);
      if (start + off + 2 > len) return `checksum field at ${start}+${off} is outside the ${len}-byte frame`;
    }
    const gso = f.gsoType;
    if (gso !== VIRTIO_NET_HDR_GSO_NONE) {
      const t = gso & ~VIRTIO_NET_HDR_GSO_ECN;
      const ok = (t === VIRTIO_NET_HDR_GSO_TCPV4 && this.txTso4) || (t === VIRTIO_NET_HDR_GSO_TCPV6 && this.txTso6);
      if (!ok || ((gso & VIRTIO_NET_HDR_GSO_ECN) !== 0 && !this.txEcn)) return `GSO type ${gso} was not negotiated`;
      if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0) return 'GSO frame without NEEDS_CSUM';
      if (f.hdrU16(VIRTIO_NET_HDR_OFFSETS.gsoSize) === 0) return 'GSO frame with gso_size 0';
    }
    return null;
  }

  // --- migration ---------------------------------------------------------------------------------

  /**
   * Migration source (DEVICE_STATE): MAC, receive filter, pairs in use, MTU, status and the packet
   * counters, as versioned JSON ({@link NetState}).
   */
  saveState(): Uint8Array {
    const c = (x: PacketCounters): [number, number, number] => [x.packets, x.bytes, x.drops];
    const s: NetState = {
      version: 1, maxPairs: this.maxPairs, mac: formatMac(this.macBytes), status: this.status, mtu: this.mtu, activePairs: this.activePairs,
      filter: { promisc: this.filter.promisc, allmulti: this.filter.allmulti, unicast: [...this.filter.unicast], multicast: [...this.filter.multicast] },
      rx: this.rxCountersKept.map(c), tx: this.txCounters.map(c), drops: this.drops.nonZero(),
    };
    return new TextEncoder().encode(JSON.stringify(s));
  }

  /** Migration destination: restores {@link saveState}'s state; throws when it does not fit this device. */
  loadState(state: Uint8Array): void {
    const s = decodeNetState(state, this.maxPairs);
    this.macBytes = parseMac(s.mac);
    this.status = s.status;
    this.mtu = s.mtu;
    this.activePairs = s.activePairs;
    this.filter.promisc = s.filter.promisc;
    this.filter.allmulti = s.filter.allmulti;
    this.filter.unicast = new Set(s.filter.unicast);
    this.filter.multicast = new Set(s.filter.multicast);
    const set = (x: PacketCounters, v: [number, number, number]): void => {
      [x.packets, x.bytes, x.drops] = v;
    };
    s.rx.forEach((v, i) => set(this.rxCountersKept[i] as PacketCounters, v));
    s.tx.forEach((v, i) => set(this.txCounters[i] as PacketCounters, v));
    this.drops.clear();
    for (const [k, v] of Object.entries(s.drops) as [DropReason, number][]) if (k in this.drops.byReason) this.drops.byReason[k] = v;
  }

  // --- CtrlTarget -------------------------------------------------------------------------------

  /** @internal Control queue: MAC_ADDR_SET. */
  setMac(mac: Uint8Array): void {
    this.macBytes = Uint8Array.from(mac);
    this.logger.log('info', `${this.name}: MAC set to ${formatMac(this.macBytes)}`);
  }

  /** @internal Control queue: ANNOUNCE_ACK. */
  announceAcked(): void {
    this.status &= ~VIRTIO_NET_S_ANNOUNCE;
  }

  /** @internal Control queue: VQ_PAIRS_SET. */
  setActivePairs(n: number): void {
    this.activePairs = n;
  }

  /** Queue pairs in use. */
  get pairsInUse(): number {
    return this.activePairs;
  }

  // --- vhost-user net requests -------------------------------------------------------------------

  /** SEND_RARP: a gratuitous RARP for `mac` goes out through the link. */
  sendRarp(mac: Uint8Array): void {
    if (mac.length < 6) throw new RangeError('SEND_RARP needs a 6-byte MAC');
    const f = this.frame;
    f.setSingle(buildRarp(mac));
    this.logger.log('info', `${this.name}: announcing ${formatMac(mac)} (gratuitous RARP)`);
    if (this.link === null) {
      this.drops.add('port-error');
      return;
    }
    this.link.transmit(this, 0, f);
  }

  /** NET_SET_MTU: the MTU the front-end configured for the guest (68..65535). */
  setMtu(mtu: number): void {
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new RangeError(`MTU ${mtu} is not in 68..65535`);
    this.mtu = mtu;
  }
}
