// The addon's safety contract: arguments validated in C, handles type-tagged, no read-only
// mappings, file-size checks before mmap, and the SIGBUS guard for files shrunk after mapping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import * as sys from '../../src/sys/index.js';
import { GuestMemoryError, mapGuestRegion, onGuestMemoryFault } from '../../src/memory/index.js';

const PAGE = 4096;

/** Resolves with the first report for `mappingId`; rejects after `ms` (a guard against a hang, not a wait). */
function nextFault(mappingId: number, ms = 5000): Promise<sys.MemoryFault> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`no fault report for mapping ${mappingId} within ${ms} ms`));
    }, ms);
    const stop = sys.onMemoryFault((f) => {
      if (f.mappingId !== mappingId) return;
      clearTimeout(timer);
      stop();
      resolve(f);
    });
  });
}

test('fd arguments: NaN, 1.5, 2^32+1, -1, strings and bigints are refused before any syscall', () => {
  for (const bad of [NaN, 1.5, Infinity, '3', 3n, undefined, null, {}]) {
    assert.throws(() => sys.dup(bad as number), TypeError, `dup(${String(bad)})`);
  }
  for (const bad of [-1, 2 ** 31, 2 ** 32 + 1, -(2 ** 32) + 1]) {
    assert.throws(() => sys.dup(bad), RangeError, `dup(${bad})`);
    assert.throws(() => sys.close(bad), RangeError, `close(${bad})`);
    assert.throws(() => sys.eventfdWrite(bad, 1), RangeError);
    assert.throws(() => sys.ftruncate(bad, 0), RangeError);
    assert.throws(() => sys.sendmsg(3, new Uint8Array(1), [bad]), RangeError);
  }
  // A valid fd number that is not open reaches the kernel and fails there.
  assert.throws(() => sys.dup(0x7fffffff), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF');
});

test('integer and flag arguments: checked ranges and known bits only', () => {
  assert.throws(() => sys.eventfd(-1), RangeError);
  assert.throws(() => sys.eventfd(2 ** 32), RangeError);
  assert.throws(() => sys.eventfd(0, 0x40000000), RangeError, 'unknown eventfd flag');
  assert.throws(() => sys.memfdCreate('x', 0x1000), RangeError, 'unknown memfd flag');
  assert.throws(() => sys.ftruncate(0, -1), RangeError);
  assert.throws(() => sys.ftruncate(0, 0.5), TypeError);
    assert.throws(() => sys.eventfdWrite(0, 2n ** 64n), RangeError);
  assert.throws(() => sys.ftruncate(0, 2 ** 63), TypeError, 'beyond 2^53: not a safe integer');
  assert.throws(() => sys.ioctl(0, 2 ** 32, 0), RangeError);
  assert.throws(() => sys.ioctl(0, sys.BLKGETSIZE64, new Uint8Array(4)), RangeError, 'buffer shorter than _IOC_SIZE');
  assert.throws(() => sys.listenUnix('/tmp/x', -1), RangeError);
  const [a, b] = sys.socketpair();
  try {
    assert.throws(() => sys.recvmsg(a, new Uint8Array(8), 9), RangeError);
    assert.throws(() => sys.recvmsg(a, new Uint8Array(8), NaN), TypeError);
  } finally {
    sys.close(a);
    sys.close(b);
  }
});

test('mmap: a range beyond the end of the file is refused (EINVAL), so it can never SIGBUS', () => {
  const fd = sys.memfdCreate('vhu-eof');
  try {
    sys.ftruncate(fd, PAGE);
    assert.throws(() => sys.mmap(fd, 0, 1 << 20), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL' && /beyond the end of the file/.test(e.message));
    assert.throws(() => sys.mmap(fd, PAGE, PAGE), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL');
    assert.throws(() => sys.mmap(fd, 2n ** 63n, 1), RangeError, 'offset + length overflows off_t');
    const m = sys.mmap(fd, 0, PAGE);
    assert.equal(m.window(0).byteLength, PAGE);
    m.unmap();
    // The guest-memory layer says which region and why.
    assert.throws(
      () => mapGuestRegion({ guestPhysAddr: 0, memorySize: 1 << 20, userAddr: 0x7f0000000000, mmapOffset: 0 }, fd),
      (e: unknown) => e instanceof GuestMemoryError && e.kind === 'out-of-range' && /ends beyond the end of the file \(0x1000 bytes\)/.test(e.message),
    );
  } finally {
    sys.close(fd);
  }
  // Neither a regular file nor a block device: the size cannot be checked, so it is refused.
  const efd = sys.eventfd();
  try {
    assert.equal(sys.fileInfo(efd).kind, 'other');
    assert.throws(() => sys.mmap(efd, 0, PAGE), (e: unknown) => e instanceof sys.SysError && e.code === 'ENODEV');
  } finally {
    sys.close(efd);
  }
});

test('the addon itself refuses foreign handles (a watcher handle given as a mapping and vice versa)', () => {
  // Run in a child so that the raw addon can be loaded directly, as a hostile caller would.
  const root = new URL('../../..', import.meta.url).pathname;
  const code = `
    const n = require('node-gyp-build')(${JSON.stringify(root)});
    const fd = n.memfdCreate('t', 1); n.ftruncate(fd, 4096);
    const [mh] = n.mmap(fd, 0, 4096, n.constants.PROT_READ | n.constants.PROT_WRITE, 1);
    const efd = n.eventfd(0, n.constants.EFD_NONBLOCK);
    const wh = n.watch(efd, 1, () => {});
    const out = [];
    for (const [f, args] of [[n.munmap, [wh]], [n.window, [wh, 0]], [n.watchStart, [mh, 1]], [n.watchClose, [mh]],
                             [n.munmap, [{}]], [n.watchStop, [Buffer.alloc(8)]], [n.window, [mh, 1]], [n.window, [mh, -1]]]) {
      try { f(...args); out.push('no error'); } catch (e) { out.push(e.constructor.name); }
    }
    n.watchClose(wh); n.munmap(mh);
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), ['TypeError', 'TypeError', 'TypeError', 'TypeError', 'TypeError', 'TypeError', 'RangeError', 'RangeError']);
});

test('no read-only mapping can be created, so no JS store can SIGSEGV', () => {
  const fd = sys.memfdCreate('vhu-ro');
  try {
    sys.ftruncate(fd, PAGE);
    assert.throws(() => sys.mmap(fd, 0, PAGE, sys.PROT_READ), RangeError);
    assert.throws(() => sys.mmap(fd, 0, PAGE, sys.PROT_READ, sys.MAP_PRIVATE), RangeError);
    assert.throws(() => sys.mmap(fd, 0, PAGE, sys.PROT_READ | sys.PROT_WRITE, 0x10 /* MAP_FIXED */), RangeError);
  } finally {
    sys.close(fd);
  }
});

test('SIGBUS guard: a shrunk file reads zeroes instead of killing the process, and the fault is reported', async () => {
  const fd = sys.memfdCreate('vhu-shrink');
  sys.ftruncate(fd, 4 * PAGE);
  const m = sys.mmap(fd, 0, 4 * PAGE);
  try {
    assert.equal(m.guarded, true);
    const u8 = new Uint8Array(m.window(0));
    u8.fill(0xaa);
    const report = nextFault(m.id);
    sys.ftruncate(fd, PAGE);
    assert.equal(u8[2 * PAGE + 5], 0, 'the page past the new end reads as zero');
    u8[3 * PAGE] = 7; // a store past the end lands in the private zero page
    assert.equal(u8[3 * PAGE], 7);
    assert.equal(u8[0], 0xaa, 'the page still inside the file is untouched');
    const f = await report;
    assert.equal(f.mappingId, m.id);
    assert.ok(f.address >= m.address + BigInt(PAGE) && f.address < m.address + BigInt(4 * PAGE), `fault at ${f.address.toString(16)}`);
    assert.ok(f.pages >= 1);
  } finally {
    m.unmap();
    sys.close(fd);
  }
});

test('SIGBUS guard: a fault in a worker thread is recovered there and reported to the subscribing thread', async () => {
  const fd = sys.memfdCreate('vhu-shrink-w');
  sys.ftruncate(fd, 2 * PAGE);
  const m = sys.mmap(fd, 0, 2 * PAGE);
  try {
    const report = nextFault(m.id);
    sys.ftruncate(fd, PAGE);
    const sysUrl = new URL('../../src/sys/index.js', import.meta.url).href;
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.sysUrl).then((sys) => {
        const w = sys.wrapMemory(workerData.address, workerData.length);
        const u8 = new Uint8Array(w.window(0));
        parentPort.postMessage(u8[workerData.page + 1]);
        w.unmap();
      });`;
    const worker = new Worker(code, { eval: true, workerData: { sysUrl, address: m.address, length: m.length, page: PAGE } });
    const value = await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.equal(value, 0);
    assert.equal((await report).mappingId, m.id);
    await worker.terminate();
  } finally {
    m.unmap();
    sys.close(fd);
  }
});

test('sealed memfds (F_SEAL_SHRINK) are the fast path: not registered with the guard, and cannot shrink', () => {
  const fd = sys.memfdCreate('vhu-sealed', sys.MFD_CLOEXEC | sys.MFD_ALLOW_SEALING);
  try {
    sys.ftruncate(fd, 2 * PAGE);
    sys.addSeals(fd, sys.F_SEAL_SHRINK);
    assert.equal(sys.getSeals(fd) & sys.F_SEAL_SHRINK, sys.F_SEAL_SHRINK);
    assert.equal(sys.fileInfo(fd).seals & sys.F_SEAL_SHRINK, sys.F_SEAL_SHRINK);
    assert.throws(() => sys.ftruncate(fd, PAGE), (e: unknown) => e instanceof sys.SysError && e.code === 'EPERM');
    const m = sys.mmap(fd, 0, 2 * PAGE);
    assert.equal(m.guarded, false);
    new Uint8Array(m.window(0)).fill(1);
    m.unmap();
    assert.throws(() => sys.addSeals(fd, 0x1000), RangeError, 'unknown seal bit');
  } finally {
    sys.close(fd);
  }
  const plain = sys.memfdCreate('vhu-unsealable');
  try {
    assert.throws(() => sys.addSeals(plain, sys.F_SEAL_SHRINK), (e: unknown) => e instanceof sys.SysError && e.code === 'EPERM');
  } finally {
    sys.close(plain);
  }
});

test('guest-memory faults name the region, mark it poisoned, and carry its owner', async () => {
  const fd = sys.memfdCreate('vhu-region');
  sys.ftruncate(fd, 16 * PAGE);
  const owner = { name: 'connection 1' };
  const region = mapGuestRegion({ guestPhysAddr: 0x100000, memorySize: 16 * PAGE, userAddr: 0x7f0000000000, mmapOffset: 0 }, fd, owner);
  try {
    const got = new Promise<{ owner: unknown; description: string; poisoned: boolean }>((resolve, reject) => {
      // The subscription does not keep the loop alive; this timer does (and bounds a hang).
      const timer = setTimeout(() => reject(new Error('no guest-memory fault reported')), 5000);
      const stop = onGuestMemoryFault((f) => {
        clearTimeout(timer);
        stop();
        resolve({ owner: f.owner, description: f.description, poisoned: f.region?.poisoned ?? false });
      });
    });
    sys.ftruncate(fd, PAGE);
    const w = region.windowFor(8 * PAGE, 4);
    assert.equal(region.dv[w]!.getUint32(8 * PAGE, true), 0);
    const f = await got;
    assert.equal(f.owner, owner);
    assert.match(f.description, /region GuestRegion\[gpa 0x100000/);
    assert.equal(f.poisoned, true);
  } finally {
    region.unmap();
    sys.close(fd);
  }
});

test('SIGBUS that is not a guarded fault keeps its previous disposition (chained handler, or death)', () => {
  const sysUrl = new URL('../../src/sys/index.js', import.meta.url).href;
  // A JS SIGBUS listener installed before the guard is chained to for a sent signal.
  const chained = `
    process.on('SIGBUS', () => { console.log('chained'); process.exit(0); });
    import(${JSON.stringify(sysUrl)}).then((sys) => {
      const stop = sys.onMemoryFault(() => {});
      process.kill(process.pid, 'SIGBUS');
      setTimeout(() => { stop(); console.log('not delivered'); }, 5000);
    });`;
  const r1 = spawnSync(process.execPath, ['--input-type=module', '-e', chained], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r1.stdout.trim(), 'chained', r1.stderr);
  // Without one, the default action still kills the process.
  const dies = `
    import(${JSON.stringify(sysUrl)}).then((sys) => {
      sys.onMemoryFault(() => {});
      process.kill(process.pid, 'SIGBUS');
    });`;
  const r2 = spawnSync(process.execPath, ['--input-type=module', '-e', dies], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r2.signal, 'SIGBUS', `status ${r2.status} ${r2.stderr}`);
});
