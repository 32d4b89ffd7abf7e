// Pinned identity keys, as twistchat/client/pins.py: (server, room, name) ->
// the member's Ed25519 public key, pinned on first sight; further devices of
// the name, each vouched for by a key already pinned for it (docs/protocol.md,
// section 12.8); another key is kept as `changed` until the person accepts
// it. Nothing is trusted silently.
//
// A pin is { key, changed | null, devices: [[deviceKey, voucherKey], ...] }.
// see(pin, key, voucher) decides, as pins.see in Python, for both stores.
//
// The session talks to a pin store through this interface, every method
// async so that the page can keep pins in IndexedDB (per origin):
//
//   get(server, room, name)          -> a pin | null
//   seeAll(server, room, [[name, key, voucher?], ...])
//                                    -> ['new' | 'pinned' | 'device' | 'changed', ...]
//       voucher: the key whose vouch for (name, key) the caller checked
//       (identity.verifyVouch); it counts only if it is pinned for the name.
//   accept(server, room, name)       -> the key now pinned, or null if no change waited
//
// MemoryPins keeps them in memory (tests, or a page that keeps nothing).

import { equalBytes } from './bytes.js';

export const NEW = 'new';
export const PINNED = 'pinned';
export const DEVICE = 'device';
export const CHANGED = 'changed';

function id(server, room, name) {
  return JSON.stringify([server, room, name]);
}

/** Every key pinned for a name: the first, then each device's. */
export function keysOf(pin) {
  return pin ? [pin.key, ...(pin.devices ?? []).map(([device]) => device)] : [];
}

function has(keys, key) {
  return keys.some((k) => equalBytes(k, key));
}

/** A copy of a pin (stored pins written before devices have none). */
export function copyPin(pin) {
  return {
    key: pin.key.slice(),
    changed: pin.changed ? pin.changed.slice() : null,
    devices: (pin.devices ?? []).map(([d, v]) => [d.slice(), v.slice()]),
  };
}

/**
 * Compare `key` with `pin` (null: none yet): [the pin to keep, how the key
 * compares]. A key vouched for by `voucher`, one of the pinned keys, becomes
 * another device; a vouch by any other key is ignored.
 */
export function see(pin, key, voucher = null) {
  if (!pin) return [{ key: key.slice(), changed: null, devices: [] }, NEW];
  const keys = keysOf(pin);
  if (has(keys, key)) return [pin, PINNED];
  const devices = pin.devices ?? [];
  if (voucher && has(keys, voucher)) {
    const changed = pin.changed && equalBytes(pin.changed, key) ? null : pin.changed;
    return [{ key: pin.key, changed, devices: [...devices, [key.slice(), voucher.slice()]] }, DEVICE];
  }
  return [{ key: pin.key, changed: key.slice(), devices }, CHANGED];
}

/** What accepting a changed key leaves: that key alone (a change replaces every device). */
export function accepted(pin) {
  return pin && pin.changed ? { key: pin.changed.slice(), changed: null, devices: [] } : null;
}

export class MemoryPins {
  #pins = new Map();

  async get(server, room, name) {
    const pin = this.#pins.get(id(server, room, name));
    return pin ? copyPin(pin) : null;
  }

  async seeAll(server, room, members) {
    const result = [];
    for (const [name, key, voucher] of members) {
      const at = id(server, room, name);
      const [pin, how] = see(this.#pins.get(at) ?? null, key, voucher ?? null);
      this.#pins.set(at, pin);
      result.push(how);
    }
    return result;
  }

  async accept(server, room, name) {
    const at = id(server, room, name);
    const pin = accepted(this.#pins.get(at));
    if (!pin) return null;
    this.#pins.set(at, pin);
    return pin.key.slice();
  }
}
