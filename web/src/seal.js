// Sealed messages, as twistchat/crypto/seal.py: AES-256-GCM (WebCrypto) under a
// per-sender-session subkey HKDF-SHA256(content key, salt = sid,
// "twistchat/1 session key\0"), the counter n as the 12-byte nonce, associated
// data binding payload version, room, sender, sid and n; plaintexts padded
// (0x80 then zeros) to a multiple of 32 bytes. Payload version 1 is the text,
// version 2 a signed envelope (signed.js).

import { concat, fromUtf8, intToBytes, isBytes, lengthPrefixed16, randomBytes, utf8 } from './bytes.js';
import { Replayed, Undecryptable } from './errors.js';
import { hkdfSha256 } from './kdf.js';

export const KEY_BYTES = 32;
export const SID_BYTES = 16;
export const TAG_BYTES = 16;
export const NONCE_BYTES = 12;
export const MAX_COUNTER = 2n ** 63n - 1n;
export const MAX_TEXT_BYTES = 16384;
export const PAD_BLOCK = 32;
export const MAX_CIPHERTEXT = MAX_TEXT_BYTES + PAD_BLOCK + TAG_BYTES;
export const MAX_SESSIONS = 4096;
export const MAX_RETIRED = 65536;

const AD_PREFIXES = new Map([
  [1, utf8('twistchat/1 msg\0')],
  [2, utf8('twistchat/2 msg\0')],
]);
const SESSION_INFO = utf8('twistchat/1 session key\0');

export function pad(data) {
  const padded = new Uint8Array((Math.floor(data.length / PAD_BLOCK) + 1) * PAD_BLOCK);
  padded.set(data);
  padded[data.length] = 0x80;
  return padded;
}

/** Strictly undo pad(); throws Undecryptable. */
export function unpad(padded) {
  if (!padded.length || padded.length % PAD_BLOCK) throw new Undecryptable('malformed padding');
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  if (end < 0 || padded[end] !== 0x80 || padded.length - end > PAD_BLOCK) {
    throw new Undecryptable('malformed padding');
  }
  return padded.slice(0, end);
}

function counter(n) {
  const v = typeof n === 'number' && Number.isSafeInteger(n) ? BigInt(n) : n;
  if (typeof v !== 'bigint' || v < 0n || v > MAX_COUNTER) throw new RangeError('n out of range');
  return v;
}

/** The GCM associated data of message n of session sid by sender in room. */
export function associatedData(room, sender, sid, n, version = 1) {
  const prefix = AD_PREFIXES.get(version);
  if (!prefix) throw new RangeError(`unknown payload version ${version}`);
  if (!isBytes(sid) || sid.length !== SID_BYTES) throw new RangeError(`sid must be ${SID_BYTES} bytes`);
  return concat(prefix, lengthPrefixed16('room', room), lengthPrefixed16('sender', sender), sid,
    intToBytes(counter(n), 8));
}

/** The 32 raw bytes of the subkey of session sid. */
export function sessionKeyBytes(contentKey, sid) {
  return hkdfSha256(contentKey, SESSION_INFO, KEY_BYTES, sid);
}

async function importKey(raw) {
  return globalThis.crypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, false,
    ['encrypt', 'decrypt']);
}

function gcm(n, ad) {
  return { name: 'AES-GCM', iv: intToBytes(n, NONCE_BYTES), additionalData: ad, tagLength: 128 };
}

function checkKey(contentKey) {
  if (!isBytes(contentKey) || contentKey.length !== KEY_BYTES) {
    throw new RangeError(`content key must be ${KEY_BYTES} bytes`);
  }
  return contentKey;
}

/**
 * Seals one sender's messages for one connection. Create with
 * `await Sealer.create(contentKey, room, sender)`; `sid` is random unless
 * given (tests only: a sid must never be used twice under one key).
 */
export class Sealer {
  #key;
  #sid;
  #next = 1n;
  #busy = false;

  constructor(key, room, sender, sid) {
    this.#key = key;
    this.room = room;
    this.sender = sender;
    this.#sid = sid;
  }

  /** This session's id (a copy). */
  get sid() {
    return this.#sid.slice();
  }

  static async create(contentKey, room, sender, { sid } = {}) {
    checkKey(contentKey);
    const id = sid === undefined ? randomBytes(SID_BYTES) : sid;
    // fail now on a sid or name that cannot be encoded
    associatedData(room, sender, id, 0);
    const key = await importKey(sessionKeyBytes(contentKey, id));
    return new Sealer(key, room, sender, id.slice());
  }

  #take() {
    const n = this.#next;
    if (n > MAX_COUNTER) throw new RangeError('sender session exhausted; start a new one');
    this.#next = n + 1n;
    return n;
  }

  async #seal(n, version, plaintext) {
    const ad = associatedData(this.room, this.sender, this.sid, n, version);
    const sealed = await globalThis.crypto.subtle.encrypt(gcm(n, ad), this.#key, pad(plaintext));
    return { sid: this.sid, n, ciphertext: new Uint8Array(sealed) };
  }

  /** Seal text as a version 1 payload: { sid, n (bigint), ciphertext }. */
  async seal(text) {
    const data = utf8(text);
    if (data.length > MAX_TEXT_BYTES) throw new RangeError(`text longer than ${MAX_TEXT_BYTES} bytes`);
    return this.#seal(this.#take(), 1, data);
  }

  /**
   * Seal a version 2 payload: `build(sid, n)` (may be async) makes it for the
   * next counter, which is used up only once build has returned bytes.
   */
  async sealPayload(build) {
    if (this.#busy) throw new Error('Sealer used while building a payload');
    this.#busy = true;
    let payload;
    let n;
    try {
      n = this.#next;
      if (n > MAX_COUNTER) throw new RangeError('sender session exhausted; start a new one');
      payload = await build(this.sid, n);
      if (!isBytes(payload)) throw new TypeError('a payload must be bytes');
      this.#take();
    } finally {
      this.#busy = false;
    }
    return this.#seal(n, 2, payload);
  }
}

function retiredId(sender, sid) {
  return `${sender}\0${Array.from(sid).join(',')}`;
}

/**
 * Opens every member's messages in one room, refusing replays: per
 * (sender, sid) the highest counter accepted, for the most recently used
 * MAX_SESSIONS sessions, and for MAX_RETIRED evicted ones.
 */
export class Opener {
  #contentKey;
  #sessions = new Map(); // id -> { key, last }; Map order = least recently used first
  #retired = new Map(); // id -> last
  #maxSessions;
  #maxRetired;

  constructor(contentKey, room, { maxSessions = MAX_SESSIONS, maxRetired = MAX_RETIRED } = {}) {
    this.#contentKey = checkKey(contentKey);
    lengthPrefixed16('room', room);
    this.room = room;
    this.#maxSessions = maxSessions;
    this.#maxRetired = maxRetired;
  }

  /** Open a version 1 message: the text. Throws Undecryptable or Replayed. */
  async open(sender, sid, n, ciphertext) {
    const opened = await this.#open(sender, sid, n, ciphertext, [1]);
    return fromUtf8(opened.payload);
  }

  /**
   * Open either payload version (2 first): { version, payload }. `check`, if
   * given, sees the opened payload before the replay state is updated; if it
   * throws, the message leaves no trace.
   */
  async openPayload(sender, sid, n, ciphertext, { check } = {}) {
    return this.#open(sender, sid, n, ciphertext, [2, 1], check);
  }

  async #open(sender, sid, n, ciphertext, versions, check) {
    let ads;
    try {
      n = counter(n);
      ads = versions.map((v) => associatedData(this.room, sender, sid, n, v));
    } catch {
      throw new Undecryptable();
    }
    if (!isBytes(ciphertext)) throw new Undecryptable();
    const bodyLength = ciphertext.length - TAG_BYTES;
    if (bodyLength < PAD_BLOCK || bodyLength % PAD_BLOCK) throw new Undecryptable();

    const id = retiredId(sender, sid);
    const session = this.#sessions.get(id);
    const key = session ? session.key : await importKey(sessionKeyBytes(this.#contentKey, sid));
    let padded = null;
    let version = 0;
    for (let i = 0; i < versions.length && padded === null; i++) {
      try {
        padded = new Uint8Array(
          await globalThis.crypto.subtle.decrypt(gcm(n, ads[i]), key, ciphertext));
        version = versions[i];
      } catch {
        padded = null;
      }
    }
    if (padded === null) throw new Undecryptable();

    // authentic: now, and only now, consult and update the replay state
    const current = this.#sessions.get(id);
    if (current && n <= current.last) {
      this.#touch(id, current);
      throw new Replayed();
    }
    if (!current && n <= (this.#retired.get(id) ?? 0n)) throw new Replayed();
    const opened = { version, payload: unpad(padded) };
    if (version === 1) {
      try {
        fromUtf8(opened.payload);
      } catch {
        throw new Undecryptable();
      }
    }
    if (check) await check(opened);
    // state may have changed while check ran: re-read it
    const now = this.#sessions.get(id);
    if (now && n <= now.last) throw new Replayed();
    if (now) {
      now.last = n;
      this.#touch(id, now);
    } else {
      this.#retired.delete(id);
      this.#sessions.set(id, { key, last: n });
      while (this.#sessions.size > this.#maxSessions) {
        const [oldId, old] = this.#sessions.entries().next().value;
        this.#sessions.delete(oldId);
        this.#retired.set(oldId, old.last);
        while (this.#retired.size > this.#maxRetired) {
          this.#retired.delete(this.#retired.keys().next().value);
        }
      }
    }
    return opened;
  }

  #touch(id, session) {
    this.#sessions.delete(id);
    this.#sessions.set(id, session);
  }
}
