// Data buffers in the wrong direction for the request type must fail the request: an OUT whose data
// the device may only write would otherwise be reported OK with nothing written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RamDisk, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/devices/blk/index.js';
import { BlkRig, dwzSegments, pattern } from './blk-harness.js';

const MIB = 1 << 20;

test('OUT with device-writable data and IN with device-readable data complete with IOERR; nothing is written', async (t) => {
  const disk = new RamDisk({ size: MIB });
  const before = pattern(4096, 3);
  await disk.writev([before], 0);
  const r = new BlkRig({ disk });
  t.after(() => r.close());
  const outWritable = r.submit(VIRTIO_BLK_T_OUT, 0, { inLens: [512] });
  const outBoth = r.submit(VIRTIO_BLK_T_OUT, 1, { out: [new Uint8Array(512)], inLens: [512] });
  const inReadable = r.submit(VIRTIO_BLK_T_IN, 0, { out: [new Uint8Array(512)] });
  const inBoth = r.submit(VIRTIO_BLK_T_IN, 0, { out: [new Uint8Array(512)], inLens: [512] });
  const dwzWritable = r.submit(VIRTIO_BLK_T_WRITE_ZEROES, 0, { out: [dwzSegments([{ sector: 0, num: 8 }])], inLens: [16] });
  const discardWritable = r.submit(VIRTIO_BLK_T_DISCARD, 0, { out: [dwzSegments([{ sector: 0, num: 8 }])], inLens: [16] });
  const good = r.submit(VIRTIO_BLK_T_OUT, 16, { out: [pattern(512, 5)] });
  const used = await r.run();
  assert.equal(used.length, 7);
  for (const x of [outWritable, outBoth, inReadable, inBoth, dwzWritable, discardWritable]) assert.equal(r.status(x), VIRTIO_BLK_S_IOERR);
  assert.equal(r.status(good), VIRTIO_BLK_S_OK);
  // Used length: the writable bytes, never "513 bytes OK".
  assert.deepEqual(used.find((u) => u.id === outWritable.head), { id: outWritable.head, len: 513 });
  const after = new Uint8Array(4096);
  await disk.readv([after], 0);
  assert.deepEqual(after, before, 'the rejected requests changed nothing');
  assert.ok(r.logger.has('OUT', 'IOERR', 'device-writable data'));
  assert.ok(r.logger.has('IN', 'IOERR', 'device-readable data'));
});
