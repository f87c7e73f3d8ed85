/**
 * Runs INSIDE the 6.12 test guest: our virtio-blk device (VhostUserBlkBackend over a RAM disk,
 * unchanged) served through VDUSE by VduseDaemon, added to the vdpa bus with the netlink API
 * (VdpaNetlink, no `vdpa` tool), then
 *  1. bound to vhost_vdpa and driven by VhostKernVdpa from a child process (vdpa-blk-driver.ts):
 *     a sector written then read back, the data also found on our RAM disk;
 *  2. rebound to virtio_vdpa (sysfs driver_override): the kernel's virtio_blk makes /dev/vdX,
 *     and `dd` writes then reads it back with O_DIRECT; the data matches, on our disk too.
 * Every sysfs write and netlink request that makes the kernel wait for the device runs off the
 * main thread (fs.promises, the netlink threadpool send), which keeps answering VDUSE.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync, watch, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as sys from '../../src/sys/index.js';
import { VduseDaemon } from '../../src/kernel/vduse-daemon.js';
import { VdpaNetlink } from '../../src/kernel/vdpa-netlink.js';
import { VDUSE_GET_VQ_STATE, VDUSE_SET_STATUS, VDUSE_UPDATE_IOTLB } from '../../src/kernel/vduse.js';
import { RamDisk, VhostUserBlkBackend } from '../../src/devices/blk/index.js';
import { StderrLogger } from '../../src/log.js';
import { detail, runGuestScript } from './harness.js';

const run = promisify(execFile);
const NAME = 'tsblk0';
const DISK_SIZE = 32 << 20;
const DEV = `/sys/bus/vdpa/devices/${NAME}`;
const uptime = (): string => readFileSync('/proc/uptime', 'utf8').split(' ')[0] ?? '';

function waitForFile(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (existsSync(path)) { resolve(); return; }
    const w = watch('/dev', () => { if (existsSync(path)) { done(); resolve(); } });
    const timer = setTimeout(() => { done(); reject(new Error(`${path} did not appear`)); }, 10_000);
    const done = (): void => { clearTimeout(timer); w.close(); };
  });
}

function boundDriver(): string | null {
  try {
    return basename(readlinkSync(`${DEV}/driver`));
  } catch {
    return null;
  }
}

/** Binds the vdpa device to `driver` (unbinding the current one), off the main thread. */
async function bindTo(driver: string): Promise<void> {
  const cur = boundDriver();
  if (cur === driver) return;
  if (cur !== null) await writeFile(`/sys/bus/vdpa/drivers/${cur}/unbind`, NAME);
  await writeFile(`${DEV}/driver_override`, driver);
  await writeFile(`/sys/bus/vdpa/drivers/${driver}/bind`, NAME);
  assert.equal(boundDriver(), driver, `bound to ${driver}`);
}

/** The child of `dir` whose name starts with `prefix`. */
function childNamed(dir: string, prefix: string): string {
  const hit = readdirSync(dir).find((n) => n.startsWith(prefix));
  if (hit === undefined) throw new Error(`no ${prefix}* in ${dir}`);
  return hit;
}

runGuestScript(async () => {
  detail('started_at', uptime());
  const fdsBefore = sys.openFdCount();
  const disk = new RamDisk({ size: DISK_SIZE });
  const daemon = VduseDaemon.create(new VhostUserBlkBackend({ disk }), { name: NAME, logger: new StderrLogger('vduse', { level: 'warn' }) });
  const nl = await VdpaNetlink.open();
  const mgmt = await nl.managementDevices();
  detail('mgmtdevs', mgmt.map((m) => m.devName).join('/'));
  const vduse = mgmt.find((m) => m.devName === 'vduse');
  assert.ok(vduse, 'vduse management device listed');
  assert.ok(vduse.supportedClasses & (1n << 2n), 'vduse creates blk devices');

  await nl.addDevice(NAME, 'vduse');
  const info = await nl.device(NAME);
  assert.equal(info.deviceId, 2);
  assert.equal(info.maxVqs, 1);
  assert.equal(info.mgmtdev, 'vduse');
  assert.ok((await nl.devices()).some((d) => d.name === NAME), 'listed by the DEV_GET dump');
  detail('added_at', uptime());

  // 1. vhost_vdpa, driven from a child process.
  await bindTo('vhost_vdpa');
  const vhostDev = `/dev/${childNamed(DEV, 'vhost-vdpa-')}`;
  await waitForFile(vhostDev);
  const driverScript = fileURLToPath(new URL('./vdpa-blk-driver.js', import.meta.url));
  const child = await run(process.execPath, [driverScript, vhostDev], { timeout: 60_000 }).catch((e: { stdout?: string; stderr?: string; message: string }) => {
    process.stderr.write(e.stderr ?? '');
    for (const l of (e.stdout ?? '').split('\n')) if (l.startsWith('detail ')) console.log(l.replace('detail ', 'detail driver_'));
    throw new Error(`vhost-vdpa driver failed: ${e.message.split('\n')[0] ?? ''}`);
  });
  for (const l of child.stdout.split('\n')) if (l.startsWith('detail ')) console.log(l.replace('detail ', 'detail driver_'));
  const onDisk = new Uint8Array(512);
  disk.readSync(onDisk, 7 * 512);
  assert.deepEqual(onDisk, new Uint8Array(512).map((_, i) => (i * 7 + 3) & 0xff), 'the sector written through vhost-vdpa is on our disk');
  detail('vhost_vdpa', 'ok');
  detail('vhost_done_at', uptime());

  // 2. virtio_vdpa: the guest kernel's own virtio-blk driver on our device.
  await bindTo('virtio_vdpa');
  const virtioDir = `${DEV}/${childNamed(DEV, 'virtio')}`;
  const blockName = childNamed(`${virtioDir}/block`, 'vd');
  const blockDev = `/dev/${blockName}`;
  await waitForFile(blockDev);
  detail('block_dev', blockName);
  assert.equal(readFileSync(`/sys/block/${blockName}/size`, 'utf8').trim(), String(DISK_SIZE / 512), 'capacity from our config space');
  const pattern = new Uint8Array(64 * 1024).map((_, i) => (i * 131 + (i >> 9)) & 0xff);
  writeFileSync('/dev/shm/vduse-pattern', pattern);
  await run('dd', ['if=/dev/shm/vduse-pattern', `of=${blockDev}`, 'bs=4096', 'count=16', 'seek=8', 'oflag=direct', 'conv=fsync'], { timeout: 30_000 });
  await run('dd', [`if=${blockDev}`, 'of=/dev/shm/vduse-back', 'bs=4096', 'count=16', 'skip=8', 'iflag=direct'], { timeout: 30_000 });
  assert.deepEqual(new Uint8Array(readFileSync('/dev/shm/vduse-back')), pattern, 'dd read back what dd wrote');
  const ours = new Uint8Array(pattern.length);
  disk.readSync(ours, 8 * 4096);
  assert.deepEqual(ours, pattern, 'the dd data is on our disk');
  // Throughput of the whole path (virtio-blk, VDUSE bounce buffers, our queue loop, RAM disk).
  const t0 = performance.now();
  await run('dd', ['if=/dev/zero', `of=${blockDev}`, 'bs=1M', 'count=8', 'oflag=direct'], { timeout: 60_000 });
  const t1 = performance.now();
  await run('dd', [`if=${blockDev}`, 'of=/dev/null', 'bs=1M', 'count=8', 'iflag=direct'], { timeout: 60_000 });
  const t2 = performance.now();
  detail('dd_write_mib_s', Math.round(8_000 / (t1 - t0)));
  detail('dd_read_mib_s', Math.round(8_000 / (t2 - t1)));
  detail('virtio_vdpa', 'ok');
  detail('virtio_done_at', uptime());

  // Removal: the driver resets the device (SET_STATUS 0, answered), then VDUSE destroys it.
  await nl.deleteDevice(NAME);
  nl.close();
  const st = daemon.queues[0]?.stats;
  detail('requests', st?.requests ?? 0);
  detail('interrupts', st?.interrupts ?? 0);
  detail('iotlb_fetches', daemon.iotlbFetches);
  detail('vduse_requests', [VDUSE_GET_VQ_STATE, VDUSE_SET_STATUS, VDUSE_UPDATE_IOTLB].map((t) => daemon.requestCounts.get(t) ?? 0).join('/'));
  assert.ok((st?.requests ?? 0) >= 2, 'requests served by the framework queue loop');
  await daemon.close();
  assert.ok(!existsSync(`/dev/vduse/${NAME}`), 'VDUSE device destroyed');
  assert.equal(sys.openFdCount(), fdsBefore, 'the daemon and the netlink socket left no fd behind');
  detail('vduse_blk', 'ok');
  detail('finished_at', uptime());
});
