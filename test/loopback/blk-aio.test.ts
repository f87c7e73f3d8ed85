// vhost-user-blk --aio io_uring|threads over a file on tmpfs: each path named in the log, verified
// random reads and writes on two queues through vhost-user-bench, bad --aio refused.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startOurDaemon } from '../helpers/our-daemon.js';
import type { BlkLoadResult } from '../../src/driver/blk-load.js';

const run = promisify(execFile);
const bench = fileURLToPath(new URL('../../src/cli/bench.js', import.meta.url));
const blk = fileURLToPath(new URL('../../src/cli/blk.js', import.meta.url));

function shmDir(t: TestContext): string {
  const d = mkdtempSync('/dev/shm/vu-aio-');
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

for (const aio of ['io_uring', 'threads'] as const) {
  test(`vhost-user-blk --aio ${aio}: names its data path and serves verified randrw on 2 queues`, async (t) => {
    const dir = shmDir(t);
    const img = join(dir, 'disk.img');
    writeFileSync(img, new Uint8Array(16 << 20));
    const sock = join(dir, 'blk.sock');
    const d = await startOurDaemon('blk', sock, ['--blk-file', img, '--num-queues', '2', '--aio', aio], t);
    await d.proc.waitForText(/data path aio=(\w+)/, 5000, () => d.proc.stdout + d.proc.stderr).then((m) => assert.equal(m[1], aio));
    const { stdout } = await run(process.execPath, [bench, '-s', sock, '--rw', 'randrw', '--verify', '--num-queues', '2',
      '--iodepth', '16', '--runtime', '1', '--json']);
    const r = JSON.parse(stdout) as BlkLoadResult;
    assert.equal(r.errors, 0);
    assert.ok(r.reads > 0 && r.writes > 0, `${r.reads} reads, ${r.writes} writes`);
    assert.ok(r.verify !== null && r.verify.mismatches === 0 && r.verify.checkedReads > 0, JSON.stringify(r.verify));
  });
}

test('vhost-user-blk --threads 2: queue 1 is served by a worker thread with its own ring; verified randrw on both queues', async (t) => {
  const dir = shmDir(t);
  const img = join(dir, 'disk.img');
  writeFileSync(img, new Uint8Array(16 << 20));
  const sock = join(dir, 'blk.sock');
  const d = await startOurDaemon('blk', sock, ['--blk-file', img, '--num-queues', '2', '--threads', '2', '--aio', 'io_uring'], t);
  const { stdout } = await run(process.execPath, [bench, '-s', sock, '--rw', 'randrw', '--verify', '--num-queues', '2',
    '--iodepth', '16', '--runtime', '1', '--json']);
  const r = JSON.parse(stdout) as BlkLoadResult;
  assert.equal(r.errors, 0);
  assert.ok(r.verify !== null && r.verify.mismatches === 0 && r.verify.checkedReads > 0, JSON.stringify(r.verify));
  // The worker announced itself once the connection set its queues up.
  await d.proc.waitForText(/worker thread 1: serving its queues, data path aio=io_uring/, 5000, () => d.proc.stdout + d.proc.stderr);
  // Usage: more threads than queues, or threads over a RAM disk.
  for (const args of [['--num-queues', '1', '--threads', '2'], ['--num-queues', '2', '--threads', '2']]) {
    const e = await run(process.execPath, [blk, '--socket-path', join(dir, 'x.sock'), ...args]).then(() => null, (x: { code: number; stderr: string }) => x);
    assert.ok(e !== null && e.code === 2, args.join(' '));
    assert.match(e.stderr, /--threads/);
  }
});

test('vhost-user-blk --aio refuses anything but io_uring and threads (status 2)', async () => {
  const e = await run(process.execPath, [blk, '--socket-path', '/tmp/none.sock', '--aio', 'native']).then(() => null, (x: { code: number; stderr: string }) => x);
  assert.ok(e !== null);
  assert.equal(e.code, 2);
  assert.match(e.stderr, /--aio must be io_uring or threads/);
});
