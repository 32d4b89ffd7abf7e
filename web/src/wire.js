// The twistchat message schema, as twistchat/wire/messages.py: one UTF-8 JSON
// object per frame with a "type" member; binary fields as standard base64.
// Decoding is strict and gives the same verdict, and the same message, as the
// Python code: invalid UTF-8 or JSON, a repeated member, an unknown type, a
// missing, extra or ill-typed field, control characters in a string, or a
// value out of range all throw BadMessage. Integers are parsed exactly (as
// bigints), so a 64-bit counter is not rounded. One WebSocket message carries
// one frame body (no length prefix).

import { fromBase64, fromUtf8, toBase64 } from './bytes.js';
import { BadMessage } from './errors.js';
import { MAX_SALT_BYTES, MIN_SALT_BYTES } from './kdf.js';
import { PUBLIC_KEY_BYTES } from './identity.js';
import { MAX_COUNTER, MAX_TEXT_BYTES, PAD_BLOCK, SID_BYTES, TAG_BYTES } from './seal.js';
import { MAX_LOST, MIN_OVERHEAD } from './signed.js';
import { HASH_BYTES, MAC_BYTES, NONCE_BYTES, POINT_BYTES } from './spake2plus.js';

export const PROTOCOL_VERSION = 3;
export const MAX_FRAME_PREAUTH = 4096;
export const MAX_FRAME = 32768;
export const MAX_FRAME_FROM_SERVER = 2 << 20;
/** The largest sealed signed envelope (as signed.MAX_SIGNED_CIPHERTEXT in Python). */
export const MAX_SIGNED_CIPHERTEXT =
  (Math.floor((MIN_OVERHEAD + 8 * MAX_LOST + MAX_TEXT_BYTES) / PAD_BLOCK) + 1) * PAD_BLOCK + TAG_BYTES;
export const MAX_NAME = 32;
export const MAX_ROOM = 64;
export const MAX_TEXT_FIELD = 1024;
export const MAX_MEMBERS_LISTED = 10000;

// --- a strict JSON parser ------------------------------------------------------
// Accepts exactly RFC 8259 JSON, as Python's json module does with NaN and
// Infinity refused; numbers become bigints (integers) or JsonFloat; objects
// have no prototype; a repeated member name is an error.

class JsonFloat {
  constructor(value) {
    this.value = value;
  }
}

const MAX_DEPTH = 512;
// Python refuses to convert integers of more than 4300 digits.
const MAX_INT_DIGITS = 4300;
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

class SyntaxFailure extends Error {}

function parseJson(text) {
  let at = 0;
  const fail = () => {
    throw new SyntaxFailure();
  };
  const space = () => {
    while (at < text.length && ' \t\n\r'.includes(text[at])) at++;
  };
  const string = () => {
    at++; // the opening quote
    let out = '';
    for (;;) {
      if (at >= text.length) fail();
      const c = text[at];
      if (c === '"') {
        at++;
        return out;
      }
      if (c < ' ') fail();
      if (c !== '\\') {
        out += c;
        at++;
        continue;
      }
      const e = text[at + 1];
      if (e === 'u') {
        const hex = text.slice(at + 2, at + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail();
        out += String.fromCharCode(parseInt(hex, 16));
        at += 6;
      } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
        out += ESCAPES[e];
        at += 2;
      } else {
        fail();
      }
    }
  };
  const value = (depth) => {
    if (depth > MAX_DEPTH) fail();
    space();
    const c = text[at];
    if (c === '{') {
      at++;
      const obj = Object.create(null);
      let repeated = false;
      space();
      if (text[at] === '}') {
        at++;
        return obj;
      }
      for (;;) {
        space();
        if (text[at] !== '"') fail();
        const key = string();
        space();
        if (text[at] !== ':') fail();
        at++;
        const v = value(depth + 1);
        // refused once the object is complete, as Python's object_pairs_hook does
        if (Object.hasOwn(obj, key)) repeated = true;
        obj[key] = v;
        space();
        if (text[at] === ',') {
          at++;
        } else if (text[at] === '}') {
          at++;
          if (repeated) throw new BadMessage('frame repeats a JSON member name');
          return obj;
        } else {
          fail();
        }
      }
    }
    if (c === '[') {
      at++;
      const list = [];
      space();
      if (text[at] === ']') {
        at++;
        return list;
      }
      for (;;) {
        list.push(value(depth + 1));
        space();
        if (text[at] === ',') {
          at++;
        } else if (text[at] === ']') {
          at++;
          return list;
        } else {
          fail();
        }
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, at)) {
        at += word.length;
        return v;
      }
    }
    NUMBER.lastIndex = at;
    const m = NUMBER.exec(text);
    if (!m) fail();
    at += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      if (m[0].replace('-', '').length > MAX_INT_DIGITS) fail();
      return BigInt(m[0]);
    }
    return new JsonFloat(Number(m[0]));
  };
  const result = value(0);
  space();
  if (at !== text.length) fail();
  return result;
}

// --- Python's repr of a string, for messages that quote peer input -------------

const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (ch === '\\' || ch === quote) out += '\\' + ch;
    else if (ch === '\t') out += '\\t';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (cp < 0x20 || cp === 0x7f) out += '\\x' + cp.toString(16).padStart(2, '0');
    else if (cp < 0x7f || (ch !== ' ' && !NOT_PRINTABLE.test(ch))) out += ch;
    else if (cp < 0x100) out += '\\x' + cp.toString(16).padStart(2, '0');
    else if (cp < 0x10000) out += '\\u' + cp.toString(16).padStart(4, '0');
    else out += '\\U' + cp.toString(16).padStart(8, '0');
  }
  return out + quote;
}

function head(text, count) {
  return Array.from(text).slice(0, count).join('');
}

function codePointCompare(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

// --- field kinds -----------------------------------------------------------------

function failField(field, why) {
  return new BadMessage(`field ${pyRepr(field)}: ${why}`);
}

const CONTROL = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;

export function text(maxChars) {
  return (field, value) => {
    if (typeof value !== 'string') throw failField(field, 'expected a string');
    let length = 0;
    for (const _ of value) length++; // code points, as Python counts
    if (length > maxChars) throw failField(field, `longer than ${maxChars} characters`);
    if (CONTROL.test(value)) throw failField(field, 'contains control characters');
    return value;
  };
}

export function integer(low, high) {
  const lo = BigInt(low);
  const hi = BigInt(high);
  const exact = hi > BigInt(Number.MAX_SAFE_INTEGER);
  return (field, value) => {
    if (typeof value !== 'bigint') throw failField(field, 'expected an integer');
    if (value < lo || value > hi) throw failField(field, `out of range ${lo}..${hi}`);
    return exact ? value : Number(value);
  };
}

export function number(field, value) {
  let result;
  if (typeof value === 'bigint') result = Number(value);
  else if (value instanceof JsonFloat) result = value.value;
  else throw failField(field, 'expected a number');
  if (!Number.isFinite(result)) throw failField(field, 'out of range');
  return result;
}

export function boolean(field, value) {
  if (typeof value !== 'boolean') throw failField(field, 'expected true or false');
  return value;
}

export function binary(low, high = low) {
  return (field, value) => {
    if (typeof value !== 'string') throw failField(field, 'expected base64 text');
    if (value.length > 4 * Math.floor((high + 2) / 3)) throw failField(field, `longer than ${high} bytes`);
    const raw = fromBase64(value);
    if (raw === null) throw failField(field, 'invalid base64');
    if (raw.length < low || raw.length > high) {
      throw failField(field, `expected ${low}..${high} bytes, got ${raw.length}`);
    }
    return raw;
  };
}

const identityKey = binary(PUBLIC_KEY_BYTES);

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value) &&
    !(value instanceof JsonFloat);
}

function member(field, value) {
  const keys = isObject(value) ? Object.keys(value) : [];
  if (!isObject(value) || keys.length !== 3 || !('name' in value) || !('addr' in value) ||
      !('key' in value)) {
    throw failField(field, 'expected members as {name, addr, key} objects');
  }
  return {
    name: text(MAX_NAME)(field, value.name),
    addr: text(64)(field, value.addr),
    key: identityKey(field, value.key),
  };
}

export function members(field, value) {
  if (!Array.isArray(value) || value.length > MAX_MEMBERS_LISTED) {
    throw failField(field, 'expected a list of members');
  }
  return value.map((item) => member(field, item));
}

// --- the schema --------------------------------------------------------------------

const name = text(MAX_NAME);
const room = text(MAX_ROOM);
const addr = text(64);
const sid = binary(SID_BYTES);
const counter = integer(0, MAX_COUNTER);
const ciphertext = binary(TAG_BYTES, MAX_SIGNED_CIPHERTEXT);
const point = binary(POINT_BYTES);
const mac = binary(MAC_BYTES);
const token = integer(0, 2 ** 31 - 1);
const position = integer(0, 2n ** 63n - 1n);

/** Messages a client sends: type -> [required, optional] fields. */
export const FROM_CLIENT = {
  hello: [{ v: integer(0, 2 ** 16), room, name }, {}],
  share: [{ X: point }, {}],
  confirm: [{ mac, key: identityKey }, {}],
  send: [{ sid, n: counter, ct: ciphertext }, {}],
  who: [{}, {}],
  ping: [{}, { id: token }],
  pong: [{}, { id: token }],
};

/** Messages a server sends. */
export const FROM_SERVER = {
  params: [{
    salt: binary(MIN_SALT_BYTES, MAX_SALT_BYTES), n: integer(2, 2 ** 30),
    r: integer(1, 1024), p: integer(1, 1024),
  }, {}],
  verify: [{ Y: point, mac }, {}],
  welcome: [
    { name, room, addr, members },
    { max_text: integer(0, 2 ** 31), rate: number, burst: integer(0, 2 ** 31) },
  ],
  msg: [{ from: name, sid, n: counter, ct: ciphertext }, { ts: number, hist: boolean }],
  joined: [{ name, addr, key: identityKey }, {}],
  left: [{ name, addr }, {}],
  members: [{ members }, {}],
  ack: [{ sid, n: counter, seq: position }, {}],
  notice: [{ code: text(32), text: text(MAX_TEXT_FIELD) }, {}],
  error: [{ code: text(32), text: text(MAX_TEXT_FIELD) }, {}],
  ping: [{}, { id: token }],
  pong: [{}, { id: token }],
  // Only on a WebSocket, as its first frame: what the page binds its login to
  // (webBinding in spake2plus.js).
  'web-hello': [{ nonce: binary(NONCE_BYTES), cert: binary(HASH_BYTES) }, {}],
};

/** Each type's [required field names, optional field names], for drift checks. */
export function describe(schema) {
  return Object.fromEntries(Object.entries(schema).map(
    ([kind, [required, optional]]) => [kind, [Object.keys(required), Object.keys(optional)]]));
}

/**
 * Decode and validate one frame body (bytes) against a schema:
 * { type, fields }. Throws BadMessage for anything else.
 */
export function decode(frame, schema) {
  let obj;
  try {
    obj = parseJson(fromUtf8(frame));
  } catch (error) {
    if (error instanceof BadMessage) throw error;
    throw new BadMessage('frame is not a UTF-8 JSON object');
  }
  if (!isObject(obj)) throw new BadMessage('frame is not a UTF-8 JSON object');
  const kind = obj.type;
  delete obj.type;
  if (typeof kind !== 'string') throw new BadMessage('message has no type');
  if (!Object.hasOwn(schema, kind)) throw new BadMessage(`unknown message type ${pyRepr(head(kind, 32))}`);
  const [required, optional] = schema[kind];
  const fields = {};
  for (const [field, check] of Object.entries(required)) {
    if (!Object.hasOwn(obj, field)) throw new BadMessage(`${kind} message lacks field ${pyRepr(field)}`);
    fields[field] = check(field, obj[field]);
  }
  for (const [field, check] of Object.entries(optional)) {
    if (Object.hasOwn(obj, field)) fields[field] = check(field, obj[field]);
  }
  const extra = Object.keys(obj).filter((key) => !Object.hasOwn(fields, key));
  if (extra.length) {
    extra.sort(codePointCompare);
    throw new BadMessage(`${kind} message has unknown field ${pyRepr(head(extra[0], 32))}`);
  }
  return { type: kind, fields };
}

const JSON_ESCAPES = { '"': '\\"', '\\': '\\\\', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function jsonString(value) {
  // As Python's json with ensure_ascii: everything outside ' '..'~' escaped.
  let out = '"';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    const code = value.charCodeAt(i);
    if (Object.hasOwn(JSON_ESCAPES, c)) out += JSON_ESCAPES[c];
    else if (code < 0x20 || code > 0x7e) out += '\\u' + code.toString(16).padStart(4, '0');
    else out += c;
  }
  return out + '"';
}

function jsonValue(value) {
  if (value instanceof Uint8Array) return jsonString(toBase64(value));
  if (typeof value === 'string') return jsonString(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value.toString();
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  throw new TypeError('a client message holds only strings, bytes, integers and booleans');
}

/**
 * Encode one message as the Python code does (compact separators, ASCII
 * only, bytes as base64): the same bytes for the same fields in the same
 * order. Encoding does not validate.
 */
export function encode(kind, fields = {}) {
  const parts = [`"type":${jsonString(kind)}`];
  for (const [key, value] of Object.entries(fields)) parts.push(`${jsonString(key)}:${jsonValue(value)}`);
  return new TextEncoder().encode(`{${parts.join(',')}}`);
}
