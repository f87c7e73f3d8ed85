// A hostile front-end: seeded random and mutated vhost-user messages (with real fds) thrown at a
// running VhostUserDaemon over many connections. The daemon must never crash, leak fds, or stop
// serving: a well-behaved front-end afterwards gets full service.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue } from '../../src/driver/frontend-driver.js';
import { encodeFrontendRequest } from '../../src/vhost-user/codec.js';
import { FrontendReq, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VIRTIO_F_VERSION_1 } from '../../src/virtio/features.js';
import { VhostUserDaemon, type VhostUserBackend, type Vring } from '../../src/backend/index.js';
import { QueueError } from '../../src/queue/index.js';
import { silentLogger } from '../../src/log.js';
import type { FrontendRequest } from '../../src/vhost-user/messages.js';

const bit = (n: number): bigint => 1n << BigInt(n);

/** Echo device that reports bad chains the way the queue module asks devices to. */
class EchoDevice implements VhostUserBackend {
  badChains = 0;
  numQueues() { return 2; }
  maxQueueSize() { return 64; }
  features() { return bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES); }
  protocolFeatures() {
    return protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.MQ) |
      protocolFeatureMask(ProtocolFeature.CONFIGURE_MEM_SLOTS) | protocolFeatureMask(ProtocolFeature.STATUS);
  }
  setEventIdx() {}
  updateMemory() {}
  getConfig(offset: number, size: number) {
    if (offset + size > 16) throw new RangeError('config out of range');
    return new Uint8Array(size);
  }
  handleEvent(ev: number, _e: number, vrings: readonly Vring[]) {
    const vring = vrings.find((v) => v.index === ev);
    if (!vring) return;
    const q = vring.queue;
    for (;;) {
      let chain;
      try {
        chain = q.popDescriptorChain();
      } catch (e) {
        if (!(e instanceof QueueError)) throw e;
        this.badChains++;
        if (e.headIndex !== null) q.addUsed(e.headIndex, 0);
        else q.broken = true;
        continue;
      }
      if (chain === null) break;
      const buf = new Uint8Array(Math.min(chain.readableBytes, chain.writableBytes));
      chain.reader.read(buf);
      chain.writer.write(buf);
      q.addUsed(chain.headIndex, buf.length);
    }
    vring.signalUsedIfNeeded();
  }
}

/** xorshift32: deterministic across runs. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 2 ** 32;
  };
}

const VALID: FrontendRequest[] = [
  { request: FrontendReq.GET_FEATURES },
  { request: FrontendReq.SET_FEATURES, features: bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES) },
  { request: FrontendReq.SET_PROTOCOL_FEATURES, features: protocolFeatureMask(ProtocolFeature.REPLY_ACK) },
  { request: FrontendReq.SET_VRING_NUM, index: 0, num: 64 },
  { request: FrontendReq.SET_VRING_BASE, index: 0, num: 0 },
  { request: FrontendReq.SET_VRING_ADDR, index: 0, flags: 0, descUserAddr: 0x7f0000010000n, usedUserAddr: 0x7f0000012000n, availUserAddr: 0x7f0000011000n, logGuestAddr: 0n },
  { request: FrontendReq.GET_VRING_BASE, index: 1, num: 0 },
  { request: FrontendReq.SET_VRING_ENABLE, index: 0, enable: true },
  { request: FrontendReq.GET_CONFIG, offset: 0, flags: 0, data: new Uint8Array(8) },
  { request: FrontendReq.SET_STATUS, status: 0 },
  { request: FrontendReq.GET_MAX_MEM_SLOTS },
  { request: FrontendReq.REM_MEM_REG, region: { guestPhysAddr: 0n, memorySize: 4096n, userAddr: 0n, mmapOffset: 0n }, fd: null },
];

test('hostile front-end: random and mutated messages never crash the daemon or leak fds', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-hostile-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'h.sock');
  const baseline = sys.openFdCount();
  const dev = new EchoDevice();
  const daemon = new VhostUserDaemon('hostile', dev, { logger: silentLogger });
  daemon.serve(sock);
  const mem = new FrontendMemory(1 << 20);
  const rand = rng(0x5eed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rand() * a.length)]!;
  const CONNECTIONS = 150;
  let sent = 0;
  for (let c = 0; c < CONNECTIONS; c++) {
    const fd = sys.connectUnix(sock);
    const n = 1 + Math.floor(rand() * 6);
    for (let m = 0; m < n; m++) {
      let bytes: Uint8Array;
      const mode = rand();
      if (mode < 0.4) {
        // A valid message, then bit flips in header or payload.
        const enc = encodeFrontendRequest(pick(VALID), { protocolFeatures: 0n });
        bytes = Uint8Array.from(enc.bytes);
        const flips = Math.floor(rand() * 3);
        for (let f = 0; f < flips; f++) bytes[Math.floor(rand() * bytes.length)]! ^= 1 << Math.floor(rand() * 8);
      } else if (mode < 0.6) {
        // A valid message, truncated: the daemon must wait or close, never mis-frame.
        const enc = encodeFrontendRequest(pick(VALID), { protocolFeatures: 0n });
        bytes = enc.bytes.subarray(0, Math.floor(rand() * enc.bytes.length) + 1);
      } else {
        // Random header over a random payload.
        const size = Math.floor(rand() * 96);
        bytes = new Uint8Array(12 + size);
        const dv = new DataView(bytes.buffer);
        dv.setUint32(0, Math.floor(rand() * 48), true);
        dv.setUint32(4, rand() < 0.8 ? 1 | (rand() < 0.5 ? 8 : 0) : Math.floor(rand() * 2 ** 32), true);
        dv.setUint32(8, rand() < 0.8 ? size : Math.floor(rand() * 2 ** 32), true);
        for (let i = 12; i < bytes.length; i++) bytes[i] = Math.floor(rand() * 256);
      }
      const fds: number[] = [];
      const nfds = rand() < 0.5 ? 0 : Math.floor(rand() * 9);
      for (let i = 0; i < nfds; i++) fds.push(rand() < 0.5 ? sys.eventfd() : sys.dup(mem.fd));
      try {
        sys.sendmsg(fd, bytes, fds);
        sent++;
      } catch {
        // The daemon may already have closed this connection (EPIPE / ECONNRESET).
      }
      for (const f of fds) sys.close(f);
    }
    sys.close(fd);
    // Connections wait in the listen backlog while the daemon serves one at a time: every ten, an
    // answered request on a fresh connection proves the daemon drained all earlier ones.
    if (c % 10 === 9) {
      const probe = await Frontend.connect(sock, { timeoutMs: 5000 });
      await probe.getFeatures();
      probe.close();
    }
  }
  // A well-behaved front-end gets full service afterwards.
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  await fe.setFeatures(await fe.getFeatures());
  await fe.setProtocolFeatures(await fe.getProtocolFeatures());
  await fe.setOwner();
  await fe.setMemTable(mem.regions());
  const q = await setupQueue(fe, mem, 0, 64, 0x10000, { enable: true });
  // A hostile chain (descriptor outside guest memory) is completed with length 0; the next works.
  q.driver.addChain([{ gpa: 0x7fff_0000, len: 16 }], [{ gpa: 0x20000, len: 16 }]);
  q.kick(true);
  assert.equal((await q.nextUsed()).len, 0);
  mem.memory.write(0x30000, Buffer.from('still serving'));
  q.driver.addChain([{ gpa: 0x30000, len: 13 }], [{ gpa: 0x31000, len: 13 }]);
  q.kick(true);
  assert.equal((await q.nextUsed()).len, 13);
  assert.equal(Buffer.from(mem.memory.translate(0x31000, 13)).toString(), 'still serving');
  assert.ok(dev.badChains >= 1);
  q.close();
  fe.close();
  await daemon.stop();
  assert.ok(daemon.connections >= CONNECTIONS + CONNECTIONS / 10, `daemon served ${daemon.connections} connections`);
  mem.close();
  assert.equal(sys.openFdCount(), baseline, 'fd leak in the daemon');
  t.diagnostic(`${sent} hostile messages over ${CONNECTIONS} connections`);
});
