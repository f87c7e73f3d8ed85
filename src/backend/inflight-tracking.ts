/**
 * Inflight I/O tracking of one connection (INFLIGHT_SHMFD): the shared area that GET_INFLIGHT_FD
 * allocates or SET_INFLIGHT_FD adopts, and each ring's start recording into its region (resubmitting
 * what an earlier back-end left in flight).
 * @module
 */
import type { Inflight } from '../vhost-user/messages.js';
import { VhostUserError } from '../vhost-user/errors.js';
import { PackedQueue } from '../queue/packed-queue.js';
import type { Logger } from '../log.js';
import { InflightArea } from './inflight-area.js';
import type { Vring } from './vring.js';

/** The connection's inflight area, or none. */
export class InflightTracking {
  private area: InflightArea | null = null;

  /** `servedHere(v)`: the ring is served by this thread (worker-served rings do not record). */
  constructor(private readonly vrings: readonly Vring[], private readonly logger: Logger, private readonly servedHere: (v: Vring) => boolean) {}

  /** An area is set. */
  get active(): boolean {
    return this.area !== null;
  }

  /** The area has a region for `v`. */
  covers(v: Vring): boolean {
    return this.area !== null && v.index < this.area.numQueues;
  }

  /** GET_INFLIGHT_FD: a new area for the requested queues (it replaces any earlier one). */
  allocate(request: Inflight): {
    /** The area as allocated (size, offset 0, the requested counts). */
    inflight: Inflight;
    /** The area's memfd; ownership passes to the endpoint, which sends and closes it. */
    fd: number;
  } {
    const { area, fd, size } = InflightArea.allocate(request.numQueues, request.queueSize, this.vrings.length);
    this.replace(area);
    this.logger.log('info', `inflight area allocated: ${request.numQueues} queue(s) of ${request.queueSize} entries, ${size} bytes`);
    return { inflight: { mmapSize: BigInt(size), mmapOffset: 0n, numQueues: request.numQueues, queueSize: request.queueSize }, fd };
  }

  /** SET_INFLIGHT_FD: adopts the front-end's area (after a reconnect, with the earlier back-end's records). */
  adopt(inflight: Inflight, fd: number, owner: object): void {
    const area = InflightArea.adopt(fd, inflight.mmapSize, inflight.mmapOffset, inflight.numQueues, inflight.queueSize, this.vrings.length, owner);
    this.replace(area);
    this.logger.log('info', `inflight area set: ${inflight.numQueues} queue(s) of ${inflight.queueSize} entries`);
  }

  private replace(area: InflightArea): void {
    // A ring still recording into the old area keeps it mapped until it stops; not expected
    // (front-ends set the area before starting rings), so such rings stop recording instead.
    for (const v of this.vrings) if (v.started) v.queue.stopInflight();
    this.area?.close();
    this.area = area;
  }

  /** A ring starts: it records into its region, and what an earlier back-end left there is resubmitted. */
  start(v: Vring): void {
    const area = this.area;
    if (area === null || v.index >= area.numQueues || !this.servedHere(v)) return;
    if (v.ringUserAddrs === null || v.queue.memory === null) {
      // Started before its rings were placed: nothing to recover against, so nothing is tracked.
      this.logger.log('warn', `queue ${v.index}: started without ring addresses or memory; inflight tracking off for this start`, { queue: v.index });
      return;
    }
    try {
      const n = v.queue instanceof PackedQueue
        ? v.queue.startInflight(area.packedRegion(v.index, v.queue.size))
        : v.queue.startInflight(area.splitRegion(v.index, v.queue.size));
      this.logger.log('info', `queue ${v.index}: inflight tracking on${n > 0 ? `, resubmitting ${n} request(s) in flight before the restart` : ''}`, { queue: v.index });
    } catch (e) {
      throw new VhostUserError('invalid-argument', '', `queue ${v.index}: inflight region: ${(e as Error).message}`);
    }
  }

  /** Drops the area (what it recorded belongs to rings that no longer exist). */
  close(): void {
    this.area?.close();
    this.area = null;
  }
}
