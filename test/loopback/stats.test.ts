// What an operator reads: the negotiated features by name, the memory table and started queues at
// connect; per-queue counters on SIGUSR1, every --stats period and at disconnect that match the
// I/O done; and a hint about share=on when the rings are not in shared memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../src/devices/blk/index.js';

const blk = fileURLToPath(new URL('../../src/cli/blk.js', import.meta.url));

interface Rec { msg: string; [k: string]: unknown }

/** The daemon as a child with JSON logs; `next(re)` resolves with the next record matching `re`. */
function startDaemon(sock: string, extra: string[] = []) {
  const child = spawn(process.execPath, [blk, '--socket-path', sock, '--log-format', 'json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const records: Rec[] = [];
  const waiters: { re: RegExp; from: number; resolve: (r: Rec) => void }[] = [];
  let buf = '';
  child.stderr.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      records.push(JSON.parse(buf.slice(0, nl)) as Rec);
      buf = buf.slice(nl + 1);
    }
    settle();
  });
  function settle(): void {
    for (const w of [...waiters]) {
      const hit = records.slice(w.from).find((r) => w.re.test(r.msg));
      if (hit) { waiters.splice(waiters.indexOf(w), 1); w.resolve(hit); }
    }
  }
  const serving = new Promise<void>((resolve) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('serving')) resolve(); });
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  return {
    child, records, serving, exited,
    /** The first record matching `re` logged after this call. */
    next(re: RegExp): Promise<Rec> {
      return new Promise((resolve) => waiters.push({ re, from: records.length, resolve }));
    },
    /** The first record matching `re` logged so far or later. */
    find(re: RegExp): Promise<Rec> {
      return new Promise((resolve) => { waiters.push({ re, from: 0, resolve }); settle(); });
    },
  };
}

test('counters on SIGUSR1, --stats and disconnect match the I/O done; connect-time records name features, memory and queues', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-stats-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'blk.sock');
  const d = startDaemon(sock, ['--stats', '1']);
  t.after(() => d.child.kill('SIGKILL'));
  await d.serving;
  const fe = await Frontend.connect(sock);
  const mem = new FrontendMemory(8 << 20);
  t.after(() => mem.close());
  const n = await negotiate(fe);
  await fe.setMemTable(mem.regions());
  const q = await setupQueue(fe, mem, 0, 64, 0x10000, { eventIdx: (n.features & (1n << 29n)) !== 0n, enable: true });
  const hdr = (type: number, sector: number): Buffer => {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(type, 0);
    b.writeBigUInt64LE(BigInt(sector), 8);
    return b;
  };
  // 3 writes and 2 reads of 4 KiB, then one chain pointing outside guest memory.
  for (let i = 0; i < 5; i++) {
    const gpa = 0x100000 + i * 0x2000;
    const write = i < 3;
    mem.memory.write(gpa, hdr(write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, i * 8));
    if (write) q.driver.addChain([{ gpa, len: 16 }, { gpa: gpa + 0x1000, len: 4096 }], [{ gpa: gpa + 0x20, len: 1 }]);
    else q.driver.addChain([{ gpa, len: 16 }], [{ gpa: gpa + 0x1000, len: 4096 }, { gpa: gpa + 0x20, len: 1 }]);
    q.kick(true);
    await q.nextUsed();
    assert.equal(mem.memory.readU8(gpa + 0x20), VIRTIO_BLK_S_OK);
  }
  q.driver.addChain([{ gpa: 0x7fff_0000, len: 16 }], [{ gpa: 0x100020, len: 1 }]);
  q.kick(true);
  assert.equal((await q.nextUsed()).len, 0);

  const expected = { requests: 6, bytesIn: 3 * (16 + 4096) + 2 * 16, bytesOut: 3 * 1 + 2 * 4097, errors: 1, inFlight: 0 };
  const check = (r: Rec, what: string): void => {
    for (const [k, v] of Object.entries(expected)) assert.equal(r[k], v, `${what}: ${k}`);
    assert.ok((r.kicks as number) >= 1 && (r.interrupts as number) >= 1, `${what}: kicks and interrupts counted`);
  };
  const usr1 = d.next(/^SIGUSR1: queue 0:$/);
  d.child.kill('SIGUSR1');
  check(await usr1, 'SIGUSR1');
  check(await d.next(/^stats: queue 0:$/), '--stats');

  // The connect-time records.
  const feats = await d.find(/^features negotiated: /);
  assert.match(feats.msg, /VIRTIO_F_VERSION_1/);
  assert.match(feats.msg, /VIRTIO_BLK_F_FLUSH/, 'device bits by name');
  assert.match((await d.find(/^protocol features negotiated: /)).msg, /VHOST_USER_PROTOCOL_F_REPLY_ACK/);
  assert.match((await d.find(/^memory table: 1 region/)).msg, /gpa 0x0\+0x800000/);
  assert.equal((await d.find(/^queue 0 started/)).queue, 0);

  const atDisconnect = d.next(/^connection 1 queue 0:$/);
  q.close();
  fe.close();
  check(await atDisconnect, 'disconnect');
  d.child.kill('SIGTERM');
  assert.equal(await d.exited, 0);
});

test('rings outside the shared memory: the error names the likely cause (guest RAM without share=on)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-stats-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'blk.sock');
  const d = startDaemon(sock);
  t.after(() => d.child.kill('SIGKILL'));
  await d.serving;
  const fe = await Frontend.connect(sock);
  const mem = new FrontendMemory(1 << 20);
  t.after(() => { fe.close(); mem.close(); });
  await negotiate(fe);
  await fe.setMemTable(mem.regions());
  await fe.setVringNum(0, 64);
  // Ring addresses in QEMU's address space but in no region it sent (what a non-shared RAM looks like).
  const elsewhere = 0x5555_0000_0000n;
  await assert.rejects(fe.setVringAddr({ index: 0, flags: 0, descUserAddr: elsewhere, usedUserAddr: elsewhere + 0x2000n, availUserAddr: elsewhere + 0x1000n, logGuestAddr: 0n }));
  const rec = await d.find(/SET_VRING_ADDR/);
  assert.match(rec.msg, /share=on/);
});
