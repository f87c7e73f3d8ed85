import { pathToFileURL } from 'node:url';
import {
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VhostUserDaemon, featureMask,
  type DescriptorChain, type VhostUserBackend,
} from 'vhost-user';

/** Echoes the bytes of each request back into the request's device-writable buffers. */
export class EchoDevice implements VhostUserBackend {
  numQueues() { return 1; }
  features() { return featureMask(VIRTIO_F_VERSION_1) | featureMask(VHOST_USER_F_PROTOCOL_FEATURES); }
  // One request; return the bytes written. The daemon runs the queue: notifications, malformed
  // chains, interrupts, dirty logging, ring stop and reset. A throw completes the request with 0.
  processChain(_queue: number, chain: DescriptorChain) {
    const data = new Uint8Array(Math.min(chain.readableBytes, chain.writableBytes));
    chain.reader.read(data);                         // scatter-gather over guest memory
    chain.writer.write(data);                        // (or chain.writer.segments(n): zero-copy views)
    return data.length;                              // may also be a Promise<number>
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const daemon = new VhostUserDaemon('echo', new EchoDevice());
  daemon.serve(process.argv[2] ?? '/tmp/echo.sock');
  // SIGTERM/SIGINT: finish in-flight requests, unlink the socket, exit.
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void daemon.stop());
  await daemon.wait();
}
