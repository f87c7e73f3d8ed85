/**
 * Runs INSIDE the 6.12 test guest: the control path of VhostKernVdpa against a real vDPA device.
 * A blk device is created through VDUSE (/dev/vduse/control), added to the vdpa bus with the
 * netlink API (VdpaNetlink), bound to vhost_vdpa, and driven through /dev/vhost-vdpa-0: device id,
 * queue count and size, config space, IOVA range, backend features, status, and IOTLB updates,
 * which reach the VDUSE side as UPDATE_IOTLB messages. No I/O here: vduse-blk.ts serves the data
 * path with VduseDaemon.
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readFileSync, watch, constants as fsConstants } from 'node:fs';
import { Worker } from 'node:worker_threads';
import * as sys from '../../src/sys/index.js';
import { VhostKernVdpa } from '../../src/kernel/vdpa.js';
import { VdpaNetlink } from '../../src/kernel/vdpa-netlink.js';
import * as k from '../../src/kernel/ioctl.js';
import { VDUSE_CREATE_DEV, VDUSE_SET_API_VERSION, VDUSE_SET_STATUS, VDUSE_UPDATE_IOTLB, VDUSE_VQ_SETUP, encodeDevConfig, encodeVqConfig } from '../../src/kernel/vduse.js';
import { GuestRam, detail, runGuestScript } from './harness.js';

const NAME = 'vblkts';
const CAPACITY = 2048n;
const VIRTIO_F_VERSION_1 = 32n;
const VIRTIO_F_ACCESS_PLATFORM = 33n;

function waitForFile(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (existsSync(path)) { resolve(); return; }
    const w = watch('/dev', () => { if (existsSync(path)) { done(); resolve(); } });
    const timer = setTimeout(() => { done(); reject(new Error(`${path} did not appear`)); }, 10_000);
    const done = (): void => { clearTimeout(timer); w.close(); };
  });
}

const uptime = (): string => readFileSync('/proc/uptime', 'utf8').split(' ')[0] ?? '';

runGuestScript(async () => {
  detail('started_at', uptime());
  const ctl = openSync('/dev/vduse/control', fsConstants.O_RDWR);
  const u64 = new Uint8Array(8);
  sys.ioctl(ctl, VDUSE_SET_API_VERSION, u64);
  const config = new Uint8Array(60);
  new DataView(config.buffer).setBigUint64(0, CAPACITY, true);
  sys.ioctl(ctl, VDUSE_CREATE_DEV, encodeDevConfig({
    name: NAME, vendorId: 0, deviceId: 2, features: (1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_F_ACCESS_PLATFORM),
    vqNum: 1, vqAlign: 4096, config,
  }));
  const dev = openSync(`/dev/vduse/${NAME}`, fsConstants.O_RDWR);
  sys.ioctl(dev, VDUSE_VQ_SETUP, encodeVqConfig(0, 128));
  closeSync(dev);
  type Msg = { type: number; status: number; start: string; last: string };
  const messages: Msg[] = [];
  const waiters: (() => void)[] = [];
  const seen = (pred: (m: Msg) => boolean, what: string): Promise<void> => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within 10 s`)), 10_000);
    const check = (): void => { if (messages.some(pred)) { clearTimeout(timer); resolve(); } else waiters.push(check); };
    check();
  });
  const worker = new Worker(new URL('./vduse-responder.js', import.meta.url), { workerData: `/dev/vduse/${NAME}` });
  await new Promise<void>((resolve) => worker.once('message', () => resolve()));
  worker.on('message', (m: Msg) => { messages.push(m); for (const w of waiters.splice(0)) w(); });
  // The add probes vhost_vdpa while the worker answers; the netlink send runs off this thread.
  const nl = await VdpaNetlink.open();
  await nl.addDevice(NAME, 'vduse');
  await waitForFile('/dev/vhost-vdpa-0');
  detail('vhost_vdpa', 'present');
  detail('vdpa_added_at', uptime());

  const vdpa = VhostKernVdpa.open('/dev/vhost-vdpa-0');
  await vdpa.setOwner();
  assert.equal(await vdpa.getDeviceId(), 2, 'virtio-blk');
  assert.equal(await vdpa.getVqsCount(), 1);
  assert.equal(await vdpa.getVringNum(), 128);
  const cfgSize = await vdpa.getConfigSize();
  assert.ok(cfgSize >= 8, `config size ${cfgSize}`);
  const cfg = await vdpa.getConfig(0, 8);
  assert.equal(new DataView(cfg.buffer).getBigUint64(0, true), CAPACITY, 'capacity from the VDUSE config');
  const range = await vdpa.getIovaRange();
  detail('iova_range', `${range.first.toString(16)}-${range.last.toString(16)}`);
  const backend = await vdpa.getBackendFeatures();
  detail('backend_features', backend.toString(16));
  assert.ok(backend & (1n << BigInt(k.VHOST_BACKEND_F_IOTLB_MSG_V2)), 'IOTLB v2 offered');
  await vdpa.setBackendFeatures(backend & ((1n << BigInt(k.VHOST_BACKEND_F_IOTLB_MSG_V2)) | (1n << BigInt(k.VHOST_BACKEND_F_IOTLB_BATCH))));
  const features = await vdpa.getFeatures();
  assert.ok(features & (1n << VIRTIO_F_ACCESS_PLATFORM), 'ACCESS_PLATFORM offered');
  await vdpa.setStatus(1 | 2); // ACKNOWLEDGE | DRIVER
  assert.equal(await vdpa.getStatus(), 3);
  await vdpa.setFeatures(features & ((1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_F_ACCESS_PLATFORM)));
  const ram = new GuestRam(1 << 20);
  await ram.setMemTable(vdpa);
  if (range.last < 0xffffffffffffffffn) {
    await assert.rejects(vdpa.iotlbUpdate(range.last, 0x2000n, ram.map.address), /outside the device IOVA range/);
  }
  await vdpa.setVringNum(0, 64);
  await vdpa.setVringAddr({ index: 0, log: false, descGpa: 0n, availGpa: 0x400n, usedGpa: 0x1000n });
  await assert.rejects(vdpa.setVringAddr({ index: 0, log: false, descGpa: 0x200000n, availGpa: 0x400n, usedGpa: 0x1000n }), /not mapped in the IOTLB/);
  // The worker reports each request after answering it: wait for those reports (events).
  await seen((m) => m.type === VDUSE_SET_STATUS && m.status === 3, 'VDUSE SET_STATUS 3');
  await seen((m) => m.type === VDUSE_UPDATE_IOTLB, 'VDUSE UPDATE_IOTLB');
  detail('vduse_messages', messages.map((m) => `${m.type}:${m.type === VDUSE_SET_STATUS ? m.status : `${m.start}-${m.last}`}`).join('/'));
  // Closing /dev/vhost-vdpa-0 resets the device: VDUSE asks for SET_STATUS 0 and the kernel waits
  // for the answer (up to msg_timeout, 30 s), so close while the worker still answers.
  const resets = messages.filter((m) => m.type === VDUSE_SET_STATUS && m.status === 0).length;
  vdpa.close();
  await seen(() => messages.filter((m) => m.type === VDUSE_SET_STATUS && m.status === 0).length > resets, 'reset on close');
  ram.close();
  // Off the bus (the reset answered by the worker), so later scripts find a clean bus.
  await nl.deleteDevice(NAME);
  nl.close();
  detail('vdpa', 'ok');
  detail('finished_at', uptime());
});
