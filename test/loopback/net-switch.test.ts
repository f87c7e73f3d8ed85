// Three of our front-ends on one NetSwitch (three devices, as three VMs on three sockets): flooding,
// learning, unicast to one port only, ageing, and the software checksum for a receiver without
// GUEST_CSUM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NetSwitch, VhostUserNetBackend, VIRTIO_NET_F_GUEST_CSUM } from '../../src/devices/net/index.js';
import { featureMask } from '../../src/virtio/features.js';
import { NetGuest, ethFrame, udpChecksumOk, udpFrame } from './net-rig.js';

const A = '52:54:00:00:00:0a';
const B = '52:54:00:00:00:0b';
const C = '52:54:00:00:00:0c';
const BCAST = 'ff:ff:ff:ff:ff:ff';

test('switch: broadcast floods to the other ports, learnt MACs get unicast to their port only, unknown unicast floods, entries age out', async (t) => {
  let now = 1_000_000;
  const sw = new NetSwitch({ ageingMs: 10_000, now: () => now });
  const devs = [A, B, C].map((mac, i) => new VhostUserNetBackend({ mac, name: `port${i}` }));
  for (const d of devs) sw.addDevice(d);
  const [ga, gb, gc] = [await NetGuest.start(t, devs[0]!), await NetGuest.start(t, devs[1]!), await NetGuest.start(t, devs[2]!)];
  for (const g of [ga, gb, gc]) g.postRx(0, 16);
  const rxOf = (i: number): number => devs[i]!.rxCounters[0]!.packets;

  const hello = ethFrame(BCAST, A, 46, 1);
  await ga.send(0, hello);
  assert.ok((await gb.recv(0)).data.equals(hello), 'B got the broadcast');
  assert.ok((await gc.recv(0)).data.equals(hello), 'C got the broadcast');
  assert.equal(rxOf(0), 0, 'not sent back to A');
  assert.equal(sw.flooded, 1);

  const toA = ethFrame(A, B, 46, 2);
  await gb.send(0, toA);
  assert.ok((await ga.recv(0)).data.equals(toA), 'A learnt: unicast from B reaches A');
  assert.equal(sw.forwarded, 1);
  const toB = ethFrame(B, A, 46, 3);
  await ga.send(0, toB);
  assert.ok((await gb.recv(0)).data.equals(toB), 'B learnt: unicast from A reaches B');
  assert.equal(sw.forwarded, 2);
  assert.equal(rxOf(2), 1, 'C saw only the broadcast');
  assert.equal(sw.macCount, 2);

  const unknown = ethFrame('52:54:00:00:00:99', A, 46, 4);
  await ga.send(0, unknown);
  assert.ok((await gb.recv(0)).data.equals(unknown));
  assert.ok((await gc.recv(0)).data.equals(unknown), 'unknown unicast is flooded');

  const self = ethFrame(A, A, 46, 5);
  await ga.send(0, self);
  assert.equal(sw.filtered, 1, 'a frame for the port it came from is not sent back');

  now += 20_000;
  const late = ethFrame(B, A, 46, 6);
  await ga.send(0, late);
  assert.ok((await gb.recv(0)).data.equals(late));
  assert.ok((await gc.recv(0)).data.equals(late), 'B aged out: the frame is flooded again');
  assert.equal(sw.flooded, 3);
});

test('switch: a partial checksum from a guest with CSUM is completed in software for a guest without GUEST_CSUM, and passed on to one with it', async (t) => {
  const sw = new NetSwitch();
  const da = new VhostUserNetBackend({ mac: A });
  const db = new VhostUserNetBackend({ mac: B });
  const dc = new VhostUserNetBackend({ mac: C });
  for (const d of [da, db, dc]) sw.addDevice(d);
  const ga = await NetGuest.start(t, da);
  const gb = await NetGuest.start(t, db, { features: ~featureMask(VIRTIO_NET_F_GUEST_CSUM) });
  const gc = await NetGuest.start(t, dc);
  assert.equal(gb.has(VIRTIO_NET_F_GUEST_CSUM), false);
  gb.postRx(0, 4);
  gc.postRx(0, 4);
  const { frame, hdr } = udpFrame(BCAST, A, '10.0.0.1', '10.0.0.255', 1234, 5678, Buffer.from('x'.repeat(301)), true);
  assert.equal(udpChecksumOk(frame), false, 'the sent frame carries only the pseudo-header sum');
  await ga.send(0, frame, hdr);
  const rb = await gb.recv(0);
  assert.equal(rb.hdr[0], 0, 'no NEEDS_CSUM for a guest that cannot complete it');
  assert.ok(udpChecksumOk(rb.data), 'the checksum was completed');
  assert.ok(rb.data.subarray(42).equals(frame.subarray(42)), 'payload intact');
  const rc = await gc.recv(0);
  assert.equal(rc.hdr[0], 1, 'NEEDS_CSUM passed on');
  assert.equal(rc.hdr.readUInt16LE(6), 34);
  assert.equal(rc.hdr.readUInt16LE(8), 6);
  assert.ok(rc.data.equals(frame), 'bytes unchanged for the guest that completes the checksum itself');
});
