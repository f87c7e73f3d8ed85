/**
 * Which negotiated feature each front-end request needs, in one table, and the check the
 * {@link BackendEndpoint} applies to every request before the handler sees it.
 *
 * The requirements come from the "Front-end message types" text of spec/vhost-user.rst ("Only
 * legal if…", "When … has been successfully negotiated, this message is submitted…") and, for
 * GET_SHMEM_CONFIG, from vhost-user-newer.md. Where the spec names no feature (SET_LOG_FD,
 * SET_VRING_ERR, GPU_SET_SOCKET, the ring set-up requests) the request is always allowed.
 * IOTLB_MSG is gated by the *virtio* feature VIRTIO_F_IOMMU_PLATFORM, as the spec says; there is
 * no IOTLB protocol feature.
 *
 * What happens to a request that fails its gate is the endpoint's general failure policy: an
 * error reply when the request has a way to carry one (REPLY_ACK negotiated and asked for, or a
 * reply of its own that can hold an error such as GET_CONFIG's empty reply), otherwise the
 * connection is closed. Either way the request is logged with its name and `not-negotiated`.
 * @module
 */
import {
  BackendReq,
  FrontendReq,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  hasProtocolFeature,
  requestName,
} from './constants.js';
import { VIRTIO_F_IOMMU_PLATFORM } from '../virtio/features.js';
import { VhostUserError, VhostUserProtocolError } from './errors.js';

/** What a request needs to have been negotiated before it is legal. */
export type FeatureGate =
  /** Always legal. */
  | { kind: 'none' }
  /** The protocol feature was acknowledged with SET_PROTOCOL_FEATURES. */
  | {
      kind: 'protocol';
      /** The protocol feature required. */
      feature: ProtocolFeature;
    }
  /** VHOST_USER_F_PROTOCOL_FEATURES is in the back-end's GET_FEATURES reply on this connection. */
  | { kind: 'protocol-features-offered' }
  /**
   * VHOST_USER_F_PROTOCOL_FEATURES is negotiated: acknowledged with SET_FEATURES, or protocol
   * features were set. QEMU sends SET_VRING_ENABLE after SET_PROTOCOL_FEATURES but before
   * SET_FEATURES, so either counts.
   */
  | { kind: 'protocol-features-negotiated' }
  /** A virtio feature bit was acknowledged with SET_FEATURES. */
  | {
      kind: 'virtio';
      /** The virtio feature bit number. */
      bit: number;
      /** Its spec name, for logs. */
      name: string;
    };

const NONE: FeatureGate = { kind: 'none' };
const proto = (feature: ProtocolFeature): FeatureGate => ({ kind: 'protocol', feature });

/** The gate of every front-end request, indexed by request id. */
export const REQUEST_GATES: Readonly<Record<FrontendReq, FeatureGate>> = {
  [FrontendReq.GET_FEATURES]: NONE,
  [FrontendReq.SET_FEATURES]: NONE,
  [FrontendReq.SET_OWNER]: NONE,
  [FrontendReq.RESET_OWNER]: NONE,
  [FrontendReq.SET_MEM_TABLE]: NONE,
  [FrontendReq.SET_LOG_BASE]: proto(ProtocolFeature.LOG_SHMFD),
  [FrontendReq.SET_LOG_FD]: NONE,
  [FrontendReq.SET_VRING_NUM]: NONE,
  [FrontendReq.SET_VRING_ADDR]: NONE,
  [FrontendReq.SET_VRING_BASE]: NONE,
  [FrontendReq.GET_VRING_BASE]: NONE,
  [FrontendReq.SET_VRING_KICK]: NONE,
  [FrontendReq.SET_VRING_CALL]: NONE,
  [FrontendReq.SET_VRING_ERR]: NONE,
  [FrontendReq.GET_PROTOCOL_FEATURES]: { kind: 'protocol-features-offered' },
  [FrontendReq.SET_PROTOCOL_FEATURES]: { kind: 'protocol-features-offered' },
  [FrontendReq.GET_QUEUE_NUM]: proto(ProtocolFeature.MQ),
  [FrontendReq.SET_VRING_ENABLE]: { kind: 'protocol-features-negotiated' },
  [FrontendReq.SEND_RARP]: proto(ProtocolFeature.RARP),
  [FrontendReq.NET_SET_MTU]: proto(ProtocolFeature.MTU),
  [FrontendReq.SET_BACKEND_REQ_FD]: proto(ProtocolFeature.BACKEND_REQ),
  [FrontendReq.IOTLB_MSG]: { kind: 'virtio', bit: VIRTIO_F_IOMMU_PLATFORM, name: 'VIRTIO_F_IOMMU_PLATFORM' },
  [FrontendReq.SET_VRING_ENDIAN]: proto(ProtocolFeature.CROSS_ENDIAN),
  [FrontendReq.GET_CONFIG]: proto(ProtocolFeature.CONFIG),
  [FrontendReq.SET_CONFIG]: proto(ProtocolFeature.CONFIG),
  [FrontendReq.CREATE_CRYPTO_SESSION]: proto(ProtocolFeature.CRYPTO_SESSION),
  [FrontendReq.CLOSE_CRYPTO_SESSION]: proto(ProtocolFeature.CRYPTO_SESSION),
  [FrontendReq.POSTCOPY_ADVISE]: proto(ProtocolFeature.PAGEFAULT),
  [FrontendReq.POSTCOPY_LISTEN]: proto(ProtocolFeature.PAGEFAULT),
  [FrontendReq.POSTCOPY_END]: proto(ProtocolFeature.PAGEFAULT),
  [FrontendReq.GET_INFLIGHT_FD]: proto(ProtocolFeature.INFLIGHT_SHMFD),
  [FrontendReq.SET_INFLIGHT_FD]: proto(ProtocolFeature.INFLIGHT_SHMFD),
  [FrontendReq.GPU_SET_SOCKET]: NONE,
  [FrontendReq.RESET_DEVICE]: proto(ProtocolFeature.RESET_DEVICE),
  [FrontendReq.VRING_KICK]: proto(ProtocolFeature.INBAND_NOTIFICATIONS),
  [FrontendReq.GET_MAX_MEM_SLOTS]: proto(ProtocolFeature.CONFIGURE_MEM_SLOTS),
  [FrontendReq.ADD_MEM_REG]: proto(ProtocolFeature.CONFIGURE_MEM_SLOTS),
  [FrontendReq.REM_MEM_REG]: proto(ProtocolFeature.CONFIGURE_MEM_SLOTS),
  [FrontendReq.SET_STATUS]: proto(ProtocolFeature.STATUS),
  [FrontendReq.GET_STATUS]: proto(ProtocolFeature.STATUS),
  [FrontendReq.GET_SHARED_OBJECT]: proto(ProtocolFeature.SHARED_OBJECT),
  [FrontendReq.SET_DEVICE_STATE_FD]: proto(ProtocolFeature.DEVICE_STATE),
  [FrontendReq.CHECK_DEVICE_STATE]: proto(ProtocolFeature.DEVICE_STATE),
  [FrontendReq.GET_SHMEM_CONFIG]: proto(ProtocolFeature.SHMEM),
};

/** What has been negotiated on a connection so far, as the endpoint saw it. */
export interface NegotiationState {
  /** The back-end's last GET_FEATURES reply, or null before one. */
  offeredFeatures: bigint | null;
  /** The last successfully handled SET_FEATURES. */
  ackedFeatures: bigint;
  /** Whether a SET_PROTOCOL_FEATURES was handled successfully. */
  protocolFeaturesSet: boolean;
  /** The protocol features in effect. */
  protocolFeatures: bigint;
}

/** A fresh connection's state: nothing negotiated. */
export function initialNegotiation(): NegotiationState {
  return { offeredFeatures: null, ackedFeatures: 0n, protocolFeaturesSet: false, protocolFeatures: 0n };
}

const PROTOCOL_BIT = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);

/** Human-readable requirement of `gate`, for logs. */
export function describeGate(gate: FeatureGate): string {
  switch (gate.kind) {
    case 'none': return 'nothing';
    case 'protocol': return `VHOST_USER_PROTOCOL_F_${ProtocolFeature[gate.feature]}`;
    case 'protocol-features-offered': return 'VHOST_USER_F_PROTOCOL_FEATURES in GET_FEATURES';
    case 'protocol-features-negotiated': return 'VHOST_USER_F_PROTOCOL_FEATURES negotiated';
    case 'virtio': return gate.name;
  }
}

/** True when `gate` is satisfied in `state`. */
export function gateOpen(gate: FeatureGate, state: NegotiationState): boolean {
  switch (gate.kind) {
    case 'none': return true;
    case 'protocol': return state.protocolFeaturesSet && hasProtocolFeature(state.protocolFeatures, gate.feature);
    case 'protocol-features-offered': return state.offeredFeatures !== null && (state.offeredFeatures & PROTOCOL_BIT) !== 0n;
    case 'protocol-features-negotiated': return state.protocolFeaturesSet || (state.ackedFeatures & PROTOCOL_BIT) !== 0n;
    case 'virtio': return ((state.ackedFeatures >> BigInt(gate.bit)) & 1n) === 1n;
  }
}

/**
 * Throws `VhostUserError('not-negotiated')` when `request` is not legal in `state`. Ids outside
 * the table (which the codec rejects before this) are `not-supported`.
 */
export function checkGate(request: FrontendReq, state: NegotiationState): void {
  const gate = (REQUEST_GATES as Partial<Record<number, FeatureGate>>)[request];
  if (gate === undefined) throw new VhostUserError('not-supported', requestName(request), 'unknown request');
  if (!gateOpen(gate, state)) throw new VhostUserError('not-negotiated', requestName(request), `needs ${describeGate(gate)}`);
}

/**
 * Protocol features that are invalid without others, checked on SET_PROTOCOL_FEATURES:
 * INBAND_NOTIFICATIONS needs BACKEND_REQ and REPLY_ACK (spec, "In-band notifications": the
 * back-end must close the connection otherwise); GET_VRING_BASE_INFLIGHT leaves requests in the
 * inflight region, so it needs INFLIGHT_SHMFD (vhost-user-newer.md; QEMU validates the same).
 */
export const PROTOCOL_FEATURE_REQUIRES: ReadonlyArray<readonly [ProtocolFeature, readonly ProtocolFeature[]]> = [
  [ProtocolFeature.INBAND_NOTIFICATIONS, [ProtocolFeature.BACKEND_REQ, ProtocolFeature.REPLY_ACK]],
  [ProtocolFeature.GET_VRING_BASE_INFLIGHT, [ProtocolFeature.INFLIGHT_SHMFD]],
];

/** Throws a `VhostUserProtocolError` ('value') when `features` breaks {@link PROTOCOL_FEATURE_REQUIRES}. */
export function checkProtocolFeatureSet(features: bigint): void {
  for (const [f, needs] of PROTOCOL_FEATURE_REQUIRES) {
    if (!hasProtocolFeature(features, f) || needs.every((n) => hasProtocolFeature(features, n))) continue;
    throw new VhostUserProtocolError(requestName(FrontendReq.SET_PROTOCOL_FEATURES), 'value',
      `${ProtocolFeature[f]} requires ${needs.map((n) => ProtocolFeature[n]).join(' and ')}`);
  }
}

/**
 * The protocol feature each back-end request (back-end channel) needs, from the "Back-end message
 * types" text of the spec (and vhost-user-newer.md for SHMEM). BACKEND_IOTLB_MSG is gated by the
 * virtio feature VIRTIO_F_IOMMU_PLATFORM, which the channel does not track: null.
 */
export const BACKEND_REQUEST_GATES: Readonly<Record<BackendReq, ProtocolFeature | null>> = {
  [BackendReq.IOTLB_MSG]: null,
  [BackendReq.CONFIG_CHANGE_MSG]: ProtocolFeature.CONFIG,
  [BackendReq.VRING_HOST_NOTIFIER_MSG]: ProtocolFeature.HOST_NOTIFIER,
  [BackendReq.VRING_CALL]: ProtocolFeature.INBAND_NOTIFICATIONS,
  [BackendReq.VRING_ERR]: ProtocolFeature.INBAND_NOTIFICATIONS,
  [BackendReq.SHARED_OBJECT_ADD]: ProtocolFeature.SHARED_OBJECT,
  [BackendReq.SHARED_OBJECT_REMOVE]: ProtocolFeature.SHARED_OBJECT,
  [BackendReq.SHARED_OBJECT_LOOKUP]: ProtocolFeature.SHARED_OBJECT,
  [BackendReq.SHMEM_MAP]: ProtocolFeature.SHMEM,
  [BackendReq.SHMEM_UNMAP]: ProtocolFeature.SHMEM,
};

/**
 * Throws `VhostUserError('not-negotiated')` when back-end request `request` needs a protocol
 * feature missing from `protocolFeatures`. Null `protocolFeatures` (not known) allows everything.
 */
export function checkBackendGate(request: BackendReq, protocolFeatures: bigint | null): void {
  const f = (BACKEND_REQUEST_GATES as Partial<Record<number, ProtocolFeature | null>>)[request] ?? null;
  if (protocolFeatures === null || f === null || hasProtocolFeature(protocolFeatures, f)) return;
  throw new VhostUserError('not-negotiated', requestName(request, 'backend'), `needs VHOST_USER_PROTOCOL_F_${ProtocolFeature[f]}`);
}
