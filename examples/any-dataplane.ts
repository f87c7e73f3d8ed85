/**
 * Example: one device-setup function, any vhost dataplane. `setupDevice` only knows the
 * {@link VhostBackend} interface; the dataplane is chosen on the command line:
 *
 *   node dist/examples/any-dataplane.js vhost-user     an in-process vhost-user rng daemon (runs anywhere)
 *   node dist/examples/any-dataplane.js vhost-net      /dev/vhost-net with a new TAP (root, Linux)
 *   node dist/examples/any-dataplane.js vhost-vsock    /dev/vhost-vsock, guest CID 3
 *   node dist/examples/any-dataplane.js /dev/vhost-vdpa-0
 *
 * Several arguments run one after the other (the e2e test runs `vhost-net vhost-vsock` in a guest).
 *
 * Run: npx tsc -p . && node dist/examples/any-dataplane.js vhost-user
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Frontend, VhostKernNet, VhostKernVdpa, VhostKernVsock, VhostUserBackendAdapter, VhostUserDaemon, openTap,
  GuestMemory, GuestRegion, SplitQueueDriver, splitRingLayout, type VhostBackend,
} from 'vhost-user';
import { VhostUserRngBackend } from 'vhost-user/devices/rng';
// Kernel vhost reads guest memory at our own mapping's address, so the example maps guest RAM
// itself (the package-internal syscall layer; FrontendMemory hides the address).
import * as sys from '../src/sys/index.js';

const VIRTIO_F_VERSION_1 = 1n << 32n;
const RAM_SIZE = 1 << 20;
const QUEUE_SIZE = 64;

/** A queue as the driver (guest) side sees it. */
interface Queue { index: number; ring: SplitQueueDriver; kick: number; call: number }

/**
 * Sets a device up through the common interface: owner, features, memory table, and each queue's
 * size, addresses (guest-physical), base and eventfds. Nothing here depends on the dataplane.
 */
async function setupDevice(dev: VhostBackend, mem: GuestMemory, memFd: number, userAddr: bigint, queues: number): Promise<Queue[]> {
  await dev.setOwner();
  const offered = await dev.getFeatures();
  await dev.setFeatures(offered & VIRTIO_F_VERSION_1);
  await dev.setMemTable([{ guestPhysAddr: 0n, memorySize: BigInt(RAM_SIZE), userAddr, mmapOffset: 0n, fd: memFd }]);
  const out: Queue[] = [];
  for (let index = 0; index < queues; index++) {
    const lay = splitRingLayout(QUEUE_SIZE, index * 0x4000);
    const ring = new SplitQueueDriver(mem, QUEUE_SIZE, lay.descGpa, lay.availGpa, lay.usedGpa);
    const kick = sys.eventfd();
    const call = sys.eventfd();
    await dev.setVringNum(index, QUEUE_SIZE);
    await dev.setVringAddr({ index, log: false, descGpa: BigInt(lay.descGpa), availGpa: BigInt(lay.availGpa), usedGpa: BigInt(lay.usedGpa) });
    await dev.setVringBase(index, 0);
    await dev.setVringKick(index, kick);
    await dev.setVringCall(index, call);
    out.push({ index, ring, kick, call });
  }
  console.log(`${dev.kind}: features 0x${offered.toString(16)} offered, ${queues} queue(s) set up`);
  return out;
}

/** Waits for one used element on `q` (5 s guard). */
function used(q: Queue): Promise<{ id: number; len: number }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { w.close(); reject(new Error('no used element within 5 s')); }, 5000);
    const w = sys.watchFd(q.call, sys.POLLIN, () => {
      sys.eventfdRead(q.call);
      const e = q.ring.popUsed();
      if (e) { clearTimeout(timer); w.close(); resolve(e); }
    });
  });
}

async function main(): Promise<void> {
  const dataplanes = process.argv.slice(2);
  for (const which of dataplanes.length > 0 ? dataplanes : ['vhost-user']) await run(which);
}

/** Sets up a device on one dataplane, uses it a little, and releases everything. */
async function run(which: string): Promise<void> {
  const memFd = sys.memfdCreate('guest-ram');
  sys.ftruncate(memFd, RAM_SIZE);
  const map = sys.mmap(memFd, 0, RAM_SIZE);
  const mem = new GuestMemory([new GuestRegion({ guestPhysAddr: 0, size: RAM_SIZE, userAddr: Number(map.address), backing: map })]);
  const cleanup: (() => void | Promise<void>)[] = [() => map.unmap(), () => sys.close(memFd)];
  try {
    if (which === 'vhost-user') {
      const dir = mkdtempSync(join(tmpdir(), 'vu-any-'));
      cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
      const daemon = new VhostUserDaemon('rng', new VhostUserRngBackend());
      daemon.serve(join(dir, 'rng.sock'));
      cleanup.push(() => daemon.stop());
      const dev = new VhostUserBackendAdapter(await Frontend.connect(join(dir, 'rng.sock')));
      cleanup.unshift(() => dev.close());
      const [q] = await setupDevice(dev, mem, memFd, map.address, 1);
      // Without VHOST_USER_F_PROTOCOL_FEATURES the ring starts enabled: one request of 32 bytes.
      q!.ring.addChain([], [{ gpa: 0x10000, len: 32 }]);
      sys.eventfdWrite(q!.kick, 1);
      const e = await used(q!);
      console.log(`vhost-user: ${e.len} random bytes from the rng device`);
    } else if (which === 'vhost-net') {
      const dev = VhostKernNet.open();
      const tap = openTap();
      cleanup.unshift(() => { dev.close(); tap.close(); });
      const qs = await setupDevice(dev, mem, memFd, map.address, 2);
      for (const q of qs) await dev.setBackend(q.index, tap.fd);
      console.log(`vhost-net: queues attached to ${tap.name}`);
    } else if (which === 'vhost-vsock') {
      const dev = VhostKernVsock.open();
      cleanup.unshift(() => dev.close());
      await setupDevice(dev, mem, memFd, map.address, 2);
      await dev.setGuestCid(3);
      await dev.setRunning(true);
      console.log('vhost-vsock: running as CID 3');
    } else if (which.startsWith('/dev/vhost-vdpa')) {
      const dev = VhostKernVdpa.open(which);
      cleanup.unshift(() => dev.close());
      const n = await dev.getVqsCount();
      await setupDevice(dev, mem, memFd, map.address, n);
      console.log(`vhost-vdpa: device id ${await dev.getDeviceId()}, ${n} queues`);
    } else {
      throw new Error(`unknown dataplane '${which}' (vhost-user, vhost-net, vhost-vsock or /dev/vhost-vdpa-N)`);
    }
  } finally {
    for (const c of cleanup) await c();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
