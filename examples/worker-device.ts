/**
 * Example: a device whose queue 1 runs in a worker_thread (VhostUserBackend.workerModule) while
 * queue 0 and the control plane (features, memory, vring setup) stay on the main thread. Driven by
 * this package's own front-end; prints one reply per queue and the round-trip rate of each queue.
 *
 * Run: npx tsc -p . && node dist/examples/worker-device.js
 */
import {
  Frontend, FrontendMemory, VhostUserDaemon, setupQueue, protocolFeatureMask, ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, type FrontendQueue, type VhostUserBackend,
  type DescriptorChain, type Vring, type VringWorker, type VringWorkerModule, type PENDING,
} from 'vhost-user';
import { pathToFileURL } from 'node:url';
import { createVringWorker } from './worker-device-queue.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const bit = (n: number): bigint => 1n << BigInt(n);

/** Two queues: queue 0 served on the main thread, queue 1 in a worker_thread, by the same code. */
export class SplitDevice implements VhostUserBackend {
  private readonly local = createVringWorker({ suffix: ' @thread ' });
  numQueues(): number { return 2; }
  features(): bigint { return bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES); }
  protocolFeatures(): bigint { return protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.MQ); }
  queuesPerThread(): number[] { return [0b01, 0b10]; }
  workerModule(thread: number): VringWorkerModule | null {
    return thread === 1 ? { url: new URL('./worker-device-queue.js', import.meta.url), data: { suffix: ' @thread ' } } : null;
  }
  processChain(queueIndex: number, chain: DescriptorChain, vring: Vring): number | Promise<number> | typeof PENDING {
    return (this.local.processChain as NonNullable<VringWorker['processChain']>)(queueIndex, chain, vring);
  }
}

async function roundTrip(mem: FrontendMemory, q: FrontendQueue, text: string): Promise<string> {
  const enc = new TextEncoder().encode(text);
  mem.memory.write(0x10000 + q.index * 0x1000, enc);
  q.driver.addChain([{ gpa: 0x10000 + q.index * 0x1000, len: enc.length }], [{ gpa: 0x20000 + q.index * 0x1000, len: 64 }]);
  q.kick();
  const used = await q.nextUsed();
  return new TextDecoder().decode(mem.memory.translate(0x20000 + q.index * 0x1000, used.len));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vu-example-'));
  const socketPath = join(dir, 'split.sock');
  const daemon = new VhostUserDaemon('split', new SplitDevice());
  daemon.serve(socketPath);

  const fe = await Frontend.connect(socketPath);
  const mem = new FrontendMemory(1 << 20);
  await fe.setFeatures(await fe.getFeatures());
  await fe.setProtocolFeatures(await fe.getProtocolFeatures());
  await fe.setOwner();
  await fe.setMemTable(mem.regions());
  const queues = [await setupQueue(fe, mem, 0, 64, 0x1000, { enable: true }), await setupQueue(fe, mem, 1, 64, 0x3000, { enable: true })];

  for (const q of queues) console.log(`queue ${q.index}: ${await roundTrip(mem, q, `hello queue ${q.index}`)}`);
  const N = 2000;
  for (const q of queues) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) await roundTrip(mem, q, 'ping');
    const us = Number(process.hrtime.bigint() - t0) / 1000 / N;
    console.log(`queue ${q.index}: ${us.toFixed(1)} µs per request round trip (${N} sequential requests)`);
  }

  for (const q of queues) q.close();
  fe.close();
  await daemon.stop();
  mem.close();
  rmSync(dir, { recursive: true, force: true });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
