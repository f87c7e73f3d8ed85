/**
 * In-kernel virtio-vsock dataplane (/dev/vhost-vsock, drivers/vhost/vsock.c): host-side sockets
 * connecting to the guest's CID reach the device's RX queue (0); TX is queue 1, events queue 2 is
 * not handled by the kernel.
 *
 * @module
 */
import * as k from './ioctl.js';
import { VhostKernBase, openVhostDevice } from './kern-base.js';

/** Lowest CID a guest may use (0-2 are reserved: hypervisor, local, host). */
export const VMADDR_CID_FIRST_GUEST = 3n;

/** The kernel vhost-vsock device (rust-vmm: `vhost_kern::vsock::Vsock`). */
export class VhostKernVsock extends VhostKernBase {
  /** Dataplane name. */
  readonly kind = 'vhost-vsock';

  /** Opens /dev/vhost-vsock (or `path`). */
  static open(path = '/dev/vhost-vsock'): VhostKernVsock {
    return new VhostKernVsock(openVhostDevice(path));
  }

  /** VHOST_VSOCK_SET_GUEST_CID (≥ 3, below U32_MAX; EADDRINUSE when another device owns it). */
  setGuestCid(cid: bigint | number): Promise<void> {
    return Promise.resolve().then(() => {
      const c = BigInt(cid);
      if (c < VMADDR_CID_FIRST_GUEST || c >= 0xffffffffn) throw new RangeError(`guest CID ${c} outside [3, 2^32-2]`);
      this.setU64(k.VHOST_VSOCK_SET_GUEST_CID, c);
    });
  }

  /** VHOST_VSOCK_SET_RUNNING: starts (true) or stops the device. */
  setRunning(running: boolean): Promise<void> {
    return Promise.resolve().then(() => this.setInt(k.VHOST_VSOCK_SET_RUNNING, running ? 1 : 0));
  }
}
