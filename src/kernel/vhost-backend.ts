/**
 * One front-end interface over the three vhost dataplanes (rust-vmm's `VhostBackend` trait): the
 * in-kernel vhost drivers (/dev/vhost-net, /dev/vhost-vsock), vDPA (/dev/vhost-vdpa-N) and a
 * vhost-user back-end reached through our {@link Frontend}. Code that sets a device up against
 * {@link VhostBackend} works unchanged over any of them (see examples/any-dataplane.ts).
 *
 * Addresses: memory regions carry the guest-physical address, the address of the region in the
 * calling process (`userAddr`) and the fd/offset it was mapped from; vring addresses are always
 * guest-physical, and each implementation translates them to what its dataplane expects (a
 * userspace address for vhost-kernel and vhost-user, the IOVA = GPA for vDPA).
 *
 * @module
 */

/** A guest memory region as given to {@link VhostBackend.setMemTable}. */
export interface VhostMemoryRegion {
  /** Guest physical address of the first byte. */
  readonly guestPhysAddr: bigint;
  /** Size in bytes. */
  readonly memorySize: bigint;
  /** Address of the region's first byte in the calling process (its mmap). */
  readonly userAddr: bigint;
  /** Offset of the region inside `fd` (vhost-user shares the fd; the kernel ignores it). */
  readonly mmapOffset: bigint;
  /** The fd the region is mapped from (memfd or file). */
  readonly fd: number;
}

/** The dirty log shared with the dataplane (one bit per 4 KiB guest page). */
export interface VhostDirtyLog {
  /** Address of the log's mapping in the calling process (the kernel writes it directly). */
  readonly userAddr: bigint;
  /** Log size in bytes. */
  readonly size: bigint;
  /** The fd the log is mapped from (vhost-user sends it to the back-end). */
  readonly fd: number;
  /** Offset of the log inside `fd`. */
  readonly mmapOffset: bigint;
}

/** Ring placement for {@link VhostBackend.setVringAddr}; every address is guest-physical. */
export interface VhostVringConfig {
  /** Vring index. */
  readonly index: number;
  /** Log used-ring writes into the dirty log (VHOST_VRING_F_LOG). */
  readonly log: boolean;
  /** Descriptor table. */
  readonly descGpa: bigint;
  /** Available (driver) ring. */
  readonly availGpa: bigint;
  /** Used (device) ring. */
  readonly usedGpa: bigint;
}

/**
 * The operations every vhost dataplane supports. All are async so that the vhost-user front-end
 * (a socket round trip) and the kernel drivers (a synchronous ioctl) share one shape. Failures
 * reject with the dataplane's error (a SysError with the errno name for the kernel ones).
 */
export interface VhostBackend {
  /** Short dataplane name for logs: 'vhost-net', 'vhost-vsock', 'vhost-vdpa', 'vhost-user'. */
  readonly kind: string;
  /** Device feature bits the dataplane offers. */
  getFeatures(): Promise<bigint>;
  /** Acks feature bits (a subset of {@link getFeatures}). */
  setFeatures(features: bigint): Promise<void>;
  /** Claims the device for this process; first call after open. */
  setOwner(): Promise<void>;
  /** Releases ownership and resets the device. */
  resetOwner(): Promise<void>;
  /** Replaces the guest memory table. */
  setMemTable(regions: readonly VhostMemoryRegion[]): Promise<void>;
  /** Sets the dirty log (requires VHOST_F_LOG_ALL to be acked for logging to happen). */
  setLogBase(log: VhostDirtyLog): Promise<void>;
  /** eventfd signalled when the dataplane wrote the log. */
  setLogFd(fd: number): Promise<void>;
  /** Ring size. */
  setVringNum(index: number, num: number): Promise<void>;
  /** Ring addresses (guest-physical, see the module comment). */
  setVringAddr(config: VhostVringConfig): Promise<void>;
  /** Next available index the device processes. */
  setVringBase(index: number, base: number): Promise<void>;
  /** Stops the ring and returns its next available index. */
  getVringBase(index: number): Promise<number>;
  /** Kick eventfd (driver to device); null unbinds. */
  setVringKick(index: number, fd: number | null): Promise<void>;
  /** Call eventfd (device to driver); null unbinds. */
  setVringCall(index: number, fd: number | null): Promise<void>;
  /** Error eventfd; null unbinds. */
  setVringErr(index: number, fd: number | null): Promise<void>;
  /** Releases the device (closes the fd / connection). Idempotent. */
  close(): void;
}

/** Error for a request that does not fit the current device state (no fd, unknown address...). */
export class VhostBackendError extends Error {
  /**
   * @param request the request name, e.g. 'VHOST_SET_VRING_ADDR'
   * @param message what was wrong
   */
  constructor(readonly request: string, message: string) {
    super(`${request}: ${message}`);
    this.name = 'VhostBackendError';
  }
}

/**
 * Translates a guest-physical range to the calling process's address using a memory table;
 * throws {@link VhostBackendError} when the range is not inside one region.
 */
export function gpaToUserAddr(regions: readonly VhostMemoryRegion[], gpa: bigint, len: bigint, request: string): bigint {
  for (const r of regions) {
    if (gpa >= r.guestPhysAddr && gpa + len <= r.guestPhysAddr + r.memorySize) return r.userAddr + (gpa - r.guestPhysAddr);
  }
  throw new VhostBackendError(request, `guest address 0x${gpa.toString(16)} (+${len}) is not inside the memory table`);
}
