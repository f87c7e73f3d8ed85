/**
 * vhost-user: the vhost-user protocol and a virtio device-backend framework for Node.js.
 *
 * - Back-end side: implement {@link VhostUserBackend} and serve it with {@link VhostUserDaemon}.
 * - Front-end side: {@link Frontend} has a typed method per request; {@link FrontendMemory} and
 *   {@link setupQueue} drive a back-end's virtqueues without a VM.
 * - Lower layers: `sys` (syscalls), guest memory, split virtqueues, the message codec.
 * @module
 */
export * as sys from './sys/index.js';
export * from './memory/index.js';
export * from './queue/index.js';
export * from './vhost-user/constants.js';
export * from './virtio/index.js';
export * from './vhost-user/messages.js';
export * from './vhost-user/codec.js';
export { VhostUserProtocolError, type ProtocolErrorKind } from './vhost-user/errors.js';
export { Connection, type RawMessage, type ConnectionHandler } from './vhost-user/connection.js';
export { UnixListener, connectUnixWithRetry } from './vhost-user/listener.js';
export { Frontend, VhostUserRequestFailedError, type FrontendOptions } from './vhost-user/frontend.js';
export { VhostUserTimeoutError, VhostUserClosedError } from './vhost-user/requester.js';
export { BackendEndpoint, NotSupportedError, type BackendEndpointOptions } from './vhost-user/backend-endpoint.js';
export type { BackendReqHandler, MaybePromise } from './vhost-user/backend-handler.js';
export {
  BackendChannel, BackendChannelEndpoint, BackendRequestFailedError, type BackendChannelHandler,
} from './vhost-user/backend-channel.js';
export { FrontendMemory, FrontendQueue, setupQueue } from './driver/frontend-driver.js';
export * from './backend/index.js';
export { StderrLogger, RateLimitedLogger, silentLogger, defaultLogger, type Logger, type LogLevel } from './log.js';
export { VhostKernNet } from './kernel/net.js';
export { VhostKernVsock } from './kernel/vsock.js';
export { VhostKernVdpa, type IovaRange } from './kernel/vdpa.js';
export { VhostUserBackendAdapter } from './kernel/vhost-user-adapter.js';
export { openTap, type Tap, type TapOptions } from './kernel/tap.js';
export { VhostBackendError, type VhostBackend, type VhostMemoryRegion, type VhostDirtyLog, type VhostVringConfig } from './kernel/vhost-backend.js';
