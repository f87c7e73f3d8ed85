#!/usr/bin/env node
// Runs the compiled test files under dist/test with node's built-in runner, with a per-test timeout,
// and measures line coverage of src/ (through dist/ + source maps, child processes and worker
// threads included) when the whole suite runs, failing below the floor.
// usage: node scripts/run-tests.mjs [suite...]   (suites: unit loopback interop e2e; default all)
// env: COVERAGE=1|0 forces coverage on/off (default: on for a full run only; the floor is checked
//      on a full run only),
//      TEST_TIMEOUT_MS overrides the per-test timeouts below.
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const root = new URL('..', import.meta.url).pathname;
const suites = process.argv.slice(2);
const wanted = suites.length > 0 ? suites : ['unit', 'loopback', 'interop', 'e2e'];
/** Line coverage of src/ below this fails a full run (issue 7: the floor is 90%). */
const COVERAGE_FLOOR_LINES = 90;
/** Per-test timeouts: a test that waits for an event that never comes fails instead of hanging CI. */
// With --test each file is itself a test under this timeout: loopback's slowest file builds and packs the
// whole package (tsc, node-gyp), about a minute alone and twice that on a loaded 2-core machine.
const TIMEOUT_MS = { unit: 60_000, loopback: 300_000, interop: 600_000, e2e: 600_000 };

function collect(dir) {
  let out = [];
  let entries;
  try { entries = readdirSync(dir); } catch { return out; }
  for (const name of entries.sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out = out.concat(collect(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const groups = wanted.map((s) => ({ suite: s, files: collect(join(root, 'dist', 'test', s)) })).filter((g) => g.files.length > 0);
if (groups.length === 0) {
  console.error(`no test files found for suites: ${wanted.join(', ')}`);
  process.exit(1);
}

const coverage = process.env.COVERAGE !== undefined ? process.env.COVERAGE !== '0' : suites.length === 0;
const env = { ...process.env };
let covDir = null;
if (coverage) {
  covDir = mkdtempSync(join(tmpdir(), 'vu-coverage-'));
  // Inherited by every child: CLI daemons spawned by tests and worker threads write their own files.
  env.NODE_V8_COVERAGE = covDir;
}

let status = 0;
for (const { suite, files } of groups) {
  const timeout = process.env.TEST_TIMEOUT_MS ?? String(TIMEOUT_MS[suite] ?? 120_000);
  // e2e and interop tests boot QEMU / DPDK and are CPU heavy on a 2-core machine: run files one at a time.
  const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', `--test-timeout=${timeout}`, ...files], { stdio: 'inherit', env });
  if (r.status !== 0) status = r.status ?? 1;
}

if (covDir !== null) {
  const c8 = createRequire(import.meta.url).resolve('c8/bin/c8.js');
  const reportsDir = join(root, 'coverage');
  const r = spawnSync(process.execPath, [
    c8, 'report', '--temp-directory', covDir, '--reports-dir', reportsDir, '--all', '--src', 'src',
    '--include', 'dist/src/**', '--reporter=text', '--reporter=text-summary', '--reporter=json-summary',
    // The floor applies to the whole suite only: a partial run covers less by construction.
    ...(suites.length === 0 ? ['--check-coverage', `--lines=${COVERAGE_FLOOR_LINES}`] : []),
  ], { stdio: 'inherit', cwd: root });
  rmSync(covDir, { recursive: true, force: true });
  if (r.status !== 0) {
    console.error(`coverage: line coverage of src/ is below the ${COVERAGE_FLOOR_LINES}% floor (or c8 failed)`);
    if (status === 0) status = r.status ?? 1;
  }
}
process.exit(status);
