// The blk image lock across a live migration: a destination disk opened with deferLock coexists
// with the source's locked one, cannot take the lock while the source holds it, and gets it once
// the source's device stopped during a migration (all rings stopped with VHOST_F_LOG_ALL acked).
// A plain stop (no dirty logging) keeps the lock. Real files, real OFD locks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileDisk, VhostUserBlkBackend } from '../../src/devices/blk/index.js';
import { VHOST_F_LOG_ALL } from '../../src/virtio/features.js';
import type { Logger, LogLevel } from '../../src/log.js';

class Lines implements Logger {
  lines: string[] = [];
  log(_level: LogLevel, msg: string): void { this.lines.push(msg); }
}

test('image lock: deferred on the destination, handed over when the source stops during a migration', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-lock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(1 << 20));
  const src = FileDisk.open(image);
  t.after(() => src.close());
  assert.throws(() => FileDisk.open(image), /locked by another process/, 'a second writer is refused');
  const dst = FileDisk.open(image, { deferLock: true });
  t.after(() => dst.close());
  assert.equal(src.imageLock?.held, true);
  assert.equal(dst.imageLock?.held, false);
  assert.throws(() => dst.imageLock?.acquire(), /locked by another process/);

  const logger = new Lines();
  const backend = new VhostUserBlkBackend({ disk: src, logger });
  // A VM stop without migration keeps the lock.
  backend.ackedFeatures(backend.features() & ~(1n << BigInt(VHOST_F_LOG_ALL)));
  backend.queueStopped(0);
  assert.equal(src.imageLock?.held, true, 'no dirty logging: not a migration');
  // Migration: logging on, then the switch-over stops the rings.
  backend.ackedFeatures(backend.features());
  backend.queueStopped(0);
  assert.equal(src.imageLock?.held, false);
  assert.match(logger.lines.join('\n'), /image lock released on .*disk\.img: device stopped during migration/);
  dst.imageLock?.acquire();
  assert.equal(dst.imageLock?.held, true, 'the destination takes it');
  // The source cannot take it back while the destination runs: two writers never happen.
  assert.throws(() => src.imageLock?.acquire(), /locked by another process/);
  await dst.close();
  assert.equal(dst.imageLock?.held, false, 'closing the disk drops the lock');
  src.imageLock?.acquire();
  assert.equal(src.imageLock?.held, true, 'a failed migration: the source resumes with the lock');
});
