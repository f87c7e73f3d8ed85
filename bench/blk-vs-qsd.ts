// Whole-stack virtio-blk benchmark over real vhost-user sockets: this package's front-end drives
// (a) our `vhost-user-blk` daemon and (b) qemu-storage-daemon, QEMU's C reference back-end, on the
// same image file, with the same split-ring driver, queue depth and random 4 KiB offsets. Both run
// as separate processes, so the ratio compares the back-ends (protocol handling, ring processing,
// I/O submission, notification), not the shared driver. qemu-storage-daemon runs twice: with
// aio=threads (a thread pool, the same I/O model as ours) and with aio=io_uring (its fastest).
// Rounds alternate to even out noise.
// usage: node dist/bench/blk-vs-qsd.js [seconds-per-round] [rounds] [queue-depth]
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Frontend } from '../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../src/driver/frontend-driver.js';
import { negotiate } from '../src/vhost-user/negotiate.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../src/devices/blk/index.js';

const seconds = Number(process.argv[2] ?? '2');
const rounds = Number(process.argv[3] ?? '3');
const QD = Number(process.argv[4] ?? '32');
const IMAGE_SIZE = 256 << 20;
const IO = 4096;
const QSIZE = 256;
const SLOT = 0x2000;
const DATA = 0x100000;

function startProcess(cmd: string, args: string[]): ChildProcess {
  return spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

async function waitSocket(path: string): Promise<void> {
  for (let i = 0; i < 400 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 25));
}

async function stopProcess(p: ChildProcess): Promise<void> {
  const done = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  await done;
}

interface Result { iops: number; errors: number }

/** Runs `seconds` of QD-deep random 4 KiB I/O of `type` against the back-end at `sock`. */
async function drive(sock: string, type: number): Promise<Result> {
  const fe = await Frontend.connect(sock, { timeoutMs: 10_000 });
  const mem = new FrontendMemory(16 << 20);
  let q: FrontendQueue | null = null;
  try {
    const n = await negotiate(fe);
    await fe.setMemTable(mem.regions());
    const eventIdx = (n.features & (1n << 29n)) !== 0n;
    q = await setupQueue(fe, mem, 0, QSIZE, 0x10000, { eventIdx, enable: true });
    const heads = new Map<number, number>(); // head -> slot
    let x = 0x2545f491;
    const sectors = IMAGE_SIZE / IO;
    const submit = (slot: number): void => {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      const gpa = DATA + slot * SLOT;
      mem.memory.writeU32(gpa, type);
      mem.memory.writeU32(gpa + 4, 0);
      mem.memory.writeU64(gpa + 8, BigInt((x % sectors) * (IO / 512)));
      const data = { gpa: gpa + 0x1000, len: IO };
      const status = { gpa: gpa + 0x20, len: 1 };
      const head = type === VIRTIO_BLK_T_IN
        ? q!.driver.addChain([{ gpa, len: 16 }], [data, status])
        : q!.driver.addChain([{ gpa, len: 16 }, data], [status]);
      heads.set(head, slot);
    };
    for (let s = 0; s < QD; s++) submit(s);
    q.kick();
    let done = 0;
    let errors = 0;
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    while (performance.now() < end) {
      const u = await q.nextUsed(10_000);
      const slot = heads.get(u.id)!;
      heads.delete(u.id);
      if (mem.memory.readU8(DATA + slot * SLOT + 0x20) !== VIRTIO_BLK_S_OK) errors++;
      done++;
      submit(slot);
      // Reap whatever else completed before kicking once for the whole batch.
      for (let v = q.driver.popUsed(); v !== null; v = q.driver.popUsed()) {
        const s2 = heads.get(v.id)!;
        heads.delete(v.id);
        if (mem.memory.readU8(DATA + s2 * SLOT + 0x20) !== VIRTIO_BLK_S_OK) errors++;
        done++;
        submit(s2);
      }
      q.kick();
    }
    const elapsed = (performance.now() - t0) / 1000;
    // Drain so the back-end is idle before the next round.
    while (heads.size > 0) heads.delete((await q.nextUsed(10_000)).id);
    return { iops: done / elapsed, errors };
  } finally {
    q?.close();
    fe.close();
    mem.close();
  }
}

async function main(): Promise<void> {
  process.env['VHOST_USER_LOG'] ??= 'warn'; // the daemon would log every connection
  const dir = mkdtempSync(join(tmpdir(), 'vu-bench-'));
  const image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(IMAGE_SIZE, 0x5a)); // written, so reads hit the page cache
  const ourSock = join(dir, 'ours.sock');
  const qsdSocks = { threads: join(dir, 'qsd-threads.sock'), io_uring: join(dir, 'qsd-uring.sock') };
  const ourCli = fileURLToPath(new URL('../src/cli/blk.js', import.meta.url));
  const ours = startProcess(process.execPath, [ourCli, '--socket-path', ourSock, '--blk-file', image]);
  const qsds = Object.entries(qsdSocks).map(([aio, sock]) => startProcess('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=f0,filename=${image},cache.direct=off,aio=${aio}`,
    '--export', `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${sock},writable=on,num-queues=1`,
  ]));
  try {
    await waitSocket(ourSock);
    for (const s of Object.values(qsdSocks)) await waitSocket(s);
    const empty = (): Record<string, number[]> => ({ ours: [], qsdThreads: [], qsdIoUring: [] });
    const res: Record<string, Record<string, number[]>> = { read: empty(), write: empty() };
    let errors = 0;
    for (let r = 0; r < rounds; r++) {
      for (const [name, type] of [['read', VIRTIO_BLK_T_IN], ['write', VIRTIO_BLK_T_OUT]] as const) {
        for (const [who, sock] of [['ours', ourSock], ['qsdThreads', qsdSocks.threads], ['qsdIoUring', qsdSocks.io_uring]] as const) {
          const x = await drive(sock, type);
          errors += x.errors;
          res[name]![who]!.push(x.iops);
        }
      }
    }
    const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
    const summary = (m: Record<string, number[]>) => {
      const ours = median(m.ours!);
      const thr = median(m.qsdThreads!);
      const uring = median(m.qsdIoUring!);
      return {
        oursIops: Math.round(ours), qsdThreadsIops: Math.round(thr), qsdIoUringIops: Math.round(uring),
        ratioVsQsdThreads: +(ours / thr).toFixed(3), ratioVsQsdIoUring: +(ours / uring).toFixed(3),
      };
    };
    const out = { bench: 'blk-vs-qsd', seconds, rounds, queueDepth: QD, ioSize: IO, errors, read: summary(res.read!), write: summary(res.write!) };
    console.log(JSON.stringify(out));
    const k = (n: number): string => `${(n / 1000).toFixed(1)}k`;
    for (const [name, s] of [['read', out.read], ['write', out.write]] as const) {
      console.log(`4 KiB random ${name} QD${QD}: ours ${k(s.oursIops)} IOPS | qemu-storage-daemon aio=threads ${k(s.qsdThreadsIops)} ` +
        `(ratio ${s.ratioVsQsdThreads}x) | aio=io_uring ${k(s.qsdIoUringIops)} (ratio ${s.ratioVsQsdIoUring}x)`);
    }
    if (errors > 0) console.log(`status errors: ${errors}`);
    if (errors > 0) process.exitCode = 1;
  } finally {
    await stopProcess(ours);
    for (const q of qsds) await stopProcess(q);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
