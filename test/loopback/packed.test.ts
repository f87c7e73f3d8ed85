// Packed virtqueues (VIRTIO_F_RING_PACKED) served by the daemon: our front-end negotiates the
// packed layout with the blk daemon and drives a packed ring through several wraps, with and
// without EVENT_IDX; GET_VRING_BASE returns the packed encoding and the ring resumes from it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupPackedQueue } from '../../src/driver/frontend-driver.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT, negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { RamDisk, VhostUserBlkBackend, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../src/devices/blk/index.js';
import { VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, featureMask } from '../../src/virtio/features.js';
import { decodePackedState } from '../../src/queue/index.js';
import { silentLogger } from '../../src/log.js';

const QSIZE = 16;

for (const eventIdx of [true, false]) {
  test(`packed ring on the blk daemon (EVENT_IDX ${eventIdx ? 'on' : 'off'}): 100 writes and reads over 6+ wraps of a 16-entry ring, then GET_VRING_BASE`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'vu-packed-'));
    const disk = new RamDisk({ size: 4 << 20 });
    const daemon = new VhostUserDaemon('blk', new VhostUserBlkBackend({ disk, logger: silentLogger }), { logger: silentLogger });
    const sock = join(dir, 'blk.sock');
    daemon.serve(sock);
    const fe = await Frontend.connect(sock);
    const mem = new FrontendMemory(4 << 20);
    t.after(async () => { fe.close(); await daemon.stop(); await disk.close(); mem.close(); rmSync(dir, { recursive: true, force: true }); });
    const want = (~FEATURES_NEEDING_FRONTEND_SUPPORT | featureMask(VIRTIO_F_RING_PACKED)) & (eventIdx ? ~0n : ~featureMask(VIRTIO_RING_F_EVENT_IDX));
    const n = await negotiate(fe, { wantFeatures: want });
    assert.ok((n.features & featureMask(VIRTIO_F_RING_PACKED)) !== 0n, 'RING_PACKED negotiated');
    await fe.setMemTable(mem.regions());
    const q = await setupPackedQueue(fe, mem, 0, QSIZE, 0x10000, { eventIdx, enable: true });
    const hdr = (type: number, sector: number): Buffer => {
      const b = Buffer.alloc(16);
      b.writeUInt32LE(type, 0);
      b.writeBigUInt64LE(BigInt(sector), 8);
      return b;
    };
    for (let i = 0; i < 100; i++) {
      const data = Buffer.alloc(512, i & 0xff);
      mem.memory.write(0x100000, hdr(VIRTIO_BLK_T_OUT, i));
      mem.memory.write(0x101000, data);
      const w = q.driver.addChain([{ gpa: 0x100000, len: 16 }, { gpa: 0x101000, len: 512 }], [{ gpa: 0x100020, len: 1 }]);
      q.kick();
      assert.deepEqual(await q.nextUsed(), { id: w, len: 1 });
      assert.equal(mem.memory.readU8(0x100020), VIRTIO_BLK_S_OK);
      mem.memory.write(0x102000, hdr(VIRTIO_BLK_T_IN, i));
      const r = q.driver.addChain([{ gpa: 0x102000, len: 16 }], [{ gpa: 0x103000, len: 512 }, { gpa: 0x102020, len: 1 }]);
      q.kick();
      assert.deepEqual(await q.nextUsed(), { id: r, len: 513 });
      assert.ok(Buffer.from(mem.memory.translate(0x103000, 512)).equals(data), `sector ${i}`);
    }
    // 600 descriptors went through a 16-entry ring: both positions wrapped; the state says where.
    const base = decodePackedState(await fe.getVringBase(0));
    assert.equal(base.nextAvail, 600 % QSIZE);
    assert.equal(base.nextUsed, 600 % QSIZE);
    assert.equal(base.availWrap, Math.floor(600 / QSIZE) % 2 === 0);
    q.close();
  });
}
