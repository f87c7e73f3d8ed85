import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import {
  BLKDISCARD, BLKZEROOUT, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, SysError,
  close, fallocateAsync, ftruncate, ioctlRangeAsync, memfdCreate,
} from '../../src/sys/index.js';
import { makeTempDir } from '../helpers/tmp.js';

const MIB = 1 << 20;

/** A temp file of `size` bytes filled with 0xa5 (allocated, so punching holes frees blocks). */
function filledFile(path: string, size: number): number {
  const fd = openSync(path, 'w+');
  const chunk = new Uint8Array(MIB).fill(0xa5);
  for (let off = 0; off < size; off += MIB) writeSync(fd, chunk, 0, Math.min(MIB, size - off), off);
  return fd;
}

function readAt(fd: number, off: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  assert.equal(readSync(fd, b, 0, len, off), len);
  return b;
}

test('constants match <linux/falloc.h> and <linux/fs.h>', () => {
  assert.equal(FALLOC_FL_KEEP_SIZE, 0x01);
  assert.equal(FALLOC_FL_PUNCH_HOLE, 0x02);
  assert.equal(FALLOC_FL_ZERO_RANGE, 0x10);
  assert.equal(BLKDISCARD, 0x1277);
  assert.equal(BLKZEROOUT, 0x127f);
});

test('PUNCH_HOLE|KEEP_SIZE zeroes the range, frees blocks and keeps the size', async (t) => {
  const dir = makeTempDir(t, 'falloc');
  const fd = filledFile(dir.file('img'), 4 * MIB);
  try {
    const before = fstatSync(fd);
    await fallocateAsync(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MIB, 2 * MIB);
    const after = fstatSync(fd);
    assert.equal(after.size, 4 * MIB);
    assert.ok(after.blocks <= before.blocks - (2 * MIB) / 512, `blocks ${before.blocks} -> ${after.blocks}`);
    assert.ok(readAt(fd, MIB, 2 * MIB).every((b) => b === 0));
    assert.ok(readAt(fd, 0, MIB).every((b) => b === 0xa5));
    assert.ok(readAt(fd, 3 * MIB, MIB).every((b) => b === 0xa5));
  } finally {
    closeSync(fd);
  }
});

test('ZERO_RANGE zeroes an unaligned range exactly and can extend the file without KEEP_SIZE', async (t) => {
  const dir = makeTempDir(t, 'falloc');
  const fd = filledFile(dir.file('img'), MIB);
  try {
    await fallocateAsync(fd, FALLOC_FL_ZERO_RANGE, 1000, 5000);
    const b = readAt(fd, 0, 8192);
    assert.ok(b.subarray(0, 1000).every((x) => x === 0xa5));
    assert.ok(b.subarray(1000, 6000).every((x) => x === 0));
    assert.ok(b.subarray(6000).every((x) => x === 0xa5));
    await fallocateAsync(fd, FALLOC_FL_ZERO_RANGE, MIB, 4096);
    assert.equal(fstatSync(fd).size, MIB + 4096);
  } finally {
    closeSync(fd);
  }
});

test('punching a memfd (shmem) works too', async () => {
  const fd = memfdCreate('falloc');
  try {
    ftruncate(fd, 64 * 1024);
    const w = new Uint8Array(64 * 1024).fill(7);
    assert.equal(writeSync(fd, w, 0, w.length, 0), w.length);
    await fallocateAsync(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192);
    const b = readAt(fd, 0, 16384);
    assert.ok(b.subarray(0, 4096).every((x) => x === 7));
    assert.ok(b.subarray(4096, 12288).every((x) => x === 0));
    assert.ok(b.subarray(12288).every((x) => x === 7));
  } finally {
    close(fd);
  }
});

test('failures reject with SysError naming the call; bad arguments throw synchronously', async (t) => {
  // INT_MAX is a valid fd number that is not open.
  await assert.rejects(fallocateAsync(0x7fffffff, FALLOC_FL_ZERO_RANGE, 0, 4096), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.code, 'EBADF');
    assert.equal(e.syscall, 'fallocate');
    return true;
  });
  const dir = makeTempDir(t, 'falloc');
  const fd = filledFile(dir.file('img'), MIB);
  try {
    // PUNCH_HOLE without KEEP_SIZE is invalid per fallocate(2) (EOPNOTSUPP, which libuv names ENOTSUP).
    await assert.rejects(fallocateAsync(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096), (e: unknown) => e instanceof SysError && e.errno === constants.errno.EOPNOTSUPP);
    await assert.rejects(fallocateAsync(fd, FALLOC_FL_ZERO_RANGE, 0, 0), (e: unknown) => e instanceof SysError && e.code === 'EINVAL');
    // A regular file is not a block device: the range ioctls fail with ENOTTY, asynchronously.
    await assert.rejects(ioctlRangeAsync(fd, BLKDISCARD, 0, 4096), (e: unknown) => e instanceof SysError && e.code === 'ENOTTY' && e.syscall === 'ioctl');
    await assert.rejects(ioctlRangeAsync(fd, BLKZEROOUT, 0, 4096), (e: unknown) => e instanceof SysError && e.code === 'ENOTTY');
  } finally {
    closeSync(fd);
  }
  assert.throws(() => fallocateAsync(-1, 0, 0, 1), RangeError);
  assert.throws(() => fallocateAsync(0, 0, -1, 1), RangeError);
  assert.throws(() => fallocateAsync(0, 0x4000_0000, 0, 1), RangeError);
  assert.throws(() => fallocateAsync(0, 0, 2n ** 63n - 1n, 2n), TypeError);
  assert.throws(() => ioctlRangeAsync(0, BLKDISCARD, 0, 1.5), TypeError);
});

test('many concurrent jobs all settle (threadpool queueing)', async (t) => {
  const dir = makeTempDir(t, 'falloc');
  const fd = filledFile(dir.file('img'), 2 * MIB);
  try {
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) jobs.push(fallocateAsync(fd, FALLOC_FL_ZERO_RANGE, i * 32768, 4096));
    await Promise.all(jobs);
    for (let i = 0; i < 64; i++) {
      const b = readAt(fd, i * 32768, 8192);
      assert.ok(b.subarray(0, 4096).every((x) => x === 0));
      assert.ok(b.subarray(4096).every((x) => x === 0xa5));
    }
  } finally {
    closeSync(fd);
  }
});
