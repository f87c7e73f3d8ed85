/**
 * Minimal structured logging used across the package. Backends run as daemons, so every rejected
 * input is logged with the request it came from; callers can swap the sink.
 * @module
 */

/** Severity of a log record. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** A log sink. */
export interface Logger {
  /** Writes one record. */
  log(level: LogLevel, message: string): void;
  /** Whether records of `level` are kept (lets callers skip building costly messages). */
  enabled?(level: LogLevel): boolean;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Logs to stderr, one line per record, at or above `minLevel` (env VHOST_USER_LOG overrides). */
export class StderrLogger implements Logger {
  private readonly min: number;

  constructor(private readonly prefix = 'vhost-user', minLevel: LogLevel = 'info') {
    const env = process.env['VHOST_USER_LOG'] as LogLevel | undefined;
    this.min = ORDER[env !== undefined && env in ORDER ? env : minLevel];
  }

  enabled(level: LogLevel): boolean {
    return ORDER[level] >= this.min;
  }

  log(level: LogLevel, message: string): void {
    if (ORDER[level] < this.min) return;
    process.stderr.write(`${this.prefix}: ${level}: ${message}\n`);
  }
}

/** Discards everything (tests that provoke errors on purpose). */
export const silentLogger: Logger = { log() {} };

/** The logger used when none is given. */
export const defaultLogger: Logger = new StderrLogger();
