// Shared rig for the packed-queue tests: one memfd mapped twice (device view and driver view),
// so every ring access crosses real shared mappings as it does between QEMU and the daemon.
import assert from 'node:assert/strict';
import { GuestMemory, mapGuestRegion } from '../../src/memory/index.js';
import { PackedQueue, PackedQueueDriver, QueueError, packedRingLayout, type DescriptorChain, type QueueErrorKind } from '../../src/queue/index.js';
import { close, ftruncate, memfdCreate } from '../../src/sys/index.js';

export const RAM = 0x10000;
export const RAM_SIZE = 0x100000;
/** Data buffers live here, well above any ring. */
export const DATA = 0x80000;

export interface Mems { devMem: GuestMemory; drvMem: GuestMemory; dispose(): void }

/** Maps one memfd twice. */
export function mapShared(): Mems {
  const fd = memfdCreate('packed-queue-test');
  try {
    ftruncate(fd, RAM_SIZE);
    const desc = { guestPhysAddr: BigInt(RAM), memorySize: BigInt(RAM_SIZE), userAddr: 0x7f00_0000_0000n, mmapOffset: 0n };
    const devMem = new GuestMemory([mapGuestRegion(desc, fd)]);
    const drvMem = new GuestMemory([mapGuestRegion(desc, fd)]);
    return { devMem, drvMem, dispose: () => { for (const r of [...devMem.regions, ...drvMem.regions]) r.unmap(); } };
  } finally {
    close(fd);
  }
}

export interface Rig { q: PackedQueue; drv: PackedQueueDriver; mems: Mems }

/** A fresh device queue and driver of `size` over `mems` (rings zeroed by the driver). */
export function rig(mems: Mems, size = 8, eventIdx = false): Rig {
  const l = packedRingLayout(size, RAM);
  const drv = new PackedQueueDriver(mems.drvMem, size, l.descGpa, l.driverGpa, l.deviceGpa, { eventIdx });
  const q = new PackedQueue(size);
  q.setMemory(mems.devMem);
  q.setAddresses(l.descGpa, l.driverGpa, l.deviceGpa);
  q.eventIdx = eventIdx;
  q.ready = true;
  return { q, drv, mems };
}

/** Pops a chain that must be there. */
export function pop(q: PackedQueue, reuse?: DescriptorChain): DescriptorChain {
  const c = q.popDescriptorChain(reuse);
  assert.ok(c !== null, 'expected a chain');
  return c;
}

/** Asserts that `fn` throws a QueueError of `kind` and returns it. */
export function throwsKind(fn: () => unknown, kind: QueueErrorKind): QueueError {
  let caught: unknown = null;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof QueueError, `expected QueueError ${kind}, got ${String(caught)}`);
  assert.equal(caught.kind, kind, caught.message);
  return caught;
}
