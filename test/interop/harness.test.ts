/**
 * Proves the interop harness against the reference C peers: qemu-storage-daemon and DPDK testpmd
 * (net_vhost backend) come up listening and answer a real vhost-user VHOST_USER_GET_FEATURES, and
 * testpmd as a virtio_user frontend forwards packets into testpmd's vhost backend, in both socket
 * directions. The message bytes are built here by hand on purpose: the harness must not depend
 * on the library it is used to test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection } from 'node:net';
import { requireTools } from '../helpers/tools.js';
import { createRawImage, startStorageDaemon } from '../helpers/qsd.js';
import { startTestpmdVhost, startTestpmdVirtioUser } from '../helpers/dpdk.js';
import { makeTempDir } from '../helpers/tmp.js';

const VHOST_USER_GET_FEATURES = 1;
const VHOST_USER_VERSION = 0x1;
const VHOST_USER_REPLY_MASK = 0x1 << 2;
const VHOST_USER_HDR_SIZE = 12;
const VHOST_USER_F_PROTOCOL_FEATURES = 30n;
const VIRTIO_F_VERSION_1 = 32n;

/**
 * Connects to a vhost-user backend socket, sends GET_FEATURES and returns the feature bits from
 * the reply (validating the reply header).
 */
async function getFeatures(path: string, timeoutMs = 5000): Promise<bigint> {
  const sock = createConnection({ path });
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    const req = Buffer.alloc(VHOST_USER_HDR_SIZE);
    req.writeUInt32LE(VHOST_USER_GET_FEATURES, 0);
    req.writeUInt32LE(VHOST_USER_VERSION, 4);
    req.writeUInt32LE(0, 8);
    sock.write(req);
    const reply = await new Promise<Buffer>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const timer = setTimeout(() => reject(new Error(`no GET_FEATURES reply from ${path} in ${timeoutMs} ms`)), timeoutMs);
      sock.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (buf.length >= VHOST_USER_HDR_SIZE + 8) {
          clearTimeout(timer);
          resolve(buf);
        }
      });
      sock.once('error', (e) => { clearTimeout(timer); reject(e); });
      sock.once('end', () => { clearTimeout(timer); reject(new Error(`${path} closed the connection without replying`)); });
    });
    assert.equal(reply.readUInt32LE(0), VHOST_USER_GET_FEATURES, 'reply request code');
    assert.equal(reply.readUInt32LE(4), VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, 'reply flags');
    assert.equal(reply.readUInt32LE(8), 8, 'reply payload size');
    return reply.readBigUInt64LE(VHOST_USER_HDR_SIZE);
  } finally {
    sock.destroy();
  }
}

function hasBit(features: bigint, bit: bigint): boolean {
  return ((features >> bit) & 1n) === 1n;
}

test('qemu-storage-daemon: socket listens and answers GET_FEATURES', async (t) => {
  if (!requireTools(t, 'qemu-storage-daemon')) return;
  const tmp = makeTempDir(t, 'qsd');
  const image = tmp.file('disk.img');
  await createRawImage(image, 8 * 1024 * 1024);
  const t0 = performance.now();
  const qsd = await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), numQueues: 2, t });
  const readyMs = performance.now() - t0;
  const features = await getFeatures(qsd.socketPath);
  assert.ok(hasBit(features, VHOST_USER_F_PROTOCOL_FEATURES), `features 0x${features.toString(16)}`);
  assert.ok(hasBit(features, VIRTIO_F_VERSION_1), `features 0x${features.toString(16)}`);
  const st = await qsd.stop();
  assert.equal(st.signal === 'SIGKILL', false, qsd.proc.diagnostics());
  t.diagnostic(`qsd listening after ${readyMs.toFixed(0)} ms; features 0x${features.toString(16)}`);
});

test('testpmd net_vhost: socket listens and answers GET_FEATURES', async (t) => {
  if (!requireTools(t, 'dpdk-testpmd')) return;
  const tmp = makeTempDir(t, 'pmd');
  const t0 = performance.now();
  const pmd = await startTestpmdVhost({ socketPath: tmp.socketPath('vhost'), forwardMode: 'io', t });
  const readyMs = performance.now() - t0;
  const features = await getFeatures(pmd.socketPath);
  assert.ok(hasBit(features, VHOST_USER_F_PROTOCOL_FEATURES), `features 0x${features.toString(16)}`);
  assert.ok(hasBit(features, VIRTIO_F_VERSION_1), `features 0x${features.toString(16)}`);
  const out = await pmd.stop();
  assert.match(out, /Bye\.\.\./, 'testpmd did not shut down cleanly');
  t.diagnostic(`testpmd vhost listening after ${readyMs.toFixed(0)} ms; features 0x${features.toString(16)}`);
});

test('testpmd virtio_user (txonly) -> testpmd net_vhost (rxonly): packets flow; pps measured', async (t) => {
  if (!requireTools(t, 'dpdk-testpmd')) return;
  const tmp = makeTempDir(t, 'pps');
  // Forwarding lcores differ (vhost main=0 forwards on 1, virtio_user main=1 forwards on 0).
  const backend = await startTestpmdVhost({ socketPath: tmp.socketPath('vhost'), forwardMode: 'rxonly', mainLcore: 0, t });
  const frontend = await startTestpmdVirtioUser({
    socketPath: backend.socketPath, forwardMode: 'txonly', mainLcore: 1, statsPeriodSec: 1, t,
  });
  // Three one-second samples; the first may cover start-up.
  await frontend.waitFor(/(?:Tx-pps:\s+\d+[\s\S]*){3}/, 15_000);
  await frontend.stop();
  await backend.stop();
  const sent = frontend.forwardStats();
  const received = backend.forwardStats();
  assert.ok(sent && received, `missing forward statistics\n${frontend.proc.diagnostics()}\n${backend.proc.diagnostics()}`);
  assert.ok(received.rxPackets > 100_000, `backend received only ${received.rxPackets} packets`);
  // Every packet the frontend counted as sent must have reached the backend's rx path.
  assert.ok(received.rxPackets >= sent.txPackets - 32 * 16, `sent ${sent.txPackets}, received ${received.rxPackets}`);
  const pps = Math.max(...frontend.txPps());
  t.diagnostic(`virtio_user -> vhost txonly: peak ${(pps / 1e6).toFixed(2)} Mpps; ` +
    `total tx ${sent.txPackets}, vhost rx ${received.rxPackets}`);
});

test('testpmd virtio_user server=1 <- testpmd net_vhost client=1: reverse connection direction works', async (t) => {
  if (!requireTools(t, 'dpdk-testpmd')) return;
  const tmp = makeTempDir(t, 'rev');
  const frontend = await startTestpmdVirtioUser({
    socketPath: tmp.socketPath('vu'), server: true, forwardMode: 'txonly', mainLcore: 1, t,
  });
  const backend = await startTestpmdVhost({ socketPath: frontend.socketPath, client: true, forwardMode: 'rxonly', mainLcore: 0, t });
  await frontend.waitFor(/packet forwarding - ports=1/, 15_000);
  await backend.waitFor(/virtio is now ready for processing/, 15_000);
  await new Promise((r) => setTimeout(r, 500));
  await frontend.stop();
  await backend.stop();
  const received = backend.forwardStats();
  assert.ok(received && received.rxPackets > 0, `no packets reached the backend\n${backend.proc.diagnostics()}`);
});
