// QueueServer: the framework's queue loop around a per-request handler, over a memfd-backed ring
// with real call/err eventfds (the daemon's event handler calls kick() on every kick).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory, GuestMemoryAtomic, mapDirtyLog, mapGuestRegion, type GuestRegion } from '../../src/memory/index.js';
import {
  SplitQueueDriver, VIRTQ_DESC_F_NEXT, splitRingLayout, type DescriptorChain,
} from '../../src/queue/index.js';
import { QueueServer, Vring, type ChainHandler, type QueueServerOptions } from '../../src/backend/index.js';
import * as sys from '../../src/sys/index.js';
import type { LogLevel, Logger } from '../../src/log.js';

const RAM = 0x10_0000;
const RAM_SIZE = 4 << 20;
const QSIZE = 16;
const BUF = RAM + 0x10_0000;

class CaptureLogger implements Logger {
  readonly lines: string[] = [];
  log(level: LogLevel, msg: string): void { this.lines.push(`${level}: ${msg}`); }
  has(...parts: string[]): boolean { return this.lines.some((l) => parts.every((p) => l.includes(p))); }
}

/** A request the test completes by hand. */
interface Held { chain: DescriptorChain; resolve: (n: number) => void; reject: (e: Error) => void }

class Rig {
  readonly fd: number;
  readonly atomic: GuestMemoryAtomic;
  readonly drvMem: GuestMemory;
  readonly drv: SplitQueueDriver;
  readonly vring: Vring;
  readonly callFd = sys.eventfd();
  readonly errFd = sys.eventfd();
  readonly logger = new CaptureLogger();
  readonly server: QueueServer;
  readonly held: Held[] = [];
  broken = 0;
  calls = 0;

  constructor(handler: ChainHandler | 'hold', opts: QueueServerOptions = {}) {
    this.fd = sys.memfdCreate('queue-server-test');
    sys.ftruncate(this.fd, RAM_SIZE);
    const desc = { guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 };
    this.atomic = new GuestMemoryAtomic(new GuestMemory([mapGuestRegion(desc, this.fd)]));
    this.drvMem = new GuestMemory([mapGuestRegion(desc, this.fd)]);
    const l = splitRingLayout(QSIZE, RAM);
    this.drv = new SplitQueueDriver(this.drvMem, QSIZE, l.descGpa, l.availGpa, l.usedGpa);
    this.vring = new Vring(0, QSIZE);
    this.vring.queue.setSize(QSIZE);
    this.vring.setMemory(this.atomic);
    this.vring.queue.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
    this.vring.setCallFd(this.callFd);
    this.vring.setErrFd(this.errFd);
    this.vring.setStarted(true);
    this.vring.setEnabled(true);
    const h: ChainHandler = handler === 'hold'
      ? (chain) => { this.calls++; return new Promise<number>((resolve, reject) => this.held.push({ chain, resolve, reject })); }
      : (chain, v) => { this.calls++; return handler(chain, v); };
    this.server = new QueueServer(this.vring, h, { logger: this.logger, onBroken: () => { this.broken++; }, ...opts });
  }

  /** Queues a request with `w` writable bytes at BUF + 0x1000 * slot. */
  submit(slot: number, w = 64): number {
    return this.drv.addChain([{ gpa: BUF + 0x1000 * slot, len: 8 }], [{ gpa: BUF + 0x1000 * slot + 0x800, len: w }]);
  }

  called(): boolean { return sys.eventfdRead(this.callFd) !== null; }

  close(): void {
    this.vring.reset();
    this.atomic.close();
    for (const r of this.drvMem.regions as readonly GuestRegion[]) r.unmap();
    sys.close(this.fd);
  }
}

function rig(t: TestContext, handler: ChainHandler | 'hold', opts?: QueueServerOptions): Rig {
  const r = new Rig(handler, opts);
  t.after(() => r.close());
  return r;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

test('sync handler: used length published, one interrupt per drain pass', (t) => {
  const r = rig(t, (chain) => { chain.writer.write(new Uint8Array([1, 2, 3])); return 3; });
  const a = r.submit(0);
  const b = r.submit(1);
  r.server.kick();
  assert.deepEqual(r.drv.popUsed(), { id: a, len: 3 });
  assert.deepEqual(r.drv.popUsed(), { id: b, len: 3 });
  assert.equal(sys.eventfdRead(r.callFd), 1n);
});

test('malformed chains (loop, bad next index, out-of-range buffer) complete with 0; the good one is served', (t) => {
  const r = rig(t, () => 5);
  // A two-descriptor loop, a next index past the table, a buffer outside guest memory.
  // (Raw descriptors at the top of the table: addChain takes the lowest free ones.)
  r.drv.writeDesc(12, BUF, 8, VIRTQ_DESC_F_NEXT, 13);
  r.drv.writeDesc(13, BUF, 8, VIRTQ_DESC_F_NEXT, 12);
  r.drv.publish(12);
  r.drv.writeDesc(14, BUF, 8, VIRTQ_DESC_F_NEXT, 200);
  r.drv.publish(14);
  r.drv.writeDesc(15, 0x7fff_0000_0000, 8, 0, 0);
  r.drv.publish(15);
  const good = r.drv.addChain([], [{ gpa: BUF, len: 8 }]);
  r.server.kick();
  assert.deepEqual([r.drv.popUsed(), r.drv.popUsed(), r.drv.popUsed()], [{ id: 12, len: 0 }, { id: 14, len: 0 }, { id: 15, len: 0 }]);
  assert.deepEqual(r.drv.popUsed(), { id: good, len: 5 });
  assert.equal(r.calls, 1, 'the handler only sees the good chain');
  assert.ok(r.logger.has('warn', 'chain-too-long') && r.logger.has('bad-index') && r.logger.has('out-of-range'));
  assert.equal(r.broken, 0);
});

test('a throwing or rejecting handler completes the request with 0 and the queue keeps serving', async (t) => {
  let n = 0;
  const r = rig(t, (): number | Promise<number> => {
    n++;
    if (n === 1) throw new Error('device bug');
    if (n === 2) return Promise.reject(new Error('async device bug'));
    if (n === 3) return 1e9; // more than the chain holds: clamped
    return 2;
  });
  const heads = [0, 1, 2, 3].map((i) => r.submit(i, 16));
  r.server.kick();
  await r.server.quiesce();
  const used = [r.drv.popUsed(), r.drv.popUsed(), r.drv.popUsed(), r.drv.popUsed()];
  assert.deepEqual(used.map((u) => u?.id).sort(), [...heads].sort());
  const byId = new Map(used.map((u) => [u?.id, u?.len]));
  assert.deepEqual([byId.get(heads[0]), byId.get(heads[1]), byId.get(heads[2]), byId.get(heads[3])], [0, 0, 16, 2]);
  assert.ok(r.logger.has('error', 'device bug') && r.logger.has('async device bug') && r.logger.has('clamped'));
});

test('avail index jump: ring broken, err fd signalled once, kicks do nothing; SET_VRING_BASE restarts it', (t) => {
  const r = rig(t, () => 0);
  for (const jump of [QSIZE + 1, 1 << 15, 0xffff]) {
    r.drv.setAvailIdx(r.drv.availIdx + jump);
    r.server.kick();
    assert.equal(r.vring.queue.broken, true);
    assert.equal(sys.eventfdRead(r.errFd), 1n);
    assert.equal(r.vring.queue.enableNotification(), false, 'a broken ring reports no work (no spin)');
    assert.equal(r.vring.queue.hasPending(), false);
    for (let i = 0; i < 100; i++) r.server.kick();
    assert.equal(sys.eventfdRead(r.errFd), null, 'signalled once');
    assert.equal(r.calls, 0);
    // The front-end resets the ring (SET_VRING_BASE after GET_VRING_BASE).
    r.vring.queue.setVringBase(r.drv.availIdx);
    assert.equal(r.vring.queue.broken, false);
  }
  assert.equal(r.broken, 3, 'onBroken once per break');
  r.drv.setRingIndices(r.drv.availIdx);
  r.submit(0);
  r.server.kick();
  assert.equal(r.drv.popUsed()?.len, 0);
  assert.equal(r.calls, 1, 'served again');
});

test('in-flight bound: popping stops at maxInFlight and resumes on completion', async (t) => {
  const r = rig(t, 'hold', { maxInFlight: 2 });
  for (let i = 0; i < 5; i++) r.submit(i);
  r.server.kick();
  assert.equal(r.server.inFlight, 2);
  assert.equal(r.vring.queue.vringBase, 2, 'only two chains popped');
  r.server.kick();
  assert.equal(r.vring.queue.vringBase, 2, 'a kick at the bound pops nothing');
  r.held.shift()?.resolve(1);
  await turn();
  assert.equal(r.vring.queue.vringBase, 3, 'a completion resumed the drain');
  assert.equal(r.server.inFlight, 2);
  while (r.held.length > 0) {
    r.held.shift()?.resolve(1);
    await turn();
  }
  await r.server.quiesce();
  assert.equal(r.drv.usedIdx, 5);
  assert.equal(r.calls, 5);
});

test('coalescing: completions in one event-loop turn share one interrupt; quiesce resolves after it', async (t) => {
  const r = rig(t, 'hold');
  for (let i = 0; i < 6; i++) r.submit(i);
  r.server.kick();
  assert.equal(r.held.length, 6);
  let quiesced = false;
  const q = r.server.quiesce().then(() => { quiesced = true; });
  for (const h of r.held.splice(0)) h.resolve(1);
  await q;
  assert.ok(quiesced);
  assert.equal(r.drv.usedIdx, 6);
  assert.equal(sys.eventfdRead(r.callFd), 1n, 'six used entries, one eventfd write');
});

test('reset with a late completion: the request completes without touching the ring; memory stays pinned until then', async (t) => {
  const r = rig(t, 'hold');
  r.submit(0);
  r.server.kick();
  const region = r.atomic.memory.regions[0];
  assert.ok(region !== undefined);
  let done = false;
  const p = r.server.reset().then(() => { done = true; });
  // Memory replaced while the request is in flight: the old mapping stays for the request.
  r.atomic.replace(new GuestMemory([mapGuestRegion({ guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 }, r.fd)]));
  r.vring.setMemory(r.atomic);
  assert.ok((region.backing.windows[0]?.byteLength ?? 0) > 0, 'pinned by the in-flight request');
  await turn();
  assert.equal(done, false, 'reset waits for the request');
  const h = r.held.shift();
  h?.chain.writer.write(new Uint8Array([9]));
  h?.resolve(1);
  await p;
  assert.equal(r.drv.usedIdx, 0, 'no used entry after the reset');
  assert.equal(r.called(), false, 'no interrupt after the reset');
  assert.equal(region.backing.windows[0]?.byteLength, 0, 'released once the request completed');
});

test('dirty logging: the framework logs written buffers from the used length and from segments() views', async (t) => {
  const logFd = sys.memfdCreate('dirty-log');
  t.after(() => sys.close(logFd));
  sys.ftruncate(logFd, 4096);
  const view = sys.mmap(logFd, 0, 4096);
  t.after(() => view.unmap());
  const bits = new Uint8Array(view.windows[0] as ArrayBuffer);
  const dirty = (gpa: number): boolean => (((bits[Math.floor(gpa / 0x8000)] as number) >> (Math.floor(gpa / 0x1000) % 8)) & 1) === 1;
  const r = rig(t, (chain) => {
    // Slot 0: writer.write and a reported length; slot 1: zero-copy views, reporting 0 (a device
    // that forgets): the framework logs what the writer handed out anyway; slot 5: async.
    const slot = Math.floor((chain.addrs[0] as number - BUF) / 0x1000);
    if (slot === 0) { chain.writer.write(new Uint8Array(4)); return 4; }
    if (slot === 1) { for (const v of chain.writer.segments(0x1800)) v.fill(1); return 0; }
    return Promise.resolve(16);
  });
  r.atomic.setDirtyLog(mapDirtyLog(logFd, 4096, 0));
  r.vring.setMemory(r.atomic);
  r.submit(0);
  // Slot 1 writes across two pages (0x800 + 0x1800 crosses into the next page).
  r.drv.addChain([{ gpa: BUF + 0x1000, len: 8 }], [{ gpa: BUF + 0x1800, len: 0x1800 }]);
  r.submit(5);
  r.server.kick();
  await r.server.quiesce();
  assert.ok(dirty(BUF + 0x800), 'slot 0 buffer');
  assert.ok(dirty(BUF + 0x1800) && dirty(BUF + 0x2000), 'slot 1 views, both pages');
  assert.ok(dirty(BUF + 0x5800), 'slot 5 (async) buffer');
  assert.ok(!dirty(BUF + 0x4000), 'untouched page clean');
});

test('batches: a long drain publishes the used index every `batch` chains, not only at its end', (t) => {
  const usedIdxGpa = splitRingLayout(QSIZE, RAM).usedGpa + 2;
  const seen: number[] = [];
  const r = rig(t, () => {
    // What a driver polling the used ring sees while the device is still serving.
    seen.push(r.drvMem.readU16(usedIdxGpa));
    return 0;
  }, { batch: 3 });
  for (let i = 0; i < 8; i++) r.submit(i);
  r.server.kick();
  assert.deepEqual(seen, [0, 0, 0, 3, 3, 3, 6, 6]);
  assert.equal(r.drvMem.readU16(usedIdxGpa), 8);
  assert.throws(() => new QueueServer(r.vring, () => 0, { batch: 0 }), /batch 0/);
});

test('turn budget: a busy ring yields to the event loop and resumes on the next turn without a kick', async (t) => {
  const r = rig(t, () => 0, { turnBudget: 3 });
  for (let i = 0; i < 8; i++) r.submit(i);
  r.server.kick();
  assert.equal(r.calls, 3, 'stops at the budget');
  await turn();
  assert.equal(r.calls, 6);
  await turn();
  assert.equal(r.calls, 8);
  assert.equal(r.server.inFlight, 0);
  let served = 0;
  while (r.drv.popUsed() !== null) served++;
  assert.equal(served, 8);
});

test('adaptive polling: the server keeps spinning on an empty ring for pollUs, then re-enables kicks', (t) => {
  const r = rig(t, () => 0, { pollUs: 2000 });
  r.submit(0);
  const t0 = performance.now();
  r.server.kick();
  const spent = performance.now() - t0;
  assert.equal(r.calls, 1);
  // It spun for the poll time (notifications stay off meanwhile), and only then asked for kicks.
  assert.ok(spent >= 2, `kick returned after ${spent.toFixed(2)} ms, before the 2 ms poll time`);
  assert.throws(() => new QueueServer(r.vring, () => 0, { pollUs: -1 }), /pollUs -1/);
});
