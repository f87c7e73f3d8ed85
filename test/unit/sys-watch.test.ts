// fd watchers (uv_poll) in the main thread and in worker_threads, with real eventfds and sockets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import * as sys from '../../src/sys/index.js';

const sysUrl = new URL('../../src/sys/index.js', import.meta.url).href;

/** Resolves on the next callback of a one-shot watcher on a fresh eventfd that we kick now. */
function sentinel(): Promise<void> {
  const fd = sys.eventfd();
  return new Promise((resolve) => {
    const w = sys.watchFd(fd, sys.POLLIN, () => {
      w.close();
      sys.close(fd);
      resolve();
    });
    sys.eventfdWrite(fd);
  });
}

test('watcher fires with (0, POLLIN) on eventfd write; stop/start; close inside the callback', async () => {
  const fd = sys.eventfd();
  const calls: Array<[number, number, bigint | null]> = [];
  let wake: (() => void) | undefined;
  const w = sys.watchFd(fd, sys.POLLIN, (status, events) => {
    calls.push([status, events, sys.eventfdRead(fd)]);
    wake?.();
  });
  try {
    const fired = new Promise<void>((r) => (wake = r));
    sys.eventfdWrite(fd, 7);
    await fired;
    assert.deepEqual(calls, [[0, sys.POLLIN, 7n]]);

    // stopped: a pending event must not be delivered, even after another watcher has fired
    w.stop();
    sys.eventfdWrite(fd, 1);
    await sentinel();
    await sentinel();
    assert.equal(calls.length, 1);

    const again = new Promise<void>((r) => (wake = r));
    w.start(sys.POLLIN);
    await again;
    assert.deepEqual(calls[1], [0, sys.POLLIN, 1n]);
  } finally {
    w.close();
    w.close(); // idempotent
    sys.close(fd);
  }
  assert.throws(() => w.start(sys.POLLIN), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF');
});

test('close() from inside the callback: never called again though the fd stays readable', async () => {
  const fd = sys.eventfd(1);
  let n = 0;
  const w = sys.watchFd(fd, sys.POLLIN, () => {
    n++;
    w.close(); // counter is left non-zero: level-triggered poll would fire again if still active
  });
  await sentinel();
  await sentinel();
  await sentinel();
  assert.equal(n, 1);
  sys.close(fd);
});

test('microtasks queued by the callback run before the next macrotask (make_callback semantics)', async () => {
  const fd = sys.eventfd(1);
  const order: string[] = [];
  const done = new Promise<void>((resolve) => {
    const w = sys.watchFd(fd, sys.POLLIN, () => {
      w.close();
      setImmediate(() => {
        order.push('immediate');
        resolve();
      });
      queueMicrotask(() => order.push('microtask'));
      process.nextTick(() => order.push('nextTick'));
    });
  });
  await done;
  sys.close(fd);
  assert.deepEqual(order, ['nextTick', 'microtask', 'immediate']);
});

test('POLLOUT on a socket; one watcher per fd (EEXIST); sys.close(fd) also closes its watcher', async () => {
  const [a, b] = sys.socketpair();
  const events = await new Promise<number>((resolve) => {
    const w = sys.watchFd(a, sys.POLLOUT | sys.POLLIN, (_s, ev) => {
      w.stop();
      resolve(ev);
    });
    assert.throws(() => sys.watchFd(a, sys.POLLIN, () => undefined), (e: unknown) => e instanceof sys.SysError && e.code === 'EEXIST');
  });
  assert.equal(events, sys.POLLOUT);
  sys.close(a); // closes the watcher too
  sys.close(b);
  // the fd number may be reused right away; a new watcher on it must be accepted
  const fd = sys.eventfd(1);
  const got = await new Promise<number>((resolve) => {
    const w = sys.watchFd(fd, sys.POLLIN, () => {
      w.close();
      resolve(fd);
    });
  });
  assert.equal(got, fd);
  sys.close(fd);
  assert.throws(() => sys.watchFd(0x7fffffff, sys.POLLIN, () => undefined), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF');
  assert.throws(() => sys.watchFd(-1, sys.POLLIN, () => undefined), RangeError);
  assert.throws(() => sys.watchFd(0, 64, () => undefined), RangeError);
});

/** Runs an ESM body in a worker with `sys`, `parentPort` and `workerData` in scope. */
function spawn(body: string, data: Record<string, unknown> = {}): Worker {
  const src = `
    const { parentPort, workerData, threadId } = require('node:worker_threads');
    import(workerData.sysUrl).then(async (sys) => { ${body} });`;
  return new Worker(src, { eval: true, workerData: { sysUrl, ...data } });
}

test('watcher inside a worker_thread runs on the worker loop and the worker exits cleanly', async () => {
  const worker = spawn(`
    const fd = sys.eventfd();
    const w = sys.watchFd(fd, sys.POLLIN, (status, events) => {
      parentPort.postMessage({ status, events, value: String(sys.eventfdRead(fd)), threadId });
      w.close();
      sys.close(fd);
      parentPort.close();
    });
    parentPort.postMessage({ fd });`);
  const messages: Array<Record<string, unknown>> = [];
  const workerThreadId = worker.threadId;
  worker.on('message', (m: Record<string, unknown>) => {
    messages.push(m);
    if (typeof m.fd === 'number') sys.eventfdWrite(m.fd, 5); // kick the worker's eventfd from the main thread
  });
  const [code] = (await once(worker, 'exit')) as [number];
  assert.equal(code, 0);
  assert.deepEqual(messages[1], { status: 0, events: sys.POLLIN, value: '5', threadId: workerThreadId });
  assert.notEqual(workerThreadId, 0);
});

test('an exception thrown by a watcher callback surfaces as an uncaught exception (Worker error)', async () => {
  const worker = spawn(`
    const fd = sys.eventfd(1);
    sys.watchFd(fd, sys.POLLIN, () => { throw new Error('boom from watcher'); });`);
  const [err] = (await once(worker, 'error')) as [Error];
  assert.match(err.message, /boom from watcher/);
});

test('worker teardown with open ref-ed watchers and live mappings; unref-ed watchers do not hold a worker', async () => {
  // stays alive only because of the ref-ed watcher, until terminate() runs the env cleanup
  const held = spawn(`
    const fd = sys.eventfd();
    sys.watchFd(fd, sys.POLLIN, () => {});
    const mfd = sys.memfdCreate('w'); sys.ftruncate(mfd, 1 << 20);
    const m = sys.mmap(mfd, 0, 1 << 20);
    new Uint8Array(m.windows[0])[0] = 1;
    parentPort.postMessage('ready');`);
  await once(held, 'message');
  const before = Date.now();
  await held.terminate();
  assert.ok(Date.now() - before < 5000);

  const free = spawn(`
    const fd = sys.eventfd();
    sys.watchFd(fd, sys.POLLIN, () => {}).unref();`);
  const [code] = (await once(free, 'exit')) as [number];
  assert.equal(code, 0);
});
