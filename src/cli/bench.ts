#!/usr/bin/env node
/**
 * `vhost-user-bench`: the fio of vhost-user. Drives any vhost-user-blk back-end as the guest's
 * driver would and reports IOPS, bandwidth, latency percentiles, errors, and the back-end's CPU
 * time per request.
 *
 *     vhost-user-bench --socket-path PATH [--rw randread] [--bs 4096] [--iodepth 32] [--num-queues 1]
 *                      [--runtime 10] [--verify] [--event-idx on|off] [--backend-pid PID] [--json]
 * @module
 */
import { parseArgs } from 'node:util';
import { Frontend } from '../vhost-user/frontend.js';
import { runBlkLoad, type BlkLoadResult, type BlkRw } from '../driver/blk-load.js';

const PROG = 'vhost-user-bench';
const EXIT_USAGE = 2;

const USAGE = `usage: ${PROG} --socket-path PATH [options]

Drives a vhost-user-blk back-end with a fixed number of requests in flight and reports IOPS,
bandwidth, completion latency (mean, p50, p99, p99.9), errors and the back-end's CPU per request.

  -s, --socket-path PATH   the back-end's socket
      --rw MODE            read | write | randread (default) | randwrite | randrw
      --rwmixread PCT      share of reads in randrw (default 50)
      --bs BYTES           request size, a multiple of 512; k/m suffixes (default 4k)
      --iodepth N          requests in flight per queue (default 32)
      --num-queues N       queues to drive (default 1)
      --runtime SECONDS    measured time (default 10)
      --size BYTES         use only the first BYTES of the disk (default: its capacity)
      --verify             stamp every block written and check every read of it; read all back at the end
      --event-idx on|off   negotiate VIRTIO_RING_F_EVENT_IDX when offered (default on)
      --backend-pid PID    measure the back-end's CPU time per request (from /proc/PID/stat)
      --seed N             offset generator seed (default 1)
      --json               one JSON object on stdout instead of text
  -h, --help               this help

Exit status: 0 success; 1 I/O errors, verification mismatches or a failed run; 2 usage error.`;

class UsageError extends Error {}

function size(v: string, name: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(v);
  if (m === null) throw new UsageError(`--${name} ${v}: a byte count such as 4096, 4k or 1m`);
  const mult = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

function int(v: string | undefined, name: string, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  const n = /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

function format(r: BlkLoadResult): string {
  const k = (n: number): string => (n >= 1000 ? `${(n / 1000).toFixed(1)}k` : String(n));
  const l = r.latencyUs;
  let out = `${PROG}: ${r.rw} bs=${r.bs} iodepth=${r.iodepth} queues=${r.numQueues} event-idx=${r.eventIdx ? 'on' : 'off'} runtime=${(r.runtimeMs / 1000).toFixed(1)}s\n` +
    `  IOPS ${k(r.iops)}  BW ${r.mibPerSec} MiB/s  requests ${r.requests} (read ${r.reads}, write ${r.writes})  errors ${r.errors}\n` +
    `  latency µs: mean ${l.mean}  min ${l.min}  p50 ${l.p50}  p99 ${l.p99}  p99.9 ${l.p999}  max ${l.max}\n`;
  if (r.backend !== null) out += `  back-end CPU: ${r.backend.cpuUsPerRequest} µs per request (${r.backend.cpuSeconds.toFixed(2)} s, pid ${r.backend.pid})\n`;
  if (r.verify !== null) {
    out += `  verify: ${r.verify.checkedReads} reads checked, ${r.verify.readBackBlocks} blocks read back, ${r.verify.mismatches} mismatches\n`;
    if (r.verify.firstMismatch !== null) out += `  first mismatch: ${r.verify.firstMismatch}\n`;
  }
  return out;
}

async function main(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: argv, allowPositionals: false, strict: true,
      options: {
        'socket-path': { type: 'string', short: 's' }, rw: { type: 'string' }, rwmixread: { type: 'string' },
        bs: { type: 'string' }, iodepth: { type: 'string' }, 'num-queues': { type: 'string' }, runtime: { type: 'string' },
        size: { type: 'string' }, verify: { type: 'boolean' }, 'event-idx': { type: 'string' }, 'backend-pid': { type: 'string' },
        seed: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (e) {
    process.stderr.write(`${PROG}: ${(e as Error).message} (see --help)\n`);
    return EXIT_USAGE;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let opts;
  try {
    const socketPath = values['socket-path'] as string | undefined;
    if (socketPath === undefined) throw new UsageError('--socket-path is required');
    const rw = (values.rw as string | undefined) ?? 'randread';
    if (!['read', 'write', 'randread', 'randwrite', 'randrw'].includes(rw)) throw new UsageError(`--rw ${rw}: read, write, randread, randwrite or randrw`);
    const bs = size((values.bs as string | undefined) ?? '4k', 'bs');
    if (bs % 512 !== 0 || bs === 0 || bs > 16 << 20) throw new UsageError(`--bs ${bs}: a multiple of 512 up to 16m`);
    const ei = (values['event-idx'] as string | undefined) ?? 'on';
    if (ei !== 'on' && ei !== 'off') throw new UsageError('--event-idx on|off');
    const pidArg = values['backend-pid'] as string | undefined;
    opts = {
      socketPath, rw: rw as BlkRw, bs,
      rwmixread: int(values.rwmixread as string | undefined, 'rwmixread', 0, 100, 50),
      iodepth: int(values.iodepth as string | undefined, 'iodepth', 1, 4096, 32),
      numQueues: int(values['num-queues'] as string | undefined, 'num-queues', 1, 64, 1),
      runtimeMs: int(values.runtime as string | undefined, 'runtime', 1, 86_400, 10) * 1000,
      sizeBytes: values.size === undefined ? undefined : size(values.size as string, 'size'),
      verify: values.verify === true, eventIdx: ei === 'on',
      backendPid: pidArg === undefined ? undefined : int(pidArg, 'backend-pid', 1, 2 ** 31 - 1, 0),
      seed: int(values.seed as string | undefined, 'seed', 0, 2 ** 32 - 1, 1),
    };
  } catch (e) {
    process.stderr.write(`${PROG}: ${(e as Error).message}\n`);
    return e instanceof UsageError ? EXIT_USAGE : 1;
  }
  const tty = process.stderr.isTTY === true && values.json !== true;
  let fe: Frontend | null = null;
  try {
    fe = await Frontend.connect(opts.socketPath, { timeoutMs: 10_000 });
    const r = await runBlkLoad({
      frontend: fe, rw: opts.rw, bs: opts.bs, iodepth: opts.iodepth, numQueues: opts.numQueues, runtimeMs: opts.runtimeMs,
      verify: opts.verify, eventIdx: opts.eventIdx, rwmixread: opts.rwmixread, seed: opts.seed,
      ...(opts.sizeBytes !== undefined ? { sizeBytes: opts.sizeBytes } : {}),
      ...(opts.backendPid !== undefined ? { backendPid: opts.backendPid } : {}),
      ...(tty ? {
        onProgress: (p: { elapsedMs: number; iops: number; requests: number; errors: number }) => process.stderr.write(
          `\r[${(p.elapsedMs / 1000).toFixed(0).padStart(4)} s] ${(p.iops / 1000).toFixed(1)}k IOPS  ${p.requests} requests  ${p.errors} errors `),
      } : {}),
    });
    if (tty) process.stderr.write('\n');
    process.stdout.write(values.json === true ? `${JSON.stringify(r)}\n` : format(r));
    return r.errors > 0 || (r.verify !== null && r.verify.mismatches > 0) ? 1 : 0;
  } catch (e) {
    if (tty) process.stderr.write('\n');
    process.stderr.write(`${PROG}: ${(e as Error).message.replace(/\s*\n\s*/g, ' ')}\n`);
    return 1;
  } finally {
    fe?.close();
  }
}

process.exit(await main(process.argv.slice(2)));
