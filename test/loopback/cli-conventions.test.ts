// The vhost-user spec's "Backend program conventions" as libvirt relies on them: --fd with a
// listening or a connected socket (anything else: one error line, exit 2, nothing printed first),
// --print-capabilities ignoring other options, --version, every flag in --help, and the JSON
// descriptors that let management tools discover the daemons.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { FrontendMemory, setupQueue } from '../../src/driver/frontend-driver.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../src/devices/blk/index.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../..', import.meta.url));
const bins = { 'vhost-user-blk': join(root, 'dist/src/cli/blk.js'), 'vhost-user-rng': join(root, 'dist/src/cli/rng.js') };
const blk = bins['vhost-user-blk'];

function startWithFd(args: string[], fd: number) {
  const child = spawn(process.execPath, [blk, ...args], { stdio: ['ignore', 'pipe', 'pipe', fd] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, exited, out: () => out, err: () => err };
}

test('--fd with one end of a socketpair: our front-end negotiates and does I/O, the daemon exits 0 when it closes', async (t) => {
  const [ours, theirs] = sys.socketpair();
  const d = startWithFd(['--fd', '3'], theirs);
  t.after(() => d.child.kill('SIGKILL'));
  sys.close(theirs);
  const fe = new Frontend(ours);
  const mem = new FrontendMemory(8 << 20);
  t.after(() => mem.close());
  const n = await negotiate(fe);
  await fe.setMemTable(mem.regions());
  const q = await setupQueue(fe, mem, 0, 64, 0x10000, { eventIdx: (n.features & (1n << 29n)) !== 0n, enable: true });
  const hdr = (type: number): Buffer => {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(type, 0);
    b.writeBigUInt64LE(8n, 8);
    return b;
  };
  const data = Buffer.alloc(4096, 0xa5);
  mem.memory.write(0x100000, hdr(VIRTIO_BLK_T_OUT));
  mem.memory.write(0x101000, data);
  q.driver.addChain([{ gpa: 0x100000, len: 16 }, { gpa: 0x101000, len: 4096 }], [{ gpa: 0x100020, len: 1 }]);
  q.kick(true);
  await q.nextUsed();
  assert.equal(mem.memory.readU8(0x100020), VIRTIO_BLK_S_OK);
  mem.memory.write(0x102000, hdr(VIRTIO_BLK_T_IN));
  q.driver.addChain([{ gpa: 0x102000, len: 16 }], [{ gpa: 0x103000, len: 4096 }, { gpa: 0x102020, len: 1 }]);
  q.kick(true);
  assert.equal((await q.nextUsed()).len, 4097);
  assert.equal(mem.memory.readU8(0x102020), VIRTIO_BLK_S_OK);
  assert.ok(Buffer.from(mem.memory.translate(0x103000, 4096)).equals(data));
  q.close();
  fe.close();
  assert.equal(await d.exited, 0, d.err());
});

test('--fd with a listening socket serves front-ends that connect to it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-fd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'l.sock');
  const lfd = sys.listenUnix(sock, 4);
  const d = startWithFd(['--fd', '3'], lfd);
  t.after(() => d.child.kill('SIGKILL'));
  sys.close(lfd);
  for (let i = 0; i < 2; i++) {
    const fe = await Frontend.connect(sock);
    assert.ok((await fe.getFeatures()) > 0n);
    fe.close();
  }
  d.child.kill('SIGTERM');
  assert.equal(await d.exited, 0);
});

test('--fd with a regular file or a pipe: one error line, exit 2, nothing printed before it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-fd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'f');
  writeFileSync(file, 'x');
  const fd = openSync(file, 'r');
  t.after(() => closeSync(fd));
  const d = startWithFd(['--fd', '3'], fd);
  assert.equal(await d.exited, 2);
  assert.equal(d.out(), '', 'no banner');
  assert.match(d.err(), /^vhost-user-blk: --fd 3 is not a socket \(it is a regular file\)\n$/);
  const fifo = join(dir, 'fifo');
  await run('mkfifo', [fifo]);
  const pfd = openSync(fifo, 'r+');
  t.after(() => closeSync(pfd));
  const dp = startWithFd(['--fd', '3'], pfd);
  assert.equal(await dp.exited, 2);
  assert.equal(dp.out(), '');
  assert.match(dp.err(), /^vhost-user-blk: --fd 3 is not a socket \(it is a pipe\)\n$/);
  const dn = startWithFd(['--fd', '987'], pfd);
  assert.equal(await dn.exited, 2);
  assert.match(dn.err(), /^vhost-user-blk: --fd 987 is not an open file descriptor\n$/);
});

test('--print-capabilities ignores every other option; --version; --help lists every flag', async () => {
  const { stdout } = await run(process.execPath, [blk, '--bogus', 'x', '--print-capabilities', '--fd', 'nonsense'], { timeout: 10_000 });
  assert.deepEqual(JSON.parse(stdout), { type: 'block', features: ['read-only', 'blk-file'] });
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  for (const [name, path] of Object.entries(bins)) {
    assert.equal((await run(process.execPath, [path, '--version'])).stdout, `${name} ${pkg.version}\n`);
    const help = (await run(process.execPath, [path, '--help'])).stdout;
    const src = readFileSync(path, 'utf8') + readFileSync(join(root, 'dist/src/cli/backend-cli.js'), 'utf8');
    // Every long option the program declares (`'name': { type: ...}` entries) is documented.
    const declared = [...src.matchAll(/['"]?([a-z][a-z-]+)['"]?: \{ type: '(?:string|boolean)'/g)].map((m) => m[1]!);
    assert.ok(declared.length >= 6, `found the option table of ${name}`);
    for (const opt of declared) assert.match(help, new RegExp(`--${opt}\\b`), `${name} --help documents --${opt}`);
  }
});

/** QEMU docs/interop/vhost-user.json: the VhostUserBackend descriptor and VHostUserBackendType. */
const BACKEND_TYPES = ['9p', 'balloon', 'block', 'caif', 'console', 'crypto', 'gpu', 'input', 'net', 'rng', 'rpmsg', 'rproc-serial', 'scsi', 'vsock', 'fs'];

function validateDescriptor(d: unknown): string[] {
  const errors: string[] = [];
  if (typeof d !== 'object' || d === null || Array.isArray(d)) return ['not an object'];
  const o = d as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['description', 'type', 'binary', 'tags'].includes(k)) errors.push(`unknown member '${k}'`);
  if (typeof o.description !== 'string') errors.push('description: str required');
  if (typeof o.type !== 'string' || !BACKEND_TYPES.includes(o.type)) errors.push(`type: one of ${BACKEND_TYPES.join(', ')}`);
  if (typeof o.binary !== 'string' || !o.binary.startsWith('/')) errors.push('binary: absolute path required');
  if (o.tags !== undefined && !(Array.isArray(o.tags) && o.tags.every((x) => typeof x === 'string'))) errors.push('tags: [str]');
  return errors;
}

test('the shipped descriptors validate against QEMU\'s vhost-user.json schema and match the programs', async () => {
  const dir = join(root, 'share/qemu/vhost-user');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  assert.deepEqual(files.sort(), ['50-vhost-user-blk.json', '50-vhost-user-net.json', '50-vhost-user-rng.json']);
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { bin: Record<string, string>; files: string[] };
  assert.ok(pkg.files.includes('share'), 'shipped in the package');
  for (const f of files) {
    const d = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { type: string; binary: string };
    assert.deepEqual(validateDescriptor(d), [], f);
    const bin = d.binary.split('/').pop()!;
    assert.ok(bin in pkg.bin, `${f}: ${bin} is a bin of the package`);
    const caps = JSON.parse((await run(process.execPath, [join(root, pkg.bin[bin]!), '--print-capabilities'])).stdout) as { type: string };
    assert.equal(caps.type, d.type, `${f}: type matches --print-capabilities`);
  }
  // The validator rejects what the schema rejects.
  assert.notDeepEqual(validateDescriptor({ description: 'x', type: 'disk', binary: 'rel' }), []);
  assert.notDeepEqual(validateDescriptor({ description: 'x', type: 'block', binary: '/b', extra: 1 }), []);
});

test('install-descriptors writes descriptors whose binary is this installation\'s program', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-desc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await run(process.execPath, [join(root, 'scripts/install-descriptors.mjs'), dir]);
  const d = JSON.parse(readFileSync(join(dir, '50-vhost-user-blk.json'), 'utf8')) as { binary: string };
  assert.equal(d.binary, blk);
  const { stdout } = await run(d.binary, ['--print-capabilities']);
  assert.equal(JSON.parse(stdout).type, 'block');
});

test('--log-format json: every stderr line is a JSON record; connect and disconnect are logged with the connection', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-log-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'blk.sock');
  const child = spawn(process.execPath, [blk, '--socket-path', sock, '--log-format', 'json', '--log-level', 'debug'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let err = '';
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await new Promise<void>((resolve) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('serving')) resolve(); });
  });
  const fe = await Frontend.connect(sock);
  await fe.getFeatures();
  fe.close();
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  const records = err.trim().split('\n').map((l) => JSON.parse(l) as { level: string; name: string; msg: string; connection?: number });
  assert.ok(records.length >= 3, err);
  for (const r of records) assert.equal(r.name, 'vhost-user-blk');
  assert.ok(records.some((r) => r.msg.startsWith('front-end connected') && r.connection === 1));
  assert.ok(records.some((r) => r.msg.startsWith('front-end disconnected') && r.connection === 1));
  const bad = await run(process.execPath, [blk, '--socket-path', sock, '--log-level', 'loud']).catch((e: { code: number; stderr: string }) => e);
  assert.equal((bad as { code: number }).code, 2);
});
