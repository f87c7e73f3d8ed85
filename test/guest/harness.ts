/**
 * Helpers for the node scripts that run INSIDE the QEMU test guest (guest test host-node): guest
 * RAM as a mapped memfd, split rings driven through a VhostBackend, waiting on call eventfds.
 * Results are reported as `detail k=v` lines, which the guest copies onto its VTEST-RESULT line.
 */
import * as sys from '../../src/sys/index.js';
import type { VhostBackend } from '../../src/kernel/vhost-backend.js';
import { GuestMemory, GuestRegion } from '../../src/memory/index.js';
import { SplitQueueDriver, splitRingLayout, type UsedElement } from '../../src/queue/driver.js';

/** Prints one result detail (spaces are not allowed in values). */
export function detail(k: string, v: string | number): void {
  console.log(`detail ${k}=${String(v).replace(/\s+/g, '_')}`);
}

/** Guest RAM: a memfd mapped in this process, as one region at GPA 0. */
export class GuestRam {
  readonly fd: number;
  readonly map: sys.Mapping;
  readonly mem: GuestMemory;
  constructor(readonly size: number) {
    this.fd = sys.memfdCreate('guest-ram');
    sys.ftruncate(this.fd, size);
    this.map = sys.mmap(this.fd, 0, size);
    this.mem = new GuestMemory([new GuestRegion({ guestPhysAddr: 0, size, userAddr: Number(this.map.address), backing: this.map })]);
  }
  /** Sets the memory table of `dev` to this RAM. */
  setMemTable(dev: VhostBackend): Promise<void> {
    return dev.setMemTable([{ guestPhysAddr: 0n, memorySize: BigInt(this.size), userAddr: this.map.address, mmapOffset: 0n, fd: this.fd }]);
  }
  close(): void {
    this.map.unmap();
    sys.close(this.fd);
  }
}

/** A driver-side queue wired to a device: ring in guest RAM, kick and call eventfds. */
export class GuestQueue {
  readonly q: SplitQueueDriver;
  readonly kick = sys.eventfd();
  readonly call = sys.eventfd();
  constructor(readonly ram: GuestRam, readonly index: number, readonly size: number, base: number) {
    const lay = splitRingLayout(size, base);
    this.q = new SplitQueueDriver(ram.mem, size, lay.descGpa, lay.availGpa, lay.usedGpa);
  }
  /** SET_VRING_NUM/ADDR/BASE/KICK/CALL through the common interface. */
  async attach(dev: VhostBackend, log = false): Promise<void> {
    await dev.setVringNum(this.index, this.size);
    await dev.setVringAddr({ index: this.index, log, descGpa: BigInt(this.q.descGpa), availGpa: BigInt(this.q.availGpa), usedGpa: BigInt(this.q.usedGpa) });
    await dev.setVringBase(this.index, 0);
    await dev.setVringKick(this.index, this.kick);
    await dev.setVringCall(this.index, this.call);
  }
  notify(): void {
    sys.eventfdWrite(this.kick, 1);
  }
  /** Resolves with the first used element `accept` takes, waiting on the call eventfd (10 s guard). */
  nextUsed(what: string, accept: (e: UsedElement) => boolean = () => true): Promise<UsedElement> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        for (let e = this.q.popUsed(); e; e = this.q.popUsed()) {
          if (accept(e)) { done(); resolve(e); return; }
        }
      };
      const w = sys.watchFd(this.call, sys.POLLIN, () => { sys.eventfdRead(this.call); check(); });
      const timer = setTimeout(() => { done(); reject(new Error(`timeout waiting for ${what}`)); }, 10_000);
      const done = (): void => { clearTimeout(timer); w.close(); };
      check();
    });
  }
  close(): void {
    sys.close(this.kick);
    sys.close(this.call);
  }
}

/** Runs `main` and exits explicitly (open sockets or watchers after a failure would keep the VM up). */
export function runGuestScript(main: () => Promise<void>): void {
  main().then(() => process.exit(0), (e: unknown) => {
    detail('error', String((e as Error).message).slice(0, 160));
    console.error(e);
    process.exit(1);
  });
}
