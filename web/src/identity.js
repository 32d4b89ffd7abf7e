// Ed25519 identity keys (RFC 8032, pure Ed25519), as twistchat/crypto/identity.py.
// Signing is deterministic, so a key seeded as in Python gives the very same
// signatures. Verification is strict RFC 8032 (canonical encodings, S < L);
// like noble's strict mode it also refuses small-order public keys.

import { ed25519 } from '@noble/curves/ed25519.js';

import { isBytes, randomBytes } from './bytes.js';
import { BadSignature } from './errors.js';

export const PUBLIC_KEY_BYTES = 32;
export const SEED_BYTES = 32;
export const SIGNATURE_BYTES = 64;

/**
 * An identity key held in the page: { publicKey, sign(data) }. Anything with
 * that shape (a WebCrypto key kept non-extractable, say) can sign envelopes.
 */
export class Identity {
  #seed;

  constructor(seed) {
    if (!isBytes(seed) || seed.length !== SEED_BYTES) {
      throw new RangeError(`an Ed25519 secret key is ${SEED_BYTES} bytes`);
    }
    this.#seed = seed.slice();
    this.publicKey = ed25519.getPublicKey(this.#seed);
  }

  static generate() {
    return new Identity(randomBytes(SEED_BYTES));
  }

  sign(data) {
    return ed25519.sign(data, this.#seed);
  }
}

/** Check a 32-byte public key decodes to a point; throws BadSignature. */
export function checkPublicKey(publicKey) {
  if (!isBytes(publicKey) || publicKey.length !== PUBLIC_KEY_BYTES) {
    throw new BadSignature(`an identity public key is ${PUBLIC_KEY_BYTES} bytes`);
  }
  if (!ed25519.utils.isValidPublicKey(publicKey, false)) {
    throw new BadSignature('not a valid Ed25519 identity public key');
  }
  return publicKey;
}

/** Verify an Ed25519 signature; throws BadSignature. */
export function verify(publicKey, data, signature) {
  checkPublicKey(publicKey);
  if (!isBytes(signature) || signature.length !== SIGNATURE_BYTES) {
    throw new BadSignature(`a signature is ${SIGNATURE_BYTES} bytes`);
  }
  if (!ed25519.verify(signature, data, publicKey, { zip215: false })) throw new BadSignature();
}
