// The daemon framework: VhostUserDaemon serving a VhostUserBackend (rust-vmm's vhost-user-backend).
export type { VhostUserBackend } from './backend.js';
export { Vring } from './vring.js';
export { VringEventHandler } from './event-handler.js';
export { VhostUserHandler, MAX_MEM_SLOTS, DAEMON_PROTOCOL_FEATURES } from './handler.js';
export { VhostUserDaemon, type VhostUserDaemonOptions } from './daemon.js';
export { WorkerVringGroup } from './worker-group.js';
export type { VringWorker, VringWorkerModule, CreateVringWorker } from './worker-protocol.js';
