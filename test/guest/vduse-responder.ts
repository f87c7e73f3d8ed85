/**
 * Worker thread answering a VDUSE device's control messages (test/guest/vdpa-vduse.ts). It must
 * be a separate thread: the kernel holds the vhost-vdpa caller (our main thread) until the answer.
 * Every request is answered OK and reported to the parent. The fd is non-blocking and watched on
 * this thread's event loop, so the thread stays terminable (a blocking read() would pin it).
 */
import { openSync, readSync, writeSync, constants as fsConstants } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import * as sys from '../../src/sys/index.js';
import { VDUSE_MSG_SIZE, VDUSE_REQ_RESULT_OK, decodeRequest, encodeResponse } from '../../src/kernel/vduse.js';

const fd = openSync(workerData as string, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
const buf = new Uint8Array(VDUSE_MSG_SIZE);
const resp = new Uint8Array(VDUSE_MSG_SIZE);

function drain(): void {
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
      throw e;
    }
    const r = decodeRequest(buf.subarray(0, n));
    writeSync(fd, encodeResponse(resp, r.requestId, VDUSE_REQ_RESULT_OK));
    parentPort?.postMessage({ type: r.type, status: r.status, start: r.start.toString(16), last: r.last.toString(16) });
  }
}

sys.watchFd(fd, sys.POLLIN, drain);
parentPort?.postMessage({ ready: true });
