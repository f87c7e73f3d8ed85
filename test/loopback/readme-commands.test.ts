// The README's quick start as a newcomer runs it: in a fresh copy of the repository, the run
// command is interrupted once (Ctrl-C while `npm install` is still building), then run twice in a
// row; each time the daemon comes up, serves a front-end and stops cleanly on Ctrl-C.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Frontend } from '../../src/vhost-user/frontend.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));

/** The indented commands of the README's "Quick start" section. */
function quickStartCommands(): string[] {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Quick start'));
  assert.ok(section, 'README has a Quick start section');
  return [...section.matchAll(/^ {4}(\S.*)$/gm)].map((m) => m[1]!.trim());
}

interface Run {
  exited: Promise<number | null>;
  output(): string;
  /** Resolves once the output matches `re`; rejects if the process exits first. */
  waitFor(re: RegExp, what: string): Promise<void>;
  /** Ctrl-C: SIGINT to the whole process group, as a terminal sends it. */
  interrupt(): void;
  /** SIGKILL to the process group (cleanup). */
  kill(): void;
  /**
   * Resolves once every process of the group exited (the daemon is a grandchild we cannot wait
   * on, so this probes the group with signal 0); rejects after `ms`.
   */
  groupGone(ms: number): Promise<void>;
}

function runShell(cmd: string, cwd: string, env: NodeJS.ProcessEnv): Run {
  const child = spawn('sh', ['-c', cmd], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const waiters = new Set<() => void>();
  const onData = (d: Buffer): void => {
    out += d.toString();
    for (const w of waiters) w();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const group = (sig: NodeJS.Signals): void => {
    try { process.kill(-child.pid!, sig); } catch { /* already gone */ }
  };
  return {
    exited,
    output: () => out,
    waitFor: (re, what) => new Promise((resolve, reject) => {
      const check = (): void => {
        if (re.test(out)) { waiters.delete(check); resolve(); }
      };
      waiters.add(check);
      check();
      void exited.then((code) => {
        if (!waiters.has(check)) return;
        waiters.delete(check);
        reject(new Error(`exited ${code} before ${what}:\n${out}`));
      });
    }),
    interrupt: () => group('SIGINT'),
    kill: () => group('SIGKILL'),
    groupGone: async (ms) => {
      const deadline = performance.now() + ms;
      for (;;) {
        try {
          process.kill(-child.pid!, 0);
        } catch {
          return;
        }
        if (performance.now() > deadline) throw new Error(`processes still running ${ms} ms after Ctrl-C:\n${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

test('README quick start: interrupted once, then run twice in a fresh copy; the daemon serves and stops on Ctrl-C', { timeout: 600_000 }, async (t) => {
  const [runCmd, testCmd] = quickStartCommands();
  assert.equal(runCmd, 'npm install && npm start');
  assert.equal(testCmd, 'npm install && npm test');
  const dir = mkdtempSync(join(tmpdir(), 'vu-readme-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // A fresh copy of the repository: what git tracks (or would track) in this checkout.
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: root }).toString().split('\0').filter((f) => f && existsSync(join(root, f)));
  execFileSync('tar', ['-cf', join(dir, 'src.tar'), '--null', '-T', '-'], { cwd: root, input: files.join('\0') });
  const clone = join(dir, 'clone');
  execFileSync('mkdir', [clone]);
  execFileSync('tar', ['-xf', join(dir, 'src.tar')], { cwd: clone });
  const sock = join(dir, 'blk.sock');
  const env = { ...process.env, VHOST_USER_SOCKET: sock, npm_config_prefer_offline: 'true' };

  // 1. Interrupted while npm install is still busy.
  const first = runShell(runCmd!, clone, env);
  t.after(() => first.kill());
  await first.waitFor(/\S/, 'any output');
  first.interrupt();
  await first.exited;

  // 2 and 3. Run to the daemon, serve a front-end, Ctrl-C.
  for (const attempt of [2, 3]) {
    const r = runShell(runCmd!, clone, env);
    t.after(() => r.kill());
    await r.waitFor(/vhost-user-blk: serving a 64 MiB RAM disk/, `the banner (run ${attempt})`);
    const fe = await Frontend.connect(sock);
    assert.ok((await fe.getFeatures()) > 0n);
    fe.close();
    r.interrupt();
    await r.exited;
    await r.groupGone(5000);
    assert.match(r.output(), /SIGINT: finishing in-flight requests and exiting/);
    assert.equal(existsSync(sock), false, `run ${attempt}: socket removed`);
    assert.doesNotMatch(r.output(), /exiting now|did not finish/, `run ${attempt}: a clean stop`);
  }
});
