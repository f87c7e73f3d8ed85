// vhost-user-probe --device-type blk reads the whole virtio-blk config space and decodes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { RamDisk, VhostUserBlkBackend } from '../../src/devices/blk/index.js';
import { silentLogger } from '../../src/log.js';

const run = promisify(execFile);
const probe = fileURLToPath(new URL('../../src/cli/probe.js', import.meta.url));

test('probe --device-type blk decodes capacity, queues, block size and discard limits of our blk daemon', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-probe-'));
  const disk = new RamDisk({ size: 8 << 20 });
  const daemon = new VhostUserDaemon('blk', new VhostUserBlkBackend({ disk, numQueues: 3, logger: silentLogger }), { logger: silentLogger });
  const sock = join(dir, 'blk.sock');
  daemon.serve(sock);
  t.after(async () => { await daemon.stop(); await disk.close(); rmSync(dir, { recursive: true, force: true }); });
  const { stdout } = await run(process.execPath, [probe, '--socket-path', sock, '--device-type', 'blk']);
  const rep = JSON.parse(stdout) as { config: string; configDecoded: Record<string, unknown> };
  assert.equal(rep.config.length, 120, '60 bytes read');
  assert.equal(rep.configDecoded.capacity, String((8 << 20) / 512));
  assert.equal(rep.configDecoded.capacityBytes, String(8 << 20));
  assert.equal(rep.configDecoded.numQueues, 3);
  assert.equal(rep.configDecoded.blkSize, 512);
  assert.equal(rep.configDecoded.segMax, 254);
  assert.ok((rep.configDecoded.maxDiscardSectors as number) > 0);
  // Without a device type nothing is read unless asked.
  const plain = JSON.parse((await run(process.execPath, [probe, '--socket-path', sock])).stdout) as Record<string, unknown>;
  assert.equal(plain.config, undefined);
});
