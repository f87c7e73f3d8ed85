/**
 * `npm run fuzz`: the seeded, time-bounded fuzzer against the vhost-user-blk daemon, or the
 * vhost-user-net one in loopback with FUZZ_DEVICE=net.
 *
 *     FUZZ_SEED=0x1234 FUZZ_SECONDS=60 npm run fuzz     # a run (seed random when unset)
 *     FUZZ_DEVICE=net FUZZ_SECONDS=60 npm run fuzz       # the net daemon
 *     FUZZ_CASES=5000 npm run fuzz                       # a fixed number of cases
 *     FUZZ_SEED=0x1234 FUZZ_CASE=17 npm run fuzz         # replay one saved case
 *
 * Also: FUZZ_TIMEOUT_MS (liveness reply timeout, default 2000), FUZZ_CHAIN_SHARE (0..1, default
 * 0.5), FUZZ_OUT (failure directory, default $TMPDIR/vhost-user-fuzz), FUZZ_DAEMON_LOG (the daemon's
 * VHOST_USER_LOG; default error, debug when replaying one case). Exit status 1 on any crash,
 * hang, other failure or leak.
 * @module
 */
import { randomInt } from 'node:crypto';
import { runFuzz, summaryLine } from './runner.js';

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`);
  return n;
}

// Leave through process.exit so the daemon child is reaped (see DaemonProcess).
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

const device = process.env.FUZZ_DEVICE || 'blk';
if (device !== 'blk' && device !== 'net') {
  console.error(`fuzz: FUZZ_DEVICE must be blk or net, got ${device}`);
  process.exit(2);
}
const blkDisk = process.env.FUZZ_BLK_DISK || 'file';
if (blkDisk !== 'file' && blkDisk !== 'ram') {
  console.error(`fuzz: FUZZ_BLK_DISK must be file or ram, got ${blkDisk}`);
  process.exit(2);
}
const seed = envInt('FUZZ_SEED') ?? randomInt(0, 2 ** 32);
const only = envInt('FUZZ_CASE');
const cases = envInt('FUZZ_CASES');
console.log(`fuzz: device=${device} seed=0x${seed.toString(16)} (replay with ${device === 'blk' ? '' : `FUZZ_DEVICE=${device} `}FUZZ_SEED=0x${seed.toString(16)})`);
const summary = await runFuzz({
  device,
  blkDisk,
  seed,
  seconds: envInt('FUZZ_SECONDS'),
  cases,
  only,
  timeoutMs: envInt('FUZZ_TIMEOUT_MS'),
  chainShare: envInt('FUZZ_CHAIN_SHARE'),
  outDir: process.env.FUZZ_OUT,
  daemonLog: process.env.FUZZ_DAEMON_LOG,
  log: (l) => console.log(l),
});
console.log(summaryLine(summary));
if (summary.failuresFile !== null) console.log(`fuzz: failures saved to ${summary.failuresFile}`);
const failed = summary.crashes + summary.hangs + summary.otherFailures > 0 || summary.leak;
process.exit(failed ? 1 : 0);
