// Ed25519 identity keys (RFC 8032, pure Ed25519), as twistchat/crypto/identity.py.
// Signing is deterministic, so a key seeded as in Python gives the very same
// signatures. Verification is strict RFC 8032 (canonical encodings, S < L);
// like noble's strict mode it also refuses small-order public keys.

import { ed25519 } from '@noble/curves/ed25519.js';

import {
  bytesToInt, concat, equalBytes, intToBytes, isBytes, lengthPrefixed16, randomBytes, utf8,
} from './bytes.js';
import { BadSignature } from './errors.js';

export const PUBLIC_KEY_BYTES = 32;
export const SEED_BYTES = 32;
export const SIGNATURE_BYTES = 64;
/** Bytes of a device vouch: voucher key (32) | not_after (8) | signature (64). */
export const VOUCH_BYTES = PUBLIC_KEY_BYTES + 8 + SIGNATURE_BYTES;
export const MAX_NOT_AFTER = 2n ** 63n - 1n;
const VOUCH_LABEL = utf8('twistchat/2 device vouch\0');

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

// --- device vouches, as twistchat/crypto/vouch.py (docs/protocol.md 12.8) ---------

function notAfterValue(value) {
  const v = typeof value === 'number' && Number.isSafeInteger(value) ? BigInt(value) : value;
  if (typeof v !== 'bigint' || v < 0n || v > MAX_NOT_AFTER) throw new RangeError('not_after out of range');
  return v;
}

/**
 * The bytes a vouch signs: "twistchat/2 device vouch\0" || str(room) ||
 * str(name) || voucher (32) || newKey (32) || notAfter (8, big-endian seconds).
 */
export function vouchStatement(room, name, voucher, newKey, notAfter) {
  for (const [what, key] of [['voucher', voucher], ['new key', newKey]]) {
    if (!isBytes(key) || key.length !== PUBLIC_KEY_BYTES) {
      throw new RangeError(`the ${what} must be a ${PUBLIC_KEY_BYTES}-byte public key`);
    }
  }
  return concat(VOUCH_LABEL, lengthPrefixed16('room', room), lengthPrefixed16('name', name),
    voucher, newKey, intToBytes(notAfterValue(notAfter), 8));
}

/**
 * Vouch with `identity` ({ publicKey, sign(data) }, sign may be async) that
 * `newKey` also speaks for `name` in `room` until `notAfter` (seconds since the
 * epoch, number or bigint). Resolves to the 104-byte vouch.
 */
export async function makeVouch(identity, room, name, newKey, notAfter) {
  checkPublicKey(newKey);
  if (equalBytes(newKey, identity.publicKey)) throw new RangeError('a key cannot vouch for itself');
  const until = notAfterValue(notAfter);
  const signature = await identity.sign(vouchStatement(room, name, identity.publicKey, newKey, until));
  return concat(identity.publicKey, intToBytes(until, 8), signature);
}

/** Split a vouch: { voucher, notAfter (bigint), signature }; throws BadSignature. */
export function decodeVouch(data) {
  if (!isBytes(data) || data.length !== VOUCH_BYTES) throw new BadSignature(`a vouch is ${VOUCH_BYTES} bytes`);
  return {
    voucher: data.slice(0, PUBLIC_KEY_BYTES),
    notAfter: bytesToInt(data.subarray(PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES + 8)),
    signature: data.slice(PUBLIC_KEY_BYTES + 8),
  };
}

/**
 * Check that `data` is a vouch, valid at `now` (seconds), for `newKey` as
 * `name` in `room`. Returns the decoded vouch; its `voucher` must then be one
 * of the keys pinned for `name`, or the vouch counts for nothing. Throws
 * BadSignature (wrong size, made by the key it vouches for, expired, or a
 * signature that does not verify for this room, name and key).
 */
export function verifyVouch(data, room, name, newKey, now) {
  const vouch = decodeVouch(data);
  if (equalBytes(vouch.voucher, newKey)) throw new BadSignature('the vouch is made by the key it vouches for');
  if (now > Number(vouch.notAfter)) throw new BadSignature('the vouch has expired');
  const signed = vouchStatement(room, name, vouch.voucher, newKey, vouch.notAfter);
  try {
    verify(vouch.voucher, signed, vouch.signature);
  } catch (error) {
    if (error instanceof BadSignature) throw new BadSignature("the vouch's signature does not verify");
    throw error;
  }
  return vouch;
}
