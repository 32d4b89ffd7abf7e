// Pinned identity keys, as twistchat/client/pins.py: (server, room, name) ->
// the member's Ed25519 public key, pinned on first sight; another key is kept
// as `changed` until the person accepts it. Nothing is trusted silently.
//
// The session talks to a pin store through this interface, every method
// async so that the page can keep pins in IndexedDB (per origin):
//
//   get(server, room, name)          -> { key, changed | null } | null
//   seeAll(server, room, [[name, key], ...]) -> ['new' | 'pinned' | 'changed', ...]
//   accept(server, room, name)       -> the key now pinned, or null if no change waited
//
// MemoryPins keeps them in memory (tests, or a page that keeps nothing).

import { equalBytes } from './bytes.js';

export const NEW = 'new';
export const PINNED = 'pinned';
export const CHANGED = 'changed';

function id(server, room, name) {
  return JSON.stringify([server, room, name]);
}

export class MemoryPins {
  #pins = new Map();

  async get(server, room, name) {
    const pin = this.#pins.get(id(server, room, name));
    return pin ? { key: pin.key.slice(), changed: pin.changed ? pin.changed.slice() : null } : null;
  }

  async seeAll(server, room, members) {
    const result = [];
    for (const [name, key] of members) {
      const at = id(server, room, name);
      const pin = this.#pins.get(at);
      if (!pin) {
        this.#pins.set(at, { key: key.slice(), changed: null });
        result.push(NEW);
      } else if (equalBytes(pin.key, key)) {
        result.push(PINNED);
      } else {
        if (!pin.changed || !equalBytes(pin.changed, key)) pin.changed = key.slice();
        result.push(CHANGED);
      }
    }
    return result;
  }

  async accept(server, room, name) {
    const at = id(server, room, name);
    const pin = this.#pins.get(at);
    if (!pin || !pin.changed) return null;
    this.#pins.set(at, { key: pin.changed, changed: null });
    return pin.changed.slice();
  }
}
