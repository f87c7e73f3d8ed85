// A guest-written avail index jump on a live vhost-user-blk daemon (a child process, as QEMU users
// run it): the ring is marked broken (NEEDS_RESET), its err eventfd is signalled, the daemon uses no
// CPU on it however often the broken ring is kicked, keeps answering requests within 100 ms, and
// the ring serves again after GET_VRING_BASE / SET_VRING_* re-setup.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT, negotiate } from '../../src/vhost-user/negotiate.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH } from '../../src/devices/blk/index.js';
import { VIRTIO_RING_F_EVENT_IDX } from '../../src/virtio/features.js';
import { startOurDaemon } from '../helpers/our-daemon.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { silentLogger } from '../../src/log.js';
import { SplitDevice } from '../../examples/worker-device.js';

const QSIZE = 64;
const RING = 0x10000;
const HDR = 0x40000;
const STATUS = 0x40100;

/** utime + stime of `pid` in clock ticks (/proc/PID/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state): utime is field 14, stime field 15.
  return Number(f[11]) + Number(f[12]);
}

/** Resolves when `fd` becomes readable (rejects after `ms`, a guard only). */
function readable(fd: number, ms: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { w.close(); reject(new Error(`${what}: not readable within ${ms} ms`)); }, ms);
    const w = sys.watchFd(fd, sys.POLLIN, () => {
      clearTimeout(timer);
      w.close();
      resolve();
    });
  });
}

async function flush(mem: FrontendMemory, q: FrontendQueue): Promise<number> {
  mem.memory.writeU32(HDR, VIRTIO_BLK_T_FLUSH);
  mem.memory.writeU32(HDR + 4, 0);
  mem.memory.writeU64(HDR + 8, 0n);
  mem.memory.writeU8(STATUS, 0xff);
  q.driver.addChain([{ gpa: HDR, len: 16 }], [{ gpa: STATUS, len: 1 }]);
  q.kick(true);
  const u = await q.nextUsed();
  assert.equal(u.len, 1);
  return mem.memory.readU8(STATUS);
}

async function start(t: TestContext, eventIdx: boolean) {
  const dir = mkdtempSync(join(tmpdir(), 'vu-broken-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const d = await startOurDaemon('blk', join(dir, 'blk.sock'), ['--ram-size-mib', '1', '--num-queues', '2'], t);
  const fe = await Frontend.connect(d.socketPath);
  t.after(() => fe.close());
  const mem = new FrontendMemory(1 << 20);
  t.after(() => mem.close());
  await negotiate(fe, eventIdx ? {} : { wantFeatures: ~FEATURES_NEEDING_FRONTEND_SUPPORT & ~(1n << BigInt(VIRTIO_RING_F_EVENT_IDX)) });
  await fe.setMemTable(mem.regions());
  const errFd = sys.eventfd();
  t.after(() => sys.close(errFd));
  const pid = d.proc.pid;
  assert.ok(pid !== undefined);
  return { fe, mem, errFd, pid };
}

async function setup(fe: Frontend, mem: FrontendMemory, errFd: number, eventIdx: boolean): Promise<FrontendQueue> {
  const q = await setupQueue(fe, mem, 0, QSIZE, RING, { eventIdx, enable: true });
  await fe.setVringErr(0, errFd);
  return q;
}

for (const eventIdx of [false, true]) {
  test(`broken ring: avail idx jumps of size+1, 2^15 and 2^16-1 on a live blk daemon (event_idx=${eventIdx})`, async (t) => {
    const { fe, mem, errFd, pid } = await start(t, eventIdx);
    let q = await setup(fe, mem, errFd, eventIdx);
    t.after(() => q.close());
    assert.equal(await flush(mem, q), VIRTIO_BLK_S_OK);
    for (const jump of [QSIZE + 1, 1 << 15, 0xffff]) {
      // The guest writes avail.idx far beyond what it may publish (at most QSIZE ahead).
      const errSignalled = readable(errFd, 5000, `err fd after a jump of ${jump}`);
      q.driver.setAvailIdx(q.driver.availIdx + jump);
      q.kick(true);
      await errSignalled;
      assert.equal(sys.eventfdRead(errFd), 1n, 'err fd signalled exactly once');

      // Hammer the broken ring with kicks while timing requests: no CPU, prompt answers.
      const ticks0 = cpuTicks(pid);
      const t0 = performance.now();
      for (let round = 0; round < 20; round++) {
        for (let k = 0; k < 50; k++) q.kick(true);
        const r0 = performance.now();
        await fe.getFeatures();
        const ms = performance.now() - r0;
        assert.ok(ms < 100, `GET_FEATURES answered in ${ms.toFixed(1)} ms after a jump of ${jump}`);
      }
      const wallMs = performance.now() - t0;
      const cpuMs = (cpuTicks(pid) - ticks0) * 10;
      assert.ok(cpuMs <= Math.max(40, wallMs * 0.25), `daemon used ${cpuMs} ms CPU in ${wallMs.toFixed(0)} ms with a broken ring (jump ${jump})`);
      assert.equal(sys.eventfdRead(errFd), null, 'the err fd is not signalled again');

      // Reset the ring as a driver would after NEEDS_RESET: stop it and set it up afresh.
      await fe.getVringBase(0);
      q.close();
      q = await setup(fe, mem, errFd, eventIdx);
      assert.equal(await flush(mem, q), VIRTIO_BLK_S_OK, `served again after reset (jump ${jump})`);
    }
  });
}

test('broken ring: the other queue keeps serving while queue 0 is broken', async (t) => {
  const { fe, mem, errFd } = await start(t, false);
  const q0 = await setup(fe, mem, errFd, false);
  t.after(() => q0.close());
  const q1 = await setupQueue(fe, mem, 1, QSIZE, RING + 0x4000, { enable: true });
  t.after(() => q1.close());
  const errSignalled = readable(errFd, 5000, 'err fd');
  q0.driver.setAvailIdx(q0.driver.availIdx + QSIZE + 7);
  q0.kick(true);
  await errSignalled;
  assert.equal(await flush(mem, q1), VIRTIO_BLK_S_OK);
  // Further kicks of the broken ring find nothing to do.
  q0.kick(true);
  assert.equal(await flush(mem, q1), VIRTIO_BLK_S_OK);
  assert.equal(q0.driver.usedIdx, 0);
});

test('broken ring in a worker thread: err fd, the other queue and the protocol keep serving, reset restores it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-broken-w-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const daemon = new VhostUserDaemon('split', new SplitDevice(), { logger: silentLogger });
  daemon.serve(join(dir, 's.sock'));
  t.after(() => daemon.stop());
  const fe = await Frontend.connect(join(dir, 's.sock'));
  t.after(() => fe.close());
  const mem = new FrontendMemory(1 << 20);
  t.after(() => mem.close());
  await negotiate(fe);
  await fe.setMemTable(mem.regions());
  const errFd = sys.eventfd();
  t.after(() => sys.close(errFd));
  const q0 = await setupQueue(fe, mem, 0, QSIZE, RING, { enable: true });
  t.after(() => q0.close());
  let q1 = await setupQueue(fe, mem, 1, QSIZE, RING + 0x4000, { enable: true });
  await fe.setVringErr(1, errFd);
  const echo = async (q: FrontendQueue): Promise<string> => {
    mem.memory.write(0x50000, Buffer.from('hi'));
    q.driver.addChain([{ gpa: 0x50000, len: 2 }], [{ gpa: 0x50800, len: 64 }]);
    q.kick(true);
    const u = await q.nextUsed();
    return Buffer.from(mem.memory.translate(0x50800, u.len)).toString();
  };
  assert.match(await echo(q1), /^HI @thread [1-9]\d*$/);
  const errSignalled = readable(errFd, 5000, 'worker ring err fd');
  q1.driver.setAvailIdx(q1.driver.availIdx + 0xffff);
  q1.kick(true);
  await errSignalled;
  for (let i = 0; i < 100; i++) q1.kick(true);
  const r0 = performance.now();
  await fe.getFeatures();
  assert.ok(performance.now() - r0 < 100, 'the protocol answers promptly');
  assert.match(await echo(q0), /^HI @thread 0$/);
  await fe.getVringBase(1);
  q1.close();
  q1 = await setupQueue(fe, mem, 1, QSIZE, RING + 0x4000, { enable: true });
  t.after(() => q1.close());
  assert.match(await echo(q1), /^HI @thread [1-9]\d*$/, 'the worker ring serves again after reset');
});
