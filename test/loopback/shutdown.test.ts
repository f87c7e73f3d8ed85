// SIGTERM while a guest floods the queues: the vhost-user-blk daemon exits within a bounded time,
// and every write it acknowledged is in the image.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT } from '../../src/devices/blk/index.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const blk = join(root, 'dist/src/cli/blk.js');
const MiB = 1024 * 1024;
const BLOCK = 4096;
const QUEUE_SIZE = 128;
const DATA = 0x100000;
const SLOT = 0x2000;

/** Block `n`'s content: distinct per block, so a lost or misplaced write shows. */
function pattern(n: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let o = 0; o < BLOCK; o += 8) {
    b.writeUInt32LE(n, o);
    b.writeUInt32LE((o ^ 0x5a5a5a5a) >>> 0, o + 4);
  }
  return b;
}

test('SIGTERM while a guest floods two queues: exit within 5 s, every acknowledged write is in the image', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-term-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.img');
  const blocks = (64 * MiB) / BLOCK;
  writeFileSync(image, Buffer.alloc(blocks * BLOCK));
  const sock = join(dir, 'blk.sock');
  const child = spawn(process.execPath, [blk, '--socket-path', sock, '--blk-file', image, '--num-queues', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<{ code: number | null; at: number }>((r) => child.on('exit', (code) => r({ code, at: performance.now() })));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('serving')) resolve(); });
    void exited.then(() => reject(new Error(`daemon exited early: ${stderr}`)));
  });

  const fe = await Frontend.connect(sock);
  const mem = new FrontendMemory(16 * MiB);
  t.after(() => { fe.close(); mem.close(); });
  const n = await negotiate(fe);
  await fe.setMemTable(mem.regions());
  const eventIdx = (n.features & (1n << 29n)) !== 0n;
  const queues = [
    await setupQueue(fe, mem, 0, QUEUE_SIZE, 0x10000, { eventIdx, enable: true }),
    await setupQueue(fe, mem, 1, QUEUE_SIZE, 0x20000, { eventIdx, enable: true }),
  ];

  let nextBlock = 0;
  const acked: number[] = [];
  let stopped = false;
  // Per queue: slot -> block in flight; each slot owns a header/data/status area in guest memory.
  const submit = (q: FrontendQueue, qi: number, slot: number, inFlight: Map<number, { block: number; gpa: number }>): void => {
    if (nextBlock >= blocks) return;
    const block = nextBlock++;
    const gpa = DATA + (qi * QUEUE_SIZE + slot) * SLOT;
    const hdr = Buffer.alloc(16);
    hdr.writeUInt32LE(VIRTIO_BLK_T_OUT, 0);
    hdr.writeBigUInt64LE(BigInt((block * BLOCK) / 512), 8);
    mem.memory.write(gpa, hdr);
    mem.memory.write(gpa + 0x1000, pattern(block));
    mem.memory.write(gpa + 0x20, Uint8Array.of(0xff));
    const head = q.driver.addChain([{ gpa, len: 16 }, { gpa: gpa + 0x1000, len: BLOCK }], [{ gpa: gpa + 0x20, len: 1 }]);
    inFlight.set(head, { block, gpa });
  };
  const flood = async (q: FrontendQueue, qi: number): Promise<void> => {
    const inFlight = new Map<number, { block: number; gpa: number }>();
    // Three descriptors per request: a full ring holds QUEUE_SIZE / 3 requests.
    for (let s = 0; s < Math.floor(QUEUE_SIZE / 3); s++) submit(q, qi, s, inFlight);
    q.kick(true);
    while (!stopped) {
      let u;
      try {
        u = await q.nextUsed(1000);
      } catch {
        q.kick(true);
        continue;
      }
      const r = inFlight.get(u.id);
      assert.ok(r !== undefined, `used id ${u.id} was not in flight`);
      inFlight.delete(u.id);
      assert.equal(mem.memory.readU8(r.gpa + 0x20), VIRTIO_BLK_S_OK, `block ${r.block}`);
      acked.push(r.block);
      submit(q, qi, (r.gpa - DATA) / SLOT - qi * QUEUE_SIZE, inFlight);
      q.kick();
    }
  };
  const floods = queues.map((q, i) => flood(q, i));
  // Let the flood reach steady state: some hundreds of acknowledged writes.
  while (acked.length < 500) await new Promise((r) => setImmediate(r));
  const sentAt = performance.now();
  child.kill('SIGTERM');
  // A guard against a hang only; the bound itself is asserted below.
  const guard = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const { code, at } = await exited;
  clearTimeout(guard);
  stopped = true;
  for (const q of queues) q.close();
  await Promise.allSettled(floods);
  const took = at - sentAt;
  t.diagnostic(`${acked.length} writes acknowledged; exit ${code} ${took.toFixed(0)} ms after SIGTERM`);
  assert.ok(took < 5000, `exited ${took.toFixed(0)} ms after SIGTERM`);
  assert.ok(code === 0 || code === 3, `exit status ${code}: ${stderr}`);
  const file = readFileSync(image);
  for (const b of acked) {
    assert.ok(file.subarray(b * BLOCK, (b + 1) * BLOCK).equals(pattern(b)), `acknowledged block ${b} is in the image`);
  }
});
