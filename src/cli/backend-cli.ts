/**
 * Shared command-line handling for the `vhost-user-<device>` daemons, following the vhost-user
 * spec's "Backend program conventions": --socket-path / --fd, --print-capabilities, no
 * daemonizing, a prompt and clean exit on SIGTERM (and SIGINT).
 * @module
 */
import { unlinkSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VhostUserDaemon, type VhostUserBackend } from '../backend/index.js';
import { DEFAULT_SOCKET_MODE, UnixListener, checkSocketPath } from '../vhost-user/listener.js';
import { RateLimitedLogger, StderrLogger, type Logger } from '../log.js';

/** Option values as parsed by node:util parseArgs. */
export type OptionValues = Record<string, string | boolean | undefined>;

/** What a device CLI contributes. */
export interface BackendCliSpec {
  /** Program name, e.g. `vhost-user-blk`. */
  program: string;
  /** `type` of the --print-capabilities JSON (vhost-user.json schema), e.g. `block`. */
  type: string;
  /** `features` of the --print-capabilities JSON. */
  capabilities: string[];
  /** Device-specific options (in addition to the conventional ones). */
  options: NonNullable<ParseArgsConfig['options']>;
  /** Usage text for the device-specific options. */
  usage: string;
  /**
   * Builds the device from the parsed options; throw to refuse to start (exit status 1).
   * `describe(socketPath)` is printed on stdout once the daemon listens (e.g. a QEMU command line).
   */
  create(values: OptionValues, logger: Logger): Promise<{ backend: VhostUserBackend; describe(socketPath: string | null): string; close?(): Promise<void> }>;
}

/**
 * Reads integer option `--name` within [min, max]; undefined when absent. Throws a one-line error
 * (the CLI prints it and exits 1) for anything else.
 */
export function intOption(values: OptionValues, name: string, min: number, max: number): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

/** After SIGTERM/SIGINT the daemon exits within this bound even if requests are still running. */
export const SHUTDOWN_TIMEOUT_MS = 4000;
/** Exit status when shutdown had to give up waiting (or a second signal came). */
const EXIT_FORCED = 3;

const COMMON_OPTIONS = {
  'socket-path': { type: 'string' },
  fd: { type: 'string' },
  'socket-mode': { type: 'string' },
  'socket-group': { type: 'string' },
  'print-capabilities': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Runs a device daemon CLI to completion; resolves with the process exit status. */
export async function runBackendCli(spec: BackendCliSpec, argv: string[] = process.argv.slice(2)): Promise<number> {
  const fail = (msg: string): number => {
    process.stderr.write(`${spec.program}: ${msg}\n`);
    return 1;
  };
  let values: OptionValues;
  try {
    values = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...spec.options }, strict: true, allowPositionals: false }).values as OptionValues;
  } catch (e) {
    return fail(`${(e as Error).message} (see --help)`);
  }
  if (values['print-capabilities']) {
    process.stdout.write(`${JSON.stringify({ type: spec.type, features: spec.capabilities })}\n`);
    return 0;
  }
  if (values.help) {
    process.stdout.write(`usage: ${spec.program} (--socket-path PATH | --fd N) [options]\n\n` +
      `  --socket-path PATH      listen on this Unix socket (only a stale socket file is replaced)\n` +
      `  --socket-mode MODE      permissions of the socket file, octal (default 0600; 0660 with --socket-group)\n` +
      `  --socket-group GROUP    group owning the socket file (name or gid)\n` +
      `  --fd N                  serve the inherited listening socket N\n` +
      `  --print-capabilities    print the back-end capabilities as JSON and exit\n` +
      `${spec.usage}\n`);
    return 0;
  }
  const socketPath = values['socket-path'] as string | undefined;
  const fdArg = values.fd as string | undefined;
  if ((socketPath === undefined) === (fdArg === undefined)) return fail('exactly one of --socket-path and --fd is required');
  const group = values['socket-group'] as string | undefined;
  const modeArg = values['socket-mode'] as string | undefined;
  if (fdArg !== undefined && (group !== undefined || modeArg !== undefined)) return fail('--socket-mode and --socket-group apply to --socket-path only');
  if (modeArg !== undefined && !/^0?[0-7]{1,3}$/.test(modeArg)) return fail(`--socket-mode ${modeArg} is not an octal permission mode (e.g. 0600)`);
  const mode = modeArg !== undefined ? parseInt(modeArg, 8) : group !== undefined ? 0o660 : DEFAULT_SOCKET_MODE;
  if (socketPath !== undefined) {
    // Before the device opens (and locks) its image: a bad path must not cost anything.
    try {
      checkSocketPath(socketPath);
    } catch (e) {
      return fail((e as Error).message);
    }
  }
  let listener: UnixListener;
  let device: Awaited<ReturnType<BackendCliSpec['create']>>;
  // Rejected guest input is logged per request; the rate limit keeps a hostile guest from
  // turning that into a log flood.
  const logger = new RateLimitedLogger(new StderrLogger(spec.program));
  try {
    device = await spec.create(values, logger);
  } catch (e) {
    return fail((e as Error).message);
  }
  try {
    if (fdArg !== undefined) {
      const fd = Number(fdArg);
      if (!Number.isInteger(fd) || fd < 0) return fail(`--fd ${fdArg} is not a file descriptor number`);
      listener = UnixListener.fromFd(fd);
    } else {
      listener = UnixListener.listen(socketPath!, { mode, ...(group !== undefined ? { group } : {}) });
    }
  } catch (e) {
    await device.close?.();
    return fail(`cannot listen: ${(e as Error).message}`);
  }
  const daemon = new VhostUserDaemon(spec.program, device.backend, { logger });
  daemon.start(listener);
  let signalled: string | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled !== null) {
      // A second signal: the operator does not want to wait.
      logger.log('warn', `${sig} again: exiting now`);
      process.exit(EXIT_FORCED);
    }
    signalled = sig;
    logger.log('info', `${sig}: finishing in-flight requests and exiting`);
    // Shutdown is bounded whatever the queues do (a guest flooding them, a stuck disk). Exiting
    // early loses nothing acknowledged: a request is acknowledged only after its I/O completed.
    setTimeout(() => {
      logger.log('warn', `in-flight requests did not finish within ${SHUTDOWN_TIMEOUT_MS} ms of ${sig}: exiting anyway`);
      if (socketPath !== undefined) {
        try { unlinkSync(socketPath); } catch { /* already gone */ }
      }
      process.exit(EXIT_FORCED);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    void daemon.stop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Only now: whoever waits for the banner may signal us right away.
  process.stdout.write(`${device.describe(socketPath ?? null)}\n`);
  try {
    await daemon.wait();
  } catch (e) {
    await device.close?.();
    return fail((e as Error).message);
  }
  await device.close?.();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  return 0;
}
