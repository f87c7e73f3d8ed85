// Loopback: a device whose queue 1 is served by a worker_thread (VhostUserBackend.workerModule),
// driven by our Frontend over a real socket with memfd guest memory: both queues serve, the worker
// queue runs in another thread, GET_VRING_BASE answers the worker's ring position, memory tables are
// replaced under in-flight worker requests, reconnects work, a dying worker ends only its
// connection, and nothing leaks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { threadId as mainThreadId } from 'node:worker_threads';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { VhostUserDaemon, type VhostUserBackend, type Vring, type VringWorkerModule } from '../../src/backend/index.js';
import type { GuestMemoryAtomic } from '../../src/memory/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_VRING_F_LOG, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VHOST_F_LOG_ALL, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../src/virtio/features.js';
import { splitRingLayout } from '../../src/queue/driver.js';
import type { Logger, LogLevel } from '../../src/log.js';
import { Signal } from '../helpers/events.js';
import { ReverseServer } from './fixtures/worker-reverse.js';

const bit = (n: number): bigint => 1n << BigInt(n);
const FIXTURE = new URL('./fixtures/worker-reverse.js', import.meta.url);

class SplitDevice implements VhostUserBackend {
  readonly main = new ReverseServer({ delayMs: 0 });
  resets = 0;
  numQueues() { return 2; }
  maxQueueSize() { return 256; }
  features() { return bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VHOST_F_LOG_ALL); }
  protocolFeatures() {
    return protocolFeatureMask(ProtocolFeature.MQ) | protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.LOG_SHMFD);
  }
  setEventIdx() { /* the rings carry it */ }
  updateMemory(_m: GuestMemoryAtomic) { /* the rings follow the memory */ }
  queuesPerThread() { return [0b01, 0b10]; }
  workerModule(t: number): VringWorkerModule | null { return t === 1 ? { url: FIXTURE, data: { delayMs: 2 }, quiesceTimeoutMs: 200 } : null; }
  handleEvent(ev: number, _evset: number, vrings: readonly Vring[]) {
    const v = vrings.find((x) => x.index === ev);
    assert.ok(v && ev === 0, `main thread got event ${ev}`);
    this.main.handle(v);
  }
  /** Notified on every reset, so tests await it instead of polling. */
  readonly changed = new Signal();
  resetDevice() { this.resets++; this.changed.notify(); }
}

/** Records errors so a test can check what the daemon logged. */
class RecordingLogger implements Logger {
  readonly lines: string[] = [];
  /** Notified on every recorded line. */
  readonly changed = new Signal();
  log(level: LogLevel, message: string): void {
    if (level === 'error' || level === 'warn') {
      this.lines.push(`${level}: ${message}`);
      this.changed.notify();
    }
  }
}

/** Mappings of the guest memfd in this process (the front-end's plus the daemon's live ones). */
function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:vhost-user-guest')).length;
}

async function connect(sock: string, mem: FrontendMemory, eventIdx: boolean): Promise<{ fe: Frontend; q0: FrontendQueue; q1: FrontendQueue }> {
  const fe = await Frontend.connect(sock);
  const features = await fe.getFeatures();
  await fe.setFeatures(features & (eventIdx ? ~0n : ~bit(VIRTIO_RING_F_EVENT_IDX)));
  await fe.setProtocolFeatures(await fe.getProtocolFeatures());
  await fe.setOwner();
  await fe.setMemTable(mem.regions());
  const q0 = await setupQueue(fe, mem, 0, 256, 0x10000, { eventIdx, enable: true });
  const q1 = await setupQueue(fe, mem, 1, 256, 0x20000, { eventIdx, enable: true });
  return { fe, q0, q1 };
}

/** Sends `text` on `q` (buffers at `gpa`) and returns the reply text and the serving thread id. */
async function request(mem: FrontendMemory, q: FrontendQueue, gpa: number, text: string): Promise<{ reply: string; tid: number }> {
  mem.memory.write(gpa, Buffer.from(text));
  q.driver.addChain([{ gpa, len: text.length }], [{ gpa: gpa + 0x800, len: 0x100 }]);
  q.kick();
  const used = await q.nextUsed();
  assert.equal(used.len, text.length + 4);
  const out = mem.memory.translate(gpa + 0x800, used.len);
  return { reply: Buffer.from(out.subarray(0, text.length)).toString(), tid: new DataView(out.buffer, out.byteOffset).getUint32(text.length, true) };
}

function setup(t: { after(fn: () => Promise<void>): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'vu-workers-'));
  const sock = join(dir, 'dev.sock');
  const dev = new SplitDevice();
  const logger = new RecordingLogger();
  const daemon = new VhostUserDaemon('split', dev, { logger });
  daemon.serve(sock);
  const mem = new FrontendMemory(1 << 20);
  // On a failed assertion the daemon must still stop, or its listener keeps the process alive.
  t.after(async () => {
    await daemon.stop();
    mem.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { sock, dev, daemon, mem, logger };
}

for (const eventIdx of [false, true]) {
  test(`workers: queue 1 is served by a worker thread (event_idx=${eventIdx})`, async (t) => {
    const before = sys.openFdCount();
    const { sock, dev, daemon, mem, logger } = setup(t);
    let { fe, q0, q1 } = await connect(sock, mem, eventIdx);

    const a = await request(mem, q0, 0x40000, 'main queue');
    assert.deepEqual(a, { reply: 'eueuq niam', tid: mainThreadId });
    const b = await request(mem, q1, 0x41000, 'worker queue');
    assert.equal(b.reply, 'eueuq rekrow');
    assert.notEqual(b.tid, mainThreadId, 'queue 1 ran in another thread');

    // SET_MEM_TABLE replacements while the worker has requests in flight (delayed completions
    // hold guards on the old snapshot): every request completes with the right data.
    const inFlight: Array<Promise<unknown>> = [];
    for (let i = 0; i < 40; i++) {
      const text = `r${i}`;
      mem.memory.write(0x50000 + i * 0x200, Buffer.from(text));
      q1.driver.addChain([{ gpa: 0x50000 + i * 0x200, len: text.length }], [{ gpa: 0x50100 + i * 0x200, len: 0x80 }]);
      q1.kick();
      if (i % 10 === 9) inFlight.push(fe.setMemTable(mem.regions()));
    }
    await Promise.all(inFlight);
    for (let done = 0; done < 40; done++) await q1.nextUsed();
    for (let i = 0; i < 40; i++) {
      const text = `r${i}`;
      const out = mem.memory.translate(0x50100 + i * 0x200, text.length + 4);
      assert.equal(Buffer.from(out.subarray(0, text.length)).toString(), [...text].reverse().join(''));
      assert.notEqual(new DataView(out.buffer, out.byteOffset).getUint32(text.length, true), mainThreadId);
    }
    // GET_VRING_BASE of the worker queue: the worker's ring position (1 + 40 requests).
    assert.equal(await fe.getVringBase(1), 41);
    assert.equal(await fe.getVringBase(0), 1);
    // The worker posted 'released' for the old snapshots in the callbacks that completed the
    // requests, before it answered the stop above (one port, in order): they are unmapped by now,
    // leaving only the front-end's and the daemon's current mapping.
    assert.equal(memfdMappings(), 2, 'replaced tables are unmapped once the worker released them');
    mem.memory.write(0x44000, Buffer.from('zz'));
    q1.driver.addChain([{ gpa: 0x44000, len: 2 }], [{ gpa: 0x44800, len: 8 }]);
    sys.eventfdWrite(q1.kickFd, 1);
    // Two requests the worker must answer (SET_VRING_ERR without fd waits for every worker): the
    // second reaches the worker in a loop iteration after the one that saw the kick, so a kick it
    // watched would have been handled by then.
    await fe.setVringErr(1, null);
    await fe.setVringErr(1, null);
    assert.equal(q1.driver.popUsed(), null, 'a stopped worker ring is not processed');

    // Disconnect and reconnect: a fresh worker serves the new connection.
    fe.close();
    for (const q of [q0, q1]) q.close();
    await dev.changed.until(() => dev.resets > 0, 5000, 'the device reset after the front-end left');
    assert.equal(dev.resets, 1);
    ({ fe, q0, q1 } = await connect(sock, mem, eventIdx));
    const c = await request(mem, q1, 0x42000, 'again');
    assert.equal(c.reply, 'niaga');
    assert.notEqual(c.tid, mainThreadId);
    assert.equal((await request(mem, q0, 0x43000, 'main')).reply, 'niam');

    fe.close();
    await daemon.stop();
    for (const q of [q0, q1]) q.close();
    mem.close();
    assert.equal(memfdMappings(), 0, 'daemon unmapped guest memory');
    assert.deepEqual(logger.lines, []);
    assert.equal(sys.openFdCount(), before, 'fd leak');
  });
}

test('workers: a dying worker ends its connection, not the daemon', async (t) => {
  const before = sys.openFdCount();
  const { sock, daemon, mem, logger } = setup(t);
  let { fe, q0, q1 } = await connect(sock, mem, false);
  mem.memory.write(0x40000, Buffer.from('crash'));
  q1.driver.addChain([{ gpa: 0x40000, len: 5 }], [{ gpa: 0x40800, len: 16 }]);
  q1.kick(true);
  await fe.closed();
  assert.ok(logger.lines.some((l) => /crash requested/.test(l)), 'the worker error is logged');
  assert.ok(logger.lines.some((l) => /exited unexpectedly/.test(l)));
  for (const q of [q0, q1]) q.close();
  fe.close();

  ({ fe, q0, q1 } = await connect(sock, mem, false));
  assert.equal((await request(mem, q1, 0x41000, 'alive')).reply, 'evila');
  fe.close();
  await daemon.stop();
  for (const q of [q0, q1]) q.close();
  mem.close();
  assert.equal(sys.openFdCount(), before, 'fd leak');
});

test('workers: a worker stuck in device code is terminated when its connection ends', async (t) => {
  const before = sys.openFdCount();
  const { sock, daemon, mem, logger, dev } = setup(t);
  let { fe, q0, q1 } = await connect(sock, mem, false);
  mem.memory.write(0x40000, Buffer.from('hang'));
  q1.driver.addChain([{ gpa: 0x40000, len: 4 }], [{ gpa: 0x40800, len: 16 }]);
  q1.kick(true);
  // The worker must be stuck before the connection ends. Nothing observable marks that moment (the
  // device spins right after popping the chain), so this is a bounded window, not a check.
  await new Promise((r) => setTimeout(r, 20));
  fe.close();
  for (const q of [q0, q1]) q.close();
  await logger.changed.until(() => logger.lines.some((l) => /reset failed/.test(l)), 5000, 'the failed reset to be logged');
  assert.ok(logger.lines.some((l) => /reset failed: .*no answer in 200 ms/.test(l)), logger.lines.join('\n'));
  assert.ok(logger.lines.some((l) => /shutdown: .*no answer in 200 ms/.test(l)), logger.lines.join('\n'));
  assert.equal(dev.resets, 0, 'the device reset did not run past the stuck worker');

  ({ fe, q0, q1 } = await connect(sock, mem, false));
  assert.equal((await request(mem, q1, 0x41000, 'next')).reply, 'txen');
  fe.close();
  await daemon.stop();
  for (const q of [q0, q1]) q.close();
  mem.close();
  assert.equal(sys.openFdCount(), before, 'fd leak');
});

test('workers: the worker logs used-ring and buffer writes in the shared dirty log', async (t) => {
  const before = sys.openFdCount();
  const { sock, daemon, mem } = setup(t);
  const { fe, q0, q1 } = await connect(sock, mem, false);
  const logFd = sys.memfdCreate('dirty-log');
  sys.ftruncate(logFd, 4096);
  const logMap = sys.mmap(logFd, 0, 4096);
  const bits = new Uint8Array(logMap.windows[0]!);
  const dirty = (gpa: number): boolean => ((bits[Math.floor(gpa / 0x8000)]! >> (Math.floor(gpa / 0x1000) % 8)) & 1) === 1;
  await fe.setLogBase({ mmapSize: 4096n, mmapOffset: 0n }, logFd);
  // Migration start: QEMU re-sends SET_VRING_ADDR with VHOST_VRING_F_LOG while the ring runs.
  const l = splitRingLayout(256, 0x20000);
  await fe.setVringAddr({ index: 1, flags: 1 << VHOST_VRING_F_LOG, descUserAddr: mem.uva(l.descGpa), usedUserAddr: mem.uva(l.usedGpa), availUserAddr: mem.uva(l.availGpa), logGuestAddr: BigInt(l.usedGpa) });
  assert.equal(bits.some((b) => b !== 0), false);
  assert.equal((await request(mem, q1, 0x46000, 'logged')).reply, 'deggol');
  assert.ok(dirty(0x46800), 'reply buffer page is dirty');
  assert.ok(dirty(l.usedGpa), 'used ring page is dirty');
  assert.ok(!dirty(0x30000) && !dirty(0x40000), 'untouched pages are clean');
  fe.close();
  await daemon.stop();
  for (const q of [q0, q1]) q.close();
  logMap.unmap();
  sys.close(logFd);
  mem.close();
  assert.equal(sys.openFdCount(), before, 'fd leak');
});

test('examples/worker-device serves queue 1 from a worker thread and exits', () => {
  const script = fileURLToPath(new URL('../../examples/worker-device.js', import.meta.url));
  const out = execFileSync(process.execPath, [script], { encoding: 'utf8', timeout: 20000, stdio: ['ignore', 'pipe', 'ignore'] });
  assert.match(out, /^queue 0: HELLO QUEUE 0 @thread 0$/m);
  const m = /^queue 1: HELLO QUEUE 1 @thread (\d+)$/m.exec(out);
  assert.ok(m, out);
  assert.notEqual(Number(m[1]), 0, 'queue 1 served outside the main thread');
});
