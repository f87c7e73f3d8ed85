/**
 * Waiting for events, not time: small awaitables for tests. Every wait takes a timeout that is a
 * failure guard only (it rejects with what was awaited); nothing here sleeps to let things happen.
 * @module
 */
import * as sys from '../../src/sys/index.js';

/** Rejects after `ms` with `what` in the message; the timer is cleared when `p` settles first. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

/**
 * A condition that changes when something calls `notify()` (a device hook, a log sink, an output
 * stream). `until(pred)` resolves as soon as `pred()` holds, re-checking on every notification:
 * no polling, and a condition that already holds resolves at once.
 */
export class Signal {
  private waiters: Array<() => void> = [];

  /** Wakes every pending `until` to re-check its condition. */
  notify(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once `pred()` is true; rejects after `timeoutMs` (guard) naming `what`. */
  async until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await withTimeout(new Promise<void>((r) => this.waiters.push(r)), left, what).catch((e: unknown) => {
        if (!pred()) throw e;
      });
    }
  }
}

/**
 * Resolves when `fd` becomes readable (uv_poll on this thread's loop); rejects after `timeoutMs`.
 * The fd must not be watched elsewhere in this thread.
 */
export function readable(fd: number, timeoutMs: number, what = `fd ${fd} readable`): Promise<void> {
  let watcher: sys.FdWatcher | null = null;
  const p = new Promise<void>((resolve) => {
    watcher = sys.watchFd(fd, sys.POLLIN, () => {
      watcher?.close();
      resolve();
    });
  });
  return withTimeout(p, timeoutMs, what).finally(() => (watcher as sys.FdWatcher | null)?.close());
}

/**
 * Whether a kick written to `kickFd` was consumed by the back-end (its counter read back to zero).
 * Reads the eventfd: call it only after an event that orders the back-end's handling before it,
 * e.g. a request round trip to a back-end on the same thread (see {@link kickHandled}).
 */
export function kickConsumed(kickFd: number): boolean {
  return sys.eventfdRead(kickFd) === null;
}

/**
 * An ordering barrier for a back-end that runs on this thread's event loop (loopback tests): a
 * request round trip started after a kick. The kick eventfd was readable before the request was
 * written, so the epoll wake-up that delivers the request to the back-end delivers the kick too,
 * and the back-end's reply can only be read in a later loop iteration. When `roundTrip` resolves,
 * the back-end has handled the kick; the result says whether it consumed it.
 */
export async function kickHandled(kickFd: number, roundTrip: () => Promise<unknown>): Promise<boolean> {
  await roundTrip();
  return kickConsumed(kickFd);
}
