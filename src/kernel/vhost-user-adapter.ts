/**
 * {@link VhostBackend} over a vhost-user connection: the same device setup code that drives the
 * kernel dataplanes drives any vhost-user back-end through our {@link Frontend}.
 *
 * @module
 */
import type { Frontend } from '../vhost-user/frontend.js';
import {
  gpaToUserAddr,
  type VhostBackend, type VhostDirtyLog, type VhostMemoryRegion, type VhostVringConfig,
} from './vhost-backend.js';

/** VHOST_VRING_F_LOG in vhost_vring_addr.flags (same bit in vhost-user). */
const VRING_F_LOG = 1 << 0;

/**
 * Adapts a connected {@link Frontend}. Feature and protocol-feature negotiation specific to
 * vhost-user (GET/SET_PROTOCOL_FEATURES) stays on the Frontend itself: call it before or after
 * wrapping, the adapter does not hide the Frontend.
 */
export class VhostUserBackendAdapter implements VhostBackend {
  /** Dataplane name. */
  readonly kind = 'vhost-user';
  #regions: readonly VhostMemoryRegion[] = [];

  /** @param frontend a connected front-end; {@link close} closes it. */
  constructor(readonly frontend: Frontend) {}

  getFeatures(): Promise<bigint> {
    return this.frontend.getFeatures();
  }
  setFeatures(features: bigint): Promise<void> {
    return this.frontend.setFeatures(features);
  }
  setOwner(): Promise<void> {
    return this.frontend.setOwner();
  }
  resetOwner(): Promise<void> {
    return this.frontend.resetOwner();
  }
  /** SET_MEM_TABLE with each region's fd; `userAddr` is this process's mapping, as in QEMU. */
  async setMemTable(regions: readonly VhostMemoryRegion[]): Promise<void> {
    await this.frontend.setMemTable(regions.map((r) => ({
      guestPhysAddr: r.guestPhysAddr, memorySize: r.memorySize, userAddr: r.userAddr, mmapOffset: r.mmapOffset, fd: r.fd,
    })));
    this.#regions = regions.slice();
  }
  setLogBase(log: VhostDirtyLog): Promise<void> {
    return this.frontend.setLogBase({ mmapSize: log.size, mmapOffset: log.mmapOffset }, log.fd);
  }
  setLogFd(fd: number): Promise<void> {
    return this.frontend.setLogFd(fd);
  }
  setVringNum(index: number, num: number): Promise<void> {
    return this.frontend.setVringNum(index, num);
  }
  /** vhost-user ring addresses are front-end user addresses: translated through the memory table. */
  setVringAddr(c: VhostVringConfig): Promise<void> {
    const req = 'VHOST_USER_SET_VRING_ADDR';
    return Promise.resolve().then(() => this.frontend.setVringAddr({
      index: c.index,
      flags: c.log ? VRING_F_LOG : 0,
      descUserAddr: gpaToUserAddr(this.#regions, c.descGpa, 1n, req),
      usedUserAddr: gpaToUserAddr(this.#regions, c.usedGpa, 1n, req),
      availUserAddr: gpaToUserAddr(this.#regions, c.availGpa, 1n, req),
      logGuestAddr: c.usedGpa,
    }));
  }
  setVringBase(index: number, base: number): Promise<void> {
    return this.frontend.setVringBase(index, base);
  }
  getVringBase(index: number): Promise<number> {
    return this.frontend.getVringBase(index);
  }
  setVringKick(index: number, fd: number | null): Promise<void> {
    return this.frontend.setVringKick(index, fd);
  }
  setVringCall(index: number, fd: number | null): Promise<void> {
    return this.frontend.setVringCall(index, fd);
  }
  setVringErr(index: number, fd: number | null): Promise<void> {
    return this.frontend.setVringErr(index, fd);
  }
  close(): void {
    this.frontend.close();
  }
}
