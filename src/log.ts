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

/**
 * Passes at most `burst` warn/error records per `windowMs` to `inner`, then drops the rest of that
 * window and reports how many were dropped when the next window starts. A guest that floods the
 * device with bad requests must not be able to flood the host's logs too. debug/info records are
 * passed through unchanged.
 */
export class RateLimitedLogger implements Logger {
  private windowStart = 0;
  private count = 0;
  private dropped = 0;

  constructor(
    private readonly inner: Logger,
    private readonly burst = 50,
    private readonly windowMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  enabled(level: LogLevel): boolean {
    return this.inner.enabled?.(level) ?? true;
  }

  log(level: LogLevel, message: string): void {
    if (level === 'debug' || level === 'info') {
      this.inner.log(level, message);
      return;
    }
    const t = this.now();
    if (t - this.windowStart >= this.windowMs) {
      if (this.dropped > 0) this.inner.log('warn', `${this.dropped} similar log records suppressed in the last ${Math.round((t - this.windowStart) / 1000)} s`);
      this.windowStart = t;
      this.count = 0;
      this.dropped = 0;
    }
    if (this.count < this.burst) {
      this.count++;
      this.inner.log(level, message);
    } else {
      this.dropped++;
    }
  }
}
