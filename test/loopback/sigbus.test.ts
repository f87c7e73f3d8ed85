// A front-end that lies about (or later shrinks) the file behind its memory must not be able to
// kill the daemon with SIGBUS: the region is refused when it is larger than the file, and a file
// truncated after SET_MEM_TABLE costs that connection only; the next one is served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT, negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon, type VhostUserBackend, type Vring, type VringWorkerModule } from '../../src/backend/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VIRTIO_F_VERSION_1 } from '../../src/virtio/features.js';
import { ReverseServer } from './fixtures/worker-reverse.js';
import { VhostUserRngBackend } from '../../src/devices/rng/index.js';
import type { Logger, LogLevel } from '../../src/log.js';

const PAGE = 4096;

class RecordingLogger implements Logger {
  readonly lines: string[] = [];
  log(level: LogLevel, message: string): void {
    if (level === 'error' || level === 'warn') this.lines.push(`${level}: ${message}`);
  }
}

/** Rejects after `ms`: bounds a hang, the test itself waits for the event. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

function startDaemon(t: { after(fn: () => void | Promise<void>): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'vu-sigbus-'));
  const sock = join(dir, 'rng.sock');
  const logger = new RecordingLogger();
  const daemon = new VhostUserDaemon('rng', new VhostUserRngBackend({ logger }), { logger });
  daemon.serve(sock);
  t.after(async () => {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { sock, daemon, logger };
}

/** One random-bytes request on a fresh, well-behaved connection: proves the daemon still serves. */
async function serveOnce(sock: string): Promise<void> {
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  const mem = new FrontendMemory(1 << 20);
  let q: FrontendQueue | null = null;
  try {
    await negotiate(fe, { wantFeatures: ~FEATURES_NEEDING_FRONTEND_SUPPORT & ~(1n << 29n) });
    await fe.setMemTable(mem.regions());
    q = await setupQueue(fe, mem, 0, 64, 0x1000, { enable: true });
    q.driver.addChain([], [{ gpa: 0x40000, len: 256 }]);
    q.kick(true);
    assert.equal((await q.nextUsed()).len, 256);
    assert.ok(new Set(mem.memory.translate(0x40000, 256)).size > 64, 'real random bytes arrived');
  } finally {
    q?.close();
    fe.close();
    mem.close();
  }
}

test('a 1 MiB region over a 4 KiB memfd is refused; rings and a kick inside it cannot kill the daemon', async (t) => {
  const baseline = sys.openFdCount();
  const { sock, daemon, logger } = startDaemon(t);
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  const ringMem = new FrontendMemory(1 << 20); // where our driver keeps its copy of the rings
  const small = sys.memfdCreate('vhost-user-small');
  try {
    sys.ftruncate(small, PAGE);
    await negotiate(fe, { wantFeatures: ~FEATURES_NEEDING_FRONTEND_SUPPORT & ~(1n << 29n) });
    const lie = { guestPhysAddr: 0n, memorySize: BigInt(1 << 20), userAddr: BigInt(ringMem.userAddr), mmapOffset: 0n, fd: small };
    // REPLY_ACK was negotiated: the refusal comes back as an error reply, or the daemon closes.
    await assert.rejects(fe.setMemTable([lie]));
    // The repro continues with rings inside the bogus region and a kick; whatever the daemon says
    // (error replies or closing the connection), it must survive.
    let q: FrontendQueue | null = null;
    try {
      q = await setupQueue(fe, ringMem, 0, 64, 0x10000, { enable: true });
      q.driver.addChain([], [{ gpa: 0x80000, len: 64 }]);
      q.kick(true);
      await fe.getFeatures(); // a round trip: the kick was handled by now
    } catch {
      // refused or closed: both acceptable
    } finally {
      q?.close();
    }
    assert.ok(logger.lines.some((l) => /SET_MEM_TABLE/.test(l) && /beyond the end of the file/.test(l)), logger.lines.join('\n'));
  } finally {
    fe.close();
    ringMem.close();
    sys.close(small);
  }
  await serveOnce(sock);
  await daemon.stop();
  assert.equal(sys.openFdCount(), baseline, 'no fd leak');
});

test('a memfd truncated after SET_MEM_TABLE: the daemon survives the fault, closes that connection, serves the next', async (t) => {
  const baseline = sys.openFdCount();
  const { sock, daemon, logger } = startDaemon(t);
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  const mem = new FrontendMemory(1 << 20);
  let q: FrontendQueue | null = null;
  try {
    await negotiate(fe, { wantFeatures: ~FEATURES_NEEDING_FRONTEND_SUPPORT & ~(1n << 29n) });
    await fe.setMemTable(mem.regions());
    // Rings in page 0, which survives the truncation; the buffers are far beyond it.
    q = await setupQueue(fe, mem, 0, 64, 0, { enable: true });
    q.driver.addChain([], [{ gpa: 0x10000, len: 128 }]);
    q.kick(true);
    assert.equal((await q.nextUsed()).len, 128, 'served before the truncation');
    const closed = fe.closed();
    sys.ftruncate(mem.fd, PAGE);
    q.driver.addChain([], [{ gpa: 0x20000, len: 128 }]);
    q.kick(true);
    const reason = await within(closed, 5000, 'connection close after the fault');
    t.diagnostic(`front-end saw: ${reason?.message ?? 'EOF'}`);
  } finally {
    q?.close();
    fe.close();
    mem.close();
  }
  assert.ok(logger.lines.some((l) => /front-end truncated the file behind region GuestRegion\[gpa 0x0\.\.0x100000/.test(l)), logger.lines.join('\n'));
  await serveOnce(sock);
  assert.ok(daemon.connections >= 2);
  await daemon.stop();
  assert.equal(sys.openFdCount(), baseline, 'no fd leak');
});

test('a sealed memfd (F_SEAL_SHRINK) is mapped without the guard and served normally', async (t) => {
  const { sock } = startDaemon(t);
  const fd = sys.memfdCreate('vhost-user-sealed', sys.MFD_CLOEXEC | sys.MFD_ALLOW_SEALING);
  sys.ftruncate(fd, 1 << 20);
  sys.addSeals(fd, sys.F_SEAL_SHRINK | sys.F_SEAL_GROW);
  const view = sys.mmap(fd, 0, 1 << 20);
  assert.equal(view.guarded, false);
  view.unmap();
  // Drive it through a FrontendMemory-shaped copy: the driver's rings live in the sealed memfd too.
  const mem = new FrontendMemory(1 << 20);
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  let q: FrontendQueue | null = null;
  try {
    await negotiate(fe, { wantFeatures: ~FEATURES_NEEDING_FRONTEND_SUPPORT & ~(1n << 29n) });
    // Region 0: the driver's plain memfd (rings); region 1: the sealed memfd at 1 MiB (the buffer).
    const sealedRegion = { guestPhysAddr: BigInt(1 << 20), memorySize: BigInt(1 << 20), userAddr: BigInt(mem.userAddr + (1 << 20)), mmapOffset: 0n, fd };
    await fe.setMemTable([...mem.regions(), sealedRegion]);
    q = await setupQueue(fe, mem, 0, 64, 0x1000, { enable: true });
    q.driver.addChain([], [{ gpa: (1 << 20) + 0x2000, len: 200 }]);
    q.kick(true);
    assert.equal((await q.nextUsed()).len, 200);
    const check = sys.mmap(fd, 0, 1 << 20);
    assert.ok(new Set(new Uint8Array(check.window(0), 0x2000, 200)).size > 50, 'random bytes landed in the sealed memfd');
    check.unmap();
  } finally {
    q?.close();
    fe.close();
    mem.close();
    sys.close(fd);
  }
});

/** Queue 0 on the main thread, queue 1 in a worker thread (the fixture reverses the bytes). */
class SplitDevice implements VhostUserBackend {
  readonly main = new ReverseServer({ delayMs: 0 });
  numQueues() { return 2; }
  maxQueueSize() { return 256; }
  features() { return (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)); }
  protocolFeatures() { return protocolFeatureMask(ProtocolFeature.MQ) | protocolFeatureMask(ProtocolFeature.REPLY_ACK); }
  setEventIdx() {}
  updateMemory() {}
  queuesPerThread() { return [0b01, 0b10]; }
  workerModule(t: number): VringWorkerModule | null {
    return t === 1 ? { url: new URL('./fixtures/worker-reverse.js', import.meta.url), data: { delayMs: 0 }, quiesceTimeoutMs: 200 } : null;
  }
  handleEvent(ev: number, _evset: number, vrings: readonly Vring[]) {
    const v = vrings.find((x) => x.index === ev);
    if (v !== undefined) this.main.handle(v);
  }
}

test('a truncation hit by a worker thread: the worker survives the fault, the main thread closes the connection', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-sigbus-w-'));
  const sock = join(dir, 'split.sock');
  const logger = new RecordingLogger();
  const daemon = new VhostUserDaemon('split', new SplitDevice(), { logger });
  daemon.serve(sock);
  t.after(async () => {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const connect = async (mem: FrontendMemory) => {
    const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
    await fe.setFeatures(await fe.getFeatures());
    await fe.setProtocolFeatures(await fe.getProtocolFeatures());
    await fe.setOwner();
    await fe.setMemTable(mem.regions());
    const q0 = await setupQueue(fe, mem, 0, 256, 0x10000, { enable: true });
    const q1 = await setupQueue(fe, mem, 1, 256, 0x20000, { enable: true });
    return { fe, q0, q1 };
  };
  const reverse = async (mem: FrontendMemory, q: FrontendQueue, gpa: number, text: string): Promise<string> => {
    mem.memory.write(gpa, Buffer.from(text));
    q.driver.addChain([{ gpa, len: text.length }], [{ gpa: gpa + 0x800, len: 0x100 }]);
    q.kick(true);
    assert.equal((await q.nextUsed()).len, text.length + 4);
    return Buffer.from(mem.memory.translate(gpa + 0x800, text.length)).toString();
  };

  const mem = new FrontendMemory(1 << 20);
  const { fe, q0, q1 } = await connect(mem);
  try {
    assert.equal(await reverse(mem, q1, 0x41000, 'worker'), 'rekrow');
    const closed = fe.closed();
    sys.ftruncate(mem.fd, 0x30000); // the rings (below 0x30000) survive, the buffers do not
    q1.driver.addChain([{ gpa: 0x42000, len: 8 }], [{ gpa: 0x42800, len: 0x100 }]);
    q1.kick(true);
    await within(closed, 5000, 'connection close after the worker fault');
  } finally {
    q0.close();
    q1.close();
    fe.close();
    mem.close();
  }
  assert.ok(logger.lines.some((l) => /front-end truncated the file behind region/.test(l)), logger.lines.join('\n'));
  // The next front-end is served by a fresh worker.
  const mem2 = new FrontendMemory(1 << 20);
  const next = await connect(mem2);
  try {
    assert.equal(await reverse(mem2, next.q1, 0x41000, 'again'), 'niaga');
    assert.equal(await reverse(mem2, next.q0, 0x43000, 'main'), 'niam');
  } finally {
    next.q0.close();
    next.q1.close();
    next.fe.close();
    mem2.close();
  }
});
