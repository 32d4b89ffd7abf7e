// twistchat in the page: the cryptography and the protocol codec of the
// terminal client (twistchat/crypto, twistchat/wire), byte for byte, and its
// session (twistchat/client): login, presence, history, pins, the chains,
// reconnect, over any transport (transport.js).

export * as bytes from './bytes.js';
export * as errors from './errors.js';
export * as kdf from './kdf.js';
export * as spake2plus from './spake2plus.js';
export * as seal from './seal.js';
export * as identity from './identity.js';
export * as signed from './signed.js';
export * as safety from './safety.js';
export * as wire from './wire.js';
export * as pins from './pins.js';
export * as transcript from './transcript.js';
export * as transport from './transport.js';
export * as session from './session.js';
