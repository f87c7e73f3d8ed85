#!/usr/bin/env node
// Runs the compiled test files under dist/test with node's built-in runner.
// usage: node scripts/run-tests.mjs [suite...]   (suites: unit loopback interop e2e; default all)
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const suites = process.argv.slice(2);
const wanted = suites.length > 0 ? suites : ['unit', 'loopback', 'interop', 'e2e'];

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

const files = wanted.flatMap((s) => collect(join(root, 'dist', 'test', s)));
if (files.length === 0) {
  console.error(`no test files found for suites: ${wanted.join(', ')}`);
  process.exit(1);
}
// e2e and interop tests boot QEMU / DPDK and are CPU heavy on a 2-core machine: run files one at a time.
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
