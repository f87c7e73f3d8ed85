// Socket paths and disk images as a daemon finds them on a shared host: nothing at the path is
// touched before it is checked, only a stale socket is replaced, the socket gets the mode asked
// for, and two daemons never write one image.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sys from '../../src/sys/index.js';
import { UnixListener, UNIX_PATH_MAX } from '../../src/vhost-user/listener.js';
import { Frontend } from '../../src/vhost-user/frontend.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const blk = join(root, 'dist/src/cli/blk.js');

interface Run {
  /** Resolves with the exit code once the process exited. */
  exited: Promise<number | null>;
  /** Resolves once stdout printed the serving banner (rejects if the process exits first). */
  serving: Promise<void>;
  stderr(): string;
  kill(): void;
}

function startBlk(args: string[]): Run {
  const child = spawn(process.execPath, [blk, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const serving = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('vhost-user-blk: serving')) resolve();
    });
    void exited.then((code) => reject(new Error(`exited ${code} before serving: ${err}`)));
  });
  serving.catch(() => undefined);
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  return { exited, serving, stderr: () => err, kill: () => child.kill('SIGTERM') };
}

/** A front-end round trip: the socket at `path` is served. */
async function answers(path: string): Promise<void> {
  const fe = new Frontend(sys.connectUnix(path), { timeoutMs: 5000 });
  try {
    assert.ok((await fe.getFeatures()) > 0n);
  } finally {
    fe.close();
  }
}

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'vu-sock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('an overlong path naming a live socket: refused before anything is unlinked', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 's');
  const live = UnixListener.listen(sock);
  t.after(() => live.close());
  // The same socket file, named by a path longer than sun_path can hold.
  const long = dir + '/.'.repeat(Math.ceil((UNIX_PATH_MAX + 60 - dir.length) / 2)) + '/s';
  assert.ok(Buffer.byteLength(long) > UNIX_PATH_MAX);
  const r = startBlk(['--socket-path', long]);
  assert.equal(await r.exited, 2, 'a usage error');
  assert.match(r.stderr(), /socket path is \d+ bytes/);
  assert.equal(r.stderr().trim().split('\n').length, 1, 'one line');
  assert.ok(lstatSync(sock).isSocket(), 'the live socket is still there');
  const fd = sys.connectUnix(sock);
  sys.close(fd);
});

test('a live socket is refused and keeps working', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'blk.sock');
  const first = startBlk(['--socket-path', sock]);
  t.after(() => first.kill());
  await first.serving;
  const second = startBlk(['--socket-path', sock]);
  assert.equal(await second.exited, 1);
  assert.match(second.stderr(), /another process is listening on it/);
  await answers(sock);
  first.kill();
  assert.equal(await first.exited, 0);
});

test('a stale socket (nobody listening) is replaced', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'blk.sock');
  // A dead daemon's leftover: bound, then closed without unlinking.
  sys.close(sys.listenUnix(sock, 1));
  assert.ok(lstatSync(sock).isSocket());
  const r = startBlk(['--socket-path', sock]);
  t.after(() => r.kill());
  await r.serving;
  await answers(sock);
  r.kill();
  assert.equal(await r.exited, 0);
});

test('a regular file, a symlink or a directory at the path is refused and kept', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'file');
  writeFileSync(file, 'precious');
  const link = join(dir, 'link');
  symlinkSync(file, link);
  const danglingTarget = join(dir, 'nowhere');
  const dangling = join(dir, 'dangling');
  symlinkSync(danglingTarget, dangling);
  for (const [path, what] of [[file, 'a regular file'], [link, 'a symbolic link'], [dangling, 'a symbolic link'], [dir, 'a directory']] as const) {
    const r = startBlk(['--socket-path', path]);
    assert.equal(await r.exited, 1, path);
    assert.match(r.stderr(), new RegExp(`refusing to replace .*: it is ${what}`));
  }
  assert.equal(readFileSync(file, 'utf8'), 'precious');
  assert.equal(readlinkSync(link), file);
  assert.equal(readlinkSync(dangling), danglingTarget);
});

test('--socket-mode gives the socket the mode asked for; the default is 0600', async (t) => {
  const dir = tempDir(t);
  for (const [args, mode] of [[[], 0o600], [['--socket-mode', '0640'], 0o640], [['--socket-mode', '666'], 0o666],
    [['--socket-group', String(process.getgid?.() ?? 0)], 0o660]] as const) {
    const sock = join(dir, `m${mode.toString(8)}.sock`);
    const r = startBlk(['--socket-path', sock, ...args]);
    await r.serving;
    assert.equal(statSync(sock).mode & 0o777, mode, `${args.join(' ')}`);
    r.kill();
    assert.equal(await r.exited, 0);
  }
  const bad = startBlk(['--socket-path', join(dir, 'x.sock'), '--socket-mode', '0999']);
  assert.equal(await bad.exited, 2, 'a usage error');
  assert.match(bad.stderr(), /not an octal permission mode/);
});

test('a second daemon on the same image is refused; a read-only one too while a writer holds it', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const first = startBlk(['--socket-path', join(dir, 'a.sock'), '--blk-file', img]);
  t.after(() => first.kill());
  await first.serving;
  for (const extra of [[], ['--read-only']]) {
    const second = startBlk(['--socket-path', join(dir, `b${extra.length}.sock`), '--blk-file', img, ...extra]);
    assert.equal(await second.exited, 1);
    assert.match(second.stderr(), /is locked by another process/);
  }
  first.kill();
  assert.equal(await first.exited, 0);
  // Released with the daemon: the image can be served again, and shared by read-only daemons.
  const ro1 = startBlk(['--socket-path', join(dir, 'c.sock'), '--blk-file', img, '--read-only']);
  const ro2 = startBlk(['--socket-path', join(dir, 'd.sock'), '--blk-file', img, '--read-only']);
  await Promise.all([ro1.serving, ro2.serving]);
  ro1.kill();
  ro2.kill();
  assert.deepEqual(await Promise.all([ro1.exited, ro2.exited]), [0, 0]);
});
