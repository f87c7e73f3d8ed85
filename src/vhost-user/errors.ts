/**
 * The error thrown by the vhost-user codec for any malformed message.
 * @module
 */

/** What was wrong with a message. */
export type ProtocolErrorKind =
  /** Header version bits are not 1, or reply/request flag on the wrong kind of message. */
  | 'version'
  /** Payload size does not match what the request allows. */
  | 'size'
  /** Wrong number of file descriptors for the request. */
  | 'fds'
  /** Memory region count out of range or inconsistent with size / fds. */
  | 'regions'
  /** Request id the spec does not define (on that channel). */
  | 'unknown-request'
  /** Fewer bytes than the header (or a length field) promises. */
  | 'truncated'
  /** A field holds a value the spec forbids (reserved bits, enum out of range, ...). */
  | 'value';

/**
 * A peer sent a message that violates the vhost-user protocol. The connection should treat the peer
 * as broken: the codec never closes fds, so the caller must close the fds that came with the message.
 */
export class VhostUserProtocolError extends Error {
  /** Spec name of the request (e.g. `VHOST_USER_SET_MEM_TABLE`) or `unknown(N)`. */
  readonly request: string;
  /** Category of the violation, stable for programmatic handling. */
  readonly kind: ProtocolErrorKind;

  /** `message` should describe the violation; the request name is prefixed automatically. */
  constructor(request: string, kind: ProtocolErrorKind, message: string) {
    super(`${request}: ${message}`);
    this.name = 'VhostUserProtocolError';
    this.request = request;
    this.kind = kind;
  }
}

/**
 * Why a request failed at the back-end, stable for logs and tests (match on `code`, not on text):
 * - `not-negotiated`: the feature the spec requires for the request was not negotiated;
 * - `not-supported`: the back-end (or device) does not implement the request;
 * - `invalid-argument`: a value the handler cannot accept (e.g. a flag combination);
 * - `out-of-range`: an index, offset or size outside what the device has;
 * - `invalid-state`: the request is not valid in the current session state;
 * - `device-error`: the device or the host failed (an errno, I/O, a worker).
 */
export type VhostUserErrorCode =
  | 'not-negotiated'
  | 'not-supported'
  | 'invalid-argument'
  | 'out-of-range'
  | 'invalid-state'
  | 'device-error';

/**
 * Errno sent in a failure reply for each code (the spec only requires non-zero; the errno tells a
 * front-end's log more than a bare 1).
 */
export const VHOST_USER_ERROR_ERRNO: Readonly<Record<VhostUserErrorCode, number>> = {
  'not-negotiated': 1, // EPERM
  'not-supported': 95, // EOPNOTSUPP
  'invalid-argument': 22, // EINVAL
  'out-of-range': 34, // ERANGE
  'invalid-state': 16, // EBUSY
  'device-error': 5, // EIO
};

/**
 * A request handled by the back-end failed. Handlers throw it (or any Error, which the endpoint
 * classifies with {@link toVhostUserError}); the endpoint logs `request` and `code` and turns it
 * into the error reply or the connection close the spec prescribes.
 */
export class VhostUserError extends Error {
  /** Spec name of the request (e.g. `VHOST_USER_SET_LOG_BASE`), or '' when not yet known. */
  readonly request: string;
  /** What kind of failure this is. */
  readonly code: VhostUserErrorCode;
  /** Errno reported to the front-end (positive, non-zero). */
  readonly errno: number;

  /** `message` describes the failure; the request name is prefixed when given. */
  constructor(code: VhostUserErrorCode, request: string, message: string, options?: { cause?: unknown; errno?: number }) {
    super(request === '' ? message : `${request}: ${message}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VhostUserError';
    this.code = code;
    this.request = request;
    this.errno = options?.errno ?? VHOST_USER_ERROR_ERRNO[code];
  }
}

/**
 * Gives any error thrown by a handler a code: a {@link VhostUserError} keeps its own; RangeError
 * is `out-of-range`, TypeError `invalid-argument`, anything else (errno-carrying system errors
 * included, whose errno is kept) `device-error`.
 */
export function toVhostUserError(e: unknown, request: string): VhostUserError {
  if (e instanceof VhostUserError) return e.request === '' ? new VhostUserError(e.code, request, e.message, { cause: e, errno: e.errno }) : e;
  const err = e instanceof Error ? e : new Error(String(e));
  const errno = (err as { errno?: unknown }).errno;
  const n = typeof errno === 'number' && errno !== 0 ? Math.abs(errno) : undefined;
  const code: VhostUserErrorCode = err instanceof RangeError ? 'out-of-range' : err instanceof TypeError ? 'invalid-argument' : 'device-error';
  return new VhostUserError(code, request, err.message, { cause: err, errno: n });
}
