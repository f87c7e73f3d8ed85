// The vhost-user-net CLI as QEMU users (and the nete2e tests) run it: usage errors, capabilities,
// loopback with our front-end as the guest, a two-socket switch, --stats lines, reconnect to the
// same socket, and a clean exit on SIGTERM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startOurDaemon } from '../helpers/our-daemon.js';
import { makeTempDir } from '../helpers/tmp.js';
import { repoRoot } from '../helpers/tools.js';
import { NetGuest, ethFrame } from './net-rig.js';

const run = promisify(execFile);
const CLI = join(repoRoot(), 'dist', 'src', 'cli', 'net.js');

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args]);
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

test('vhost-user-net: capabilities, version, help, usage errors', async (t) => {
  const dir = makeTempDir(t);
  assert.deepEqual(JSON.parse((await cli(['--print-capabilities', '--bogus'])).stdout), { type: 'net', features: [] });
  assert.match((await cli(['--version'])).stdout, /^vhost-user-net \d+\.\d+\.\d+/);
  assert.match((await cli(['--help'])).stdout, /--tap NAME/);
  const s = dir.socketPath('a');
  for (const [args, re] of [
    [['--socket-path', s], /--tap NAME or --loopback/],
    [['--loopback'], /--socket-path/],
    [['--socket-path', s, '--loopback', '--tap', 'x'], /exclude/],
    [['--socket-path', s, '--socket-path', dir.socketPath('b'), '--loopback'], /--loopback serves one socket/],
    [['--socket-path', s, '--socket-path', s], /twice/],
    [['--socket-path', s, '--loopback', '--mac', 'zz'], /--mac/],
    [['--socket-path', s, '--loopback', '--queue-pairs', '0'], /--queue-pairs/],
    [['--socket-path', s, '--loopback', '--queue-size', '100'], /power of two/],
    [['--socket-path', s, '--loopback', '--nope'], /see --help/],
    [['--socket-path', s, '--loopback', '--socket-mode', '999'], /octal/],
  ] as [string[], RegExp][]) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: exit status 2 (${r.stderr})`);
    assert.match(r.stderr, re);
  }
});

test('vhost-user-net --loopback: our front-end as the guest gets its frames back; a reconnect works; --stats logs per-queue counters; SIGTERM exits 0', async (t) => {
  const dir = makeTempDir(t);
  const sock = dir.socketPath('net');
  const d = await startOurDaemon('net', sock, ['--loopback', '--queue-pairs', '2', '--stats', '--mac', '52:54:00:aa:bb:cc'], t);
  assert.match(d.proc.stdout, /serving loopback with 2 queue pair\(s\) \(MAC 52:54:00:aa:bb:cc\)/);
  for (let round = 0; round < 2; round++) {
    const g = await NetGuest.connect(t, sock, { pairs: 2, maxPairs: 2 });
    g.postRx(1, 4);
    const f = ethFrame('ff:ff:ff:ff:ff:ff', '52:54:00:aa:bb:cc', 100, round);
    await g.send(1, f);
    assert.ok((await g.recv(1)).data.equals(f), `round ${round}: frame back on pair 1`);
    g.fe.close();
    await d.proc.waitForText(new RegExp(`front-end disconnected \\(connection ${round + 1}\\)`), 5000, () => d.proc.stderr);
  }
  await d.proc.waitForText(/stats: port pair 1: rx \(to guest\) 2 pkts/, 5000, () => d.proc.stderr);
  d.proc.child.kill('SIGUSR1');
  await d.proc.waitForText(/SIGUSR1: port pair 0/, 5000, () => d.proc.stderr);
  const st = await d.stop();
  assert.equal(st.code, 0);
});

test('vhost-user-net with two sockets: a switch between two guests (one per socket)', async (t) => {
  const dir = makeTempDir(t);
  const s0 = dir.socketPath('p0');
  const s1 = dir.socketPath('p1');
  const d = await startOurDaemon('net', s0, ['--socket-path', s1], t);
  assert.match(d.proc.stdout, /serving a switch of 2 ports/);
  const g0 = await NetGuest.connect(t, s0);
  const g1 = await NetGuest.connect(t, s1);
  g0.postRx(0, 4);
  g1.postRx(0, 4);
  const a = '52:54:00:00:01:01';
  const b = '52:54:00:00:01:02';
  const hello = ethFrame('ff:ff:ff:ff:ff:ff', a, 60, 1);
  await g0.send(0, hello);
  assert.ok((await g1.recv(0)).data.equals(hello), 'broadcast reached the other VM');
  const reply = ethFrame(a, b, 60, 2);
  await g1.send(0, reply);
  assert.ok((await g0.recv(0)).data.equals(reply), 'unicast reply reached the first VM');
  const st = await d.stop();
  assert.equal(st.code, 0);
});

test('vhost-user-net --poll-us: a transmit queue that ran empty is polled, so a frame sent without a kick is served', async (t) => {
  const dir = makeTempDir(t);
  const sock = dir.socketPath('net');
  // 1 s of polling: the second frame lands while the device still spins on the empty ring.
  const d = await startOurDaemon('net', sock, ['--loopback', '--poll-us', '1000000'], t);
  const g = await NetGuest.connect(t, sock);
  g.postRx(0, 8);
  const f0 = ethFrame('ff:ff:ff:ff:ff:ff', '52:54:00:12:34:56', 64, 0);
  await g.send(0, f0);
  assert.ok((await g.recv(0)).data.equals(f0));
  for (let i = 1; i < 4; i++) {
    const f = ethFrame('ff:ff:ff:ff:ff:ff', '52:54:00:12:34:56', 64, i);
    await g.send(0, f, undefined, undefined, false);
    assert.ok((await g.recv(0)).data.equals(f));
  }
  assert.equal((await d.stop()).code, 0);
});
