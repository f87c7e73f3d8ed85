// Packed vs split device-side hot path in the same run: popDescriptorChain + addUsed per second for
// 1- and 3-descriptor chains (and 3-entry indirect chains) over a memfd-backed ring of 256; packed
// also with addUsedDeferred + one publishUsed per batch.
// Each round the driver fills the ring (untimed), the device drains and completes every chain
// (timed: one performance.now() pair per round of up to 256 chains), then the driver reaps
// (untimed). Only device work is in the rate, so the two formats' different driver costs (the
// packed driver must rewrite descriptors the device overwrote) do not blur the comparison.
// usage: node dist/bench/queue-packed.js [seconds-per-case]
import { GuestMemory, mapGuestRegion } from '../src/memory/index.js';
import {
  PackedQueue, PackedQueueDriver, SplitQueue, SplitQueueDriver, packedRingLayout, splitRingLayout,
  type DescriptorChain, type GuestBuffer, type VirtQueue,
} from '../src/queue/index.js';
import { close, ftruncate, memfdCreate } from '../src/sys/index.js';

const RAM = 0x100000;
const RAM_SIZE = 16 << 20;
const SIZE = 256;
const seconds = Number(process.argv[2] ?? '1');

const fd = memfdCreate('bench-queue-packed');
ftruncate(fd, RAM_SIZE);
const region = mapGuestRegion({ guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 }, fd);
close(fd);
const mem = new GuestMemory([region]);
const data = RAM + 0x10000;
const table = RAM + 0x8000;

type Shape = { name: string; descs: number; indirect: boolean };
const shapes: Shape[] = [
  { name: '1-desc', descs: 1, indirect: false },
  { name: '3-desc', descs: 3, indirect: false },
  { name: '3-entry indirect', descs: 3, indirect: true },
];

/** Readable header (16 B), then for 3-desc chains a 4 KiB data buffer and a writable status byte. */
function buffers(descs: number): { r: GuestBuffer[]; w: GuestBuffer[] } {
  if (descs === 1) return { r: [{ gpa: data, len: 16 }], w: [] };
  return { r: [{ gpa: data, len: 16 }, { gpa: data + 0x1000, len: 4096 }], w: [{ gpa: data + 0x3000, len: 1 }] };
}

interface Rig { q: VirtQueue; fill(): number; reap(): void; batch?: PackedQueue }

function splitRig(s: Shape): Rig {
  const l = splitRingLayout(SIZE, RAM);
  const drv = new SplitQueueDriver(mem, SIZE, l.descGpa, l.availGpa, l.usedGpa);
  const q = new SplitQueue(SIZE);
  q.setMemory(mem);
  q.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
  q.ready = true;
  const { r, w } = buffers(s.descs);
  const perChain = s.indirect ? 1 : s.descs;
  return {
    q,
    fill: () => {
      let n = 0;
      while (drv.freeCount >= perChain) {
        if (s.indirect) drv.addIndirectChain(table + 0x40 * n, r, w);
        else drv.addChain(r, w);
        n++;
      }
      return n;
    },
    reap: () => {
      while (drv.popUsed() !== null);
    },
  };
}

function packedRig(s: Shape, batched = false): Rig {
  // After the split ring, and apart from each other: all rigs stay set up between trials.
  const l = packedRingLayout(SIZE, RAM + (batched ? 0x4000 : 0x2000));
  const drv = new PackedQueueDriver(mem, SIZE, l.descGpa, l.driverGpa, l.deviceGpa);
  const q = new PackedQueue(SIZE);
  q.setMemory(mem);
  q.setAddresses(l.descGpa, l.driverGpa, l.deviceGpa);
  q.ready = true;
  const { r, w } = buffers(s.descs);
  const perChain = s.indirect ? 1 : s.descs;
  return {
    q,
    batch: batched ? q : undefined,
    fill: () => {
      let n = 0;
      while (drv.freeCount >= perChain) {
        if (s.indirect) drv.addIndirectChain(table + 0x40 * n, r, w);
        else drv.addChain(r, w);
        n++;
      }
      return n;
    },
    reap: () => {
      while (drv.popUsed() !== null);
    },
  };
}

/** Device-side chains per second. */
function run(rig: Rig, secs: number): number {
  const { q, batch } = rig;
  let chain: DescriptorChain | undefined;
  let n = 0;
  let busy = 0;
  const deadline = performance.now() + secs * 1000;
  while (performance.now() < deadline) {
    for (let round = 0; round < 16; round++) {
      const expect = rig.fill();
      const t0 = performance.now();
      for (;;) {
        const c = q.popDescriptorChain(chain);
        if (c === null) break;
        chain = c;
        if (batch !== undefined) batch.addUsedDeferred(c.headIndex, c.writableBytes);
        else q.addUsed(c.headIndex, c.writableBytes);
        n++;
      }
      batch?.publishUsed();
      busy += performance.now() - t0;
      rig.reap();
      if (expect === 0) throw new Error('driver could not place any chain');
    }
  }
  return (n / busy) * 1000;
}

const fmt = (x: number): string => `${(x / 1e6).toFixed(2)} M/s`;
// The machine may be shared: alternate short trials of both formats and keep each one's best, which
// drops the trials where the process was descheduled inside a timed section.
const TRIALS = 5;
console.log(`packed vs split device side, queue size ${SIZE}, memfd-backed guest memory, ${seconds}s per format and case (driver fill/reap untimed; best of ${TRIALS} alternating trials)`);
for (const s of shapes) {
  const rigs = [splitRig(s), packedRig(s), packedRig(s, true)];
  for (const rg of rigs) run(rg, 0.2); // warm-up
  const best = rigs.map(() => 0);
  for (let t = 0; t < TRIALS; t++) {
    for (const [i, rg] of rigs.entries()) best[i] = Math.max(best[i] as number, run(rg, seconds / TRIALS));
  }
  const [a, b, c] = best as [number, number, number];
  console.log(`${s.name.padEnd(17)} split ${fmt(a)} | packed ${fmt(b)} (${(b / a).toFixed(2)}x) | packed, one publish per batch ${fmt(c)} (${(c / a).toFixed(2)}x)`);
}
region.unmap();
