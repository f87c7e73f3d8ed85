// A short run of the fuzzer (fuzz/): the vhost-user-blk CLI daemon in a child process takes mutated
// protocol sessions and hostile descriptor chains for a few seconds, and must never crash, hang,
// stall a queue silently, or leak fds or memory. The seed is fixed so that a CI failure replays
// (FUZZ_SEED / FUZZ_CASE, printed); FUZZ_SEED and FUZZ_CI_SECONDS override it locally.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runFuzz, summaryLine } from '../../fuzz/runner.js';

const seed = process.env['FUZZ_SEED'] !== undefined ? Number(process.env['FUZZ_SEED']) : 0xc1f022;
const seconds = Number(process.env['FUZZ_CI_SECONDS'] ?? 20);

test('fuzz: a short seeded run finds no crash, hang, stall or leak', { timeout: (seconds + 90) * 1000 }, async (t) => {
  const s = await runFuzz({ seed, seconds, log: (l) => t.diagnostic(l) });
  t.diagnostic(summaryLine(s));
  const failures = s.failures.map((f) => `case ${f.caseIndex} (${f.caseKind}) ${f.kind}: ${f.detail} — ${f.replay}`).join('\n');
  assert.equal(s.crashes + s.hangs + s.otherFailures, 0, `fuzz failures (saved to ${s.failuresFile}):\n${failures}`);
  assert.ok(s.protocolCases > 0 && s.chainCases > 0, 'both kinds of cases ran');
  assert.ok(s.messages > 0 && s.chains > 0, 'messages and chains were sent');
  assert.ok(s.fdDelta !== null && s.rssDeltaKib !== null, 'the leak baseline was taken (run long enough for the warm-up)');
  assert.equal(s.leak, false, `daemon fd delta ${s.fdDelta}, RSS delta ${s.rssDeltaKib} KiB`);
});
