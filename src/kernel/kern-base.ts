/**
 * The ioctls every /dev/vhost-* device shares (drivers/vhost/vhost.c: vhost_dev_ioctl and
 * vhost_vring_ioctl), on one fd with preallocated argument buffers.
 *
 * @module
 */
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import * as sys from '../sys/index.js';
import * as k from './ioctl.js';
import {
  VhostBackendError, gpaToUserAddr,
  type VhostBackend, type VhostDirtyLog, type VhostMemoryRegion, type VhostVringConfig,
} from './vhost-backend.js';

/** Most regions a vhost device accepts by default (vhost module parameter max_mem_regions). */
export const VHOST_DEFAULT_MAX_MEM_REGIONS = 64;

/** Opens a vhost character device read/write (close-on-exec, as node always opens). */
export function openVhostDevice(path: string): number {
  return openSync(path, fsConstants.O_RDWR);
}

/**
 * Base of the kernel vhost drivers: owns the device fd and issues the generic ioctls. Errors are
 * {@link sys.SysError}s whose message names the ioctl (e.g. `ioctl failed: EBADF (...):
 * VHOST_SET_OWNER`) and whose `code` is the errno name.
 */
export abstract class VhostKernBase implements VhostBackend {
  /** Dataplane name used in errors: 'vhost-net', 'vhost-vsock', 'vhost-vdpa'. */
  abstract readonly kind: string;
  #fd: number;
  #regions: readonly VhostMemoryRegion[] = [];
  // One buffer per argument shape, reused by every call (no allocation per ioctl).
  /** Argument buffer for u64/u32/int/u8 ioctls. */
  protected readonly u64Buf = new Uint8Array(8);
  /** Argument buffer for struct vhost_vring_state. */
  protected readonly stateBuf = new Uint8Array(k.VHOST_VRING_STATE_SIZE);
  /** Argument buffer for struct vhost_vring_file. */
  protected readonly fileBuf = new Uint8Array(k.VHOST_VRING_FILE_SIZE);
  private readonly addrBuf = new Uint8Array(k.VHOST_VRING_ADDR_SIZE);
  private memBuf = new Uint8Array(k.vhostMemorySize(8));

  /** @param fd an open /dev/vhost-* fd; the object owns it from now on (closed by {@link close}). */
  constructor(fd: number) {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`bad vhost device fd ${fd}`);
    this.#fd = fd;
  }

  /** The device fd (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  /** The memory table last set, used to translate ring addresses. */
  get memTable(): readonly VhostMemoryRegion[] {
    return this.#regions;
  }

  /** ioctl on the device fd, with the ioctl's name in any error. */
  protected ioctl(request: number, arg?: Uint8Array | number): number {
    if (this.#fd < 0) throw new VhostBackendError(k.vhostIoctlName(request), `${this.kind} device is closed`);
    try {
      return sys.ioctl(this.#fd, request, arg);
    } catch (e) {
      if (e instanceof sys.SysError) throw new sys.SysError(e.errno, 'ioctl', `${k.vhostIoctlName(request)} on ${this.kind}`);
      throw e;
    }
  }

  /** An ioctl returning a u64 through its pointer argument. */
  protected getU64(request: number): bigint {
    this.ioctl(request, this.u64Buf);
    return new DataView(this.u64Buf.buffer).getBigUint64(0, true);
  }

  /** An ioctl taking a pointer to a u64. */
  protected setU64(request: number, value: bigint): void {
    if (value < 0n || value > 0xffffffffffffffffn) throw new RangeError(`${k.vhostIoctlName(request)}: ${value} is not a u64`);
    new DataView(this.u64Buf.buffer).setBigUint64(0, value, true);
    this.ioctl(request, this.u64Buf);
  }

  /** Passes an int by pointer (the kernel does copy_from_user on the argument). */
  protected setInt(request: number, value: number): void {
    new DataView(this.u64Buf.buffer).setInt32(0, value, true);
    this.ioctl(request, this.u64Buf);
  }

  /** An ioctl taking struct vhost_vring_file (null fd = -1, unbind). */
  protected setVringFile(request: number, index: number, fd: number | null): void {
    this.ioctl(request, k.encodeVringFile(this.fileBuf, index, fd ?? -1));
  }

  getFeatures(): Promise<bigint> {
    return Promise.resolve().then(() => this.getU64(k.VHOST_GET_FEATURES));
  }
  setFeatures(features: bigint): Promise<void> {
    return Promise.resolve().then(() => this.setU64(k.VHOST_SET_FEATURES, features));
  }
  /** VHOST_GET_BACKEND_FEATURES (VHOST_BACKEND_F_* bits). */
  getBackendFeatures(): Promise<bigint> {
    return Promise.resolve().then(() => this.getU64(k.VHOST_GET_BACKEND_FEATURES));
  }
  /** VHOST_SET_BACKEND_FEATURES. */
  setBackendFeatures(features: bigint): Promise<void> {
    return Promise.resolve().then(() => this.setU64(k.VHOST_SET_BACKEND_FEATURES, features));
  }
  setOwner(): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_SET_OWNER); });
  }
  resetOwner(): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_RESET_OWNER); this.#regions = []; });
  }

  setMemTable(regions: readonly VhostMemoryRegion[]): Promise<void> {
    return Promise.resolve().then(() => {
      if (regions.length > VHOST_DEFAULT_MAX_MEM_REGIONS) {
        throw new VhostBackendError('VHOST_SET_MEM_TABLE', `${regions.length} regions, at most ${VHOST_DEFAULT_MAX_MEM_REGIONS}`);
      }
      const size = k.vhostMemorySize(regions.length);
      if (this.memBuf.byteLength < size) this.memBuf = new Uint8Array(size);
      this.ioctl(k.VHOST_SET_MEM_TABLE, k.encodeMemory(this.memBuf, regions));
      this.#regions = regions.slice();
    });
  }

  setLogBase(log: VhostDirtyLog): Promise<void> {
    return Promise.resolve().then(() => this.setU64(k.VHOST_SET_LOG_BASE, log.userAddr));
  }
  setLogFd(fd: number): Promise<void> {
    return Promise.resolve().then(() => this.setInt(k.VHOST_SET_LOG_FD, fd));
  }
  setVringNum(index: number, num: number): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_SET_VRING_NUM, k.encodeVringState(this.stateBuf, index, num)); });
  }

  /** Ring addresses as this dataplane wants them: userspace addresses through the memory table. */
  protected ringAddress(gpa: bigint, request: string): bigint {
    return gpaToUserAddr(this.#regions, gpa, 1n, request);
  }

  setVringAddr(c: VhostVringConfig): Promise<void> {
    return Promise.resolve().then(() => {
      const req = 'VHOST_SET_VRING_ADDR';
      this.ioctl(k.VHOST_SET_VRING_ADDR, k.encodeVringAddr(this.addrBuf, {
        index: c.index,
        flags: c.log ? 1 << k.VHOST_VRING_F_LOG : 0,
        descUserAddr: this.ringAddress(c.descGpa, req),
        usedUserAddr: this.ringAddress(c.usedGpa, req),
        availUserAddr: this.ringAddress(c.availGpa, req),
        logGuestAddr: c.usedGpa,
      }));
    });
  }
  setVringBase(index: number, base: number): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_SET_VRING_BASE, k.encodeVringState(this.stateBuf, index, base)); });
  }
  getVringBase(index: number): Promise<number> {
    return Promise.resolve().then(() => {
      this.ioctl(k.VHOST_GET_VRING_BASE, k.encodeVringState(this.stateBuf, index, 0));
      return k.decodeVringStateNum(this.stateBuf);
    });
  }
  setVringKick(index: number, fd: number | null): Promise<void> {
    return Promise.resolve().then(() => this.setVringFile(k.VHOST_SET_VRING_KICK, index, fd));
  }
  setVringCall(index: number, fd: number | null): Promise<void> {
    return Promise.resolve().then(() => this.setVringFile(k.VHOST_SET_VRING_CALL, index, fd));
  }
  setVringErr(index: number, fd: number | null): Promise<void> {
    return Promise.resolve().then(() => this.setVringFile(k.VHOST_SET_VRING_ERR, index, fd));
  }

  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    closeSync(fd);
  }
}
