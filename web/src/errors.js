// The errors a peer can cause, one class per wire code, with the same codes,
// default messages, hierarchy and reconnect flags as twistchat/errors.py:
// `final` (a reconnecting client gives up) and `retryOnlyWhenReconnecting`
// (final at the first login). CODES maps each code to its class; fromCode
// rebuilds the error a server reported.

export const CODES = new Map();

export class TwistchatError extends Error {
  constructor(message) {
    super(message || new.target.defaultMessage);
    this.name = new.target.name;
    this.code = new.target.code;
  }

  get final() {
    return this.constructor.final;
  }

  get retryOnlyWhenReconnecting() {
    return this.constructor.retryOnlyWhenReconnecting;
  }
}
// Keep the name through minification (the bundle renames the class itself).
Object.defineProperty(TwistchatError, 'name', { value: 'TwistchatError' });
TwistchatError.code = 'error';
TwistchatError.final = false;
TwistchatError.retryOnlyWhenReconnecting = false;
TwistchatError.defaultMessage = 'Base of every error twistchat raises on purpose.';
CODES.set('error', TwistchatError);

function define(name, parent, code, defaultMessage, { final = false, retry = false } = {}) {
  const cls = { [name]: class extends parent {} }[name];
  cls.code = code;
  cls.final = final;
  cls.retryOnlyWhenReconnecting = retry;
  cls.defaultMessage = defaultMessage;
  if (CODES.has(code)) throw new TypeError(`${name} reuses the code ${code}`);
  CODES.set(code, cls);
  return cls;
}

const FINAL = { final: true };

// --- wire level
export const ProtocolError = define(
  'ProtocolError', TwistchatError, 'protocol', 'The peer broke the protocol.', FINAL);
export const FrameTooLong = define(
  'FrameTooLong', ProtocolError, 'frame-too-long', 'A frame was longer than the limit.', FINAL);
export const BadMessage = define(
  'BadMessage', ProtocolError, 'bad-message', 'A frame did not decode to a valid message.',
  FINAL);
export const UnexpectedMessage = define(
  'UnexpectedMessage', ProtocolError, 'unexpected-message',
  'A valid message arrived at a point of the protocol where it is not allowed.', FINAL);
export const VersionMismatch = define(
  'VersionMismatch', ProtocolError, 'version', 'The peer speaks a protocol version we do not.',
  FINAL);

// --- authentication
export const AuthFailed = define(
  'AuthFailed', TwistchatError, 'auth-failed', 'The password handshake failed.', FINAL);
export const WrongPassword = define(
  'WrongPassword', AuthFailed, 'wrong-password', 'wrong password', FINAL);
export const ServerNotAuthenticated = define(
  'ServerNotAuthenticated', WrongPassword, 'server-not-authenticated',
  'wrong password, or the server could not prove it knows this room', FINAL);
export const WeakParameters = define(
  'WeakParameters', AuthFailed, 'weak-parameters',
  'the server asked for password hashing parameters outside the allowed range', FINAL);
export const SaltChanged = define(
  'SaltChanged', AuthFailed, 'salt-changed',
  'the server now asks for another password salt than when this session logged in ' +
    '(was the room password changed?); start the client again with the current password',
  FINAL);
export const BadPoint = define(
  'BadPoint', AuthFailed, 'bad-point', 'a handshake value is not a valid point on the curve',
  FINAL);

// --- room level
export const Refused = define(
  'Refused', TwistchatError, 'refused', 'The server refused the request.');
export const NameInvalid = define('NameInvalid', Refused, 'name-invalid', 'invalid name', FINAL);
export const NameTaken = define(
  'NameTaken', Refused, 'name-taken', 'name already taken in this room', { retry: true });
export const RoomFull = define('RoomFull', Refused, 'room-full', 'the room is full');
export const RoomClosed = define(
  'RoomClosed', Refused, 'room-closed', 'the room was closed by the server operator', FINAL);
export const LimitExceeded = define('LimitExceeded', Refused, 'limit', 'a limit was exceeded');
export const Busy = define('Busy', LimitExceeded, 'busy', 'the server is busy: try again later');
export const Penalised = define(
  'Penalised', LimitExceeded, 'penalty', 'too many failed logins from your address',
  { retry: true });
export const TooFast = define(
  'TooFast', LimitExceeded, 'rate', 'disconnected for sending too fast', FINAL);
export const SlowReader = define(
  'SlowReader', LimitExceeded, 'slow',
  'disconnected: you stopped reading and too much was queued for you');

// --- the connection
export const Timeout = define('Timeout', TwistchatError, 'timeout', 'no answer in time');
export const ServerShutdown = define(
  'ServerShutdown', TwistchatError, 'shutdown', 'the server is shutting down');
export const InternalError = define(
  'InternalError', TwistchatError, 'internal', 'internal server error');
export const ConnectionClosed = define(
  'ConnectionClosed', TwistchatError, 'closed', 'connection closed');
export const TLSFailed = define('TLSFailed', TwistchatError, 'tls', 'TLS failed', FINAL);

// --- sealed messages
export const Rejected = define(
  'Rejected', TwistchatError, 'rejected', 'A sealed message was rejected by the receiver.');
export const Undecryptable = define(
  'Undecryptable', Rejected, 'undecryptable',
  'the message could not be opened: it was altered, attributed to another sender, ' +
    'or sealed under another room key');
export const Replayed = define(
  'Replayed', Rejected, 'replayed',
  'the message repeats or precedes one already received from the same sender session');
export const BadSignature = define(
  'BadSignature', Rejected, 'bad-signature',
  "the message's signature does not verify under the sender's identity key");
export const BadEnvelope = define(
  'BadEnvelope', Rejected, 'bad-envelope',
  'the signed message inside the sealed payload is malformed');

// --- trust and configuration
export const TrustError = define(
  'TrustError', TwistchatError, 'trust', "The server's certificate could not be trusted.", FINAL);
export const FingerprintChanged = define(
  'FingerprintChanged', TrustError, 'fingerprint-changed',
  "the server's certificate fingerprint changed since the last connection", FINAL);
export const ConfigError = define(
  'ConfigError', TwistchatError, 'config', 'A configuration file or option is unusable.', FINAL);

/**
 * The error a server reported in an `error` frame: an instance of the class
 * of `code`, or for a code nobody knows a TwistchatError keeping it (not final).
 */
export function fromCode(code, text) {
  const cls = CODES.get(code);
  if (cls) return new cls(text);
  const error = new TwistchatError(text);
  error.code = code;
  return error;
}
