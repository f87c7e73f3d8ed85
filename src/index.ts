/**
 * vhost-user: the vhost-user protocol and a virtio device-backend framework for Node.js.
 *
 * - Back-end side: implement {@link VhostUserBackend} and serve it with {@link VhostUserDaemon}.
 * - Front-end side: {@link Frontend} has a typed method per request; {@link FrontendMemory} and
 *   {@link setupQueue} drive a back-end's virtqueues without a VM.
 * - Lower layers: guest memory, split virtqueues, the message codec. The raw syscall layer
 *   (src/sys: mmap, wrapMemory, ioctl, fd passing) is internal and deliberately not exported: only
 *   {@link SysError} (thrown by many APIs) and the memory-fault subscription are public.
 * - Other entry points: `vhost-user/devices/blk`, `vhost-user/devices/rng`, `vhost-user/driver`.
 * @module
 */
export { SysError } from './sys/index.js';
export * from './memory/index.js';
export * from './queue/index.js';
export * from './vhost-user/constants.js';
export * from './virtio/index.js';
export * from './vhost-user/messages.js';
export * from './vhost-user/codec.js';
export {
  VhostUserProtocolError, VhostUserError, VHOST_USER_ERROR_ERRNO, toVhostUserError, type ProtocolErrorKind, type VhostUserErrorCode,
} from './vhost-user/errors.js';
export { REQUEST_GATES, checkGate, describeGate, type FeatureGate, type NegotiationState } from './vhost-user/gating.js';
export {
  Connection, ConnectionTimeoutError, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MESSAGE_TIMEOUT_MS,
  type RawMessage, type ConnectionHandler, type ConnectionOptions,
} from './vhost-user/connection.js';
export {
  UnixListener, connectUnixWithRetry, checkSocketPath, DEFAULT_SOCKET_MODE, UNIX_PATH_MAX, type UnixListenOptions,
} from './vhost-user/listener.js';
export {
  negotiate, DEFAULT_PROTOCOL_FEATURES, FEATURES_NEEDING_FRONTEND_SUPPORT, type Negotiated, type NegotiateOptions,
} from './vhost-user/negotiate.js';
export { Frontend, VhostUserRequestFailedError, type FrontendOptions } from './vhost-user/frontend.js';
export { VhostUserTimeoutError, VhostUserClosedError } from './vhost-user/requester.js';
export { BackendEndpoint, NotSupportedError, type BackendEndpointOptions } from './vhost-user/backend-endpoint.js';
export type { BackendReqHandler, MaybePromise } from './vhost-user/backend-handler.js';
export {
  BackendChannel, BackendChannelEndpoint, BackendRequestFailedError, type BackendChannelHandler, type ShmemMapRequest,
} from './vhost-user/backend-channel.js';
export { FrontendMemory, FrontendQueue, setupQueue, setupPackedQueue, reattachQueue } from './driver/frontend-driver.js';
export * from './backend/index.js';
export {
  StderrLogger, RateLimitedLogger, silentLogger, defaultLogger, toLogger, isLogLevel, LOG_LEVELS,
  type Logger, type LogLevel, type LogFields, type PinoLikeLogger, type StderrLoggerOptions,
} from './log.js';
export { VhostKernNet } from './kernel/net.js';
export { VhostKernVsock } from './kernel/vsock.js';
export { VhostKernVdpa, type IovaRange } from './kernel/vdpa.js';
export { VhostUserBackendAdapter } from './kernel/vhost-user-adapter.js';
export { VduseDaemon, vduseFeatures, type VduseDaemonOptions } from './kernel/vduse-daemon.js';
export { VdpaNetlink, type VdpaMgmtDev, type VdpaDevInfo } from './kernel/vdpa-netlink.js';
export { openTap, type Tap, type TapOptions } from './kernel/tap.js';
export { VhostBackendError, type VhostBackend, type VhostMemoryRegion, type VhostDirtyLog, type VhostVringConfig } from './kernel/vhost-backend.js';
