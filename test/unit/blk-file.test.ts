import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  FileDisk, INLINE_MAX_BYTES, RamDisk, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/devices/blk/index.js';
import { makeTempDir } from '../helpers/tmp.js';
import { PENDING } from '../../src/backend/index.js';
import { VIRTIO_BLK_F_FLUSH } from '../../src/devices/blk/config.js';
import { createVringWorker, type BlkWorkerData } from '../../src/devices/blk/worker.js';
import { BlkRig, dwzSegments, pattern } from './blk-harness.js';

const MIB = 1 << 20;

function image(path: string, size: number, seed: number): void {
  writeFileSync(path, pattern(size, seed));
}

function readFile(path: string, off: number, len: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const b = new Uint8Array(len);
    assert.equal(readSync(fd, b, 0, len, off), len);
    return b;
  } finally {
    closeSync(fd);
  }
}

// Every data-path test runs on both I/O paths: the libuv threadpool and io_uring.
for (const aio of ['threads', 'io_uring'] as const) {
  test(`FileDisk (aio=${aio}): OUT lands in the file, IN returns file bytes, FLUSH succeeds (verified with fs)`, async (t) => {
    const dir = makeTempDir(t, 'blkfile');
    const path = dir.file('disk.img');
    image(path, 4 * MIB, 5);
    const disk = FileDisk.open(path, { aio });
    const r = new BlkRig({ disk });
    assert.equal(disk.aio, aio);
    t.after(async () => { r.close(); await disk.close(); });
    assert.equal(disk.size, 4 * MIB);
    assert.equal(disk.isBlockDevice, false);
    const data = pattern(8192, 77);
    const w = r.submit(VIRTIO_BLK_T_OUT, 100, { out: [data.subarray(0, 512), data.subarray(512, 4608), data.subarray(4608)] });
    const rd = r.submit(VIRTIO_BLK_T_IN, 2000, { inLens: [512, 512, 3072] });
    const f = r.submit(VIRTIO_BLK_T_FLUSH, 0);
    const used = await r.run();
    assert.equal(used.length, 3);
    assert.equal(r.status(w), VIRTIO_BLK_S_OK);
    assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
    assert.equal(r.status(f), VIRTIO_BLK_S_OK);
    assert.deepEqual(readFile(path, 100 * 512, 8192), data);
    // The io_uring disk really moved the data through the ring (read, write and flush).
    if (aio === 'io_uring') assert.ok(disk.uringOps >= 3, `uring ops ${disk.uringOps}`);
    assert.deepEqual(r.inData(rd), pattern(4 * MIB, 5).subarray(2000 * 512, 2000 * 512 + 4096));
    // Neighbouring bytes untouched.
    assert.deepEqual(readFile(path, 100 * 512 - 512, 512), pattern(4 * MIB, 5).subarray(99 * 512, 100 * 512));
  });

  test(`FileDisk (aio=${aio}): DISCARD punches a hole; WRITE_ZEROES with and without unmap, and the write-zeroes fallback`, async (t) => {
    const dir = makeTempDir(t, 'blkfile');
    const path = dir.file('disk.img');
    image(path, 8 * MIB, 1);
    const disk = FileDisk.open(path, { aio });
    const r = new BlkRig({ disk });
    assert.equal(disk.aio, aio);
    t.after(async () => { r.close(); await disk.close(); });
    const spm = MIB / 512;
    const blocksBefore = fstatSync(disk.fd).blocks;
    const d = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [dwzSegments([{ sector: spm, num: 2 * spm }])] });
    const z1 = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 4 * spm + 3, num: 5, flags: 1 }])] });
    const z2 = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 5 * spm + 1, num: 2 }])] });
    await r.run();
    for (const x of [d, z1, z2]) assert.equal(r.status(x), VIRTIO_BLK_S_OK);
    assert.ok(fstatSync(disk.fd).blocks <= blocksBefore - (2 * MIB) / 512, 'discard deallocated the range');
    assert.equal(fstatSync(disk.fd).size, 8 * MIB);
    const expect = pattern(8 * MIB, 1);
    expect.fill(0, MIB, 3 * MIB);
    expect.fill(0, (4 * spm + 3) * 512, (4 * spm + 8) * 512);
    expect.fill(0, (5 * spm + 1) * 512, (5 * spm + 3) * 512);
    assert.equal(Buffer.compare(readFile(path, 0, 8 * MIB), expect), 0);
    // A file system without fallocate support: zeroes are written out.
    disk.setFallocateSupport(false, false);
    assert.equal(disk.canUnmap, false);
    const z3 = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 6 * spm + 4, num: spm - 4, flags: 1 }])] });
    const d2 = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [dwzSegments([{ sector: 0, num: 8 }])] });
    await r.run();
    assert.equal(r.status(z3), VIRTIO_BLK_S_OK);
    assert.equal(r.status(d2), VIRTIO_BLK_S_OK, 'discard is advisory: OK even when nothing is deallocated');
    expect.fill(0, 6 * MIB + 2048, 7 * MIB);
    assert.equal(Buffer.compare(readFile(path, 0, 8 * MIB), expect), 0);
    assert.equal(r.backend.getConfig(56, 1)[0], 0, 'write_zeroes_may_unmap cleared once unmapping is known unsupported');
  });

  test(`FileDisk (aio=${aio}): read-only open refuses writes; a file that is not a multiple of 512 exposes whole sectors only`, async (t) => {
    const dir = makeTempDir(t, 'blkfile');
    const path = dir.file('odd.img');
    image(path, 4096 + 100, 3);
    const disk = FileDisk.open(path, { readOnly: true, aio });
    const r = new BlkRig({ disk });
    assert.equal(disk.aio, aio);
    t.after(async () => { r.close(); await disk.close(); });
    assert.equal(r.backend.executor.capacity, 8);
    const w = r.submit(VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(512)] });
    const rd = r.submit(VIRTIO_BLK_T_IN, 7, { inLens: [512] });
    const past = r.submit(VIRTIO_BLK_T_IN, 8, { inLens: [512] });
    await r.run();
    assert.equal(r.status(w), VIRTIO_BLK_S_IOERR);
    assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
    assert.equal(r.status(past), VIRTIO_BLK_S_IOERR);
    assert.deepEqual(r.inData(rd), pattern(4196, 3).subarray(3584, 4096));
    await assert.rejects(disk.writev([new Uint8Array(512)], 0), /read-only/);
  });
}

test('FileDisk aio=io_uring fast path: kernel errors and short reads complete as IOERR with the reason logged', async (t) => {
  const dir = makeTempDir(t, 'blkfile');
  const path = dir.file('disk.img');
  image(path, 4 * MIB, 2);
  const disk = FileDisk.open(path, { aio: 'io_uring' });
  const r = new BlkRig({ disk });
  t.after(async () => { r.close(); await disk.close(); });
  const ok = r.submit(VIRTIO_BLK_T_IN, 8, { inLens: [4096] });
  await r.run();
  assert.equal(r.status(ok), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(ok), pattern(4 * MIB, 2).subarray(8 * 512, 8 * 512 + 4096));
  const before = disk.uringOps;
  // The backing shrinks under the disk: a read past its new end comes back short.
  writeFileSync(path, pattern(MIB, 2));
  const short = r.submit(VIRTIO_BLK_T_IN, 4096, { inLens: [4096] });
  await r.run();
  assert.equal(r.status(short), VIRTIO_BLK_S_IOERR);
  assert.ok(r.logger.has('transferred 0 of 4096 bytes'), JSON.stringify(r.logger.records));
  assert.equal(disk.uringOps, before + 1);
  // A disk over a write-only fd: the kernel refuses the read (EBADF = 9).
  const wfd = openSync(path, 'w');
  t.after(() => closeSync(wfd));
  const wdisk = FileDisk.borrow(wfd, { size: 4 * MIB, readOnly: false, blockSize: 512, isBlockDevice: false, aio: 'io_uring' });
  const r2 = new BlkRig({ disk: wdisk });
  t.after(async () => { r2.close(); await wdisk.close(); });
  const bad = r2.submit(VIRTIO_BLK_T_IN, 0, { inLens: [512] });
  const flushed = r2.submit(VIRTIO_BLK_T_OUT, 0, { out: [pattern(512, 1)] });
  await r2.run();
  assert.equal(r2.status(bad), VIRTIO_BLK_S_IOERR);
  assert.ok(r2.logger.has('read failed: errno 9'), JSON.stringify(r2.logger.records));
  assert.equal(r2.status(flushed), VIRTIO_BLK_S_OK);
  assert.equal(wdisk.uringOps, 2); // the read and the write (FLUSH negotiated: writeback, no sync per write)
  // Without FLUSH negotiated the device is writethrough: each write is followed by an fdatasync on the ring.
  const r3 = new BlkRig({ disk }, false);
  t.after(() => r3.close());
  const ops = disk.uringOps;
  const wt = r3.submit(VIRTIO_BLK_T_OUT, 16, { out: [pattern(1024, 6)] });
  await r3.run();
  assert.equal(r3.status(wt), VIRTIO_BLK_S_OK);
  assert.equal(disk.uringOps, ops + 2);
  assert.deepEqual(readFile(path, 16 * 512, 1024), pattern(1024, 6));
});

test('FileDisk: reads past a file that shrank return zeroes; huge iovec counts are split and finished', async (t) => {
  const dir = makeTempDir(t, 'blkfile');
  const path = dir.file('disk.img');
  image(path, MIB, 9);
  const disk = FileDisk.open(path);
  t.after(() => disk.close());
  // 2000 views of 512 bytes (> IOV_MAX 1024): libuv transfers at most 1024 per call.
  const many = Array.from({ length: 2000 }, () => new Uint8Array(512));
  await disk.readv(many, 0);
  assert.equal(Buffer.compare(Buffer.concat(many), pattern(MIB, 9).subarray(0, 2000 * 512)), 0);
  const src = Array.from({ length: 1500 }, (_, i) => pattern(512, i));
  await disk.writev(src, 0);
  assert.equal(Buffer.compare(readFile(path, 0, 1500 * 512), Buffer.concat(src)), 0);
  // Shrink the file under the disk: the tail reads as zeroes instead of failing.
  writeFileSync(path, pattern(1024, 1));
  const tail = [new Uint8Array(512), new Uint8Array(1024).fill(0xaa)];
  await disk.readv(tail, 512);
  assert.deepEqual(tail[0], pattern(1024, 1).subarray(512));
  assert.ok(tail[1]?.every((x) => x === 0));
});

test('FileDisk.open rejects directories and bad block sizes; RamDisk validates its size', (t) => {
  const dir = makeTempDir(t, 'blkfile');
  assert.throws(() => FileDisk.open(dir.path), /neither a regular file nor a block device|EISDIR/);
  writeFileSync(dir.file('x'), new Uint8Array(512));
  assert.throws(() => FileDisk.open(dir.file('x'), { blockSize: 1000 }), RangeError);
  assert.throws(() => new RamDisk({ size: 1000 }), RangeError);
  assert.equal(new RamDisk().size, 64 * MIB);
  assert.equal(new RamDisk().allocatedBytes, 0);
});

test('FileDisk io_uring inline path on tmpfs: an idle ring\'s IN / OUT is done synchronously (writethrough with RWF_DSYNC); a busy ring, a large request and inlineIo off use the ring', async (t) => {
  const dir = mkdtempSync('/dev/shm/vu-inline-');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'disk.img');
  image(path, 4 * MIB, 7);
  const disk = FileDisk.open(path, { aio: 'io_uring' });
  assert.equal(disk.inlineIo, 'memory');
  const r = new BlkRig({ disk });
  t.after(async () => { r.close(); await disk.close(); });
  // An IN and an OUT on an idle ring: both inline, the ring never sees them.
  const data = pattern(4096, 8);
  const w = r.submit(VIRTIO_BLK_T_OUT, 40, { out: [data.subarray(0, 1000 + 24), data.subarray(1024)] });
  const rd = r.submit(VIRTIO_BLK_T_IN, 300, { inLens: [512, 3584] });
  await r.run();
  assert.equal(r.status(w), VIRTIO_BLK_S_OK);
  assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
  assert.deepEqual(readFile(path, 40 * 512, 4096), data);
  assert.deepEqual(r.inData(rd), pattern(4 * MIB, 7).subarray(300 * 512, 300 * 512 + 4096));
  assert.equal(disk.inlineOps, 2);
  assert.equal(disk.uringOps, 0);
  // A FLUSH goes to the ring first: the IN behind it finds the ring busy and is staged there too.
  const f = r.submit(VIRTIO_BLK_T_FLUSH, 0);
  const behind = r.submit(VIRTIO_BLK_T_IN, 8, { inLens: [4096] });
  await r.run();
  assert.equal(r.status(f), VIRTIO_BLK_S_OK);
  assert.equal(r.status(behind), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(behind), pattern(4 * MIB, 7).subarray(8 * 512, 8 * 512 + 4096));
  assert.equal(disk.inlineOps, 2);
  assert.equal(disk.uringOps, 2);
  // Over INLINE_MAX_BYTES: the ring's workers copy it.
  const big = r.submit(VIRTIO_BLK_T_IN, 2048, { inLens: [INLINE_MAX_BYTES + 512] });
  await r.run();
  assert.equal(r.status(big), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(big), pattern(4 * MIB, 7).subarray(MIB, MIB + INLINE_MAX_BYTES + 512));
  assert.equal(disk.uringOps, 3);
  // Writethrough (no FLUSH negotiated): the inline write is durable when it returns, no fdatasync on the ring.
  const r2 = new BlkRig({ disk }, false);
  t.after(() => r2.close());
  const wt = r2.submit(VIRTIO_BLK_T_OUT, 64, { out: [pattern(2048, 9)] });
  await r2.run();
  assert.equal(r2.status(wt), VIRTIO_BLK_S_OK);
  assert.deepEqual(readFile(path, 64 * 512, 2048), pattern(2048, 9));
  assert.equal(disk.inlineOps, 3);
  assert.equal(disk.uringOps, 3);
  // inlineIo 'off': everything through the ring.
  const path2 = join(dir, 'disk2.img');
  image(path2, MIB, 5);
  const ring = FileDisk.open(path2, { aio: 'io_uring', inlineIo: 'off' });
  const r3 = new BlkRig({ disk: ring });
  t.after(async () => { r3.close(); await ring.close(); });
  const off = r3.submit(VIRTIO_BLK_T_IN, 8, { inLens: [4096] });
  await r3.run();
  assert.equal(r3.status(off), VIRTIO_BLK_S_OK);
  assert.deepEqual(r3.inData(off), pattern(MIB, 5).subarray(4096, 8192));
  assert.equal(ring.inlineIo, 'off');
  assert.equal(ring.inlineOps, 0);
  assert.equal(ring.uringOps, 1);
});

test('FileDisk io_uring inline path elsewhere: reads are tried with RWF_NOWAIT, writes use the ring; a file system that refuses nowait is not asked again; a short inline read is redone on the ring', async (t) => {
  // The checkout's file system is disk-backed here (ext4): page-cache hits complete inline.
  const dir = mkdtempSync(join(fileURLToPath(new URL('../../', import.meta.url)), 'vu-inline-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'disk.img');
  image(path, 4 * MIB, 3);
  const disk = FileDisk.open(path, { aio: 'io_uring' });
  assert.equal(disk.inlineIo, 'nowait');
  const r = new BlkRig({ disk });
  t.after(async () => { r.close(); await disk.close(); });
  const rd = r.submit(VIRTIO_BLK_T_IN, 16, { inLens: [4096] });
  await r.run();
  assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(rd), pattern(4 * MIB, 3).subarray(16 * 512, 16 * 512 + 4096));
  assert.equal(disk.inlineOps, 1);
  assert.equal(disk.uringOps, 0);
  const w = r.submit(VIRTIO_BLK_T_OUT, 16, { out: [pattern(512, 1)] });
  await r.run();
  assert.equal(r.status(w), VIRTIO_BLK_S_OK);
  assert.equal(disk.uringOps, 1);
  // Two reads served in one turn: the first inline, the second batched on the ring (at depth one
  // io_uring_enter for many requests beats a syscall each).
  const two = [r.submit(VIRTIO_BLK_T_IN, 64, { inLens: [4096] }), r.submit(VIRTIO_BLK_T_IN, 128, { inLens: [4096] })];
  await r.run();
  for (const [i, h] of two.entries()) {
    assert.equal(r.status(h), VIRTIO_BLK_S_OK);
    assert.deepEqual(r.inData(h), pattern(4 * MIB, 3).subarray((64 + 64 * i) * 512, (64 + 64 * i) * 512 + 4096));
  }
  assert.equal(disk.inlineOps, 2);
  assert.equal(disk.uringOps, 2);
  // The file shrinks: the inline read comes back short (0 bytes), the ring redoes it and reports it.
  writeFileSync(path, pattern(MIB, 3));
  const short = r.submit(VIRTIO_BLK_T_IN, 4096, { inLens: [4096] });
  await r.run();
  assert.equal(r.status(short), VIRTIO_BLK_S_IOERR);
  assert.ok(r.logger.has('transferred 0 of 4096 bytes'), JSON.stringify(r.logger.records));
  assert.equal(disk.uringOps, 3);
  // Asked for nowait on tmpfs, which refuses it: the first read learns it and the ring serves it.
  const shm = mkdtempSync('/dev/shm/vu-inline-');
  t.after(() => rmSync(shm, { recursive: true, force: true }));
  const shmPath = join(shm, 'disk.img');
  image(shmPath, MIB, 4);
  const nw = FileDisk.open(shmPath, { aio: 'io_uring', inlineIo: 'nowait' });
  const r2 = new BlkRig({ disk: nw });
  t.after(async () => { r2.close(); await nw.close(); });
  const a = r2.submit(VIRTIO_BLK_T_IN, 0, { inLens: [4096] });
  await r2.run();
  assert.equal(r2.status(a), VIRTIO_BLK_S_OK);
  assert.deepEqual(r2.inData(a), pattern(MIB, 4).subarray(0, 4096));
  assert.equal(nw.inlineIo, 'off');
  assert.equal(nw.inlineOps, 0);
  assert.equal(nw.uringOps, 1);
});

test('blk worker-thread module: its queues take the same allocation-free path (PENDING on the ring, a number inline, never a promise) and get adaptive polling', async (t) => {
  const dir = mkdtempSync('/dev/shm/vu-worker-');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'disk.img');
  image(path, 4 * MIB, 11);
  const main = FileDisk.open(path, { aio: 'io_uring' });
  t.after(() => main.close());
  for (const inlineIo of ['memory', 'off'] as const) {
    // The module runs here on the main thread: what a worker_thread would run, minus the thread.
    const w = createVringWorker({
      fd: main.fd, size: main.size, readOnly: false, blockSize: 512, isBlockDevice: false, aio: 'io_uring', inlineIo,
      pollUs: 25, serial: 'w', discard: true, maxInFlight: 64,
    } satisfies BlkWorkerData, 1);
    w.ackedFeatures?.((1n << 32n) | (1n << BigInt(VIRTIO_BLK_F_FLUSH)));
    const results: unknown[] = [];
    const r = new BlkRig({ disk: main }, true, (chain, vring, done) => {
      const x = (w.processChain as NonNullable<typeof w.processChain>)(1, chain, vring, done);
      results.push(x);
      return x;
    });
    t.after(() => r.close());
    const data = pattern(4096, 12);
    const wr = r.submit(VIRTIO_BLK_T_OUT, 80, { out: [data] });
    await r.run();
    const rd = r.submit(VIRTIO_BLK_T_IN, 80, { inLens: [4096] });
    await r.run();
    assert.equal(r.status(wr), VIRTIO_BLK_S_OK);
    assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
    assert.deepEqual(r.inData(rd), data);
    assert.equal(results.length, 2);
    for (const x of results) assert.ok(inlineIo === 'memory' ? typeof x === 'number' : x === PENDING, `${inlineIo}: ${String(x)}`);
    const opts = w.servingOptions?.(1);
    assert.equal(opts?.pollUs, 25);
    assert.equal(typeof opts?.pollHook, 'function');
  }
});
