import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory, GuestRegion, arrayBufferBacking } from '../../src/memory/index.js';
import {
  QueueError, SplitQueue, SplitQueueDriver, VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE, splitRingLayout, type QueueErrorKind,
} from '../../src/queue/index.js';

const RAM = 0x10000;
const RAM_SIZE = 0x100000;
const DATA = 0x80000;
const TABLE = 0x90000;
const SIZE = 16;

function rig(size = SIZE): { q: SplitQueue; drv: SplitQueueDriver; mem: GuestMemory } {
  const mem = new GuestMemory([new GuestRegion({ guestPhysAddr: RAM, size: RAM_SIZE, userAddr: 0, backing: arrayBufferBacking(new ArrayBuffer(RAM_SIZE)) })]);
  const l = splitRingLayout(size, RAM);
  const drv = new SplitQueueDriver(mem, size, l.descGpa, l.availGpa, l.usedGpa);
  const q = new SplitQueue(size);
  q.setMemory(mem);
  q.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
  q.ready = true;
  return { q, drv, mem };
}

function popError(q: SplitQueue): QueueError {
  try {
    q.popDescriptorChain();
  } catch (e) {
    if (e instanceof QueueError) return e;
    throw e;
  }
  assert.fail('expected popDescriptorChain to throw a QueueError');
}

/** After a bad chain the device completes it with len 0 and the queue must keep serving. */
function completeAndServe(q: SplitQueue, drv: SplitQueueDriver, err: QueueError, head: number): void {
  assert.equal(err.headIndex, head);
  q.addUsed(head, 0);
  assert.deepEqual(drv.popUsed(), { id: head, len: 0 });
  const good = drv.addChain([{ gpa: DATA, len: 8 }], [{ gpa: DATA + 0x100, len: 8 }]);
  const c = q.popDescriptorChain();
  assert.ok(c !== null);
  assert.equal(c.headIndex, good);
  c.writer.writeU32(1);
  q.addUsed(c.headIndex, 4);
  assert.deepEqual(drv.popUsed(), { id: good, len: 4 });
  assert.equal(q.popDescriptorChain(), null);
}

interface Case {
  name: string;
  kind: QueueErrorKind;
  /** Writes raw descriptors (indices ≥ 10 are never handed out by addChain here) and returns the head. */
  build(drv: SplitQueueDriver): number;
}

const cases: Case[] = [
  { name: 'self loop', kind: 'chain-too-long', build: (d) => { d.writeDesc(10, DATA, 4, NEXT, 10); return 10; } },
  { name: 'two-descriptor cycle', kind: 'chain-too-long', build: (d) => { d.writeDesc(10, DATA, 4, NEXT, 11); d.writeDesc(11, DATA, 4, NEXT, 10); return 10; } },
  { name: 'next index ≥ queue size', kind: 'bad-index', build: (d) => { d.writeDesc(10, DATA, 4, NEXT, SIZE); return 10; } },
  { name: 'indirect inside indirect', kind: 'nested-indirect', build: (d) => {
    d.writeIndirectDesc(TABLE, 0, DATA, 4, NEXT, 1);
    d.writeIndirectDesc(TABLE, 1, TABLE + 0x100, 16, IND, 0);
    d.writeDesc(10, TABLE, 32, IND, 0); return 10;
  } },
  { name: 'INDIRECT together with NEXT', kind: 'indirect-with-next', build: (d) => {
    d.writeIndirectDesc(TABLE, 0, DATA, 4, 0, 0);
    d.writeDesc(10, TABLE, 16, IND | NEXT, 11); d.writeDesc(11, DATA, 4, 0, 0); return 10;
  } },
  { name: 'indirect table of length 0', kind: 'bad-indirect-len', build: (d) => { d.writeDesc(10, TABLE, 0, IND, 0); return 10; } },
  { name: 'indirect table length not a multiple of 16', kind: 'bad-indirect-len', build: (d) => { d.writeDesc(10, TABLE, 24, IND, 0); return 10; } },
  { name: 'indirect table longer than max(queue size, 1024) entries', kind: 'bad-indirect-len', build: (d) => { d.writeDesc(10, TABLE, 16 * 1025, IND, 0); return 10; } },
  { name: 'indirect table outside guest memory', kind: 'out-of-range', build: (d) => { d.writeDesc(10, RAM + RAM_SIZE - 16, 32, IND, 0); return 10; } },
  { name: 'loop inside an indirect table', kind: 'chain-too-long', build: (d) => {
    d.writeIndirectDesc(TABLE, 0, DATA, 4, NEXT, 1);
    d.writeIndirectDesc(TABLE, 1, DATA, 4, NEXT, 0);
    d.writeDesc(10, TABLE, 32, IND, 0); return 10;
  } },
  { name: 'indirect next beyond the table', kind: 'bad-index', build: (d) => {
    d.writeIndirectDesc(TABLE, 0, DATA, 4, NEXT, 2);
    d.writeIndirectDesc(TABLE, 1, DATA, 4, 0, 0);
    d.writeDesc(10, TABLE, 32, IND, 0); return 10;
  } },
  { name: 'readable after writable', kind: 'readable-after-writable', build: (d) => {
    d.writeDesc(10, DATA, 4, WRITE | NEXT, 11); d.writeDesc(11, DATA, 4, 0, 0); return 10;
  } },
  { name: 'readable after writable inside an indirect table', kind: 'readable-after-writable', build: (d) => {
    d.writeIndirectDesc(TABLE, 0, DATA, 4, WRITE | NEXT, 1);
    d.writeIndirectDesc(TABLE, 1, DATA, 4, 0, 0);
    d.writeDesc(10, TABLE, 32, IND, 0); return 10;
  } },
  { name: 'buffer in unmapped guest memory', kind: 'out-of-range', build: (d) => { d.writeDesc(10, 0x1000, 4, 0, 0); return 10; } },
  { name: 'buffer running one byte past the end of guest memory', kind: 'out-of-range', build: (d) => {
    d.writeDesc(10, DATA, 4, NEXT, 11); d.writeDesc(11, RAM + RAM_SIZE - 7, 8, WRITE, 0); return 10;
  } },
  { name: 'addr + len wraps past 2^64', kind: 'overflow', build: (d) => { d.writeDesc(10, 2 ** 64 - 0x1000, 0x2000, 0, 0); return 10; } },
  { name: 'address above 2^53', kind: 'out-of-range', build: (d) => { d.writeDesc(10, 2 ** 60, 4, 0, 0); return 10; } },
];

for (const c of cases) {
  test(`hostile chain: ${c.name} -> ${c.kind}, queue keeps serving`, () => {
    const { q, drv } = rig();
    const head = c.build(drv);
    drv.publish(head);
    const err = popError(q);
    assert.equal(err.kind, c.kind, err.message);
    completeAndServe(q, drv, err, head);
  });
}

test('hostile chain: a chain longer than the queue size (loop through every descriptor)', () => {
  const { q, drv } = rig(8);
  for (let i = 0; i < 8; i++) drv.writeDesc(i, DATA, 1, NEXT, (i + 1) % 8);
  drv.publish(3);
  const err = popError(q);
  assert.equal(err.kind, 'chain-too-long');
  assert.equal(err.headIndex, 3);
});

test('hostile chain: a chain of exactly queue size descriptors is accepted', () => {
  const { q, drv } = rig(8);
  for (let i = 0; i < 8; i++) drv.writeDesc(i, DATA + i, 1, i < 7 ? NEXT : WRITE, i + 1);
  drv.publish(0);
  const c = q.popDescriptorChain();
  assert.ok(c !== null);
  assert.equal(c.count, 8);
  assert.equal(c.readableCount, 7);
});

test('hostile ring: head index ≥ queue size has no head to complete; the next entry is served', () => {
  const { q, drv } = rig();
  drv.publish(SIZE + 3);
  const err = popError(q);
  assert.equal(err.kind, 'bad-index');
  assert.equal(err.headIndex, null);
  const good = drv.addChain([{ gpa: DATA, len: 1 }]);
  assert.equal(q.popDescriptorChain()?.headIndex, good);
});

test('hostile ring: avail idx jumping more than queue size ahead; device marks the queue broken', () => {
  const { q, drv } = rig();
  drv.setAvailIdx(SIZE + 1);
  const err = popError(q);
  assert.equal(err.kind, 'avail-idx-jump');
  assert.equal(err.headIndex, null);
  assert.equal(q.vringBase, 0, 'nothing consumed');
  assert.equal(popError(q).kind, 'avail-idx-jump', 'still refused on retry');
  q.broken = true;
  assert.equal(q.popDescriptorChain(), null);
  // Exactly queue size ahead is legal.
  const ok = rig();
  for (let i = 0; i < SIZE; i++) ok.drv.addChain([{ gpa: DATA, len: 1 }]);
  let n = 0;
  while (ok.q.popDescriptorChain() !== null) n++;
  assert.equal(n, SIZE);
});

test('hostile completion: addUsed with an id ≥ queue size is refused', () => {
  const { q } = rig();
  assert.throws(() => q.addUsed(SIZE, 0), (e: unknown) => e instanceof QueueError && e.kind === 'bad-index');
});

test('descriptor contents are copied at pop: later driver rewrites do not affect the chain', () => {
  const { q, drv, mem } = rig();
  mem.writeU32(DATA, 0x01020304);
  drv.writeDesc(10, DATA, 4, 0, 0);
  drv.publish(10);
  const c = q.popDescriptorChain();
  assert.ok(c !== null);
  drv.writeDesc(10, 0x1000, 0xffff_ffff, 0, 0); // now points outside memory
  assert.equal(c.reader.readU32(), 0x01020304);
});
