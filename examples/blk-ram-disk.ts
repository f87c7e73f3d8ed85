/**
 * Example: serve a virtio-blk RAM disk programmatically and do one write and one read through it
 * with this package's front-end, as a VMM would (guest memory in a shared memfd, a split ring).
 *
 * Run: npx tsc -p . && node dist/examples/blk-ram-disk.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Frontend, VhostUserDaemon, negotiate } from 'vhost-user';
import { FrontendMemory, setupQueue } from 'vhost-user/driver';
import {
  RamDisk, VhostUserBlkBackend, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, decodeBlkConfig,
} from 'vhost-user/devices/blk';

/** The device this example serves: virtio-blk over a 16 MiB RAM disk. */
export function createRamDiskDevice(): VhostUserBlkBackend {
  return new VhostUserBlkBackend({ disk: new RamDisk({ size: 16 << 20 }) });
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vu-blk-example-'));
  const socketPath = join(dir, 'blk.sock');
  const daemon = new VhostUserDaemon('blk', createRamDiskDevice());
  daemon.serve(socketPath);

  const fe = await Frontend.connect(socketPath);
  const mem = new FrontendMemory(4 << 20);
  const { features } = await negotiate(fe);
  await fe.setMemTable(mem.regions());
  const config = decodeBlkConfig(await fe.getConfig(0, 60));
  console.log(`capacity: ${config.capacity} sectors`);
  const q = await setupQueue(fe, mem, 0, 64, 0x1000, { eventIdx: (features & (1n << 29n)) !== 0n, enable: true });

  // A request is a 16-byte header {type, reserved, sector}, data buffers, and a status byte.
  const request = async (type: number, sector: number, data: { gpa: number; len: number }): Promise<number> => {
    const hdr = 0x10000;
    const status = 0x10100;
    mem.memory.writeU32(hdr, type);
    mem.memory.writeU32(hdr + 4, 0);
    mem.memory.writeU64(hdr + 8, BigInt(sector));
    if (type === VIRTIO_BLK_T_OUT) q.driver.addChain([{ gpa: hdr, len: 16 }, data], [{ gpa: status, len: 1 }]);
    else q.driver.addChain([{ gpa: hdr, len: 16 }], [data, { gpa: status, len: 1 }]);
    q.kick();
    await q.nextUsed();
    return mem.memory.readU8(status);
  };

  mem.memory.write(0x20000, new TextEncoder().encode('hello, virtio-blk'.padEnd(512, '.')));
  const w = await request(VIRTIO_BLK_T_OUT, 8, { gpa: 0x20000, len: 512 });
  const r = await request(VIRTIO_BLK_T_IN, 8, { gpa: 0x30000, len: 512 });
  const text = new TextDecoder().decode(mem.memory.translate(0x30000, 17));
  console.log(`write ${w === VIRTIO_BLK_S_OK ? 'ok' : 'failed'}, read ${r === VIRTIO_BLK_S_OK ? 'ok' : 'failed'}: ${text}`);

  q.close();
  fe.close();
  await daemon.stop();
  mem.close();
  rmSync(dir, { recursive: true, force: true });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
