// Inflight regions (queue/inflight.ts) and the area (backend/inflight-area.ts): wire offsets, the
// spec's update order and recovery with real split and packed queues over shared memory, and
// hostile regions (too small, wrong counts, inconsistent entries) refused with clear errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory, GuestRegion, arrayBufferBacking } from '../../src/memory/index.js';
import { PackedQueue, SplitQueue, SplitQueueDriver, splitRingLayout } from '../../src/queue/index.js';
import {
  INFLIGHT_PACKED_DESC_SIZE, INFLIGHT_PACKED_HEADER_SIZE, INFLIGHT_SPLIT_DESC_SIZE, INFLIGHT_SPLIT_HEADER_SIZE,
  InflightError, PackedInflightRegion, SplitInflightRegion, inflightQueueRegionSize, setInflightStepHook, type InflightStep,
} from '../../src/queue/inflight.js';
import { InflightArea } from '../../src/backend/inflight-area.js';
import * as sys from '../../src/sys/index.js';
import { DATA, mapShared, pop, rig as packedRig } from './packed-rig.js';

const RAM = 0x10000;
const RAM_SIZE = 0x100000;

function splitRig(size: number, mem?: GuestMemory): { mem: GuestMemory; q: SplitQueue; drv: SplitQueueDriver } {
  const m = mem ?? new GuestMemory([new GuestRegion({ guestPhysAddr: RAM, size: RAM_SIZE, userAddr: 0x7f00_0000_0000, backing: arrayBufferBacking(new ArrayBuffer(RAM_SIZE)) })]);
  const l = splitRingLayout(size, RAM);
  const drv = mem === undefined ? new SplitQueueDriver(m, size, l.descGpa, l.availGpa, l.usedGpa) : (null as unknown as SplitQueueDriver);
  const q = new SplitQueue(size);
  q.setMemory(m);
  q.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
  q.ready = true;
  return { mem: m, q, drv };
}

function throwsInflight(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof InflightError && re.test(e.message), String(re));
}

test('region size fits either layout, 64-byte aligned', () => {
  assert.equal(inflightQueueRegionSize(16), 576);
  assert.ok(inflightQueueRegionSize(256) >= INFLIGHT_PACKED_HEADER_SIZE + INFLIGHT_PACKED_DESC_SIZE * 256);
  assert.ok(inflightQueueRegionSize(256) >= INFLIGHT_SPLIT_HEADER_SIZE + INFLIGHT_SPLIT_DESC_SIZE * 256);
  assert.equal(inflightQueueRegionSize(1000) % 64, 0);
});

test('split region: spec wire offsets and update order (counter + inflight on pop; next, last_batch_head, then used_idx on used)', () => {
  const buf = new ArrayBuffer(inflightQueueRegionSize(8));
  const dv = new DataView(buf);
  const r = new SplitInflightRegion(buf, 0, buf.byteLength, 8);
  assert.equal(r.initialised, false);
  r.init(100);
  assert.equal(dv.getUint16(8, true), 1, 'version');
  assert.equal(dv.getUint16(10, true), 8, 'desc_num');
  assert.equal(dv.getUint16(14, true), 100, 'used_idx');
  const seen: InflightStep[] = [];
  let completing = 3;
  setInflightStepHook((s) => {
    seen.push(s);
    // At each step the region is in the state the spec prescribes for a crash there.
    if (s === 'before-used') assert.equal(dv.getUint8(16 + 16 * completing), 1, 'still in flight before the ring shows it');
    if (s === 'after-used') assert.equal(dv.getUint16(12, true), completing, 'last_batch_head set before the ring shows it');
  });
  try {
    r.mark(5);
    r.mark(3);
    assert.equal(dv.getUint8(16 + 16 * 5), 1, 'desc[5].inflight');
    assert.equal(dv.getBigUint64(16 + 16 * 5 + 8, true), 1n, 'desc[5].counter');
    assert.equal(dv.getBigUint64(16 + 16 * 3 + 8, true), 2n, 'desc[3].counter');
    r.beforeUsed(3);
    assert.equal(dv.getUint16(12, true), 3, 'last_batch_head');
    r.afterUsedBatch([3], 101);
    assert.equal(dv.getUint8(16 + 16 * 3), 0);
    assert.equal(dv.getUint16(14, true), 101);
    completing = 5;
    r.beforeUsed(5);
    assert.equal(dv.getUint16(16 + 16 * 5 + 6, true), 3, 'desc[5].next = previous last_batch_head');
  } finally {
    setInflightStepHook(null);
  }
  assert.deepEqual(seen, ['after-pop', 'after-pop', 'before-used', 'after-used', 'before-used']);
  // Crash after beforeUsed(5): the ring still shows 101 → 5 is in flight; at 102 → it reached the driver.
  const copy = buf.slice(0);
  assert.deepEqual(r.recover(101), [5]);
  assert.deepEqual(new SplitInflightRegion(copy, 0, copy.byteLength, 8).recover(102), []);
});

test('split queue with a region: a new queue resubmits the heads in flight in pop order, before new requests, and resumes after them', () => {
  const { mem, q, drv } = splitRig(8);
  const buf = new ArrayBuffer(inflightQueueRegionSize(8));
  q.startInflight(new SplitInflightRegion(buf, 0, buf.byteLength, 8));
  const heads = [0, 1, 2, 3].map((i) => drv.addChain([{ gpa: DATA + 0x100 * i, len: 4 }]));
  const popped = [0, 1, 2, 3].map(() => pop(q as never).headIndex);
  assert.deepEqual(popped, heads);
  q.addUsed(popped[2]!, 0);
  q.addUsed(popped[0]!, 0);
  const late = drv.addChain([{ gpa: DATA + 0x800, len: 4 }]);
  // The back-end dies; a new one adopts the region on the same rings.
  const again = splitRig(8, mem).q;
  again.setVringBase(drv.usedIdx);
  assert.equal(again.startInflight(new SplitInflightRegion(buf, 0, buf.byteLength, 8)), 2);
  assert.equal(again.vringBase, 4, 'next available index = used idx + requests in flight');
  assert.deepEqual([pop(again as never).headIndex, pop(again as never).headIndex, pop(again as never).headIndex], [popped[1], popped[3], late]);
  assert.equal(again.popDescriptorChain(), null);
});

test('split region: hostile contents are refused with clear errors', () => {
  const fresh = (): { buf: ArrayBuffer; dv: DataView; r: SplitInflightRegion } => {
    const buf = new ArrayBuffer(inflightQueueRegionSize(8));
    const r = new SplitInflightRegion(buf, 0, buf.byteLength, 8);
    r.init(0);
    return { buf, dv: new DataView(buf), r };
  };
  throwsInflight(() => new SplitInflightRegion(new ArrayBuffer(64), 0, 64, 8), /too small/);
  let f = fresh();
  f.dv.setUint16(8, 7, true);
  throwsInflight(() => f.r.recover(0), /version 7/);
  f = fresh();
  f.dv.setUint16(10, 16, true);
  throwsInflight(() => f.r.recover(0), /tracks 16 descriptors, the ring has 8/);
  f = fresh();
  f.dv.setUint8(16 + 16 * 2, 9);
  throwsInflight(() => f.r.recover(0), /inflight flag 9/);
  f = fresh();
  f.r.mark(1);
  f.r.mark(2);
  f.dv.setBigUint64(16 + 16 * 2 + 8, 1n, true);
  throwsInflight(() => f.r.recover(0), /same counter/);
  f = fresh();
  throwsInflight(() => f.r.recover(9), /9 entries past/);
  f = fresh();
  f.dv.setUint16(12, 200, true);
  throwsInflight(() => f.r.recover(1), /≥ queue size/);
});

test('packed queue with a region: out-of-order completions, then a new queue resumes at the recorded position and resubmits the rest with their buffers', () => {
  const mems = mapShared();
  try {
    const { q, drv } = packedRig(mems, 8);
    const buf = new ArrayBuffer(inflightQueueRegionSize(8));
    q.startInflight(new PackedInflightRegion(buf, 0, buf.byteLength, 8));
    const ids: number[] = [];
    for (let i = 0; i < 3; i++) ids.push(drv.addChain([{ gpa: DATA + 0x100 * i, len: 4 + i }], [{ gpa: DATA + 0x1000 + 0x100 * i, len: 16 }]));
    const chains = [0, 1, 2].map(() => pop(q).headIndex);
    assert.deepEqual(chains, ids);
    q.addUsed(ids[1]!, 16);
    // A second device queue on the same rings (a new driver would zero them).
    const again = new PackedQueue(8);
    again.setMemory(mems.devMem);
    again.setAddresses(q.descGpa, q.driverGpa, q.deviceGpa);
    again.ready = true;
    // A stale base (what QEMU has after losing the back-end) is overridden by the region's state.
    again.setVringBase(0);
    assert.equal(again.startInflight(new PackedInflightRegion(buf, 0, buf.byteLength, 8)), 2);
    assert.deepEqual(again.getState(), { nextAvail: 6, availWrap: true, nextUsed: 2, usedWrap: true });
    const a = pop(again);
    const b = pop(again);
    assert.deepEqual([a.headIndex, b.headIndex], [ids[0], ids[2]]);
    assert.equal(b.readableBytes, 6, 'the resubmitted chain has its original buffers');
    assert.equal(b.writableBytes, 16);
    assert.equal(again.popDescriptorChain(), null);
    again.addUsed(ids[2]!, 0);
    again.addUsed(ids[0]!, 0);
    const used = [drv.popUsed(), drv.popUsed(), drv.popUsed()].map((u) => u?.id);
    assert.deepEqual(used, [ids[1], ids[2], ids[0]]);
  } finally {
    mems.dispose();
  }
});

test('packed region: hostile contents are refused with clear errors', () => {
  const N = 4;
  const base = (): { buf: ArrayBuffer; dv: DataView; r: PackedInflightRegion } => {
    const buf = new ArrayBuffer(inflightQueueRegionSize(N));
    const r = new PackedInflightRegion(buf, 0, buf.byteLength, N);
    r.init(0, true);
    r.markDesc(0x1000, 8, 0, 0, true);
    return { buf, dv: new DataView(buf), r };
  };
  const d = (i: number): number => INFLIGHT_PACKED_HEADER_SIZE + INFLIGHT_PACKED_DESC_SIZE * i;
  const flags = (): number => 0x80; // an available descriptor for wrap 1
  assert.equal(base().r.recover(flags).chains.length, 1);
  let f = base();
  f.dv.setUint16(d(3) + 2, 1, true); // free list 1→2→3→1
  throwsInflight(() => f.r.recover(flags), /free list loops/);
  f = base();
  f.dv.setUint16(d(0) + 6, 0, true);
  throwsInflight(() => f.r.recover(flags), /chain of 0 descriptors/);
  f = base();
  f.dv.setUint16(d(0) + 6, 2, true); // the chain now runs into the free list
  throwsInflight(() => f.r.recover(flags), /belongs to two chains|last/);
  f = base();
  f.dv.setUint16(d(0) + 16, 9, true);
  throwsInflight(() => f.r.recover(flags), /buffer id 9/);
  f = base();
  f.dv.setUint8(d(2), 1); // a free entry claims to be in flight: cleared, not resubmitted
  assert.equal(f.r.recover(flags).chains.length, 1);
  f = base();
  f.dv.setUint16(12, 0xffff, true); // free_head: empty free list
  f.dv.setUint16(14, 0xffff, true);
  throwsInflight(() => f.r.recover(flags), /do not add up/);
  f = base();
  f.dv.setUint16(18, 77, true);
  throwsInflight(() => f.r.recover(flags), /old_used_idx 77/);
});

test('inflight area: allocated sealed; a front-end area that is too small, for too many queues, or beyond its file is refused', () => {
  const { area, fd, size } = InflightArea.allocate(2, 64, 2);
  try {
    assert.equal(size, InflightArea.sizeFor(2, 64));
    const info = sys.fileInfo(fd);
    assert.equal(info.size, size);
    assert.equal(info.seals & sys.F_SEAL_SHRINK, sys.F_SEAL_SHRINK, 'cannot shrink under our mapping');
    assert.equal(area.splitRegion(1, 64).initialised, false);
    assert.throws(() => area.splitRegion(2, 64), /not covered/);
    assert.throws(() => area.packedRegion(0, 128), /exceeds the inflight area's queue size/);
    const adopted = InflightArea.adopt(fd, BigInt(size), 0n, 2, 64, 2, null);
    adopted.close();
    throwsInflight(() => InflightArea.adopt(fd, 4096n, 0n, 2, 64, 2, null), /too small/);
    throwsInflight(() => InflightArea.adopt(fd, BigInt(size), 0n, 3, 64, 2, null), /3 queues: the device has 2/);
    throwsInflight(() => InflightArea.adopt(fd, BigInt(size), 0n, 1, 0, 2, null), /queue size 0/);
    assert.throws(() => InflightArea.adopt(fd, BigInt(size), 4096n, 2, 64, 2, null), /beyond|exceeds|outside|size/);
    throwsInflight(() => InflightArea.allocate(4, 64, 2), /4 queues/);
  } finally {
    area.close();
    sys.close(fd);
  }
});

/** Runs `fn`, which must stop at `at` (the hook throws there, as a crash would stop the process). */
function crashAt(at: InflightStep, fn: () => void): void {
  setInflightStepHook((s) => { if (s === at) throw new Error(`crash at ${s}`); });
  try {
    assert.throws(fn, new RegExp(`crash at ${at}`));
  } finally {
    setInflightStepHook(null);
  }
}

test('batched completions (addUsedDeferred + publishUsed): a crash after the batch reached the driver commits all of it, one before rolls all of it back', () => {
  for (const at of ['after-used', 'before-used'] as const) {
    // Split.
    const { mem, q, drv } = splitRig(8);
    const buf = new ArrayBuffer(inflightQueueRegionSize(8));
    q.startInflight(new SplitInflightRegion(buf, 0, buf.byteLength, 8));
    const heads = [0, 1, 2, 3].map((i) => drv.addChain([{ gpa: DATA + 0x100 * i, len: 4 }]));
    for (let i = 0; i < 4; i++) pop(q as never);
    q.addUsedDeferred(heads[2]!, 0);
    q.addUsedDeferred(heads[0]!, 0);
    if (at === 'after-used') crashAt(at, () => { q.addUsedDeferred(heads[1]!, 0); q.publishUsed(); });
    else crashAt(at, () => q.addUsedDeferred(heads[1]!, 0));
    const again = splitRig(8, mem).q;
    again.startInflight(new SplitInflightRegion(buf, 0, buf.byteLength, 8));
    const left = [];
    for (let c = again.popDescriptorChain(); c !== null; c = again.popDescriptorChain()) left.push(c.headIndex);
    assert.deepEqual(left, at === 'after-used' ? [heads[3]] : [heads[0], heads[1], heads[2], heads[3]], `split, crash ${at}`);
  }
  for (const at of ['after-used', 'before-used'] as const) {
    const mems = mapShared();
    try {
      const { q, drv } = packedRig(mems, 8);
      const buf = new ArrayBuffer(inflightQueueRegionSize(8));
      q.startInflight(new PackedInflightRegion(buf, 0, buf.byteLength, 8));
      const ids = [0, 1, 2, 3].map((i) => drv.addChain([{ gpa: DATA + 0x100 * i, len: 4 }]));
      for (let i = 0; i < 4; i++) pop(q);
      q.addUsedDeferred(ids[2]!, 0);
      q.addUsedDeferred(ids[0]!, 0);
      if (at === 'after-used') crashAt(at, () => { q.addUsedDeferred(ids[1]!, 0); q.publishUsed(); });
      else crashAt(at, () => q.addUsedDeferred(ids[1]!, 0));
      const again = new PackedQueue(8);
      again.setMemory(mems.devMem);
      again.setAddresses(q.descGpa, q.driverGpa, q.deviceGpa);
      again.ready = true;
      again.startInflight(new PackedInflightRegion(buf, 0, buf.byteLength, 8));
      const left = [];
      for (let c = again.popDescriptorChain(); c !== null; c = again.popDescriptorChain()) left.push(c.headIndex);
      if (at === 'after-used') {
        assert.deepEqual(left, [ids[3]], 'packed: the published batch is committed');
        assert.deepEqual(again.getState(), { nextAvail: 4, availWrap: true, nextUsed: 3, usedWrap: true });
      } else {
        // The batch never became visible (its first flags were not stored): everything is redone.
        assert.deepEqual(left, [ids[0], ids[1], ids[2], ids[3]], 'packed: the unpublished batch is rolled back');
        assert.deepEqual(again.getState(), { nextAvail: 4, availWrap: true, nextUsed: 0, usedWrap: true });
      }
    } finally {
      mems.dispose();
    }
  }
});
