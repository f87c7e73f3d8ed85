/**
 * The net device's migration state (DEVICE_STATE): what the driver set through the control queue
 * (MAC, receive filter, queue pairs in use), the MTU and status, and the packet counters, so the
 * destination continues where the source stopped. Versioned JSON; the destination refuses a
 * device of a different shape.
 * @module
 */
import type { DropReason } from './counters.js';

/** The receive filter in a {@link NetState}. */
export interface NetFilterState {
  /** Promiscuous mode. */
  promisc: boolean;
  /** All-multicast mode. */
  allmulti: boolean;
  /** Extra unicast MACs accepted. */
  unicast: string[];
  /** Multicast MACs accepted. */
  multicast: string[];
}

/** What `VhostUserNetBackend.saveState` transfers (version 1). */
export interface NetState {
  /** Format version (1). */
  version: 1;
  /** Queue pairs of the device (must match on the destination). */
  maxPairs: number;
  /** MAC as `aa:bb:cc:dd:ee:ff`. */
  mac: string;
  /** Config status bits. */
  status: number;
  /** MTU set with NET_SET_MTU. */
  mtu: number;
  /** Queue pairs in use. */
  activePairs: number;
  /** Receive filter. */
  filter: NetFilterState;
  /** Per pair [packets, bytes, drops] delivered to the guest. */
  rx: [number, number, number][];
  /** Per pair [packets, bytes, drops] transmitted by the guest. */
  tx: [number, number, number][];
  /** Drops by reason. */
  drops: Partial<Record<DropReason, number>>;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/** Parses and checks a state produced by saveState (throws with the reason). */
export function decodeNetState(bytes: Uint8Array, maxPairs: number): NetState {
  let s: Partial<NetState>;
  try {
    s = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as Partial<NetState>;
  } catch (e) {
    throw new Error(`net state is not JSON: ${(e as Error).message}`);
  }
  if (s.version !== 1) throw new Error(`net state version ${String(s.version)} (this device reads version 1)`);
  if (s.maxPairs !== maxPairs) throw new Error(`net state: source has ${String(s.maxPairs)} queue pairs, this device ${maxPairs}`);
  if (typeof s.mac !== 'string' || !MAC_RE.test(s.mac)) throw new Error(`net state: bad MAC ${String(s.mac)}`);
  if (!isCount(s.status) || s.status > 0xffff || !isCount(s.mtu) || s.mtu < 68 || s.mtu > 65535) throw new Error('net state: bad status or MTU');
  if (!isCount(s.activePairs) || s.activePairs < 1 || s.activePairs > maxPairs) throw new Error(`net state: ${String(s.activePairs)} pairs in use`);
  const f = s.filter;
  const macs = (a: unknown): a is string[] => Array.isArray(a) && a.length <= 64 && a.every((m) => typeof m === 'string' && MAC_RE.test(m));
  if (f === undefined || typeof f.promisc !== 'boolean' || typeof f.allmulti !== 'boolean' || !macs(f.unicast) || !macs(f.multicast)) {
    throw new Error('net state: bad receive filter');
  }
  const counters = (a: unknown): a is [number, number, number][] =>
    Array.isArray(a) && a.length === maxPairs && a.every((c) => Array.isArray(c) && c.length === 3 && c.every(isCount));
  if (!counters(s.rx) || !counters(s.tx)) throw new Error('net state: bad counters');
  if (typeof s.drops !== 'object' || s.drops === null || !Object.values(s.drops).every(isCount)) throw new Error('net state: bad drop counters');
  return s as NetState;
}
