// Hostile inflight areas handed to the blk daemon with SET_INFLIGHT_FD: an area too small for its
// counts, for more queues than the device has, and regions with inconsistent entries. Each is
// refused with an error naming the request (SET_INFLIGHT_FD, or SET_VRING_KICK when the ring
// starts from the region); the daemon keeps serving and leaks no fd.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend, VhostUserRequestFailedError } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue } from '../../src/driver/frontend-driver.js';
import { DEFAULT_PROTOCOL_FEATURES, negotiate } from '../../src/vhost-user/negotiate.js';
import { ProtocolFeature, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { InflightArea } from '../../src/backend/inflight-area.js';
import { RamDisk, VhostUserBlkBackend } from '../../src/devices/blk/index.js';
import { CapturingLogger } from './fixtures/proto-device.js';
import { silentLogger } from '../../src/log.js';

const QSIZE = 16;

/** A memfd of `size` bytes with `patch` (offset → bytes) written into it. */
function area(size: number, patch: Array<[number, number[]]>): number {
  const fd = sys.memfdCreate('hostile-inflight');
  sys.ftruncate(fd, size);
  for (const [off, bytes] of patch) writeSync(fd, Buffer.from(bytes), 0, bytes.length, off);
  return fd;
}

const u16 = (v: number): number[] => [v & 0xff, v >>> 8];

const CASES: Array<{ name: string; size: number; numQueues: number; patch: Array<[number, number[]]>; at: 'set' | 'kick'; error: RegExp }> = [
  { name: 'an area smaller than its queue count and size need', size: 256, numQueues: 1, patch: [], at: 'set', error: /too small/ },
  { name: 'more queues than the device has', size: InflightArea.sizeFor(4, QSIZE), numQueues: 4, patch: [], at: 'set', error: /4 queues: the device has 1/ },
  { name: 'a region with an unknown version', size: InflightArea.sizeFor(1, QSIZE), numQueues: 1, patch: [[8, u16(3)], [10, u16(QSIZE)]], at: 'kick', error: /version 3/ },
  { name: 'a region for another ring size', size: InflightArea.sizeFor(1, QSIZE), numQueues: 1, patch: [[8, u16(1)], [10, u16(64)]], at: 'kick', error: /tracks 64 descriptors, the ring has 16/ },
  { name: 'an entry whose inflight flag is neither 0 nor 1', size: InflightArea.sizeFor(1, QSIZE), numQueues: 1, patch: [[8, u16(1)], [10, u16(QSIZE)], [16 + 16 * 3, [5]]], at: 'kick', error: /inflight flag 5/ },
  { name: 'a last batch reaching past the ring', size: InflightArea.sizeFor(1, QSIZE), numQueues: 1, patch: [[8, u16(1)], [10, u16(QSIZE)], [14, u16(0xff00)]], at: 'kick', error: /entries past the region's used_idx/ },
];

test('hostile inflight areas: refused with an error naming the request; the daemon keeps serving and leaks no fd', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-inflight-hostile-'));
  const disk = new RamDisk({ size: 1 << 20 });
  const logger = new CapturingLogger();
  const daemon = new VhostUserDaemon('blk', new VhostUserBlkBackend({ disk, logger: silentLogger, queueSize: QSIZE }), { logger });
  const sock = join(dir, 'blk.sock');
  daemon.serve(sock);
  t.after(async () => { await daemon.stop(); await disk.close(); rmSync(dir, { recursive: true, force: true }); });
  const before = sys.openFdCount();
  for (const c of CASES) {
    await t.test(c.name, async () => {
      const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
      const mem = new FrontendMemory(1 << 20);
      const fd = area(c.size, c.patch);
      const queues: Array<{ close(): void }> = [];
      try {
        await negotiate(fe, { wantProtocolFeatures: DEFAULT_PROTOCOL_FEATURES | protocolFeatureMask(ProtocolFeature.INFLIGHT_SHMFD) });
        const logged = logger.lines.length;
        const set = fe.setInflightFd({ mmapSize: BigInt(c.size), mmapOffset: 0n, numQueues: c.numQueues, queueSize: QSIZE }, fd);
        if (c.at === 'set') {
          await assert.rejects(set, VhostUserRequestFailedError);
        } else {
          await set;
          await fe.setMemTable(mem.regions());
          await assert.rejects(setupQueue(fe, mem, 0, QSIZE, 0x10000, { enable: true }), VhostUserRequestFailedError);
        }
        const request = c.at === 'set' ? 'VHOST_USER_SET_INFLIGHT_FD' : 'VHOST_USER_SET_VRING_KICK';
        const line = logger.lines.slice(logged).find((l) => l.includes(`${request} failed`));
        assert.ok(line !== undefined && c.error.test(line), `logged: ${logger.lines.slice(logged).join(' | ')}`);
        // Still serving this front-end, with a sane area now.
        const good = area(InflightArea.sizeFor(1, QSIZE), []);
        try {
          await fe.setInflightFd({ mmapSize: BigInt(InflightArea.sizeFor(1, QSIZE)), mmapOffset: 0n, numQueues: 1, queueSize: QSIZE }, good);
        } finally {
          sys.close(good);
        }
        await fe.setMemTable(mem.regions());
        queues.push(await setupQueue(fe, mem, 0, QSIZE, 0x10000, { enable: true }));
      } finally {
        fe.close();
        for (const q of queues) q.close();
        mem.close();
        sys.close(fd);
      }
    });
  }
  // Every connection ended: the daemon released what it mapped and dup'ed.
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  await fe.getFeatures();
  fe.close();
  await daemon.stop();
  assert.equal(sys.openFdCount(), before - 1, 'no fd leaked (the listening socket is closed)');
});
