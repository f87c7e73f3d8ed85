/**
 * virtio-entropy (virtio-rng) over vhost-user (`vhost-user/devices/rng`): {@link VhostUserRngBackend},
 * to serve with the root package's `VhostUserDaemon`.
 * @module
 */
export { VhostUserRngBackend, type VhostUserRngBackendOptions } from './backend.js';
