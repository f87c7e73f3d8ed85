/**
 * Guest-memory faults: which region (or dirty log) a SIGBUS-guard report belongs to.
 *
 * Regions and logs mapped by {@link mapGuestRegion} / {@link mapDirtyLog} from a file that can still
 * shrink are tracked here by mapping id until they are unmapped. When the front-end truncates such a
 * file and the daemon touches a page past its new end, the addon replaces the page with a zero page
 * and reports the mapping; this module marks the region (or log) poisoned and tells the listeners,
 * which close the connection that owns it.
 * @module
 */
import { onMemoryFault, type MemoryFault } from '../sys/index.js';
import type { GuestRegion } from './region.js';
import type { DirtyLog } from './dirty-log.js';

/** A fault in guest memory the daemon mapped for a front-end. */
export interface GuestMemoryFault {
  /** The owner given when the memory was mapped (the connection handler). */
  readonly owner: unknown;
  /** The poisoned region, or null when the fault is in the dirty log. */
  readonly region: GuestRegion | null;
  /** The poisoned dirty log, or null when the fault is elsewhere. */
  readonly log: DirtyLog | null;
  /** Human-readable name of the region or log, for error messages. */
  readonly description: string;
  /** Host address of the first faulting access. */
  readonly address: bigint;
  /** Pages replaced by zero pages so far. */
  readonly pages: number;
}

/** Callback of {@link onGuestMemoryFault}. */
export type GuestMemoryFaultListener = (fault: GuestMemoryFault) => void;

/** What a guarded front-end file mapping holds, for fault reports (see MappedFrontendFile.watchFaults). */
export interface FaultTarget {
  /** The region mapped from the file, if any (marked poisoned on a fault). */
  readonly region?: GuestRegion | null;
  /** The dirty log mapped from the file, if any (marked poisoned on a fault). */
  readonly log?: DirtyLog | null;
  /** Name used in fault reports when it is neither (e.g. 'inflight area'). */
  readonly description?: string;
  /** Extra action when the mapping faults (e.g. mark an inflight area unusable). */
  readonly poison?: () => void;
}

interface Tracked {
  readonly target: FaultTarget;
  readonly owner: unknown;
}

const tracked = new Map<number, Tracked>();
const listeners = new Set<GuestMemoryFaultListener>();
/** Subscribed to the sys report once for the life of the thread (a daemon subscribes per connection). */
let subscribed = false;

function onFault(f: MemoryFault): void {
  const t = tracked.get(f.mappingId);
  if (t === undefined) return; // not guest memory of ours (e.g. a front-end driver's own mapping)
  const region = t.target.region ?? null;
  const log = t.target.log ?? null;
  if (region !== null) region.poisoned = true;
  if (log !== null) log.poisoned = true;
  t.target.poison?.();
  const description = region !== null ? `region ${region.toString()}` : log !== null ? 'dirty log' : (t.target.description ?? 'front-end memory');
  const fault: GuestMemoryFault = { owner: t.owner, region, log, description, address: f.address, pages: f.pages };
  for (const l of [...listeners]) l(fault);
}

/** @internal Starts reporting faults of mapping `id` as faults of `target`. */
export function trackMapping(id: number, owner: unknown, target: FaultTarget): void {
  tracked.set(id, { target, owner });
}

/** @internal Stops reporting faults of mapping `id` (it is being unmapped). */
export function untrackMapping(id: number): void {
  tracked.delete(id);
}

/**
 * Calls `listener` on this thread's event loop each time guest memory mapped by this thread faults
 * because the front-end shrank the file behind it (the region is then marked `poisoned`; it reads
 * zeroes where the file is gone). Returns the unsubscribe function. Does not keep the loop alive.
 */
export function onGuestMemoryFault(listener: GuestMemoryFaultListener): () => void {
  listeners.add(listener);
  subscribed ||= (onMemoryFault(onFault), true);
  return () => {
    listeners.delete(listener);
  };
}
