// virtio-blk request path benchmark: 4 KiB random reads through VhostUserBlkBackend (pop chain,
// parse header, validate, zero-copy readv into guest memory, status byte, addUsed, call eventfd)
// at a fixed queue depth, on a RamDisk and on a FileDisk (temp file, page cache warm).
// Reference in the same run: the same disk's readv / raw fs.readv of the same 4 KiB guest-memory
// views at the same offsets and queue depth, without any virtqueue.
// usage: node dist/bench/blk.js [seconds-per-case] [queue-depth]
import * as fs from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { GuestMemory, GuestMemoryAtomic, mapGuestRegion } from '../src/memory/index.js';
import { SplitQueueDriver, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, splitRingLayout } from '../src/queue/index.js';
import { QueueServer, Vring } from '../src/backend/index.js';
import { close, eventfd, eventfdRead, ftruncate, memfdCreate } from '../src/sys/index.js';
import { silentLogger } from '../src/log.js';
import { FileDisk, RamDisk, VhostUserBlkBackend, VIRTIO_BLK_T_IN, type BlockDisk } from '../src/devices/blk/index.js';

const seconds = Number(process.argv[2] ?? '1');
const QD = Number(process.argv[3] ?? '32');
const RAM = 0x10_0000;
const RAM_SIZE = 16 << 20;
const QSIZE = 256;
const DISK_SIZE = 64 << 20;
const IO = 4096;
if (!(QD >= 1 && QD * 3 <= QSIZE)) throw new Error(`queue depth must be in [1, ${Math.floor(QSIZE / 3)}]`);

const memfd = memfdCreate('bench-blk');
ftruncate(memfd, RAM_SIZE);
const desc = { guestPhysAddr: RAM, memorySize: RAM_SIZE, userAddr: 0x7f00_0000_0000, mmapOffset: 0 };
const atomic = new GuestMemoryAtomic(new GuestMemory([mapGuestRegion(desc, memfd)]));
const drvMem = new GuestMemory([mapGuestRegion(desc, memfd)]);
close(memfd);
const layout = splitRingLayout(QSIZE, RAM);
const DATA = RAM + 0x10_0000;

// Random 4 KiB-aligned offsets, precomputed so both sides pay nothing for them.
const OFFSETS = new Float64Array(1 << 16);
{
  let x = 0x9e3779b9;
  for (let i = 0; i < OFFSETS.length; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    OFFSETS[i] = (x % (DISK_SIZE / IO)) * IO;
  }
}

interface Result { iops: number; reqs: number }

/** Through the device: QD fixed 3-descriptor chains re-published per batch. */
async function runDevice(disk: BlockDisk): Promise<Result> {
  const backend = new VhostUserBlkBackend({ disk, queueSize: QSIZE, maxInFlight: QD, logger: silentLogger });
  backend.ackedFeatures(backend.features());
  const drv = new SplitQueueDriver(drvMem, QSIZE, layout.descGpa, layout.availGpa, layout.usedGpa);
  const vring = new Vring(0, QSIZE);
  vring.setMemory(atomic);
  vring.queue.setAddresses(layout.descGpa, layout.availGpa, layout.usedGpa);
  const call = eventfd();
  vring.setCallFd(call);
  vring.setStarted(true);
  vring.setEnabled(true);
  const heads: number[] = [];
  const hdrs: number[] = [];
  for (let k = 0; k < QD; k++) {
    const h = 3 * k;
    const hdr = DATA + k * 8192;
    const buf = hdr + 4096;
    const status = hdr + 64;
    drvMem.writeU32(hdr, VIRTIO_BLK_T_IN);
    drv.writeDesc(h, hdr, 16, VIRTQ_DESC_F_NEXT, h + 1);
    drv.writeDesc(h + 1, buf, IO, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, h + 2);
    drv.writeDesc(h + 2, status, 1, VIRTQ_DESC_F_WRITE, 0);
    heads.push(h);
    hdrs.push(hdr);
  }
  // What the daemon's event handler runs for a kick of this ring.
  const server = new QueueServer(vring, (chain) => backend.processChain(0, chain), { maxInFlight: backend.maxInFlight(0), logger: silentLogger });
  let n = 0;
  let o = 0;
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    for (let k = 0; k < QD; k++) {
      drvMem.writeU64((hdrs[k] as number) + 8, BigInt((OFFSETS[o++ & 0xffff] as number) / 512));
      drv.publish(heads[k] as number);
    }
    server.kick();
    await server.quiesce();
    while (drv.popUsed() !== null) n++;
    eventfdRead(call);
    for (const h of hdrs) if (drvMem.readU8(h + 64) !== 0) throw new Error(`request failed with status ${drvMem.readU8(h + 64)}`);
  }
  vring.reset();
  return { iops: n / seconds, reqs: n };
}

/** Reference: the disk's own readv, same views, offsets and depth, no queue. */
async function runDiskDirect(disk: BlockDisk): Promise<Result> {
  const views: Uint8Array[][] = [];
  for (let k = 0; k < QD; k++) views.push([atomic.memory.translate(DATA + k * 8192 + 4096, IO)]);
  const batch: Promise<void>[] = new Array<Promise<void>>(QD);
  let n = 0;
  let o = 0;
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    for (let k = 0; k < QD; k++) batch[k] = disk.readv(views[k] as Uint8Array[], OFFSETS[o++ & 0xffff] as number);
    await Promise.all(batch);
    n += QD;
  }
  return { iops: n / seconds, reqs: n };
}

/** Reference for files: raw fs.readv callbacks into the same views. */
async function runRawReadv(fd: number): Promise<Result> {
  const views: Uint8Array[][] = [];
  for (let k = 0; k < QD; k++) views.push([atomic.memory.translate(DATA + k * 8192 + 4096, IO)]);
  let n = 0;
  let o = 0;
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    await new Promise<void>((resolve, reject) => {
      let left = QD;
      for (let k = 0; k < QD; k++) {
        fs.readv(fd, views[k] as Uint8Array[], OFFSETS[o++ & 0xffff] as number, (e) => {
          if (e) reject(e);
          else if (--left === 0) resolve();
        });
      }
    });
    n += QD;
  }
  return { iops: n / seconds, reqs: n };
}

const dir = mkdtempSync('/tmp/vu-bench-blk-');
try {
  const ram = new RamDisk({ size: DISK_SIZE });
  const fill = new Uint8Array(1 << 20).fill(0x5a);
  for (let off = 0; off < DISK_SIZE; off += fill.length) await ram.writev([fill], off);
  const path = join(dir, 'disk.img');
  fs.writeFileSync(path, new Uint8Array(DISK_SIZE).fill(0x5a));
  const file = FileDisk.open(path);

  // Warm-up (JIT, page cache), then measure device and reference back to back.
  await runDevice(ram); await runDiskDirect(ram);
  await runDevice(file); await runRawReadv(file.fd);
  const ramDev = await runDevice(ram);
  const ramRef = await runDiskDirect(ram);
  const fileDev = await runDevice(file);
  const fileRef = await runRawReadv(file.fd);
  await file.close();

  const result = {
    bench: 'blk-4k-randread',
    seconds,
    queueDepth: QD,
    ramDisk: { deviceIops: Math.round(ramDev.iops), referenceIops: Math.round(ramRef.iops), ratio: +(ramDev.iops / ramRef.iops).toFixed(3), reference: 'RamDisk.readv, no virtqueue' },
    fileDisk: { deviceIops: Math.round(fileDev.iops), referenceIops: Math.round(fileRef.iops), ratio: +(fileDev.iops / fileRef.iops).toFixed(3), reference: 'fs.readv on the same fd, no virtqueue' },
  };
  console.log(JSON.stringify(result));
  const k = (x: number): string => `${(x / 1000).toFixed(1)}k`;
  console.log(`4 KiB random read QD${QD}: RamDisk ${k(ramDev.iops)} IOPS via virtqueue vs ${k(ramRef.iops)} direct (${result.ramDisk.ratio}x); FileDisk ${k(fileDev.iops)} vs raw fs.readv ${k(fileRef.iops)} (${result.fileDisk.ratio}x)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
  atomic.close();
  for (const r of drvMem.regions) r.unmap();
}
