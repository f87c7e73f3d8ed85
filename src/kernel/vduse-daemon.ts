/**
 * Serves a {@link VhostUserBackend} device as a vDPA device through VDUSE (/dev/vduse/$NAME): the
 * same device code that serves vhost-user, here reached by the kernel's vhost_vdpa (a VMM drives
 * /dev/vhost-vdpa-N) or virtio_vdpa (a local /dev/vdX). The kernel talks to us with requests on
 * the device fd (status, IOTLB changes, virtqueue state), each of which it waits for; the data
 * path is the framework's {@link QueueServer} loop over rings reached through the IOTLB.
 *
 * Creating the device does not put it on the vdpa bus: that is done with the vdpa netlink API
 * ({@link VdpaNetlink.addDevice}) from another thread or process, since adding a device makes
 * the bound driver set the status at once, and the kernel waits for this daemon to answer.
 *
 * @module
 */
import { closeSync, constants as fsConstants, openSync, readSync, writeSync } from 'node:fs';
import * as sys from '../sys/index.js';
import { DEFAULT_MAX_QUEUE_SIZE, type VhostUserBackend } from '../backend/backend.js';
import { Vring } from '../backend/vring.js';
import { VringEventHandler } from '../backend/event-handler.js';
import { GuestMemoryAtomic, MAX_ADDRESS } from '../memory/index.js';
import { SplitQueue } from '../queue/index.js';
import { defaultLogger, type Logger } from '../log.js';
import {
  VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
} from '../virtio/features.js';
import { VIRTIO_ID_BLOCK, VIRTIO_ID_NET } from '../virtio/ids.js';
import * as v from './vduse.js';
import { IotlbCache, IotlbMemory, vduseIotlbSource } from './vduse-iotlb.js';

/** virtio status bit: the driver is ready, rings are live. */
const VIRTIO_CONFIG_S_DRIVER_OK = 4;
/** VIRTIO_BLK_F_CONFIG_WCE: VDUSE config spaces are read-only, so the kernel refuses it. */
const VIRTIO_BLK_F_CONFIG_WCE = 11;
const bit = (n: number): bigint => 1n << BigInt(n);

/** Virtio device ids by {@link VhostUserBackend.deviceType} name (VDUSE accepts blk and net). */
const DEVICE_IDS: Readonly<Record<string, number>> = { blk: VIRTIO_ID_BLOCK, net: VIRTIO_ID_NET };
/** Config-space sizes used when the options give none. */
const CONFIG_SIZES: Readonly<Record<string, number>> = { blk: 96, net: 12 };

/** Options of {@link VduseDaemon.create}. */
export interface VduseDaemonOptions {
  /** Device name: /dev/vduse/$name, and the vdpa device name (1-255 bytes). */
  readonly name: string;
  /** Virtio device id (default from the device's `deviceType()`: blk 2, net 1). */
  readonly deviceId?: number;
  /** Bytes of config space read from `getConfig` at creation (default: blk 96, net 12). */
  readonly configSize?: number;
  /** Virtqueue alignment the driver must use (default 4096). */
  readonly vqAlign?: number;
  /** Where requests, errors and state changes are logged. */
  readonly logger?: Logger;
  /** The VDUSE control device (default /dev/vduse/control). */
  readonly controlPath?: string;
  /** Directory of VDUSE device nodes (default /dev/vduse). */
  readonly deviceDir?: string;
}

/** A vring whose interrupts are injected by VDUSE_VQ_INJECT_IRQ instead of an eventfd write. */
class VduseVring extends Vring {
  private readonly irqArg = new Uint8Array(4);
  constructor(index: number, maxQueueSize: number, private readonly devFd: () => number, private readonly logger: Logger) {
    super(index, maxQueueSize);
    new DataView(this.irqArg.buffer).setUint32(0, index, true);
  }
  override signalUsedQueue(): void {
    this.inject();
  }
  override signalUsedIfNeeded(): void {
    if (this.queue.needsNotification()) this.inject();
  }
  override signalError(): void {
    this.logger.log('error', `vduse vq ${this.index}: ring broken; the driver must reset the device`);
  }
  private inject(): void {
    const fd = this.devFd();
    if (fd < 0) return;
    try {
      sys.ioctl(fd, v.VDUSE_VQ_INJECT_IRQ, this.irqArg);
      this.stats.interrupts++;
    } catch (e) {
      this.logger.log('warn', `vduse vq ${this.index}: VDUSE_VQ_INJECT_IRQ failed: ${(e as Error).message}`);
    }
  }
}

/** The features offered through VDUSE: the device's virtio bits, without vhost-user-only ones. */
export function vduseFeatures(deviceFeatures: bigint, deviceId: number): bigint {
  let f = deviceFeatures & ~(bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VHOST_F_LOG_ALL) | bit(VIRTIO_F_RING_PACKED));
  if (deviceId === VIRTIO_ID_BLOCK) f &= ~bit(VIRTIO_BLK_F_CONFIG_WCE);
  // VDUSE requires ACCESS_PLATFORM: the driver's buffers are reached through the IOTLB.
  return f | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM);
}

function errnoName(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * One VDUSE device serving a {@link VhostUserBackend}. Created with {@link VduseDaemon.create};
 * {@link close} stops it and destroys the device (after it was removed from the vdpa bus).
 */
export class VduseDaemon {
  /** The device name. */
  readonly name: string;
  /** Features offered to the driver. */
  readonly features: bigint;
  private devFd: number;
  private readonly vrings: VduseVring[];
  private readonly handler: VringEventHandler;
  private readonly cache: IotlbCache;
  private readonly memory: GuestMemoryAtomic;
  private readonly logger: Logger;
  private readonly reqBuf = new Uint8Array(v.VDUSE_MSG_SIZE);
  private readonly respBuf = new Uint8Array(v.VDUSE_MSG_SIZE);
  private readonly infoBuf = new Uint8Array(v.VDUSE_VQ_INFO_SIZE);
  private readonly efdBuf = new Uint8Array(v.VDUSE_VQ_EVENTFD_SIZE);
  private watcher: sys.FdWatcher | null = null;
  /** A request is being handled asynchronously: the next one waits (the kernel sends one at a time). */
  private busy = false;
  private deviceStatus = 0;
  private running = false;
  private closed: Promise<void> | null = null;
  /** Requests answered, by type (for logs and tests). */
  readonly requestCounts = new Map<number, number>();

  private constructor(
    private readonly backend: VhostUserBackend,
    private readonly opts: VduseDaemonOptions,
    devFd: number,
    features: bigint,
    maxQueueSize: number,
  ) {
    this.name = opts.name;
    this.features = features;
    this.devFd = devFd;
    this.logger = opts.logger ?? defaultLogger;
    this.vrings = Array.from({ length: backend.numQueues() }, (_, i) => new VduseVring(i, maxQueueSize, () => this.devFd, this.logger));
    this.handler = new VringEventHandler(0, this.vrings, backend, this.logger);
    this.cache = new IotlbCache(vduseIotlbSource(devFd), this.logger);
    this.memory = new GuestMemoryAtomic(new IotlbMemory(this.cache));
  }

  /**
   * Creates /dev/vduse/$name for `backend` (config space from its `getConfig`, its features, one
   * virtqueue per `numQueues()` of `maxQueueSize()` entries) and starts answering the kernel.
   * Throws SysError naming the ioctl (EEXIST for a taken name, EINVAL for a config VDUSE refuses).
   */
  static create(backend: VhostUserBackend, opts: VduseDaemonOptions): VduseDaemon {
    const logger = opts.logger ?? defaultLogger;
    const type = backend.deviceType?.() ?? '';
    const deviceId = opts.deviceId ?? DEVICE_IDS[type];
    if (deviceId === undefined) throw new RangeError(`VDUSE: device type '${type}' has no known virtio id; pass deviceId`);
    const configSize = opts.configSize ?? CONFIG_SIZES[type] ?? 0;
    const config = configSize > 0 ? backend.getConfig?.(0, configSize) ?? new Uint8Array(configSize) : new Uint8Array(0);
    const maxQueueSize = backend.maxQueueSize?.() ?? DEFAULT_MAX_QUEUE_SIZE;
    const numQueues = backend.numQueues();
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 0xffff) throw new RangeError(`VDUSE: ${numQueues} queues`);
    if (maxQueueSize > 0xffff) throw new RangeError(`VDUSE: queue size ${maxQueueSize} does not fit u16`);
    const features = vduseFeatures(backend.features(), deviceId);
    const dir = opts.deviceDir ?? '/dev/vduse';
    const ctl = openSync(opts.controlPath ?? `${dir}/control`, fsConstants.O_RDWR);
    let devFd = -1;
    try {
      vduseIoctl(ctl, v.VDUSE_SET_API_VERSION, new Uint8Array(8), 'VDUSE_SET_API_VERSION');
      vduseIoctl(ctl, v.VDUSE_CREATE_DEV, v.encodeDevConfig({
        name: opts.name, vendorId: 0, deviceId, features, vqNum: numQueues, vqAlign: opts.vqAlign ?? 4096, config,
      }), 'VDUSE_CREATE_DEV');
      try {
        devFd = openSync(`${dir}/${opts.name}`, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
        for (let i = 0; i < numQueues; i++) vduseIoctl(devFd, v.VDUSE_VQ_SETUP, v.encodeVqConfig(i, maxQueueSize), 'VDUSE_VQ_SETUP');
      } catch (e) {
        if (devFd >= 0) closeSync(devFd);
        destroyDevice(ctl, opts.name, logger);
        throw e;
      }
    } finally {
      closeSync(ctl);
    }
    const d = new VduseDaemon(backend, opts, devFd, features, maxQueueSize);
    d.watcher = sys.watchFd(devFd, sys.POLLIN, () => d.drain());
    logger.log('info', `vduse ${opts.name}: created (device id ${deviceId}, ${numQueues} queues of ${maxQueueSize}, features 0x${features.toString(16)})`);
    return d;
  }

  /** The virtio status the driver last set. */
  get status(): number {
    return this.deviceStatus;
  }

  /** Whether the rings are being served (DRIVER_OK seen, no reset since). */
  get serving(): boolean {
    return this.running;
  }

  /** The vrings (for stats). */
  get queues(): readonly Vring[] {
    return this.vrings;
  }

  /** Number of IOTLB mappings fetched and mapped so far. */
  get iotlbFetches(): number {
    return this.cache.fetched;
  }

  private drain(): void {
    if (this.busy || this.devFd < 0) return;
    for (;;) {
      let n: number;
      try {
        n = readSync(this.devFd, this.reqBuf);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
        this.logger.log('error', `vduse ${this.name}: reading requests: ${errnoName(e)}; no longer serving`);
        this.watcher?.close();
        this.watcher = null;
        return;
      }
      let req: v.VduseRequest;
      try {
        req = v.decodeRequest(this.reqBuf.subarray(0, n));
      } catch (e) {
        this.logger.log('warn', `vduse ${this.name}: ${errnoName(e)}; ignored`);
        continue;
      }
      this.requestCounts.set(req.type, (this.requestCounts.get(req.type) ?? 0) + 1);
      const r = this.handle(req);
      if (r instanceof Promise) {
        // The kernel waits for this answer before sending another request; read none meanwhile.
        this.busy = true;
        this.watcher?.stop();
        r.then((res) => this.respond(req, res.result, res.availIndex), (e: unknown) => {
          this.logger.log('error', `vduse ${this.name}: ${requestName(req.type)} failed: ${errnoName(e)}`);
          this.respond(req, v.VDUSE_REQ_RESULT_FAILED, 0);
        }).finally(() => {
          this.busy = false;
          if (this.devFd >= 0 && this.watcher !== null) {
            this.watcher.start(sys.POLLIN);
            this.drain();
          }
        });
        return;
      }
      this.respond(req, r.result, r.availIndex);
    }
  }

  private respond(req: v.VduseRequest, result: number, availIndex: number): void {
    if (this.devFd < 0) return;
    try {
      writeSync(this.devFd, v.encodeResponse(this.respBuf, req.requestId, result, availIndex));
    } catch (e) {
      this.logger.log('warn', `vduse ${this.name}: answering ${requestName(req.type)}: ${errnoName(e)}`);
    }
  }

  private handle(req: v.VduseRequest): Reply | Promise<Reply> {
    switch (req.type) {
      case v.VDUSE_GET_VQ_STATE: {
        const vr = this.vrings[req.vqIndex];
        if (vr === undefined) {
          this.logger.log('warn', `vduse ${this.name}: GET_VQ_STATE for queue ${req.vqIndex} of ${this.vrings.length}`);
          return { result: v.VDUSE_REQ_RESULT_FAILED, availIndex: 0 };
        }
        return { result: v.VDUSE_REQ_RESULT_OK, availIndex: vr.queue.vringBase };
      }
      case v.VDUSE_SET_STATUS:
        return this.setStatus(req.status);
      case v.VDUSE_UPDATE_IOTLB:
        return this.updateIotlb(req.start, req.last);
      default:
        this.logger.log('warn', `vduse ${this.name}: unknown request type ${req.type}; failed`);
        return { result: v.VDUSE_REQ_RESULT_FAILED, availIndex: 0 };
    }
  }

  private async setStatus(status: number): Promise<Reply> {
    const was = this.deviceStatus;
    this.deviceStatus = status;
    this.logger.log('debug', `vduse ${this.name}: status 0x${was.toString(16)} -> 0x${status.toString(16)}`);
    if (status === 0) {
      await this.resetRings();
    } else if ((status & VIRTIO_CONFIG_S_DRIVER_OK) !== 0 && !this.running) {
      this.start();
    }
    return OK;
  }

  /** DRIVER_OK: reads each queue's placement and starts serving the ready ones. */
  private start(): void {
    const acked = this.getU64(v.VDUSE_DEV_GET_FEATURES, 'VDUSE_DEV_GET_FEATURES');
    const eventIdx = (acked & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    this.backend.ackedFeatures?.(acked);
    this.backend.setEventIdx?.(eventIdx);
    this.backend.updateMemory?.(this.memory);
    this.running = true;
    for (const vr of this.vrings) {
      vr.queue.eventIdx = eventIdx;
      this.startQueue(vr);
    }
  }

  private startQueue(vr: VduseVring): void {
    const i = vr.index;
    try {
      vduseIoctl(this.devFd, v.VDUSE_VQ_GET_INFO, v.encodeVqInfoQuery(this.infoBuf, i), 'VDUSE_VQ_GET_INFO');
      const info = v.decodeVqInfo(this.infoBuf);
      if (!info.ready) return;
      const q = vr.queue;
      q.setSize(info.num);
      q.setAddresses(iova(info.descAddr, 'descriptor table'), iova(info.driverAddr, 'driver area'), iova(info.deviceAddr, 'device area'));
      vr.setMemory(this.memory);
      q.setVringBase(info.availIndex);
      // The used index the driver sees is where completions continue (e.g. after vhost-vdpa
      // restored a ring with SET_VRING_BASE).
      if (q instanceof SplitQueue && q.isValid()) q.syncNextUsedFromRing();
      const kick = sys.eventfd();
      try {
        vduseIoctl(this.devFd, v.VDUSE_VQ_SETUP_KICKFD, v.encodeVqEventfd(this.efdBuf, i, kick), 'VDUSE_VQ_SETUP_KICKFD');
      } catch (e) {
        sys.close(kick);
        throw e;
      }
      vr.setKickFd(kick);
      vr.setEnabled(true);
      vr.setStarted(true);
      this.handler.watchKick(vr);
      this.logger.log('info', `vduse ${this.name}: queue ${i} started: size ${info.num}, avail ${info.availIndex}, event idx ${q.eventIdx ? 'on' : 'off'}`, { queue: i });
      // A kick the driver made before the kick fd existed is replayed by VDUSE; one more is harmless.
      setImmediate(() => this.handler.kick(vr));
    } catch (e) {
      this.logger.log('error', `vduse ${this.name}: queue ${i} not started: ${errnoName(e)}`);
    }
  }

  /** Status 0: stops the rings, waits for their requests, drops the IOTLB mappings. */
  private async resetRings(): Promise<void> {
    this.running = false;
    for (const vr of this.vrings) {
      this.handler.unwatchKick(vr);
      vr.setStarted(false);
    }
    await this.handler.resetRings();
    await this.backend.quiesce?.();
    for (const vr of this.vrings) {
      if (vr.kickFd !== null && this.devFd >= 0) {
        try {
          vduseIoctl(this.devFd, v.VDUSE_VQ_SETUP_KICKFD, v.encodeVqEventfd(this.efdBuf, vr.index, v.VDUSE_EVENTFD_DEASSIGN), 'VDUSE_VQ_SETUP_KICKFD');
        } catch (e) {
          this.logger.log('warn', `vduse ${this.name}: unbinding kick fd of queue ${vr.index}: ${errnoName(e)}`);
        }
      }
      vr.reset();
    }
    this.cache.clear();
    await this.backend.resetDevice?.();
  }

  /** Mappings in [start, last] changed: finish the requests using memory, then drop those mappings. */
  private async updateIotlb(start: bigint, last: bigint): Promise<Reply> {
    await Promise.all(this.vrings.map((vr) => this.handler.queueServer(vr.index)?.quiesce()));
    const dropped = this.cache.invalidate(start, last);
    this.logger.log('debug', `vduse ${this.name}: IOTLB [0x${start.toString(16)}, 0x${last.toString(16)}] changed, ${dropped} mapping(s) dropped`);
    if (dropped > 0) {
      // Rings living in a dropped mapping are looked up again (through the new mapping, if any).
      for (const vr of this.vrings) {
        if (!vr.started) continue;
        try {
          vr.setMemory(this.memory);
        } catch (e) {
          this.logger.log('warn', `vduse ${this.name}: queue ${vr.index} lost its rings with the IOTLB change: ${errnoName(e)}`);
        }
      }
    }
    return OK;
  }

  private getU64(request: number, name: string): bigint {
    const b = new Uint8Array(8);
    vduseIoctl(this.devFd, request, b, name);
    return new DataView(b.buffer).getBigUint64(0, true);
  }

  /**
   * Stops serving, closes the device fd and destroys the device. Remove it from the vdpa bus
   * first ({@link VdpaNetlink.deleteDevice}); otherwise the kernel refuses with EBUSY, which is
   * logged, and the device stays until that is done. Idempotent.
   */
  close(): Promise<void> {
    this.closed ??= this.doClose();
    return this.closed;
  }

  private async doClose(): Promise<void> {
    this.watcher?.close();
    this.watcher = null;
    if (this.running) await this.resetRings();
    this.handler.stop();
    for (const vr of this.vrings) vr.reset();
    this.cache.clear();
    this.memory.close();
    const fd = this.devFd;
    this.devFd = -1;
    closeSync(fd);
    const dir = this.opts.deviceDir ?? '/dev/vduse';
    const ctl = openSync(this.opts.controlPath ?? `${dir}/control`, fsConstants.O_RDWR);
    try {
      destroyDevice(ctl, this.name, this.logger);
    } finally {
      closeSync(ctl);
    }
  }
}

interface Reply {
  readonly result: number;
  readonly availIndex: number;
}
const OK: Reply = { result: v.VDUSE_REQ_RESULT_OK, availIndex: 0 };

function requestName(type: number): string {
  return ['GET_VQ_STATE', 'SET_STATUS', 'UPDATE_IOTLB'][type] ?? `request ${type}`;
}

function iova(a: bigint, what: string): number {
  if (a > BigInt(MAX_ADDRESS)) throw new RangeError(`${what} at IOVA 0x${a.toString(16)} is beyond 2^53`);
  return Number(a);
}

/** An ioctl on a VDUSE fd whose error names the request. */
function vduseIoctl(fd: number, request: number, arg: Uint8Array, name: string): number {
  try {
    return sys.ioctl(fd, request, arg);
  } catch (e) {
    if (e instanceof sys.SysError) throw new sys.SysError(e.errno, 'ioctl', name);
    throw e;
  }
}

function destroyDevice(ctl: number, name: string, logger: Logger): void {
  const arg = new Uint8Array(v.VDUSE_NAME_MAX);
  arg.set(Buffer.from(name, 'utf8').subarray(0, v.VDUSE_NAME_MAX - 1));
  try {
    vduseIoctl(ctl, v.VDUSE_DESTROY_DEV, arg, 'VDUSE_DESTROY_DEV');
  } catch (e) {
    logger.log('warn', `vduse ${name}: not destroyed: ${errnoName(e)} (still on the vdpa bus?)`);
  }
}
