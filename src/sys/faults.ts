/**
 * Memory-fault notifications from the addon's SIGBUS guard.
 *
 * When a guarded mapping (see `Mapping.guarded`) is touched past the end of its file (the file was
 * shrunk after it was mapped), the addon's signal handler replaces the faulting page with an
 * anonymous zero page, so the access completes (reads zeroes) instead of killing the process, and
 * wakes an eventfd. This module watches that eventfd on the subscribing thread's loop and reports
 * each faulting mapping once per wake-up. Faults in worker threads are reported here too, on the
 * thread that subscribed; subscribe from one thread only (the faults are consumed by whoever reads).
 * @module
 */
import { constant, native } from './native.js';
import { watchFd, type FdWatcher } from './watch.js';

/** One mapping that faulted past the end of its file since the last report. */
export interface MemoryFault {
  /** `Mapping.id` of the faulting mapping. */
  readonly mappingId: number;
  /** Host address of the first faulting access of this mapping. */
  readonly address: bigint;
  /** Pages replaced by zero pages in this mapping so far. */
  readonly pages: number;
}

/** Callback of {@link onMemoryFault}. */
export type MemoryFaultListener = (fault: MemoryFault) => void;

const listeners = new Set<MemoryFaultListener>();
let watcher: FdWatcher | null = null;
let faultFd = -1;

function deliver(): void {
  native.eventfdRead(faultFd);
  for (const [mappingId, address, pages] of native.takeMemoryFaults()) {
    const fault: MemoryFault = { mappingId, address, pages };
    for (const l of [...listeners]) l(fault);
  }
}

/**
 * Calls `listener` (on this thread's event loop) for every guarded mapping that faults past the end
 * of its file. The subscription does not keep the event loop alive. Returns the unsubscribe function.
 * Once a thread subscribed, faults reported while it has no listener are dropped.
 */
export function onMemoryFault(listener: MemoryFaultListener): () => void {
  listeners.add(listener);
  if (watcher === null) {
    // The eventfd belongs to the addon for the life of the process: it is never closed here.
    faultFd = native.memoryFaultFd();
    watcher = watchFd(faultFd, constant('POLLIN'), deliver);
    watcher.unref();
  }
  // The watcher stays open once created (it is unref'd, so it never keeps the loop alive):
  // closing and re-creating a uv_poll handle on the same fd for every daemon connection is churn
  // libuv handles badly (one poll handle per fd; the old one is still closing).
  return () => {
    listeners.delete(listener);
  };
}
