// The package as a user installs it: `npm pack`, then the tarball installed with install scripts
// blocked (`--ignore-scripts`, as pnpm 10 and bun do by default) in a fresh directory. The prebuilt
// addon must load and the bins must run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
// Building the package (tsc, node-gyp) is not code under test: without this, a coverage run would
// instrument the TypeScript compiler too (NODE_V8_COVERAGE is inherited), doubling this test's time.
const buildEnv: NodeJS.ProcessEnv = { ...process.env };
delete buildEnv['NODE_V8_COVERAGE'];
const root = fileURLToPath(new URL('../../..', import.meta.url));

test('npm pack, install with --ignore-scripts: import works from the prebuilt addon and the bins run', { timeout: 300_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-pack-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // A copy of the checkout (what git tracks or would track) with its node_modules linked: prepack
  // builds dist/ and the prebuilt addon there, leaving this checkout's build/ alone.
  const src = join(dir, 'src');
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: root }).toString().split('\0').filter((f) => f && existsSync(join(root, f)));
  execFileSync('tar', ['-cf', join(dir, 'src.tar'), '--null', '-T', '-'], { cwd: root, input: files.join('\0') });
  execFileSync('mkdir', [src]);
  execFileSync('tar', ['-xf', join(dir, 'src.tar')], { cwd: src });
  symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
  const { stdout } = await run('npm', ['pack', '--pack-destination', dir, '--silent'], { cwd: src, maxBuffer: 16 << 20, env: buildEnv });
  const tarball = join(dir, stdout.trim().split('\n').pop()!);
  assert.ok(existsSync(tarball), tarball);
  const app = join(dir, 'app');
  await run('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
  await run('npm', ['install', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: app, maxBuffer: 16 << 20, env: buildEnv });
  const pkg = join(app, 'node_modules', 'vhost-user');
  assert.equal(existsSync(join(pkg, 'build')), false, 'nothing was compiled at install');
  assert.ok(readdirSync(join(pkg, 'prebuilds', `${process.platform}-${process.arch}`)).some((f) => f.endsWith('.node')));
  // A daemon and a front-end from the installed package talk over a real socket (the addon works).
  writeFileSync(join(app, 'smoke.mjs'), `
import { VhostUserDaemon, Frontend } from 'vhost-user';
const device = {
  numQueues: () => 1, maxQueueSize: () => 64, features: () => (1n << 32n) | (1n << 30n), protocolFeatures: () => 0n,
  setEventIdx() {}, updateMemory() {}, handleEvent() {},
};
const daemon = new VhostUserDaemon('smoke', device);
daemon.serve(process.argv[2]);
const fe = await Frontend.connect(process.argv[2]);
console.log((await fe.getFeatures()).toString(16));
fe.close();
await daemon.stop();
`);
  const smoke = await run(process.execPath, ['smoke.mjs', join(dir, 'smoke.sock')], { cwd: app });
  assert.equal(smoke.stdout, '140000000\n');
  const caps = await run('npx', ['--no-install', 'vhost-user-blk', '--print-capabilities'], { cwd: app });
  assert.deepEqual(JSON.parse(caps.stdout), { type: 'block', features: ['read-only', 'blk-file'] });
  const probe = await run('npx', ['--no-install', 'vhost-user-probe', '--help'], { cwd: app });
  assert.match(probe.stdout, /vhost-user-probe/);
});
