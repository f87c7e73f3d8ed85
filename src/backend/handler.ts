/**
 * Serves vhost-user requests for a {@link VhostUserBackend}: feature negotiation, guest memory,
 * vring configuration and ring states. The counterpart of rust-vmm's `VhostUserHandler`.
 * @module
 */
import * as sys from '../sys/index.js';
import { GuestMemoryError, mapDirtyLog, u64ToNumber, type GuestMemoryAtomic } from '../memory/index.js';
import type { BackendReqHandler } from '../vhost-user/backend-handler.js';
import type { BackendChannel } from '../vhost-user/backend-channel.js';
import {
  DeviceStateDirection,
  type DeviceStatePhase,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_VRING_F_LOG,
  decodeProtocolFeatures,
  decodeSplitVringBase,
  protocolFeatureMask,
} from '../vhost-user/constants.js';
import { VHOST_F_LOG_ALL, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, decodeFeatures } from '../virtio/features.js';
import type { AnyMemoryRegion, CryptoSession, Inflight, Log, MemoryRegionWithFd, ShmemConfig, VringAddr } from '../vhost-user/messages.js';
import { VhostUserError } from '../vhost-user/errors.js';
import { descTableSize, availRingSize, usedRingSize } from '../queue/constants.js';
import { SplitQueue } from '../queue/split-queue.js';
import { PackedQueue } from '../queue/packed-queue.js';
import { DEFAULT_MAX_QUEUE_SIZE, defaultProtocolFeatures, type VhostUserBackend } from './backend.js';
import { Vring } from './vring.js';
import type { QueueStatsSnapshot } from './stats.js';
import { VringEventHandler } from './event-handler.js';
import { WorkerVringGroup, type VringSyncExtra } from './worker-group.js';
import type { Logger } from '../log.js';
import { InflightTracking } from './inflight-tracking.js';
import { DirtyLogging } from './dirty-logging.js';
import { Postcopy } from './postcopy.js';
import { DeviceStateTransfer } from './device-state.js';
import { MAX_MEM_SLOTS, MemoryTable } from './memory-table.js';


/**
 * Protocol features the daemon itself implements; the device's offer is intersected with these.
 * (INBAND_NOTIFICATIONS is left out: in-band calls through the back-end channel are not sent yet.)
 */
export const DAEMON_PROTOCOL_FEATURES: bigint = [
  ProtocolFeature.MQ,
  ProtocolFeature.LOG_SHMFD,
  ProtocolFeature.PAGEFAULT,
  ProtocolFeature.DEVICE_STATE,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.BACKEND_SEND_FD,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
  // Served through the device's optional hooks (getSharedObject, getShmemConfig, sendRarp, setMtu,
  // create/closeCryptoSession); a device offers them in protocolFeatures() only with the hook.
  ProtocolFeature.SHARED_OBJECT,
  ProtocolFeature.SHMEM,
  ProtocolFeature.RARP,
  ProtocolFeature.MTU,
  ProtocolFeature.CRYPTO_SESSION,
  // Framework-served for every device whose rings the daemon's own thread serves (see getProtocolFeatures).
  ProtocolFeature.INFLIGHT_SHMFD,
  ProtocolFeature.GET_VRING_BASE_INFLIGHT,
].reduce((m, f) => m | protocolFeatureMask(f), 0n);

const bit = (n: number): bigint => 1n << BigInt(n);

/** The per-connection protocol state of a daemon. */
export class VhostUserHandler implements BackendReqHandler {
  /** One vring per queue of the backend, indexed by queue index; the handler owns their fds. */
  readonly vrings: Vring[];
  private readonly table: MemoryTable;
  private readonly memory: GuestMemoryAtomic;
  private handlers: VringEventHandler[] = [];
  /** Per thread: the worker serving its vrings, or null when the thread's handler serves them. */
  private readonly workers: (WorkerVringGroup | null)[];
  /** Called when a vring worker dies on its own: the daemon ends the connection. */
  onWorkerFailure: ((e: Error) => void) | null = null;
  private readonly threadOf: number[];
  private acked = 0n;
  private protocolNegotiated = false;
  private protocolFeatures = 0n;
  /** The inflight area (GET/SET_INFLIGHT_FD) and the rings recording into it. */
  private readonly inflight: InflightTracking;
  private status = 0;
  /** Dirty-page logging (live migration): the log, its eventfd, VHOST_F_LOG_ALL. */
  private readonly logging = new DirtyLogging();
  /** Postcopy migration (PAGEFAULT): the userfaultfd and the registered regions. */
  private readonly postcopy = new Postcopy();
  /** Device-state transfer (DEVICE_STATE) through the device's saveState/loadState hooks. */
  private readonly deviceState: DeviceStateTransfer;

  constructor(private readonly backend: VhostUserBackend, private readonly logger: Logger) {
    this.deviceState = new DeviceStateTransfer(backend);
    this.table = new MemoryTable(logger);
    this.memory = this.table.memory;
    const n = backend.numQueues();
    const maxSize = backend.maxQueueSize?.() ?? DEFAULT_MAX_QUEUE_SIZE;
    this.vrings = Array.from({ length: n }, (_, i) => new Vring(i, maxSize));
    this.inflight = new InflightTracking(this.vrings, logger, (v) => this.workers[this.threadOf[v.index]!] === null);
    const masks = backend.queuesPerThread?.() ?? [n >= 32 ? Number.MAX_SAFE_INTEGER : (1 << n) - 1];
    this.threadOf = new Array<number>(n).fill(-1);
    masks.forEach((mask, t) => {
      for (let q = 0; q < n; q++) {
        if (Math.floor(mask / 2 ** q) % 2 === 1) {
          if (this.threadOf[q] !== -1) throw new Error(`queue ${q} is assigned to two threads`);
          this.threadOf[q] = t;
        }
      }
    });
    const unassigned = this.threadOf.indexOf(-1);
    if (unassigned >= 0) throw new Error(`queue ${unassigned} is not assigned to any thread`);
    this.handlers = this.makeHandlers(masks.length);
    this.workers = this.handlers.map((h, t) => {
      const m = backend.workerModule?.(t) ?? null;
      if (m === null) return null;
      return new WorkerVringGroup(t, h.vrings, m, n, maxSize, logger, (e) => this.onWorkerFailure?.(e));
    });
  }

  /** The per-thread event handlers (rust-vmm's `get_epoll_handlers`). */
  get eventHandlers(): readonly VringEventHandler[] {
    return this.handlers;
  }

  private makeHandlers(count: number): VringEventHandler[] {
    return Array.from({ length: count }, (_, t) =>
      new VringEventHandler(t, this.vrings.filter((v) => this.threadOf[v.index] === t), this.backend, this.logger));
  }

  private vring(index: number): Vring {
    const v = this.vrings[index];
    if (v === undefined) throw new RangeError(`vring index ${index} out of range (device has ${this.vrings.length} queues)`);
    return v;
  }

  private handlerOf(v: Vring): VringEventHandler | WorkerVringGroup {
    const t = this.threadOf[v.index]!;
    return this.workers[t] ?? this.handlers[t]!;
  }

  /** Mirrors `v` to its worker, if a worker serves it. */
  private sync(v: Vring, extra?: VringSyncExtra): void {
    const h = this.handlerOf(v);
    if (h instanceof WorkerVringGroup) h.sync(v, extra);
  }

  /**
   * With workers: resolves once every worker applied what was mirrored so far, so a reply (which
   * the front-end may act on, e.g. by relying on the dirty log) follows the workers' state change.
   * Without workers: undefined, keeping those requests synchronous.
   */
  private workersSynced(): Promise<void> | undefined {
    const ws = this.workers.filter((w): w is WorkerVringGroup => w !== null);
    return ws.length === 0 ? undefined : Promise.all(ws.map((w) => w.flush())).then(() => undefined);
  }

  // --- features ------------------------------------------------------------------------------

  setOwner(): void {
    // One connection is one session: ownership needs no state beyond the connection itself.
  }

  async resetOwner(): Promise<void> {
    await this.reset();
  }

  getFeatures(): bigint {
    return this.backend.features();
  }

  setFeatures(features: bigint): void | Promise<void> {
    const offered = this.backend.features();
    if ((features & ~offered) !== 0n) {
      throw new VhostUserError('invalid-argument', '', `front-end acked features 0x${(features & ~offered).toString(16)} that were not offered`);
    }
    const packed = (features & bit(VIRTIO_F_RING_PACKED)) !== 0n;
    if (packed && this.workers.some((w) => w !== null)) {
      throw new VhostUserError('not-supported', '', 'VIRTIO_F_RING_PACKED: packed rings are not served by worker threads yet');
    }
    this.acked = features;
    for (const v of this.vrings) v.setRingFormat(packed);
    this.logger.log('info', `features negotiated: ${featureNames(features, this.backend.deviceType?.()).join(' ')}`, { features: `0x${features.toString(16)}` });
    const eventIdx = (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    for (const v of this.vrings) v.queue.eventIdx = eventIdx;
    this.backend.setEventIdx?.(eventIdx);
    for (const w of this.workers) w?.setFeatures(features, eventIdx);
    this.backend.ackedFeatures?.(features);
    if (this.logging.setEnabled((features & bit(VHOST_F_LOG_ALL)) !== 0n)) {
      this.logger.log('info', `dirty logging ${this.logging.active === null ? 'stopped' : 'started'}`);
      void this.setLogActive();
    }
    // Without protocol features there is no SET_VRING_ENABLE: rings are enabled from the start.
    if ((features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) === 0n) {
      for (const v of this.vrings) this.enable(v, true);
    } else {
      for (const v of this.vrings) this.sync(v);
    }
    return this.workersSynced();
  }

  getProtocolFeatures(): bigint {
    const served = DAEMON_PROTOCOL_FEATURES & (this.deviceState.supported ? ~0n : ~protocolFeatureMask(ProtocolFeature.DEVICE_STATE));
    // Inflight tracking lives in the queue layer, so every device gets it without asking; rings
    // served by worker threads are not tracked (yet), so those devices do not offer it.
    const inflight = this.workers.every((w) => w === null)
      ? protocolFeatureMask(ProtocolFeature.INFLIGHT_SHMFD) | protocolFeatureMask(ProtocolFeature.GET_VRING_BASE_INFLIGHT)
      : 0n;
    return ((this.backend.protocolFeatures?.() ?? defaultProtocolFeatures(this.backend)) | inflight) & served;
  }

  setProtocolFeatures(features: bigint): void {
    const offered = this.getProtocolFeatures();
    if ((features & ~offered) !== 0n) {
      throw new VhostUserError('invalid-argument', '', `front-end set protocol features 0x${(features & ~offered).toString(16)} that were not offered`);
    }
    this.protocolNegotiated = true;
    this.protocolFeatures = features;
    this.logger.log('info', `protocol features negotiated: ${decodeProtocolFeatures(features).join(' ') || 'none'}`, { protocolFeatures: `0x${features.toString(16)}` });
  }

  getQueueNum(): bigint {
    return BigInt(this.vrings.length);
  }

  getMaxMemSlots(): bigint {
    return BigInt(MAX_MEM_SLOTS);
  }

  // --- memory --------------------------------------------------------------------------------

  setMemTable(regions: readonly MemoryRegionWithFd[]): void | bigint[] | Promise<void | bigint[]> {
    const mapped = this.table.set(regions, this);
    const changed = this.memoryChanged();
    if (!this.postcopy.listening) return changed;
    // Postcopy: answer with our mapping addresses once the rings follow the new table.
    const bases = this.postcopy.bases(mapped);
    return changed instanceof Promise ? changed.then(() => bases) : bases;
  }

  addMemReg(region: MemoryRegionWithFd): void | bigint | Promise<void | bigint> {
    const { region: r, repeat } = this.table.add(region, this);
    // Postcopy: every ADD_MEM_REG is answered with our address, a repeat too.
    if (repeat) return this.postcopy.listening ? this.postcopy.bases([r])[0] : undefined;
    const changed = this.memoryChanged();
    if (!this.postcopy.listening) return changed;
    const base = this.postcopy.bases([r])[0] as bigint;
    return changed instanceof Promise ? changed.then(() => base) : base;
  }

  remMemReg(region: AnyMemoryRegion): void | Promise<void> {
    return this.table.remove(region) ? this.memoryChanged() : undefined;
  }

  setLogBase(log: Log, fd: number): void | Promise<void> {
    this.logging.setBase(mapDirtyLog(fd, log.mmapSize, log.mmapOffset, this), this.memory.memory);
    return this.memory.memory.dirtyLog === this.logging.active ? undefined : this.setLogActive();
  }

  /** Hands the active log (or none) to the guest memory and every vring. */
  private setLogActive(): void | Promise<void> {
    this.memory.setDirtyLog(this.logging.active);
    return this.memoryChanged();
  }

  postcopyAdvise(): number {
    const fd = this.postcopy.advise();
    this.logger.log('info', 'postcopy: advised, userfaultfd handed to the front-end');
    return fd;
  }

  postcopyListen(): void {
    this.postcopy.listen();
    this.logger.log('info', 'postcopy: listening (memory tables are answered with our mapping addresses)');
  }

  postcopyAck(): void {
    this.postcopy.acknowledged(this.memory.memory.regions);
    this.logger.log('info', `postcopy: ${this.postcopy.registeredCount} region(s) registered with the userfaultfd`);
  }

  postcopyEnd(): bigint {
    this.postcopy.end();
    this.logger.log('info', 'postcopy: ended');
    return 0n;
  }

  setDeviceStateFd(direction: DeviceStateDirection, phase: DeviceStatePhase, fd: number): null {
    this.deviceState.start(direction, phase, fd);
    this.logger.log('info', `device state: ${direction === DeviceStateDirection.SAVE ? 'saving to' : 'loading from'} the front-end's pipe`);
    return null;
  }

  async checkDeviceState(): Promise<void> {
    await this.deviceState.check();
    this.logger.log('info', 'device state: transfer checked');
  }

  setLogFd(fd: number): void {
    this.logging.setFd(fd);
  }

  /** Re-points every vring at the new snapshot; the old one is unmapped once nothing pins it. */
  private memoryChanged(): void | Promise<void> {
    for (const v of this.vrings) {
      try {
        this.translateRing(v);
        v.setMemory(this.memory);
      } catch (e) {
        this.logger.log('warn', `vring ${v.index}: rings not usable with the new memory table: ${(e as Error).message}`);
      }
    }
    this.backend.updateMemory?.(this.memory);
    for (const w of this.workers) w?.updateMemory(this.memory);
    for (const v of this.vrings) this.sync(v);
    return this.workersSynced();
  }

  /** Translates the ring's front-end user addresses with the current table (no-op before SET_VRING_ADDR). */
  private translateRing(v: Vring): void {
    const a = v.ringUserAddrs;
    if (a === null) return;
    const mem = this.memory.memory;
    const n = v.queue.size;
    // Packed rings: the descriptor ring, then the 4-byte driver and device event suppression areas.
    v.queue.setAddresses(
      mem.uvaToGpaU64(a.desc, descTableSize(n)),
      mem.uvaToGpaU64(a.avail, v.packed ? 4 : availRingSize(n)),
      mem.uvaToGpaU64(a.used, v.packed ? 4 : usedRingSize(n)),
    );
    v.queue.setUsedLog(a.log === null ? null : u64ToNumber(a.log, 'log address'));
  }

  // --- vrings --------------------------------------------------------------------------------

  setVringNum(index: number, num: number): void | Promise<void> {
    const v = this.vring(index);
    v.queue.setSize(num);
    this.sync(v);
    return this.workersSynced();
  }

  setVringAddr(addr: VringAddr): void | Promise<void> {
    const v = this.vring(addr.index);
    const logging = (addr.flags & (1 << VHOST_VRING_F_LOG)) !== 0;
    if (logging && (this.acked & bit(VHOST_F_LOG_ALL)) === 0n) {
      this.logger.log('warn', `vring ${addr.index}: VHOST_VRING_F_LOG set without VHOST_F_LOG_ALL negotiated`);
    }
    if (logging) this.logging.checkUsedLog(addr.index, u64ToNumber(addr.logGuestAddr, 'log address'), v.packed ? descTableSize(v.queue.size) : usedRingSize(v.queue.size));
    v.ringUserAddrs = { desc: addr.descUserAddr, avail: addr.availUserAddr, used: addr.usedUserAddr, log: logging ? addr.logGuestAddr : null };
    try {
      this.translateRing(v);
    } catch (e) {
      // The usual cause in practice: QEMU's guest RAM is not shared with us, so the rings live in
      // memory the front-end never sent.
      if (e instanceof GuestMemoryError && e.kind === 'out-of-range') {
        throw new VhostUserError('invalid-argument', '', `${e.message} (the rings are not in the memory the front-end shared: ` +
          'QEMU needs guest RAM from a shared memory backend, e.g. -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem)');
      }
      throw e;
    }
    v.setMemory(this.memory);
    // Like libvhost-user: the used index the driver last saw is the device's starting point, which
    // keeps a reconnecting back-end consistent with completions it made before.
    if (v.queue instanceof SplitQueue) v.queue.syncNextUsedFromRing();
    this.sync(v, { syncUsed: true });
    return this.workersSynced();
  }

  setVringBase(index: number, base: number): void | Promise<void> {
    const pv = this.vring(index);
    if (pv.queue instanceof PackedQueue) {
      // The packed encoding: last avail index and wrap counter, last used index and wrap counter.
      pv.queue.setVringBase(base);
      return this.workersSynced();
    }
    const b = decodeSplitVringBase(base);
    if (b === null) throw new RangeError(`vring base 0x${base.toString(16)} has reserved bits set (split ring)`);
    const v = this.vring(index);
    v.queue.setVringBase(b);
    this.sync(v, { state: v.queue.getState() });
    return this.workersSynced();
  }

  async getVringBase(index: number): Promise<number> {
    const v = this.vring(index);
    // Stop the ring first, then let in-flight requests finish, so the returned index is final and
    // the device writes nothing to guest memory once the front-end has it.
    const h = this.handlerOf(v);
    h.unwatchKick(v);
    v.setStarted(false);
    if (this.suspendsInflight(v) && h instanceof VringEventHandler) {
      // GET_VRING_BASE_INFLIGHT: no draining; requests in flight stay recorded in the region for
      // the next back-end, and their completions here no longer touch the ring.
      await h.suspendRing(v);
    } else {
      // Only THIS ring's requests are waited for: other rings may stay busy indefinitely.
      if (h instanceof VringEventHandler) await h.quiesceRing(v);
      if (typeof this.backend.processChain !== 'function') await this.backend.quiesce?.();
    }
    v.queue.stopInflight();
    // A worker's ring position is the worker's: it answers once it stopped the ring.
    const base = h instanceof WorkerVringGroup ? await h.stopRing(v) : v.queue.vringBase;
    // A stopped ring starts afresh: a broken one (NEEDS_RESET) is served again once restarted.
    v.queue.broken = false;
    v.setKickFd(null);
    v.setCallFd(null);
    this.sync(v);
    return base;
  }

  setVringKick(index: number, fd: number | null): void | Promise<void> {
    const v = this.vring(index);
    if (fd === null) {
      throw new Error(`vring ${index}: polling mode (no kick fd) is not supported; use in-band kicks or an eventfd`);
    }
    const h = this.handlerOf(v);
    h.unwatchKick(v);
    if (!v.started) this.inflight.start(v);
    v.setKickFd(sys.dup(fd));
    // The spec starts a ring on its first kick; rust-vmm and libvhost-user start it here, and a
    // kick may already be pending from before a reconnect, so process once now.
    v.setStarted(true);
    h.watchKick(v);
    this.logger.log('info', `queue ${index} started: size ${v.queue.size}, event idx ${v.queue.eventIdx ? 'on' : 'off'}`, { queue: index });
    setImmediate(() => h.kick(v));
    return this.workersSynced();
  }

  setVringCall(index: number, fd: number | null): void | Promise<void> {
    const v = this.vring(index);
    v.setCallFd(fd === null ? null : sys.dup(fd));
    // After a reconnect the previous back-end may have died between publishing used entries and
    // signalling them: one spurious interrupt makes the driver look (as libvhost-user does).
    if (fd !== null && this.inflight.active) v.signalUsedQueue();
    this.sync(v);
    return this.workersSynced();
  }

  setVringErr(index: number, fd: number | null): void | Promise<void> {
    const v = this.vring(index);
    v.setErrFd(fd === null ? null : sys.dup(fd));
    this.sync(v);
    return this.workersSynced();
  }

  setVringEnable(index: number, enable: boolean): void | Promise<void> {
    // QEMU sends this before SET_FEATURES once protocol features were negotiated, so either counts.
    if (!this.protocolNegotiated && (this.acked & bit(VHOST_USER_F_PROTOCOL_FEATURES)) === 0n) {
      throw new Error('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated');
    }
    this.enable(this.vring(index), enable);
    return this.workersSynced();
  }

  private enable(v: Vring, on: boolean): void {
    const was = v.enabled;
    v.setEnabled(on);
    this.sync(v);
    if (on && !was && v.started) {
      const h = this.handlerOf(v);
      setImmediate(() => h.kick(v));
    }
  }

  vringKick(index: number): void {
    const v = this.vring(index);
    this.handlerOf(v).kick(v);
  }

  /** Counters of every queue since this front-end connected, with requests in flight. */
  stats(): QueueStatsSnapshot[] {
    return this.vrings.map((v) => {
      const h = this.handlerOf(v);
      const inFlight = h instanceof VringEventHandler ? h.queueServer(v.index)?.inFlight ?? 0 : 0;
      const st = v.stats;
      return {
        queue: v.index, requests: st.requests, bytesIn: st.bytesIn, bytesOut: st.bytesOut, errors: st.errors,
        kicks: st.kicks, interrupts: st.interrupts, broken: st.broken, inFlight,
      };
    });
  }

  // --- inflight I/O tracking ---------------------------------------------------------------

  /** GET_INFLIGHT_FD: a new area for the requested queues (it replaces any earlier one). */
  getInflightFd(request: Inflight): ReturnType<InflightTracking['allocate']> {
    return this.inflight.allocate(request);
  }

  /** SET_INFLIGHT_FD: adopts the front-end's area (after a reconnect, with the earlier back-end's records). */
  setInflightFd(inflight: Inflight, fd: number): void {
    this.inflight.adopt(inflight, fd, this);
  }

  private suspendsInflight(v: Vring): boolean {
    return this.inflight.covers(v) && (this.protocolFeatures & protocolFeatureMask(ProtocolFeature.GET_VRING_BASE_INFLIGHT)) !== 0n;
  }

  // --- device --------------------------------------------------------------------------------

  getConfig(offset: number, size: number): Uint8Array {
    if (!this.backend.getConfig) throw new VhostUserError('not-supported', '', 'device has no config space');
    return this.backend.getConfig(offset, size);
  }

  setConfig(offset: number, data: Uint8Array): void {
    if (!this.backend.setConfig) throw new VhostUserError('not-supported', '', 'device config space is read-only');
    this.backend.setConfig(offset, data);
  }

  setBackendReqFd(channel: BackendChannel): void {
    if (!this.backend.setBackendReqFd) throw new VhostUserError('not-supported', '', 'device does not use the back-end channel');
    this.backend.setBackendReqFd(channel);
  }

  setStatus(status: number): void {
    // Not a device reset: QEMU writes 0 when it merely stops the device (VM stop, migration), just
    // before GET_VRING_BASE, whose answer must still be the real ring position. Resets come as
    // RESET_DEVICE, RESET_OWNER or a disconnect.
    this.status = status;
  }

  getStatus(): number {
    return this.status;
  }

  resetDevice(): Promise<void> {
    return this.reset();
  }

  getShmemConfig(): ShmemConfig | Promise<ShmemConfig> {
    if (!this.backend.getShmemConfig) throw new VhostUserError('not-supported', '', 'device has no shared memory regions');
    return this.backend.getShmemConfig();
  }

  getSharedObject(uuid: Uint8Array): number | Promise<number> {
    if (!this.backend.getSharedObject) throw new VhostUserError('not-supported', '', 'device exports no shared objects');
    return this.backend.getSharedObject(uuid);
  }

  sendRarp(mac: Uint8Array): void | Promise<void> {
    if (!this.backend.sendRarp) throw new VhostUserError('not-supported', '', 'device is not a network device');
    return this.backend.sendRarp(mac);
  }

  netSetMtu(mtu: number): void | Promise<void> {
    if (!this.backend.setMtu) throw new VhostUserError('not-supported', '', 'device has no MTU');
    return this.backend.setMtu(mtu);
  }

  async createCryptoSession(session: CryptoSession): Promise<CryptoSession> {
    if (!this.backend.createCryptoSession) throw new VhostUserError('not-supported', '', 'device is not a crypto device');
    const id = await this.backend.createCryptoSession(session);
    if (id < 0n) throw new VhostUserError('device-error', '', `device returned session id ${id}`);
    return { ...session, sessionId: id };
  }

  closeCryptoSession(sessionId: bigint): void | Promise<void> {
    if (!this.backend.closeCryptoSession) throw new VhostUserError('not-supported', '', 'device is not a crypto device');
    return this.backend.closeCryptoSession(sessionId);
  }

  gpuSetSocket(fd: number): void | Promise<void> {
    if (!this.backend.setGpuSocket) throw new VhostUserError('not-supported', '', 'device is not a GPU');
    return this.backend.setGpuSocket(fd);
  }

  /** Stops every ring, waits for in-flight I/O, and returns the device to its initial state. */
  async reset(): Promise<void> {
    for (const v of this.vrings) {
      this.handlerOf(v).unwatchKick(v);
      v.setStarted(false);
    }
    await Promise.all(this.handlers.map((h) => h.resetRings()));
    await this.backend.quiesce?.();
    for (const w of this.workers) await w?.resetRings();
    for (const v of this.vrings) {
      v.reset();
      this.sync(v);
    }
    await this.workersSynced();
    this.acked = 0n;
    // What the area recorded belongs to rings that no longer exist.
    this.inflight.close();
    if (this.logging.setEnabled(false)) await this.setLogActive();
    await this.backend.resetDevice?.();
  }

  /** Ends the session: resets the device, stops handlers and releases guest memory. */
  async close(): Promise<void> {
    try {
      await this.reset();
    } finally {
      for (const h of this.handlers) h.stop();
      // Workers first: the memory they map must outlive them.
      for (const w of this.workers) await w?.stop();
      // A reset that failed part-way (a stuck worker) must still release the rings' fds.
      for (const v of this.vrings) v.reset();
      this.inflight.close();
      this.table.close();
      this.logging.close();
      this.postcopy.close();
      this.deviceState.close();
    }
  }
}

/** Feature names, device-specific ones too when the device type is known to the tables. */
function featureNames(features: bigint, deviceType: string | undefined): string[] {
  try {
    return decodeFeatures(features, deviceType);
  } catch {
    return decodeFeatures(features);
  }
}
