// A hostile driver against the packed ring: every malformed chain gives a QueueError of the right
// kind; the device either completes the chain (sound extent and buffer id: consumed, headIndex =
// id, addUsed(id, 0) hands it back and the queue goes on) or stops (broken, ring untouched).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PackedQueueDriver, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE,
  type QueueErrorKind,
} from '../../src/queue/index.js';
import { DATA, RAM, RAM_SIZE, mapShared, pop, rig, throwsKind, type Mems, type Rig } from './packed-rig.js';

let mems: Mems;
before(() => {
  mems = mapShared();
});
after(() => {
  mems.dispose();
});

const AV1 = PackedQueueDriver.availFlags(true);
const TABLE = DATA + 0x8000;

/**
 * The chain the driver just made available is malformed in a way the device can complete: the
 * pop throws `kind` with headIndex = the buffer id, the chain is consumed, addUsed(id, 0) returns
 * it to the driver, and the next good chain is served.
 */
function expectCompleted(r: Rig, id: number, kind: QueueErrorKind): void {
  const e = throwsKind(() => r.q.popDescriptorChain(), kind);
  assert.equal(e.headIndex, id);
  assert.equal(r.q.broken, false);
  assert.equal(r.q.popDescriptorChain(), null, 'the bad chain was consumed');
  r.q.addUsed(id, 0);
  assert.deepEqual(r.drv.popUsed(), { id, len: 0 });
  const next = r.drv.addChain([{ gpa: DATA, len: 4 }]);
  const c = pop(r.q);
  assert.equal(c.headIndex, next);
  r.q.addUsed(next, 0);
  assert.deepEqual(r.drv.popUsed(), { id: next, len: 0 });
  assert.equal(r.drv.freeCount, r.drv.size);
}

/** The device must stop: the pop throws `kind` with no id, the queue is broken, the ring untouched. */
function expectStopped(r: Rig, kind: QueueErrorKind): void {
  const before = r.q.vringBase;
  const e = throwsKind(() => r.q.popDescriptorChain(), kind);
  assert.equal(e.headIndex, null);
  assert.equal(r.q.broken, true);
  assert.equal(r.q.vringBase, before, 'positions unchanged');
  assert.equal(r.q.popDescriptorChain(), null, 'a broken queue serves nothing');
}

test('head descriptor not available for the wrap counter: nothing to pop, no error, queue not broken', () => {
  const r = rig(mems, 4);
  // Marked for wrap 0, marked used (AVAIL = USED), both flags clear: none is available at wrap 1.
  for (const flags of [PackedQueueDriver.availFlags(false), VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED, 0]) {
    r.drv.writeDesc(0, DATA, 4, 0, flags);
    assert.equal(r.q.hasPending(), false);
    assert.equal(r.q.popDescriptorChain(), null);
    assert.equal(r.q.broken, false);
  }
  r.drv.writeDesc(0, DATA, 4, 0, AV1);
  assert.equal(pop(r.q).headIndex, 0);
});

test('a later descriptor of a chain not available (wrong wrap flags): stop', () => {
  const r = rig(mems, 4);
  r.drv.writeDesc(1, DATA, 4, 0, PackedQueueDriver.availFlags(false)); // wrong wrap for position 1
  r.drv.writeDesc(0, DATA, 4, 0, AV1 | VIRTQ_DESC_F_NEXT);
  expectStopped(r, 'descriptor-not-available');
});

test('a chain crossing the end of the ring must flip the expected wrap counter for its tail', () => {
  const r = rig(mems, 4);
  r.q.setState({ nextAvail: 3, availWrap: true, nextUsed: 3, usedWrap: true });
  // Tail at position 0 marked for wrap 1 (the old lap) instead of wrap 0: not available.
  r.drv.writeDesc(0, DATA, 4, 1, AV1);
  r.drv.writeDesc(3, DATA, 4, 1, AV1 | VIRTQ_DESC_F_NEXT);
  expectStopped(r, 'descriptor-not-available');
});

test('a chain with no end within the queue size (NEXT on every descriptor): stop', () => {
  const r = rig(mems, 4);
  for (let p = 3; p >= 0; p--) r.drv.writeDesc(p, DATA, 4, 0, AV1 | VIRTQ_DESC_F_NEXT);
  expectStopped(r, 'chain-too-long');
});

test('a buffer id ≥ the queue size: stop', () => {
  const r = rig(mems, 4);
  r.drv.writeDesc(0, DATA, 4, 4, AV1);
  expectStopped(r, 'bad-buffer-id');
  const r2 = rig(mems, 4);
  r2.drv.writeDesc(1, DATA, 4, 0xffff, AV1); // the id that counts is the last descriptor's
  r2.drv.writeDesc(0, DATA, 4, 0, AV1 | VIRTQ_DESC_F_NEXT);
  expectStopped(r2, 'bad-buffer-id');
});

test('a buffer id made available again while in flight: stop', () => {
  const r = rig(mems, 4);
  r.drv.writeDesc(0, DATA, 4, 2, AV1);
  assert.equal(pop(r.q).headIndex, 2);
  r.drv.writeDesc(1, DATA, 4, 2, AV1);
  expectStopped(r, 'buffer-id-in-use');
});

/** Position and wrap counter of the descriptor the driver published last. */
function lastPublished(r: Rig): { pos: number; wrap: boolean } {
  const p = r.drv.nextAvailPos;
  return p === 0 ? { pos: r.drv.size - 1, wrap: !r.drv.availWrapCounter } : { pos: p - 1, wrap: r.drv.availWrapCounter };
}

test('a driver lapping the device (positions of chains still in flight made available again): stop', () => {
  const r = rig(mems, 4);
  r.drv.writeDesc(1, DATA, 4, 0, AV1);
  r.drv.writeDesc(0, DATA, 4, 0, AV1 | VIRTQ_DESC_F_NEXT);
  assert.equal(pop(r.q).headIndex, 0); // positions 0-1 in flight
  r.drv.writeDesc(2, DATA, 4, 1, AV1);
  assert.equal(pop(r.q).headIndex, 1); // position 2 in flight
  // Positions 3 (wrap 1) and 0 (wrap 0, still held by buffer 0) as one chain with a fresh id.
  r.drv.writeDesc(0, DATA, 4, 2, PackedQueueDriver.availFlags(false));
  r.drv.writeDesc(3, DATA, 4, 2, AV1 | VIRTQ_DESC_F_NEXT);
  expectStopped(r, 'descriptor-not-available');
});

test('buffer out of guest memory, address ≥ 2^53, address + length wrapping past 2^64: completed', () => {
  const r = rig(mems, 4);
  expectCompleted(r, r.drv.addChain([{ gpa: RAM + RAM_SIZE - 2, len: 4 }]), 'out-of-range');
  expectCompleted(r, r.drv.addChain([{ gpa: 0, len: 4 }]), 'out-of-range');
  // Rewrite the descriptor the driver just published (same id and flags) with a bad address.
  const big = r.drv.addChain([{ gpa: DATA, len: 4 }]);
  let last = lastPublished(r);
  r.drv.writeDesc(last.pos, 2 ** 60, 4, big, PackedQueueDriver.availFlags(last.wrap));
  expectCompleted(r, big, 'out-of-range');
  const ov = r.drv.addChain([{ gpa: DATA, len: 4 }]);
  last = lastPublished(r);
  r.drv.writeDesc(last.pos, 0xffff_ffff_ffff_f000, 0x2000, ov, PackedQueueDriver.availFlags(last.wrap));
  expectCompleted(r, ov, 'overflow');
});

test('readable descriptor after a writable one, direct and indirect: completed', () => {
  const r = rig(mems, 4);
  const id = r.drv.addChain([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x10, len: 4 }]);
  const { pos, wrap } = lastPublished(r);
  r.drv.writeDesc(pos, DATA + 0x20, 4, id, PackedQueueDriver.availFlags(wrap)); // tail made readable
  const head = (pos + r.drv.size - 1) % r.drv.size;
  r.drv.writeDesc(head, DATA + 0x10, 4, id, PackedQueueDriver.availFlags(wrap) | VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT);
  expectCompleted(r, id, 'readable-after-writable');
  const ind = r.drv.addIndirectChain(TABLE, [{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x10, len: 4 }]);
  r.drv.writeIndirectDesc(TABLE, 0, DATA, 4, VIRTQ_DESC_F_WRITE);
  r.drv.writeIndirectDesc(TABLE, 1, DATA, 4, 0);
  expectCompleted(r, ind, 'readable-after-writable');
});

test('nested indirect table: completed', () => {
  const r = rig(mems, 4);
  const id = r.drv.addIndirectChain(TABLE, [{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x10, len: 4 }]);
  r.drv.writeIndirectDesc(TABLE, 1, TABLE + 0x100, 16, VIRTQ_DESC_F_INDIRECT);
  expectCompleted(r, id, 'nested-indirect');
});

test('indirect descriptor with NEXT, or linked after another descriptor: completed (whole list consumed)', () => {
  const r = rig(mems, 4);
  r.drv.writeIndirectDesc(TABLE, 0, DATA, 4, 0);
  // INDIRECT|NEXT at 0, then a plain tail at 1 carrying the id.
  r.drv.writeDesc(1, DATA, 4, 3, AV1);
  r.drv.writeDesc(0, TABLE, 16, 3, AV1 | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT);
  r.drv.setPositions(2, true, 0, true);
  const e = throwsKind(() => r.q.popDescriptorChain(), 'indirect-with-next');
  assert.equal(e.headIndex, 3);
  assert.deepEqual(r.q.getState(), { nextAvail: 2, availWrap: true, nextUsed: 0, usedWrap: true });
  r.q.addUsed(3, 0);
  assert.deepEqual(r.q.getState(), { nextAvail: 2, availWrap: true, nextUsed: 2, usedWrap: true }, 'used position skips both descriptors');
  // Plain head at 2, INDIRECT tail at 3.
  r.drv.writeDesc(3, TABLE, 16, 1, AV1 | VIRTQ_DESC_F_INDIRECT);
  r.drv.writeDesc(2, DATA, 4, 1, AV1 | VIRTQ_DESC_F_NEXT);
  const e2 = throwsKind(() => r.q.popDescriptorChain(), 'indirect-with-next');
  assert.equal(e2.headIndex, 1);
  r.q.addUsed(1, 0);
  assert.deepEqual(r.q.getState(), { nextAvail: 0, availWrap: false, nextUsed: 0, usedWrap: false });
});

test('indirect table length zero, not a multiple of 16, too long, or outside memory: completed', () => {
  const r = rig(mems, 4);
  for (const [len, gpa, kind] of [
    [0, TABLE, 'bad-indirect-len'], [17, TABLE, 'bad-indirect-len'], [16 * 1025, TABLE, 'bad-indirect-len'],
    [32, RAM + RAM_SIZE - 16, 'out-of-range'], [32, 2 ** 56, 'out-of-range'],
  ] as const) {
    const id = r.drv.addIndirectChain(TABLE, [{ gpa: DATA, len: 4 }, { gpa: DATA, len: 4 }]);
    const { pos, wrap } = lastPublished(r);
    r.drv.writeDesc(pos, gpa, len, id, PackedQueueDriver.availFlags(wrap) | VIRTQ_DESC_F_INDIRECT);
    expectCompleted(r, id, kind);
  }
});

test('addUsed refuses ids out of range, not in flight, or completed twice; a content error leaves the id in flight until completed', () => {
  const r = rig(mems, 4);
  for (const id of [-1, 4, 1.5, Number.NaN]) throwsKind(() => r.q.addUsed(id, 0), 'bad-buffer-id');
  throwsKind(() => r.q.addUsed(0, 0), 'bad-buffer-id');
  const id = r.drv.addChain([{ gpa: DATA, len: 4 }]);
  r.q.addUsed(pop(r.q).headIndex, 0);
  throwsKind(() => r.q.addUsed(id, 0), 'bad-buffer-id');
  const bad = r.drv.addChain([{ gpa: 0, len: 4 }]);
  throwsKind(() => r.q.popDescriptorChain(), 'out-of-range');
  assert.equal(r.q.inFlight, 1);
  r.q.addUsed(bad, 0);
  assert.equal(r.q.inFlight, 0);
});

test('a broken queue stays stopped until reset; unmapped rings are not-ready', () => {
  const r = rig(mems, 4);
  r.drv.writeDesc(0, DATA, 4, 9, AV1);
  expectStopped(r, 'bad-buffer-id');
  r.q.reset();
  assert.equal(r.q.broken, false);
  assert.equal(r.q.popDescriptorChain(), null, 'not ready after reset');
  throwsKind(() => r.q.addUsed(0, 0), 'not-ready');
  throwsKind(() => r.q.needsNotification(), 'not-ready');
  throwsKind(() => r.q.disableNotification(), 'not-ready');
});
