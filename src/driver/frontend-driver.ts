/**
 * Driving a back-end from the front-end side without a VM: guest memory in a memfd shared with the
 * back-end, and split virtqueues placed in it and wired up with eventfds. Used by the loopback and
 * interop tests and by backend authors who want to exercise or measure a back-end.
 * @module
 */
import * as sys from '../sys/index.js';
import { GuestMemory, GuestRegion } from '../memory/index.js';
import {
  PackedQueueDriver, SplitQueueDriver, encodePackedState, packedRingLayout, splitRingLayout, type UsedElement, type VirtQueueDriver,
} from '../queue/index.js';
import type { Frontend } from '../vhost-user/frontend.js';
import type { MemoryRegionWithFd } from '../vhost-user/messages.js';

/** Guest RAM as a memfd: the back-end maps it via SET_MEM_TABLE, the driver through `memory`. */
export class FrontendMemory {
  /**
   * The memfd, owned by this object and closed by close(). {@link FrontendMemory.regions} puts it
   * in SET_MEM_TABLE, which sends the back-end its own copy; do not close it yourself.
   */
  readonly fd: number;
  /** The driver's view of guest memory. */
  readonly memory: GuestMemory;
  private readonly mapping: sys.Mapping;

  /**
   * Creates and maps the memfd. Throws SysError when memfd_create, ftruncate or mmap fails; call
   * close() to release the memfd and the mapping.
   * @param size bytes of guest RAM at guest-physical address `guestPhysAddr`
   * @param guestPhysAddr guest-physical address of the first byte (default 0)
   * @param userAddr the address the front-end claims the region has in its own address space;
   *   ring addresses are expressed in it (any value: the back-end only uses it for translation)
   */
  constructor(readonly size: number, readonly guestPhysAddr = 0, readonly userAddr = 0x7f00_0000_0000) {
    this.fd = sys.memfdCreate('vhost-user-guest');
    try {
      sys.ftruncate(this.fd, size);
      this.mapping = sys.mmap(this.fd, 0, size);
    } catch (e) {
      sys.close(this.fd);
      throw e;
    }
    const region = new GuestRegion({ guestPhysAddr, size, userAddr, backing: this.mapping });
    this.memory = new GuestMemory([region]);
  }

  /** The SET_MEM_TABLE description of this memory. */
  regions(): MemoryRegionWithFd[] {
    return [{ guestPhysAddr: BigInt(this.guestPhysAddr), memorySize: BigInt(this.size), userAddr: BigInt(this.userAddr), mmapOffset: 0n, fd: this.fd }];
  }

  /** Front-end user address of guest-physical address `gpa`. */
  uva(gpa: number): bigint {
    return BigInt(this.userAddr + (gpa - this.guestPhysAddr));
  }

  private closed = false;

  /** Unmaps and closes the memfd (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.mapping.unmap();
    sys.close(this.fd);
  }
}

/** One virtqueue set up on a back-end: the driver side of the ring plus kick and call eventfds. */
export class FrontendQueue<D extends VirtQueueDriver = SplitQueueDriver> {
  /** Kick eventfd (we write, the back-end watches). */
  readonly kickFd: number;
  /** Call eventfd (the back-end writes, we watch). */
  readonly callFd: number;
  private watcher: sys.FdWatcher | null = null;
  private waiters: Array<() => void> = [];
  /** Interrupts received. */
  interrupts = 0;

  /**
   * Creates the kick and call eventfds (owned by this object until close()). Usually made by
   * {@link setupQueue}, which also sends the vring set-up requests.
   * @param index virtqueue index on the back-end
   * @param driver the driver side of the ring, over the guest memory shared with the back-end
   */
  constructor(readonly index: number, readonly driver: D) {
    this.kickFd = sys.eventfd();
    this.callFd = sys.eventfd();
  }

  /** Kicks the back-end if the ring's notification suppression asks for it; returns whether it did. */
  kick(force = false): boolean {
    if (!force && !this.driver.kickNeeded()) return false;
    sys.eventfdWrite(this.kickFd, 1);
    return true;
  }

  /** Resolves with the next used element, waiting for interrupts; rejects after `timeoutMs`. */
  async nextUsed(timeoutMs = 5000): Promise<UsedElement> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let u = this.driver.popUsed();
      if (u !== null) return u;
      // Ask for an interrupt, then look again: a completion may have landed before the request.
      this.driver.enableInterrupts();
      u = this.driver.popUsed();
      if (u !== null) return u;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`queue ${this.index}: no used buffer within ${timeoutMs} ms`);
      await this.waitInterrupt(left);
    }
  }

  /** Waits up to `ms` for the call eventfd (resolves on timeout too). */
  waitInterrupt(ms: number): Promise<void> {
    if (this.watcher === null) {
      this.watcher = sys.watchFd(this.callFd, sys.POLLIN, () => {
        if (sys.eventfdRead(this.callFd) !== null) this.interrupts++;
        for (const w of this.waiters.splice(0)) w();
      });
    }
    this.watcher.ref();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        const i = this.waiters.indexOf(done);
        if (i >= 0) this.waiters.splice(i, 1);
        if (this.waiters.length === 0) this.watcher?.unref();
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.push(done);
    });
  }

  /** Closes the kick and call eventfds and wakes anyone waiting for an interrupt. */
  close(): void {
    this.watcher?.close();
    this.watcher = null;
    for (const w of this.waiters.splice(0)) w();
    sys.close(this.kickFd);
    sys.close(this.callFd);
  }
}

/**
 * Sets up virtqueue `index` of size `size` on the back-end, with its rings at guest-physical
 * `ringGpa` in `mem`: SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR, SET_VRING_CALL,
 * SET_VRING_KICK, and SET_VRING_ENABLE when `enable` (needs VHOST_USER_F_PROTOCOL_FEATURES acked).
 */
export async function setupQueue(
  fe: Frontend, mem: FrontendMemory, index: number, size: number, ringGpa: number,
  opts: { eventIdx?: boolean; enable?: boolean } = {},
): Promise<FrontendQueue> {
  const layout = splitRingLayout(size, ringGpa);
  const driver = new SplitQueueDriver(mem.memory, size, layout.descGpa, layout.availGpa, layout.usedGpa, { eventIdx: opts.eventIdx ?? false });
  return configureQueue(fe, mem, new FrontendQueue(index, driver), size, 0, layout.descGpa, layout.availGpa, layout.usedGpa, opts.enable ?? false);
}

/** The vring requests both ring layouts send once their driver side exists; closes `q` on failure. */
async function configureQueue<D extends VirtQueueDriver>(
  fe: Frontend, mem: FrontendMemory, q: FrontendQueue<D>, size: number, base: number,
  descGpa: number, driverGpa: number, deviceGpa: number, enable: boolean,
): Promise<FrontendQueue<D>> {
  const index = q.index;
  try {
    await fe.setVringNum(index, size);
    await fe.setVringBase(index, base);
    await fe.setVringAddr({
      index, flags: 0, descUserAddr: mem.uva(descGpa), usedUserAddr: mem.uva(deviceGpa),
      availUserAddr: mem.uva(driverGpa), logGuestAddr: 0n,
    });
    await fe.setVringCall(index, q.callFd);
    await fe.setVringKick(index, q.kickFd);
    if (enable) await fe.setVringEnable(index, true);
  } catch (e) {
    q.close();
    throw e;
  }
  return q;
}

/**
 * Like {@link setupQueue} for a packed virtqueue (VIRTIO_F_RING_PACKED must be acked): the
 * descriptor ring and the two event suppression areas at `ringGpa`, SET_VRING_BASE with both wrap
 * counters set (the initial packed state), then address, call, kick and enable.
 */
export async function setupPackedQueue(
  fe: Frontend, mem: FrontendMemory, index: number, size: number, ringGpa: number,
  opts: { eventIdx?: boolean; enable?: boolean } = {},
): Promise<FrontendQueue<PackedQueueDriver>> {
  const layout = packedRingLayout(size, ringGpa);
  const driver = new PackedQueueDriver(mem.memory, size, layout.descGpa, layout.driverGpa, layout.deviceGpa, { eventIdx: opts.eventIdx ?? false });
  const initial = encodePackedState({ nextAvail: 0, availWrap: true, nextUsed: 0, usedWrap: true });
  return configureQueue(fe, mem, new FrontendQueue(index, driver), size, initial, layout.descGpa, layout.driverGpa, layout.deviceGpa, opts.enable ?? false);
}

/**
 * Re-attaches an existing queue to a new back-end connection after the previous back-end went
 * away, as QEMU does on reconnect: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_CALL,
 * SET_VRING_KICK and SET_VRING_ENABLE with the same rings, eventfds and driver state. Without
 * the back-end's answer to GET_VRING_BASE the front-end can only restart from what the rings show:
 * the split used index (QEMU's `virtio_queue_restore_last_avail_idx`) or, for packed rings, the
 * position the driver reaped used descriptors up to. A back-end given the inflight area first
 * (SET_INFLIGHT_FD) recovers the exact positions and the requests in flight from it. Does not
 * close `q` on failure (it still belongs to the caller).
 */
export async function reattachQueue(fe: Frontend, mem: FrontendMemory, q: FrontendQueue<SplitQueueDriver> | FrontendQueue<PackedQueueDriver>, opts: { enable?: boolean } = {}): Promise<void> {
  const d = q.driver;
  const index = q.index;
  let base: number;
  let driverGpa: number;
  let deviceGpa: number;
  if (d instanceof SplitQueueDriver) {
    base = d.usedIdx;
    driverGpa = d.availGpa;
    deviceGpa = d.usedGpa;
  } else {
    base = encodePackedState({ nextAvail: d.nextUsedPos, availWrap: d.usedWrapCounter, nextUsed: d.nextUsedPos, usedWrap: d.usedWrapCounter });
    driverGpa = d.driverGpa;
    deviceGpa = d.deviceGpa;
  }
  await fe.setVringNum(index, d.size);
  await fe.setVringBase(index, base);
  await fe.setVringAddr({
    index, flags: 0, descUserAddr: mem.uva(d.descGpa), usedUserAddr: mem.uva(deviceGpa), availUserAddr: mem.uva(driverGpa), logGuestAddr: 0n,
  });
  await fe.setVringCall(index, q.callFd);
  await fe.setVringKick(index, q.kickFd);
  if (opts.enable ?? false) await fe.setVringEnable(index, true);
}
