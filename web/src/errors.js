// The errors a peer can cause, one class per wire code, with the same codes and
// default messages as twistchat/errors.py.

export class TwistchatError extends Error {
  constructor(message) {
    super(message || new.target.defaultMessage);
    this.name = new.target.name;
    this.code = new.target.code;
  }
}
TwistchatError.code = 'error';
TwistchatError.defaultMessage = 'Base of every error twistchat raises on purpose.';

function define(name, parent, code, defaultMessage) {
  const cls = { [name]: class extends parent {} }[name];
  cls.code = code;
  cls.defaultMessage = defaultMessage;
  return cls;
}

export const BadMessage = define(
  'BadMessage', TwistchatError, 'bad-message', 'A frame did not decode to a valid message.');
export const WrongPassword = define(
  'WrongPassword', TwistchatError, 'wrong-password', 'wrong password');
export const ServerNotAuthenticated = define(
  'ServerNotAuthenticated', WrongPassword, 'server-not-authenticated',
  'wrong password, or the server could not prove it knows this room');
export const WeakParameters = define(
  'WeakParameters', TwistchatError, 'weak-parameters',
  'the server asked for password hashing parameters outside the allowed range');
export const BadPoint = define(
  'BadPoint', TwistchatError, 'bad-point',
  'a handshake value is not a valid point on the curve');
export const Undecryptable = define(
  'Undecryptable', TwistchatError, 'undecryptable',
  'the message could not be opened: it was altered, attributed to another sender, ' +
    'or sealed under another room key');
export const Replayed = define(
  'Replayed', TwistchatError, 'replayed',
  'the message repeats or precedes one already received from the same sender session');
export const BadSignature = define(
  'BadSignature', TwistchatError, 'bad-signature',
  "the message's signature does not verify under the sender's identity key");
export const BadEnvelope = define(
  'BadEnvelope', TwistchatError, 'bad-envelope',
  'the signed message inside the sealed payload is malformed');
