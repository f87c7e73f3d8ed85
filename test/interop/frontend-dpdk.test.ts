/**
 * Our Frontend bringing up DPDK's vhost PMD (testpmd, net_vhost0, io forwarding) as a running
 * virtio-net device: negotiation, memfd memory table, rx (0) and tx (1) vrings with eventfds,
 * SET_STATUS when negotiated. testpmd's own log must report the device ready and the link up.
 * Then one Ethernet frame goes out on our tx ring, testpmd receives it and (io mode, port paired
 * with itself) sends it back into the rx buffers we posted: bytes compared end to end, and
 * testpmd's counters must show the packet.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { ProtocolFeature, decodeProtocolFeatures, hasProtocolFeature } from '../../src/vhost-user/constants.js';
import {
  VIRTIO_F_VERSION_1, VIRTIO_NET_FEATURES, VIRTIO_RING_F_EVENT_IDX, decodeFeatures, hasFeature,
} from '../../src/virtio/features.js';
import { requireTools } from '../helpers/tools.js';
import { startTestpmdVhost } from '../helpers/dpdk.js';
import { makeTempDir } from '../helpers/tmp.js';

const MEM_SIZE = 16 * 1024 * 1024;
const QUEUE_SIZE = 256;
const RX = 0;
const TX = 1;
const RX_RING_GPA = 0x1000;
const TX_RING_GPA = 0x10000;
const RX_BUF_GPA = 0x100000;
const RX_BUF_SIZE = 2048;
const RX_BUFS = 8;
const TX_BUF_GPA = 0x200000;
/** virtio_net_hdr_v1 (VERSION_1: num_buffers always present). */
const NET_HDR_SIZE = 12;
const FRAME_SIZE = 60;

// Device status bits (VIRTIO 1.2 §2.1).
const ACKNOWLEDGE = 1;
const DRIVER = 2;
const DRIVER_OK = 4;
const FEATURES_OK = 8;

/** A 60-byte Ethernet frame: locally administered MACs, IEEE local experimental ethertype, counter payload. */
function makeFrame(): Buffer {
  const f = Buffer.alloc(FRAME_SIZE);
  Buffer.from([0x02, 0, 0, 0, 0, 0x02]).copy(f, 0);
  Buffer.from([0x02, 0, 0, 0, 0, 0x01]).copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  for (let i = 14; i < FRAME_SIZE; i++) f[i] = i * 7;
  return f;
}

test('Frontend vs DPDK vhost PMD: running net device, a frame out on tx comes back on rx', async (t) => {
  if (!requireTools(t, 'dpdk-testpmd')) return;
  const tmp = makeTempDir(t, 'fepmd');
  const pmd = await startTestpmdVhost({ socketPath: tmp.socketPath('vhost'), forwardMode: 'io', t });
  const t0 = performance.now();
  const fdsBefore = sys.openFdCount();

  const fe = await Frontend.connect(pmd.socketPath, { timeoutMs: 5000 });
  const guest = new FrontendMemory(MEM_SIZE);
  const queues: FrontendQueue[] = [];
  try {
    // --- negotiation ------------------------------------------------------------------------
    const n = await negotiate(fe);
    // ~0.9 s when connecting right after testpmd starts: DPDK 22.11's vhost fd dispatcher only
    // picks up the new connection at its next 1 s poll timeout (13 ms when connecting later).
    const negotiatedMs = performance.now() - t0;
    const names = decodeFeatures(n.features, 'net');
    t.diagnostic(`negotiated ${names.join(' ')}`);
    t.diagnostic(`protocol offered ${decodeProtocolFeatures(n.offeredProtocolFeatures ?? 0n).join(' ')}`);
    assert.ok(hasFeature(n.features, VIRTIO_F_VERSION_1), 'VERSION_1');
    assert.ok(names.some((s) => s.startsWith('VIRTIO_NET_F_')), 'device bits decode as virtio-net features');
    assert.ok(names.includes('VIRTIO_NET_F_MRG_RXBUF') || names.includes('VIRTIO_NET_F_STATUS'), names.join(' '));
    assert.ok(n.protocolFeatures !== null, 'DPDK offers protocol features');
    const pf = n.protocolFeatures;
    assert.ok(hasProtocolFeature(pf, ProtocolFeature.MQ), 'MQ negotiated');
    assert.ok(n.queueNum !== null && n.queueNum >= 1, `GET_QUEUE_NUM ${n.queueNum}`);
    const withStatus = hasProtocolFeature(pf, ProtocolFeature.STATUS);

    // --- memory and the two vrings ----------------------------------------------------------
    await fe.setMemTable(guest.regions());
    const mem = guest.memory;
    const eventIdx = hasFeature(n.features, VIRTIO_RING_F_EVENT_IDX);
    for (const [q, gpa] of [[RX, RX_RING_GPA], [TX, TX_RING_GPA]] as const) queues.push(await setupQueue(fe, guest, q, QUEUE_SIZE, gpa, { eventIdx }));
    const [rxq, txq] = queues as [FrontendQueue, FrontendQueue];
    // rx buffers go up before the queues are enabled so that nothing testpmd forwards is dropped.
    for (let i = 0; i < RX_BUFS; i++) rxq.driver.addChain([], [{ gpa: RX_BUF_GPA + i * RX_BUF_SIZE, len: RX_BUF_SIZE }]);
    for (const q of [RX, TX]) await fe.setVringEnable(q, true);
    if (withStatus) {
      await fe.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
      assert.equal(await fe.getStatus(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    // --- testpmd's own account: the device is running and the link is up -----------------------
    const setupMs = performance.now() - t0;
    await pmd.waitFor(/virtio is now ready for processing/, 5000);
    const vhostReadyMs = performance.now() - t0;
    await pmd.waitFor(/Port 0: link state change event|LSC event/, 5000);
    const readyMs = performance.now() - t0;
    rxq.kick();

    // --- one frame out on tx, expect it back on rx ------------------------------------------
    const frame = makeFrame();
    const hdr = Buffer.alloc(NET_HDR_SIZE); // no offloads, num_buffers 0 (device-ignored on tx)
    mem.write(TX_BUF_GPA, hdr);
    mem.write(TX_BUF_GPA + NET_HDR_SIZE, frame);
    const tp = performance.now();
    const txHead = txq.driver.addChain([{ gpa: TX_BUF_GPA, len: NET_HDR_SIZE + FRAME_SIZE }]);
    txq.kick();
    const rxUsed = await rxq.nextUsed(5000);
    const rttMs = performance.now() - tp;
    assert.equal(rxUsed.len, NET_HDR_SIZE + FRAME_SIZE, 'rx used length = header + frame');
    const rxBuf = Buffer.from(mem.translate(rxBufferGpa(rxUsed.id), NET_HDR_SIZE + FRAME_SIZE));
    assert.ok(rxBuf.subarray(NET_HDR_SIZE).equals(frame), `frame came back intact: ${rxBuf.toString('hex')}`);
    if (hasFeature(n.features, VIRTIO_NET_FEATURES.VIRTIO_NET_F_MRG_RXBUF as number)) {
      assert.equal(rxBuf.readUInt16LE(10), 1, 'num_buffers = 1 with MRG_RXBUF');
    }
    // The tx chain is completed too (DPDK may publish it after the rx side: wait for its call).
    assert.equal((await txq.nextUsed(5000)).id, txHead);

    assert.equal(await fe.getVringBase(TX), 1, 'tx: one chain consumed');
    assert.equal(await fe.getVringBase(RX), 1, 'rx: one buffer consumed');
    t.diagnostic(`negotiated ${negotiatedMs.toFixed(0)} ms, set-up sent ${setupMs.toFixed(0)} ms, vhost ready ${vhostReadyMs.toFixed(0)} ms, link up ${readyMs.toFixed(0)} ms after connect; tx->rx round trip ${rttMs.toFixed(2)} ms`);

    /** GPA of the rx buffer whose chain head is `id`: SplitQueueDriver hands out descriptors 0, 1, 2, ... */
    function rxBufferGpa(id: number): number {
      assert.ok(id < RX_BUFS, `rx head ${id}`);
      return RX_BUF_GPA + id * RX_BUF_SIZE;
    }
  } finally {
    for (const q of queues) q.close();
    fe.close();
    guest.close();
  }
  assert.equal(sys.openFdCount(), fdsBefore, 'fd leak');

  // Our close is seen as a disconnect: the PMD logs it and drops the link (second LSC event).
  await pmd.waitFor(/vhost peer closed/, 5000);
  await pmd.waitFor(/(?:Port 0: link state change event[\s\S]*){2}/, 5000);
  await pmd.stop();
  const stats = pmd.forwardStats();
  assert.ok(stats !== undefined, pmd.proc.diagnostics());
  assert.ok(stats.rxPackets >= 1, `testpmd rx ${stats.rxPackets}`);
  assert.ok(stats.txPackets >= 1, `testpmd tx ${stats.txPackets}`);
  t.diagnostic(`testpmd totals: rx ${stats.rxPackets}, tx ${stats.txPackets}, tx dropped ${stats.txDropped}`);
});
