/**
 * The fuzz loop: runs seeded cases against a device daemon (blk or net) in a child process, checks
 * after every case that the daemon still answers (GET_FEATURES on a fresh connection within a
 * timeout) and is alive, restarts it after a crash or hang (so one run can find several bugs),
 * saves every failure with what it takes to replay it, and compares the daemon's fd count and RSS
 * at the end with a baseline taken after warm-up.
 * @module
 */
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FrontendReq } from '../src/vhost-user/constants.js';
import { RawClient, VERSION_1, message } from './client.js';
import { DISK_SECTORS } from './chains.js';
import { DaemonProcess, type FuzzDevice } from './daemon-process.js';
import { protocolCase } from './protocol.js';
import { Rng, caseSeed } from './rng.js';
import { TARGETS } from './targets.js';

/** Options of {@link runFuzz}. */
export interface FuzzOptions {
  /** Run seed (32-bit). */
  seed: number;
  /** The daemon under test: vhost-user-blk on a RAM disk (default) or vhost-user-net in loopback. */
  device?: FuzzDevice;
  /** Stop after this many seconds (default 60 unless `cases` is given). */
  seconds?: number;
  /** Stop after this many cases. */
  cases?: number;
  /** Replay this single case index only. */
  only?: number;
  /** Reply timeout of every liveness check, ms (default 2000). */
  timeoutMs?: number;
  /** Share of descriptor-chain cases (default 0.5). */
  chainShare?: number;
  /** Directory for failures-<seed>.jsonl (default $TMPDIR/vhost-user-fuzz). */
  outDir?: string;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Daemon log level (default 'error' for runs: a log line per rejected request costs more than the request; 'debug' when replaying one case). */
  daemonLog?: string;
  /**
   * blk: what the daemon serves. 'file' (default): an 8 MiB image on /dev/shm, so hostile chains
   * reach the io_uring fast path and the inline I/O path with guest addresses; 'ram': a RAM disk.
   */
  blkDisk?: 'file' | 'ram';
  /** Allowed fd growth of the daemon between warm-up and the end (default 2). */
  fdTolerance?: number;
  /** Allowed RSS growth in KiB (default 64 MiB: RSS follows the GC's whims, the heap check is the precise one). */
  rssToleranceKib?: number;
  /** Allowed growth of the live heap after a full GC, KiB (default 4 MiB). */
  heapToleranceKib?: number;
}

/** One saved failure. */
export interface FuzzFailure {
  seed: number;
  caseIndex: number;
  caseKind: 'protocol' | 'chains';
  kind: string;
  detail: string;
  /** CPU share of the daemon right after a hang (≈1 = spinning). */
  cpuShare?: number;
  stderrTail?: string;
  replay: string;
}

/** What a run did and found. */
export interface FuzzSummary {
  device: FuzzDevice;
  seed: number;
  cases: number;
  protocolCases: number;
  chainCases: number;
  messages: number;
  chains: number;
  hostileChains: number;
  brokenRings: number;
  crashes: number;
  hangs: number;
  /** Other failures (stalls, wrong status, refused setup). */
  otherFailures: number;
  failures: FuzzFailure[];
  restarts: number;
  /** fd and RSS change of the daemon since the baseline (null when no baseline was taken). */
  fdDelta: number | null;
  rssDeltaKib: number | null;
  fdBaseline: number | null;
  rssBaselineKib: number | null;
  /** Live heap (after a full GC) change of the daemon since the baseline, in KiB. */
  heapDeltaKib: number | null;
  /** Mappings of fuzzer memfds left in the idle daemon at the end (must be 0). */
  guestMappings: number | null;
  /** The daemon's RSS at the end split into anonymous and shared-memory KiB. */
  rssSplitKib: { anon: number; shmem: number } | null;
  /** Leak verdict against the tolerances. */
  leak: boolean;
  seconds: number;
  /** Time spent in cases that passed, per kind, and what they sent: the clean-path rates. */
  clean: { protocolSeconds: number; protocolMessages: number; chainSeconds: number; chainChains: number };
  failuresFile: string | null;
}

/** Cases before the fd/RSS baseline is taken (lazy allocations of the daemon settle first). */
const WARMUP_CASES = 25;

async function exitsWithin(d: DaemonProcess, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([d.exited.then(() => true), new Promise<boolean>((res) => { timer = setTimeout(() => res(false), ms); })]);
  clearTimeout(timer);
  return r;
}

/** The one-line summary the fuzzer prints. */
export function summaryLine(s: FuzzSummary): string {
  const rate = (n: number): string => `${Math.round(n / Math.max(s.seconds, 1e-3))}/s`;
  return `fuzz: device=${s.device} seed=0x${s.seed.toString(16)} cases=${s.cases} (protocol ${s.protocolCases}, chains ${s.chainCases}) ` +
    `messages=${s.messages} (${rate(s.messages)}) chains=${s.chains} (${rate(s.chains)}, hostile ${s.hostileChains}, broken rings ${s.brokenRings}) ` +
    `crashes=${s.crashes} hangs=${s.hangs} other-failures=${s.otherFailures} restarts=${s.restarts} ` +
    `fd-delta=${s.fdDelta ?? 'n/a'} rss-delta=${s.rssDeltaKib === null ? 'n/a' : `${s.rssDeltaKib} KiB`} ` +
    `heap-delta=${s.heapDeltaKib === null ? 'n/a' : `${s.heapDeltaKib} KiB`} ${s.rssSplitKib === null ? '' : `(end: anon ${s.rssSplitKib.anon} KiB, shmem ${s.rssSplitKib.shmem} KiB) `}guest-mappings-left=${s.guestMappings ?? 'n/a'} leak=${s.leak} ` +
    `time=${s.seconds.toFixed(1)}s clean-rates: ${Math.round(s.clean.protocolMessages / Math.max(s.clean.protocolSeconds, 1e-3))} msg/s in protocol cases, ` +
    `${Math.round(s.clean.chainChains / Math.max(s.clean.chainSeconds, 1e-3))} chains/s in chain cases`;
}

/** Runs the fuzzer; never throws for a daemon failure (they are in the summary). */
export async function runFuzz(opts: FuzzOptions): Promise<FuzzSummary> {
  const seed = opts.seed >>> 0;
  const device = opts.device ?? 'blk';
  const target = TARGETS[device];
  // A replay command names the device only when it is not the default.
  const env = `${device === 'blk' ? '' : `FUZZ_DEVICE=${device} `}FUZZ_SEED=0x${seed.toString(16)}`;
  const timeoutMs = opts.timeoutMs ?? 2000;
  const chainShare = opts.chainShare ?? 0.5;
  const log = opts.log ?? ((): void => {});
  const seconds = opts.seconds ?? (opts.cases === undefined && opts.only === undefined ? 60 : Number.POSITIVE_INFINITY);
  const maxCases = opts.only !== undefined ? 1 : opts.cases ?? Number.POSITIVE_INFINITY;
  const outDir = opts.outDir ?? join(tmpdir(), 'vhost-user-fuzz');
  const fdTolerance = opts.fdTolerance ?? 2;
  const rssTolerance = opts.rssToleranceKib ?? 64 * 1024;
  const heapTolerance = opts.heapToleranceKib ?? 4 * 1024;
  let heapBaseline: number | null = null;
  const logLevel = opts.daemonLog ?? (opts.only !== undefined ? 'debug' : 'error');
  const dir = mkdtempSync(join(tmpdir(), 'vu-fuzz-'));
  const socketPath = join(dir, `${device}.sock`);
  let blkFile: string | undefined;
  if (device === 'blk' && (opts.blkDisk ?? 'file') === 'file') {
    // The chain cases address DISK_SECTORS sectors; tmpfs when there is one (inline I/O).
    const imageDir = existsSync('/dev/shm') ? mkdtempSync('/dev/shm/vu-fuzz-') : dir;
    blkFile = join(imageDir, 'disk.img');
    writeFileSync(blkFile, '');
    truncateSync(blkFile, DISK_SECTORS * 512);
  }
  const s: FuzzSummary = {
    device, seed, cases: 0, protocolCases: 0, chainCases: 0, messages: 0, chains: 0, hostileChains: 0, brokenRings: 0,
    crashes: 0, hangs: 0, otherFailures: 0, failures: [], restarts: 0, fdDelta: null, rssDeltaKib: null,
    fdBaseline: null, rssBaselineKib: null, heapDeltaKib: null, guestMappings: null, rssSplitKib: null, leak: false, seconds: 0, failuresFile: null,
    clean: { protocolSeconds: 0, protocolMessages: 0, chainSeconds: 0, chainChains: 0 },
  };
  const t0 = process.hrtime.bigint();
  const elapsed = (): number => Number(process.hrtime.bigint() - t0) / 1e9;
  let daemon = await DaemonProcess.start({ socketPath, logLevel, device, blkFile });
  let casesSinceStart = 0;

  const record = (f: Omit<FuzzFailure, 'seed' | 'replay'>): void => {
    const full: FuzzFailure = { seed, ...f, replay: `${env} FUZZ_CASE=${f.caseIndex} npm run fuzz (alone; if it needs the daemon's history: ${env} FUZZ_CASES=${f.caseIndex + 1})` };
    s.failures.push(full);
    if (f.kind === 'crash') s.crashes++;
    else if (f.kind === 'hang') s.hangs++;
    else s.otherFailures++;
    mkdirSync(outDir, { recursive: true });
    s.failuresFile = join(outDir, `failures-${device === 'blk' ? '' : `${device}-`}${seed.toString(16)}.jsonl`);
    appendFileSync(s.failuresFile, `${JSON.stringify(full)}\n`);
    log(`FAIL case ${f.caseIndex} (${f.caseKind}): ${f.kind}: ${f.detail}${f.cpuShare !== undefined ? ` (daemon CPU ${(f.cpuShare * 100).toFixed(0)}%)` : ''} — replay: ${full.replay}`);
  };

  /** A fresh connection answers GET_FEATURES; measures fds and RSS while that connection is held. */
  const probe = async (): Promise<{ ok: true; fds: number; rss: number; maps: number } | { ok: false; why: 'crash' | 'hang' | 'closed' }> => {
    if (!daemon.alive) return { ok: false, why: 'crash' };
    let c: RawClient;
    try {
      c = RawClient.connect(socketPath);
    } catch {
      // Refused while the process is still being torn down: the caller tells a crash by its exit.
      return { ok: false, why: 'closed' };
    }
    try {
      const r = await Promise.race([
        c.roundTrip(message(FrontendReq.GET_FEATURES, VERSION_1, new Uint8Array(0)), [], timeoutMs),
        daemon.exited.then(() => 'exited' as const),
      ]);
      if (r === 'exited' || !daemon.alive) return { ok: false, why: 'crash' };
      if (r === 'timeout') return { ok: false, why: 'hang' };
      if (r === 'closed') return { ok: false, why: 'closed' };
      return { ok: true, fds: daemon.fdCount(), rss: daemon.rssKib(), maps: daemon.guestMappings() };
    } finally {
      c.close();
    }
  };

  const restart = async (): Promise<void> => {
    await daemon.kill();
    daemon = await DaemonProcess.start({ socketPath, logLevel, device, blkFile });
    s.restarts++;
    casesSinceStart = 0;
    s.fdBaseline = s.rssBaselineKib = null;
    heapBaseline = null;
  };

  try {
    for (let i = opts.only ?? 0; s.cases < maxCases && elapsed() < seconds; i++) {
      const rng = new Rng(caseSeed(seed, i));
      const kind = rng.chance(chainShare) ? 'chains' : 'protocol';
      s.cases++;
      casesSinceStart++;
      let client: RawClient | null = null;
      // A case must end within this guard even if the daemon stops reading (sends then block).
      const guardMs = 4 * timeoutMs + 2000;
      let guard: NodeJS.Timeout | undefined;
      const guarded = new Promise<'guard'>((r) => { guard = setTimeout(() => r('guard'), guardMs); });
      let verdict: 'ok' | 'crash' | 'hang' = 'ok';
      // The case connection stopped answering: a hang if a fresh connection gets no answer either,
      // else a stalled connection (still a failure, told apart in the record).
      let stalled: string | null = null;
      const caseStart = elapsed();
      const before = { messages: s.messages, chains: s.chains, failures: s.failures.length };
      let detail = '';
      try {
        client = RawClient.connect(socketPath);
        const run = kind === 'chains'
          ? target.chainCase(rng, client, timeoutMs).then((st) => {
            s.chainCases++;
            s.messages += st.messages;
            s.chains += st.chains;
            s.hostileChains += st.hostileChains;
            if (st.broken) s.brokenRings++;
            if (st.failure !== null) record({ caseIndex: i, caseKind: kind, kind: st.failure.kind, detail: st.failure.detail, stderrTail: daemon.stderrTail() });
            if (st.check === 'timeout') stalled = 'no GET_FEATURES reply on the case connection after the hostile batch';
          })
          : protocolCase(rng, client, timeoutMs, target.protocol).then((st) => {
            s.protocolCases++;
            s.messages += st.messages;
            if (st.check === 'timeout') stalled = `no GET_FEATURES reply on the case connection after ${st.messages} messages`;
          });
        const r = await Promise.race([run.then(() => 'done' as const), guarded, daemon.exited.then(() => 'exited' as const)]);
        if (r === 'exited') verdict = 'crash';
        else if (r === 'guard') { verdict = 'hang'; detail = `case did not finish within ${guardMs} ms`; }
      } catch (e) {
        if (!daemon.alive) verdict = 'crash';
        else record({ caseIndex: i, caseKind: kind, kind: 'fuzzer-error', detail: (e as Error).stack ?? String(e) });
      } finally {
        clearTimeout(guard);
        client?.close();
      }
      if (verdict === 'ok') {
        const p = await probe();
        if (!p.ok) {
          verdict = p.why === 'crash' ? 'crash' : 'hang';
          detail = stalled !== null ? `${stalled}, nor on a fresh connection` : p.why === 'closed' ? 'a fresh connection was refused or closed without an answer' : `no GET_FEATURES reply on a fresh connection within ${timeoutMs} ms`;
        } else if (stalled !== null) {
          record({ caseIndex: i, caseKind: kind, kind: 'connection-stall', detail: `${stalled}; a fresh connection was answered`, stderrTail: daemon.stderrTail() });
        } else if (casesSinceStart === WARMUP_CASES || (s.fdBaseline === null && casesSinceStart > WARMUP_CASES)) {
          s.fdBaseline = p.fds;
          s.rssBaselineKib = p.rss;
          heapBaseline = await daemon.liveHeap();
        }
      }
      if (verdict === 'ok' && s.failures.length === before.failures) {
        const dt = elapsed() - caseStart;
        if (kind === 'chains') { s.clean.chainSeconds += dt; s.clean.chainChains += s.chains - before.chains; } else { s.clean.protocolSeconds += dt; s.clean.protocolMessages += s.messages - before.messages; }
      }
      // A daemon that dies (SIGBUS) refuses or drops connections just before its exit is reported:
      // give the exit a moment to arrive before calling anything a hang.
      if (verdict === 'hang' && await exitsWithin(daemon, 1000)) verdict = 'crash';
      if (verdict === 'crash') {
        await daemon.exited;
        record({ caseIndex: i, caseKind: kind, kind: 'crash', detail: `daemon exited: ${JSON.stringify(daemon.exit)}`, stderrTail: daemon.stderrTail() });
        await restart();
      } else if (verdict === 'hang') {
        const cpu = await daemon.cpuShare(300);
        record({ caseIndex: i, caseKind: kind, kind: 'hang', detail: `${detail}${cpu > 0.5 ? ' (spinning)' : ''}`, cpuShare: cpu, stderrTail: daemon.stderrTail() });
        await restart();
      }
      if (s.cases % 200 === 0 && daemon.alive) {
        const { anon, shmem } = daemon.rssSplitKib();
        log(`${summaryLine({ ...s, seconds: elapsed() })} | daemon now: fds ${daemon.fdCount()}, rss anon ${anon} KiB, shmem ${shmem} KiB`);
      }
    }
    // Leak check: the same state as the baseline (one idle connection held).
    const p = await probe();
    if (p.ok && s.fdBaseline !== null && s.rssBaselineKib !== null) {
      s.fdDelta = p.fds - s.fdBaseline;
      s.rssDeltaKib = p.rss - s.rssBaselineKib;
      s.guestMappings = p.maps;
      s.rssSplitKib = daemon.rssSplitKib();
      const heap = await daemon.liveHeap();
      s.heapDeltaKib = heap !== null && heapBaseline !== null ? Math.round((heap - heapBaseline) / 1024) : null;
      s.leak = s.fdDelta > fdTolerance || s.rssDeltaKib > rssTolerance || p.maps > 0 || (s.heapDeltaKib ?? 0) > heapTolerance;
    } else if (!p.ok) {
      record({ caseIndex: s.cases, caseKind: 'protocol', kind: p.why === 'crash' ? 'crash' : 'hang', detail: 'final probe failed', stderrTail: daemon.stderrTail() });
    }
  } finally {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    if (blkFile !== undefined) rmSync(dirname(blkFile), { recursive: true, force: true });
  }
  s.seconds = elapsed();
  return s;
}
