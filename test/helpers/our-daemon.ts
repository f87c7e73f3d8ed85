/**
 * Spawns this project's device daemons (dist/src/cli/<name>.js) as separate processes, as QEMU
 * users run them, and waits until they listen.
 */
import type { TestContext } from 'node:test';
import { join } from 'node:path';
import { ManagedProcess, type ExitStatus } from './process.js';
import { repoRoot } from './tools.js';

/** A running daemon of ours. */
export interface OurDaemon {
  readonly socketPath: string;
  readonly proc: ManagedProcess;
  readonly exited: Promise<ExitStatus>;
  /** SIGTERM, then SIGKILL after a grace period. */
  stop(): Promise<ExitStatus>;
}

/**
 * Starts `node dist/src/cli/<cli>.js --socket-path SOCK ...args` and waits until it listens: the CLIs
 * print their `<program>: serving ... on SOCK` banner once the socket is listening (an event, no polling).
 * The process is stopped when the test `t` ends.
 */
export async function startOurDaemon(
  cli: string, socketPath: string, args: readonly string[], t?: TestContext, timeoutMs = 10_000, env?: NodeJS.ProcessEnv,
): Promise<OurDaemon> {
  const script = join(repoRoot(), 'dist', 'src', 'cli', `${cli}.js`);
  const proc = ManagedProcess.spawn(process.execPath, [script, '--socket-path', socketPath, ...args],
    env === undefined ? { label: cli } : { label: cli, env: { ...process.env, ...env } });
  const d: OurDaemon = {
    socketPath,
    proc,
    exited: proc.exited,
    stop: () => proc.terminate({ sig: 'SIGTERM', graceMs: 5000 }),
  };
  t?.after(async () => { await d.stop(); });
  try {
    await proc.waitForText(/^[\w-]+: serving .*\n/m, timeoutMs);
  } catch (e) {
    await d.stop();
    throw e;
  }
  return d;
}
