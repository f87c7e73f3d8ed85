/**
 * Packet counters of the net device and its ports, read by `--stats` and tests. Plain number
 * fields updated on the hot path.
 * @module
 */

/** Why frames were dropped. */
export type DropReason =
  /** TX chain with device-writable buffers, shorter than the header, or malformed. */
  | 'tx-bad-chain'
  /** TX frame longer than {@link MAX_FRAME_LEN} or shorter than an Ethernet header. */
  | 'tx-bad-length'
  /** TX header asks for an offload that was not negotiated, or its fields do not fit the frame. */
  | 'tx-bad-offload'
  /** No receive queue was ready (no guest connected, or its rings stopped). */
  | 'rx-not-ready'
  /** The guest had no buffer and the backlog was full. */
  | 'rx-no-buffer'
  /** The frame does not fit a (non-mergeable) receive buffer. */
  | 'rx-too-big'
  /** The receiver did not negotiate the GSO type of the frame. */
  | 'rx-offload'
  /** The receive filter (CTRL_RX, MAC table) refused the frame. */
  | 'rx-filtered'
  /** A port could not send (TAP write failed). */
  | 'port-error';

/** Counters of one direction of one queue. */
export class PacketCounters {
  /** Frames passed. */
  packets = 0;
  /** Bytes passed (frames without the virtio-net header). */
  bytes = 0;
  /** Frames dropped. */
  drops = 0;
  /** Zeroes every counter. */
  clear(): void {
    this.packets = this.bytes = this.drops = 0;
  }
}

/** Drop counts per reason. */
export class DropCounters {
  /** Drops by reason. */
  readonly byReason: Record<DropReason, number> = {
    'tx-bad-chain': 0, 'tx-bad-length': 0, 'tx-bad-offload': 0, 'rx-not-ready': 0, 'rx-no-buffer': 0,
    'rx-too-big': 0, 'rx-offload': 0, 'rx-filtered': 0, 'port-error': 0,
  };
  /** Counts one drop. */
  add(r: DropReason): void {
    // The steady-state drop (a guest that does not take its frames) gets a constant-key store; a
    // variable key is a keyed IC on the hot path of a flood.
    if (r === 'rx-no-buffer') this.byReason['rx-no-buffer']++;
    else this.byReason[r]++;
  }
  /** Total drops. */
  get total(): number {
    let n = 0;
    for (const v of Object.values(this.byReason)) n += v;
    return n;
  }
  /** Zeroes every counter. */
  clear(): void {
    for (const k of Object.keys(this.byReason) as DropReason[]) this.byReason[k] = 0;
  }
  /** The non-zero counts, for log lines. */
  nonZero(): Partial<Record<DropReason, number>> {
    const out: Partial<Record<DropReason, number>> = {};
    for (const [k, v] of Object.entries(this.byReason) as [DropReason, number][]) if (v !== 0) out[k] = v;
    return out;
  }
}
