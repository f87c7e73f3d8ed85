// io_uring through the addon: real files on tmpfs (/dev/shm), real memfd mappings as the "guest
// memory", completions awaited through the registered eventfd.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { hostAddressOf } from '../../src/sys/mapping.js';
import {
  IoUring, URING_OP_FDATASYNC, URING_OP_NOP, URING_OP_READ, URING_OP_WRITE, URING_SUBMIT_FIELDS, UringEngine, type UringTarget,
} from '../../src/sys/uring.js';
import { UringDisk } from '../../src/devices/blk/uring-io.js';
import { FileDisk } from '../../src/devices/blk/index.js';
import { withTimeout } from '../helpers/events.js';

const MEM = 1 << 20;

function shmDir(t: TestContext): string {
  const d = mkdtempSync('/dev/shm/vu-uring-');
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

/** A memfd mapping standing in for guest memory. */
function guestMemory(t: TestContext, size = MEM): { m: sys.Mapping; u8: Uint8Array; addr: number } {
  const fd = sys.memfdCreate('vu-uring');
  sys.ftruncate(fd, size);
  const m = sys.mmap(fd, 0, size);
  sys.close(fd);
  t.after(() => m.unmap());
  return { m, u8: new Uint8Array(m.window(0)), addr: Number(m.address) };
}

/** Reaps until `n` completions arrived, each wake-up coming from the ring's poll fd (ring fd or eventfd). */
async function reapAll(ring: IoUring, n: number): Promise<Map<number, number>> {
  const got = new Map<number, number>();
  await withTimeout(new Promise<void>((resolve, reject) => {
    const w = sys.watchFd(ring.pollFd, sys.POLLIN, () => {
      try {
        const k = ring.reap();
        for (let i = 0; i < k; i++) got.set(ring.cqes[2 * i] as number, ring.cqes[2 * i + 1] as number);
        if (got.size >= n) {
          w.close();
          resolve();
        }
      } catch (e) {
        w.close();
        reject(e as Error);
      }
    });
  }), 10_000, `${n} io_uring completions`);
  return got;
}

/** Whether `fd` becomes readable (POLLIN) within `ms`. */
async function firesWithin(fd: number, ms: number): Promise<boolean> {
  let fired = false;
  const w = sys.watchFd(fd, sys.POLLIN, () => { fired = true; });
  await new Promise((r) => setTimeout(r, ms));
  w.close();
  return fired;
}

function stage(ring: IoUring, i: number, op: number, fd: number, iov: number, count: number, offset: number, user: number): void {
  ring.sqes.set([op, fd, iov, count, offset, user], i * URING_SUBMIT_FIELDS);
}

for (const signal of ['ring', 'eventfd'] as const) {
test(`IoUring (${signal} signal): writev from guest memory, fdatasync, readv back into guest memory (tmpfs file)`, async (t) => {
  const dir = shmDir(t);
  const path = join(dir, 'data');
  writeFileSync(path, new Uint8Array(64 * 1024));
  const fd = openSync(path, 'r+');
  t.after(() => closeSync(fd));
  const { u8, addr } = guestMemory(t);
  const ring = IoUring.open(8, undefined, signal);
  assert.equal(ring.pollFd === ring.eventFd, signal === 'eventfd');
  t.after(() => ring.close());
  assert.equal(ring.entries, 8);
  assert.equal(ring.maxInFlight, 16);
  const data = pattern(8192, 3);
  u8.set(data, 4096);
  // Two iovecs (4 KiB + 4 KiB) written at 12 KiB, then a data sync, then a NOP.
  ring.iovs.set([addr + 4096, 4096, addr + 8192, 4096], 0);
  stage(ring, 0, URING_OP_WRITE, fd, 0, 2, 12288, 11);
  stage(ring, 1, URING_OP_NOP, 0, 0, 0, 0, 12);
  assert.equal(ring.submit(2), 2);
  let got = await reapAll(ring, 2);
  assert.equal(got.get(11), 8192);
  assert.equal(got.get(12), 0);
  stage(ring, 0, URING_OP_FDATASYNC, fd, 0, 0, 0, 13);
  assert.equal(ring.submit(1), 1);
  got = await reapAll(ring, 1);
  assert.equal(got.get(13), 0);
  assert.deepEqual(new Uint8Array(readFileSync(path).subarray(12288, 12288 + 8192)), data);
  // Read it back elsewhere in guest memory.
  ring.iovs.set([addr + 65536, 8192], 0);
  stage(ring, 0, URING_OP_READ, fd, 0, 1, 12288, 14);
  assert.equal(ring.submit(1), 1);
  assert.equal(ring.inFlight, 1);
  got = await reapAll(ring, 1);
  assert.equal(got.get(14), 8192);
  assert.equal(ring.inFlight, 0);
  assert.deepEqual(u8.subarray(65536, 65536 + 8192), data);
  // Reaped: the poll fd is quiet again (a ring fd that stayed readable would spin the event loop).
  assert.equal(ring.ready(), 0);
  assert.equal(await firesWithin(ring.pollFd, 50), false);
});
}

test('IoUring: kernel errors come back as negated errno; bad addresses are refused before the kernel sees them', async (t) => {
  const dir = shmDir(t);
  const path = join(dir, 'data');
  writeFileSync(path, new Uint8Array(8192));
  const wfd = openSync(path, 'w');
  t.after(() => closeSync(wfd));
  const { m, addr } = guestMemory(t);
  const ring = IoUring.open(4);
  t.after(() => ring.close());
  // Reading a write-only fd: EBADF from the kernel.
  ring.iovs.set([addr, 4096], 0);
  stage(ring, 0, URING_OP_READ, wfd, 0, 1, 0, 1);
  assert.equal(ring.submit(1), 1);
  const got = await reapAll(ring, 1);
  assert.equal(got.get(1), -osConstants.errno.EBADF);
  // An iovec running past the end of the mapping, one in a plain JS buffer, a zero address: EINVAL.
  for (const [a, len] of [[addr + MEM - 4096, 8192], [addr + MEM, 1], [0, 16]] as const) {
    ring.iovs.set([a, len], 0);
    stage(ring, 0, URING_OP_READ, wfd, 0, 1, 0, 2);
    assert.throws(() => ring.submit(1), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL' && /operation 0/.test(e.message));
  }
  // An iovec index beyond the table and an unknown op: EINVAL, nothing submitted.
  stage(ring, 0, URING_OP_READ, wfd, ring.iovCapacity, 1, 0, 3);
  assert.throws(() => ring.submit(1), /iovec range outside the iovec table/);
  stage(ring, 0, 99, wfd, 0, 1, 0, 3);
  assert.throws(() => ring.submit(1), /malformed operation/);
  assert.equal(ring.inFlight, 0);
  // After unmap the old address is refused too.
  m.unmap();
  ring.iovs.set([addr, 4096], 0);
  stage(ring, 0, URING_OP_READ, wfd, 0, 1, 0, 4);
  assert.throws(() => ring.submit(1), /outside every live mapping/);
  ring.close();
  assert.throws(() => ring.submit(0), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF');
});

test('UringEngine: one io_uring_enter per JS turn; views outside guest memory take the fallback (TS refuses them)', async (t) => {
  const dir = shmDir(t);
  const path = join(dir, 'data');
  const file = pattern(256 * 1024, 8);
  writeFileSync(path, file);
  const fd = openSync(path, 'r+');
  t.after(() => closeSync(fd));
  const { m, u8 } = guestMemory(t);
  const engine = new UringEngine(64);
  t.after(() => engine.close());
  const results: number[] = [];
  let resolveAll: () => void = () => undefined;
  const all = new Promise<void>((r) => { resolveAll = r; });
  const target: UringTarget = {
    uringComplete(res) {
      results.push(res);
      if (results.length === 32) resolveAll();
    },
  };
  for (let i = 0; i < 32; i++) {
    const view = u8.subarray(i * 4096, (i + 1) * 4096);
    assert.equal(hostAddressOf(view), Number(m.address) + i * 4096);
    assert.ok(engine.transfer(false, fd, [view], i * 8192, target));
  }
  assert.equal(engine.busy, 32);
  await withTimeout(all, 10_000, '32 reads');
  assert.equal(engine.batches, 1);
  assert.equal(engine.submitted, 32);
  assert.deepEqual(results, new Array<number>(32).fill(4096));
  for (let i = 0; i < 32; i++) assert.deepEqual(u8.subarray(i * 4096, (i + 1) * 4096), file.subarray(i * 8192, i * 8192 + 4096));
  // Plain memory, an empty view, and a detached window: not staged.
  assert.equal(hostAddressOf(new Uint8Array(16)), -1);
  assert.equal(engine.transfer(false, fd, [new Uint8Array(4096)], 0, target), false);
  assert.equal(engine.transfer(false, fd, [u8.subarray(0, 0)], 0, target), false);
  m.unmap();
  assert.equal(hostAddressOf(u8), -1);
  assert.equal(engine.transfer(true, fd, [u8], 0, target), false);
  assert.equal(engine.busy, 0);
});

test('UringDisk: errors reject with the errno name; short reads finish on the threadpool path', async (t) => {
  const dir = shmDir(t);
  const path = join(dir, 'data');
  writeFileSync(path, pattern(4096, 1));
  const wfd = openSync(path, 'w');
  t.after(() => closeSync(wfd));
  const { u8 } = guestMemory(t);
  let shortCalls = 0;
  const disk = new UringDisk(new UringEngine(8), (write, views, offset, done) => {
    shortCalls++;
    assert.equal(write, false);
    assert.equal(offset, 4096);
    assert.equal(done, 0);
    for (const v of views) v.fill(0x5a);
    return Promise.resolve();
  });
  t.after(() => disk.close());
  const p = disk.transfer(false, wfd, [u8.subarray(0, 512)], 0, 512);
  assert.ok(p !== null);
  await assert.rejects(p, (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF' && /io_uring readv/.test(e.message));
  const f = disk.flush(wfd);
  assert.ok(f !== null);
  await f;
  // Reading at EOF transfers 0 bytes: the rest goes to the short-transfer path.
  const rfd = openSync(path, 'r');
  t.after(() => closeSync(rfd));
  const q = disk.transfer(false, rfd, [u8.subarray(0, 512)], 4096, 512);
  assert.ok(q !== null);
  await q;
  assert.equal(shortCalls, 1);
  assert.ok(u8.subarray(0, 512).every((b) => b === 0x5a));
});

test('FileDisk aio=io_uring: reads past a file that shrank return zeroes; a refused ring falls back to threads with the reason', async (t) => {
  const dir = shmDir(t);
  const path = join(dir, 'disk.img');
  writeFileSync(path, pattern(65536, 4));
  const { u8 } = guestMemory(t);
  const disk = FileDisk.open(path, { aio: 'io_uring' });
  t.after(() => disk.close());
  assert.equal(disk.aio, 'io_uring');
  assert.equal(disk.aioFallbackReason, null);
  writeFileSync(path, pattern(1024, 1));
  u8.fill(0xaa, 0, 2048);
  await disk.readv([u8.subarray(0, 512), u8.subarray(512, 2048)], 512);
  assert.deepEqual(u8.subarray(0, 512), pattern(1024, 1).subarray(512));
  assert.ok(u8.subarray(512, 2048).every((x) => x === 0));
  assert.ok(disk.uringOps >= 1);
  // More entries than the kernel allows (32768): io_uring_setup fails, the disk keeps working.
  writeFileSync(join(dir, 'fb.img'), pattern(1024, 1));
  const fallback = FileDisk.open(join(dir, 'fb.img'), { aio: 'io_uring', uringEntries: 65536, readOnly: true });
  t.after(() => fallback.close());
  assert.equal(fallback.aio, 'threads');
  assert.match(fallback.aioFallbackReason ?? '', /io_uring_setup failed: EINVAL/);
  await fallback.readv([u8.subarray(0, 512)], 0);
  assert.deepEqual(u8.subarray(0, 512), pattern(1024, 1).subarray(0, 512));
  assert.equal(fallback.uringOps, 0);
});
