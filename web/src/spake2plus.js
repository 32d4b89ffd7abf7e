// SPAKE2+ (RFC 9383), ciphersuite SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256:
// the prover (client) side, as twistchat/crypto/spake2plus.py, on
// @noble/curves' P-256 arithmetic. Points are uncompressed SEC1 (65 bytes),
// decoded strictly; P-256 has cofactor 1, so the only small-subgroup element
// to refuse is the point at infinity.

import { p256 } from '@noble/curves/nist.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';

import {
  bytesToInt, concat, equalBytes, fromHex, intToBytes, intToBytesLE, isBytes, lengthPrefixed16,
  randomBytes, utf8,
} from './bytes.js';
import { BadPoint, ServerNotAuthenticated } from './errors.js';

const Point = p256.Point;

export const P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn;
const B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;
export const ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;
const COORD = 32;
export const POINT_BYTES = 1 + 2 * COORD;
export const SCALAR_BYTES = 32;
export const HASH_BYTES = 32;
export const MAC_BYTES = HASH_BYTES;

/** Context prefix: the protocol version and ciphersuite, then a NUL. */
export const CONTEXT_PREFIX = utf8('twistchat/3 SPAKE2+-P256-SHA256-HKDF-SHA256-HMAC-SHA256\0');
/** Label that starts a browser's channel binding (see webBinding). */
export const WEB_BINDING_LABEL = utf8('twistchat/2 web binding\0');
export const NONCE_BYTES = 32;

export const G = Point.BASE;
export const M = Point.fromBytes(
  fromHex('02886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f'));
export const N = Point.fromBytes(
  fromHex('03d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49'));

function mul(point, scalar) {
  // noble refuses 0 as a multiplier; w0 = 0 is allowed (if absurdly unlikely).
  return scalar === 0n ? Point.ZERO : point.multiply(scalar);
}

/** 0x04 || X || Y; throws RangeError for the point at infinity. */
export function encodePoint(point) {
  if (point.is0()) throw new RangeError('the point at infinity has no uncompressed encoding');
  return point.toBytes(false);
}

const M_BYTES = encodePoint(M);
const N_BYTES = encodePoint(N);

/** Decode and validate a peer's uncompressed point; throws BadPoint. */
export function decodePoint(data) {
  if (!isBytes(data)) throw new BadPoint('a point must be bytes');
  if (data.length !== POINT_BYTES) {
    throw new BadPoint(`a point must be ${POINT_BYTES} bytes, not ${data.length}`);
  }
  if (data[0] !== 0x04) throw new BadPoint('a point must be in uncompressed form (0x04 prefix)');
  const x = bytesToInt(data.subarray(1, 1 + COORD));
  const y = bytesToInt(data.subarray(1 + COORD));
  if (x >= P || y >= P) throw new BadPoint('a point coordinate is not below the field prime');
  if (x === 0n && y === 0n) throw new BadPoint('the point at infinity is not allowed');
  const md = (v) => ((v % P) + P) % P;
  if (md(y * y - (x * x * x - 3n * x + B)) !== 0n) throw new BadPoint('the point is not on P-256');
  const point = Point.fromAffine({ x, y });
  point.assertValidity();
  return point;
}

function checkScalar(name, value, nonzero = false) {
  if (typeof value !== 'bigint') throw new TypeError(`${name} must be a bigint`);
  const low = nonzero ? 1n : 0n;
  if (value < low || value >= ORDER) throw new RangeError(`${name} must be in [${low}, ORDER)`);
  return value;
}

function checkBytes(name, value) {
  if (!isBytes(value)) throw new TypeError(`${name} must be bytes`);
  return value;
}

/** A uniformly random scalar in [1, ORDER) (rejection sampling). */
export function randomScalar() {
  for (;;) {
    const k = bytesToInt(randomBytes(SCALAR_BYTES));
    if (k >= 1n && k < ORDER) return k;
  }
}

function lp(data) {
  return concat(intToBytesLE(data.length, 8), data);
}

/** The RFC 9383 transcript TT. */
export function transcript(context, idProver, idVerifier, shareP, shareV, z, v, w0) {
  return concat(
    ...[context, idProver, idVerifier, M_BYTES, N_BYTES, shareP, shareV, z, v,
      intToBytes(w0, SCALAR_BYTES)].map(lp));
}

const CONFIRMATION_INFO = utf8('ConfirmationKeys');
const SHARED_INFO = utf8('SharedKey');

/** K_main, K_confirmP, K_confirmV, K_shared from a transcript. */
export function deriveKeys(tt) {
  const kMain = sha256(tt);
  const confirmation = hkdf(sha256, kMain, undefined, CONFIRMATION_INFO, 2 * HASH_BYTES);
  return {
    kMain,
    kConfirmP: confirmation.slice(0, HASH_BYTES),
    kConfirmV: confirmation.slice(HASH_BYTES),
    kShared: hkdf(sha256, kMain, undefined, SHARED_INFO, HASH_BYTES),
  };
}

/** [confirmP, confirmV]. */
export function confirmationMacs(keys, shareP, shareV) {
  return [hmac(sha256, keys.kConfirmP, shareV), hmac(sha256, keys.kConfirmV, shareP)];
}

/** The SPAKE2+ Context: CONTEXT_PREFIX || binding. */
export function context(binding) {
  return concat(CONTEXT_PREFIX, checkBytes('binding', binding));
}

/**
 * The channel binding a browser uses in place of the terminal client's TLS
 * exporter and certificate hash (an open question: docs/browser.md):
 * label || nonce (32, sent by the server on this WebSocket) ||
 * SHA-256 of the server's certificate (32, as the server states it) ||
 * the page's origin (2-byte length, UTF-8).
 */
export function webBinding(origin, nonce, certSha256) {
  if (!isBytes(nonce) || nonce.length !== NONCE_BYTES) {
    throw new RangeError(`nonce must be ${NONCE_BYTES} bytes`);
  }
  if (!isBytes(certSha256) || certSha256.length !== HASH_BYTES) {
    throw new RangeError(`certificate hash must be ${HASH_BYTES} bytes`);
  }
  return concat(WEB_BINDING_LABEL, nonce, certSha256, lengthPrefixed16('origin', origin));
}

/**
 * One login attempt by a client that knows w0 and w1. share() gives shareP
 * for the server; finish(shareV, confirmV) checks the server's answer once and
 * returns { confirmP, kShared }.
 */
export class Prover {
  #context;
  #idProver;
  #idVerifier;
  #w0;
  #w1;
  #x;
  #share;
  #finished = false;

  /** `x` is the ephemeral scalar: random unless given (tests only). */
  constructor(context, idProver, idVerifier, w0, w1, { x } = {}) {
    this.#context = checkBytes('context', context);
    this.#idProver = checkBytes('idProver', idProver);
    this.#idVerifier = checkBytes('idVerifier', idVerifier);
    this.#w0 = checkScalar('w0', w0);
    this.#w1 = checkScalar('w1', w1);
    this.#x = x === undefined ? randomScalar() : checkScalar('x', x, true);
    this.#share = encodePoint(G.multiply(this.#x).add(mul(M, this.#w0)));
  }

  share() {
    return this.#share.slice();
  }

  /**
   * Throws BadPoint (shareV invalid, or Z or V at infinity) or
   * ServerNotAuthenticated (confirmV wrong). May be called once.
   */
  finish(shareV, confirmV) {
    if (this.#finished) throw new Error('Prover.finish may only be called once');
    this.#finished = true;
    const keys = this.derive(shareV);
    const [confirmP, expectedV] = confirmationMacs(keys, this.#share, shareV);
    if (!equalBytes(expectedV, confirmV)) throw new ServerNotAuthenticated();
    return { confirmP, kShared: keys.kShared };
  }

  /** The key schedule for shareV, before any confirmation check (tests). */
  derive(shareV) {
    const y = decodePoint(shareV);
    const t = y.add(mul(N, this.#w0).negate());
    const z = mul(t, this.#x);
    const v = mul(t, this.#w1);
    if (z.is0() || v.is0()) throw new BadPoint('the handshake produced the point at infinity');
    const tt = transcript(this.#context, this.#idProver, this.#idVerifier, this.#share,
      shareV, encodePoint(z), encodePoint(v), this.#w0);
    return { ...deriveKeys(tt), tt, z: encodePoint(z), v: encodePoint(v) };
  }
}
