/**
 * Example: the same virtio-blk device that serves vhost-user, served to the local kernel through
 * VDUSE. The device is created on /dev/vduse, added to the vdpa bus over netlink, and whichever
 * vdpa driver is bound takes it: virtio_vdpa makes a /dev/vdX of it, vhost_vdpa a
 * /dev/vhost-vdpa-N for a VMM. Ctrl-C removes the device again.
 *
 * Needs root and a kernel with the vduse module plus virtio_vdpa or vhost_vdpa (e.g. 6.12):
 *
 *   modprobe vduse virtio_vdpa
 *   npx tsc -p . && node dist/examples/vduse-blk.js [name] [size-MiB]
 *
 * VDUSE_CONTROL overrides the control device path (/dev/vduse/control).
 */
import { readdirSync } from 'node:fs';
import { VduseDaemon, VdpaNetlink } from 'vhost-user';
import { RamDisk, VhostUserBlkBackend } from 'vhost-user/devices/blk';

async function main(): Promise<void> {
  const name = process.argv[2] ?? 'vduse-blk0';
  const sizeMiB = Number(process.argv[3] ?? '64');
  const device = new VhostUserBlkBackend({ disk: new RamDisk({ size: sizeMiB << 20 }) });
  // Creating the device does not expose it yet; the daemon answers the kernel from now on.
  const daemon = VduseDaemon.create(device, { name, controlPath: process.env.VDUSE_CONTROL });
  const nl = await VdpaNetlink.open();
  // The bound driver probes the device during this call: the request is sent off this thread,
  // so the daemon above keeps answering the kernel meanwhile.
  await nl.addDevice(name, 'vduse');
  const sysfs = `/sys/bus/vdpa/devices/${name}`;
  const children = readdirSync(sysfs);
  const virtio = children.find((c) => c.startsWith('virtio'));
  const vhost = children.find((c) => c.startsWith('vhost-vdpa-'));
  if (virtio !== undefined) console.log(`${name}: virtio_vdpa made /dev/${readdirSync(`${sysfs}/${virtio}/block`).join(', /dev/')}`);
  else if (vhost !== undefined) console.log(`${name}: vhost_vdpa made /dev/${vhost}`);
  else console.log(`${name}: on the vdpa bus, no driver bound`);

  const stop = async (): Promise<void> => {
    await nl.deleteDevice(name);
    nl.close();
    await daemon.close();
    console.log(`${name}: removed`);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
}

main().catch((e: unknown) => {
  console.error(`vduse-blk: ${(e as Error).message}`);
  process.exitCode = 1;
});
