/**
 * Shared command-line handling for the `vhost-user-<device>` daemons, following the vhost-user
 * spec's "Backend program conventions": --socket-path / --fd, --print-capabilities, no
 * daemonizing, a prompt and clean exit on SIGTERM (and SIGINT).
 * @module
 */
import { fstatSync, readFileSync, unlinkSync } from 'node:fs';
import * as sys from '../sys/index.js';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VhostUserDaemon } from '../backend/daemon.js';
import type { VhostUserBackend } from '../backend/backend.js';
import { DEFAULT_SOCKET_MODE, UnixListener, checkSocketPath } from '../vhost-user/listener.js';
import { LOG_LEVELS, RateLimitedLogger, StderrLogger, isLogLevel, type Logger, type StderrLoggerOptions } from '../log.js';

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
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

/** After SIGTERM/SIGINT the daemon exits within this bound even if requests are still running. */
export const SHUTDOWN_TIMEOUT_MS = 4000;
/** Exit status when shutdown had to give up waiting (or a second signal came). */
const EXIT_FORCED = 3;

/** --log-level / --log-format. */
export function logOptions(values: OptionValues): StderrLoggerOptions {
  const level = values['log-level'] as string | undefined;
  const format = values['log-format'] as string | undefined;
  if (level !== undefined && !isLogLevel(level)) throw new UsageError(`--log-level ${level}: one of ${LOG_LEVELS.join(', ')}`);
  if (format !== undefined && format !== 'text' && format !== 'json') throw new UsageError(`--log-format ${format}: text or json`);
  return { ...(level !== undefined ? { level } : {}), ...(format !== undefined ? { format } : {}) };
}

/** Reads where the daemon meets its front-end from the options (usage errors throw UsageError). */
function parseEndpoint(values: OptionValues): Endpoint {
  const socketPath = values['socket-path'] as string | undefined;
  const fdArg = values.fd as string | undefined;
  if ((socketPath === undefined) === (fdArg === undefined)) throw new UsageError('exactly one of --socket-path and --fd is required');
  const group = values['socket-group'] as string | undefined;
  const modeArg = values['socket-mode'] as string | undefined;
  if (fdArg !== undefined) {
    if (group !== undefined || modeArg !== undefined) throw new UsageError('--socket-mode and --socket-group apply to --socket-path only');
    return inheritedSocket(fdArg);
  }
  if (modeArg !== undefined && !/^0?[0-7]{1,3}$/.test(modeArg)) throw new UsageError(`--socket-mode ${modeArg} is not an octal permission mode (e.g. 0600)`);
  const mode = modeArg !== undefined ? parseInt(modeArg, 8) : group !== undefined ? 0o660 : DEFAULT_SOCKET_MODE;
  // Before the device opens (and locks) its image: a bad path must not cost anything.
  try {
    checkSocketPath(socketPath!);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return { kind: 'path', path: socketPath!, mode, group };
}

/** The options every device CLI takes (parseArgs spec). */
export const COMMON_OPTIONS = {
  'socket-path': { type: 'string' },
  fd: { type: 'string' },
  'socket-mode': { type: 'string' },
  'socket-group': { type: 'string' },
  'print-capabilities': { type: 'boolean' },
  version: { type: 'boolean', short: 'V' },
  'log-level': { type: 'string' },
  stats: { type: 'string' },
  'log-format': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Exit status of a usage error (bad or missing option), as the back-end conventions ask. */
export const EXIT_USAGE = 2;
/** Exit status of a runtime failure (cannot open the image, cannot listen...). */
export const EXIT_FAILURE = 1;

/** A bad command line: the CLI prints it on one line and exits with {@link EXIT_USAGE}. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The package version, for `--version`. */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** How the daemon reaches its front-end: a socket path, or an inherited fd of either kind. */
export type Endpoint =
  | { kind: 'path'; path: string; mode: number; group: string | undefined }
  | { kind: 'listening-fd'; fd: number }
  | { kind: 'connected-fd'; fd: number };

/** Checks `--fd N` before anything else happens: it must be a Unix stream socket. */
export function inheritedSocket(arg: string): Endpoint {
  const fd = /^\d+$/.test(arg) ? Number(arg) : NaN;
  if (!Number.isSafeInteger(fd) || fd > 0x7fffffff) throw new UsageError(`--fd ${arg} is not a file descriptor number`);
  let st;
  try {
    st = fstatSync(fd);
  } catch {
    throw new UsageError(`--fd ${fd} is not an open file descriptor`);
  }
  if (!st.isSocket()) {
    const what = st.isFile() ? 'a regular file' : st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a pipe' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device' : 'some other kind of file';
    throw new UsageError(`--fd ${fd} is not a socket (it is ${what})`);
  }
  const info = sys.socketInfo(fd);
  if (info.domain !== sys.AF_UNIX || info.type !== sys.SOCK_STREAM) throw new UsageError(`--fd ${fd} is not a Unix stream socket`);
  return info.listening ? { kind: 'listening-fd', fd } : { kind: 'connected-fd', fd };
}

/** Runs a device daemon CLI to completion; resolves with the process exit status. */
export async function runBackendCli(spec: BackendCliSpec, argv: string[] = process.argv.slice(2)): Promise<number> {
  const fail = (msg: string, status = EXIT_FAILURE): number => {
    process.stderr.write(`${spec.program}: ${msg}\n`);
    return status;
  };
  // The conventions: with --print-capabilities, other options and arguments are ignored.
  if (argv.includes('--print-capabilities')) {
    process.stdout.write(`${JSON.stringify({ type: spec.type, features: spec.capabilities })}\n`);
    return 0;
  }
  let values: OptionValues;
  try {
    values = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...spec.options }, strict: true, allowPositionals: false }).values as OptionValues;
  } catch (e) {
    return fail(`${(e as Error).message} (see --help)`, EXIT_USAGE);
  }
  if (values.version) {
    process.stdout.write(`${spec.program} ${packageVersion()}\n`);
    return 0;
  }
  if (values.help) {
    process.stdout.write(`usage: ${spec.program} (--socket-path PATH | --fd N) [options]\n\n` +
      `  --socket-path PATH      listen on this Unix socket (only a stale socket file is replaced)\n` +
      `  --socket-mode MODE      permissions of the socket file, octal (default 0600; 0660 with --socket-group)\n` +
      `  --socket-group GROUP    group owning the socket file (name or gid)\n` +
      `  --fd N                  serve inherited socket N: a listening socket, or a connected one\n` +
      `                          (e.g. a socketpair end from libvirt; the daemon exits when it closes)\n` +
      `  --print-capabilities    print the back-end capabilities as JSON and exit\n` +
      `  --log-level LEVEL       debug, info (default), warn or error (env VHOST_USER_LOG overrides)\n` +
      `  --log-format FORMAT     text (default: timestamped lines) or json (one object per line)\n` +
      `  --stats SECONDS         log per-queue counters every SECONDS (also on SIGUSR1 and at disconnect)\n` +
      `  --version               print the version and exit\n` +
      `  -h, --help              print this help and exit\n` +
      `${spec.usage}\n`);
    return 0;
  }
  let endpoint: Endpoint;
  let statsEvery: number | undefined;
  try {
    statsEvery = intOption(values, 'stats', 1, 86_400);
    endpoint = parseEndpoint(values);
  } catch (e) {
    return fail((e as Error).message, e instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE);
  }
  let device: Awaited<ReturnType<BackendCliSpec['create']>>;
  // Rejected guest input is logged per request; the rate limit keeps a hostile guest from
  // turning that into a log flood.
  let logger: Logger;
  try {
    logger = new RateLimitedLogger(new StderrLogger(spec.program, logOptions(values)));
  } catch (e) {
    return fail((e as Error).message, EXIT_USAGE);
  }
  try {
    device = await spec.create(values, logger);
  } catch (e) {
    return fail((e as Error).message, e instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE);
  }
  const daemon = new VhostUserDaemon(spec.program, device.backend, { logger });
  try {
    if (endpoint.kind === 'path') {
      daemon.start(UnixListener.listen(endpoint.path, { mode: endpoint.mode, ...(endpoint.group !== undefined ? { group: endpoint.group } : {}) }));
    } else if (endpoint.kind === 'listening-fd') {
      daemon.start(UnixListener.fromFd(endpoint.fd));
    } else {
      // One front-end on the other end of the socket: serve it, then exit.
      sys.setNonBlocking(endpoint.fd, true);
      daemon.serveConnectedFd(endpoint.fd);
    }
  } catch (e) {
    await device.close?.();
    return fail(`cannot listen: ${(e as Error).message}`);
  }
  const socketPath = endpoint.kind === 'path' ? endpoint.path : undefined;
  const removeSignals = handleShutdownSignals(logger, socketPath === undefined ? [] : [socketPath], () => daemon.stop(), 'finishing in-flight requests and exiting');
  const onUsr1 = (): void => daemon.logStats('SIGUSR1');
  process.on('SIGUSR1', onUsr1);
  const statsTimer = statsEvery === undefined ? null : setInterval(() => daemon.logStats('stats'), statsEvery * 1000);
  statsTimer?.unref();
  // Only now: whoever waits for the banner may signal us right away.
  process.stdout.write(`${device.describe(socketPath ?? null)}\n`);
  try {
    await daemon.wait();
  } catch (e) {
    await device.close?.();
    return fail((e as Error).message);
  }
  await device.close?.();
  removeSignals();
  process.off('SIGUSR1', onUsr1);
  if (statsTimer !== null) clearInterval(statsTimer);
  return 0;
}

/**
 * SIGINT/SIGTERM for a daemon CLI: the first signal calls `stop` and bounds it to
 * SHUTDOWN_TIMEOUT_MS (then the socket paths are unlinked and the process exits EXIT_FORCED); a
 * second signal more than 1 s later exits at once. Returns the function that removes the handlers.
 */
export function handleShutdownSignals(logger: Logger, socketPaths: readonly string[], stop: () => Promise<unknown>, what: string): () => void {
  let signalled: string | null = null;
  let signalledAt = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled !== null) {
      // A second signal: the operator does not want to wait. (Ctrl-C reaches a whole process
      // group, e.g. npm, its script and this daemon, which forward it too: copies arriving
      // together are one request.)
      if (performance.now() - signalledAt < 1000) return;
      logger.log('warn', `${sig} again: exiting now`);
      process.exit(EXIT_FORCED);
    }
    signalled = sig;
    signalledAt = performance.now();
    logger.log('info', `${sig}: ${what}`);
    // Shutdown is bounded whatever the queues do (a guest flooding them, a stuck disk). Exiting
    // early loses nothing acknowledged: a request is acknowledged only after its I/O completed.
    setTimeout(() => {
      logger.log('warn', `did not stop within ${SHUTDOWN_TIMEOUT_MS} ms of ${sig}: exiting anyway`);
      for (const path of socketPaths) {
        try { unlinkSync(path); } catch { /* already gone */ }
      }
      process.exit(EXIT_FORCED);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    void stop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}
