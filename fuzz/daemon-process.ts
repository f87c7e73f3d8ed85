/**
 * The daemon under test, run as a child process (the vhost-user-blk CLI on a RAM disk, or the
 * vhost-user-net CLI in loopback) so that a crash or a hang is observed from outside: exit status
 * and signal, fd count, RSS and CPU time read from /proc.
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The device CLIs behind a wrapper that reports the live heap on SIGUSR2 (see daemon-wrapper.ts). */
export const DAEMON_WRAPPER: string = fileURLToPath(new URL('./daemon-wrapper.js', import.meta.url));

/** The daemons the fuzzer can drive. */
export type FuzzDevice = 'blk' | 'net';

/** How the daemon ended. */
export interface DaemonExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Options of {@link DaemonProcess.start}. */
export interface DaemonOptions {
  socketPath: string;
  /** Which daemon (default blk). */
  device?: FuzzDevice;
  /** blk: request queues (default 2). */
  numQueues?: number;
  /** Largest queue size (default 256). */
  queueSize?: number;
  /** blk: RAM disk size in MiB (default 8), when no `blkFile` is given. */
  ramSizeMib?: number;
  /** blk: serve this image file (io_uring, inline I/O on tmpfs) instead of a RAM disk. */
  blkFile?: string;
  /** VHOST_USER_LOG of the daemon (default: inherited, else the CLI's own default). */
  logLevel?: string;
  /** How long the daemon may take to start listening (default 10 s). */
  startTimeoutMs?: number;
}

const STDERR_TAIL_LINES = 40;

/** The CLI arguments of `device` (after the wrapper's device argument). */
function daemonArgs(device: FuzzDevice, opts: DaemonOptions): string[] {
  const size = String(opts.queueSize ?? 256);
  if (device === 'net') {
    // One queue pair in loopback: every frame the fuzzer transmits comes back on its receive queue.
    return ['--socket-path', opts.socketPath, '--loopback', '--queue-size', size];
  }
  return [
    '--socket-path', opts.socketPath, '--num-queues', String(opts.numQueues ?? 2), '--queue-size', size,
    ...(opts.blkFile !== undefined ? ['--blk-file', opts.blkFile] : ['--ram-size-mib', String(opts.ramSizeMib ?? 8)]),
  ];
}

/** A running device daemon. */
export class DaemonProcess {
  /** Set once the process exited. */
  exit: DaemonExit | null = null;
  /** Resolves when the process exits. */
  readonly exited: Promise<DaemonExit>;
  /** Lines the daemon logged on stderr. */
  stderrLines = 0;
  private readonly tail: string[] = [];
  private partial = '';

  private constructor(private readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => this.onStderr(s));
  }

  /** Starts the daemon and resolves once it prints that it listens (its stdout banner). */
  static async start(opts: DaemonOptions): Promise<DaemonProcess> {
    const device = opts.device ?? 'blk';
    const args = ['--expose-gc', DAEMON_WRAPPER, device, ...daemonArgs(device, opts)];
    const env = opts.logLevel !== undefined ? { ...process.env, VHOST_USER_LOG: opts.logLevel } : process.env;
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    // Never leave a daemon behind, even when the fuzzer itself is stopped.
    const reap = (): void => { child.kill('SIGKILL'); };
    process.once('exit', reap);
    child.once('exit', () => process.off('exit', reap));
    const d = new DaemonProcess(child);
    const timeoutMs = opts.startTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error(`daemon did not start within ${timeoutMs} ms: ${d.stderrTail()}`)), timeoutMs);
      const onData = (s: string): void => {
        out += s;
        if (out.includes(': serving ')) finish();
      };
      const onExit = (): void => fail(new Error(`daemon exited at start (${JSON.stringify(d.exit)}): ${d.stderrTail()}`));
      const finish = (): void => {
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        child.off('exit', onExit);
        // Keep reading stdout (the daemon must never block on a full pipe) for heap reports.
        child.stdout?.on('data', (s: string) => d.onStdout(s));
        resolve();
      };
      const fail = (e: Error): void => {
        finish();
        child.kill('SIGKILL');
        reject(e);
      };
      child.stdout?.setEncoding('utf8');
      child.stdout?.on('data', onData);
      child.once('exit', onExit);
    });
    return d;
  }

  /** Process id. */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Whether the process is still running. */
  get alive(): boolean {
    return this.exit === null;
  }

  /** Open fds of the daemon (/proc/PID/fd). */
  fdCount(): number {
    return readdirSync(`/proc/${this.pid}/fd`).length;
  }

  /** Resident set size in KiB (/proc/PID/status VmRSS). */
  rssKib(): number {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    return m ? Number(m[1]) : -1;
  }

  /** RSS split (KiB): anonymous (heap) and shared memory (mapped memfd pages) from /proc/PID/status. */
  rssSplitKib(): { anon: number; shmem: number } {
    const st = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const get = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)\\s+kB`).exec(st)?.[1] ?? -1);
    return { anon: get('RssAnon'), shmem: get('RssShmem') };
  }

  /**
   * Mappings of the fuzzer's memfds in the daemon (/proc/PID/maps lines naming `memfd:fuzz-`): with
   * no memory table in effect there must be none, whatever the heap does.
   */
  guestMappings(): number {
    return readFileSync(`/proc/${this.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:fuzz-')).length;
  }

  /** User + system CPU time consumed so far, in clock ticks (/proc/PID/stat). */
  cpuTicks(): number {
    const s = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  }

  /**
   * CPU share the daemon used over `ms` (1 = one core busy): tells a spinning daemon (≈1) from one
   * blocked or idle (≈0). Only called on a failure path, so the wait costs nothing in a clean run.
   */
  async cpuShare(ms: number): Promise<number> {
    if (!this.alive) return 0;
    const t0 = this.cpuTicks();
    const w0 = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, ms));
    if (!this.alive) return 0;
    const ticks = this.cpuTicks() - t0;
    const secs = Number(process.hrtime.bigint() - w0) / 1e9;
    return ticks / 100 / secs;
  }

  /** The last lines of the daemon's stderr. */
  stderrTail(): string {
    return this.tail.join('\n');
  }

  /** SIGKILLs the daemon and waits for it to go. */
  async kill(): Promise<void> {
    if (this.alive) this.child.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM (the CLI's clean exit), SIGKILL if it does not leave within `graceMs`. */
  async stop(graceMs = 3000): Promise<DaemonExit> {
    if (this.alive) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    return this.exit as DaemonExit;
  }

  private stdoutPartial = '';
  private heapWaiters: Array<(bytes: number) => void> = [];

  /**
   * Live JS heap of the daemon in bytes after a full GC (SIGUSR2 to the wrapper), or null if it
   * does not answer within `timeoutMs` or has exited.
   */
  liveHeap(timeoutMs = 2000): Promise<number | null> {
    if (!this.alive) return Promise.resolve(null);
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.heapWaiters = this.heapWaiters.filter((w) => w !== done); resolve(null); }, timeoutMs);
      const done = (bytes: number): void => { clearTimeout(timer); resolve(bytes < 0 ? null : bytes); };
      this.heapWaiters.push(done);
      this.child.kill('SIGUSR2');
    });
  }

  private onStdout(s: string): void {
    const lines = (this.stdoutPartial + s).split('\n');
    this.stdoutPartial = lines.pop() ?? '';
    for (const l of lines) {
      const m = /^fuzz-heap (-?\d+)$/.exec(l);
      if (m) this.heapWaiters.shift()?.(Number(m[1]));
    }
  }

  private onStderr(s: string): void {
    const lines = (this.partial + s).split('\n');
    this.partial = lines.pop() ?? '';
    for (const l of lines) {
      this.stderrLines++;
      this.tail.push(l);
      if (this.tail.length > STDERR_TAIL_LINES) this.tail.shift();
    }
  }
}
