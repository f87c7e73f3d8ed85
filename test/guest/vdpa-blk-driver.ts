/**
 * Runs INSIDE the 6.12 test guest, as a child of vduse-blk.ts (whose VduseDaemon serves the
 * device: a separate process, since every vhost-vdpa call below blocks until the daemon answered
 * the kernel). Drives /dev/vhost-vdpa-N as a VMM would with VhostKernVdpa: IOTLB mappings of a
 * memfd as guest RAM, one split ring, a sector written then read back through our blk device.
 * Also the vDPA ioctls beyond the common interface and the bad-input errors.
 * Args: the vhost-vdpa device path.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync, unlinkSync } from 'node:fs';
import * as sys from '../../src/sys/index.js';
import { VhostKernVdpa } from '../../src/kernel/vdpa.js';
import * as k from '../../src/kernel/ioctl.js';
import { GuestQueue, GuestRam, detail, runGuestScript } from './harness.js';

const VIRTIO_F_VERSION_1 = 1n << 32n;
const VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;
const S_ACK = 1;
const S_DRIVER = 2;
const S_DRIVER_OK = 4;
const S_FEATURES_OK = 8;
const T_IN = 0;
const T_OUT = 1;
const SECTOR = 7;

/** The errno name of a rejected promise (or 'ok'), for the result line. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return (e as { code?: string }).code ?? (e as Error).message.slice(0, 160);
  }
}

runGuestScript(async () => {
  const path = process.argv[2] ?? '/dev/vhost-vdpa-0';
  const vdpa = VhostKernVdpa.open(path);
  await vdpa.setOwner();
  assert.equal(await vdpa.getDeviceId(), 2, 'virtio-blk');
  const vqs = await vdpa.getVqsCount();
  const vringNum = await vdpa.getVringNum();
  detail('vqs', vqs);
  detail('vring_num', vringNum);
  detail('groups', await outcome(vdpa.getGroupNum().then((n) => detail('group_num', n))));
  detail('as', await outcome(vdpa.getAsNum().then((n) => detail('as_num', n))));
  detail('vring_group', await outcome(vdpa.getVringGroup(0).then((g) => detail('vring_group0', g))));
  const range = await vdpa.getIovaRange();
  detail('iova_range', `${range.first.toString(16)}-${range.last.toString(16)}`);
  const backend = await vdpa.getBackendFeatures();
  detail('backend_features', backend.toString(16));
  const want = (1n << BigInt(k.VHOST_BACKEND_F_IOTLB_MSG_V2)) | (1n << BigInt(k.VHOST_BACKEND_F_IOTLB_BATCH)) |
    (1n << BigInt(k.VHOST_BACKEND_F_IOTLB_ASID)) | (1n << BigInt(k.VHOST_BACKEND_F_SUSPEND));
  await vdpa.setBackendFeatures(backend & want);
  // The address-space ioctls: group 0 to address space 0 (the only one VDUSE has in 6.12).
  detail('group_asid', await outcome(vdpa.setGroupAsid(0, 0)));
  const cfgCall = sys.eventfd();
  await vdpa.setConfigCall(cfgCall);
  await vdpa.setConfigCall(null);
  sys.close(cfgCall);

  const features = await vdpa.getFeatures();
  await vdpa.setStatus(S_ACK | S_DRIVER);
  await vdpa.setFeatures(features & (VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM));
  await vdpa.setStatus(S_ACK | S_DRIVER | S_FEATURES_OK);
  assert.equal(await vdpa.getStatus(), S_ACK | S_DRIVER | S_FEATURES_OK);

  const ram = new GuestRam(1 << 20);
  await ram.setMemTable(vdpa);
  // Bad input: a mapping beyond the device's IOVA range is refused before the kernel sees it.
  // (It runs past the last IOVA, which also covers a device whose range ends at 2^64 - 1.)
  detail('iotlb_outside', await outcome(vdpa.iotlbUpdate(range.last - 0xfffn, 0x2000n, ram.map.address)));
  const q = new GuestQueue(ram, 0, 64, 0);
  await q.attach(vdpa);
  await vdpa.setVringEnable(0, true);
  await vdpa.setStatus(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

  const hdr = 0x20000;
  const status = 0x20100;
  const data = 0x21000;
  const request = async (type: number, what: string): Promise<number> => {
    ram.mem.writeU32(hdr, type);
    ram.mem.writeU32(hdr + 4, 0);
    ram.mem.writeU64(hdr + 8, BigInt(SECTOR));
    ram.mem.writeU8(status, 0xff);
    if (type === T_OUT) q.q.addChain([{ gpa: hdr, len: 16 }, { gpa: data, len: 512 }], [{ gpa: status, len: 1 }]);
    else q.q.addChain([{ gpa: hdr, len: 16 }], [{ gpa: data, len: 512 }, { gpa: status, len: 1 }]);
    q.notify();
    await q.nextUsed(what);
    return ram.mem.readU8(status);
  };
  const pattern = new Uint8Array(512).map((_, i) => (i * 7 + 3) & 0xff);
  ram.mem.write(data, pattern);
  assert.equal(await request(T_OUT, 'write completion'), 0, 'write status OK');
  ram.mem.write(data, new Uint8Array(512));
  assert.equal(await request(T_IN, 'read completion'), 0, 'read status OK');
  const back = new Uint8Array(512);
  ram.mem.read(data, back);
  assert.deepEqual(back, pattern, 'sector read back through vhost-vdpa matches');
  detail('sector', 'match');

  // SUSPEND needs VHOST_BACKEND_F_SUSPEND, which VDUSE does not offer: the kernel says so.
  detail('suspend', await outcome(vdpa.suspend()));
  await vdpa.setVringEnable(0, false);
  detail('vring_base', await vdpa.getVringBase(0));

  // Bad input: a pipe is not a vDPA device (ENOTTY), a closed device refuses before any syscall,
  // an fd closed behind the object gives EBADF.
  const [pr, pw] = pipePair();
  const onPipe = new VhostKernVdpa(pr);
  detail('pipe', await outcome(onPipe.getDeviceId()));
  onPipe.close();
  closeSync(pw);
  vdpa.close();
  detail('closed', await outcome(vdpa.getStatus()));
  const dup = VhostKernVdpa.open(path);
  closeSync(dup.fd);
  detail('closed_fd', await outcome(dup.getVqsCount()));
  q.close();
  ram.close();
  detail('driver', 'ok');
});

function pipePair(): [number, number] {
  // A FIFO opened read/write is a pipe as far as ioctl is concerned (node has no pipe(2) binding).
  const path = `/dev/shm/vdpa-fifo-${process.pid}`;
  execFileSync('mkfifo', [path]);
  const fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
  unlinkSync(path);
  return [fd, openSync('/dev/null', 'w')];
}
