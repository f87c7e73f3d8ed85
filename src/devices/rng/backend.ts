/**
 * virtio-entropy (virtio-rng) over vhost-user: one request queue whose device-writable buffers are
 * filled with random bytes from the OS CSPRNG, with an optional rate limit (bytes per period) like
 * QEMU's rng device, so a guest cannot drain the host's entropy source at full speed.
 * @module
 */
import { randomFillSync } from 'node:crypto';
import type { VhostUserBackend, Vring } from '../../backend/index.js';
import { QueueError } from '../../queue/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../vhost-user/constants.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../virtio/features.js';
import { defaultLogger, type Logger } from '../../log.js';

/** Options of {@link VhostUserRngBackend}. */
export interface VhostUserRngBackendOptions {
  /** At most this many bytes per `periodMs` (default: unlimited). */
  maxBytes?: number;
  /** Rate-limit period in ms (default 1000). */
  periodMs?: number;
  /** Largest queue size (default 256). */
  queueSize?: number;
  /** Log sink. */
  logger?: Logger;
}

const bit = (n: number): bigint => 1n << BigInt(n);

/** The entropy device. */
export class VhostUserRngBackend implements VhostUserBackend {
  private readonly maxBytes: number;
  private readonly periodMs: number;
  private readonly queueSize: number;
  private readonly logger: Logger;
  private periodStart = 0;
  private budget = 0;
  private timer: NodeJS.Timeout | null = null;
  /** Random bytes handed out so far (diagnostics). */
  bytesServed = 0;

  constructor(opts: VhostUserRngBackendOptions = {}) {
    this.maxBytes = opts.maxBytes ?? Infinity;
    this.periodMs = opts.periodMs ?? 1000;
    this.queueSize = opts.queueSize ?? 256;
    this.logger = opts.logger ?? defaultLogger;
    if (!(this.maxBytes > 0) || !(this.periodMs > 0)) throw new RangeError('maxBytes and periodMs must be positive');
  }

  numQueues(): number { return 1; }
  maxQueueSize(): number { return this.queueSize; }
  features(): bigint {
    return bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
  }
  protocolFeatures(): bigint {
    return protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
      protocolFeatureMask(ProtocolFeature.RESET_DEVICE) | protocolFeatureMask(ProtocolFeature.STATUS);
  }
  setEventIdx(): void {}
  updateMemory(): void {}

  handleEvent(deviceEvent: number, _evset: number, vrings: readonly Vring[]): void {
    const vring = vrings.find((v) => v.index === deviceEvent);
    if (vring === undefined || !vring.ready) return;
    this.drain(vring);
  }

  resetDevice(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private available(): number {
    const now = Date.now();
    if (now - this.periodStart >= this.periodMs) {
      this.periodStart = now;
      this.budget = this.maxBytes;
    }
    return this.budget;
  }

  private drain(vring: Vring): void {
    const q = vring.queue;
    let served = false;
    do {
      q.disableNotification();
      for (;;) {
        const budget = this.available();
        if (budget <= 0) {
          // Out of budget: resume when the next period starts (kicks meanwhile find nothing new).
          this.timer ??= setTimeout(() => {
            this.timer = null;
            if (vring.ready) this.drain(vring);
          }, this.periodMs - (Date.now() - this.periodStart));
          if (served) vring.signalUsedIfNeeded();
          return;
        }
        let chain;
        try {
          chain = q.popDescriptorChain();
        } catch (e) {
          if (!(e instanceof QueueError)) throw e;
          this.logger.log('warn', `vhost-user-rng: malformed chain (${e.kind}): ${e.message}`);
          if (e.headIndex !== null) q.addUsed(e.headIndex, 0);
          else { q.broken = true; vring.signalError(); }
          served = true;
          continue;
        }
        if (chain === null) break;
        // The driver must not post device-readable buffers; such a request gets nothing.
        const len = chain.readableBytes > 0 ? 0 : Math.min(chain.writableBytes, budget);
        for (const view of chain.writer.segments(len)) randomFillSync(view);
        chain.logWritten(len);
        this.budget -= len;
        this.bytesServed += len;
        q.addUsed(chain.headIndex, len);
        served = true;
      }
      if (served) vring.signalUsedIfNeeded();
    } while (q.enableNotification());
  }
}
