// The daemon framework: VhostUserDaemon serving a VhostUserBackend (rust-vmm's vhost-user-backend).
export { DEFAULT_MAX_QUEUE_SIZE, defaultProtocolFeatures, type VhostUserBackend } from './backend.js';
export { QueueServer, serveQueue, PENDING, type ChainHandler, type CompletionCallback, type QueueServerOptions, type ServingOptions, DEFAULT_BATCH, DEFAULT_TURN_BUDGET } from './queue-server.js';
export { Vring } from './vring.js';
export { VringEventHandler } from './event-handler.js';
export { VhostUserHandler, DAEMON_PROTOCOL_FEATURES } from './handler.js';
export { MAX_MEM_SLOTS } from './memory-table.js';
export { VhostUserDaemon, DEFAULT_HANDSHAKE_TIMEOUT_MS, MAX_WAITING_FRONTENDS, type VhostUserDaemonOptions } from './daemon.js';
export { QueueStats, statsFields, type QueueStatsSnapshot } from './stats.js';
export { WorkerVringGroup, type VringSyncExtra } from './worker-group.js';
export type { VringWorker, VringWorkerModule, CreateVringWorker } from './worker-protocol.js';
export { RxQueue, type RxQueueOptions } from './rx-queue.js';
