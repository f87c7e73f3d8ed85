import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PackedQueue, PackedQueueDriver, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, SplitQueue, SplitQueueDriver,
  VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE, decodePackedState, encodePackedState, splitRingLayout,
  type DescriptorChain, type GuestBuffer, type VirtQueue, type VirtQueueDriver,
} from '../../src/queue/index.js';
import { DirtyLog, arrayBufferBacking } from '../../src/memory/index.js';
import { decodePackedVringBase, encodePackedVringBase } from '../../src/vhost-user/constants.js';
import { DATA, RAM, RAM_SIZE, mapShared, pop, rig, type Mems } from './packed-rig.js';

let mems: Mems;
before(() => {
  mems = mapShared();
});
after(() => {
  mems.dispose();
});

/** Buffer k of a chain built by `chainOf`: distinct addresses, len 8 + k. */
function chainOf(nRead: number, nWrite: number, salt: number): { r: GuestBuffer[]; w: GuestBuffer[] } {
  const r: GuestBuffer[] = [];
  const w: GuestBuffer[] = [];
  for (let k = 0; k < nRead; k++) r.push({ gpa: DATA + 0x1000 * k + salt, len: 8 + k });
  for (let k = 0; k < nWrite; k++) w.push({ gpa: DATA + 0x40000 + 0x1000 * k + salt, len: 16 + k });
  return { r, w };
}

test('single-descriptor chains round-trip across several wraps of the ring; the chain object is recycled', () => {
  const { q, drv, mems: m } = rig(mems, 8);
  assert.equal(q.popDescriptorChain(), null, 'zeroed ring: nothing available');
  let reuse: DescriptorChain | undefined;
  for (let i = 0; i < 8 * 5 + 3; i++) {
    m.drvMem.writeU32(DATA, i);
    const id = drv.addChain([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x100, len: 4 }]);
    assert.equal(q.hasPending(), true);
    const c = pop(q, reuse);
    if (reuse !== undefined) assert.equal(c, reuse, 'reused chain object');
    reuse = c;
    assert.equal(c.headIndex, id);
    assert.equal(c.reader.readU32(), i);
    c.writer.writeU32(i * 3);
    assert.equal(q.popDescriptorChain(c), null);
    assert.equal(q.inFlight, 1);
    q.addUsed(c.headIndex, c.writer.bytesWritten);
    assert.deepEqual(drv.popUsed(), { id, len: 4 });
    assert.equal(m.drvMem.readU32(DATA + 0x100), i * 3);
    assert.equal(drv.popUsed(), null);
  }
  // 2 descriptors per chain, 43 chains, size 8: positions and wrap counters agree on both sides.
  const s = q.getState();
  assert.deepEqual(s, { nextAvail: drv.nextAvailPos, availWrap: drv.availWrapCounter, nextUsed: drv.nextUsedPos, usedWrap: drv.usedWrapCounter });
  assert.equal(s.nextAvail, (43 * 2) % 8);
  assert.equal(s.availWrap, Math.floor((43 * 2) / 8) % 2 === 0);
  assert.equal(drv.freeCount, 8);
});

test('chains of 1..size descriptors, including ones crossing the end of the ring, keep order and contents', () => {
  const { q, drv, mems: m } = rig(mems, 8);
  for (let round = 0; round < 3; round++) {
    for (let n = 1; n <= 8; n++) {
      const nRead = Math.ceil(n / 2);
      const { r, w } = chainOf(nRead, n - nRead, round);
      for (const [k, b] of r.entries()) m.drvMem.write(b.gpa, new Uint8Array(b.len).fill(k + 1));
      const startPos = drv.nextAvailPos;
      const id = drv.addChain(r, w);
      const c = pop(q);
      assert.equal(c.headIndex, id);
      assert.equal(c.count, n, `chain of ${n} from position ${startPos}`);
      assert.equal(c.readableCount, nRead);
      assert.equal(c.indirect, false);
      for (let k = 0; k < n; k++) {
        const b = (k < nRead ? r[k] : w[k - nRead]) as GuestBuffer;
        assert.equal(c.addrs[k], b.gpa);
        assert.equal(c.lens[k], b.len);
        assert.equal(c.isWritable(k), k >= nRead);
      }
      const into = new Uint8Array(r.reduce((a, b) => a + b.len, 0));
      c.reader.read(into);
      assert.deepEqual([...into], r.flatMap((b, k) => new Array<number>(b.len).fill(k + 1)));
      q.addUsed(id, c.writableBytes);
      assert.deepEqual(drv.popUsed(), { id, len: c.writableBytes });
      assert.equal(drv.freeCount, 8);
    }
  }
});

test('indirect chains: table expanded, WRITE on the ring descriptor and NEXT/id in table entries ignored', () => {
  const { q, drv, mems: m } = rig(mems, 4);
  const table = DATA + 0x8000;
  m.drvMem.writeU32(DATA, 0xfeedf00d);
  for (let i = 0; i < 10; i++) {
    const id = drv.addIndirectChain(table, [{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x100, len: 16 }, { gpa: DATA + 0x200, len: 16 }]);
    const c = pop(q);
    assert.equal(c.headIndex, id);
    assert.equal(c.indirect, true);
    assert.equal(c.count, 3);
    assert.equal(c.readableCount, 1);
    assert.equal(c.writableBytes, 32);
    assert.equal(c.reader.readU32(), 0xfeedf00d);
    q.addUsed(id, 20);
    assert.deepEqual(drv.popUsed(), { id, len: 20 });
  }
  // One ring descriptor per indirect chain: 10 chains on a ring of 4 wrapped twice.
  assert.deepEqual(q.getState(), { nextAvail: 2, availWrap: true, nextUsed: 2, usedWrap: true });
  // Raw: ring descriptor with INDIRECT|WRITE, table entries with NEXT and ids set (ignored).
  drv.writeIndirectDesc(table, 0, DATA, 4, 1 /* NEXT */);
  drv.writeIndirectDesc(table, 1, DATA + 0x100, 8, VIRTQ_DESC_F_WRITE);
  m.drvMem.writeU16(table + 12, 0x7777);
  drv.writeDesc(2, table, 32, 3, PackedQueueDriver.availFlags(true) | 4 | VIRTQ_DESC_F_WRITE);
  const c = pop(q);
  assert.equal(c.headIndex, 3);
  assert.equal(c.count, 2);
  assert.equal(c.readableCount, 1);
});

test('buffer ids are reused after completion and the device accepts them again', () => {
  const { q, drv } = rig(mems, 4);
  const seen = new Map<number, number>();
  for (let i = 0; i < 40; i++) {
    const a = drv.addChain([{ gpa: DATA, len: 1 }]);
    const b = drv.addChain([{ gpa: DATA, len: 1 }]);
    assert.notEqual(a, b);
    const ca = pop(q);
    const idA = ca.headIndex;
    const cb = pop(q);
    q.addUsed(cb.headIndex, 0);
    q.addUsed(idA, 0);
    assert.deepEqual(drv.popUsed(), { id: b, len: 0 });
    assert.deepEqual(drv.popUsed(), { id: a, len: 0 });
    seen.set(a, (seen.get(a) ?? 0) + 1);
  }
  assert.ok([...seen.values()].some((v) => v > 1), 'some id was made available more than once');
  assert.equal(q.inFlight, 0);
});

test('out-of-order completion: used descriptors land at the used position, skipping by each chain length', () => {
  const { q, drv } = rig(mems, 8);
  for (let round = 0; round < 4; round++) {
    const ids = [drv.addChain([{ gpa: DATA, len: 1 }]), drv.addChain([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 0x10, len: 2 }]),
      drv.addChain([{ gpa: DATA, len: 1 }, { gpa: DATA + 4, len: 1 }], [{ gpa: DATA + 0x20, len: 3 }])];
    const chains = [pop(q), pop(q), pop(q)];
    assert.deepEqual(chains.map((c) => c.headIndex), ids);
    assert.equal(q.popDescriptorChain(), null, 'ring of 8 holds 6 descriptors in flight, the rest not yet available');
    assert.equal(drv.freeCount, 2);
    const order = [2, 0, 1];
    const posBefore = drv.nextUsedPos;
    for (const k of order) q.addUsed(ids[k] as number, 10 + k);
    for (const k of order) assert.deepEqual(drv.popUsed(), { id: ids[k], len: 10 + k });
    assert.equal(drv.popUsed(), null);
    assert.equal(drv.nextUsedPos, (posBefore + 6) % 8);
    assert.equal(drv.freeCount, 8);
    assert.equal(q.getState().nextUsed, drv.nextUsedPos);
  }
});

test('used descriptors: flags equal the device wrap counter, WRITE set only when len > 0', () => {
  const { q, drv, mems: m } = rig(mems, 2);
  const l = { descGpa: q.descGpa };
  for (let i = 0; i < 4; i++) {
    const pos = drv.nextAvailPos;
    const wrap = drv.availWrapCounter;
    const id = drv.addChain([{ gpa: DATA, len: 1 }]);
    q.addUsed(pop(q).headIndex, i % 2);
    const flags = m.drvMem.readU16(l.descGpa + 16 * pos + 14);
    assert.equal(flags, (wrap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0) | (i % 2 ? VIRTQ_DESC_F_WRITE : 0));
    assert.equal(m.drvMem.readU16(l.descGpa + 16 * pos + 12), id);
    assert.deepEqual(drv.popUsed(), { id, len: i % 2 });
  }
});

test('used-buffer notifications: driver area ENABLE, DISABLE, DESC without EVENT_IDX', () => {
  const { q, drv } = rig(mems, 8, false);
  const use = (): void => {
    drv.addChain([{ gpa: DATA, len: 1 }]);
    q.addUsed(pop(q).headIndex, 0);
    drv.popUsed();
  };
  use();
  assert.equal(q.needsNotification(), true, 'ENABLE (zeroed area)');
  drv.disableInterrupts();
  use();
  assert.equal(q.needsNotification(), false, 'DISABLE');
  drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 5, true);
  use();
  assert.equal(q.needsNotification(), true, 'DESC without EVENT_IDX falls back to notifying');
  drv.setDriverEvent(3, 0, false);
  assert.equal(q.needsNotification(), true, 'reserved value notifies');
});

test('used-buffer notifications with EVENT_IDX: DESC off_wrap gives the exact decisions, across the wrap', () => {
  const { q, drv } = rig(mems, 4, true);
  const complete = (n: number): void => {
    for (let i = 0; i < n; i++) drv.addChain([{ gpa: DATA, len: 1 }]);
    for (let i = 0; i < n; i++) q.addUsed(pop(q).headIndex, 0);
  };
  complete(1);
  assert.equal(q.needsNotification(), true, 'first check always notifies');
  drv.popUsed();
  // Ask for an interrupt when the used descriptor at position 2 (wrap 1) is written.
  drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 2, true);
  complete(1); // writes position 1
  assert.equal(q.needsNotification(), false, 'position 1 is before the event');
  complete(1); // writes position 2
  assert.equal(q.needsNotification(), true, 'position 2 is the event');
  complete(1); // position 3
  assert.equal(q.needsNotification(), false, 'past the event');
  while (drv.popUsed() !== null);
  // The driver asks for the next one (position 0, wrap 0: the next lap).
  drv.enableInterrupts();
  assert.deepEqual([drv.nextUsedPos, drv.usedWrapCounter], [0, false]);
  assert.equal(q.needsNotification(), false, 'nothing new used');
  complete(2); // positions 0 and 1 of the next lap
  assert.equal(q.needsNotification(), true, 'event at position 0 of lap wrap 0 was crossed');
  // Event one lap back (stale off_wrap of the previous lap): never crossed again.
  drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 3, true);
  complete(1);
  assert.equal(q.needsNotification(), false, 'stale event from the previous lap');
  // A batch that crosses the end of the ring and the event inside it.
  while (drv.popUsed() !== null);
  drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 0, true); // position 0 of the lap after the wrap (wrap 1)
  complete(3); // positions 3 (wrap 0), 0 and 1 (wrap 1)
  assert.equal(q.needsNotification(), true, 'event inside a batch that wrapped');
  drv.disableInterrupts();
  complete(1);
  assert.equal(q.needsNotification(), false, 'DISABLE wins over EVENT_IDX');
});

test('available-buffer notifications: device area ENABLE/DISABLE, enableNotification reports pending chains', () => {
  const { q, drv } = rig(mems, 8, false);
  assert.equal(drv.kickNeeded(), true, 'zeroed device area is ENABLE');
  q.disableNotification();
  assert.equal(drv.deviceEvent.flags, RING_EVENT_FLAGS_DISABLE);
  drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(drv.kickNeeded(), false);
  assert.equal(q.enableNotification(), true, 'a chain is already available');
  assert.equal(drv.deviceEvent.flags, RING_EVENT_FLAGS_ENABLE);
  q.addUsed(pop(q).headIndex, 0);
  assert.equal(q.enableNotification(), false, 'drained');
  drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(drv.kickNeeded(), true);
});

test('available-buffer notifications with EVENT_IDX: DESC at the next position to read, exact kick decisions', () => {
  const { q, drv } = rig(mems, 4, true);
  const drain = (): void => {
    for (let c = q.popDescriptorChain(); c !== null; c = q.popDescriptorChain()) q.addUsed(c.headIndex, 0);
    while (drv.popUsed() !== null);
  };
  assert.equal(q.enableNotification(), false);
  assert.deepEqual(drv.deviceEvent, { flags: RING_EVENT_FLAGS_DESC, off: 0, wrap: true });
  drv.addChain([{ gpa: DATA, len: 1 }]); // position 0
  assert.equal(drv.kickNeeded(), true, 'made position 0 available');
  drv.addChain([{ gpa: DATA, len: 1 }]); // position 1: device has not re-armed
  assert.equal(drv.kickNeeded(), false, 'event already passed');
  drain();
  assert.equal(q.enableNotification(), false);
  assert.deepEqual(drv.deviceEvent, { flags: RING_EVENT_FLAGS_DESC, off: 2, wrap: true });
  drv.addChain([{ gpa: DATA, len: 1 }], [{ gpa: DATA, len: 1 }, { gpa: DATA, len: 1 }]); // positions 2, 3, 0 (wrap flips)
  assert.equal(drv.kickNeeded(), true, 'chain covering the event position');
  drain();
  assert.equal(q.enableNotification(), false);
  assert.deepEqual(drv.deviceEvent, { flags: RING_EVENT_FLAGS_DESC, off: 1, wrap: false });
  q.disableNotification();
  drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(drv.kickNeeded(), false, 'DISABLE');
  assert.equal(q.enableNotification(), true, 'chain arrived while disabled');
});

test('vring base: packed encoding round-trips, matches vhost-user encodePackedVringBase, and resumes mid-ring', () => {
  for (const s of [
    { nextAvail: 0, availWrap: true, nextUsed: 0, usedWrap: true },
    { nextAvail: 5, availWrap: false, nextUsed: 3, usedWrap: true },
    { nextAvail: 32767, availWrap: true, nextUsed: 32767, usedWrap: false },
  ]) {
    const num = encodePackedState(s);
    assert.deepEqual(decodePackedState(num), s);
    assert.equal(num, encodePackedVringBase({ lastAvailIdx: s.nextAvail, lastAvailWrap: s.availWrap, usedIdx: s.nextUsed, usedWrap: s.usedWrap }));
    assert.deepEqual(decodePackedVringBase(num), { lastAvailIdx: s.nextAvail, lastAvailWrap: s.availWrap, usedIdx: s.nextUsed, usedWrap: s.usedWrap });
  }
  const { q, drv } = rig(mems, 8);
  assert.equal(q.vringBase, 0x8000_8000, 'initial state: positions 0, wrap counters 1');
  q.setVringBase(encodePackedState({ nextAvail: 6, availWrap: false, nextUsed: 6, usedWrap: false }));
  drv.setPositions(6, false);
  for (let i = 0; i < 5; i++) {
    const id = drv.addChain([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 8, len: 1 }]);
    q.addUsed(pop(q).headIndex, 1);
    assert.deepEqual(drv.popUsed(), { id, len: 1 });
  }
  // 6 + 5 * 2 descriptors on a ring of 8: two wraps, back to position 0 with wrap counters 0.
  assert.equal(q.vringBase, encodePackedState({ nextAvail: 0, availWrap: false, nextUsed: 0, usedWrap: false }));
  assert.throws(() => q.setVringBase(encodePackedState({ nextAvail: 8, availWrap: true, nextUsed: 0, usedWrap: true })), /not below the queue size/);
  q.reset();
  assert.equal(q.vringBase, 0x8000_8000);
  assert.equal(q.isValid(), false);
});

test('non-power-of-two sizes work; misaligned areas and bad sizes are refused', () => {
  const { q, drv } = rig(mems, 5);
  for (let i = 0; i < 17; i++) {
    const id = drv.addChain([{ gpa: DATA, len: 1 }, { gpa: DATA, len: 2 }]);
    q.addUsed(pop(q).headIndex, 0);
    assert.deepEqual(drv.popUsed(), { id, len: 0 });
  }
  assert.throws(() => new PackedQueue(0), /not in \[1, 32768\]/);
  assert.throws(() => new PackedQueue(32769), /not in \[1, 32768\]/);
  assert.throws(() => q.setSize(6), /exceeds the device maximum/);
  assert.throws(() => q.setAddresses(RAM + 8, RAM + 0x1000, RAM + 0x1004), /16\/4\/4 alignment/);
  assert.throws(() => q.setAddresses(RAM, RAM + 0x1002, RAM + 0x1004), /16\/4\/4 alignment/);
  assert.throws(() => q.setAddresses(RAM + RAM_SIZE - 0x20, RAM, RAM + 4), /descriptor ring/);
});

test('SplitQueue and PackedQueue (and their drivers) work through the VirtQueue and VirtQueueDriver interfaces', () => {
  const serve = (q: VirtQueue): number => {
    let n = 0;
    let reuse: DescriptorChain | undefined;
    do {
      q.disableNotification();
      for (let c = q.popDescriptorChain(reuse); c !== null; c = q.popDescriptorChain(reuse)) {
        reuse = c;
        c.writer.writeU8(c.reader.readU8() + 1);
        q.addUsed(c.headIndex, 1);
        n++;
      }
    } while (q.enableNotification());
    return n;
  };
  const { q: pq, drv: pd, mems: m } = rig(mems, 8);
  const sl = splitRingLayout(8, RAM + 0x4000);
  const sd = new SplitQueueDriver(m.drvMem, 8, sl.descGpa, sl.availGpa, sl.usedGpa);
  const sq = new SplitQueue(8);
  sq.setMemory(m.devMem);
  sq.setAddresses(sl.descGpa, sl.availGpa, sl.usedGpa);
  sq.ready = true;
  const pairs: [VirtQueue, VirtQueueDriver][] = [[pq, pd], [sq, sd]];
  for (const [q, d] of pairs) {
    m.drvMem.writeU8(DATA, 41);
    for (let i = 0; i < 3; i++) d.addChain([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 0x10 + i, len: 1 }]);
    assert.equal(serve(q), 3);
    for (let i = 0; i < 3; i++) assert.equal(d.popUsed()?.len, 1);
    assert.equal(m.drvMem.readU8(DATA + 0x12), 42);
  }
});

test('dirty logging: used descriptors logged at their place in the descriptor ring, device area writes at theirs', () => {
  const logBuf = new ArrayBuffer(64); // covers 512 pages = 2 MiB
  const devMem = mems.devMem.withDirtyLog(new DirtyLog(arrayBufferBacking(logBuf), 0, 64));
  const { q, drv } = rig({ devMem, drvMem: mems.drvMem, dispose: () => undefined }, 512);
  const bits = new Uint8Array(logBuf);
  const isSet = (gpa: number): boolean => ((bits[gpa >> 15] as number) >> ((gpa >> 12) & 7) & 1) === 1;
  // 512 descriptors: 8 KiB of ring over pages RAM and RAM + 0x1000; device area on the next page.
  drv.addChain([{ gpa: DATA, len: 1 }]);
  q.addUsed(pop(q).headIndex, 0);
  q.disableNotification();
  assert.equal(bits.some((b) => b !== 0), false, 'logging off: nothing marked');
  q.setUsedLog(q.deviceGpa);
  for (let i = 0; i < 300; i++) {
    drv.addChain([{ gpa: DATA, len: 1 }]);
    q.addUsed(pop(q).headIndex, 0);
    drv.popUsed();
  }
  assert.equal(isSet(q.descGpa), true);
  assert.equal(isSet(q.descGpa + 0x1000), true, 'used descriptors past position 256 are on the second page');
  assert.equal(isSet(q.deviceGpa), false);
  q.enableNotification();
  assert.equal(isSet(q.deviceGpa), true);
  assert.equal(isSet(DATA), false);
});

test('deferred used descriptors: invisible to the driver until one publish, then all reaped in order', () => {
  const { q, drv } = rig(mems, 8, true);
  const ids = [drv.addChain([{ gpa: DATA, len: 1 }]), drv.addChain([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 8, len: 4 }]), drv.addChain([{ gpa: DATA, len: 1 }])];
  const chains = [pop(q), pop(q), pop(q)].map((c) => c.headIndex);
  assert.deepEqual(chains, ids);
  q.addUsedDeferred(ids[1] as number, 4);
  q.addUsedDeferred(ids[0] as number, 0);
  assert.equal(drv.popUsed(), null, 'first used descriptor of the batch not yet published');
  q.publishUsed();
  assert.deepEqual(drv.popUsed(), { id: ids[1], len: 4 });
  assert.deepEqual(drv.popUsed(), { id: ids[0], len: 0 });
  assert.equal(drv.popUsed(), null);
  // needsNotification publishes a pending batch before deciding.
  drv.enableInterrupts();
  q.addUsedDeferred(ids[2] as number, 0);
  assert.equal(drv.hasUsed(), false);
  assert.equal(q.needsNotification(), true);
  assert.deepEqual(drv.popUsed(), { id: ids[2], len: 0 });
  // A batch that wraps the ring.
  for (let round = 0; round < 5; round++) {
    const got: number[] = [];
    for (let i = 0; i < 3; i++) got.push(drv.addChain([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 8, len: 1 }]));
    for (let c = q.popDescriptorChain(); c !== null; c = q.popDescriptorChain()) q.addUsedDeferred(c.headIndex, 1);
    assert.equal(drv.hasUsed(), false);
    q.publishUsed();
    assert.deepEqual([drv.popUsed()?.id, drv.popUsed()?.id, drv.popUsed()?.id], got);
  }
});
