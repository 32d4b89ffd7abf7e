// The signed envelope sealed as payload version 2, as twistchat/crypto/signed.py:
// key (32) | seq (8) | prev (32) | seen (32) | k (1) | lost (8k) | m (2) |
// text (m) | sig (64), the signature over "twistchat/2 signed message\0" ||
// str(room) || str(sender) || sid || n || body; and the message hash
// SHA-256("twistchat/2 message hash\0" || sid || n || envelope).

import { sha256 } from '@noble/hashes/sha2.js';

import {
  bytesToInt, concat, equalBytes, fromUtf8, intToBytes, isBytes, lengthPrefixed16, utf8,
} from './bytes.js';
import { BadEnvelope } from './errors.js';
import { PUBLIC_KEY_BYTES, SIGNATURE_BYTES, verify } from './identity.js';
import { MAX_COUNTER, MAX_TEXT_BYTES, SID_BYTES } from './seal.js';

export const HASH_BYTES = 32;
export const NO_HASH = new Uint8Array(HASH_BYTES);
export const MAX_LOST = 16;
export const MAX_SEQ = 2n ** 63n - 1n;

const SIGN_LABEL = utf8('twistchat/2 signed message\0');
const HASH_LABEL = utf8('twistchat/2 message hash\0');

const KEY_END = PUBLIC_KEY_BYTES;
const SEQ_END = KEY_END + 8;
const PREV_END = SEQ_END + HASH_BYTES;
const SEEN_END = PREV_END + HASH_BYTES;
const FIXED = SEEN_END + 1;
export const MIN_OVERHEAD = FIXED + 2 + SIGNATURE_BYTES;

function slot(sid, n) {
  if (!isBytes(sid) || sid.length !== SID_BYTES) throw new RangeError(`sid must be ${SID_BYTES} bytes`);
  const v = typeof n === 'number' && Number.isSafeInteger(n) ? BigInt(n) : n;
  if (typeof v !== 'bigint' || v < 0n || v > MAX_COUNTER) throw new RangeError('n out of range');
  return concat(sid, intToBytes(v, 8));
}

export function toBeSigned(room, sender, sid, n, body) {
  return concat(SIGN_LABEL, lengthPrefixed16('room', room), lengthPrefixed16('sender', sender),
    slot(sid, n), body);
}

export function messageHash(sid, n, data) {
  return sha256(concat(HASH_LABEL, slot(sid, n), data));
}

function checkHash(what, value) {
  if (!isBytes(value) || value.length !== HASH_BYTES) throw new RangeError(`${what} must be ${HASH_BYTES} bytes`);
  return value;
}

function seqValue(value) {
  const v = typeof value === 'number' && Number.isSafeInteger(value) ? BigInt(value) : value;
  return typeof v === 'bigint' && v >= 1n && v <= MAX_SEQ ? v : null;
}

/**
 * Build and sign the envelope of message n of session sid. `identity` is
 * { publicKey, sign(data) } (sign may be async); fields is
 * { seq, prev, seen, text, lost = [] }. Throws RangeError/TypeError as
 * Python's encode_signed raises ValueError/TypeError.
 */
export async function encodeSigned(identity, room, sender, sid, n, fields) {
  const seq = seqValue(fields.seq);
  if (seq === null) throw new RangeError('seq out of range');
  const prev = checkHash('prev', fields.prev);
  const seen = checkHash('seen', fields.seen);
  if ((seq === 1n) !== equalBytes(prev, NO_HASH)) throw new RangeError('prev must be zero exactly for seq 1');
  const lostIn = Array.from(fields.lost ?? []);
  if (lostIn.length > MAX_LOST) throw new RangeError(`at most ${MAX_LOST} lost sequence numbers`);
  const lost = lostIn.map(seqValue);
  for (let i = 0; i < lost.length; i++) {
    if (lost[i] === null || (i > 0 && lost[i] <= lost[i - 1]) || lost[i] >= seq) {
      throw new RangeError('lost must be strictly increasing sequence numbers below seq');
    }
  }
  if (typeof fields.text !== 'string') throw new TypeError('text must be str');
  const text = utf8(fields.text);
  if (text.length > MAX_TEXT_BYTES) throw new RangeError(`text longer than ${MAX_TEXT_BYTES} bytes`);
  const body = concat(
    identity.publicKey, intToBytes(seq, 8), prev, seen, Uint8Array.of(lost.length),
    ...lost.map((x) => intToBytes(x, 8)), intToBytes(text.length, 2), text);
  const signature = await identity.sign(toBeSigned(room, sender, sid, n, body));
  return concat(body, signature);
}

/**
 * Parse an envelope and verify its signature under the key it names:
 * { key, seq, prev, seen, lost, text, signature, hash } (seq and lost as
 * bigints). Throws BadEnvelope (format) or BadSignature. Does not compare
 * the key with the one pinned for the sender: the caller must.
 */
export function decodeSigned(room, sender, sid, n, data) {
  if (!isBytes(data)) throw new BadEnvelope('a signed envelope must be bytes');
  if (data.length < MIN_OVERHEAD) throw new BadEnvelope('signed envelope too short');
  const key = data.slice(0, KEY_END);
  const seq = bytesToInt(data.subarray(KEY_END, SEQ_END));
  const prev = data.slice(SEQ_END, PREV_END);
  const seen = data.slice(PREV_END, SEEN_END);
  const k = data[SEEN_END];
  if (seq < 1n || seq > MAX_SEQ) throw new BadEnvelope('signed envelope: seq out of range');
  if ((seq === 1n) !== equalBytes(prev, NO_HASH)) {
    throw new BadEnvelope('signed envelope: prev must be zero exactly for seq 1');
  }
  if (k > MAX_LOST) throw new BadEnvelope(`signed envelope: more than ${MAX_LOST} lost sequence numbers`);
  let at = FIXED;
  if (data.length < at + 8 * k + 2 + SIGNATURE_BYTES) throw new BadEnvelope('signed envelope too short');
  const lost = [];
  for (let i = 0; i < k; i++) lost.push(bytesToInt(data.subarray(at + 8 * i, at + 8 * i + 8)));
  at += 8 * k;
  if (lost.some((x, i) => x < 1n || x >= seq || (i > 0 && lost[i - 1] >= x))) {
    throw new BadEnvelope(
      'signed envelope: lost must be strictly increasing sequence numbers below seq');
  }
  const m = (data[at] << 8) | data[at + 1];
  at += 2;
  if (m > MAX_TEXT_BYTES) throw new BadEnvelope(`signed envelope: text longer than ${MAX_TEXT_BYTES} bytes`);
  const end = at + m;
  if (data.length !== end + SIGNATURE_BYTES) throw new BadEnvelope('signed envelope: wrong length');
  let text;
  try {
    text = fromUtf8(data.subarray(at, end));
  } catch {
    throw new BadEnvelope('signed envelope: text is not UTF-8');
  }
  const signature = data.slice(end);
  verify(key, toBeSigned(room, sender, sid, n, data.subarray(0, end)), signature);
  return { key, seq, prev, seen, lost, text, signature, hash: messageHash(sid, n, data) };
}

/**
 * Sign fields for the sealer's next message and seal the envelope as payload
 * version 2: { sid, n, ciphertext, hash }.
 */
export async function sealSigned(sealer, identity, fields) {
  let envelope;
  const sent = await sealer.sealPayload(async (sid, n) => {
    envelope = await encodeSigned(identity, sealer.room, sealer.sender, sid, n, fields);
    return envelope;
  });
  return { ...sent, hash: messageHash(sent.sid, sent.n, envelope) };
}

/**
 * Open a message: a version 2 payload decoded and verified
 * ({ signed: true, ... decodeSigned's fields }), a version 1 payload as
 * { signed: false, text }. A message failing decodeSigned leaves the
 * opener's replay state untouched.
 */
export async function openMessage(opener, sender, sid, n, ciphertext) {
  let decoded;
  await opener.openPayload(sender, sid, n, ciphertext, {
    check(opened) {
      decoded = opened.version === 1
        ? { signed: false, text: fromUtf8(opened.payload) }
        : { signed: true, ...decodeSigned(opener.room, sender, sid, n, opened.payload) };
    },
  });
  return decoded;
}
