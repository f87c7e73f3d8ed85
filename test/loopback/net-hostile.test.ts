// Hostile guests against vhost-user-net: oversized and malformed transmit chains, offloads that
// were not negotiated, receive buffers that cannot hold the header, packed rings with wrong wrap
// counters or AVAIL/USED flags. Each is dropped with a counter and a rate-limited log line, and
// the device goes on serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LoopbackLink, VhostUserNetBackend, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4 } from '../../src/devices/net/index.js';
import { RateLimitedLogger } from '../../src/log.js';
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED } from '../../src/queue/index.js';
import { featureMask } from '../../src/virtio/features.js';
import { CaptureLogger, NetGuest, ethFrame } from './net-rig.js';

const MAC = '52:54:00:00:00:01';
const BCAST = 'ff:ff:ff:ff:ff:ff';

test('hostile TX: > 64 KiB + header, device-writable descriptors, shorter than the header, offloads not negotiated: dropped, counted, logged at a bounded rate; the queue goes on', async (t) => {
  const capture = new CaptureLogger();
  const logger = new RateLimitedLogger(capture, 5, 60_000);
  const dev = new VhostUserNetBackend({ mac: MAC, logger });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev, { features: ~(featureMask(VIRTIO_NET_F_CSUM) | featureMask(VIRTIO_NET_F_HOST_TSO4)), logger });
  g.postRx(0, 8);
  // 70000 bytes + header, in 4 KiB descriptors.
  await g.send(0, ethFrame(BCAST, MAC, 70_000 - 14), undefined, 4096);
  assert.equal(dev.drops.byReason['tx-bad-length'], 1);
  // Device-writable descriptor in a TX chain.
  const q = g.tx[0]!;
  const gpa = g.alloc(2048);
  g.mem.memory.write(gpa, Buffer.concat([Buffer.alloc(12), ethFrame(BCAST, MAC, 46)]));
  q.driver.addChain([{ gpa, len: 72 }], [{ gpa: g.alloc(64), len: 64 }]);
  q.kick(true);
  assert.equal((await q.nextUsed()).len, 0);
  assert.equal(dev.drops.byReason['tx-bad-chain'], 1);
  // Shorter than the header.
  q.driver.addChain([{ gpa, len: 8 }], []);
  q.kick(true);
  await q.nextUsed();
  assert.equal(dev.drops.byReason['tx-bad-chain'], 2);
  // NEEDS_CSUM without CSUM, TSO without HOST_TSO4.
  await g.send(0, ethFrame(BCAST, MAC, 100), Uint8Array.of(1, 0, 0, 0, 0, 0, 14, 0, 16, 0, 0, 0));
  await g.send(0, ethFrame(BCAST, MAC, 100), Uint8Array.of(0, 1, 54, 0, 0xa8, 5, 0, 0, 0, 0, 0, 0));
  assert.equal(dev.drops.byReason['tx-bad-offload'], 2);
  // A burst of bad chains: every one counted, the log stays within the burst.
  for (let i = 0; i < 20; i++) q.driver.addChain([{ gpa, len: 4 }], []);
  q.kick(true);
  for (let i = 0; i < 20; i++) await q.nextUsed();
  assert.equal(dev.drops.byReason['tx-bad-chain'], 22);
  const warns = capture.records.filter((r) => r.level === 'warn' && /transmit queue 1/.test(r.message));
  assert.equal(warns.length, 5, 'at most the burst of 5 log lines per window');
  // The device goes on.
  const ok = ethFrame(BCAST, MAC, 200, 9);
  await g.send(0, ok);
  assert.ok((await g.recv(0)).data.equals(ok));
  assert.equal(dev.txCounters[0]!.drops, 25);
});

test('hostile RX: buffers smaller than the header or with device-readable parts are returned empty and counted; the frame lands in the next good buffer', async (t) => {
  const dev = new VhostUserNetBackend({ mac: MAC });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev);
  const rx = g.rx[0]!;
  const tiny = rx.driver.addChain([], [{ gpa: g.alloc(8), len: 8 }]);
  const readable = rx.driver.addChain([{ gpa: g.alloc(64), len: 64 }], [{ gpa: g.alloc(2048), len: 2048 }]);
  g.postRx(0, 1);
  const f = ethFrame(BCAST, MAC, 100, 4);
  await g.send(0, f);
  assert.deepEqual(await rx.nextUsed(), { id: tiny, len: 0 });
  assert.deepEqual(await rx.nextUsed(), { id: readable, len: 0 });
  assert.ok((await g.recv(0)).data.equals(f));
  const st = g.daemon.stats().find((s) => s.queue === 0)!;
  assert.equal(st.errors, 2, 'both bad buffers counted on the receive queue');
});

test('hostile packed TX ring: a chain whose second descriptor has the wrong wrap counter breaks that ring only; a head with AVAIL = USED is not available; the other pair goes on', async (t) => {
  const dev = new VhostUserNetBackend({ mac: MAC, queuePairs: 2 });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev, { packed: true, pairs: 2 });
  g.postRx(0, 4);
  g.postRx(1, 4);
  const tx0 = g.tx[0]!;
  const gpa = g.alloc(2048);
  g.mem.memory.write(gpa, Buffer.concat([Buffer.alloc(12), ethFrame(BCAST, MAC, 46)]));
  const driver = tx0.driver as unknown as { writeDesc(pos: number, gpa: number, len: number, id: number, flags: number): void };
  // Position 0 with AVAIL = USED (for wrap counter 1 that reads as "used"): nothing to pop.
  driver.writeDesc(0, gpa, 72, 0, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
  tx0.kick(true);
  const f1 = ethFrame(BCAST, MAC, 60, 1);
  await g.send(1, f1);
  assert.ok((await g.recv(1)).data.equals(f1), 'pair 1 serves while pair 0 has nothing valid');
  assert.equal(dev.txCounters[0]!.packets + dev.txCounters[0]!.drops, 0, 'the USED-flagged head was not taken');
  // Now a two-descriptor chain: head correct for wrap 1, second marked for wrap 0.
  driver.writeDesc(1, gpa + 12, 60, 0, VIRTQ_DESC_F_USED);
  driver.writeDesc(0, gpa, 12, 0, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_NEXT);
  tx0.kick(true);
  const f2 = ethFrame(BCAST, MAC, 60, 2);
  await g.send(1, f2);
  assert.ok((await g.recv(1)).data.equals(f2));
  const broken = (): number => g.daemon.stats().find((s) => s.queue === 1)!.broken;
  for (let i = 0; i < 50 && broken() === 0; i++) await g.send(1, f2).then(() => g.recv(1));
  assert.equal(broken(), 1, 'transmit ring 1 marked broken');
  // The broken ring costs nothing; the other pair still loops back.
  const f3 = ethFrame(BCAST, MAC, 60, 3);
  await g.send(1, f3);
  assert.ok((await g.recv(1)).data.equals(f3));
});
