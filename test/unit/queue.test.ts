import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DirtyLog, GuestMemory, GuestRegion, arrayBufferBacking, mapGuestRegion } from '../../src/memory/index.js';
import {
  QueueError, SplitQueue, SplitQueueDriver, VIRTQ_DESC_F_WRITE, splitRingLayout, vringNeedEvent,
  type DescriptorChain,
} from '../../src/queue/index.js';
import { close, ftruncate, memfdCreate } from '../../src/sys/index.js';

const RAM = 0x10000; // guest RAM starts here; gpa 0 is unmapped
const RAM_SIZE = 0x100000;
const DATA = 0x80000; // data buffers live above the rings

interface Rig { mem: GuestMemory; q: SplitQueue; drv: SplitQueueDriver }

function rig(size = 16, eventIdx = false, mem?: GuestMemory): Rig {
  const m = mem ?? new GuestMemory([new GuestRegion({ guestPhysAddr: RAM, size: RAM_SIZE, userAddr: 0x7f00_0000_0000, backing: arrayBufferBacking(new ArrayBuffer(RAM_SIZE)) })]);
  const l = splitRingLayout(size, RAM);
  const drv = new SplitQueueDriver(m, size, l.descGpa, l.availGpa, l.usedGpa, { eventIdx });
  const q = new SplitQueue();
  q.setSize(size);
  q.setMemory(m);
  q.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
  q.eventIdx = eventIdx;
  q.ready = true;
  return { mem: m, q, drv };
}

function pop(q: SplitQueue): DescriptorChain {
  const c = q.popDescriptorChain();
  assert.ok(c !== null, 'expected a chain');
  return c;
}

test('simple chain: readable request, writable response, used ring round trip', () => {
  const { mem, q, drv } = rig();
  assert.equal(q.popDescriptorChain(), null);
  mem.write(DATA, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
  const head = drv.addChain([{ gpa: DATA, len: 16 }], [{ gpa: DATA + 0x1000, len: 8 }]);
  const c = pop(q);
  assert.equal(c.headIndex, head);
  assert.equal(c.count, 2);
  assert.equal(c.readableCount, 1);
  assert.equal(c.readableBytes, 16);
  assert.equal(c.writableBytes, 8);
  assert.equal(c.reader.readU32(), 0x04030201);
  assert.equal(c.reader.readU64(), 0x0c0b0a0908070605n);
  assert.equal(c.reader.availableBytes, 4);
  assert.equal(c.reader.bytesRead, 12);
  assert.throws(() => c.reader.readU64(), (e: unknown) => e instanceof QueueError && e.kind === 'buffer-too-small');
  c.writer.writeU32(0xaabbccdd);
  c.writer.writeU8(0x42);
  assert.equal(c.writer.bytesWritten, 5);
  assert.equal(mem.readU32(DATA + 0x1000), 0xaabbccdd);
  assert.equal(mem.readU8(DATA + 0x1004), 0x42);
  assert.equal(q.popDescriptorChain(), null);
  q.addUsed(c.headIndex, c.writer.bytesWritten);
  assert.deepEqual(drv.popUsed(), { id: head, len: 5 });
  assert.equal(drv.popUsed(), null);
  assert.equal(drv.freeCount, 16);
});

test('multi-descriptor chain: scalars straddle buffers, segments are zero-copy views', () => {
  const { mem, q, drv } = rig();
  const src = Uint8Array.from({ length: 24 }, (_, i) => i);
  mem.write(DATA, src.subarray(0, 3));
  mem.write(DATA + 0x100, src.subarray(3, 10));
  mem.write(DATA + 0x200, src.subarray(10, 24));
  drv.addChain([{ gpa: DATA, len: 3 }, { gpa: DATA + 0x100, len: 0 }, { gpa: DATA + 0x100, len: 7 }, { gpa: DATA + 0x200, len: 14 }],
    [{ gpa: DATA + 0x300, len: 2 }, { gpa: DATA + 0x400, len: 100 }]);
  const c = pop(q);
  assert.equal(c.count, 6);
  assert.equal(c.reader.readU32(), 0x03020100, 'u32 across the 3-byte and 7-byte buffers');
  const into = new Uint8Array(6);
  c.reader.read(into);
  assert.deepEqual([...into], [4, 5, 6, 7, 8, 9]);
  const segs = c.reader.segments(14);
  assert.equal(segs.length, 1);
  (segs[0] as Uint8Array)[0] = 0xee; // a view, not a copy
  assert.equal(mem.readU8(DATA + 0x200), 0xee);
  assert.equal(c.reader.availableBytes, 0);
  c.writer.writeU32(0x11223344); // straddles 2 + 100
  assert.equal(mem.readU16(DATA + 0x300), 0x3344);
  assert.equal(mem.readU16(DATA + 0x400), 0x1122);
  const ws = c.writer.segments(50);
  assert.deepEqual(ws.map((s) => s.length), [50]);
  c.writer.skip(10);
  assert.equal(c.writer.bytesWritten, 64);
  assert.equal(c.writer.availableBytes, 38);
});

test('indirect chain: table expanded, write flag of the table descriptor ignored', () => {
  const { mem, q, drv } = rig();
  mem.write(DATA, Uint8Array.from([9, 8, 7, 6]));
  const table = DATA + 0x8000;
  const head = drv.addIndirectChain(table, [{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x100, len: 16 }, { gpa: DATA + 0x200, len: 16 }]);
  const c = pop(q);
  assert.equal(c.headIndex, head);
  assert.equal(c.indirect, true);
  assert.equal(c.count, 3);
  assert.equal(c.readableCount, 1);
  assert.equal(c.writableBytes, 32);
  assert.equal(c.reader.readU32(), 0x06070809);
  q.addUsed(head, 0);
  assert.deepEqual(drv.popUsed(), { id: head, len: 0 });
  // Same table behind a descriptor with WRITE set: still parsed the same.
  drv.writeDesc(5, table, 48, 4 | VIRTQ_DESC_F_WRITE, 0);
  drv.publish(5);
  const c2 = pop(q);
  assert.equal(c2.readableCount, 1);
  assert.equal(c2.count, 3);
});

test('chains can be recycled and the ring wraps past 65535', () => {
  const { q, drv } = rig(4);
  q.setVringBase(65533);
  drv.setRingIndices(65533);
  let reuse: DescriptorChain | undefined;
  for (let i = 0; i < 10; i++) {
    const head = drv.addChain([{ gpa: DATA + i, len: 1 }], [{ gpa: DATA + 0x100, len: 4 }]);
    const c = q.popDescriptorChain(reuse);
    assert.ok(c !== null);
    if (reuse !== undefined) assert.equal(c, reuse);
    reuse = c;
    assert.equal(c.headIndex, head);
    assert.equal(c.readableBytes, 1);
    q.addUsed(c.headIndex, 4);
    const u = drv.popUsed();
    assert.deepEqual(u, { id: head, len: 4 });
  }
  assert.equal(q.vringBase, (65533 + 10) & 0xffff);
  assert.equal(drv.usedIdx, (65533 + 10) & 0xffff);
});

test('vringNeedEvent matches the reference formula including wrap-around', () => {
  assert.equal(vringNeedEvent(0, 1, 0), true);
  assert.equal(vringNeedEvent(1, 1, 0), false);
  assert.equal(vringNeedEvent(65535, 0, 65535), true, 'event at 65535 crossed by 65535 -> 0');
  assert.equal(vringNeedEvent(65535, 65535, 65534), false);
  assert.equal(vringNeedEvent(0, 2, 65534), true);
  assert.equal(vringNeedEvent(5, 2, 65534), false);
  assert.equal(vringNeedEvent(3, 3, 3), false, 'nothing new');
});

test('EVENT_IDX: interrupt decisions follow used_event, including across 65535 -> 0', () => {
  const { q, drv } = rig(8, true);
  q.setVringBase(65533);
  drv.setRingIndices(65533);
  const serve = (): void => {
    drv.addChain([{ gpa: DATA, len: 1 }]);
    const c = pop(q);
    q.addUsed(c.headIndex, 0);
  };
  drv.setUsedEvent(65533);
  serve(); // used idx 65533 -> 65534 crosses event 65533
  assert.equal(q.needsNotification(), true);
  drv.setUsedEvent(65535);
  serve(); // 65534 -> 65535: event 65535 not yet passed
  assert.equal(q.needsNotification(), false);
  serve(); // 65535 -> 0 passes event 65535
  assert.equal(q.needsNotification(), true);
  assert.equal(q.needsNotification(), false, 'no new used entries since the last decision');
  drv.setUsedEvent(3);
  serve(); // 0 -> 1
  serve(); // 1 -> 2
  assert.equal(q.needsNotification(), false);
  serve(); // 2 -> 3
  serve(); // 3 -> 4 passes 3
  assert.equal(q.needsNotification(), true);
  // NO_INTERRUPT is ignored when EVENT_IDX is on.
  drv.setNoInterrupt(true);
  drv.setUsedEvent(4);
  serve();
  assert.equal(q.needsNotification(), true);
});

test('without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT decides', () => {
  const { q, drv } = rig(8, false);
  drv.addChain([{ gpa: DATA, len: 1 }]);
  q.addUsed(pop(q).headIndex, 0);
  assert.equal(q.needsNotification(), true);
  drv.setNoInterrupt(true);
  assert.equal(q.needsNotification(), false);
  drv.setNoInterrupt(false);
  assert.equal(q.needsNotification(), true);
});

test('notification suppression: NO_NOTIFY flag, avail_event, race-free enable', () => {
  const a = rig(8, false);
  assert.equal(a.drv.noNotify, false);
  a.q.disableNotification();
  assert.equal(a.drv.noNotify, true);
  a.drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(a.drv.kickNeeded(), false, 'device asked for no kicks');
  assert.equal(a.q.enableNotification(), true, 'work arrived while notifications were off');
  assert.equal(a.drv.noNotify, false);
  pop(a.q);
  assert.equal(a.q.enableNotification(), false);
  a.drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(a.drv.kickNeeded(), true);

  const b = rig(8, true);
  b.q.setVringBase(65535);
  b.drv.setRingIndices(65535);
  assert.equal(b.q.enableNotification(), false);
  assert.equal(b.drv.availEvent, 65535);
  b.drv.addChain([{ gpa: DATA, len: 1 }]); // avail 65535 -> 0 crosses avail_event 65535
  assert.equal(b.drv.kickNeeded(), true);
  b.q.disableNotification(); // EVENT_IDX: avail_event is simply left behind
  pop(b.q);
  b.drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(b.drv.kickNeeded(), false, 'avail_event 65535 already passed');
  assert.equal(b.q.enableNotification(), true);
  assert.equal(b.drv.availEvent, 0);
  pop(b.q);
  assert.equal(b.q.enableNotification(), false);
  assert.equal(b.drv.availEvent, 1);
  b.drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(b.drv.kickNeeded(), true);
});

test('configuration validation: size, alignment, ring outside or across regions', () => {
  const q = new SplitQueue(256);
  assert.throws(() => q.setSize(3), (e: unknown) => e instanceof QueueError && e.kind === 'invalid-size');
  assert.throws(() => q.setSize(512), (e: unknown) => e instanceof QueueError && e.kind === 'invalid-size');
  assert.throws(() => new SplitQueue(65536), (e: unknown) => e instanceof QueueError && e.kind === 'invalid-size');
  assert.throws(() => q.setAddresses(RAM + 8, RAM + 0x1000, RAM + 0x2000), (e: unknown) => e instanceof QueueError && e.kind === 'misaligned');
  assert.throws(() => q.setAddresses(RAM, RAM + 0x1001, RAM + 0x2000), (e: unknown) => e instanceof QueueError && e.kind === 'misaligned');
  assert.throws(() => q.setAddresses(RAM, RAM + 0x1000, RAM + 0x2002), (e: unknown) => e instanceof QueueError && e.kind === 'misaligned');
  const two = new GuestMemory([
    new GuestRegion({ guestPhysAddr: 0x10000, size: 0x1000, userAddr: 0, backing: arrayBufferBacking(new ArrayBuffer(0x1000)) }),
    new GuestRegion({ guestPhysAddr: 0x11000, size: 0x1000, userAddr: 0x1000, backing: arrayBufferBacking(new ArrayBuffer(0x1000)) }),
  ]);
  q.setSize(16);
  q.setMemory(two);
  // Used ring (6 + 128 bytes) starting 64 bytes before the region boundary spans both regions.
  assert.throws(() => q.setAddresses(0x10000, 0x10100, 0x10fc0), (e: unknown) => e instanceof QueueError && e.kind === 'bad-ring');
  assert.throws(() => q.setAddresses(0x20000, 0x10100, 0x10200), (e: unknown) => e instanceof QueueError && e.kind === 'bad-ring');
  q.ready = true;
  assert.equal(q.popDescriptorChain(), null, 'no views after a failed setup');
  q.setAddresses(0x10000, 0x10100, 0x10200);
  assert.equal(q.isValid(), true);
  q.reset();
  assert.equal(q.isValid(), false);
  assert.equal(q.size, 256);
});

test('state: setVringBase / getState / syncNextUsedFromRing', () => {
  const { q, drv } = rig(8);
  q.setState({ nextAvail: 7, nextUsed: 5 });
  assert.deepEqual(q.getState(), { nextAvail: 7, nextUsed: 5 });
  assert.equal(q.vringBase, 7);
  assert.throws(() => q.setState({ nextAvail: 65536, nextUsed: 0 }), QueueError);
  q.syncNextUsedFromRing();
  assert.equal(q.usedIdx(), drv.usedIdx);
});

test('dirty logging: used ring writes logged at log_guest_addr, chain.logWritten marks written pages', () => {
  const logBuf = new ArrayBuffer(64); // covers 512 pages = 2 MiB
  const base = new GuestMemory([new GuestRegion({ guestPhysAddr: RAM, size: RAM_SIZE, userAddr: 0, backing: arrayBufferBacking(new ArrayBuffer(RAM_SIZE)) })]);
  const mem = base.withDirtyLog(new DirtyLog(arrayBufferBacking(logBuf), 0, 64));
  const { q, drv } = rig(16, false, mem);
  const l = splitRingLayout(16, RAM);
  q.setUsedLog(l.usedGpa);
  drv.addChain([], [{ gpa: DATA + 0x3000, len: 0x2000 }]); // pages 0x83, 0x84
  const c = pop(q);
  c.writer.segments(0x1001);
  c.logWritten(0x1001);
  q.addUsed(c.headIndex, 0x1001);
  const bits = new Uint8Array(logBuf);
  const isSet = (gpa: number): boolean => ((bits[gpa >> 15] as number) >> ((gpa >> 12) & 7) & 1) === 1;
  assert.equal(isSet(DATA + 0x3000), true);
  assert.equal(isSet(DATA + 0x4000), true);
  assert.equal(isSet(DATA + 0x5000), false);
  assert.equal(isSet(l.usedGpa), true);
  assert.equal(isSet(DATA), false);
});

test('memfd-backed ring: device and driver see each other through separate mappings', () => {
  const fd = memfdCreate('queue-test');
  try {
    ftruncate(fd, RAM_SIZE);
    const desc = { guestPhysAddr: BigInt(RAM), memorySize: BigInt(RAM_SIZE), userAddr: 0x7f00_0000_0000n, mmapOffset: 0n };
    const devMem = new GuestMemory([mapGuestRegion(desc, fd)]);
    const drvMem = new GuestMemory([mapGuestRegion(desc, fd)]);
    const l = splitRingLayout(256, RAM);
    const drv = new SplitQueueDriver(drvMem, 256, l.descGpa, l.availGpa, l.usedGpa);
    const q = new SplitQueue(256);
    q.setMemory(devMem);
    q.setAddresses(devMem.uvaToGpa(0x7f00_0000_0000 + (l.descGpa - RAM), 16 * 256), l.availGpa, l.usedGpa);
    q.ready = true;
    drvMem.write(DATA, new TextEncoder().encode('hello'));
    const head = drv.addChain([{ gpa: DATA, len: 5 }], [{ gpa: DATA + 0x10, len: 5 }]);
    const c = pop(q);
    const buf = new Uint8Array(5);
    c.reader.read(buf);
    c.writer.write(buf.reverse());
    q.addUsed(c.headIndex, c.writer.bytesWritten);
    assert.deepEqual(drv.popUsed(), { id: head, len: 5 });
    assert.equal(new TextDecoder().decode(drvMem.translate(DATA + 0x10, 5)), 'olleh');
    for (const r of [...devMem.regions, ...drvMem.regions]) r.unmap();
  } finally {
    close(fd);
  }
});
