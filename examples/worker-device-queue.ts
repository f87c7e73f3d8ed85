/**
 * The queue half of examples/worker-device.ts: a vring worker module. It runs inside a
 * worker_thread, which watches the queue's kick fd on its own libuv loop; the device upper-cases
 * each request and appends the worker's thread id.
 */
import { threadId } from 'node:worker_threads';
import type { DescriptorChain, VringWorker } from 'vhost-user';

/** Called once in the worker with the `data` of VhostUserBackend.workerModule(). */
export function createVringWorker(data: unknown): VringWorker {
  const { suffix } = data as { suffix: string };
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  return {
    // The worker runs the framework's queue loop around this, as the main thread does.
    processChain(_queueIndex: number, chain: DescriptorChain): number {
      const input = new Uint8Array(chain.readableBytes);
      chain.reader.read(input);
      const out = encoder.encode(`${decoder.decode(input).toUpperCase()}${suffix}${threadId}`);
      const n = Math.min(out.length, chain.writableBytes);
      chain.writer.write(out.subarray(0, n));
      return n;
    },
  };
}
