import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RamDisk, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
} from '../../src/devices/blk/index.js';
import { VIRTIO_F_VERSION_1 } from '../../src/virtio/features.js';
import { eventfdRead } from '../../src/sys/index.js';
import { GuestMemory, mapGuestRegion } from '../../src/memory/index.js';
import { SplitQueueDriver, splitRingLayout } from '../../src/queue/index.js';
import { QueueServer, Vring } from '../../src/backend/index.js';
import { BlkRig, QSIZE, RAM, RAM_SIZE, pattern } from './blk-harness.js';

const MIB = 1 << 20;
const bit = (n: number): bigint => 1n << BigInt(n);

/** A RamDisk whose reads and writes wait until released, to observe requests in flight. */
class GatedDisk extends RamDisk {
  readonly pending: { op: string; go: () => void }[] = [];
  flushes = 0;
  failNext = false;
  private gate(op: string, run: () => Promise<void>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ op, go: () => { if (this.failNext) { this.failNext = false; reject(new Error('EIO (injected)')); } else run().then(resolve, reject); } });
    });
  }
  override readv(views: readonly Uint8Array[], offset: number): Promise<void> {
    return this.gate(`readv ${offset}`, () => super.readv(views, offset));
  }
  override writev(views: readonly Uint8Array[], offset: number): Promise<void> {
    return this.gate(`writev ${offset}`, () => super.writev(views, offset));
  }
  override flush(): Promise<void> {
    this.flushes++;
    return super.flush();
  }
  /** Releases the oldest pending operation. */
  releaseOne(): void {
    const p = this.pending.shift();
    assert.ok(p !== undefined, 'nothing pending');
    p.go();
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('completion is asynchronous: no used entry before the I/O finished; bounded in-flight resumes on completion', async (t) => {
  const disk = new GatedDisk({ size: MIB });
  const r = new BlkRig({ disk, maxInFlight: 2 });
  t.after(() => r.close());
  const reqs = [0, 1, 2, 3, 4].map((i) => r.submit(VIRTIO_BLK_T_OUT, i * 8, { out: [pattern(4096, i)] }));
  r.kick();
  await tick();
  assert.equal(r.server.inFlight, 2);
  assert.equal(disk.pending.length, 2);
  assert.equal(r.drv.usedIdx, 0, 'nothing acknowledged while the writes are pending');
  assert.equal(r.vrings[0]?.queue.vringBase, 2, 'only two chains popped');
  let quiesced = false;
  const q = r.server.quiesce().then(() => { quiesced = true; });
  disk.releaseOne();
  await tick();
  assert.equal(r.drv.usedIdx, 1);
  assert.equal(r.drv.popUsed()?.id, reqs[0]?.head);
  // The freed slot let the device pop the third request.
  assert.equal(r.vrings[0]?.queue.vringBase, 3);
  assert.equal(r.server.inFlight, 2);
  while (disk.pending.length > 0) {
    disk.releaseOne();
    await tick();
  }
  await q;
  assert.ok(quiesced);
  assert.equal(r.server.inFlight, 0);
  assert.equal(r.drv.usedIdx, 5);
  for (const [i, x] of reqs.entries()) {
    assert.equal(r.status(x), VIRTIO_BLK_S_OK);
    const b = new Uint8Array(4096);
    disk.readSync(b, i * 8 * 512);
    assert.deepEqual(b, pattern(4096, i));
  }
});

test('an I/O error becomes VIRTIO_BLK_S_IOERR with a log line; the queue keeps serving', async (t) => {
  const disk = new GatedDisk({ size: MIB });
  const r = new BlkRig({ disk });
  t.after(() => r.close());
  const bad = r.submit(VIRTIO_BLK_T_IN, 0, { inLens: [512] });
  const good = r.submit(VIRTIO_BLK_T_IN, 8, { inLens: [512] });
  r.kick();
  await tick();
  disk.failNext = true;
  disk.releaseOne();
  disk.releaseOne();
  await r.server.quiesce();
  assert.equal(r.status(bad), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(good), VIRTIO_BLK_S_OK);
  assert.ok(r.logger.has('IN', 'IOERR', 'EIO (injected)'));
});

test('ring reset waits for in-flight I/O and completions after it leave the ring untouched', async (t) => {
  const disk = new GatedDisk({ size: MIB });
  const r = new BlkRig({ disk });
  t.after(() => r.close());
  r.submit(VIRTIO_BLK_T_IN, 0, { inLens: [512] });
  r.kick();
  await tick();
  assert.equal(r.server.inFlight, 1);
  let reset = false;
  const p = r.server.reset().then(() => { reset = true; });
  await tick();
  assert.equal(reset, false, 'reset waits for the in-flight request');
  disk.releaseOne();
  await p;
  assert.equal(r.server.inFlight, 0);
  assert.equal(r.drv.usedIdx, 0, 'the abandoned request was not published after reset');
});

test('ring stopped (GET_VRING_BASE) during I/O: quiesce lets the request complete into the used ring, no new pops', async (t) => {
  const disk = new GatedDisk({ size: MIB });
  const r = new BlkRig({ disk });
  t.after(() => r.close());
  const a = r.submit(VIRTIO_BLK_T_OUT, 0, { out: [pattern(512, 1)] });
  r.kick();
  await tick();
  const v = r.vrings[0];
  assert.ok(v !== undefined);
  v.setStarted(false); // what the daemon does before awaiting the ring's quiesce()
  r.submit(VIRTIO_BLK_T_FLUSH, 0);
  r.kick();
  const q = r.server.quiesce();
  disk.releaseOne();
  await q;
  assert.deepEqual(r.drv.popUsed(), { id: a.head, len: 1 });
  assert.equal(r.drv.popUsed(), null);
  assert.equal(v.queue.vringBase, 1, 'the base covers exactly the acknowledged request');
});

test('cache mode: writethrough flushes each write before completing it; writeback does not', async (t) => {
  const disk = new GatedDisk({ size: MIB });
  // Features not yet acknowledged: FLUSH offered but not negotiated means writethrough.
  const r = new BlkRig({ disk }, false);
  t.after(() => r.close());
  const writeOnce = async (): Promise<void> => {
    r.submit(VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(512)] });
    r.kick();
    await tick();
    disk.releaseOne();
    await r.server.quiesce();
  };
  await writeOnce();
  assert.equal(disk.flushes, 1);
  r.backend.ackedFeatures(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE));
  await writeOnce();
  assert.equal(disk.flushes, 1, 'writeback (config writeback = 1): no implicit flush');
  r.backend.setConfig(32, new Uint8Array([0]));
  await writeOnce();
  assert.equal(disk.flushes, 2, 'driver switched to writethrough');
  // CONFIG_WCE without FLUSH: the device must start in writethrough (writeback reads 0).
  r.backend.ackedFeatures(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_CONFIG_WCE));
  assert.equal(r.backend.getConfig(32, 1)[0], 0);
  await r.backend.resetDevice();
  assert.equal(r.backend.getConfig(32, 1)[0], 1, 'reset restores the initial cache mode');
});

test('EVENT_IDX: interrupts only when used_event is crossed', async (t) => {
  const r = new BlkRig({ disk: new RamDisk({ size: MIB }) });
  t.after(() => r.close());
  const v = r.vrings[0];
  assert.ok(v !== undefined);
  v.queue.eventIdx = true;
  r.drv.eventIdx = true;
  r.drv.setUsedEvent(0);
  r.submit(VIRTIO_BLK_T_FLUSH, 0);
  await r.run();
  assert.ok(r.called(), 'first completion crosses used_event 0');
  r.drv.setUsedEvent(5);
  r.submit(VIRTIO_BLK_T_FLUSH, 0);
  await r.run();
  assert.equal(r.called(), false, 'used idx 2 does not cross used_event 5');
  assert.equal(r.drv.availEvent, 2, 'avail_event follows the consumed index');
});

test('completions delivered in one event-loop turn share one interrupt', async (t) => {
  const r = new BlkRig({ disk: new RamDisk({ size: MIB }) });
  t.after(() => r.close());
  for (let i = 0; i < 8; i++) r.submit(VIRTIO_BLK_T_IN, i, { inLens: [512] });
  assert.equal((await r.run()).length, 8);
  assert.equal(eventfdRead(r.callFd), 1n, 'eight used entries, one eventfd write');
});

test('guest memory replaced during I/O: the old mapping stays until the request completes, then goes', async (t) => {
  const disk = new GatedDisk({ size: MIB });
  await RamDisk.prototype.writev.call(disk, [pattern(4096, 4)], 0); // not gated
  const r = new BlkRig({ disk });
  t.after(() => r.close());
  const req = r.submit(VIRTIO_BLK_T_IN, 0, { inLens: [4096] });
  r.kick();
  await tick();
  const oldRegion = r.atomic.memory.regions[0];
  assert.ok(oldRegion !== undefined);
  // SET_MEM_TABLE with the same memfd at the same addresses: a new mapping replaces the old one.
  r.atomic.replace(new GuestMemory([mapGuestRegion({ guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 }, r.fd)]));
  r.vrings[0]?.setMemory(r.atomic);
  assert.ok((oldRegion.backing.windows[0]?.byteLength ?? 0) > 0, 'pinned by the in-flight request');
  disk.releaseOne();
  await r.server.quiesce();
  assert.equal(oldRegion.backing.windows[0]?.byteLength, 0, 'unmapped once the request released it');
  assert.equal(r.status(req), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(req), pattern(4096, 4));
  assert.deepEqual(r.drv.popUsed(), { id: req.head, len: 4097 });
});

test('multiple queues are served independently by queue index', async (t) => {
  const r = new BlkRig({ disk: new RamDisk({ size: MIB }), numQueues: 2 });
  t.after(() => r.close());
  const v1 = new Vring(1, QSIZE);
  const l = splitRingLayout(QSIZE, RAM + 0x8000);
  const drv1 = new SplitQueueDriver(r.drvMem, QSIZE, l.descGpa, l.availGpa, l.usedGpa);
  v1.setMemory(r.atomic);
  v1.queue.setAddresses(l.descGpa, l.availGpa, l.usedGpa);
  v1.setStarted(true);
  v1.setEnabled(true);
  t.after(() => v1.reset());
  const st = r.alloc(1);
  const hdr = r.alloc(16);
  r.drvMem.writeU32(hdr, VIRTIO_BLK_T_FLUSH);
  const head = drv1.addChain([{ gpa: hdr, len: 16 }], [{ gpa: st, len: 1 }]);
  const q0 = r.submit(VIRTIO_BLK_T_FLUSH, 0);
  const s1 = new QueueServer(v1, (chain) => r.backend.processChain(1, chain), { logger: r.logger });
  s1.kick();
  await s1.quiesce();
  assert.deepEqual(drv1.popUsed(), { id: head, len: 1 });
  assert.equal(r.drv.popUsed(), null, 'queue 0 not kicked, not processed');
  assert.deepEqual(await r.run(), [{ id: q0.head, len: 1 }]);
});
