// What the page keeps in IndexedDB (per origin, as the browser scopes it):
//
//   identities   name -> { privateKey: CryptoKey (non-extractable) | seed, publicKey }
//   pins         JSON [server, room, name] -> { key, changed }   (pins.js interface)
//   transcripts  JSON [room, name] -> Transcript.state()
//   kept         JSON [room, name] -> { salt, n, r, p, w0, w1, contentSecret }
//                only when the person opts in; never the password.
//
// Every function is async; a browser without IndexedDB (or one that refuses
// it, e.g. a private window in some browsers) gets MemoryStore's in-memory
// stand-in, and the page says so.

import { identity as ed, pins as P } from '../index.js';

const DB = 'twistchat';
const STORES = ['identities', 'pins', 'transcripts', 'kept'];

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
      const r = indexedDB.open(DB, 1);
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
    return pin ? { key: pin.key, changed: pin.changed ?? null } : null;
  }

  async seeAll(server, room, members) {
    const result = [];
    for (const [name, key] of members) {
      const at = JSON.stringify([server, room, name]);
      const pin = await this.#store.get('pins', at);
      if (!pin) {
        await this.#store.put('pins', at, { key: key.slice(), changed: null });
        result.push(P.NEW);
      } else if (equalBytes(pin.key, key)) {
        result.push(P.PINNED);
      } else {
        if (!pin.changed || !equalBytes(pin.changed, key)) {
          await this.#store.put('pins', at, { key: pin.key, changed: key.slice() });
        }
        result.push(P.CHANGED);
      }
    }
    return result;
  }

  async accept(server, room, name) {
    const at = JSON.stringify([server, room, name]);
    const pin = await this.#store.get('pins', at);
    if (!pin || !pin.changed) return null;
    await this.#store.put('pins', at, { key: pin.changed, changed: null });
    return pin.changed.slice();
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
