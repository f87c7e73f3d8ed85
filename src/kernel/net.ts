/**
 * In-kernel virtio-net dataplane (/dev/vhost-net, drivers/vhost/net.c): the kernel moves frames
 * between the rings and a TAP (or packet socket) attached per queue with VHOST_NET_SET_BACKEND.
 * Queue 0 is receive, 1 is transmit (a virtio-net queue pair).
 *
 * @module
 */
import * as k from './ioctl.js';
import { VhostKernBase, openVhostDevice } from './kern-base.js';

/** The kernel vhost-net device (rust-vmm: `vhost_kern::net::Net`). */
export class VhostKernNet extends VhostKernBase {
  /** Dataplane name. */
  readonly kind = 'vhost-net';

  /** Opens /dev/vhost-net (or `path`). */
  static open(path = '/dev/vhost-net'): VhostKernNet {
    return new VhostKernNet(openVhostDevice(path));
  }

  /**
   * VHOST_NET_SET_BACKEND: attaches the TAP fd serving queue `index` (null detaches; the queue
   * stops). The kernel takes its own reference: the caller may close its fd afterwards.
   */
  setBackend(index: number, tapFd: number | null): Promise<void> {
    return Promise.resolve().then(() => this.setVringFile(k.VHOST_NET_SET_BACKEND, index, tapFd));
  }
}
