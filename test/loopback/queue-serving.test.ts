// The framework's queue serving through a real daemon, socket, memfd and eventfds: per-ring
// quiesce for GET_VRING_BASE while another ring is busy indefinitely, RESET_DEVICE with a late
// completion, and dirty-page logging of device writes through processChain.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { VhostUserDaemon, type VhostUserBackend } from '../../src/backend/index.js';
import type { DescriptorChain } from '../../src/queue/index.js';
import { splitRingLayout } from '../../src/queue/driver.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_VRING_F_LOG, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VHOST_F_LOG_ALL, VIRTIO_F_VERSION_1 } from '../../src/virtio/features.js';
import type { LogLevel, Logger } from '../../src/log.js';

const bit = (n: number): bigint => 1n << BigInt(n);

/**
 * Queue 0 answers synchronously with the request's bytes; queue 1 holds each request until the
 * test releases it, writing its reply through zero-copy views.
 */
class HoldingDevice implements VhostUserBackend {
  readonly held: { chain: DescriptorChain; release: () => void }[] = [];
  private arrived: (() => void) | null = null;
  numQueues() { return 2; }
  features() { return bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VHOST_F_LOG_ALL); }
  protocolFeatures() {
    return [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.RESET_DEVICE, ProtocolFeature.LOG_SHMFD]
      .reduce((m, f) => m | protocolFeatureMask(f), 0n);
  }
  processChain(queue: number, chain: DescriptorChain): number | Promise<number> {
    const n = Math.min(chain.readableBytes, chain.writableBytes);
    const data = new Uint8Array(n);
    chain.reader.read(data);
    if (queue === 0) {
      chain.writer.write(data);
      return n;
    }
    return new Promise<number>((resolve) => {
      this.held.push({ chain, release: () => {
        let off = 0;
        for (const v of chain.writer.segments(n)) {
          v.set(data.subarray(off, off + v.length));
          off += v.length;
        }
        resolve(n);
      } });
      this.arrived?.();
    });
  }
  /** Resolves once `count` requests of queue 1 are held. */
  async waitHeld(count: number): Promise<void> {
    while (this.held.length < count) await new Promise<void>((r) => { this.arrived = r; });
    this.arrived = null;
  }
}

/** Lets a test wait until the daemon has started handling a request (its debug line). */
class RequestWatcher implements Logger {
  private waiters: { name: string; resolve: () => void }[] = [];
  enabled(level: LogLevel): boolean { return level === 'debug'; }
  log(level: LogLevel, msg: string): void {
    if (level !== 'debug') return;
    for (const w of this.waiters.filter((x) => msg.startsWith("request ") && msg.includes(x.name))) {
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.resolve();
    }
  }
  /** Resolves once the daemon dispatched request `name` (and ran it up to its first await). */
  handled(name: string): Promise<void> {
    return new Promise((resolve) => this.waiters.push({ name, resolve }));
  }
}

async function start(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'vu-serve-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const device = new HoldingDevice();
  const logger = new RequestWatcher();
  const daemon = new VhostUserDaemon('holding', device, { logger });
  const sock = join(dir, 'd.sock');
  daemon.serve(sock);
  t.after(() => daemon.stop());
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  t.after(() => fe.close());
  const mem = new FrontendMemory(1 << 20);
  t.after(() => mem.close());
  await negotiate(fe, { wantProtocolFeatures: device.protocolFeatures() });
  await fe.setMemTable(mem.regions());
  const q0 = await setupQueue(fe, mem, 0, 64, 0x10000, { enable: true });
  const q1 = await setupQueue(fe, mem, 1, 64, 0x20000, { enable: true });
  t.after(() => { q0.close(); q1.close(); });
  return { device, daemon, fe, mem, q0, q1, logger };
}

function send(mem: FrontendMemory, q: FrontendQueue, gpa: number, text: string): void {
  mem.memory.write(gpa, Buffer.from(text));
  q.driver.addChain([{ gpa, len: text.length }], [{ gpa: gpa + 0x800, len: 0x100 }]);
  q.kick(true);
}

test('GET_VRING_BASE waits only for its own ring: queue 0 stops while queue 1 holds a request indefinitely', async (t) => {
  const { device, fe, mem, q0, q1 } = await start(t);
  send(mem, q0, 0x30000, 'zero');
  assert.equal((await q0.nextUsed()).len, 4);
  send(mem, q1, 0x40000, 'held');
  await device.waitHeld(1);
  // Queue 1's request never completes on its own; stopping queue 0 must not wait for it.
  assert.equal(await fe.getVringBase(0), 1);
  // Stopping queue 1 waits for its request, which lands in the used ring before the reply.
  const base1 = fe.getVringBase(1);
  device.held[0]?.release();
  assert.equal(await base1, 1);
  assert.deepEqual(q1.driver.popUsed(), { id: 0, len: 4 });
  assert.equal(Buffer.from(mem.memory.translate(0x40800, 4)).toString(), 'held');
});

test('RESET_DEVICE with a request in flight: the late completion touches neither the used ring nor the call fd', async (t) => {
  const { device, fe, mem, q1, logger } = await start(t);
  send(mem, q1, 0x40000, 'late');
  await device.waitHeld(1);
  const started = logger.handled('RESET_DEVICE');
  const reset = fe.resetDevice();
  await started;
  // The reset is under way (rings stopped, waiting for this request): complete it now.
  device.held[0]?.release();
  await reset;
  assert.equal(q1.driver.usedIdx, 0, 'no used entry after the reset');
  assert.equal(sys.eventfdRead(q1.callFd), null, 'no interrupt after the reset');
});

test('dirty log: buffers written by processChain (sync and async, zero-copy views) and the used rings are logged', async (t) => {
  const { device, fe, mem, q0, q1 } = await start(t);
  const logFd = sys.memfdCreate('dirty-log');
  t.after(() => sys.close(logFd));
  sys.ftruncate(logFd, 4096);
  const logMap = sys.mmap(logFd, 0, 4096);
  t.after(() => logMap.unmap());
  const bits = new Uint8Array(logMap.windows[0] as ArrayBuffer);
  const dirty = (gpa: number): boolean => (((bits[Math.floor(gpa / 0x8000)] as number) >> (Math.floor(gpa / 0x1000) % 8)) & 1) === 1;
  await fe.setLogBase({ mmapSize: 4096n, mmapOffset: 0n }, logFd);
  // Migration start as QEMU does it: SET_LOG_BASE, SET_FEATURES with VHOST_F_LOG_ALL, ring addresses with VHOST_VRING_F_LOG.
  await fe.setFeatures(device.features());
  for (const [index, ring] of [[0, 0x10000], [1, 0x20000]] as const) {
    const l = splitRingLayout(64, ring);
    await fe.setVringAddr({ index, flags: 1 << VHOST_VRING_F_LOG, descUserAddr: mem.uva(l.descGpa), usedUserAddr: mem.uva(l.usedGpa), availUserAddr: mem.uva(l.availGpa), logGuestAddr: BigInt(l.usedGpa) });
  }
  assert.equal(bits.some((b) => b !== 0), false, 'nothing logged yet');
  send(mem, q0, 0x30000, 'sync');
  assert.equal((await q0.nextUsed()).len, 4);
  send(mem, q1, 0x50000, 'async');
  await device.waitHeld(1);
  device.held[0]?.release();
  assert.equal((await q1.nextUsed()).len, 5);
  assert.ok(dirty(0x30800), 'queue 0 reply page');
  assert.ok(dirty(0x50800), 'queue 1 reply page (zero-copy views)');
  assert.ok(dirty(splitRingLayout(64, 0x10000).usedGpa) && dirty(splitRingLayout(64, 0x20000).usedGpa), 'used rings');
  assert.ok(!dirty(0x60000) && !dirty(0x40000), 'untouched pages clean');
});
