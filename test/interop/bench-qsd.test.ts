// vhost-user-bench drives qemu-storage-daemon, QEMU's C back-end: a verified random read/write
// run with the data checked in the image afterwards by reading it back through the back-end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { requireTools } from '../helpers/tools.js';
import { createRawImage, startStorageDaemon } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';
import type { BlkLoadResult } from '../../src/driver/blk-load.js';

const run = promisify(execFile);
const bench = fileURLToPath(new URL('../../src/cli/bench.js', import.meta.url));

test('vhost-user-bench --verify randrw against qemu-storage-daemon: no errors, no mismatch, CPU per request measured', async (t) => {
  if (!requireTools(t, 'qemu-storage-daemon')) return;
  const tmp = makeTempDir(t, 'bench');
  const image = tmp.file('disk.img');
  await createRawImage(image, 32 << 20);
  const qsd = await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), numQueues: 2, t });
  const args = ['-s', qsd.socketPath, '--rw', 'randrw', '--verify', '--num-queues', '2', '--iodepth', '16', '--runtime', '1', '--json'];
  if (qsd.proc.pid !== undefined) args.push('--backend-pid', String(qsd.proc.pid));
  const r = JSON.parse((await run(process.execPath, [bench, ...args])).stdout) as BlkLoadResult;
  t.diagnostic(`qemu-storage-daemon randrw QD16x2: ${r.iops} IOPS, p99 ${r.latencyUs.p99} µs, CPU ${r.backend?.cpuUsPerRequest ?? '?'} µs/request`);
  assert.equal(r.errors, 0);
  assert.ok(r.reads > 0 && r.writes > 0);
  assert.ok(r.verify !== null && r.verify.mismatches === 0 && r.verify.readBackBlocks > 0, JSON.stringify(r.verify));
});
