/**
 * vDPA dataplane through /dev/vhost-vdpa-N (drivers/vhost/vdpa.c). Unlike vhost-net/vsock the
 * device reaches memory through an IOTLB: mappings are added and removed by write()ing
 * struct vhost_msg_v2 messages to the fd, and ring addresses are IOVAs. {@link setMemTable} maps
 * each region at IOVA = guest-physical address, so the common interface's GPA ring addresses work
 * unchanged.
 *
 * @module
 */
import { fstatSync, writeSync } from 'node:fs';
import * as k from './ioctl.js';
import { VhostKernBase, openVhostDevice } from './kern-base.js';
import { VhostBackendError, type VhostDirtyLog, type VhostMemoryRegion } from './vhost-backend.js';

/** Largest config space read in one call (virtio config spaces are far smaller). */
export const VDPA_MAX_CONFIG_SIZE = 4096;

/** An IOVA range [first, last] (inclusive) the device can address. */
export interface IovaRange {
  /** First usable IOVA. */
  readonly first: bigint;
  /** Last usable IOVA (inclusive). */
  readonly last: bigint;
}

/** The kernel vhost-vdpa device (rust-vmm: `vhost_kern::vdpa::VhostKernVdpa`). */
export class VhostKernVdpa extends VhostKernBase {
  /** Dataplane name. */
  readonly kind = 'vhost-vdpa';
  /** Address space used for IOTLB messages (0 unless VHOST_BACKEND_F_IOTLB_ASID is used). */
  asid = 0;
  private readonly msgBuf = new Uint8Array(k.VHOST_MSG_V2_SIZE);
  private readonly cfgBuf = new Uint8Array(k.VHOST_VDPA_CONFIG_SIZE + VDPA_MAX_CONFIG_SIZE);
  private readonly rangeBuf = new Uint8Array(k.VHOST_VDPA_IOVA_RANGE_SIZE);
  private mapped: VhostMemoryRegion[] = [];
  private range: IovaRange | null = null;
  private fdChecked = false;

  /** Opens /dev/vhost-vdpa-N (`path`). */
  static open(path: string): VhostKernVdpa {
    return new VhostKernVdpa(openVhostDevice(path));
  }

  private getU32(request: number): number {
    this.ioctl(request, this.u64Buf);
    return new DataView(this.u64Buf.buffer).getUint32(0, true);
  }

  /** VHOST_VDPA_GET_DEVICE_ID: the virtio device id (1 net, 2 blk...). */
  getDeviceId(): Promise<number> {
    return Promise.resolve().then(() => this.getU32(k.VHOST_VDPA_GET_DEVICE_ID));
  }
  /** VHOST_VDPA_GET_STATUS: the virtio device status byte. */
  getStatus(): Promise<number> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_VDPA_GET_STATUS, this.u64Buf); return this.u64Buf[0] ?? 0; });
  }
  /** VHOST_VDPA_SET_STATUS (0 resets the device). */
  setStatus(status: number): Promise<void> {
    return Promise.resolve().then(() => {
      if (!Number.isInteger(status) || status < 0 || status > 0xff) throw new RangeError(`status ${status} is not a u8`);
      this.u64Buf[0] = status;
      this.ioctl(k.VHOST_VDPA_SET_STATUS, this.u64Buf);
    });
  }
  /** VHOST_VDPA_GET_CONFIG_SIZE. */
  getConfigSize(): Promise<number> {
    return Promise.resolve().then(() => this.getU32(k.VHOST_VDPA_GET_CONFIG_SIZE));
  }
  /** VHOST_VDPA_GET_CONFIG: `len` bytes of config space at `offset` (a copy). */
  getConfig(offset: number, len: number): Promise<Uint8Array> {
    return Promise.resolve().then(() => {
      if (len > VDPA_MAX_CONFIG_SIZE) throw new RangeError(`config read of ${len} bytes, at most ${VDPA_MAX_CONFIG_SIZE}`);
      const arg = k.encodeVdpaConfig(this.cfgBuf, offset, len);
      this.ioctl(k.VHOST_VDPA_GET_CONFIG, arg);
      return arg.slice(k.VHOST_VDPA_CONFIG_SIZE);
    });
  }
  /** VHOST_VDPA_SET_CONFIG. */
  setConfig(offset: number, data: Uint8Array): Promise<void> {
    return Promise.resolve().then(() => {
      if (data.length > VDPA_MAX_CONFIG_SIZE) throw new RangeError(`config write of ${data.length} bytes, at most ${VDPA_MAX_CONFIG_SIZE}`);
      this.ioctl(k.VHOST_VDPA_SET_CONFIG, k.encodeVdpaConfig(this.cfgBuf, offset, data.length, data));
    });
  }
  /** VHOST_VDPA_SET_VRING_ENABLE. */
  setVringEnable(index: number, enable: boolean): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_VDPA_SET_VRING_ENABLE, k.encodeVringState(this.stateBuf, index, enable ? 1 : 0)); });
  }
  /** VHOST_VDPA_GET_VRING_NUM: the largest ring size the device supports. */
  getVringNum(): Promise<number> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_VDPA_GET_VRING_NUM, this.u64Buf); return new DataView(this.u64Buf.buffer).getUint16(0, true); });
  }
  /** VHOST_VDPA_GET_VQS_COUNT. */
  getVqsCount(): Promise<number> {
    return Promise.resolve().then(() => this.getU32(k.VHOST_VDPA_GET_VQS_COUNT));
  }
  /** VHOST_VDPA_GET_GROUP_NUM: number of virtqueue groups. */
  getGroupNum(): Promise<number> {
    return Promise.resolve().then(() => this.getU32(k.VHOST_VDPA_GET_GROUP_NUM));
  }
  /** VHOST_VDPA_GET_AS_NUM: number of address spaces. */
  getAsNum(): Promise<number> {
    return Promise.resolve().then(() => this.getU32(k.VHOST_VDPA_GET_AS_NUM));
  }
  /** VHOST_VDPA_GET_VRING_GROUP: the group of virtqueue `index`. */
  getVringGroup(index: number): Promise<number> {
    return Promise.resolve().then(() => {
      this.ioctl(k.VHOST_VDPA_GET_VRING_GROUP, k.encodeVringState(this.stateBuf, index, 0));
      return k.decodeVringStateNum(this.stateBuf);
    });
  }
  /** VHOST_VDPA_SET_GROUP_ASID: binds a virtqueue group to an address space. */
  setGroupAsid(group: number, asid: number): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_VDPA_SET_GROUP_ASID, k.encodeVringState(this.stateBuf, group, asid)); });
  }
  /** VHOST_VDPA_GET_IOVA_RANGE (cached after the first call). */
  getIovaRange(): Promise<IovaRange> {
    return Promise.resolve().then(() => {
      this.ioctl(k.VHOST_VDPA_GET_IOVA_RANGE, this.rangeBuf);
      this.range = k.decodeIovaRange(this.rangeBuf);
      return this.range;
    });
  }
  /** VHOST_VDPA_SET_CONFIG_CALL: eventfd for config-change interrupts (null unbinds). */
  setConfigCall(fd: number | null): Promise<void> {
    return Promise.resolve().then(() => this.setInt(k.VHOST_VDPA_SET_CONFIG_CALL, fd ?? -1));
  }
  /** VHOST_VDPA_SUSPEND (needs VHOST_BACKEND_F_SUSPEND acked). */
  suspend(): Promise<void> {
    return Promise.resolve().then(() => { this.ioctl(k.VHOST_VDPA_SUSPEND); });
  }

  /**
   * Writes one vhost_msg_v2; the kernel applies it synchronously and fails the write on error.
   * A pipe or a regular file would take the bytes without complaint, so the fd's type is checked
   * before the first message.
   */
  private sendIotlb(msg: k.VhostIotlbMsg): void {
    if (this.fd < 0) throw new VhostBackendError('VHOST_IOTLB_MSG_V2', 'vhost-vdpa device is closed');
    if (!this.fdChecked) {
      const st = fstatSync(this.fd);
      const kind = st.isFIFO() ? 'pipe' : st.isFile() ? 'regular file' : st.isDirectory() ? 'directory' : null;
      if (kind !== null) throw new VhostBackendError('VHOST_IOTLB_MSG_V2', `fd ${this.fd} is a ${kind}, not a vhost-vdpa device`);
      this.fdChecked = true;
    }
    const bytes = k.encodeMsgV2(this.msgBuf, this.asid, msg);
    const n = writeSync(this.fd, bytes);
    if (n !== bytes.length) throw new VhostBackendError('VHOST_IOTLB_MSG_V2', `short write ${n} of ${bytes.length}`);
  }

  /**
   * IOTLB UPDATE: maps [iova, iova + size) to our address `uaddr`. Checked against the device's
   * IOVA range first so a bad mapping names the range instead of a bare EINVAL.
   */
  iotlbUpdate(iova: bigint, size: bigint, uaddr: bigint, perm: number = k.VHOST_ACCESS_RW): Promise<void> {
    return Promise.resolve().then(() => {
      if (size <= 0n) throw new VhostBackendError('VHOST_IOTLB_UPDATE', `empty mapping at 0x${iova.toString(16)}`);
      const r = this.range;
      if (r && (iova < r.first || iova + size - 1n > r.last)) {
        throw new VhostBackendError('VHOST_IOTLB_UPDATE', `[0x${iova.toString(16)}, +0x${size.toString(16)}) is outside the device IOVA range [0x${r.first.toString(16)}, 0x${r.last.toString(16)}]`);
      }
      this.sendIotlb({ iova, size, uaddr, perm, type: k.VHOST_IOTLB_UPDATE });
    });
  }
  /** IOTLB INVALIDATE of [iova, iova + size). */
  iotlbInvalidate(iova: bigint, size: bigint): Promise<void> {
    return Promise.resolve().then(() => this.sendIotlb({ iova, size, uaddr: 0n, perm: 0, type: k.VHOST_IOTLB_INVALIDATE }));
  }
  /** IOTLB BATCH_BEGIN (needs VHOST_BACKEND_F_IOTLB_BATCH). */
  iotlbBatchBegin(): Promise<void> {
    return Promise.resolve().then(() => this.sendIotlb({ iova: 0n, size: 0n, uaddr: 0n, perm: 0, type: k.VHOST_IOTLB_BATCH_BEGIN }));
  }
  /** IOTLB BATCH_END. */
  iotlbBatchEnd(): Promise<void> {
    return Promise.resolve().then(() => this.sendIotlb({ iova: 0n, size: 0n, uaddr: 0n, perm: 0, type: k.VHOST_IOTLB_BATCH_END }));
  }

  /** Replaces every mapping made by a previous call with one IOTLB mapping per region (IOVA = GPA). */
  override async setMemTable(regions: readonly VhostMemoryRegion[]): Promise<void> {
    this.range ??= await this.getIovaRange();
    for (const r of this.mapped) await this.iotlbInvalidate(r.guestPhysAddr, r.memorySize);
    this.mapped = [];
    for (const r of regions) {
      await this.iotlbUpdate(r.guestPhysAddr, r.memorySize, r.userAddr);
      this.mapped.push(r);
    }
  }
  /** Ring addresses are IOVAs, which {@link setMemTable} made equal to guest-physical ones. */
  protected override ringAddress(gpa: bigint, request: string): bigint {
    if (!this.mapped.some((r) => gpa >= r.guestPhysAddr && gpa < r.guestPhysAddr + r.memorySize)) {
      throw new VhostBackendError(request, `guest address 0x${gpa.toString(16)} is not mapped in the IOTLB`);
    }
    return gpa;
  }
  /** vhost-vdpa has no dirty log: rejected with a clear error instead of the kernel's ENOIOCTLCMD. */
  override setLogBase(_log: VhostDirtyLog): Promise<void> {
    return Promise.reject(new VhostBackendError('VHOST_SET_LOG_BASE', 'vhost-vdpa does not support dirty logging'));
  }
}
