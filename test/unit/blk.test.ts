import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RamDisk, VIRTIO_BLK_CONFIG_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES, decodeBlkConfig, encodeBlkSerial, type BlockDisk,
} from '../../src/devices/blk/index.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/virtio/features.js';
import { ProtocolFeature } from '../../src/vhost-user/constants.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/queue/index.js';
import { BlkRig, RAM, RAM_SIZE, dwzSegments, pattern } from './blk-harness.js';

const bit = (n: number): bigint => 1n << BigInt(n);
const MIB = 1 << 20;

function rig(t: { after(fn: () => void): void }, disk: BlockDisk = new RamDisk({ size: 8 * MIB }), extra: Partial<ConstructorParameters<typeof BlkRig>[0]> = {}, ackAll = true): BlkRig {
  const r = new BlkRig({ disk, ...extra }, ackAll);
  t.after(() => r.close());
  return r;
}

/** A RamDisk that records every call and the views it was given. */
class SpyDisk extends RamDisk {
  readonly calls: string[] = [];
  readonly views: Uint8Array[] = [];
  override readv(views: readonly Uint8Array[], offset: number): Promise<void> {
    this.calls.push(`readv ${offset}`);
    this.views.push(...views);
    return super.readv(views, offset);
  }
  override writev(views: readonly Uint8Array[], offset: number): Promise<void> {
    this.calls.push(`writev ${offset}`);
    this.views.push(...views);
    return super.writev(views, offset);
  }
  override flush(): Promise<void> {
    this.calls.push('flush');
    return super.flush();
  }
}

test('config space: every field at its virtio_blk.h offset, range-checked reads, only writeback writable', (t) => {
  const r = rig(t, new RamDisk({ size: 8 * MIB }), { numQueues: 3, queueSize: 128 });
  const b = r.backend;
  const cfg = b.getConfig(0, VIRTIO_BLK_CONFIG_SIZE);
  assert.equal(cfg.length, 96);
  const dv = new DataView(cfg.buffer, cfg.byteOffset, cfg.length);
  assert.equal(dv.getBigUint64(0, true), BigInt((8 * MIB) / 512)); // capacity
  assert.equal(dv.getUint32(8, true), 0); // size_max (not offered)
  assert.equal(dv.getUint32(12, true), 126); // seg_max = queue size - 2
  assert.equal(dv.getUint32(20, true), 512); // blk_size
  assert.equal(dv.getUint8(24), 0); // physical_block_exp
  assert.equal(dv.getUint16(26, true), 1); // min_io_size
  assert.equal(dv.getUint8(32), 1); // writeback
  assert.equal(dv.getUint16(34, true), 3); // num_queues
  assert.equal(dv.getUint32(36, true), 0x3fffff); // max_discard_sectors
  assert.equal(dv.getUint32(40, true), 1); // max_discard_seg
  assert.equal(dv.getUint32(44, true), 1); // discard_sector_alignment
  assert.equal(dv.getUint32(48, true), 0x3fffff); // max_write_zeroes_sectors
  assert.equal(dv.getUint32(52, true), 1); // max_write_zeroes_seg
  assert.equal(dv.getUint8(56), 1); // write_zeroes_may_unmap
  assert.deepEqual([...cfg.subarray(57, 96)], new Array(39).fill(0)); // padding, secure erase, zoned
  assert.equal(decodeBlkConfig(cfg).numQueues, 3);
  // QEMU 7.x reads 60 bytes (through write_zeroes_may_unmap + padding).
  assert.deepEqual(decodeBlkConfig(b.getConfig(0, 60)), decodeBlkConfig(cfg));
  assert.throws(() => decodeBlkConfig(cfg.subarray(0, 56)), RangeError);
  // Partial reads are windows of the same bytes.
  assert.deepEqual(b.getConfig(34, 2), cfg.subarray(34, 36));
  assert.deepEqual(b.getConfig(96, 0), new Uint8Array(0));
  assert.throws(() => b.getConfig(90, 7), RangeError);
  assert.throws(() => b.getConfig(-1, 1), RangeError);
  assert.throws(() => b.getConfig(0, 2 ** 40), RangeError);
  // Only the writeback byte is writable.
  assert.throws(() => b.setConfig(0, new Uint8Array(8)), RangeError);
  assert.throws(() => b.setConfig(32, new Uint8Array([0, 0])), RangeError);
  assert.throws(() => b.setConfig(32, new Uint8Array([2])), RangeError);
  b.setConfig(32, new Uint8Array([0]));
  assert.equal(b.getConfig(32, 1)[0], 0);
  assert.deepEqual(b.getConfig(0, 32), cfg.subarray(0, 32));
});

test('features: offered bits follow the options; protocol features', (t) => {
  const rw = rig(t).backend.features();
  for (const f of [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES]) {
    assert.notEqual(rw & bit(f), 0n, `bit ${f}`);
  }
  assert.equal(rw & bit(VIRTIO_BLK_F_RO), 0n);
  assert.equal(rw & bit(VIRTIO_BLK_F_MQ), 0n);
  const ro = rig(t, new RamDisk({ size: MIB }), { readOnly: true, numQueues: 2 }).backend;
  assert.notEqual(ro.features() & bit(VIRTIO_BLK_F_RO), 0n);
  assert.notEqual(ro.features() & bit(VIRTIO_BLK_F_MQ), 0n);
  assert.equal(ro.features() & bit(VIRTIO_BLK_F_DISCARD), 0n);
  const p = ro.protocolFeatures();
  for (const f of [ProtocolFeature.CONFIG, ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.RESET_DEVICE]) {
    assert.notEqual(p & bit(f), 0n);
  }
  assert.equal(p & bit(ProtocolFeature.BACKEND_REQ), 0n);
});

test('OUT then IN round trip over multi-segment chains with different splits (zero-copy views)', async (t) => {
  const disk = new SpyDisk({ size: 8 * MIB });
  const r = rig(t, disk);
  const data = pattern(4096, 3);
  const w = r.submit(VIRTIO_BLK_T_OUT, 10, { out: [data.subarray(0, 512), data.subarray(512, 1536), data.subarray(1536)] });
  let used = await r.run();
  assert.deepEqual(used, [{ id: w.head, len: 1 }]);
  assert.equal(r.status(w), VIRTIO_BLK_S_OK);
  const onDisk = new Uint8Array(4096);
  disk.readSync(onDisk, 10 * 512);
  assert.deepEqual(onDisk, data);

  const rd = r.submit(VIRTIO_BLK_T_IN, 10, { inLens: [1024, 3072] });
  used = await r.run();
  assert.deepEqual(used, [{ id: rd.head, len: 4097 }]);
  assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(rd), data);
  assert.deepEqual(disk.calls, [`writev ${10 * 512}`, `readv ${10 * 512}`]);
  // Every view handed to the disk aliases the guest RAM mapping itself: no bounce buffer.
  const window = r.atomic.memory.regions[0]?.backing.windows[0];
  assert.ok(window !== undefined);
  assert.equal(disk.views.length, 5);
  for (const v of disk.views) assert.equal(v.buffer, window);
  assert.ok(r.called(), 'call eventfd signalled');
});

test('IN of a hole reads zeroes; indirect chains work', async (t) => {
  const r = rig(t);
  const hdr = r.alloc(16);
  r.drvMem.writeU32(hdr, VIRTIO_BLK_T_IN);
  r.drvMem.writeU64(hdr + 8, 100n);
  const buf = r.alloc(1024);
  r.drvMem.translate(buf, 1024).fill(0x55);
  const st = r.alloc(1);
  const table = r.alloc(48);
  const head = r.drv.addIndirectChain(table, [{ gpa: hdr, len: 16 }], [{ gpa: buf, len: 1024 }, { gpa: st, len: 1 }]);
  assert.deepEqual(await r.run(), [{ id: head, len: 1025 }]);
  assert.equal(r.drvMem.readU8(st), VIRTIO_BLK_S_OK);
  assert.ok(r.drvMem.translate(buf, 1024).every((x) => x === 0));
});

test('FLUSH calls the disk; GET_ID returns the NUL-padded serial (truncated to the buffer)', async (t) => {
  const disk = new SpyDisk({ size: MIB });
  const r = rig(t, disk, { serial: 'disk-0123' });
  const f = r.submit(VIRTIO_BLK_T_FLUSH, 0);
  const id = r.submit(VIRTIO_BLK_T_GET_ID, 0, { inLens: [20] });
  const short = r.submit(VIRTIO_BLK_T_GET_ID, 0, { inLens: [4] });
  const used = await r.run();
  assert.equal(used.length, 3);
  assert.deepEqual(disk.calls, ['flush']);
  assert.equal(r.status(f), VIRTIO_BLK_S_OK);
  assert.equal(r.status(id), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(id), encodeBlkSerial('disk-0123'));
  assert.equal(new TextDecoder().decode(r.inData(id)).replace(/\0+$/, ''), 'disk-0123');
  assert.deepEqual([...r.inData(short)], [...new TextEncoder().encode('disk')]);
  assert.equal(encodeBlkSerial('x'.repeat(30)).length, 20);
});

test('DISCARD and WRITE_ZEROES zero the ranges and free RAM-disk chunks; flag and limit checks', async (t) => {
  const disk = new RamDisk({ size: 8 * MIB });
  const r = rig(t, disk);
  await disk.writev([pattern(4 * MIB, 1)], 0);
  assert.equal(disk.allocatedBytes, 4 * MIB);
  const sectorsPerMib = MIB / 512;
  const d = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [dwzSegments([{ sector: sectorsPerMib, num: sectorsPerMib }])] });
  const z = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 2 * sectorsPerMib + 1, num: 3, flags: 1 }])] });
  const badDiscardUnmap = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [dwzSegments([{ sector: 0, num: 1, flags: 1 }])] });
  const unknownFlag = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 0, num: 1, flags: 2 }])] });
  const tooMany = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 0, num: 1 }, { sector: 8, num: 1 }])] });
  const tooBig = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [dwzSegments([{ sector: 0, num: 0x400000 }])] });
  const pastEnd = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 16 * 1024 - 1, num: 2 }])] });
  const badLen = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [new Uint8Array(12)] });
  const used = await r.run();
  assert.equal(used.length, 8);
  assert.equal(r.status(d), VIRTIO_BLK_S_OK);
  assert.equal(r.status(z), VIRTIO_BLK_S_OK);
  assert.equal(r.status(badDiscardUnmap), VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.status(unknownFlag), VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.status(tooMany), VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.status(tooBig), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(pastEnd), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(badLen), VIRTIO_BLK_S_IOERR);
  assert.equal(disk.allocatedBytes, 3 * MIB, 'the discarded chunk was freed');
  const all = new Uint8Array(4 * MIB);
  disk.readSync(all, 0);
  const expect = pattern(4 * MIB, 1);
  expect.fill(0, MIB, 2 * MIB);
  expect.fill(0, 2 * MIB + 512, 2 * MIB + 4 * 512);
  assert.ok(Buffer.compare(all, expect) === 0);
  assert.ok(r.logger.has('DISCARD', 'UNSUPP', 'unmap'));
  assert.ok(r.logger.has('WRITE_ZEROES', 'UNSUPP', 'unknown flags'));
});

test('invalid requests: past end, unaligned, unknown type, short header -> status and a log line naming the type', async (t) => {
  const disk = new SpyDisk({ size: MIB });
  const r = rig(t, disk);
  const last = MIB / 512 - 1;
  const okLast = r.submit(VIRTIO_BLK_T_IN, last, { inLens: [512] });
  const pastEnd = r.submit(VIRTIO_BLK_T_IN, last, { inLens: [1024] });
  const farPast = r.submit(VIRTIO_BLK_T_OUT, 0xffff_ffff_ffff_ffffn, { out: [new Uint8Array(512)] });
  const capacity = r.submit(VIRTIO_BLK_T_IN, MIB / 512, { inLens: [512] });
  const unaligned = r.submit(VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(513)] });
  const unalignedIn = r.submit(VIRTIO_BLK_T_IN, 0, { inLens: [100] });
  const unknown = r.submit(0x42, 0, { inLens: [16] });
  const shortHdr = r.submit(VIRTIO_BLK_T_IN, 0, { headerLen: 8, inLens: [512] });
  const used = await r.run();
  assert.equal(used.length, 8);
  assert.equal(r.status(okLast), VIRTIO_BLK_S_OK);
  for (const x of [pastEnd, farPast, capacity, unaligned, unalignedIn, shortHdr]) assert.equal(r.status(x), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(unknown), VIRTIO_BLK_S_UNSUPP);
  // The used length covers the whole writable part even on error (as QEMU reports it).
  assert.deepEqual(used.find((u) => u.id === pastEnd.head), { id: pastEnd.head, len: 1025 });
  assert.deepEqual(disk.calls, [`readv ${last * 512}`], 'only the valid request reached the disk');
  assert.ok(r.logger.has('IN', 'IOERR', 'past the end'));
  assert.ok(r.logger.has('OUT', 'IOERR', 'multiple of 512'));
  assert.ok(r.logger.has('type 66', 'UNSUPP'));
  assert.ok(r.logger.has('header is 8 bytes'));
});

test('read-only device: writes, discards and write zeroes fail with IOERR and leave the disk untouched', async (t) => {
  const disk = new RamDisk({ size: MIB });
  await disk.writev([pattern(4096, 9)], 0);
  const r = rig(t, disk, { readOnly: true });
  const w = r.submit(VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(4096)] });
  const z = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 0, num: 8 }])] });
  const rd = r.submit(VIRTIO_BLK_T_IN, 0, { inLens: [4096] });
  const f = r.submit(VIRTIO_BLK_T_FLUSH, 0);
  await r.run();
  assert.equal(r.status(w), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(z), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(rd), VIRTIO_BLK_S_OK);
  assert.equal(r.status(f), VIRTIO_BLK_S_OK);
  assert.deepEqual(r.inData(rd), pattern(4096, 9));
  assert.ok(r.logger.has('OUT', 'read-only'));
});

test('a chain without a writable status byte is completed with used length 0', async (t) => {
  const r = rig(t);
  const noStatus = r.submit(VIRTIO_BLK_T_OUT, 0, { out: [new Uint8Array(512)], noStatus: true });
  const next = r.submit(VIRTIO_BLK_T_FLUSH, 0);
  const used = await r.run();
  assert.deepEqual(used, [{ id: noStatus.head, len: 0 }, { id: next.head, len: 1 }]);
  assert.ok(r.logger.has('no writable byte'));
});

test('hostile chains (bad next index, out-of-range buffer, loop) are completed with 0 and the queue keeps serving', async (t) => {
  const r = rig(t);
  const hdr = r.alloc(16);
  r.drvMem.writeU32(hdr, VIRTIO_BLK_T_IN);
  // Head 200 -> next 999 (≥ queue size).
  r.drv.writeDesc(200, hdr, 16, VIRTQ_DESC_F_NEXT, 999);
  r.drv.publish(200);
  // Head 201: buffer beyond guest RAM.
  r.drv.writeDesc(201, RAM + RAM_SIZE - 8, 64, VIRTQ_DESC_F_WRITE, 0);
  r.drv.publish(201);
  // Head 202 <-> 203 loop.
  r.drv.writeDesc(202, hdr, 16, VIRTQ_DESC_F_NEXT, 203);
  r.drv.writeDesc(203, hdr, 16, VIRTQ_DESC_F_NEXT, 202);
  r.drv.publish(202);
  const good = r.submit(VIRTIO_BLK_T_GET_ID, 0, { inLens: [20] });
  const used = await r.run();
  assert.deepEqual(used.slice(0, 3), [{ id: 200, len: 0 }, { id: 201, len: 0 }, { id: 202, len: 0 }]);
  assert.deepEqual(used[3], { id: good.head, len: 21 });
  assert.equal(r.status(good), VIRTIO_BLK_S_OK);
  assert.ok(r.logger.has('malformed chain', 'bad-index'));
  assert.ok(r.logger.has('malformed chain', 'out-of-range'));
  assert.ok(r.logger.has('malformed chain', 'chain-too-long'));
  assert.equal(r.errored(), false);
});

test('an avail index jump marks the ring broken and signals the err eventfd', async (t) => {
  const r = rig(t);
  r.drv.setAvailIdx(1000);
  assert.deepEqual(await r.run(), []);
  assert.equal(r.vrings[0]?.queue.broken, true);
  assert.ok(r.errored());
  assert.ok(r.logger.has('broken', 'avail-idx-jump'));
});

test('disabled or stopped rings are not processed', async (t) => {
  const r = rig(t);
  const v = r.vrings[0];
  assert.ok(v !== undefined);
  v.setEnabled(false);
  const req = r.submit(VIRTIO_BLK_T_FLUSH, 0);
  assert.deepEqual(await r.run(), []);
  v.setEnabled(true);
  assert.deepEqual(await r.run(), [{ id: req.head, len: 1 }]);
});
