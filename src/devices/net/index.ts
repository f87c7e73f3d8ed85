/**
 * virtio-net over vhost-user (`vhost-user/devices/net`): {@link VhostUserNetBackend}, served by the
 * root package's `VhostUserDaemon`, connected to the outside by a link: {@link LoopbackLink},
 * {@link TapWire} (a {@link TapPort}) or {@link NetSwitch} (several devices, optional TAP uplink).
 * @module
 */
export { VhostUserNetBackend, DEFAULT_MAC, type VhostUserNetBackendOptions } from './backend.js';
export { NetFrame, Delivery, type FrameEndpoint, type FrameSource, type NetLink } from './frame.js';
export { LoopbackLink, TapWire, NetSwitch, MAX_MAC_ENTRIES, type NetSwitchOptions } from './links.js';
export { TapPort, TAP_READ_BUDGET, type TapPortOptions, type GuestOffloads } from './tap-port.js';
export { PacketCounters, DropCounters, type DropReason } from './counters.js';
export { RxFilter, MAX_MAC_TABLE_ENTRIES } from './ctrl.js';
export { NetRxQueue, RX_BACKLOG_FRAMES, RX_BACKLOG_BYTES, type RxFeatures } from './rx.js';
export * from './header.js';
