// Real memfd + mmap windows (including a 6 GiB sparse region), unmap detaching, eventfd semantics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as sys from '../../src/sys/index.js';

const GiB = 2 ** 30;

/** Byte view of [offset, offset + len) of a mapping, through the window that contains it. */
function bytes(m: sys.Mapping, offset: number, len: number): Uint8Array {
  assert.ok(len <= sys.WINDOW_STRIDE && offset + len <= m.length);
  const i = Math.floor(offset / sys.WINDOW_STRIDE);
  const w = m.windows[i];
  assert.ok(w !== undefined, `window ${i} exists`);
  return new Uint8Array(w, offset - i * sys.WINDOW_STRIDE, len);
}

test('window layout follows the contract (stride 2 GiB, size <= 4 GiB)', () => {
  const fd = sys.memfdCreate('vhu-layout');
  try {
    sys.ftruncate(fd, 5 * GiB);
    for (const len of [4096, 2 * GiB, 2 * GiB + 4096, 4 * GiB, 5 * GiB]) {
      const m = sys.mmap(fd, 0, len);
      try {
        const expect: number[] = [];
        for (let s = 0; s < len; s += sys.WINDOW_STRIDE) expect.push(Math.min(sys.WINDOW_SIZE, len - s));
        assert.deepEqual(m.windows.map((w) => w.byteLength), expect, `length ${len}`);
        assert.equal(m.length, len);
        assert.equal(typeof m.address, 'bigint');
        assert.equal(m.address % 4096n, 0n);
        assert.ok(m.mapped);
        assert.ok(Object.isFrozen(m.windows));
      } finally {
        m.unmap();
      }
    }
  } finally {
    sys.close(fd);
  }
});

test('6 GiB sparse memfd: writes near 0, 2 GiB, 4 GiB, 6 GiB-1 are seen through a second mapping at an offset', () => {
  const fd = sys.memfdCreate('vhu-6g');
  const len = 6 * GiB;
  sys.ftruncate(fd, len);
  const m = sys.mmap(fd, 0, len);
  // second mapping starts at 2 GiB of the file and covers the rest (4 GiB)
  const m2 = sys.mmap(fd, 2n * BigInt(GiB), 4 * GiB);
  const probe = sys.mmap(fd, 0, 4096);
  try {
    assert.equal(m.windows.length, 3);
    const marks: Array<[number, number[]]> = [
      [0, [1, 2, 3, 4]],
      [2 * GiB - 2, [5, 6, 7, 8]], // straddles the 2 GiB window boundary, inside window 0
      [2 * GiB + 2, [9]],
      [4 * GiB - 1, [10, 11]], // straddles 4 GiB: window 1 covers it
      [4 * GiB + 4096, [12]],
      [len - 1, [13]],
    ];
    for (const [off, data] of marks) bytes(m, off, data.length).set(data);

    assert.deepEqual([...bytes(probe, 0, 4)], [1, 2, 3, 4]);
    assert.deepEqual([...bytes(m2, 0, 3)], [7, 8, 9], 'file offset 2 GiB is m2 offset 0');
    assert.deepEqual([...bytes(m, 2 * GiB - 2, 5)], [5, 6, 7, 8, 9], 'window 0 and window 1 agree across 2 GiB');
    // m2 window 0 spans the whole 4 GiB of m2; check it sees bytes written through m's windows 1 and 2
    const m2all = new Uint8Array(m2.windows[0] ?? new ArrayBuffer(0));
    assert.equal(m2all.length, 4 * GiB);
    assert.equal(m2all[2 * GiB - 1], 10);
    assert.equal(m2all[2 * GiB], 11);
    assert.equal(m2all[2 * GiB + 4096], 12);
    assert.equal(m2all[4 * GiB - 1], 13);
    // the same byte through overlapping windows of one mapping
    const w1 = new Uint8Array(m.windows[1] ?? new ArrayBuffer(0));
    const w2 = new Uint8Array(m.windows[2] ?? new ArrayBuffer(0));
    assert.equal(w1[2], 9);
    assert.equal(w1[2 * GiB + 4096], 12);
    assert.equal(w2[4096], 12);
    w2[2 * GiB - 2] = 99;
    assert.equal(m2all[4 * GiB - 2], 99);
  } finally {
    m.unmap();
    m2.unmap();
    probe.unmap();
    sys.close(fd);
  }
});

test('unmap detaches every window: stale views throw TypeError, byteLength 0, idempotent', () => {
  const fd = sys.memfdCreate('vhu-detach');
  sys.ftruncate(fd, 3 * GiB);
  const m = sys.mmap(fd, 0, 3 * GiB);
  const w0 = m.windows[0] ?? new ArrayBuffer(0);
  const view = new Uint8Array(w0, 4096, 16);
  const dv = new DataView(m.windows[1] ?? new ArrayBuffer(0));
  view[0] = 1;
  dv.setUint32(0, 0xdeadbeef, true);
  m.unmap();
  sys.close(fd);
  assert.equal(m.mapped, false);
  m.unmap(); // idempotent
  for (const w of m.windows) assert.equal(w.byteLength, 0);
  assert.equal(view.byteLength, 0);
  assert.equal(view.length, 0);
  assert.equal(view[0], undefined, 'indexed read of a detached view is undefined, not a fault');
  assert.throws(() => view.fill(1), TypeError);
  assert.throws(() => dv.getUint32(0, true), TypeError);
  assert.throws(() => new Uint8Array(w0), TypeError);
});

test('mmap errors: EBADF, zero length, unaligned offset, read-only refused', () => {
  assert.throws(() => sys.mmap(0x7fffffff, 0, 4096), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF' && e.syscall === 'fstat');
  assert.throws(() => sys.mmap(-1, 0, 4096), RangeError);
  const fd = sys.memfdCreate('vhu-err');
  try {
    sys.ftruncate(fd, 8192);
    assert.throws(() => sys.mmap(fd, 0, 0), RangeError);
    assert.throws(() => sys.mmap(fd, 100, 4096), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL');
    // No read-only mappings: V8 cannot make a read-only ArrayBuffer, and a store through a
    // writable view of a PROT_READ page would be a SIGSEGV.
    assert.throws(() => sys.mmap(fd, 0, 4096, sys.PROT_READ, sys.MAP_PRIVATE), RangeError);
    assert.throws(() => sys.mmap(fd, 0, 4096, sys.PROT_WRITE, sys.MAP_SHARED), RangeError);
    const priv = sys.mmap(fd, 0, 4096, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE);
    new Uint8Array(priv.window(0)).fill(1); // copy-on-write: writable, never faults
    priv.unmap();
  } finally {
    sys.close(fd);
  }
});

test('eventfd: counter accumulates, read resets, EAGAIN as null, semaphore mode, overflow EAGAIN', () => {
  const fd = sys.eventfd();
  const sem = sys.eventfd(2, sys.EFD_NONBLOCK | sys.EFD_CLOEXEC | sys.EFD_SEMAPHORE);
  try {
    assert.equal(sys.eventfdRead(fd), null);
    sys.eventfdWrite(fd);
    sys.eventfdWrite(fd, 3);
    sys.eventfdWrite(fd, 4n);
    assert.equal(sys.eventfdRead(fd), 8n);
    assert.equal(sys.eventfdRead(fd), null);
    assert.equal(sys.eventfdRead(sem), 1n);
    assert.equal(sys.eventfdRead(sem), 1n);
    assert.equal(sys.eventfdRead(sem), null);
    sys.eventfdWrite(fd, 0xfffffffffffffffen); // the maximum counter value
    assert.throws(() => sys.eventfdWrite(fd, 1), (e: unknown) => e instanceof sys.SysError && e.code === 'EAGAIN' && e.syscall === 'write(eventfd)');
    assert.equal(sys.eventfdRead(fd), 0xfffffffffffffffen);
    assert.throws(() => sys.eventfdWrite(fd, -1), RangeError);
    assert.throws(() => sys.eventfdWrite(fd, 1.5), TypeError);
  } finally {
    sys.close(fd);
    sys.close(sem);
  }
});

test('openFdCount tracks opens and closes', () => {
  const before = sys.openFdCount();
  const fds = [sys.eventfd(), sys.memfdCreate('x'), ...sys.socketpair()];
  assert.equal(sys.openFdCount(), before + 4);
  for (const fd of fds) sys.close(fd);
  assert.equal(sys.openFdCount(), before);
});
