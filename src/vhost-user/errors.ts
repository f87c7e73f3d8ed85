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
