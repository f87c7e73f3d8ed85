// vhost-user-bench against our blk daemon: a verified mixed run, a back-end that loses writes
// caught by --verify, EVENT_IDX off, usage errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { RamDisk, VhostUserBlkBackend } from '../../src/devices/blk/index.js';
import { silentLogger } from '../../src/log.js';
import type { BlkLoadResult } from '../../src/driver/blk-load.js';

const run = promisify(execFile);
const bench = fileURLToPath(new URL('../../src/cli/bench.js', import.meta.url));
const blk = fileURLToPath(new URL('../../src/cli/blk.js', import.meta.url));

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'vu-bench-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('vhost-user-bench --verify randrw on two queues of our blk daemon: no mismatch, latency and back-end CPU reported', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'blk.sock');
  const d = spawn(process.execPath, [blk, '--socket-path', sock, '--num-queues', '2', '--ram-size-mib', '16', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => d.kill('SIGKILL'));
  await new Promise<void>((resolve) => {
    let out = '';
    d.stdout.on('data', (b: Buffer) => { out += b.toString(); if (out.includes('serving')) resolve(); });
  });
  const { stdout } = await run(process.execPath, [bench, '-s', sock, '--rw', 'randrw', '--verify', '--num-queues', '2', '--iodepth', '8',
    '--runtime', '1', '--json', '--backend-pid', String(d.pid)]);
  const r = JSON.parse(stdout) as BlkLoadResult;
  assert.equal(r.errors, 0);
  assert.equal(r.numQueues, 2);
  assert.ok(r.reads > 0 && r.writes > 0, `${r.reads} reads, ${r.writes} writes`);
  assert.ok(r.verify !== null && r.verify.mismatches === 0 && r.verify.checkedReads > 0 && r.verify.readBackBlocks > 0, JSON.stringify(r.verify));
  const l = r.latencyUs;
  assert.ok(l.min > 0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, JSON.stringify(l));
  assert.ok(r.backend !== null && r.backend.cpuSeconds > 0 && r.backend.cpuUsPerRequest > 0, JSON.stringify(r.backend));
  assert.equal(r.eventIdx, true);
  // Text output and EVENT_IDX off.
  const text = await run(process.execPath, [bench, '-s', sock, '--rw', 'read', '--bs', '8k', '--iodepth', '2', '--runtime', '1', '--event-idx', 'off']);
  assert.match(text.stdout, /^vhost-user-bench: read bs=8192 iodepth=2 queues=1 event-idx=off/);
  assert.match(text.stdout, /IOPS [\d.]+k?\s+BW [\d.]+ MiB\/s/);
});

/** A RAM disk that acknowledges writes and keeps none of them. */
class LosingDisk extends RamDisk {
  override writev(): Promise<void> {
    return Promise.resolve();
  }
}

test('vhost-user-bench --verify catches a back-end that acknowledges writes it lost (exit 1, the block named)', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'lossy.sock');
  const disk = new LosingDisk({ size: 4 << 20 });
  const daemon = new VhostUserDaemon('lossy', new VhostUserBlkBackend({ disk, logger: silentLogger }), { logger: silentLogger });
  daemon.serve(sock);
  t.after(async () => { await daemon.stop(); await disk.close(); });
  const r = await run(process.execPath, [bench, '-s', sock, '--rw', 'randwrite', '--verify', '--iodepth', '4', '--runtime', '1']).then(
    () => assert.fail('bench passed against a back-end that loses writes'),
    (e: { code: number; stdout: string }) => e,
  );
  assert.equal(r.code, 1);
  assert.match(r.stdout, /verify: \d+ reads checked, \d+ blocks read back, [1-9]\d* mismatches/);
  assert.match(r.stdout, /first mismatch: block \d+ .* expected block \d+ generation \d+/);
});

test('vhost-user-bench usage errors exit 2 with one line', async () => {
  for (const args of [[], ['-s', '/x', '--rw', 'sideways'], ['-s', '/x', '--bs', '1000'], ['-s', '/x', '--iodepth', '0'], ['--nope']]) {
    const e = await run(process.execPath, [bench, ...args]).then(() => null, (x: { code: number; stderr: string }) => x);
    assert.ok(e !== null, args.join(' '));
    assert.equal(e.code, 2, args.join(' '));
    assert.match(e.stderr, /^vhost-user-bench: [^\n]+\n$/);
  }
});
