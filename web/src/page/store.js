// What the page keeps in IndexedDB (per origin, as the browser scopes it):
//
//   identities   name -> { privateKey: CryptoKey (non-extractable) | seed, publicKey }
//   pins         JSON [server, room, name] -> { key, changed, devices }   (pins.js interface)
//   transcripts  JSON [room, name] -> Transcript.state()
//   kept         JSON [room, name] -> { salt, n, r, p, w0, w1, contentSecret }
//                only when the person opts in; never the password.
//   vouches      JSON [room, name] -> the vouch (bytes) this device presents at
//                login, made by another device of the name (docs/protocol.md 12.8)
//
// Every function is async; a browser without IndexedDB (or one that refuses
// it, e.g. a private window in some browsers) gets MemoryStore's in-memory
// stand-in, and the page says so.

import { identity as ed, pins as P } from '../index.js';

const DB = 'twistchat';
const STORES = ['identities', 'pins', 'transcripts', 'kept', 'vouches'];

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export function equalBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** Key-value stores over one IndexedDB database. */
export class Store {
  #db;

  constructor(db) {
    this.#db = db;
  }

  static async open(indexedDB = globalThis.indexedDB) {
    if (!indexedDB) return new MemoryStore();
    try {
      const r = indexedDB.open(DB, 2);
      r.onupgradeneeded = () => {
        for (const name of STORES) {
          if (!r.result.objectStoreNames.contains(name)) r.result.createObjectStore(name);
        }
      };
      return new Store(await request(r));
    } catch {
      return new MemoryStore();
    }
  }

  get persistent() {
    return true;
  }

  async get(store, key) {
    const t = this.#db.transaction(store, 'readonly');
    return (await request(t.objectStore(store).get(key))) ?? null;
  }

  async put(store, key, value) {
    const t = this.#db.transaction(store, 'readwrite');
    await request(t.objectStore(store).put(value, key));
  }

  async delete(store, key) {
    const t = this.#db.transaction(store, 'readwrite');
    await request(t.objectStore(store).delete(key));
  }
}

/** The same interface in memory: nothing outlives the page. */
export class MemoryStore {
  #maps = new Map(STORES.map((s) => [s, new Map()]));

  get persistent() {
    return false;
  }

  async get(store, key) {
    return this.#maps.get(store).get(key) ?? null;
  }

  async put(store, key, value) {
    this.#maps.get(store).set(key, value);
  }

  async delete(store, key) {
    this.#maps.get(store).delete(key);
  }
}

/** The pin store interface of pins.js, kept in a Store. */
export class StoredPins {
  #store;

  constructor(store) {
    this.#store = store;
  }

  async get(server, room, name) {
    const pin = await this.#store.get('pins', JSON.stringify([server, room, name]));
    return pin ? P.copyPin(pin) : null;
  }

  async seeAll(server, room, members) {
    const result = [];
    for (const [name, key, voucher] of members) {
      const at = JSON.stringify([server, room, name]);
      const before = await this.#store.get('pins', at);
      const [pin, how] = P.see(before, key, voucher ?? null);
      if (pin !== before) await this.#store.put('pins', at, pin);
      result.push(how);
    }
    return result;
  }

  async accept(server, room, name) {
    const at = JSON.stringify([server, room, name]);
    const pin = P.accepted(await this.#store.get('pins', at));
    if (!pin) return null;
    await this.#store.put('pins', at, pin);
    return pin.key.slice();
  }
}

/**
 * The identity key of `name` in this browser, made on first use: a
 * non-extractable WebCrypto Ed25519 key where the browser has one (the page's
 * scripts can sign with it but never read it), else noble's Ed25519 with a
 * seed kept in IndexedDB. Returns { publicKey, sign(data), kind }.
 */
export async function identityFor(store, name, subtle = globalThis.crypto.subtle) {
  let kept = await store.get('identities', name);
  if (kept && kept.privateKey) return webCryptoIdentity(kept, subtle);
  if (kept && kept.seed) return Object.assign(new ed.Identity(kept.seed), { kind: 'seed' });
  try {
    const pair = await subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const publicKey = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
    kept = { privateKey: pair.privateKey, publicKey };
    await store.put('identities', name, kept);
    return webCryptoIdentity(kept, subtle);
  } catch {
    const seed = globalThis.crypto.getRandomValues(new Uint8Array(ed.SEED_BYTES));
    await store.put('identities', name, { seed });
    return Object.assign(new ed.Identity(seed), { kind: 'seed' });
  }
}

function webCryptoIdentity({ privateKey, publicKey }, subtle) {
  return {
    kind: 'webcrypto',
    publicKey,
    async sign(data) {
      return new Uint8Array(await subtle.sign({ name: 'Ed25519' }, privateKey, data));
    },
  };
}
