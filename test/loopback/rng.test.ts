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
  return { dev, mem, q };
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
