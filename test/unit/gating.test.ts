// The feature-gate table and the typed handler errors: what each gate kind accepts, and how
// untyped errors thrown by handlers are classified.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BackendReq, FrontendReq, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import {
  BACKEND_REQUEST_GATES, REQUEST_GATES, checkBackendGate, checkGate, checkProtocolFeatureSet, gateOpen, initialNegotiation, type NegotiationState,
} from '../../src/vhost-user/gating.js';
import { VhostUserError, VhostUserProtocolError, toVhostUserError } from '../../src/vhost-user/errors.js';
import { VIRTIO_F_IOMMU_PLATFORM } from '../../src/virtio/features.js';

const P30 = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);
const state = (s: Partial<NegotiationState>): NegotiationState => ({ ...initialNegotiation(), ...s });
const refusal = (req: FrontendReq, s: NegotiationState): string | null => {
  try {
    checkGate(req, s);
    return null;
  } catch (e) {
    assert.ok(e instanceof VhostUserError);
    return `${e.code} ${e.message}`;
  }
};

test('gating: a fresh connection allows only the ungated requests', () => {
  const s = initialNegotiation();
  const open = Object.values(FrontendReq).filter((r): r is FrontendReq => typeof r === 'number' && refusal(r, s) === null);
  assert.deepEqual(open.sort((a, b) => a - b), [
    FrontendReq.GET_FEATURES, FrontendReq.SET_FEATURES, FrontendReq.SET_OWNER, FrontendReq.RESET_OWNER, FrontendReq.SET_MEM_TABLE,
    FrontendReq.SET_LOG_FD, FrontendReq.SET_VRING_NUM, FrontendReq.SET_VRING_ADDR, FrontendReq.SET_VRING_BASE, FrontendReq.GET_VRING_BASE,
    FrontendReq.SET_VRING_KICK, FrontendReq.SET_VRING_CALL, FrontendReq.SET_VRING_ERR, FrontendReq.GPU_SET_SOCKET,
  ]);
  assert.equal(refusal(FrontendReq.SET_LOG_BASE, s), 'not-negotiated VHOST_USER_SET_LOG_BASE: needs VHOST_USER_PROTOCOL_F_LOG_SHMFD');
});

test('gating: protocol feature gates open only with SET_PROTOCOL_FEATURES carrying the bit', () => {
  const mq = protocolFeatureMask(ProtocolFeature.MQ);
  assert.notEqual(refusal(FrontendReq.GET_QUEUE_NUM, state({ protocolFeatures: mq })), null, 'bits without a SET_PROTOCOL_FEATURES do not count');
  assert.equal(refusal(FrontendReq.GET_QUEUE_NUM, state({ protocolFeatures: mq, protocolFeaturesSet: true })), null);
  assert.match(refusal(FrontendReq.GET_SHMEM_CONFIG, state({ protocolFeatures: mq, protocolFeaturesSet: true }))!, /PROTOCOL_F_SHMEM/);
  for (const [req, gate] of Object.entries(REQUEST_GATES)) {
    if (gate.kind !== 'protocol') continue;
    const s = state({ protocolFeatures: protocolFeatureMask(gate.feature), protocolFeaturesSet: true });
    assert.equal(gateOpen(gate, s), true, `request ${req}`);
    assert.equal(gateOpen(gate, state({ protocolFeatures: ~protocolFeatureMask(gate.feature) & ((1n << 64n) - 1n), protocolFeaturesSet: true })), false);
  }
});

test('gating: VHOST_USER_F_PROTOCOL_FEATURES — offered for GET/SET_PROTOCOL_FEATURES, negotiated either way for SET_VRING_ENABLE', () => {
  assert.notEqual(refusal(FrontendReq.GET_PROTOCOL_FEATURES, state({ offeredFeatures: 1n << 32n })), null);
  assert.equal(refusal(FrontendReq.SET_PROTOCOL_FEATURES, state({ offeredFeatures: P30 })), null);
  assert.notEqual(refusal(FrontendReq.SET_VRING_ENABLE, state({ offeredFeatures: P30 })), null, 'offered is not negotiated');
  assert.equal(refusal(FrontendReq.SET_VRING_ENABLE, state({ protocolFeaturesSet: true })), null, "QEMU's order: before SET_FEATURES");
  assert.equal(refusal(FrontendReq.SET_VRING_ENABLE, state({ ackedFeatures: P30 })), null);
});

test('gating: IOTLB_MSG needs the virtio feature VIRTIO_F_IOMMU_PLATFORM acknowledged', () => {
  assert.match(refusal(FrontendReq.IOTLB_MSG, state({ offeredFeatures: 1n << BigInt(VIRTIO_F_IOMMU_PLATFORM) }))!, /VIRTIO_F_IOMMU_PLATFORM/);
  assert.equal(refusal(FrontendReq.IOTLB_MSG, state({ ackedFeatures: 1n << BigInt(VIRTIO_F_IOMMU_PLATFORM) })), null);
});

test('typed errors: handler errors are classified, errnos kept, request names filled in', () => {
  const range = toVhostUserError(new RangeError('vring index 9 out of range'), 'VHOST_USER_SET_VRING_NUM');
  assert.deepEqual([range.code, range.errno, range.request, range.message], ['out-of-range', 34, 'VHOST_USER_SET_VRING_NUM', 'VHOST_USER_SET_VRING_NUM: vring index 9 out of range']);
  assert.equal(toVhostUserError(new TypeError('x'), 'R').code, 'invalid-argument');
  const sysErr = toVhostUserError(Object.assign(new Error('mmap failed'), { errno: -12 }), 'VHOST_USER_SET_MEM_TABLE');
  assert.deepEqual([sysErr.code, sysErr.errno], ['device-error', 12]);
  const typed = new VhostUserError('not-supported', '', 'no GPU');
  const named = toVhostUserError(typed, 'VHOST_USER_GPU_SET_SOCKET');
  assert.deepEqual([named.code, named.errno, named.message], ['not-supported', 95, 'VHOST_USER_GPU_SET_SOCKET: no GPU']);
  const already = new VhostUserError('invalid-state', 'VHOST_USER_X', 'busy');
  assert.equal(toVhostUserError(already, 'VHOST_USER_Y'), already, 'a named error is kept as is');
  assert.equal(toVhostUserError('a string', 'R').code, 'device-error');
  assert.ok(!(new VhostUserProtocolError('R', 'size', 'm') instanceof VhostUserError), 'wire errors stay a separate class');
});

test('gating: protocol feature sets that break a dependency are protocol errors', () => {
  const m = (...f: ProtocolFeature[]): bigint => f.reduce((a, x) => a | protocolFeatureMask(x), 0n);
  const P = ProtocolFeature;
  assert.throws(() => checkProtocolFeatureSet(m(P.INBAND_NOTIFICATIONS, P.REPLY_ACK)),
    (e: unknown) => e instanceof VhostUserProtocolError && e.kind === 'value' && e.message === 'VHOST_USER_SET_PROTOCOL_FEATURES: INBAND_NOTIFICATIONS requires BACKEND_REQ and REPLY_ACK');
  assert.doesNotThrow(() => checkProtocolFeatureSet(m(P.INBAND_NOTIFICATIONS, P.REPLY_ACK, P.BACKEND_REQ)));
  assert.throws(() => checkProtocolFeatureSet(m(P.GET_VRING_BASE_INFLIGHT)), /GET_VRING_BASE_INFLIGHT requires INFLIGHT_SHMFD/);
  assert.doesNotThrow(() => checkProtocolFeatureSet(m(P.GET_VRING_BASE_INFLIGHT, P.INFLIGHT_SHMFD)));
  assert.doesNotThrow(() => checkProtocolFeatureSet(0n));
});

test('gating: back-end channel requests need their protocol feature; unknown features allow all', () => {
  for (const v of Object.values(BackendReq)) if (typeof v === 'number') assert.ok(v in BACKEND_REQUEST_GATES, `BackendReq ${v} has a gate`);
  const refused = (r: BackendReq, f: bigint | null): string | null => {
    try {
      checkBackendGate(r, f);
      return null;
    } catch (e) {
      assert.ok(e instanceof VhostUserError && e.code === 'not-negotiated');
      return e.message;
    }
  };
  assert.equal(refused(BackendReq.SHMEM_MAP, 0n), 'VHOST_USER_BACKEND_SHMEM_MAP: needs VHOST_USER_PROTOCOL_F_SHMEM');
  assert.equal(refused(BackendReq.SHMEM_MAP, protocolFeatureMask(ProtocolFeature.SHMEM)), null);
  assert.equal(refused(BackendReq.VRING_CALL, protocolFeatureMask(ProtocolFeature.BACKEND_REQ)), 'VHOST_USER_BACKEND_VRING_CALL: needs VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS');
  assert.equal(refused(BackendReq.CONFIG_CHANGE_MSG, null), null, 'features unknown: not checked');
  assert.equal(refused(BackendReq.IOTLB_MSG, 0n), null, 'gated by a virtio feature the channel does not track');
});
