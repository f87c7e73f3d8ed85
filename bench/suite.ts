// `npm run bench`: one table, every figure measured in this run. vhost-user-bench (our C-free
// front-end) drives our vhost-user-blk and qemu-storage-daemon (aio=threads and aio=io_uring) on the
// same image on tmpfs: randread / randwrite, QD 1 / 32, 1 / 2 queues (and randread on a disk-backed
// file system); IOPS, mean/p50/p99 latency and the
// back-end's CPU µs per request (from /proc/PID/stat). Then idle RSS of one daemon and of one process
// serving 8 devices, against bare `node`. Ratios are against qemu-storage-daemon aio=io_uring in the
// same run: on a shared machine they are the meaningful figures, absolute numbers are not.
//
// Each point is the best (highest IOPS) of --rounds runs, back-ends interleaved round by round:
// on a shared machine interference only ever makes a run slower.
// usage: node dist/bench/suite.js [--runtime S] [--rounds N] [--write-results] [--profile] [--quick]
//   --write-results  also write bench/RESULTS.md (table, machine, targets, profile)
//   --profile        one extra run of ours under --cpu-prof (randread QD32): top functions by self time
//   --quick          randread only, 1 queue (a smoke run)
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { BlkLoadResult } from '../src/driver/blk-load.js';
import { summarizeProfile } from './profile-summary.js';

const { values } = parseArgs({
  options: {
    runtime: { type: 'string', default: '2' }, rounds: { type: 'string', default: '3' }, 'write-results': { type: 'boolean' }, profile: { type: 'boolean' }, quick: { type: 'boolean' },
  },
});
const RUNTIME = Number(values.runtime);
const ROUNDS = Number(values.rounds);
const root = fileURLToPath(new URL('../..', import.meta.url));
const benchCli = join(root, 'dist/src/cli/bench.js');
const blkCli = join(root, 'dist/src/cli/blk.js');
const dir = mkdtempSync('/dev/shm/vu-bench-');
const IMG = join(dir, 'disk.img');
writeFileSync(IMG, '');
truncateSync(IMG, 256 << 20);
// Filled once so reads hit allocated tmpfs pages for every back-end alike.
execFileSync('dd', ['if=/dev/zero', `of=${IMG}`, 'bs=1M', 'count=256', 'conv=notrunc', 'status=none']);

// A second image on the disk-backed file system of the checkout (page cache): there io_uring
// completes cached reads inside io_uring_enter, while on tmpfs it hands every request to a kernel
// worker thread. Both matter, and they favour different designs.
const diskDir = mkdtempSync(join(root, '.bench-'));
const DISK_IMG = join(diskDir, 'disk.img');
execFileSync('dd', ['if=/dev/zero', `of=${DISK_IMG}`, 'bs=1M', 'count=256', 'status=none']);
const diskFs = execFileSync('stat', ['-f', '-c', '%T', diskDir], { encoding: 'utf8' }).trim();

// 'ours-ring': our daemon with --inline-io off, every request through io_uring (what the inline
// path is worth; 1 queue only).
type Backend = 'ours' | 'ours-ring' | 'qsd-threads' | 'qsd-io_uring';
type Image = 'tmpfs' | 'disk';
interface Row { backend: Backend; rw: string; qd: number; queues: number; image: Image; r: BlkLoadResult }

function waitFor(pred: () => boolean, what: string, p: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = (): void => {
      if (pred()) return resolve();
      if (p.exitCode !== null || Date.now() - started > 15_000) return reject(new Error(`${what} did not come up`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const done = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  await done;
}

function startBackend(b: Backend, queues: number, sock: string, img: string, extraNode: string[] = []): ChildProcess {
  if (b === 'ours' || b === 'ours-ring') {
    const args = [...extraNode, blkCli, '--socket-path', sock, '--blk-file', img, '--num-queues', String(queues), '--log-level', 'warn'];
    if (b === 'ours-ring') args.push('--inline-io', 'off');
    if (queues > 1) args.push('--threads', String(queues));
    return spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const aio = b === 'qsd-threads' ? 'threads' : 'io_uring';
  return spawn('qemu-storage-daemon', ['--blockdev', `driver=file,node-name=f0,filename=${img},aio=${aio}`,
    '--export', `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${sock},writable=on,num-queues=${queues}`],
  { stdio: ['ignore', 'ignore', 'inherit'] });
}

async function measure(b: Backend, rw: string, qd: number, queues: number, image: Image, extraNode: string[] = []): Promise<BlkLoadResult> {
  const sock = join(dir, `${b}.sock`);
  rmSync(sock, { force: true });
  const p = startBackend(b, queues, sock, image === 'tmpfs' ? IMG : DISK_IMG, extraNode);
  try {
    await waitFor(() => existsSync(sock), b, p);
    const out = execFileSync(process.execPath, [benchCli, '-s', sock, '--rw', rw, '--iodepth', String(qd), '--num-queues', String(queues),
      '--runtime', String(RUNTIME), '--backend-pid', String(p.pid), '--json'], { encoding: 'utf8' });
    return JSON.parse(out) as BlkLoadResult;
  } finally {
    await stop(p);
  }
}

/** Resident memory in KiB: all of it, and the private anonymous part (RssAnon). */
interface Rss { total: number; anon: number }

function rssKiB(pid: number): Rss {
  const st = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(st)?.[1] ?? NaN);
  return { total: field('VmRSS'), anon: field('RssAnon') };
}

/** RSS of a process once it printed `ready` (or its socket exists) and settled for a moment. */
async function idleRss(cmd: string, args: string[], ready: () => boolean): Promise<Rss> {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout?.on('data', (b: Buffer) => { out += b.toString(); });
  try {
    await waitFor(() => ready() || out.includes('ready'), cmd, p);
    // Idle means after start-up work settled; this is a bench reading, not a test.
    await new Promise((r) => setTimeout(r, 500));
    return rssKiB(p.pid as number);
  } finally {
    await stop(p);
  }
}

const backends: Backend[] = ['ours', 'qsd-threads', 'qsd-io_uring'];
const workloads: Array<{ rw: string; qd: number; queues: number; image: Image }> = [];
for (const queues of values.quick === true ? [1] : [1, 2]) {
  for (const rw of values.quick === true ? ['randread'] : ['randread', 'randwrite']) {
    for (const qd of [1, 32]) workloads.push({ rw, qd, queues, image: 'tmpfs' });
  }
}
for (const qd of [1, 32]) workloads.push({ rw: 'randread', qd, queues: 1, image: 'disk' });

const rows: Row[] = [];
for (const w of workloads) {
  const best = new Map<Backend, BlkLoadResult>();
  const these: Backend[] = w.image === 'disk' ? ['ours', 'ours-ring', 'qsd-io_uring']
    : w.queues === 1 ? ['ours', 'ours-ring', 'qsd-threads', 'qsd-io_uring'] : backends;
  for (let round = 0; round < ROUNDS; round++) {
    for (const b of these) {
      const r = await measure(b, w.rw, w.qd, w.queues, w.image);
      const prev = best.get(b);
      if (prev === undefined || r.iops > prev.iops) best.set(b, r);
      process.stderr.write(`  ${b} ${w.rw} QD${w.qd} q${w.queues} ${w.image} round ${round + 1}: ${(r.iops / 1000).toFixed(1)}k IOPS\n`);
    }
  }
  for (const b of these) rows.push({ backend: b, ...w, r: best.get(b) as BlkLoadResult });
}

const bareNode = await idleRss(process.execPath, ['-e', 'console.log("ready"); setInterval(() => {}, 1 << 30)'], () => false);
const oneSock = join(dir, 'idle.sock');
const oneDaemon = await idleRss(process.execPath, [blkCli, '--socket-path', oneSock, '--blk-file', IMG, '--log-level', 'warn'], () => existsSync(oneSock));
const rssScript = join(root, 'dist/bench/rss-devices.js');
const inProc1 = await idleRss(process.execPath, [rssScript, dir, '1'], () => false);
const inProc8 = await idleRss(process.execPath, [rssScript, dir, '8'], () => false);

let profile = '';
if (values.profile === true) {
  const profDir = join(dir, 'prof');
  await measure('ours', 'randread', 32, 1, 'tmpfs', ['--cpu-prof', `--cpu-prof-dir=${profDir}`]);
  const f = readdirSync(profDir).find((x) => x.endsWith('.cpuprofile'));
  if (f !== undefined) profile = summarizeProfile(JSON.parse(readFileSync(join(profDir, f), 'utf8')), 15);
}

// ---- the table ----
const f1 = (n: number): string => n.toFixed(1);
const ratio = (a: number, b: number): string => (b > 0 ? `${(a / b).toFixed(2)}x` : '-');
const lines: string[] = [];
lines.push('| back-end | image | rw | QD | queues | IOPS | mean µs | p50 µs | p99 µs | CPU µs/req | IOPS vs QSD io_uring | mean latency vs QSD io_uring | CPU vs QSD io_uring |');
lines.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const row of rows) {
  const ref = rows.find((x) => x.backend === 'qsd-io_uring' && x.rw === row.rw && x.qd === row.qd && x.queues === row.queues && x.image === row.image)?.r;
  const cpu = row.r.backend?.cpuUsPerRequest ?? NaN;
  const refCpu = ref?.backend?.cpuUsPerRequest ?? NaN;
  const name = row.backend === 'ours' ? `ours (io_uring${row.queues > 1 ? `, --threads ${row.queues}` : ''})`
    : row.backend === 'ours-ring' ? 'ours (io_uring, --inline-io off)' : row.backend;
  lines.push(`| ${name} | ${row.image === 'tmpfs' ? 'tmpfs' : diskFs} | ${row.rw} | ${row.qd} | ${row.queues} | ` +
    `${Math.round(row.r.iops)} | ${f1(row.r.latencyUs.mean)} | ${f1(row.r.latencyUs.p50)} | ${f1(row.r.latencyUs.p99)} | ${f1(cpu)} | ` +
    `${ref ? ratio(row.r.iops, ref.iops) : '-'} | ${ref ? ratio(row.r.latencyUs.mean, ref.latencyUs.mean) : '-'} | ${ref ? ratio(cpu, refCpu) : '-'} |`);
}
lines.push('');
lines.push('| idle RSS | RSS MiB | vs bare node | private (RssAnon) MiB | vs bare node |');
lines.push('|---|---:|---:|---:|---:|');
const mib = (k: number): string => (k / 1024).toFixed(1);
const rssRow = (what: string, r: Rss, extra = ''): string =>
  `| ${what} | ${mib(r.total)} | +${mib(r.total - bareNode.total)}${extra} | ${mib(r.anon)} | +${mib(r.anon - bareNode.anon)} |`;
lines.push(`| bare \`node\` | ${mib(bareNode.total)} | - | ${mib(bareNode.anon)} | - |`);
lines.push(rssRow('vhost-user-blk daemon (one device, io_uring)', oneDaemon));
lines.push(rssRow('one process, 1 device', inProc1));
lines.push(rssRow('one process, 8 devices', inProc8, ` (+${mib((inProc8.total - inProc1.total) / 7)} per further device)`));
const table = lines.join('\n');
process.stdout.write(`${table}\n`);
if (profile !== '') process.stdout.write(`\nours, randread QD32, top functions by self time:\n${profile}\n`);

// ---- targets (issue 10) ----
function pick(b: Backend, rw: string, qd: number, image: Image = 'tmpfs'): BlkLoadResult | undefined {
  return rows.find((x) => x.backend === b && x.rw === rw && x.qd === qd && x.queues === 1 && x.image === image)?.r;
}
const targets: string[] = [];
const rr32 = pick('ours', 'randread', 32), qr32 = pick('qsd-io_uring', 'randread', 32);
if (rr32 && qr32) {
  targets.push(`randread QD32 IOPS ≥ 1.0x QSD io_uring: ${ratio(rr32.iops, qr32.iops)} ${rr32.iops >= qr32.iops ? 'met' : 'MISSED'}`);
  const c = rr32.backend?.cpuUsPerRequest ?? NaN, qc = qr32.backend?.cpuUsPerRequest ?? NaN;
  targets.push(`randread QD32 CPU/request ≤ 1.0x QSD io_uring: ${ratio(c, qc)} ${c <= qc ? 'met' : 'MISSED'}`);
}
const rr1 = pick('ours', 'randread', 1), qr1 = pick('qsd-io_uring', 'randread', 1);
if (rr1 && qr1) targets.push(`randread QD1 mean latency ≤ 1.0x QSD io_uring: ${ratio(rr1.latencyUs.mean, qr1.latencyUs.mean)} ${rr1.latencyUs.mean <= qr1.latencyUs.mean ? 'met' : 'MISSED'}`);
const rd1 = pick('ours', 'randread', 1, 'disk'), qd1 = pick('qsd-io_uring', 'randread', 1, 'disk');
if (rd1 && qd1) targets.push(`(same, image on ${diskFs}) randread QD1 mean latency ≤ 1.0x QSD io_uring: ${ratio(rd1.latencyUs.mean, qd1.latencyUs.mean)} ${rd1.latencyUs.mean <= qd1.latencyUs.mean ? 'met' : 'MISSED'}`);
const rw32 = pick('ours', 'randwrite', 32), qw32 = pick('qsd-io_uring', 'randwrite', 32);
if (rw32 && qw32) targets.push(`randwrite QD32 IOPS ≥ 1.0x QSD io_uring: ${ratio(rw32.iops, qw32.iops)} ${rw32.iops >= qw32.iops ? 'met' : 'MISSED'}`);
targets.push(`idle daemon RSS ≤ bare node + 10 MiB: +${mib(oneDaemon.total - bareNode.total)} MiB ${oneDaemon.total - bareNode.total <= 10 * 1024 ? 'met' : 'MISSED'}` +
  ` (private memory +${mib(oneDaemon.anon - bareNode.anon)} MiB; the rest is file-backed pages of the node binary shared by every node process)`);
const perDev = (inProc8.total - inProc1.total) / 7;
targets.push(`each further device ≤ 2 MiB: +${mib(perDev)} MiB ${perDev <= 2 * 1024 ? 'met' : 'MISSED'}`);
process.stdout.write(`\n${targets.map((t) => `- ${t}`).join('\n')}\n`);

if (values['write-results'] === true) {
  const qsdVersion = execFileSync('qemu-storage-daemon', ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
  const machineDoc = '/work/.library/env/machines/node.md';
  const machine = existsSync(machineDoc) ? readFileSync(machineDoc, 'utf8').split('\n').filter((l) => l.startsWith('Size:') || l.startsWith('# ')).join('\n') : '';
  const cpuModel = cpus()[0]?.model ?? 'unknown';
  const md = `# Benchmark results\n\nGenerated by \`npm run bench -- --write-results\` on ${new Date().toISOString()}.\n` +
    `Every figure below comes from that one run; ratios compare back-ends measured in the same run.\n\n` +
    `## Machine\n\n${machine}\n\n- nproc: ${cpus().length} (${cpuModel}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB\n- kernel: ${release()}\n` +
    `- node: ${process.version}; ${qsdVersion}\n- load average at the end of the run: ${loadavg().map((x) => x.toFixed(2)).join(' ')} ` +
    `(the machine is shared; absolute numbers are noisy)\n- image: 256 MiB on tmpfs (and, where the image column says so, on ${diskFs}, in the page cache); 4 KiB requests; EVENT_IDX on; best of ${ROUNDS} interleaved rounds of ${RUNTIME} s per point; ` +
    `driver: vhost-user-bench in its own process\n\n## Results\n\n${table}\n\n## Targets (issue 10)\n\n${targets.map((t) => `- ${t}`).join('\n')}\n` +
    (profile !== '' ? `\n## Profile: ours, randread QD32, 1 queue (\`node --cpu-prof\`), top functions by self time\n\n\`\`\`\n${profile}\n\`\`\`\n` : '');
  const analysisFile = join(root, 'bench/ANALYSIS.md');
  const analysis = existsSync(analysisFile) ? `\n${readFileSync(analysisFile, 'utf8')}` : '';
  writeFileSync(join(root, 'bench/RESULTS.md'), md + analysis);
  process.stderr.write('wrote bench/RESULTS.md\n');
}
rmSync(dir, { recursive: true, force: true });
rmSync(diskDir, { recursive: true, force: true });
