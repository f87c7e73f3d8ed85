// sys.wrapMemory: windows over a mapping owned elsewhere (another thread of this process) that
// alias the owner's memory, keep mmap's window layout, and only detach on unmap / thread teardown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as sys from '../../src/sys/index.js';

function memfdMapping(length: number): { fd: number; m: sys.Mapping } {
  const fd = sys.memfdCreate('wrap-test');
  sys.ftruncate(fd, length);
  return { fd, m: sys.mmap(fd, 0, length) };
}

test('wrapMemory aliases an existing mapping; unmap() detaches without unmapping it', () => {
  const { fd, m } = memfdMapping(0x10000);
  const w = sys.wrapMemory(m.address + 0x1000n, 0x2000);
  assert.equal(w.address, m.address + 0x1000n);
  assert.equal(w.length, 0x2000);
  assert.equal(w.windows.length, 1);
  assert.equal(w.windows[0]!.byteLength, 0x2000);
  new Uint8Array(w.windows[0]!).set([1, 2, 3], 0x10);
  assert.deepEqual(Array.from(new Uint8Array(m.windows[0]!, 0x1010, 3)), [1, 2, 3]);
  new Uint8Array(m.windows[0]!)[0x1fff + 0x1000] = 9;
  assert.equal(new Uint8Array(w.windows[0]!)[0x1fff], 9);

  w.unmap();
  w.unmap();
  assert.equal(w.mapped, false);
  assert.equal(w.windows[0]!.byteLength, 0, 'wrapped windows are detached');
  assert.equal(m.mapped, true);
  assert.deepEqual(Array.from(new Uint8Array(m.windows[0]!, 0x1010, 3)), [1, 2, 3], 'owner mapping still valid');
  m.unmap();
  sys.close(fd);
});

test('wrapMemory uses the overlapping-window layout of mmap for regions over 4 GiB', () => {
  const len = 5 * 2 ** 30;
  const { fd, m } = memfdMapping(len);
  const w = sys.wrapMemory(m.address, len);
  assert.deepEqual(w.windows.map((b) => b.byteLength), m.windows.map((b) => b.byteLength));
  assert.equal(w.windows.length, 3);
  // Byte 3 GiB is in window 1 at offset 1 GiB of both.
  new DataView(w.windows[1]!).setUint32(2 ** 30, 0xdeadbeef, true);
  assert.equal(new DataView(m.windows[1]!).getUint32(2 ** 30, true), 0xdeadbeef);
  w.unmap();
  m.unmap();
  sys.close(fd);
});

test('wrapMemory rejects a null address, an empty range and a wrapping range', () => {
  assert.throws(() => sys.wrapMemory(0n, 4096), { code: 'EINVAL' });
  assert.throws(() => sys.wrapMemory(0x1000n, 0), RangeError);
  assert.throws(() => sys.wrapMemory(0xffff_ffff_ffff_f000n, 0x2000), { code: 'EINVAL' });
  assert.throws(() => sys.wrapMemory(-1n, 4096), RangeError);
});

test('a worker thread writes through wrapped windows; its teardown leaves the mapping alone', async () => {
  const { fd, m } = memfdMapping(0x4000);
  const sysUrl = new URL('../../src/sys/index.js', import.meta.url).href;
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.sysUrl).then((sys) => {
      const w = sys.wrapMemory(workerData.address, 0x4000);
      new Uint8Array(w.windows[0]).set([7, 7, 7], 0x3000);
      parentPort.postMessage('done');
      // exit with the windows still attached: env teardown must only detach them
    });`;
  const worker = new Worker(code, { eval: true, workerData: { sysUrl, address: m.address } });
  const [msg] = await Promise.all([
    new Promise((r) => worker.once('message', r)),
    new Promise((r) => worker.once('exit', r)),
  ]);
  assert.equal(msg, 'done');
  assert.deepEqual(Array.from(new Uint8Array(m.windows[0]!, 0x3000, 3)), [7, 7, 7]);
  new Uint8Array(m.windows[0]!)[0] = 1; // still mapped: would crash if the worker had unmapped it
  m.unmap();
  sys.close(fd);
});
