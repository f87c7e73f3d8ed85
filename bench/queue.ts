// Split-queue hot-path benchmark: popDescriptorChain + addUsed per second for 1- and 3-descriptor
// chains over a memfd-backed ring, against a reference in the same run: the same walk done through
// a DataView (getUint16/getUint32 per field, same index/range checks, same reused arrays) instead
// of the cached Uint16Array/Uint32Array ring views SplitQueue uses. The reference still loads
// avail.idx and publishes used.idx with Atomics on a u16 view (DataView has no atomics, and the
// ordering is required for correctness), but it is one flat function with no chain object.
// Also: the framework's QueueServer loop over the same ring with a synchronous handler.
// usage: node dist/bench/queue.js [seconds-per-case]
import { GuestMemory, GuestMemoryAtomic, mapGuestRegion } from '../src/memory/index.js';
import { QueueServer, Vring } from '../src/backend/index.js';
import { silentLogger } from '../src/log.js';
import { SplitQueue, SplitQueueDriver, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, splitRingLayout, type DescriptorChain } from '../src/queue/index.js';
import { close, ftruncate, memfdCreate } from '../src/sys/index.js';

const RAM = 0x100000;
const RAM_SIZE = 16 << 20;
const SIZE = 256;
const seconds = Number(process.argv[2] ?? '1');

const fd = memfdCreate('bench-queue');
ftruncate(fd, RAM_SIZE);
const region = mapGuestRegion({ guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 }, fd);
close(fd);
const mem = new GuestMemory([region]);
const atomic = new GuestMemoryAtomic(mem);
const layout = splitRingLayout(SIZE, RAM);
const data = RAM + 0x10000;

/** Lays out SIZE/descsPerChain fixed chains once; each round re-publishes all heads. */
function prepare(descsPerChain: number): { drv: SplitQueueDriver; heads: number[] } {
  const drv = new SplitQueueDriver(mem, SIZE, layout.descGpa, layout.availGpa, layout.usedGpa);
  const heads: number[] = [];
  for (let h = 0; h + descsPerChain <= SIZE; h += descsPerChain) {
    for (let k = 0; k < descsPerChain; k++) {
      const i = h + k;
      const last = k === descsPerChain - 1;
      const flags = (last && descsPerChain > 1 ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
      drv.writeDesc(i, data + i * 4096, k === 1 ? 4096 : 16, flags, i + 1);
    }
    heads.push(h);
  }
  return { drv, heads };
}

function publishAll(drv: SplitQueueDriver, heads: number[]): void {
  for (const h of heads) drv.publish(h);
}

function runQueue(descs: number): number {
  const { drv, heads } = prepare(descs);
  const q = new SplitQueue(SIZE);
  q.setMemory(mem);
  q.setAddresses(layout.descGpa, layout.availGpa, layout.usedGpa);
  q.ready = true;
  let chain: DescriptorChain | undefined;
  let n = 0;
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    for (let r = 0; r < 64; r++) {
      publishAll(drv, heads);
      for (;;) {
        const c = q.popDescriptorChain(chain);
        if (c === null) break;
        chain = c;
        q.addUsed(c.headIndex, c.writableBytes);
        n++;
      }
    }
  }
  return n / seconds;
}

/**
 * The framework's loop (QueueServer.kick with a synchronous handler returning the writable length):
 * what a processChain device costs per request on top of pop+addUsed (notification
 * disable/enable, used-length check, request slot recycling).
 */
function runServer(descs: number): number {
  const { drv, heads } = prepare(descs);
  const vring = new Vring(0, SIZE);
  vring.setMemory(atomic);
  vring.queue.setAddresses(layout.descGpa, layout.availGpa, layout.usedGpa);
  vring.setStarted(true);
  vring.setEnabled(true);
  const server = new QueueServer(vring, (c) => c.writableBytes, { logger: silentLogger });
  let n = 0;
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    for (let r = 0; r < 64; r++) {
      publishAll(drv, heads);
      server.kick();
      n += heads.length;
    }
  }
  return n / seconds;
}

/** Reference: same walk via DataView over the mapping window, no cached typed ring views. */
function runDataView(descs: number): number {
  const { drv, heads } = prepare(descs);
  const win = region.backing.windows[0] as ArrayBuffer;
  const dv = new DataView(win);
  const idx16 = new Uint16Array(win);
  const base = region.backingOffset - RAM; // gpa -> window offset
  const d0 = layout.descGpa + base;
  const a0 = layout.availGpa + base;
  const u0 = layout.usedGpa + base;
  const addrs: number[] = [];
  const lens: number[] = [];
  let nextAvail = 0;
  let nextUsed = 0;
  let n = 0;
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    for (let r = 0; r < 64; r++) {
      publishAll(drv, heads);
      const availIdx = Atomics.load(idx16, (a0 + 2) >> 1);
      while (nextAvail !== availIdx) {
        if (((availIdx - nextAvail) & 0xffff) > SIZE) throw new Error('jump');
        let idx = dv.getUint16(a0 + 4 + 2 * (nextAvail & (SIZE - 1)), true);
        nextAvail = (nextAvail + 1) & 0xffff;
        const head = idx;
        let ttl = SIZE;
        let count = 0;
        let writable = 0;
        for (;;) {
          if (idx >= SIZE || ttl-- === 0) throw new Error('bad chain');
          const o = d0 + 16 * idx;
          const addr = dv.getUint32(o + 4, true) * 0x1_0000_0000 + dv.getUint32(o, true);
          const len = dv.getUint32(o + 8, true);
          const flags = dv.getUint16(o + 12, true);
          if (!mem.checkRange(addr, len)) throw new Error('range');
          addrs[count] = addr;
          lens[count++] = len;
          if ((flags & VIRTQ_DESC_F_WRITE) !== 0) writable += len;
          if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
          idx = dv.getUint16(o + 14, true);
        }
        const slot = nextUsed & (SIZE - 1);
        dv.setUint32(u0 + 4 + 8 * slot, head, true);
        dv.setUint32(u0 + 8 + 8 * slot, writable, true);
        nextUsed = (nextUsed + 1) & 0xffff;
        Atomics.store(idx16, (u0 + 2) >> 1, nextUsed);
        n++;
      }
    }
  }
  return n / seconds;
}

const fmt = (x: number): string => `${(x / 1e6).toFixed(2)} M/s`;
console.log(`split queue size ${SIZE}, memfd-backed guest memory, ${seconds}s per case (driver re-publish of the avail ring included in both)`);
for (const descs of [1, 3]) {
  runQueue(descs); // warm-up
  runDataView(descs);
  runServer(descs);
  const a = runQueue(descs);
  const b = runDataView(descs);
  const c = runServer(descs);
  console.log(`${descs}-desc chains: SplitQueue pop+addUsed ${fmt(a)} | reference DataView walk ${fmt(b)} | ratio ${(a / b).toFixed(2)}x | QueueServer loop ${fmt(c)} (${(c / a).toFixed(2)}x of pop+addUsed)`);
}
region.unmap();
