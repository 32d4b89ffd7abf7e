// Byte helpers shared by the modules: UTF-8, concatenation, fixed-width
// big-endian integers, hex, constant-time comparison. No dependencies.

const encoder = new TextEncoder();
// fatal: invalid UTF-8 is an error, never U+FFFD; ignoreBOM: a leading BOM is
// kept as a character (and so refused by the JSON parser), as Python does.
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Lone surrogates cannot be encoded (Python's str.encode refuses them). */
export function isWellFormed(text) {
  return !/\p{Cs}/u.test(text);
}

/** UTF-8 bytes of a string; throws TypeError on lone surrogates. */
export function utf8(text) {
  if (typeof text !== 'string') throw new TypeError('expected a string');
  if (!isWellFormed(text)) throw new TypeError('text holds a lone surrogate');
  return encoder.encode(text);
}

/** Strict UTF-8 decoding; throws TypeError on invalid input. */
export function fromUtf8(bytes) {
  return decoder.decode(bytes);
}

export function isBytes(value) {
  return value instanceof Uint8Array;
}

export function concat(...parts) {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** A non-negative integer (number or bigint) as `size` bytes, big-endian. */
export function intToBytes(value, size) {
  let v = BigInt(value);
  if (v < 0n || v >= 1n << BigInt(8 * size)) throw new RangeError('integer out of range');
  const out = new Uint8Array(size);
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** A non-negative integer as `size` bytes, little-endian. */
export function intToBytesLE(value, size) {
  return intToBytes(value, size).reverse();
}

/** Big-endian bytes as a bigint. */
export function bytesToInt(bytes) {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

export function toHex(bytes) {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

export function fromHex(hex) {
  if (typeof hex !== 'string' || hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) {
    throw new TypeError('invalid hex');
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Equality of two byte strings in time independent of where they differ. */
export function equalBytes(a, b) {
  if (!isBytes(a) || !isBytes(b) || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** Byte-wise comparison, as Python compares bytes. */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** A UTF-8 string field: 2-byte big-endian length, then the bytes. */
export function lengthPrefixed16(what, text) {
  if (typeof text !== 'string') throw new TypeError(`${what} must be str`);
  const data = utf8(text);
  if (data.length > 0xffff) throw new RangeError(`${what} is too long`);
  return concat(intToBytes(data.length, 2), data);
}

export function randomBytes(size) {
  const out = new Uint8Array(size);
  globalThis.crypto.getRandomValues(out);
  return out;
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = new Map([...B64].map((c, i) => [c, i]));

/** Standard base64 with padding. */
export function toBase64(bytes) {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64[v >> 18] + B64[(v >> 12) & 63] + B64[(v >> 6) & 63] + B64[v & 63];
  }
  if (i + 1 === bytes.length) {
    const v = bytes[i] << 16;
    out += B64[v >> 18] + B64[(v >> 12) & 63] + '==';
  } else if (i + 2 === bytes.length) {
    const v = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += B64[v >> 18] + B64[(v >> 12) & 63] + B64[(v >> 6) & 63] + '=';
  }
  return out;
}

/**
 * Strict standard base64, accepting exactly what Python's
 * binascii.a2b_base64(strict_mode=True) accepts: only the alphabet, length a
 * multiple of 4, padding only at the end; unused low bits need not be zero.
 * Returns null for anything else.
 */
export function fromBase64(text) {
  if (typeof text !== 'string' || text.length % 4) return null;
  let pad = 0;
  if (text.endsWith('==')) pad = 2;
  else if (text.endsWith('=')) pad = 1;
  const body = text.length - pad;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let acc = 0;
  let bits = 0;
  let at = 0;
  for (let i = 0; i < body; i++) {
    const v = B64_INDEX.get(text[i]);
    if (v === undefined) return null;
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
  }
  return at === out.length ? out : null;
}
