// virtio-entropy (virtio-rng) device over vhost-user.
export { VhostUserRngBackend, type VhostUserRngBackendOptions } from './backend.js';
