// twistchat in the page: the cryptography and the protocol codec of the
// terminal client (twistchat/crypto, twistchat/wire), byte for byte.

export * as bytes from './bytes.js';
export * as errors from './errors.js';
export * as kdf from './kdf.js';
export * as spake2plus from './spake2plus.js';
export * as seal from './seal.js';
export * as identity from './identity.js';
export * as signed from './signed.js';
export * as safety from './safety.js';
export * as wire from './wire.js';
