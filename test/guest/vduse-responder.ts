/**
 * Worker thread answering a VDUSE device's control messages (test/guest/vdpa-vduse.ts). It must
 * be a separate thread: the kernel holds the vhost-vdpa caller (our main thread) until the answer.
 * Every request is answered OK and reported to the parent.
 */
import { openSync, readSync, writeSync, constants as fsConstants } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { VDUSE_MSG_SIZE, VDUSE_REQ_RESULT_OK, decodeRequest, encodeResponse } from '../../src/kernel/vduse.js';

const fd = openSync(workerData as string, fsConstants.O_RDWR);
parentPort?.postMessage({ ready: true });
const buf = new Uint8Array(VDUSE_MSG_SIZE);
const resp = new Uint8Array(VDUSE_MSG_SIZE);
for (;;) {
  const n = readSync(fd, buf); // blocks until the kernel has a request
  const r = decodeRequest(buf.subarray(0, n));
  writeSync(fd, encodeResponse(resp, r.requestId, VDUSE_REQ_RESULT_OK));
  parentPort?.postMessage({ type: r.type, status: r.status, start: r.start.toString(16), last: r.last.toString(16) });
}
