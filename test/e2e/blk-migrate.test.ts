/**
 * Live migration end to end: a guest writing to our vhost-user-blk is migrated between two QEMU
 * processes (TCG), each with its own `vhost-user-blk` daemon on the same image, over a Unix socket
 * while it writes. The destination daemon runs with `--incoming` (it takes the image lock at the
 * guest's first request there; the source's daemon releases it when its rings stop during the
 * migration). After the switch-over the guest keeps writing on the destination, then re-reads
 * every block against the md5 it kept in (migrated) RAM; the host checks the image's sha256.
 * Precopy (dirty-page logging through the daemon's log) and postcopy (postcopy-ram,
 * migrate-start-postcopy: the destination daemon's userfaultfd).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { startQemu, vhostUserBlkArgs, type QemuHandle } from '../helpers/qemu.js';
import { createRawImage, sha256Range } from '../helpers/qsd.js';
import { makeTempDir } from '../helpers/tmp.js';
import { startOurDaemon } from '../helpers/our-daemon.js';
import { QmpClient, qmpArgs, type QmpEvent } from '../helpers/qmp.js';
import { waitForUnixListener } from '../helpers/process.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const BLOCKS = 100;
/** Small guest RAM keeps two TCG guests and the RAM transfer within the time budget. */
const MEM_MB = 128;

function lastIter(vm: QemuHandle): number {
  const all = [...vm.output.matchAll(/VTEST-PROGRESS blk-migrate iter=(\d+)\n/g)];
  return all.length === 0 ? 0 : Number(all[all.length - 1]![1]);
}

const migrationStatus = (want: string) => (e: QmpEvent): boolean =>
  e.event === 'MIGRATION' && (e.data?.status === want || e.data?.status === 'failed');

async function migrate(t: TestContext, postcopy: boolean): Promise<void> {
  const tmp = makeTempDir(t, postcopy ? 'blkpost' : 'blkmig');
  const image = tmp.file('disk.img');
  await createRawImage(image, 32 * MiB);
  const sockA = tmp.socketPath('blk-src');
  const sockB = tmp.socketPath('blk-dst');
  const srcDaemon = await startOurDaemon('blk', sockA, ['--blk-file', image], t);
  // Same image, while the source's daemon holds its lock: the destination defers taking it.
  const dstDaemon = await startOurDaemon('blk', sockB, ['--blk-file', image, '--incoming'], t);
  const qmpA = tmp.socketPath('qmp-src');
  const qmpB = tmp.socketPath('qmp-dst');
  const migSock = tmp.socketPath('mig');
  const common = { test: 'blk-migrate', params: { blocks: BLOCKS }, memMb: MEM_MB, t };
  const src = await startQemu({ ...common, args: [...vhostUserBlkArgs(sockA), ...qmpArgs(qmpA)] });
  const dst = await startQemu({ ...common, args: [...vhostUserBlkArgs(sockB), ...qmpArgs(qmpB), '-incoming', `unix:${migSock}`] });
  await waitForUnixListener(qmpA, 20_000, src.proc);
  await waitForUnixListener(qmpB, 20_000, dst.proc);
  const qa = await QmpClient.connect(qmpA);
  const qb = await QmpClient.connect(qmpB);
  t.after(() => { qa.close(); qb.close(); });
  const caps = (names: string[]) => ({ capabilities: names.map((capability) => ({ capability, state: true })) });
  await qa.execute('migrate-set-capabilities', caps(postcopy ? ['events', 'postcopy-ram'] : ['events']));
  if (postcopy) await qb.execute('migrate-set-capabilities', caps(['postcopy-ram']));
  const diag = (): string => `\n--- source QEMU\n${src.diagnostics()}\n--- destination QEMU\n${dst.diagnostics()}\n` +
    `--- source daemon\n${srcDaemon.proc.diagnostics()}\n--- destination daemon\n${dstDaemon.proc.diagnostics()}`;

  // Migrate while the guest writes: after its 5th block.
  await src.waitFor(/VTEST-PROGRESS blk-migrate iter=5\n/, 120_000);
  const t0 = performance.now();
  await qa.execute('migrate', { uri: `unix:${migSock}` });
  const startIter = lastIter(src);
  if (postcopy) {
    await qa.waitEvent(migrationStatus('active'), 30_000, 'migration active');
    await qa.execute('migrate-start-postcopy');
    const ev = await qa.waitEvent(migrationStatus('postcopy-active'), 60_000, 'postcopy active');
    assert.equal(ev.data?.status, 'postcopy-active', `postcopy did not start${diag()}`);
  }
  const done = await qa.waitEvent(migrationStatus('completed'), 60_000, 'migration completed');
  assert.equal(done.data?.status, 'completed', `migration failed${diag()}`);
  const migratedAtIter = lastIter(src);
  const migrationMs = performance.now() - t0;

  const r = await dst.result(90_000);
  assert.ok(r.pass, `guest failed after migration: ${r.line}${diag()}`);
  assert.ok(lastIter(dst) > 0, `the guest wrote on the destination after the switch-over${diag()}`);
  assert.ok(migratedAtIter > startIter || postcopy, `the guest wrote during the migration (blocks ${startIter} -> ${migratedAtIter})`);
  assert.equal(r.details.blocks, String(BLOCKS));
  assert.equal(r.details.sha256, await sha256Range(image, 0, BLOCKS * BLOCK), `guest and host checksums differ${diag()}`);
  // Dirty logging on the source, the image lock handed over between the daemons.
  assert.match(srcDaemon.proc.stderr, /dirty logging started/, diag());
  assert.match(srcDaemon.proc.stderr, /image lock released/, diag());
  assert.match(dstDaemon.proc.stderr, /image lock taken/, diag());
  if (postcopy) assert.match(dstDaemon.proc.stderr, /postcopy: listening[^]*postcopy: [1-9]\d* region\(s\) registered with the userfaultfd[^]*postcopy: ended/, diag());
  assert.equal(srcDaemon.proc.exitStatusNow, undefined, `source daemon died${diag()}`);
  assert.equal(dstDaemon.proc.exitStatusNow, undefined, `destination daemon died${diag()}`);
  t.diagnostic(`${postcopy ? 'postcopy' : 'precopy'}: migration ${migrationMs.toFixed(0)} ms, blocks written before/during/after: ` +
    `${startIter}/${migratedAtIter - startIter}/${BLOCKS - migratedAtIter}`);
  await src.stop();
}

test('live migration (precopy) of a guest writing to our vhost-user-blk: two QEMUs, two daemons on one image; data verifies', { timeout: 240_000 }, async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  await migrate(t, false);
});

test('postcopy live migration (postcopy-ram, migrate-start-postcopy) of a guest writing to our vhost-user-blk: data verifies', { timeout: 240_000 }, async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  await migrate(t, true);
});
