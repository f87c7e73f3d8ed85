// Loopback: VhostUserDaemon serving a small test device to our Frontend over a real Unix socket,
// with guest memory in a memfd and split rings driven from the test: the ring states of the spec
// (start on kick, stop on GET_VRING_BASE, enable/disable), reconnect, listeners and exit events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue } from '../../src/driver/frontend-driver.js';
import { VhostUserDaemon, type VhostUserBackend, type Vring } from '../../src/backend/index.js';
import type { GuestMemoryAtomic } from '../../src/memory/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../src/virtio/features.js';
import { silentLogger } from '../../src/log.js';
import { Signal, kickHandled } from '../helpers/events.js';

const bit = (n: number): bigint => 1n << BigInt(n);
const LISTENER_EVENT = 100;

/** Reverses the bytes of each request into its writable part. */
class ReverseDevice implements VhostUserBackend {
  processed = 0;
  eventIdx = false;
  resets = 0;
  listenerEvents = 0;
  memoryUpdates = 0;
  exitFd = sys.eventfd();
  /** Notified on every reset and listener event, so tests await them instead of polling. */
  readonly changed = new Signal();
  numQueues() { return 2; }
  maxQueueSize() { return 256; }
  features() { return bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VHOST_USER_F_PROTOCOL_FEATURES); }
  protocolFeatures() {
    return protocolFeatureMask(ProtocolFeature.MQ) | protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.CONFIG) |
      protocolFeatureMask(ProtocolFeature.STATUS);
  }
  setEventIdx(on: boolean) { this.eventIdx = on; }
  updateMemory(_m: GuestMemoryAtomic) { this.memoryUpdates++; }
  getConfig(offset: number, size: number) {
    const cfg = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    if (offset + size > cfg.length) throw new RangeError('config out of range');
    return cfg.slice(offset, offset + size);
  }
  queuesPerThread() { return [0b01, 0b10]; }
  exitEvent(t: number) { return t === 0 ? this.exitFd : null; }
  handleEvent(ev: number, _evset: number, vrings: readonly Vring[]) {
    if (ev === LISTENER_EVENT) { this.listenerEvents++; this.changed.notify(); return; }
    const vring = vrings.find((v) => v.index === ev);
    assert.ok(vring, `event ${ev} delivered to the thread that owns it`);
    const q = vring.queue;
    do {
      q.disableNotification();
      for (let chain = q.popDescriptorChain(); chain !== null; chain = q.popDescriptorChain()) {
        const input = new Uint8Array(chain.readableBytes);
        chain.reader.read(input);
        input.reverse();
        const n = Math.min(input.length, chain.writableBytes);
        chain.writer.write(input.subarray(0, n));
        q.addUsed(chain.headIndex, n);
        this.processed++;
      }
      vring.signalUsedIfNeeded();
    } while (q.enableNotification());
  }
  resetDevice() { this.resets++; this.changed.notify(); }
}

async function negotiate(fe: Frontend, dev: ReverseDevice, mem: FrontendMemory, eventIdx: boolean) {
  const features = await fe.getFeatures();
  await fe.setFeatures(features & (eventIdx ? ~0n : ~bit(VIRTIO_RING_F_EVENT_IDX)));
  await fe.setProtocolFeatures(await fe.getProtocolFeatures());
  await fe.setOwner();
  await fe.setMemTable(mem.regions());
  assert.equal(dev.eventIdx, eventIdx);
}

function put(mem: FrontendMemory, gpa: number, text: string): void {
  mem.memory.write(gpa, Buffer.from(text));
}

function setup(t: { after(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'vu-daemon-'));
  const sock = join(dir, 'dev.sock');
  const dev = new ReverseDevice();
  const daemon = new VhostUserDaemon('reverse', dev, { logger: silentLogger });
  daemon.serve(sock);
  const mem = new FrontendMemory(1 << 20);
  t.after(() => {
    mem.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { sock, dev, daemon, mem };
}

for (const eventIdx of [false, true]) {
  test(`daemon loopback: requests flow, ring states follow the spec (event_idx=${eventIdx})`, async (t) => {
    const before = sys.openFdCount();
    const { sock, dev, daemon, mem } = setup(t);
    const fe = await Frontend.connect(sock);
    await negotiate(fe, dev, mem, eventIdx);
    assert.deepEqual(Array.from(await fe.getConfig(2, 3)), [3, 4, 5]);
    await assert.rejects(fe.getConfig(6, 4), /failure/, 'out-of-range config read is refused, not fatal');
    assert.equal(await fe.getQueueNum(), 2);

    const q0 = await setupQueue(fe, mem, 0, 256, 0x10000, { eventIdx, enable: true });
    const q1 = await setupQueue(fe, mem, 1, 256, 0x20000, { eventIdx, enable: false });
    assert.equal(daemon.getEpollHandlers().length, 2);

    // A request on the enabled ring is served.
    put(mem, 0x40000, 'hello vhost');
    q0.driver.addChain([{ gpa: 0x40000, len: 11 }], [{ gpa: 0x41000, len: 64 }]);
    q0.kick(true);
    assert.deepEqual(await q0.nextUsed(), { id: 0, len: 11 });
    assert.equal(Buffer.from(mem.memory.translate(0x41000, 11)).toString(), 'tsohv olleh');

    // Started but disabled: the kick is consumed, nothing is processed...
    put(mem, 0x42000, 'abc');
    q1.driver.addChain([{ gpa: 0x42000, len: 3 }], [{ gpa: 0x43000, len: 3 }]);
    q1.kick(true);
    // The daemon runs on this thread: a round trip after the kick orders its kick handling first.
    assert.ok(await kickHandled(q1.kickFd, () => fe.getQueueNum()), 'the disabled ring consumed the kick');
    assert.equal(q1.driver.popUsed(), null, 'disabled ring must not be processed');
    // ...until the ring is enabled, which processes what was queued.
    await fe.setVringEnable(1, true);
    assert.deepEqual(await q1.nextUsed(), { id: 0, len: 3 });
    assert.equal(Buffer.from(mem.memory.translate(0x43000, 3)).toString(), 'cba');

    // Many requests, kicks only when suppression allows.
    for (let i = 0; i < 100; i++) {
      put(mem, 0x50000 + i * 16, `req-${i}`);
      q0.driver.addChain([{ gpa: 0x50000 + i * 16, len: `req-${i}`.length }], [{ gpa: 0x60000 + i * 16, len: 16 }]);
      q0.kick();
      await q0.nextUsed();
    }
    assert.equal(Buffer.from(mem.memory.translate(0x60000 + 42 * 16, 6)).toString(), '24-qer');

    // QEMU's stop sequence (VM stop, migration): status 0, then GET_VRING_BASE, which stops the
    // ring and must return the real next available index, not a reset one.
    await fe.setStatus(0x0f);
    await fe.setStatus(0);
    assert.equal(await fe.getStatus(), 0);
    assert.equal(await fe.getVringBase(0), 101);
    put(mem, 0x44000, 'zz');
    q0.driver.addChain([{ gpa: 0x44000, len: 2 }], [{ gpa: 0x45000, len: 2 }]);
    sys.eventfdWrite(q0.kickFd, 1);
    // Same-thread daemon: once this round trip returns, a kick it watched would have been handled.
    await fe.getQueueNum();
    assert.equal(q0.driver.popUsed(), null, 'a stopped ring must not be processed');

    assert.equal(dev.processed, 102);
    fe.close();
    // The daemon resets the device after the front-end left, then accepts the next one.
    await dev.changed.until(() => dev.resets > 0, 5000, 'the device reset after the front-end left');
    assert.equal(dev.resets, 1);
    const fe2 = await Frontend.connect(sock);
    await negotiate(fe2, dev, mem, eventIdx);
    const q0b = await setupQueue(fe2, mem, 0, 128, 0x70000, { eventIdx, enable: true });
    put(mem, 0x46000, 'again');
    q0b.driver.addChain([{ gpa: 0x46000, len: 5 }], [{ gpa: 0x47000, len: 5 }]);
    q0b.kick(true);
    assert.deepEqual(await q0b.nextUsed(), { id: 0, len: 5 });
    assert.equal(daemon.connections, 2);

    fe2.close();
    await daemon.stop();
    assert.equal(existsSync(sock), false, 'socket unlinked on stop');
    for (const q of [q0, q1, q0b]) q.close();
    sys.close(dev.exitFd);
    mem.close();
    assert.equal(sys.openFdCount(), before, 'fd leak');
  });
}

test('daemon loopback: hostile ring addresses and indices are refused without killing the daemon', async (t) => {
  const { sock, dev, daemon, mem } = setup(t);
  const fe = await Frontend.connect(sock);
  await negotiate(fe, dev, mem, false);
  await assert.rejects(fe.setVringNum(5, 256), /failure/, 'queue index out of range');
  await assert.rejects(fe.setVringNum(0, 1000), /failure/, 'size not a power of two');
  await assert.rejects(fe.setVringNum(0, 512), /failure/, 'size above the device maximum');
  await fe.setVringNum(0, 64);
  await assert.rejects(fe.setVringAddr({ index: 0, flags: 0, descUserAddr: 0x1000n, usedUserAddr: 0x2000n, availUserAddr: 0x3000n, logGuestAddr: 0n }),
    /failure/, 'ring outside guest memory');
  await assert.rejects(fe.setVringAddr({ index: 0, flags: 0, descUserAddr: mem.uva((1 << 20) - 16), usedUserAddr: mem.uva(0x2000), availUserAddr: mem.uva(0x3000), logGuestAddr: 0n }),
    /failure/, 'descriptor table crossing the end of memory');
  await assert.rejects(fe.setVringBase(0, 0x10000), /failure/, 'reserved bits in a split-ring base');
  assert.equal(await fe.getQueueNum(), 2, 'connection still serves');
  fe.close();
  await daemon.stop();
});

test('daemon loopback: device listeners and the exit event', async (t) => {
  const { sock, dev, daemon, mem } = setup(t);
  const fe = await Frontend.connect(sock);
  await negotiate(fe, dev, mem, false);
  const [h0] = daemon.getEpollHandlers();
  assert.ok(h0);
  const efd = sys.eventfd();
  assert.throws(() => h0.registerListener(efd, sys.POLLIN, 1), RangeError, 'data must not collide with a queue index');
  h0.registerListener(efd, sys.POLLIN, LISTENER_EVENT);
  sys.eventfdWrite(efd, 1);
  await dev.changed.until(() => dev.listenerEvents > 0, 5000, 'the listener event');
  assert.ok(dev.listenerEvents >= 1);
  sys.eventfdRead(efd);
  h0.unregisterListener(efd);
  sys.eventfdWrite(dev.exitFd, 1);
  // Same-thread handler: a round trip after the write orders the exit event's handling first.
  await fe.getQueueNum();
  assert.equal(h0.running, false, 'exit event stops the thread handler');
  sys.close(efd);
  fe.close();
  await daemon.stop();
  sys.close(dev.exitFd);
});
