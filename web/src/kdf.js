// Password stretching and key derivation, as twistchat/crypto/kdf.py:
// scrypt(NFC(password), salt, N, r, p) -> 112 bytes = w0 (40) | w1 (40) |
// content secret (32); w0 and w1 reduced modulo the P-256 group order; the
// room's content key is HKDF-SHA256 of the content secret.

import { hkdf } from '@noble/hashes/hkdf.js';
import { scrypt as nobleScrypt, scryptAsync } from '@noble/hashes/scrypt.js';
import { sha256 } from '@noble/hashes/sha2.js';

import { bytesToInt, concat, isBytes, utf8 } from './bytes.js';
import { WeakParameters } from './errors.js';
import { ORDER } from './spake2plus.js';

export const SCRYPT_OUTPUT = 112;
const W_BYTES = 40;
export const CONTENT_SECRET_BYTES = 32;
export const MIN_SALT_BYTES = 16;
export const MAX_SALT_BYTES = 64;

export const MIN_PARAMS = Object.freeze({ n: 2 ** 15, r: 8, p: 1 });
export const MAX_N = 2 ** 20;
export const MAX_R = 16;
export const MAX_P = 4;
export const MAX_MEMORY = 2 ** 30;

const CONTENT_KEY_INFO = utf8('twistchat/1 content key\0');

/**
 * Refuse scrypt parameters that are too weak or too expensive, with the same
 * messages as Python's check_params. Throws WeakParameters.
 */
export function checkParams({ n, r, p }) {
  if (![n, r, p].every(Number.isSafeInteger)) {
    throw new WeakParameters('scrypt parameters must be integers');
  }
  const bn = BigInt(n);
  if (n < 2 || (bn & (bn - 1n)) !== 0n) throw new WeakParameters(`scrypt N=${n} is not a power of two`);
  if (n < MIN_PARAMS.n) throw new WeakParameters(`scrypt N=${n} is below the minimum ${MIN_PARAMS.n}`);
  if (r < MIN_PARAMS.r) throw new WeakParameters(`scrypt r=${r} is below the minimum ${MIN_PARAMS.r}`);
  if (p < MIN_PARAMS.p) throw new WeakParameters(`scrypt p=${p} is below the minimum ${MIN_PARAMS.p}`);
  if (n > MAX_N) throw new WeakParameters(`scrypt N=${n} is above the maximum ${MAX_N}`);
  if (r > MAX_R) throw new WeakParameters(`scrypt r=${r} is above the maximum ${MAX_R}`);
  if (p > MAX_P) throw new WeakParameters(`scrypt p=${p} is above the maximum ${MAX_P}`);
  const memory = 128n * BigInt(r) * bn * BigInt(p);
  if (memory > BigInt(MAX_MEMORY)) {
    throw new WeakParameters(
      `scrypt N=${n}, r=${r}, p=${p} needs ${memory} bytes of memory,` +
        ` above the maximum ${MAX_MEMORY}`);
  }
}

function scryptOptions({ n, r, p }, dkLen, onProgress) {
  // noble's own bound is 1 GiB + 1 KiB; checkParams has already bounded the
  // parameters, so allow what they need plus noble's scratch blocks.
  const maxmem = 128 * r * (n + p + 2) + (1 << 20);
  const options = { N: n, r, p, dkLen, maxmem, asyncTick: 20 };
  if (onProgress) options.onProgress = onProgress;
  return options;
}

/** RFC 7914 scrypt, unchecked parameters (synchronous; for the RFC vectors). */
export function scrypt(password, salt, params, dkLen) {
  return nobleScrypt(password, salt, scryptOptions(params, dkLen));
}

function passwordBytes(password) {
  if (typeof password !== 'string') throw new TypeError('password must be str');
  return utf8(password.normalize('NFC'));
}

function split(out) {
  return {
    w0: bytesToInt(out.subarray(0, W_BYTES)) % ORDER,
    w1: bytesToInt(out.subarray(W_BYTES, 2 * W_BYTES)) % ORDER,
    contentSecret: out.slice(2 * W_BYTES),
  };
}

/**
 * Stretch a password into { w0, w1 (bigints), contentSecret (32 bytes) }.
 * Refuses parameters below N=2^15, r=8, p=1 (or above the ceiling) first,
 * with WeakParameters. Yields to the event loop while it works; onProgress,
 * if given, is called with the fraction done.
 */
export async function deriveSecrets(password, salt, params, { onProgress } = {}) {
  checkParams(params);
  if (!isBytes(salt)) throw new TypeError('salt must be bytes');
  const out = await scryptAsync(
    passwordBytes(password), salt, scryptOptions(params, SCRYPT_OUTPUT, onProgress));
  return split(out);
}

/**
 * deriveSecrets without the parameter check: for tests and vectors only,
 * never for parameters a server sent.
 */
export function deriveSecretsUnchecked(password, salt, params) {
  return split(nobleScrypt(passwordBytes(password), salt, scryptOptions(params, SCRYPT_OUTPUT)));
}

/** HKDF-SHA256 (RFC 5869); an empty salt means HashLen zero bytes. */
export function hkdfSha256(secret, info, length = 32, salt = new Uint8Array(0)) {
  return hkdf(sha256, secret, salt.length ? salt : undefined, info, length);
}

/** The 32-byte AES-256-GCM content key of a room. */
export function contentKey(contentSecret, room) {
  return hkdfSha256(contentSecret, concat(CONTENT_KEY_INFO, utf8(room)), 32);
}
