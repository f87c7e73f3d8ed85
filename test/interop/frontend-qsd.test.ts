/**
 * Our Frontend driving the reference C vhost-user-blk back-end, qemu-storage-daemon, exactly as a
 * VMM would: negotiation, GET_CONFIG, a memfd memory table, queue 0 set up with eventfds, then a
 * 4 KiB write and a read issued through a split ring that this test drives as the guest driver.
 * The image file on disk is the independent witness of the write.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import * as sys from '../../src/sys/index.js';
import { GuestMemory, mapGuestRegion } from '../../src/memory/index.js';
import { SplitQueueDriver, splitRingLayout, type UsedElement } from '../../src/queue/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { ProtocolFeature, hasProtocolFeature } from '../../src/vhost-user/constants.js';
import {
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_FEATURES, decodeFeatures, hasFeature,
} from '../../src/vhost-user/features.js';
import { requireTools } from '../helpers/tools.js';
import { createRawImage, readRange, startStorageDaemon } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';

const IMAGE_SIZE = 64 * 1024 * 1024;
const MEM_SIZE = 16 * 1024 * 1024;
/** A made-up front-end virtual address for guest-physical 0: the back-end only translates with it. */
const USER_ADDR = 0x7f00_0000_0000;
const QUEUE_SIZE = 128;

// virtio-blk request layout (device-types_blk_description.tex).
const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const VIRTIO_BLK_S_OK = 0;
const BLK_REQ_HDR_SIZE = 16;
const SECTOR_SIZE = 512;

// Guest-physical placement of everything the test puts in guest memory.
const RING_GPA = 0x1000;
const HDR_W_GPA = 0x10000;
const HDR_R_GPA = 0x10100;
const STATUS_GPA = 0x10200;
const DATA_W_GPA = 0x20000;
const DATA_R_GPA = 0x30000;
const IO_SIZE = 4096;
const IO_SECTOR = 2048 + 8; // 1 MiB + 4 KiB into the disk

/**
 * Waits for interrupts on a call eventfd: `next()` resolves once the eventfd is readable (and
 * drains it). The eventfd is level-triggered, so a call that happened before `next()` is not lost.
 */
class CallWaiter {
  private watcher: sys.FdWatcher | null = null;
  private wake: (() => void) | null = null;
  constructor(private readonly fd: number) {}

  next(timeoutMs: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.watcher?.stop(); reject(new Error(`no call for ${what} in ${timeoutMs} ms`)); }, timeoutMs);
      this.wake = () => { clearTimeout(timer); resolve(); };
      this.watcher ??= sys.watchFd(this.fd, sys.POLLIN, () => {
        sys.eventfdRead(this.fd);
        this.watcher?.stop();
        const w = this.wake;
        this.wake = null;
        w?.();
      });
      this.watcher.start(sys.POLLIN);
    });
  }

  close(): void {
    this.watcher?.close();
    this.watcher = null;
  }
}

/** Reaps the next used element, sleeping on the call eventfd while the ring has none. */
async function waitUsed(driver: SplitQueueDriver, call: CallWaiter, what: string): Promise<UsedElement> {
  for (;;) {
    const u = driver.popUsed();
    if (u !== null) return u;
    await call.next(5000, what);
  }
}

/** Builds the header of a virtio-blk request at `gpa`. */
function writeBlkHeader(mem: GuestMemory, gpa: number, type: number, sector: number): void {
  mem.writeU32(gpa, type);
  mem.writeU32(gpa + 4, 0);
  mem.writeU64(gpa + 8, BigInt(sector));
}

async function setup(t: TestContext): Promise<{ image: string; socketPath: string } | null> {
  if (!requireTools(t, 'qemu-storage-daemon')) return null;
  const tmp = makeTempDir(t, 'feqsd');
  const image = tmp.file('disk.img');
  await createRawImage(image, IMAGE_SIZE);
  const qsd = await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), numQueues: 1, t });
  return { image, socketPath: qsd.socketPath };
}

test('Frontend vs qemu-storage-daemon: negotiation, GET_CONFIG, 4 KiB write + read through a split ring', async (t) => {
  const env = await setup(t);
  if (env === null) return;
  const { image, socketPath } = env;
  const t0 = performance.now();
  const fdsBefore = sys.openFdCount();

  const fe = await Frontend.connect(socketPath, { timeoutMs: 5000 });
  const memfd = sys.memfdCreate('guest-ram');
  const kick = sys.eventfd();
  const callFd = sys.eventfd();
  const call = new CallWaiter(callFd);
  let region: ReturnType<typeof mapGuestRegion> | null = null;
  try {
    // --- negotiation ------------------------------------------------------------------------
    const n = await negotiate(fe);
    const names = decodeFeatures(n.offeredFeatures, 'blk');
    t.diagnostic(`QSD offers ${names.join(' ')}; protocol 0x${(n.offeredProtocolFeatures ?? 0n).toString(16)}`);
    assert.ok(hasFeature(n.features, VIRTIO_F_VERSION_1), 'VERSION_1 negotiated');
    assert.ok(n.protocolFeatures !== null, 'QSD offers VHOST_USER_F_PROTOCOL_FEATURES');
    const pf = n.protocolFeatures;
    assert.ok(hasProtocolFeature(pf, ProtocolFeature.CONFIG), 'CONFIG negotiated');
    assert.ok(hasProtocolFeature(pf, ProtocolFeature.REPLY_ACK), 'REPLY_ACK negotiated (every set is acked)');
    assert.equal(fe.protocolFeatures, pf);
    if (hasProtocolFeature(pf, ProtocolFeature.MQ)) assert.equal(n.queueNum, 1, 'num-queues=1 export');
    if (n.maxMemSlots !== null) assert.ok(n.maxMemSlots >= 8, `max mem slots ${n.maxMemSlots}`);

    // --- config space: capacity in 512-byte sectors, num_queues -----------------------------
    const config = await fe.getConfig(0, 60);
    assert.equal(config.length, 60);
    const cfg = new DataView(config.buffer, config.byteOffset, config.byteLength);
    assert.equal(cfg.getBigUint64(0, true), BigInt(IMAGE_SIZE / SECTOR_SIZE), 'capacity');
    if (hasFeature(n.features, VIRTIO_BLK_FEATURES.VIRTIO_BLK_F_MQ as number)) assert.equal(cfg.getUint16(34, true), 1, 'num_queues');

    // --- guest memory -----------------------------------------------------------------------
    sys.ftruncate(memfd, MEM_SIZE);
    const desc = { guestPhysAddr: 0n, memorySize: BigInt(MEM_SIZE), userAddr: BigInt(USER_ADDR), mmapOffset: 0n };
    await fe.setMemTable([{ ...desc, fd: memfd }]);
    region = mapGuestRegion(desc, memfd);
    const mem = new GuestMemory([region]);

    // --- queue 0 ----------------------------------------------------------------------------
    const eventIdx = hasFeature(n.features, VIRTIO_RING_F_EVENT_IDX);
    const layout = splitRingLayout(QUEUE_SIZE, RING_GPA);
    const driver = new SplitQueueDriver(mem, QUEUE_SIZE, layout.descGpa, layout.availGpa, layout.usedGpa, { eventIdx });
    await fe.setVringNum(0, QUEUE_SIZE);
    await fe.setVringBase(0, 0);
    await fe.setVringAddr({
      index: 0, flags: 0, logGuestAddr: 0n,
      descUserAddr: BigInt(USER_ADDR + layout.descGpa),
      usedUserAddr: BigInt(USER_ADDR + layout.usedGpa),
      availUserAddr: BigInt(USER_ADDR + layout.availGpa),
    });
    await fe.setVringCall(0, callFd);
    await fe.setVringKick(0, kick);
    await fe.setVringEnable(0, true);

    const submit = (readable: { gpa: number; len: number }[], writable: { gpa: number; len: number }[]): number => {
      // Interrupt wanted for the next completion (EVENT_IDX), as a guest re-enabling callbacks does.
      if (eventIdx) driver.setUsedEvent(driver.usedIdx);
      const head = driver.addChain(readable, writable);
      if (driver.kickNeeded()) sys.eventfdWrite(kick, 1);
      return head;
    };

    // --- write 4 KiB ------------------------------------------------------------------------
    const pattern = randomBytes(IO_SIZE);
    mem.write(DATA_W_GPA, pattern);
    writeBlkHeader(mem, HDR_W_GPA, VIRTIO_BLK_T_OUT, IO_SECTOR);
    mem.writeU8(STATUS_GPA, 0xff);
    const tw = performance.now();
    const wHead = submit([{ gpa: HDR_W_GPA, len: BLK_REQ_HDR_SIZE }, { gpa: DATA_W_GPA, len: IO_SIZE }], [{ gpa: STATUS_GPA, len: 1 }]);
    const wUsed = await waitUsed(driver, call, 'the write');
    const writeMs = performance.now() - tw;
    assert.equal(wUsed.id, wHead);
    assert.equal(wUsed.len, 1, 'a write returns only the status byte');
    assert.equal(mem.readU8(STATUS_GPA), VIRTIO_BLK_S_OK, 'write status');
    const onDisk = await readRange(image, IO_SECTOR * SECTOR_SIZE, IO_SIZE);
    assert.ok(onDisk.equals(pattern), 'the image holds the written bytes at sector * 512');
    assert.ok((await readRange(image, IO_SECTOR * SECTOR_SIZE - 512, 512)).every((b) => b === 0), 'nothing before it');
    assert.ok((await readRange(image, IO_SECTOR * SECTOR_SIZE + IO_SIZE, 512)).every((b) => b === 0), 'nothing after it');
    assert.equal(statSync(image).size, IMAGE_SIZE);

    // --- read it back -----------------------------------------------------------------------
    mem.translate(DATA_R_GPA, IO_SIZE).fill(0xee);
    writeBlkHeader(mem, HDR_R_GPA, VIRTIO_BLK_T_IN, IO_SECTOR);
    mem.writeU8(STATUS_GPA + 1, 0xff);
    const tr = performance.now();
    const rHead = submit([{ gpa: HDR_R_GPA, len: BLK_REQ_HDR_SIZE }], [{ gpa: DATA_R_GPA, len: IO_SIZE }, { gpa: STATUS_GPA + 1, len: 1 }]);
    const rUsed = await waitUsed(driver, call, 'the read');
    const readMs = performance.now() - tr;
    assert.equal(rUsed.id, rHead);
    assert.equal(rUsed.len, IO_SIZE + 1, 'a read returns data + status');
    assert.equal(mem.readU8(STATUS_GPA + 1), VIRTIO_BLK_S_OK, 'read status');
    assert.ok(Buffer.from(mem.translate(DATA_R_GPA, IO_SIZE)).equals(pattern), 'the read returns the written bytes');

    // --- stop the ring ----------------------------------------------------------------------
    assert.equal(driver.popUsed(), null, 'no spurious used entries');
    assert.equal(await fe.getVringBase(0), 2, 'GET_VRING_BASE: next avail index after two requests');
    t.diagnostic(`write ${writeMs.toFixed(2)} ms, read ${readMs.toFixed(2)} ms, whole session ${(performance.now() - t0).toFixed(0)} ms`);
  } finally {
    call.close();
    fe.close();
    region?.unmap();
    for (const fd of [memfd, kick, callFd]) sys.close(fd);
  }
  assert.equal(sys.openFdCount(), fdsBefore, 'fd leak');
});

test('Frontend vs qemu-storage-daemon: GET_CONFIG beyond the config space fails, the connection survives', async (t) => {
  const env = await setup(t);
  if (env === null) return;
  const fdsBefore = sys.openFdCount();
  const fe = await Frontend.connect(env.socketPath, { timeoutMs: 5000 });
  try {
    const n = await negotiate(fe, { setFeatures: false });
    assert.ok(n.protocolFeatures !== null && hasProtocolFeature(n.protocolFeatures, ProtocolFeature.CONFIG));
    // libvhost-user answers a too-large GET_CONFIG with an empty payload (its error signal).
    await assert.rejects(fe.getConfig(0, 256), /GET_CONFIG/);
    const again = await fe.getConfig(0, 8);
    assert.equal(new DataView(again.buffer, again.byteOffset, 8).getBigUint64(0, true), BigInt(IMAGE_SIZE / SECTOR_SIZE));
  } finally {
    fe.close();
  }
  assert.equal(sys.openFdCount(), fdsBefore, 'fd leak');
});
