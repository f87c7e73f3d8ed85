// hostIo (preadv2 / pwritev2 by host address) and fsType through the addon: real files on tmpfs
// and on the disk-backed file system of the checkout, a real memfd mapping as the "guest memory".
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sys from '../../src/sys/index.js';

const MEM = 1 << 20;

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 13 + seed * 5 + (i >> 9)) & 0xff;
  return b;
}

function tempDir(t: TestContext, base: string): string {
  const d = mkdtempSync(join(base, 'vu-hostio-'));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function guestMemory(t: TestContext): { u8: Uint8Array; addr: number } {
  const fd = sys.memfdCreate('vu-hostio');
  sys.ftruncate(fd, MEM);
  const m = sys.mmap(fd, 0, MEM);
  sys.close(fd);
  t.after(() => m.unmap());
  return { u8: new Uint8Array(m.window(0)), addr: Number(m.address) };
}

test('hostIo: a vectored read and write straight between a file and mapped memory, at an offset', (t) => {
  const dir = tempDir(t, '/dev/shm');
  const path = join(dir, 'f');
  const file = pattern(64 * 1024, 3);
  writeFileSync(path, file);
  const fd = openSync(path, 'r+');
  t.after(() => closeSync(fd));
  const { u8, addr } = guestMemory(t);
  // Three pieces scattered in memory, read from file offset 4096.
  const pairs = new Float64Array([addr + 100, 512, addr + 8192, 1024, addr + 70000, 2560]);
  assert.equal(sys.hostIo(fd, false, pairs, 3, 4096), 4096);
  assert.deepEqual(u8.subarray(100, 612), file.subarray(4096, 4608));
  assert.deepEqual(u8.subarray(8192, 9216), file.subarray(4608, 5632));
  assert.deepEqual(u8.subarray(70000, 72560), file.subarray(5632, 8192));
  // Write the first two pieces back at offset 0, durably (RWF_DSYNC).
  assert.equal(sys.hostIo(fd, true, pairs, 2, 0, sys.RWF_DSYNC), 1536);
  const now = readFileSync(path);
  assert.deepEqual(new Uint8Array(now.subarray(0, 1536)), file.subarray(4096, 5632));
  // Past the end of the file: 0 bytes, a value rather than an exception.
  assert.equal(sys.hostIo(fd, false, pairs, 1, 1 << 30), 0);
  // A kernel failure is a negative errno, not an exception: reading a directory fd.
  const dfd = openSync(dir, 'r');
  t.after(() => closeSync(dfd));
  assert.equal(sys.hostIo(dfd, false, pairs, 1, 0), -osConstants.errno.EISDIR);
});

test('hostIo: ranges outside every live mapping, malformed pairs, counts and flags are refused before the syscall', (t) => {
  const dir = tempDir(t, '/dev/shm');
  const path = join(dir, 'f');
  writeFileSync(path, pattern(8192, 1));
  const fd = openSync(path, 'r+');
  t.after(() => closeSync(fd));
  const { u8, addr } = guestMemory(t);
  const before = u8.slice(0, 64);
  // Straddles the end of the mapping, or lies just below it (memory the addon did not map).
  for (const pairs of [new Float64Array([addr + MEM - 100, 200]), new Float64Array([addr - 4096, 512])]) {
    assert.throws(() => sys.hostIo(fd, false, pairs, 1, 0), (e: unknown) => e instanceof sys.SysError && e.code === 'EFAULT');
  }
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([addr, 512.5]), 1, 0), /malformed/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([0, 512]), 1, 0), /malformed/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([addr, -1]), 1, 0), /malformed/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([addr, 512]), 2, 0), /count exceeds/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array(200), 65, 0), /count/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([addr, 512]), 0, 0), /count/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([addr, 512]), 1, 0, 0x10), /flags/);
  assert.throws(() => sys.hostIo(fd, false, new Uint8Array(16) as unknown as Float64Array, 1, 0), /Float64Array/);
  assert.throws(() => sys.hostIo(fd, false, new Float64Array([addr, 512]), 1, -1), /offset/);
  // Nothing was read into the mapping by any refused call.
  assert.deepEqual(u8.slice(0, 64), before);
});

test('fsType names tmpfs; RWF_NOWAIT reads hit the page cache where the file system supports them, tmpfs refuses them', (t) => {
  const shm = tempDir(t, '/dev/shm');
  const shmPath = join(shm, 'f');
  writeFileSync(shmPath, pattern(8192, 2));
  const sfd = openSync(shmPath, 'r');
  t.after(() => closeSync(sfd));
  assert.equal(sys.fsType(sfd), sys.TMPFS_MAGIC);
  const { u8, addr } = guestMemory(t);
  const pairs = new Float64Array([addr, 4096]);
  // shmem has no nowait reads: the kernel says so instead of blocking.
  assert.equal(sys.hostIo(sfd, false, pairs, 1, 0, sys.RWF_NOWAIT), -osConstants.errno.EOPNOTSUPP);
  // The checkout lives on a disk-backed file system here (ext4): a just-written file is in the page cache.
  const disk = tempDir(t, fileURLToPath(new URL('../../', import.meta.url)));
  const diskPath = join(disk, 'f');
  const data = pattern(8192, 4);
  writeFileSync(diskPath, data);
  const dfd = openSync(diskPath, 'r');
  t.after(() => closeSync(dfd));
  const type = sys.fsType(dfd);
  assert.notEqual(type, sys.TMPFS_MAGIC, 'the checkout is expected on a disk-backed file system');
  assert.equal(sys.hostIo(dfd, false, pairs, 1, 4096, sys.RWF_NOWAIT), 4096);
  assert.deepEqual(u8.subarray(0, 4096), data.subarray(4096));
  assert.throws(() => sys.fsType(-1));
});
