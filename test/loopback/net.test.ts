// vhost-user-net served by the daemon, driven by our front-end as the guest: loopback round
// trips on split and packed rings, mergeable buffers, the control queue, two queue pairs, RARP/MTU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  LoopbackLink, VhostUserNetBackend, VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
  VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_OK,
  VIRTIO_NET_CONFIG_SIZE, VIRTIO_NET_S_LINK_UP, formatMac,
} from '../../src/devices/net/index.js';
import { VIRTIO_RING_F_EVENT_IDX, featureMask } from '../../src/virtio/features.js';
import { NetGuest, ethFrame, udpFrame } from './net-rig.js';

const MAC = '52:54:00:00:00:01';
const BCAST = 'ff:ff:ff:ff:ff:ff';

for (const packed of [false, true]) {
  for (const eventIdx of [true, false]) {
    test(`net loopback (${packed ? 'packed' : 'split'}, EVENT_IDX ${eventIdx ? 'on' : 'off'}): frames of 60..9014 bytes come back intact, mergeable frames span several buffers`, async (t) => {
      const dev = new VhostUserNetBackend({ mac: MAC });
      new LoopbackLink(dev);
      const features = eventIdx ? undefined : ~featureMask(VIRTIO_RING_F_EVENT_IDX);
      const g = await NetGuest.start(t, dev, { packed, ...(features !== undefined ? { features } : {}) });
      assert.ok(g.has(VIRTIO_NET_F_MRG_RXBUF));
      g.postRx(0, 40, 2048);
      assert.equal(dev.rxReady, true, 'the device learnt its receive queue from the kick');
      const sizes = [60, 1514, 4096, 9014, 64, 2036, 2037];
      for (const [i, size] of sizes.entries()) {
        const f = ethFrame(BCAST, MAC, size - 14, i);
        await g.send(0, f, undefined, i % 2 === 0 ? 1 << 20 : 700);
        const r = await g.recv(0);
        assert.ok(r.data.equals(f), `frame ${i} (${size} bytes) intact`);
        assert.equal(r.buffers, Math.ceil((size + 12) / 2048), `frame ${i} took the buffers it needed`);
        assert.equal(r.lens.reduce((a, b) => a + b, 0), size + 12);
        assert.equal(r.hdr.readUInt16LE(10), r.buffers, 'num_buffers');
      }
      assert.equal(dev.txCounters[0]?.packets, sizes.length);
      assert.equal(dev.rxCounters[0]?.packets, sizes.length);
      assert.equal(dev.drops.total, 0);
    });
  }
}

test('net loopback without MRG_RXBUF: a frame larger than the buffer is dropped and counted, the buffer serves the next frame', async (t) => {
  const dev = new VhostUserNetBackend({ mac: MAC });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev, { features: ~featureMask(VIRTIO_NET_F_MRG_RXBUF) });
  g.postRx(0, 1, 1526);
  await g.send(0, ethFrame(BCAST, MAC, 3000));
  assert.equal(dev.drops.byReason['rx-too-big'], 1);
  const f = ethFrame(BCAST, MAC, 100, 3);
  await g.send(0, f);
  const r = await g.recv(0);
  assert.ok(r.data.equals(f));
  assert.equal(r.hdr.readUInt16LE(10), 1, 'num_buffers is 1 without MRG_RXBUF');
});

test('net loopback: frames wait in the backlog while the guest has no buffer and arrive once it posts some', async (t) => {
  const dev = new VhostUserNetBackend({ mac: MAC });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev);
  g.postRx(0, 1, 2048);
  await g.send(0, ethFrame(BCAST, MAC, 50, 0));
  assert.ok((await g.recv(0)).data.equals(ethFrame(BCAST, MAC, 50, 0)));
  // No buffer left: these three wait.
  for (let i = 1; i <= 3; i++) await g.send(0, ethFrame(BCAST, MAC, 50, i));
  g.postRx(0, 3, 2048);
  for (let i = 1; i <= 3; i++) assert.ok((await g.recv(0)).data.equals(ethFrame(BCAST, MAC, 50, i)), `backlogged frame ${i} in order`);
  assert.equal(dev.drops.total, 0);
});

test('net config space and control queue: MAC, status, pairs, MTU; CTRL_RX filtering, MAC_ADDR_SET, ANNOUNCE ack, VQ_PAIRS_SET, unknown class', async (t) => {
  const dev = new VhostUserNetBackend({ mac: MAC, mtu: 9000, queuePairs: 2 });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev, { pairs: 2 });
  const cfg = Buffer.from(await g.fe.getConfig(0, VIRTIO_NET_CONFIG_SIZE));
  assert.equal(formatMac(cfg, 0), MAC);
  assert.equal(cfg.readUInt16LE(6), VIRTIO_NET_S_LINK_UP);
  assert.equal(cfg.readUInt16LE(8), 2);
  assert.equal(cfg.readUInt16LE(10), 9000);
  await assert.rejects(g.fe.getConfig(8, 8), 'reads past the config space fail');
  g.postRx(0, 8, 2048);
  // Promiscuous off: only our MAC, broadcast and table entries pass.
  assert.equal(await g.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, Uint8Array.of(0)), VIRTIO_NET_OK);
  const other = '52:54:00:00:00:99';
  await g.send(0, ethFrame(other, MAC, 50, 1));
  assert.equal(dev.drops.byReason['rx-filtered'], 1, 'a frame for another MAC is filtered');
  const table = Buffer.alloc(4 + 6 + 4);
  table.writeUInt32LE(1, 0);
  Buffer.from(other.split(':').map((h) => parseInt(h, 16))).copy(table, 4);
  table.writeUInt32LE(0, 10);
  assert.equal(await g.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, table), VIRTIO_NET_OK);
  await g.send(0, ethFrame(other, MAC, 50, 2));
  assert.ok((await g.recv(0)).data.equals(ethFrame(other, MAC, 50, 2)), 'a table MAC passes');
  await g.send(0, ethFrame(MAC, other, 50, 3));
  assert.ok((await g.recv(0)).data.equals(ethFrame(MAC, other, 50, 3)), 'our own MAC passes');
  const newMac = '52:54:00:00:00:42';
  assert.equal(await g.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, Uint8Array.from(newMac.split(':').map((h) => parseInt(h, 16)))), VIRTIO_NET_OK);
  assert.equal(formatMac(dev.mac), newMac);
  assert.equal(await g.command(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK), VIRTIO_NET_OK);
  assert.equal(await g.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(3, 0)), VIRTIO_NET_ERR, '3 pairs > max 2');
  assert.equal(await g.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(0, 0)), VIRTIO_NET_ERR, '0 pairs');
  assert.equal(await g.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(1, 0)), VIRTIO_NET_OK);
  assert.equal(dev.pairsInUse, 1);
  assert.equal(await g.command(2, 0), VIRTIO_NET_ERR, 'VLAN class (not offered)');
  assert.equal(await g.command(77, 1), VIRTIO_NET_ERR, 'unknown class');
  assert.equal(await g.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC), VIRTIO_NET_ERR, 'command without its data');
  await g.fe.netSetMtu(1400);
  assert.equal(dev.mtu, 1400);
  await assert.rejects(g.fe.netSetMtu(20), 'an MTU below 68 is refused');
});

test('net two queue pairs: each pair loops back on its own receive queue; SEND_RARP announces the MAC', async (t) => {
  const dev = new VhostUserNetBackend({ mac: MAC, queuePairs: 2 });
  new LoopbackLink(dev);
  const g = await NetGuest.start(t, dev, { pairs: 2 });
  assert.equal(g.has(22), true, 'MQ negotiated');
  g.postRx(0, 4);
  g.postRx(1, 4);
  const f0 = ethFrame(BCAST, MAC, 100, 10);
  const f1 = ethFrame(BCAST, MAC, 200, 11);
  await g.send(0, f0);
  await g.send(1, f1);
  assert.ok((await g.recv(0)).data.equals(f0));
  assert.ok((await g.recv(1)).data.equals(f1));
  assert.equal(dev.txCounters[1]?.packets, 1);
  assert.equal(dev.rxCounters[1]?.packets, 1);
  const mac = Uint8Array.of(2, 0, 0, 0, 0, 7);
  await g.fe.sendRarp(mac);
  const r = await g.recv(0);
  assert.equal(r.data.readUInt16BE(12), 0x8035, 'RARP ethertype');
  assert.equal(formatMac(r.data, 6), '02:00:00:00:00:07', 'sent from the announced MAC');
  assert.equal(formatMac(r.data, 0), BCAST);
  assert.equal(r.data.readUInt16BE(20), 3, 'reverse request');
});

for (const packed of [false, true]) {
  test(`net loopback (${packed ? 'packed' : 'split'}): transmit headers are taken whole or split over buffers, and an offload header does not leak into the next frame`, async (t) => {
    const dev = new VhostUserNetBackend({ mac: MAC });
    new LoopbackLink(dev);
    const g = await NetGuest.start(t, dev, { packed });
    g.postRx(0, 8, 2048);
    const { frame, hdr } = udpFrame(BCAST, MAC, '10.0.0.1', '10.0.0.2', 1000, 2000, Buffer.alloc(100, 7), true);
    for (const chunk of [5, 1 << 20]) {
      // NEEDS_CSUM with csum_start/offset: passed on to a guest that negotiated GUEST_CSUM.
      await g.send(0, frame, hdr, chunk);
      const r = await g.recv(0);
      assert.ok(r.data.equals(frame));
      assert.deepEqual([...r.hdr.subarray(0, 10)], [...hdr.subarray(0, 10)], `offload fields carried (header in ${chunk === 5 ? 'pieces' : 'one buffer'})`);
      // The next frame has no offload: its header arrives all zero, nothing left from the last one.
      const plain = ethFrame(BCAST, MAC, 60, chunk);
      await g.send(0, plain, undefined, chunk);
      const p = await g.recv(0);
      assert.ok(p.data.equals(plain));
      assert.deepEqual([...p.hdr.subarray(0, 10)], new Array<number>(10).fill(0));
    }
    assert.equal(dev.drops.total, 0);
  });
}
