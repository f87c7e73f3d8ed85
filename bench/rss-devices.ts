// One process serving N vhost-user-blk devices (each on its own sparse image with its own io_uring),
// for the idle-RSS figure of `npm run bench`. Prints "ready" once every socket listens, then idles
// until SIGTERM.
// usage: node dist/bench/rss-devices.js DIR N
import { writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { VhostUserDaemon } from '../src/backend/index.js';
import { FileDisk, VhostUserBlkBackend } from '../src/devices/blk/index.js';
import { silentLogger } from '../src/log.js';

const dir = process.argv[2] ?? '/dev/shm';
const n = Number(process.argv[3] ?? '1');
const daemons: VhostUserDaemon[] = [];
const disks: FileDisk[] = [];
for (let i = 0; i < n; i++) {
  const img = join(dir, `rss-${i}.img`);
  writeFileSync(img, '');
  truncateSync(img, 64 << 20);
  const disk = FileDisk.open(img, { aio: 'io_uring' });
  disks.push(disk);
  const d = new VhostUserDaemon(`blk${i}`, new VhostUserBlkBackend({ disk, logger: silentLogger }), { logger: silentLogger });
  d.serve(join(dir, `rss-${i}.sock`));
  daemons.push(d);
}
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void (async () => {
    for (const d of daemons) await d.stop();
    for (const k of disks) await k.close();
    process.exit(0);
  })();
});
