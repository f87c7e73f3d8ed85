/**
 * The standard front-end negotiation sequence, shared by the probe CLI, the examples and the
 * interop tests: everything a front-end does on a fresh connection before it sets up memory and
 * rings.
 * @module
 */
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, hasProtocolFeature, protocolFeatureMask } from './constants.js';
import {
  VHOST_F_LOG_ALL, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_IN_ORDER, VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_PACKED, featureMask, hasFeature,
} from '../virtio/features.js';
import type { Frontend } from './frontend.js';

/**
 * Virtio feature bits left out of SET_FEATURES unless asked for explicitly: each obliges the
 * front-end to machinery a plain split-ring front-end does not have (dirty logging, an IOTLB,
 * packed rings, in-order batched used entries, notification data).
 */
export const FEATURES_NEEDING_FRONTEND_SUPPORT: bigint =
  featureMask(VHOST_F_LOG_ALL) | featureMask(VIRTIO_F_ACCESS_PLATFORM) | featureMask(VIRTIO_F_RING_PACKED) |
  featureMask(VIRTIO_F_IN_ORDER) | featureMask(VIRTIO_F_NOTIFICATION_DATA);

/**
 * Protocol features a front-end can accept without further set-up. Deliberately excluded: those
 * that need a back-end channel (BACKEND_REQ, HOST_NOTIFIER, INBAND_NOTIFICATIONS, SHARED_OBJECT,
 * SHMEM), change wire layouts (XEN_MMAP) or belong to migration/postcopy (LOG_SHMFD, PAGEFAULT,
 * DEVICE_STATE, INFLIGHT_SHMFD, GET_VRING_BASE_INFLIGHT). The back-end accepts a request only when
 * its feature is negotiated (gating.ts), so callers send e.g. GET_QUEUE_NUM only when MQ is in
 * {@link Negotiated.protocolFeatures}.
 */
export const DEFAULT_PROTOCOL_FEATURES: bigint =
  protocolFeatureMask(ProtocolFeature.MQ) | protocolFeatureMask(ProtocolFeature.REPLY_ACK) |
  protocolFeatureMask(ProtocolFeature.MTU) | protocolFeatureMask(ProtocolFeature.CONFIG) |
  protocolFeatureMask(ProtocolFeature.RESET_DEVICE) | protocolFeatureMask(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  protocolFeatureMask(ProtocolFeature.STATUS);

/** Options of {@link negotiate}. */
export interface NegotiateOptions {
  /**
   * Virtio features to acknowledge, intersected with the offer. Default: everything offered except
   * {@link FEATURES_NEEDING_FRONTEND_SUPPORT}. VHOST_USER_F_PROTOCOL_FEATURES is always kept when
   * offered, since protocol negotiation depends on it.
   */
  wantFeatures?: bigint;
  /** Protocol features to acknowledge, intersected with the offer. Default {@link DEFAULT_PROTOCOL_FEATURES}. */
  wantProtocolFeatures?: bigint;
  /** Send VHOST_USER_SET_FEATURES (default true; the probe may want to leave the device untouched). */
  setFeatures?: boolean;
}

/** What {@link negotiate} learnt and agreed. */
export interface Negotiated {
  /** GET_FEATURES reply: what the back-end offers. */
  offeredFeatures: bigint;
  /** What SET_FEATURES acknowledged (or would have, with `setFeatures: false`). */
  features: bigint;
  /** GET_PROTOCOL_FEATURES reply, or null when VHOST_USER_F_PROTOCOL_FEATURES was not offered. */
  offeredProtocolFeatures: bigint | null;
  /** What SET_PROTOCOL_FEATURES acknowledged, or null when protocol features were not negotiated. */
  protocolFeatures: bigint | null;
  /** GET_QUEUE_NUM reply when MQ was negotiated, else null. */
  queueNum: number | null;
  /** GET_MAX_MEM_SLOTS reply when CONFIGURE_MEM_SLOTS was negotiated, else null. */
  maxMemSlots: number | null;
}

/**
 * Runs the negotiation in QEMU's order (the order back-ends are tested against):
 * GET_FEATURES; when VHOST_USER_F_PROTOCOL_FEATURES is offered GET_PROTOCOL_FEATURES and
 * SET_PROTOCOL_FEATURES (offer ∩ wanted); SET_OWNER; GET_QUEUE_NUM if MQ; GET_MAX_MEM_SLOTS if
 * CONFIGURE_MEM_SLOTS; finally SET_FEATURES (offer ∩ wanted). Throws whatever the front-end throws
 * (timeouts, closed connection, a failed REPLY_ACK).
 */
export async function negotiate(fe: Frontend, opts: NegotiateOptions = {}): Promise<Negotiated> {
  const offeredFeatures = await fe.getFeatures();
  const protocolBit = featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
  let features = offeredFeatures & (opts.wantFeatures ?? ~FEATURES_NEEDING_FRONTEND_SUPPORT);
  let offeredProtocolFeatures: bigint | null = null;
  let protocolFeatures: bigint | null = null;
  if (hasFeature(offeredFeatures, VHOST_USER_F_PROTOCOL_FEATURES)) {
    features |= protocolBit;
    offeredProtocolFeatures = await fe.getProtocolFeatures();
    protocolFeatures = offeredProtocolFeatures & (opts.wantProtocolFeatures ?? DEFAULT_PROTOCOL_FEATURES);
    await fe.setProtocolFeatures(protocolFeatures);
  }
  await fe.setOwner();
  const pf = protocolFeatures ?? 0n;
  const queueNum = hasProtocolFeature(pf, ProtocolFeature.MQ) ? await fe.getQueueNum() : null;
  const maxMemSlots = hasProtocolFeature(pf, ProtocolFeature.CONFIGURE_MEM_SLOTS) ? await fe.getMaxMemSlots() : null;
  if (opts.setFeatures ?? true) await fe.setFeatures(features);
  return { offeredFeatures, features, offeredProtocolFeatures, protocolFeatures, queueNum, maxMemSlots };
}
