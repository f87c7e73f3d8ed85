// Loopback: our Frontend drives the vhost-user-rng back-end through a split ring.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { VhostUserRngBackend } from '../../src/devices/rng/index.js';
import { silentLogger } from '../../src/log.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/queue/index.js';

async function setup(t: { after(fn: () => Promise<void>): void }, opts: { maxBytes?: number; periodMs?: number } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'vu-rng-'));
  const sock = join(dir, 'rng.sock');
  const dev = new VhostUserRngBackend({ ...opts, logger: silentLogger });
  const daemon = new VhostUserDaemon('rng', dev, { logger: silentLogger });
  daemon.serve(sock);
  const fe = await Frontend.connect(sock);
  const mem = new FrontendMemory(1 << 20);
  t.after(async () => {
    fe.close();
    await daemon.stop();
    mem.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const n = await negotiate(fe);
  await fe.setMemTable(mem.regions());
  const q = await setupQueue(fe, mem, 0, 64, 0x1000, { eventIdx: (n.features & (1n << 29n)) !== 0n, enable: true });
  t.after(async () => q.close());
  return { dev, mem, q, fe };
}

test('rng loopback: writable buffers are filled with random bytes; readable ones get nothing', async (t) => {
  const { mem, q } = await setup(t);
  q.driver.addChain([], [{ gpa: 0x10000, len: 100 }, { gpa: 0x20000, len: 412 }]);
  q.kick();
  assert.equal((await q.nextUsed()).len, 512);
  const bytes = Buffer.concat([mem.memory.translate(0x10000, 100), mem.memory.translate(0x20000, 412)]);
  assert.ok(new Set(bytes).size > 200, 'bytes look random');
  q.driver.addChain([{ gpa: 0x30000, len: 16 }], [{ gpa: 0x31000, len: 16 }]);
  q.kick();
  assert.equal((await q.nextUsed()).len, 0, 'a request with a device-readable buffer is refused');
});

test('rng loopback: the rate limit caps bytes per period and resumes in the next one', async (t) => {
  const { dev, q } = await setup(t, { maxBytes: 1000, periodMs: 200 });
  for (let i = 0; i < 3; i++) q.driver.addChain([], [{ gpa: 0x10000 + i * 0x1000, len: 600 }]);
  q.kick();
  const t0 = Date.now();
  const lens = [(await q.nextUsed()).len, (await q.nextUsed()).len];
  assert.deepEqual(lens, [600, 400], 'the second request gets what is left of the budget');
  assert.equal((await q.nextUsed()).len, 600, 'served again in the next period');
  assert.ok(Date.now() - t0 >= 150, 'the third request waited for the next period');
  assert.equal(dev.bytesServed, 1600);
});

test('rng loopback: malformed chains complete with 0 and the queue keeps serving', async (t) => {
  const { dev, q } = await setup(t, { maxBytes: 64, periodMs: 60_000 });
  // Raw descriptors at the top of the table: a next index past it, a loop, a buffer outside memory.
  q.driver.writeDesc(60, 0x10000, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 200);
  q.driver.publish(60);
  q.driver.writeDesc(61, 0x10000, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 62);
  q.driver.writeDesc(62, 0x10000, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 61);
  q.driver.publish(61);
  q.driver.writeDesc(63, 0x7fff_0000_0000, 16, VIRTQ_DESC_F_WRITE, 0);
  q.driver.publish(63);
  q.driver.addChain([], [{ gpa: 0x20000, len: 32 }]);
  q.kick(true);
  const used = [await q.nextUsed(), await q.nextUsed(), await q.nextUsed(), await q.nextUsed()];
  assert.deepEqual(used.slice(0, 3), [{ id: 60, len: 0 }, { id: 61, len: 0 }, { id: 63, len: 0 }]);
  assert.equal(used[3]?.len, 32);
  assert.equal(dev.bytesServed, 32);
});

test('rng loopback: GET_VRING_BASE does not wait for the rate-limit period of a request waiting for budget', async (t) => {
  const { q, fe } = await setup(t, { maxBytes: 16, periodMs: 600_000 });
  q.driver.addChain([], [{ gpa: 0x10000, len: 16 }]);
  q.driver.addChain([], [{ gpa: 0x11000, len: 16 }]);
  q.kick(true);
  assert.equal((await q.nextUsed()).len, 16);
  // The second request waits for a period that is ten minutes away; stopping the ring settles it.
  assert.equal(await fe.getVringBase(0), 2);
  assert.deepEqual(q.driver.popUsed()?.len, 0);
});
