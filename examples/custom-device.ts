/**
 * Example: a custom virtio device in a few lines, served by VhostUserDaemon, and driven by this
 * package's own front-end (no VM needed). The device upper-cases the bytes of each request into
 * the request's device-writable buffer.
 *
 * Run: npx tsc -p . && node dist/examples/custom-device.js
 */
import {
  Frontend, FrontendMemory, VhostUserDaemon, setupQueue, protocolFeatureMask, ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, type DescriptorChain, type ServingOptions, type VhostUserBackend,
} from 'vhost-user';
import { pathToFileURL } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const bit = (n: number): bigint => 1n << BigInt(n);

/** Upper-cases the text of each request into the request's device-writable buffer. */
export class UpperCaseDevice implements VhostUserBackend {
  numQueues(): number { return 1; }
  features(): bigint { return bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES); }
  protocolFeatures(): bigint { return protocolFeatureMask(ProtocolFeature.REPLY_ACK); }
  processChain(_queueIndex: number, chain: DescriptorChain): number {
    const data = new Uint8Array(chain.readableBytes);
    chain.reader.read(data);
    const out = new TextEncoder().encode(new TextDecoder().decode(data).toUpperCase());
    const n = Math.min(out.length, chain.writableBytes);
    chain.writer.write(out.subarray(0, n));
    return n;
  }
  /** Optional: how the framework serves the queue (used-index batch, adaptive polling). */
  servingOptions(_queueIndex: number): ServingOptions {
    // Publish every 32 requests of a long drain; no polling (pollUs: 0) is the default anyway.
    return { batch: 32, pollUs: 0 };
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vu-example-'));
  const socketPath = join(dir, 'upper.sock');
  const daemon = new VhostUserDaemon('upper', new UpperCaseDevice());
  daemon.serve(socketPath);

  // The front-end side: what a VMM does, in miniature.
  const fe = await Frontend.connect(socketPath);
  const mem = new FrontendMemory(1 << 20);
  await fe.setFeatures(await fe.getFeatures());
  await fe.setProtocolFeatures(await fe.getProtocolFeatures());
  await fe.setOwner();
  await fe.setMemTable(mem.regions());
  const q = await setupQueue(fe, mem, 0, 64, 0x1000, { enable: true });

  const text = 'hello from the guest';
  mem.memory.write(0x10000, new TextEncoder().encode(text));
  q.driver.addChain([{ gpa: 0x10000, len: text.length }], [{ gpa: 0x20000, len: 64 }]);
  q.kick();
  const used = await q.nextUsed();
  console.log(new TextDecoder().decode(mem.memory.translate(0x20000, used.len)));

  q.close();
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
