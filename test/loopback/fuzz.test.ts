// A short run of the fuzzer (fuzz/) against each daemon it drives: the vhost-user-blk CLI on its
// RAM disk and the vhost-user-net CLI in loopback, in a child process, take mutated protocol
// sessions and hostile descriptor chains for a few seconds, and must never crash, hang, stall a
// queue silently, or leak fds or memory. The seeds are fixed so that a CI failure replays
// (FUZZ_DEVICE / FUZZ_SEED / FUZZ_CASE, printed); FUZZ_SEED and FUZZ_CI_SECONDS (both runs)
// override them locally.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { runFuzz, summaryLine } from '../../fuzz/runner.js';
import type { FuzzDevice } from '../../fuzz/daemon-process.js';

const seedOverride = process.env['FUZZ_SEED'] !== undefined ? Number(process.env['FUZZ_SEED']) : undefined;
const secondsOverride = process.env['FUZZ_CI_SECONDS'] !== undefined ? Number(process.env['FUZZ_CI_SECONDS']) : undefined;

async function shortRun(t: TestContext, device: FuzzDevice, seed: number, seconds: number): Promise<void> {
  const s = await runFuzz({ device, seed, seconds, log: (l) => t.diagnostic(l) });
  t.diagnostic(summaryLine(s));
  const failures = s.failures.map((f) => `case ${f.caseIndex} (${f.caseKind}) ${f.kind}: ${f.detail} — ${f.replay}`).join('\n');
  assert.equal(s.crashes + s.hangs + s.otherFailures, 0, `fuzz failures (saved to ${s.failuresFile}):\n${failures}`);
  assert.ok(s.protocolCases > 0 && s.chainCases > 0, 'both kinds of cases ran');
  assert.ok(s.messages > 0 && s.chains > 0, 'messages and chains were sent');
  assert.ok(s.fdDelta !== null && s.rssDeltaKib !== null, 'the leak baseline was taken (run long enough for the warm-up)');
  assert.equal(s.leak, false, `daemon fd delta ${s.fdDelta}, RSS delta ${s.rssDeltaKib} KiB`);
}

const blkSeconds = secondsOverride ?? 20;
test('fuzz: a short seeded run against vhost-user-blk finds no crash, hang, stall or leak', { timeout: (blkSeconds + 90) * 1000 }, async (t) => {
  await shortRun(t, 'blk', seedOverride ?? 0xc1f022, blkSeconds);
});

const netSeconds = secondsOverride ?? 15;
test('fuzz: a short seeded run against vhost-user-net (loopback) finds no crash, hang, stall or leak', { timeout: (netSeconds + 90) * 1000 }, async (t) => {
  await shortRun(t, 'net', seedOverride ?? 0x4e7f22, netSeconds);
});
