/**
 * virtio-entropy (virtio-rng) over vhost-user: one request queue whose device-writable buffers are
 * filled with random bytes from the OS CSPRNG, with an optional rate limit (bytes per period) like
 * QEMU's rng device, so a guest cannot drain the host's entropy source at full speed.
 * @module
 */
import { randomFillSync } from 'node:crypto';
import type { VhostUserBackend } from '../../backend/index.js';
import type { DescriptorChain } from '../../queue/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../vhost-user/constants.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VHOST_F_LOG_ALL } from '../../virtio/features.js';
import type { Logger } from '../../log.js';

/** Options of {@link VhostUserRngBackend}. */
export interface VhostUserRngBackendOptions {
  /** At most this many bytes per `periodMs` (default: unlimited). */
  maxBytes?: number;
  /** Rate-limit period in ms (default 1000). */
  periodMs?: number;
  /** Largest queue size (default 256). */
  queueSize?: number;
  /** Unused: malformed chains and failed requests are reported by the daemon's logger. */
  logger?: Logger;
}

const bit = (n: number): bigint => 1n << BigInt(n);

/**
 * The entropy device: a {@link VhostUserBackend} with one request queue. Serve it with
 * the root package's `VhostUserDaemon`.
 */
export class VhostUserRngBackend implements VhostUserBackend {
  private readonly maxBytes: number;
  private readonly periodMs: number;
  private readonly queueSize: number;
  private periodStart = 0;
  private budget = 0;
  private timer: NodeJS.Timeout | null = null;
  /** The request waiting for the next rate-limit period (at most one: maxInFlight is 1). */
  private waiting: { chain: DescriptorChain; resolve: (used: number) => void } | null = null;
  /** Random bytes handed out so far (diagnostics). */
  bytesServed = 0;

  constructor(opts: VhostUserRngBackendOptions = {}) {
    this.maxBytes = opts.maxBytes ?? Infinity;
    this.periodMs = opts.periodMs ?? 1000;
    this.queueSize = opts.queueSize ?? 256;
    if (!(this.maxBytes > 0) || !(this.periodMs > 0)) throw new RangeError('maxBytes and periodMs must be positive');
  }

  deviceType(): string {
    return 'rng';
  }

  numQueues(): number { return 1; }
  maxQueueSize(): number { return this.queueSize; }
  features(): bigint {
    return bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_F_RING_PACKED) | bit(VHOST_USER_F_PROTOCOL_FEATURES)
      | bit(VHOST_F_LOG_ALL);
  }
  protocolFeatures(): bigint {
    return protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.LOG_SHMFD) | protocolFeatureMask(ProtocolFeature.PAGEFAULT) | protocolFeatureMask(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
      protocolFeatureMask(ProtocolFeature.RESET_DEVICE) | protocolFeatureMask(ProtocolFeature.STATUS);
  }
  /** One request waits for the next period at a time; the queue is not popped meanwhile. */
  maxInFlight(): number { return 1; }

  processChain(_queueIndex: number, chain: DescriptorChain): number | Promise<number> {
    // The driver must not post device-readable buffers; such a request gets nothing.
    if (chain.readableBytes > 0) return 0;
    if (this.available() > 0) return this.fill(chain);
    // Out of budget: this request completes when the next period starts.
    return new Promise((resolve) => {
      this.waiting = { chain, resolve };
      this.timer = setTimeout(() => {
        this.timer = null;
        const w = this.waiting;
        this.waiting = null;
        // The timer marks the next period's start (timer and clock granularity differ).
        this.periodStart = Date.now();
        this.budget = this.maxBytes;
        if (w !== null) w.resolve(this.fill(w.chain));
      }, Math.max(0, this.periodMs - (Date.now() - this.periodStart)));
    });
  }

  /**
   * The ring stops or resets: a request waiting for the next period completes now with what the
   * budget allows (usually 0 bytes; the driver asks again), so GET_VRING_BASE does not wait for
   * the period. On reset the framework keeps it off the ring.
   */
  queueStopped(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const w = this.waiting;
    this.waiting = null;
    if (w !== null) w.resolve(this.available() > 0 ? this.fill(w.chain) : 0);
  }

  resetDevice(): void {
    this.queueStopped();
  }

  private available(): number {
    const now = Date.now();
    if (now - this.periodStart >= this.periodMs) {
      this.periodStart = now;
      this.budget = this.maxBytes;
    }
    return this.budget;
  }

  private fill(chain: DescriptorChain): number {
    const len = Math.min(chain.writableBytes, this.budget);
    for (const view of chain.writer.segments(len)) randomFillSync(view);
    this.budget -= len;
    this.bytesServed += len;
    return len;
  }
}
