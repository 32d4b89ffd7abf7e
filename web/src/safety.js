// Safety numbers, as twistchat/crypto/safety.py: a 60-digit number per pair of
// members and a 30-digit code per room, from SHA-512 stretched 5200 times.

import { sha512 } from '@noble/hashes/sha2.js';

import { bytesToInt, compareBytes, concat, intToBytes, isBytes, lengthPrefixed16, utf8 } from './bytes.js';
import { hkdfSha256 } from './kdf.js';
import { PUBLIC_KEY_BYTES } from './identity.js';

export const ITERATIONS = 5200;
export const SAFETY_NUMBER_DIGITS = 60;
export const ROOM_CODE_DIGITS = 30;

const NUMBER_LABEL = utf8('twistchat/2 safety number\0');
const ROOM_LABEL = utf8('twistchat/2 room safety code\0');
const COMMITMENT_INFO = utf8('twistchat/2 room commitment\0');
const GROUP = 5;
const CHUNK_BYTES = 5;

function checkKey(what, value) {
  if (!isBytes(value) || value.length !== PUBLIC_KEY_BYTES) {
    throw new RangeError(`${what} must be a ${PUBLIC_KEY_BYTES}-byte public key`);
  }
  return value;
}

function stretch(data, tail) {
  let h = sha512(data);
  const buffer = new Uint8Array(h.length + tail.length);
  buffer.set(tail, h.length);
  for (let i = 0; i < ITERATIONS; i++) {
    buffer.set(h, 0);
    h = sha512(buffer);
  }
  return h;
}

function digits(digest, chunks) {
  let out = '';
  for (let i = 0; i < chunks; i++) {
    const v = bytesToInt(digest.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES)) % 100000n;
    out += v.toString().padStart(5, '0');
  }
  return out;
}

function grouped(text) {
  const groups = [];
  for (let i = 0; i < text.length; i += GROUP) groups.push(text.slice(i, i + GROUP));
  return groups.join(' ');
}

function half(name, key) {
  return digits(stretch(concat(NUMBER_LABEL, lengthPrefixed16('name', name), key), key),
    SAFETY_NUMBER_DIGITS / 2 / GROUP);
}

/** The 60-digit safety number of two members, the same from either side. */
export function safetyNumber(nameA, keyA, nameB, keyB) {
  const halves = [half(nameA, checkKey('key_a', keyA)), half(nameB, checkKey('key_b', keyB))];
  halves.sort();
  return grouped(halves.join(''));
}

/** The 32-byte commitment to a room's content key, bound to its name. */
export function roomCommitment(contentKey, room) {
  if (!isBytes(contentKey) || contentKey.length !== 32) throw new RangeError('a content key is 32 bytes');
  if (typeof room !== 'string') throw new TypeError('room must be str');
  return hkdfSha256(contentKey, concat(COMMITMENT_INFO, utf8(room)), 32);
}

/** The 30-digit room code over the room, its commitment and [name, key] pairs. */
export function roomSafetyCode(room, commitment, members) {
  if (!isBytes(commitment) || commitment.length !== 32) throw new RangeError('a room commitment is 32 bytes');
  const encoded = Array.from(members, ([name, key]) => [
    lengthPrefixed16('name', name).subarray(2), checkKey("a member's key", key)]);
  encoded.sort((a, b) => compareBytes(a[0], b[0]) || compareBytes(a[1], b[1]));
  for (let i = 1; i < encoded.length; i++) {
    if (compareBytes(encoded[i - 1][0], encoded[i][0]) === 0) {
      throw new RangeError('a member name appears twice');
    }
  }
  const data = concat(
    ROOM_LABEL, lengthPrefixed16('room', room), commitment, intToBytes(encoded.length, 4),
    ...encoded.flatMap(([name, key]) => [intToBytes(name.length, 2), name, key]));
  return grouped(digits(stretch(data, commitment), ROOM_CODE_DIGITS / GROUP));
}
