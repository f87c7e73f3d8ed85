/**
 * Per-queue counters of a connection: what operators read on disconnect, on exit, on SIGUSR1 and
 * periodically (`--stats`). Plain number fields updated on the hot path (no allocation).
 * @module
 */

/** Counters of one virtqueue since the front-end connected. */
export class QueueStats {
  /** Requests completed (a used entry written), malformed ones included. */
  requests = 0;
  /** Bytes of device-readable buffers of completed requests (guest to device). */
  bytesIn = 0;
  /** Bytes reported written into device-writable buffers (used lengths; device to guest). */
  bytesOut = 0;
  /** Malformed chains and failed requests (completed with used length 0). */
  errors = 0;
  /** Kicks that reached the queue. */
  kicks = 0;
  /** Interrupts sent to the guest (call eventfd writes). */
  interrupts = 0;
  /** Times the ring was found broken (NEEDS_RESET). */
  broken = 0;

  /** Back to zero (the ring was reset for a new front-end). */
  clear(): void {
    this.requests = 0;
    this.bytesIn = 0;
    this.bytesOut = 0;
    this.errors = 0;
    this.kicks = 0;
    this.interrupts = 0;
    this.broken = 0;
  }
}

/** A snapshot of one queue's counters, with its requests in flight. */
export interface QueueStatsSnapshot {
  /** Virtqueue index. */
  queue: number;
  /** See {@link QueueStats.requests}. */
  requests: number;
  /** See {@link QueueStats.bytesIn}. */
  bytesIn: number;
  /** See {@link QueueStats.bytesOut}. */
  bytesOut: number;
  /** See {@link QueueStats.errors}. */
  errors: number;
  /** See {@link QueueStats.kicks}. */
  kicks: number;
  /** See {@link QueueStats.interrupts}. */
  interrupts: number;
  /** See {@link QueueStats.broken}. */
  broken: number;
  /** Requests popped from the ring and not yet completed when the snapshot was taken. */
  inFlight: number;
}

/** The counters as log fields (the queue index goes in the message). */
export function statsFields(s: QueueStatsSnapshot): Omit<QueueStatsSnapshot, 'queue'> {
  return {
    requests: s.requests, bytesIn: s.bytesIn, bytesOut: s.bytesOut, errors: s.errors, inFlight: s.inFlight,
    kicks: s.kicks, interrupts: s.interrupts, broken: s.broken,
  };
}
