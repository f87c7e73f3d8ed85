/**
 * Child-process plumbing shared by the QEMU, qemu-storage-daemon and DPDK helpers: output capture,
 * waiting for a line of output, exit tracking, escalating termination, and a last-resort SIGKILL of
 * every helper process when the test process exits, so no VMM outlives a crashed test file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';

/** How a managed process ended: exit code, or the signal that killed it. */
export interface ExitStatus {
  /** Exit code, or null when killed by a signal. */
  readonly code: number | null;
  /** Signal name, or null when the process exited by itself. */
  readonly signal: NodeJS.Signals | null;
}

/** Options for {@link ManagedProcess.spawn}. */
export interface SpawnOptions {
  /** Label used in diagnostics (e.g. 'qemu', 'testpmd'). */
  readonly label: string;
  /** Environment override; defaults to the parent's. */
  readonly env?: NodeJS.ProcessEnv;
  /** Working directory. */
  readonly cwd?: string;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: a plain SIGKILL is all that can be done here.
  process.on('exit', () => {
    for (const child of live) {
      try { child.kill('SIGKILL'); } catch { /* already gone */ }
    }
  });
}

/** Cap on retained output per stream; VM consoles in stress loops can print for a long time. */
const MAX_OUTPUT = 4 * 1024 * 1024;

/**
 * A spawned helper process whose stdout and stderr are accumulated as text. stdin stays a pipe
 * (QEMU's serial console and testpmd's "Press enter to exit" both read it).
 */
export class ManagedProcess {
  /** The underlying child process. */
  readonly child: ChildProcess;
  /** Label used in diagnostics. */
  readonly label: string;
  /** The command line, for diagnostics. */
  readonly argv: readonly string[];
  /** Resolves once the process has exited (never rejects). */
  readonly exited: Promise<ExitStatus>;
  /** performance.now() at spawn time. */
  readonly startedAt: number;
  private stdoutText = '';
  private stderrText = '';
  private exitStatus: ExitStatus | undefined;
  private readonly waiters = new Set<() => void>();

  private constructor(cmd: string, args: readonly string[], opts: SpawnOptions) {
    installExitHook();
    this.label = opts.label;
    this.argv = [cmd, ...args];
    this.startedAt = performance.now();
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    live.add(this.child);
    this.child.stdout?.setEncoding('utf8');
    this.child.stderr?.setEncoding('utf8');
    this.child.stdout?.on('data', (s: string) => { this.stdoutText = cap(this.stdoutText + s); this.notify(); });
    this.child.stderr?.on('data', (s: string) => { this.stderrText = cap(this.stderrText + s); this.notify(); });
    // EPIPE on stdin after the child exits is expected, not an error of the test.
    this.child.stdin?.on('error', () => undefined);
    this.exited = new Promise<ExitStatus>((resolve) => {
      const done = (status: ExitStatus): void => {
        if (this.exitStatus) return;
        this.exitStatus = status;
        live.delete(this.child);
        this.notify();
        resolve(status);
      };
      this.child.on('error', (err) => {
        this.stderrText += `\n[${this.label}] spawn error: ${err.message}\n`;
        done({ code: -1, signal: null });
      });
      // 'close' (not 'exit') so that every byte of output has been read when waiters see the exit.
      this.child.on('close', (code, signal) => done({ code, signal }));
    });
  }

  /** Spawns cmd with args. Spawn failures surface through {@link exited} (code -1). */
  static spawn(cmd: string, args: readonly string[], opts: SpawnOptions): ManagedProcess {
    return new ManagedProcess(cmd, args, opts);
  }

  /** Everything the process wrote to stdout so far. */
  get stdout(): string { return this.stdoutText; }
  /** Everything the process wrote to stderr so far. */
  get stderr(): string { return this.stderrText; }
  /** Exit status once exited, else undefined. */
  get exitStatusNow(): ExitStatus | undefined { return this.exitStatus; }
  /** PID of the child (undefined if spawning failed). */
  get pid(): number | undefined { return this.child.pid; }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Resolves with the first match of `re` in `source()` (re-evaluated on every output chunk).
   * Rejects on timeout or when the process exits without a match; the error carries the output tail.
   * Output arrives in chunks, so a pattern ending in `$` can match a half-received line: end it in `\n`.
   */
  waitForText(re: RegExp, timeoutMs: number, source: () => string = () => this.stdoutText): Promise<RegExpMatchArray> {
    return new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = (): boolean => {
        const m = source().match(re);
        if (m) {
          finish();
          resolve(m);
          return true;
        }
        if (this.exitStatus) {
          finish();
          reject(new Error(`${this.label} exited (${fmtStatus(this.exitStatus)}) before printing ${re}\n${this.diagnostics()}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${this.label}: timed out after ${timeoutMs} ms waiting for ${re}\n${this.diagnostics()}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      const waiter = (): void => { check(); };
      this.waiters.add(waiter);
      check();
    });
  }

  /** Writes to the child's stdin (ignored once it has exited). */
  write(text: string): void {
    if (!this.exitStatus) this.child.stdin?.write(text);
  }

  /** Sends a signal if the process is still running. */
  signal(sig: NodeJS.Signals): void {
    if (!this.exitStatus) {
      try { this.child.kill(sig); } catch { /* raced with exit */ }
    }
  }

  /**
   * Ends the process: optional polite step (e.g. closing stdin), then `sig` after `graceMs`, then
   * SIGKILL after another `graceMs`. Resolves with the exit status. Idempotent.
   */
  async terminate(opts: { sig?: NodeJS.Signals; graceMs?: number; polite?: () => void } = {}): Promise<ExitStatus> {
    const grace = opts.graceMs ?? 3000;
    if (this.exitStatus) return this.exitStatus;
    if (opts.polite) {
      opts.polite();
      if (await raceTimeout(this.exited, grace)) return this.exited;
    }
    this.signal(opts.sig ?? 'SIGTERM');
    if (await raceTimeout(this.exited, grace)) return this.exited;
    this.signal('SIGKILL');
    return this.exited;
  }

  /** Command line plus the last lines of stdout and stderr, for assertion messages. */
  diagnostics(lines = 40): string {
    return [
      `[${this.label}] command: ${this.argv.map(shellQuote).join(' ')}`,
      this.exitStatus ? `[${this.label}] exit: ${fmtStatus(this.exitStatus)}` : `[${this.label}] still running`,
      `[${this.label}] stdout (tail):\n${tail(this.stdoutText, lines)}`,
      `[${this.label}] stderr (tail):\n${tail(this.stderrText, lines)}`,
    ].join('\n');
  }
}

function cap(s: string): string {
  return s.length > MAX_OUTPUT ? s.slice(s.length - MAX_OUTPUT) : s;
}

/** Resolves true if `p` settles within `ms`, false otherwise (the timer never keeps node alive). */
export async function raceTimeout(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), ms); });
  try {
    return await Promise.race([p.then(() => true, () => true), t]);
  } finally {
    clearTimeout(timer);
  }
}

/** Last `n` lines of `s`, with carriage returns removed. */
export function tail(s: string, n: number): string {
  return s.replace(/\r/g, '').split('\n').slice(-n).join('\n');
}

function fmtStatus(s: ExitStatus): string {
  return s.signal ? `signal ${s.signal}` : `code ${s.code}`;
}

function shellQuote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

const SO_ACCEPTCON = 0x10000;

/**
 * True when a Unix stream socket bound at `path` is in the listening state, read from
 * /proc/net/unix. Unlike a probing connect() this does not consume a connection of the server
 * (a vhost-user backend would treat the probe as a frontend session).
 */
export async function isUnixListening(path: string, tablePath = '/proc/net/unix'): Promise<boolean> {
  // /proc/net/unix lists the reader's network namespace only; /proc/PID/net/unix that of PID.
  const table = await readFile(tablePath, 'utf8').catch(() => '');
  for (const line of table.split('\n')) {
    // Num RefCount Protocol Flags Type St Inode Path
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f.slice(7).join(' ') === path) {
      if ((parseInt(f[3] ?? '0', 16) & SO_ACCEPTCON) !== 0) return true;
    }
  }
  return false;
}

/**
 * Polls (every 25 ms, not a busy loop) until a listener is bound at `path`. Rejects on timeout, or
 * early when `proc` exits first, with its diagnostics. Only for programs that announce nothing when
 * they start listening (qemu-storage-daemon, testpmd): listen() has no observable event, and
 * connecting to find out would be a connection the program serves. Our daemons print a banner:
 * wait for it instead (`startOurDaemon`). A program in another network namespace lists its sockets
 * in its own table: pass `/proc/<its pid>/net/unix` as `tablePath`.
 */
export async function waitForUnixListener(path: string, timeoutMs: number, proc?: ManagedProcess, tablePath?: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await isUnixListening(path, tablePath)) return;
    if (proc?.exitStatusNow) {
      throw new Error(`${proc.label} exited before listening on ${path}\n${proc.diagnostics()}`);
    }
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for a listener on ${path}` +
        (proc ? `\n${proc.diagnostics()}` : ''));
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
