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
import type { GuestMemory } from '../../src/memory/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { ProtocolFeature, hasProtocolFeature } from '../../src/vhost-user/constants.js';
import {
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_FEATURES, decodeFeatures, hasFeature,
} from '../../src/virtio/features.js';
import {
  VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_SECTOR_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, decodeBlkConfig,
} from '../../src/devices/blk/index.js';
import { requireTools } from '../helpers/tools.js';
import { createRawImage, expectFilled, readRange, startStorageDaemon } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';

const IMAGE_SIZE = 64 * 1024 * 1024;
const IMAGE_SECTORS = BigInt(IMAGE_SIZE / VIRTIO_BLK_SECTOR_SIZE);
const MEM_SIZE = 16 * 1024 * 1024;
const QUEUE_SIZE = 128;

// Guest-physical placement of everything the test puts in guest memory.
const RING_GPA = 0x1000;
const HDR_W_GPA = 0x10000;
const HDR_R_GPA = 0x10100;
const STATUS_GPA = 0x10200;
const DATA_W_GPA = 0x20000;
const DATA_R_GPA = 0x30000;
const IO_SIZE = 4096;
const IO_SECTOR = 2048 + 8; // 1 MiB + 4 KiB into the disk

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
  const guest = new FrontendMemory(MEM_SIZE);
  let q0: FrontendQueue | null = null;
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
    // Capacity read by hand as well, so this check does not rest on our own decoder alone.
    assert.equal(new DataView(config.buffer, config.byteOffset, 8).getBigUint64(0, true), IMAGE_SECTORS, 'capacity (raw bytes 0..7)');
    const cfg = decodeBlkConfig(config);
    assert.equal(cfg.capacity, IMAGE_SECTORS, 'capacity');
    if (hasFeature(n.features, VIRTIO_BLK_FEATURES.VIRTIO_BLK_F_MQ as number)) assert.equal(cfg.numQueues, 1, 'num_queues');

    // --- guest memory and queue 0 -----------------------------------------------------------
    await fe.setMemTable(guest.regions());
    const mem = guest.memory;
    q0 = await setupQueue(fe, guest, 0, QUEUE_SIZE, RING_GPA, { eventIdx: hasFeature(n.features, VIRTIO_RING_F_EVENT_IDX), enable: true });
    const queue = q0;
    const submit = (readable: { gpa: number; len: number }[], writable: { gpa: number; len: number }[]): number => {
      const head = queue.driver.addChain(readable, writable);
      queue.kick();
      return head;
    };

    // --- write 4 KiB ------------------------------------------------------------------------
    const pattern = randomBytes(IO_SIZE);
    mem.write(DATA_W_GPA, pattern);
    writeBlkHeader(mem, HDR_W_GPA, VIRTIO_BLK_T_OUT, IO_SECTOR);
    mem.writeU8(STATUS_GPA, 0xff);
    const tw = performance.now();
    const wHead = submit([{ gpa: HDR_W_GPA, len: VIRTIO_BLK_OUTHDR_SIZE }, { gpa: DATA_W_GPA, len: IO_SIZE }], [{ gpa: STATUS_GPA, len: 1 }]);
    const wUsed = await queue.nextUsed(5000);
    const writeMs = performance.now() - tw;
    assert.equal(wUsed.id, wHead);
    assert.equal(wUsed.len, 1, 'a write returns only the status byte');
    assert.equal(mem.readU8(STATUS_GPA), VIRTIO_BLK_S_OK, 'write status');
    const ioOffset = IO_SECTOR * VIRTIO_BLK_SECTOR_SIZE;
    const onDisk = await readRange(image, ioOffset, IO_SIZE);
    assert.ok(onDisk.equals(pattern), 'the image holds the written bytes at sector * 512');
    await expectFilled(image, ioOffset - 512, 512, 0, 'nothing before it');
    await expectFilled(image, ioOffset + IO_SIZE, 512, 0, 'nothing after it');
    assert.equal(statSync(image).size, IMAGE_SIZE);

    // --- read it back -----------------------------------------------------------------------
    mem.translate(DATA_R_GPA, IO_SIZE).fill(0xee);
    writeBlkHeader(mem, HDR_R_GPA, VIRTIO_BLK_T_IN, IO_SECTOR);
    mem.writeU8(STATUS_GPA + 1, 0xff);
    const tr = performance.now();
    const rHead = submit([{ gpa: HDR_R_GPA, len: VIRTIO_BLK_OUTHDR_SIZE }], [{ gpa: DATA_R_GPA, len: IO_SIZE }, { gpa: STATUS_GPA + 1, len: 1 }]);
    const rUsed = await queue.nextUsed(5000);
    const readMs = performance.now() - tr;
    assert.equal(rUsed.id, rHead);
    assert.equal(rUsed.len, IO_SIZE + 1, 'a read returns data + status');
    assert.equal(mem.readU8(STATUS_GPA + 1), VIRTIO_BLK_S_OK, 'read status');
    assert.ok(Buffer.from(mem.translate(DATA_R_GPA, IO_SIZE)).equals(pattern), 'the read returns the written bytes');

    // --- stop the ring ----------------------------------------------------------------------
    assert.equal(queue.driver.popUsed(), null, 'no spurious used entries');
    assert.equal(await fe.getVringBase(0), 2, 'GET_VRING_BASE: next avail index after two requests');
    t.diagnostic(`write ${writeMs.toFixed(2)} ms, read ${readMs.toFixed(2)} ms, whole session ${(performance.now() - t0).toFixed(0)} ms`);
  } finally {
    q0?.close();
    fe.close();
    guest.close();
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
    assert.equal(new DataView(again.buffer, again.byteOffset, 8).getBigUint64(0, true), IMAGE_SECTORS);
  } finally {
    fe.close();
  }
  assert.equal(sys.openFdCount(), fdsBefore, 'fd leak');
});
