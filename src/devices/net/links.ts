/**
 * How frames leave a net device: back into itself (loopback), to one peer (a device and its
 * TAP), or through an L2 learning switch between several devices and an optional TAP uplink.
 * @module
 */
import type { VhostUserNetBackend } from './backend.js';
import { Delivery, type FrameEndpoint, type FrameSource, type NetFrame, type NetLink } from './frame.js';
import type { GuestOffloads, TapPort } from './tap-port.js';

/** Every frame a device transmits comes back on its own receive queues (same queue pair). */
export class LoopbackLink implements NetLink {
  /** Frames looped back. */
  frames = 0;
  /** Attaches `dev` to itself. */
  constructor(private readonly dev: FrameSource) {
    dev.attach(this);
  }
  transmit(from: FrameEndpoint, pair: number, frame: NetFrame): void {
    this.frames++;
    from.deliver(frame, pair);
  }
  flush(): void {
    this.dev.flush?.();
  }
}

/**
 * A point-to-point wire between a device and a TAP: the TAP pauses while the guest has no
 * receive buffer and resumes when it posts some, and the TAP's offloads follow the guest's.
 */
export class TapWire implements NetLink {
  constructor(private readonly dev: VhostUserNetBackend, private readonly tap: TapPort) {
    dev.attach(this);
    tap.attach(this);
    dev.onRxSpace = () => tap.resume();
    dev.onFeatures = (d) => tap.setOffload(d.guestOffloads);
  }
  transmit(from: FrameEndpoint, pair: number, frame: NetFrame): void {
    if (from === this.dev) {
      this.tap.deliver(frame, pair);
      return;
    }
    if (this.dev.deliver(frame, pair) === Delivery.Queued) this.tap.pause();
  }
}

/** The switch's view of a MAC it learned. */
interface MacEntry {
  port: FrameEndpoint;
  seen: number;
}

/** Options of {@link NetSwitch}. */
export interface NetSwitchOptions {
  /** A learned MAC is forgotten this long after its last frame (default 300 s, the 802.1D default). */
  ageingMs?: number;
  /** Clock (ms), for tests. */
  now?: () => number;
}

/** Most MACs the switch learns; beyond, unknown sources are flooded to (and not learned). */
export const MAX_MAC_ENTRIES = 4096;

function macKeyAt(frame: NetFrame, off: number): number {
  const s = frame.views().segs[0];
  if (s !== undefined && s.length >= off + 6) {
    return (s[off] as number) * 2 ** 40 + (s[off + 1] as number) * 2 ** 32 + (((s[off + 2] as number) << 24) >>> 0) + ((s[off + 3] as number) << 16) + ((s[off + 4] as number) << 8) + (s[off + 5] as number);
  }
  let k = 0;
  for (let i = 0; i < 6; i++) k = k * 256 + frame.byteAt(off + i);
  return k;
}

/**
 * An L2 learning bridge: each port is a device (one VM) or a TAP uplink. Source MACs are
 * learned with ageing; frames to a known unicast MAC go to its port only (copied once, guest to
 * guest), broadcast, multicast and unknown unicast are flooded to every other port.
 */
export class NetSwitch implements NetLink {
  private readonly ports: FrameEndpoint[] = [];
  private readonly devices: VhostUserNetBackend[] = [];
  private uplink: TapPort | null = null;
  private readonly table = new Map<number, MacEntry>();
  private readonly ageingMs: number;
  private readonly now: () => number;
  /** Frames sent to one learned port. */
  forwarded = 0;
  /** Frames flooded (broadcast, multicast, unknown unicast). */
  flooded = 0;
  /** Frames whose destination is on the port they came from (not sent back). */
  filtered = 0;

  constructor(opts: NetSwitchOptions = {}) {
    this.ageingMs = opts.ageingMs ?? 300_000;
    this.now = opts.now ?? Date.now;
  }

  /** Adds any frame source (e.g. a custom port) as a port of the bridge. */
  addPort(port: FrameSource): void {
    this.ports.push(port);
    port.attach(this);
  }

  /** Adds a device (one VM) as a port. */
  addDevice(dev: VhostUserNetBackend): void {
    this.ports.push(dev);
    this.devices.push(dev);
    dev.attach(this);
    dev.onFeatures = () => this.updateUplinkOffload();
  }

  /**
   * Adds a TAP as the uplink port. Its offloads are those every connected guest accepts, so a
   * frame from the host can be flooded to any of them.
   */
  addUplink(tap: TapPort): void {
    this.ports.push(tap);
    this.uplink = tap;
    tap.attach(this);
    this.updateUplinkOffload();
  }

  /** Learned MACs (for statistics and tests). */
  get macCount(): number {
    return this.table.size;
  }

  /** The port a MAC (as a 48-bit number) was learned on, if it has not aged out. */
  lookup(mac: number): FrameEndpoint | null {
    const e = this.table.get(mac);
    if (e === undefined) return null;
    if (this.now() - e.seen > this.ageingMs) {
      this.table.delete(mac);
      return null;
    }
    return e.port;
  }

  /** Forgets every aged-out MAC (when the table is full; lookups forget them one by one otherwise). */
  private sweep(now: number): void {
    for (const [mac, e] of this.table) if (now - e.seen > this.ageingMs) this.table.delete(mac);
  }

  private updateUplinkOffload(): void {
    if (this.uplink === null) return;
    const o: GuestOffloads = { csum: true, tso4: true, tso6: true, ecn: true, ufo: true };
    let any = false;
    for (const d of this.devices) {
      if (d.acked === 0n) continue;
      any = true;
      const g = d.guestOffloads;
      o.csum &&= g.csum;
      o.tso4 &&= g.tso4;
      o.tso6 &&= g.tso6;
      o.ecn &&= g.ecn;
      o.ufo &&= g.ufo;
    }
    this.uplink.setOffload(any ? o : { csum: false, tso4: false, tso6: false, ecn: false, ufo: false });
  }

  flush(): void {
    for (const d of this.devices) d.flush();
  }

  transmit(from: FrameEndpoint, pair: number, frame: NetFrame): void {
    const now = this.now();
    if ((frame.byteAt(6) & 1) === 0) {
      const src = macKeyAt(frame, 6);
      const e = this.table.get(src);
      if (e !== undefined) {
        e.port = from;
        e.seen = now;
      } else {
        if (this.table.size >= MAX_MAC_ENTRIES) this.sweep(now);
        if (this.table.size < MAX_MAC_ENTRIES) this.table.set(src, { port: from, seen: now });
      }
    }
    if ((frame.byteAt(0) & 1) === 0) {
      const to = this.lookup(macKeyAt(frame, 0));
      if (to !== null) {
        if (to === from) {
          this.filtered++;
          return;
        }
        this.forwarded++;
        to.deliver(frame, pair);
        return;
      }
    }
    this.flooded++;
    for (const p of this.ports) if (p !== from) p.deliver(frame, pair);
  }
}
