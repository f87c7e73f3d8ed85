// vhost-user-blk --aio io_uring|threads (and --inline-io) over a file on tmpfs: each path named in the
// log, verified random reads and writes on two queues through vhost-user-bench, bad values refused.
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

// io_uring with the inline path (on tmpfs every idle-ring request is copied inline), io_uring with
// --inline-io off (every request through the ring), and the threadpool.
for (const [aio, inline] of [['io_uring', 'auto'], ['io_uring', 'off'], ['threads', 'auto']] as const) {
  test(`vhost-user-blk --aio ${aio} --inline-io ${inline}: names its data path and serves verified randrw on 2 queues`, async (t) => {
    const dir = shmDir(t);
    const img = join(dir, 'disk.img');
    writeFileSync(img, new Uint8Array(16 << 20));
    const sock = join(dir, 'blk.sock');
    const d = await startOurDaemon('blk', sock, ['--blk-file', img, '--num-queues', '2', '--aio', aio, '--inline-io', inline], t);
    const m = await d.proc.waitForText(/data path aio=(\w+)(?:, inline-io=(\w+))?/, 5000, () => d.proc.stdout + d.proc.stderr);
    assert.equal(m[1], aio);
    if (aio === 'io_uring') assert.equal(m[2], inline === 'auto' ? 'memory' : 'off');
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

test('vhost-user-blk --aio and --inline-io refuse unknown values (status 2)', async () => {
  for (const [args, msg] of [[['--aio', 'native'], /--aio must be io_uring or threads/], [['--inline-io', 'on'], /--inline-io must be auto or off/]] as const) {
    const e = await run(process.execPath, [blk, '--socket-path', '/tmp/none.sock', ...args]).then(() => null, (x: { code: number; stderr: string }) => x);
    assert.ok(e !== null);
    assert.equal(e.code, 2);
    assert.match(e.stderr, msg);
  }
});
