/**
 * `vhost-user-net` helper: the per-port / per-queue statistics lines of `--stats`.
 * @module
 */
import type { LogFields } from '../log.js';
import type { PacketCounters, TapPort, VhostUserNetBackend } from '../devices/net/index.js';

/** One statistics record. */
export interface StatsLine {
  /** Human-readable line. */
  message: string;
  /** The same numbers as fields (JSON logs). */
  fields: LogFields;
}

function fmt(c: PacketCounters): string {
  return `${c.packets} pkts ${c.bytes} B ${c.drops} drops`;
}

/** Per-port and per-queue packets, bytes and drops of the devices and the TAP. */
export function netStatsLines(devs: readonly VhostUserNetBackend[], tap: TapPort | null): StatsLine[] {
  const out: StatsLine[] = [];
  for (const d of devs) {
    const rx = d.rxCounters;
    for (let p = 0; p < d.maxPairs; p++) {
      const r = rx[p] as PacketCounters;
      const t = d.txCounters[p] as PacketCounters;
      if (p > 0 && r.packets + t.packets + r.drops + t.drops === 0) continue;
      out.push({
        message: `${d.name} pair ${p}: rx (to guest) ${fmt(r)}, tx (from guest) ${fmt(t)}`,
        fields: { port: d.name, pair: p, rxPackets: r.packets, rxBytes: r.bytes, rxDrops: r.drops, txPackets: t.packets, txBytes: t.bytes, txDrops: t.drops },
      });
    }
    const drops = d.drops.nonZero();
    if (Object.keys(drops).length > 0) {
      out.push({ message: `${d.name} drops: ${Object.entries(drops).map(([k, v]) => `${k}=${v}`).join(' ')}`, fields: { port: d.name, ...drops } });
    }
  }
  if (tap !== null) {
    tap.rxCounters.forEach((r, q) => {
      const t = tap.txCounters[q] as PacketCounters;
      out.push({
        message: `tap ${tap.name} queue ${q}: read ${fmt(r)}, written ${fmt(t)}`,
        fields: { port: tap.name, queue: q, readPackets: r.packets, readBytes: r.bytes, writtenPackets: t.packets, writtenBytes: t.bytes, writeDrops: t.drops },
      });
    });
  }
  return out;
}
