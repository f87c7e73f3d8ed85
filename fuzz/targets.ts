/**
 * The daemons the fuzzer drives and what differs between them: the features their usual
 * front-end acknowledges and their queue count (for protocol cases), and the chain cases that
 * speak their device's language.
 * @module
 */
import {
  VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../src/virtio/features.js';
import {
  VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
} from '../src/devices/net/header.js';
import { chainCase, type ChainCaseStats } from './chains.js';
import type { RawClient } from './client.js';
import type { FuzzDevice } from './daemon-process.js';
import { netChainCase } from './net-chains.js';
import { BLK_PROTOCOL, type ProtocolTarget } from './protocol.js';
import type { Rng } from './rng.js';

/** One daemon under test. */
export interface DeviceTarget {
  device: FuzzDevice;
  protocol: ProtocolTarget;
  chainCase(rng: Rng, client: RawClient, timeoutMs: number): Promise<ChainCaseStats>;
}

/**
 * What QEMU's virtio-net acknowledges over vhost-user with its default device properties (offloads
 * both ways, mergeable buffers, control queue with RX mode, MAC and MTU in the config space).
 */
export const NET_FRONTEND_FEATURES: bigint = [
  VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX,
].reduce((m, b) => m | (1n << BigInt(b)), 0n);

/** The targets by name. */
export const TARGETS: Readonly<Record<FuzzDevice, DeviceTarget>> = Object.freeze({
  blk: { device: 'blk', protocol: BLK_PROTOCOL, chainCase },
  // One queue pair: receive 0, transmit 1, control 2.
  net: { device: 'net', protocol: { frontendFeatures: NET_FRONTEND_FEATURES, numQueues: 3 }, chainCase: netChainCase },
});
