/**
 * Minimal structured logging used across the package. Backends run as daemons, so every rejected
 * input is logged with the request it came from; callers can swap the sink.
 * @module
 */

/** Severity of a log record. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Every level, lowest first. */
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/** Structured context of a record (connection id, queue, request name...). */
export type LogFields = Readonly<Record<string, string | number | boolean | bigint | null | undefined>>;

/** A log sink. */
export interface Logger {
  /** Writes one record; `fields` carry machine-readable context (JSON output keeps them). */
  log(level: LogLevel, message: string, fields?: LogFields): void;
  /** Whether records of `level` are kept (lets callers skip building costly messages). */
  enabled?(level: LogLevel): boolean;
}

/**
 * The part of a pino (or bunyan, or winston-like) logger this package uses: one method per level
 * taking `(fields, message)`. Pass such a logger anywhere a {@link Logger} is accepted via
 * {@link toLogger}.
 */
export interface PinoLikeLogger {
  /** Logs at debug level; `obj` holds the record's fields (bigints already converted to strings). */
  debug(obj: object, msg: string): void;
  /** Logs at info level. */
  info(obj: object, msg: string): void;
  /** Logs at warn level. */
  warn(obj: object, msg: string): void;
  /** Logs at error level. */
  error(obj: object, msg: string): void;
  /**
   * Whether `level` would be written; lets callers skip building costly fields. When absent every
   * level counts as enabled and the logger filters.
   */
  isLevelEnabled?(level: string): boolean;
}

/** Accepts a {@link Logger} or a pino-compatible logger and returns a {@link Logger}. */
export function toLogger(l: Logger | PinoLikeLogger): Logger {
  if (typeof (l as Logger).log === 'function') return l as Logger;
  const p = l as PinoLikeLogger;
  return {
    log(level, message, fields) {
      p[level](fields === undefined ? {} : jsonFields(fields), message);
    },
    enabled(level) {
      return p.isLevelEnabled?.(level) ?? true;
    },
  };
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Whether `s` names a log level. */
export function isLogLevel(s: string): s is LogLevel {
  return Object.prototype.hasOwnProperty.call(ORDER, s);
}

/** Options of {@link StderrLogger}. */
export interface StderrLoggerOptions {
  /** Lowest level written (default `info`; the VHOST_USER_LOG environment variable overrides). */
  level?: LogLevel;
  /** `text`: `TIME NAME LEVEL: message key=value...`; `json`: one JSON object per line. */
  format?: 'text' | 'json';
  /** Prefix each text line with an ISO-8601 timestamp (default true; JSON always has `time`). */
  timestamps?: boolean;
  /** Where lines go (default process.stderr). */
  write?: (line: string) => void;
}

/** Logs to stderr, one line per record, at or above the configured level. */
export class StderrLogger implements Logger {
  private readonly min: number;
  private readonly format: 'text' | 'json';
  private readonly timestamps: boolean;
  private readonly write: (line: string) => void;

  /**
   * @param name shown in every record (the program or daemon name)
   * @param options level, format, timestamps; a bare level is accepted for compatibility
   */
  constructor(readonly name = 'vhost-user', options: StderrLoggerOptions | LogLevel = {}) {
    const opts = typeof options === 'string' ? { level: options } : options;
    const env = process.env['VHOST_USER_LOG'];
    this.min = ORDER[env !== undefined && isLogLevel(env) ? env : opts.level ?? 'info'];
    this.format = opts.format ?? 'text';
    this.timestamps = opts.timestamps ?? true;
    this.write = opts.write ?? ((line) => { process.stderr.write(line); });
  }

  enabled(level: LogLevel): boolean {
    return ORDER[level] >= this.min;
  }

  log(level: LogLevel, message: string, fields?: LogFields): void {
    if (ORDER[level] < this.min) return;
    const time = new Date().toISOString();
    if (this.format === 'json') {
      this.write(`${JSON.stringify({ time, level, name: this.name, msg: message, ...(fields === undefined ? {} : jsonFields(fields)) })}\n`);
      return;
    }
    let extra = '';
    if (fields !== undefined) {
      for (const [k, v] of Object.entries(fields)) if (v !== undefined) extra += ` ${k}=${typeof v === 'string' && /\s/.test(v) ? JSON.stringify(v) : String(v)}`;
    }
    this.write(`${this.timestamps ? `${time} ` : ''}${this.name} ${level}: ${message}${extra}\n`);
  }
}

/** Fields as JSON-safe values (bigints as decimal strings). */
function jsonFields(fields: LogFields): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) out[k] = typeof v === 'bigint' ? v.toString() : v;
  return out;
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

  log(level: LogLevel, message: string, fields?: LogFields): void {
    if (level === 'debug' || level === 'info') {
      this.inner.log(level, message, fields);
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
      this.inner.log(level, message, fields);
    } else {
      this.dropped++;
    }
  }
}
