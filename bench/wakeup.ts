/**
 * Wakeup latency: eventfd write -> JS watcher callback (the virtqueue kick path).
 *
 * Method: ping-pong between the main thread and a worker_thread, each blocked in its own libuv loop.
 * Main writes the worker's eventfd; the worker's watcher callback reads it and writes main's eventfd;
 * main's watcher callback stops the clock. One round trip therefore contains two cross-thread
 * wakeups (each: eventfd write -> epoll wakeup -> uv_poll -> napi_make_callback -> JS) plus an
 * eventfd read per hop. One-way latency is reported as RTT / 2, so it includes that read.
 *
 * References, measured in the same run with the same ping-pong shape and thread pair:
 *  - messagePort: MessagePort.postMessage (libuv uv_async + structured clone)
 *  - netSocket:   net.Socket over an AF_UNIX socketpair, 1-byte messages (libuv stream)
 *
 * The three transports run in interleaved rounds so that drifting machine load hits them equally.
 *
 * Usage: node dist/bench/wakeup.js [iterations]    Prints one JSON line, then a human summary.
 */
import { Socket } from 'node:net';
import { MessageChannel, Worker } from 'node:worker_threads';
import { once } from 'node:events';
import * as sys from '../src/sys/index.js';

const ITERATIONS = Number(process.argv[2] ?? 20000);
const WARMUP = 2000;
const sysUrl = new URL('../src/sys/index.js', import.meta.url).href;

/** Latency summary of one ping-pong transport, in microseconds. */
interface Result {
  rttMedianUs: number;
  rttP99Us: number;
  oneWayMedianUs: number;
  oneWayP99Us: number;
}

function summarize(samples: Float64Array): Result {
  const s = Float64Array.from(samples).sort();
  const at = (q: number): number => (s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN) / 1000;
  const round = (x: number): number => Math.round(x * 100) / 100;
  const med = at(0.5);
  const p99 = at(0.99);
  return { rttMedianUs: round(med), rttP99Us: round(p99), oneWayMedianUs: round(med / 2), oneWayP99Us: round(p99 / 2) };
}

/** Starts a worker running `body` (CommonJS, with `sys` loaded) and waits for its 'ready'. */
async function startWorker(body: string, data: Record<string, unknown>, transferList: readonly unknown[] = []): Promise<Worker> {
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.sysUrl).then((sys) => { ${body}; parentPort.postMessage('ready'); });`;
  const worker = new Worker(src, { eval: true, workerData: { sysUrl, ...data }, transferList: transferList as never });
  await once(worker, 'message');
  return worker;
}

/** A started ping-pong transport: ping() sends to the echoing worker, onPong is called per reply. */
interface Transport {
  ping(): void;
  onPong: () => void;
  close(): Promise<void>;
}

/**
 * Runs `warmup` + `count` round trips on t and appends RTT samples (ns) to out from index `at`.
 */
function rounds(t: Transport, warmup: number, count: number, out: Float64Array, at: number): Promise<void> {
  let i = -warmup;
  let t0 = 0n;
  return new Promise((resolve) => {
    t.onPong = () => {
      const t1 = process.hrtime.bigint();
      if (i >= 0) out[at + i] = Number(t1 - t0);
      if (++i === count) {
        t.onPong = () => undefined;
        resolve();
        return;
      }
      t0 = process.hrtime.bigint();
      t.ping();
    };
    t0 = process.hrtime.bigint();
    t.ping();
  });
}

async function eventfdTransport(): Promise<Transport> {
  const toWorker = sys.eventfd();
  const toMain = sys.eventfd();
  const worker = await startWorker(
    `const w = sys.watchFd(workerData.toWorker, sys.POLLIN, () => {
       sys.eventfdRead(workerData.toWorker);
       sys.eventfdWrite(workerData.toMain, 1);
     });
     parentPort.on('message', () => { w.close(); parentPort.close(); })`,
    { toWorker, toMain },
  );
  const t: Transport = {
    ping: () => sys.eventfdWrite(toWorker, 1),
    onPong: () => undefined,
    close: async () => {
      watcher.close();
      worker.postMessage('stop');
      await once(worker, 'exit');
      sys.close(toWorker);
      sys.close(toMain);
    },
  };
  const watcher = sys.watchFd(toMain, sys.POLLIN, () => {
    sys.eventfdRead(toMain);
    t.onPong();
  });
  return t;
}

async function messagePortTransport(): Promise<Transport> {
  const { port1, port2 } = new MessageChannel();
  const worker = await startWorker(
    `const port = workerData.port;
     port.on('message', (m) => { if (m === -1) { port.close(); parentPort.close(); } else port.postMessage(m); })`,
    { port: port2 },
    [port2],
  );
  const t: Transport = {
    ping: () => port1.postMessage(1),
    onPong: () => undefined,
    close: async () => {
      port1.postMessage(-1);
      await once(worker, 'exit');
      port1.close();
    },
  };
  port1.on('message', () => t.onPong());
  return t;
}

async function netSocketTransport(): Promise<Transport> {
  const [a, b] = sys.socketpair();
  const worker = await startWorker(
    `const { Socket } = require('node:net');
     const s = new Socket({ fd: workerData.fd, readable: true, writable: true });
     const one = Buffer.of(1);
     s.on('data', () => s.write(one));
     s.on('end', () => { s.destroy(); parentPort.close(); })`,
    { fd: b },
  );
  const sock = new Socket({ fd: a, readable: true, writable: true });
  const one = Buffer.of(1);
  const t: Transport = {
    ping: () => sock.write(one),
    onPong: () => undefined,
    close: async () => {
      sock.end();
      await once(worker, 'exit');
      sock.destroy();
    },
  };
  sock.on('data', () => t.onPong());
  return t;
}

// Interleaved rounds: this 2-vCPU machine is shared and its wakeup cost drifts with load and CPU
// idle state (haltpoll), so every transport gets samples from the same stretches of time.
const ROUNDS = 10;
const perRound = Math.ceil(ITERATIONS / ROUNDS);
const transports: Record<'eventfdWatcher' | 'messagePort' | 'netSocket', Transport> = {
  eventfdWatcher: await eventfdTransport(),
  messagePort: await messagePortTransport(),
  netSocket: await netSocketTransport(),
};
const samples = {
  eventfdWatcher: new Float64Array(perRound * ROUNDS),
  messagePort: new Float64Array(perRound * ROUNDS),
  netSocket: new Float64Array(perRound * ROUNDS),
};
for (let r = 0; r < ROUNDS; r++) {
  for (const name of ['eventfdWatcher', 'messagePort', 'netSocket'] as const) {
    await rounds(transports[name], r === 0 ? WARMUP : WARMUP / 10, perRound, samples[name], r * perRound);
  }
}
for (const t of Object.values(transports)) await t.close();

const eventfdWatcher = summarize(samples.eventfdWatcher);
const messagePort = summarize(samples.messagePort);
const netSocket = summarize(samples.netSocket);
const ratio = (ref: Result): number => Math.round((eventfdWatcher.oneWayMedianUs / ref.oneWayMedianUs) * 1000) / 1000;
const report = {
  bench: 'wakeup',
  description: 'eventfd write -> JS uv_poll watcher callback, main thread <-> worker ping-pong; oneWay = RTT/2',
  node: process.version,
  iterations: perRound * ROUNDS,
  rounds: ROUNDS,
  warmup: WARMUP,
  eventfdWatcher,
  references: { messagePort, netSocket },
  ratioMedian: { vsMessagePort: ratio(messagePort), vsNetSocket: ratio(netSocket) },
};
console.log(JSON.stringify(report));
console.log(
  `eventfd->JS wakeup: median ${eventfdWatcher.oneWayMedianUs} us one-way (p99 ${eventfdWatcher.oneWayP99Us} us; RTT median ${eventfdWatcher.rttMedianUs} us) | ` +
    `reference MessagePort ${messagePort.oneWayMedianUs} us (ratio ${ratio(messagePort)}x) | ` +
    `reference net.Socket ${netSocket.oneWayMedianUs} us (ratio ${ratio(netSocket)}x); ratio < 1 means the eventfd watcher is faster`,
);
