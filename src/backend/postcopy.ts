/**
 * Postcopy live migration on the destination back-end (VHOST_USER_PROTOCOL_F_PAGEFAULT).
 *
 * POSTCOPY_ADVISE: a userfaultfd is created and handed to the front-end. POSTCOPY_LISTEN: from now
 * on a memory table (SET_MEM_TABLE, or ADD_MEM_REG one region at a time) is mapped but not touched,
 * and answered with the back-end's own mapping addresses; the front-end then acknowledges with an
 * empty message, and only then are the mappings registered with the userfaultfd (missing-page
 * mode). A page not yet migrated then blocks the thread touching it until the front-end has
 * placed it and woken the fd; the daemon itself never reads the fd. POSTCOPY_END unregisters and
 * closes it. Out-of-order messages are refused with an error naming the state.
 * @module
 */
import * as sys from '../sys/index.js';
import type { GuestRegion } from '../memory/index.js';
import { VhostUserError } from '../vhost-user/errors.js';

const PAGE = 4096;

/** Where one region is registered. */
interface Registration {
  address: bigint;
  length: number;
}

/** The postcopy state of one connection. */
export class Postcopy {
  private ufd: number | null = null;
  private listeningNow = false;
  /** A table was answered with our addresses and awaits the front-end's acknowledgement. */
  private awaitingAck = false;
  private readonly registered = new Map<bigint, Registration>();

  /** POSTCOPY_LISTEN received and POSTCOPY_END not yet. */
  get listening(): boolean {
    return this.listeningNow;
  }

  /** Regions registered with the userfaultfd (diagnostics and tests). */
  get registeredCount(): number {
    return this.registered.size;
  }

  /** POSTCOPY_ADVISE: (re)creates the userfaultfd; returns a duplicate for the front-end (caller owns it). */
  advise(): number {
    if (this.listeningNow) throw new VhostUserError('invalid-argument', '', 'POSTCOPY_ADVISE while postcopy is already listening');
    this.closeFd();
    const fd = sys.uffdCreate();
    this.ufd = fd;
    return sys.dup(fd);
  }

  /** POSTCOPY_LISTEN: page faults are served by the front-end from now on. */
  listen(): void {
    if (this.ufd === null) throw new VhostUserError('invalid-argument', '', 'POSTCOPY_LISTEN without a preceding POSTCOPY_ADVISE');
    if (this.listeningNow) throw new VhostUserError('invalid-argument', '', 'POSTCOPY_LISTEN received twice');
    this.listeningNow = true;
  }

  /**
   * A memory table (or region) was mapped while listening: returns the host address of each
   * region's first byte for the reply. Nothing is registered until {@link acknowledged}.
   */
  bases(regions: readonly GuestRegion[]): bigint[] {
    this.awaitingAck = true;
    return regions.map(hostAddress);
  }

  /** The front-end's acknowledgement of our addresses: registers every region not yet registered. */
  acknowledged(regions: readonly GuestRegion[]): void {
    if (!this.listeningNow || this.ufd === null) throw new VhostUserError('invalid-argument', '', 'postcopy memory acknowledgement while postcopy is not listening');
    if (!this.awaitingAck) throw new VhostUserError('invalid-argument', '', 'postcopy memory acknowledgement without a memory table to acknowledge');
    this.awaitingAck = false;
    const live = new Set(regions.map(hostAddress));
    for (const a of [...this.registered.keys()]) if (!live.has(a)) this.registered.delete(a); // unmapped meanwhile
    for (const r of regions) {
      const address = hostAddress(r);
      if (this.registered.has(address)) continue;
      if (address % BigInt(PAGE) !== 0n || r.size % PAGE !== 0) {
        throw new VhostUserError('invalid-argument', '', `region at guest address 0x${r.guestPhysAddr.toString(16)} is not page-aligned: cannot register it for postcopy`);
      }
      const ioctls = sys.uffdRegister(this.ufd, address, r.size);
      this.registered.set(address, { address, length: r.size });
      if (Math.floor(ioctls / 2 ** sys.UFFDIO_COPY_BIT) % 2 !== 1) {
        throw new VhostUserError('not-supported', '', 'the kernel cannot resolve faults in this memory (no UFFDIO_COPY on the range)');
      }
    }
  }

  /** POSTCOPY_END: unregisters every region and closes the userfaultfd. */
  end(): void {
    if (!this.listeningNow) throw new VhostUserError('invalid-argument', '', 'POSTCOPY_END without POSTCOPY_LISTEN');
    this.close();
  }

  /** Drops all postcopy state (POSTCOPY_END, disconnect). */
  close(): void {
    const fd = this.ufd;
    if (fd !== null) {
      for (const r of this.registered.values()) {
        try {
          sys.uffdUnregister(fd, r.address, r.length);
        } catch {
          // Already unmapped (a later memory table replaced it): the kernel dropped it then.
        }
      }
    }
    this.registered.clear();
    this.closeFd();
    this.listeningNow = false;
    this.awaitingAck = false;
  }

  private closeFd(): void {
    if (this.ufd !== null) sys.close(this.ufd);
    this.ufd = null;
  }
}

/** Host address of the region's first byte (the back-end's "userspace_addr" in postcopy replies). */
function hostAddress(r: GuestRegion): bigint {
  const b = r.backing as { address?: bigint };
  if (typeof b.address !== 'bigint') {
    throw new VhostUserError('not-supported', '', `region at guest address 0x${r.guestPhysAddr.toString(16)} has no contiguous mapping: postcopy needs one`);
  }
  return b.address + BigInt(r.backingOffset);
}
