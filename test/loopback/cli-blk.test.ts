// The vhost-user-blk command as users run it: `npx vhost-user-blk --print-capabilities`, usage
// errors, and the README's "run it" command (RAM disk) probed by vhost-user-probe.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Signal } from '../helpers/events.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../..', import.meta.url));
const blk = join(root, 'dist/src/cli/blk.js');
const probe = join(root, 'dist/src/cli/probe.js');

test('npx vhost-user-blk --print-capabilities prints the back-end conventions JSON', async (t) => {
  // A private npm cache: npx keeps per-command entries in ~/.npm/_npx, and one left half-written by
  // a concurrent npx elsewhere on the machine makes `npx --no-install` fail without a message.
  const cache = mkdtempSync(join(tmpdir(), 'vu-npx-'));
  t.after(() => rmSync(cache, { recursive: true, force: true }));
  const { stdout } = await run('npx', ['--no-install', 'vhost-user-blk', '--print-capabilities'], {
    cwd: root, timeout: 120_000, env: { ...process.env, npm_config_cache: cache },
  });
  assert.deepEqual(JSON.parse(stdout), { type: 'block', features: ['read-only', 'blk-file'] });
  assert.equal(stdout, '{"type":"block","features":["read-only","blk-file"]}\n');
});

test('vhost-user-blk refuses bad usage with one line and status 2; a runtime failure with status 1', async () => {
  for (const [args, status] of [[[], 2], [['--socket-path', '/tmp/x.sock', '--fd', '3'], 2], [['--socket-path', '/tmp/x.sock', '--num-queues', '0'], 2],
    [['--socket-path', '/tmp/x.sock', '--blk-file', '/nonexistent/disk.img'], 1], [['--bogus'], 2], [['--fd', 'x'], 2], [['--fd', '987'], 2]] as const) {
    await assert.rejects(run(process.execPath, [blk, ...args], { timeout: 10_000 }), (e: { code?: number; stderr?: string }) => {
      assert.equal(e.code, status, `exit status for ${args.join(' ')}`);
      assert.match(e.stderr ?? '', /^vhost-user-blk: [^\n]+\n$/, `one line for ${args.join(' ')}: ${e.stderr}`);
      return true;
    });
  }
});

test('README command: the RAM-disk daemon serves a probe, prints the QEMU command line, exits 0 on SIGTERM', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'blk.sock');
  const child = spawn(process.execPath, [blk, '--socket-path', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const printed = new Signal();
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); printed.notify(); });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  // The banner is printed once the socket listens.
  await printed.until(() => out.includes('vhost-user-blk-pci'), 10_000, 'the daemon banner');
  assert.match(out, /64 MiB RAM disk/);
  assert.match(out, /memory-backend-memfd,.*share=on/);
  assert.match(out, new RegExp(`-chardev socket,id=\\w+,path=${sock.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} -device vhost-user-blk-pci`));
  const { stdout } = await run(process.execPath, [probe, '--socket-path', sock, '--device-type', 'blk', '--config-size', '8'], { timeout: 10_000 });
  const report = JSON.parse(stdout) as { features: { names: string[] }; config: string };
  assert.ok(report.features.names.includes('VIRTIO_BLK_F_FLUSH'));
  assert.equal(Buffer.from(report.config, 'hex').readBigUInt64LE(0), BigInt((64 << 20) / 512), 'capacity of the RAM disk');
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.equal(existsSync(sock), false, 'socket unlinked');
});
