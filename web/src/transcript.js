// Transcript integrity, as twistchat/client/transcript.py: the member's own
// chain (seq, the hash of its last message, what is in flight and what was
// lost) and what it keeps of every other sender's, per (name, key). For each
// signed message opened, `receive` decides whether it is shown and what is
// reported: replay, fork, gap, lost, offline, views (docs/protocol.md 12.5),
// with the same texts as the terminal client.
//
// No I/O: `state()` gives a JSON-able object in the terminal client's state
// file format, and `new Transcript(me, myKey, state)` takes one back, so the
// page can keep it where it likes (IndexedDB). Sequence numbers are bigints.

import { equalBytes, fromHex, toHex } from './bytes.js';
import { MAX_LOST, NO_HASH } from './signed.js';

export const RECENT = 64;
export const MAX_MISSING = 1024;
export const MAX_SENDERS = 256;
export const MAX_HASHES = 1024;
const FORMAT = 'twistchat-transcript';
const MAX_EXACT = 2n ** 53n;

/** Something wrong with the transcript: { kind, sender, count, text }. */
export function alarm(kind, sender, count, text) {
  return Object.freeze({ kind, sender, count, text });
}

class Chain {
  constructor() {
    this.high = 0n;
    this.last = NO_HASH;
    this.recent = new Map(); // seq -> [hash, prev], oldest first
    this.missing = new Set();
    this.lost = new Set();
    this.viewsReported = false;
    this.epoch = 0;
  }

  knows(digest) {
    for (const [h] of this.recent.values()) if (equalBytes(h, digest)) return true;
    return false;
  }

  add(seq, digest, prev) {
    this.recent.delete(seq);
    this.recent.set(seq, [digest, prev]);
    while (this.recent.size > RECENT) this.recent.delete(this.recent.keys().next().value);
    if (seq > this.high) {
      this.high = seq;
      this.last = digest;
    }
  }
}

function bounded(numbers) {
  const sorted = [...numbers].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return new Set(sorted.slice(-MAX_MISSING));
}

function sortedBig(numbers) {
  return [...numbers].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

function plural(count, one, many) {
  return count === 1 || count === 1n ? one : many;
}

// The sender side a kept state holds (its `out`): the last number used, the
// hash of the message that carried it, of the last one accepted, and the
// numbers still to declare lost, with those in flight when it was kept (never
// acknowledged). A damaged one throws TypeError, RangeError or SyntaxError.
function senderSide(out) {
  const lost = new Set(out.lost.map(BigInt));
  for (const [, , seq] of out.flight) lost.add(BigInt(seq));
  return {
    seq: BigInt(out.seq), last: fromHex(out.last), seen: fromHex(out.seen),
    lost: sortedBig(lost).slice(-MAX_LOST),
  };
}

function chainId(name, key) {
  return `${name}\0${toHex(key)}`;
}

export class Transcript {
  /**
   * The chains of member `me` (identity public key `myKey`); `state`, if
   * given, is what state() returned before (a damaged one throws
   * TypeError or RangeError: the caller decides what to do).
   */
  constructor(me, myKey, state) {
    this.me = me;
    this.myKey = myKey;
    this.epoch = 0;
    this.offlineReported = false;
    this.shown = new Set();
    this.seq = 0n;
    this.last = NO_HASH;
    this.seen = NO_HASH;
    this.lost = [];
    /** `${hex sid}/${n}` -> { seq, lost }: sent, not yet acknowledged. */
    this.inFlight = new Map();
    this.chains = new Map(); // chainId -> Chain, least recently used first
    this.hashes = []; // the room's accepted message hashes (hex), oldest first
    this.known = new Set();
    if (state) this.#load(state);
  }

  #load(state) {
    if (state.format !== FORMAT || state.version !== 1) throw new TypeError('unknown format');
    let out = state.out;
    if (out.key !== toHex(this.myKey)) {
      out = { seq: 0, last: toHex(NO_HASH), seen: out.seen, lost: [], flight: [] };
    }
    Object.assign(this, senderSide(out));
    for (const c of state.chains) {
      const chain = new Chain();
      chain.high = BigInt(c.high);
      chain.last = fromHex(c.last);
      chain.missing = new Set(c.missing.map(BigInt));
      chain.lost = new Set(c.lost.map(BigInt));
      chain.viewsReported = Boolean(c.views);
      for (const [seq, digest, prev] of c.recent) {
        chain.recent.set(BigInt(seq), [fromHex(digest), fromHex(prev)]);
      }
      this.chains.set(chainId(c.name, fromHex(c.key)), Object.assign(chain, { name: c.name, key: fromHex(c.key) }));
    }
    for (const digest of state.hashes) this.#remember(fromHex(digest));
  }

  /** A JSON-able copy of what is kept (the terminal client's file format). */
  state() {
    // Beyond 2^53 (only a sender skipping ahead gets there) as decimal
    // strings, as Python writes them: JSON numbers that large get rounded.
    const num = (x) => (x <= MAX_EXACT ? Number(x) : x.toString());
    return {
      format: FORMAT,
      version: 1,
      out: {
        key: toHex(this.myKey), seq: num(this.seq), last: toHex(this.last), seen: toHex(this.seen),
        lost: this.lost.map(num),
        flight: [...this.inFlight.entries()].map(([id, e]) => [id.split('/')[0], Number(id.split('/')[1]), num(e.seq)]),
      },
      chains: [...this.chains.values()].map((c) => ({
        name: c.name, key: toHex(c.key), high: num(c.high), last: toHex(c.last),
        recent: [...c.recent.entries()].map(([s, [h, p]]) => [num(s), toHex(h), toHex(p)]),
        missing: sortedBig(c.missing).map(num), lost: sortedBig(c.lost).map(num),
        views: c.viewsReported,
      })),
      hashes: [...this.hashes],
    };
  }

  // --- the sender side

  /** A new connection to the room. */
  newConnection() {
    this.epoch += 1;
    this.offlineReported = false;
    this.shown = new Set();
  }

  /**
   * Take the sender side from `state` (what state() returned, kept by another
   * tab of this browser profile, say) if it carried our chain further than
   * we did: another client of the profile sent under our name while we were
   * away, and numbering on from memory would give its numbers a second
   * message each, a fork to every receiver. A state that is missing,
   * damaged, of another key or not ahead changes nothing. Whether it was
   * taken.
   */
  catchUp(state) {
    if (!state || this.inFlight.size) return false;
    let side;
    try {
      if (state.format !== FORMAT || state.version !== 1) return false;
      if (state.out.key !== toHex(this.myKey)) return false;
      side = senderSide(state.out);
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError || e instanceof SyntaxError) return false;
      throw e;
    }
    if (side.seq <= this.seq) return false;
    Object.assign(this, side);
    return true;
  }

  /** The chain fields of the next message to send (for signed.sealSigned). */
  nextFields(text) {
    return { seq: this.seq + 1n, prev: this.last, seen: this.seen, text, lost: [...this.lost] };
  }

  /** `fields` went out as message n of session sid, with hash digest. */
  sent(fields, sid, n, digest) {
    this.seq = fields.seq;
    this.last = digest;
    this.seen = digest;
    this.inFlight.set(`${toHex(sid)}/${n}`, { seq: fields.seq, lost: [...fields.lost] });
    this.#chain(this.me, this.myKey).add(fields.seq, digest, fields.prev);
    this.#remember(digest);
  }

  /** The server acknowledged message n of session sid; whether it was in flight. */
  acked(sid, n) {
    const id = `${toHex(sid)}/${n}`;
    const entry = this.inFlight.get(id);
    if (!entry) return false;
    this.inFlight.delete(id);
    const declared = new Set(entry.lost);
    this.lost = this.lost.filter((x) => !declared.has(x));
    return true;
  }

  /** The connection ended: how many messages were never acknowledged. */
  connectionLost() {
    const count = this.inFlight.size;
    if (count) {
      const lost = new Set(this.lost);
      for (const e of this.inFlight.values()) lost.add(e.seq);
      this.lost = sortedBig(lost).slice(-MAX_LOST);
      this.inFlight.clear();
    }
    return count;
  }

  // --- the receiver side

  #chain(name, key) {
    const id = chainId(name, key);
    let chain = this.chains.get(id);
    if (chain) {
      this.chains.delete(id);
    } else {
      chain = Object.assign(new Chain(), { name, key });
    }
    this.chains.set(id, chain);
    while (this.chains.size > MAX_SENDERS) this.chains.delete(this.chains.keys().next().value);
    return chain;
  }

  #remember(digest) {
    if (this.hashes.length === MAX_HASHES) this.known.delete(this.hashes.shift());
    const h = toHex(digest);
    this.hashes.push(h);
    this.known.add(h);
  }

  /** Whether digest is the hash of a message accepted here (bounded). */
  knows(digest) {
    return this.known.has(toHex(digest));
  }

  /**
   * Check one signed message from sender (opened by signed.openMessage, its
   * key compared with the pin by the caller): { show, alarms, trusted, overlap }.
   */
  receive(sender, m, history) {
    const verdict = this.#check(sender, m, history);
    if (verdict.show) {
      this.shown.add(toHex(m.hash));
      this.#remember(m.hash);
      this.seen = m.hash;
    }
    return verdict;
  }

  #check(name, m, history) {
    const verdict = (show, alarms = [], trusted = true, overlap = false) => (
      { show, alarms, trusted, overlap });
    const firstEver = !this.chains.has(chainId(name, m.key));
    const chain = this.#chain(name, m.key);
    const continuing = chain.epoch === this.epoch;
    if (firstEver) {
      chain.add(m.seq, m.hash, m.prev);
      chain.epoch = this.epoch;
      return verdict(true);
    }
    const replay = () => alarm(
      'replay', name, 1, `an old message from ${name} was presented again (dropped)`);
    const shown = this.shown.has(toHex(m.hash));
    if (chain.knows(m.hash) || shown) {
      chain.epoch = this.epoch;
      if (history && !shown) return verdict(false, [], true, true);
      return verdict(false, [replay()]);
    }
    if (chain.missing.has(m.seq)) {
      chain.missing.delete(m.seq);
      chain.add(m.seq, m.hash, m.prev);
      return verdict(true);
    }
    if (m.seq <= chain.high) {
      if (chain.recent.has(m.seq)) {
        return verdict(true, [alarm('fork', name, 1,
          `${name}'s messages disagree: the server or someone holding ${name}'s ` +
          `key is showing different histories (two messages numbered ${m.seq})`)], false);
      }
      if (history) {
        chain.epoch = this.epoch;
        return verdict(false, [], true, true);
      }
      return verdict(false, [replay()]);
    }
    const alarms = [];
    let trusted = true;
    if (m.seq === chain.high + 1n && !equalBytes(m.prev, chain.last)) {
      alarms.push(alarm('fork', name, 1,
        `${name}'s messages disagree: the server or someone holding ${name}'s key ` +
        `is showing different histories (message ${m.seq} follows another one)`));
      trusted = false;
    }
    const from = m.seq - chain.high <= BigInt(MAX_MISSING) ? chain.high + 1n : m.seq - BigInt(MAX_MISSING);
    const skipped = [];
    for (let s = from; s < m.seq; s++) skipped.push(s);
    // A bigint: a sender may skip more numbers than a Number holds exactly.
    // The texts say the exact count; an alarm's count is a Number.
    const count = m.seq - chain.high - 1n;
    const lostSet = new Set(m.lost);
    const declared = skipped.filter((s) => lostSet.has(s));
    if (count && !continuing) {
      if (!this.offlineReported) {
        this.offlineReported = true;
        alarms.push(alarm('offline', name, Number(count), 'you missed messages while offline'));
      }
    } else if (count) {
      const withheld = count - BigInt(declared.length);
      if (withheld) {
        chain.missing = bounded([...chain.missing, ...skipped.filter((s) => !lostSet.has(s))]);
        alarms.push(alarm('gap', name, Number(withheld), plural(withheld,
          `1 message from ${name} was withheld from you`,
          `${withheld} messages from ${name} were withheld from you`)));
      }
      if (declared.length) {
        chain.lost = bounded([...chain.lost, ...declared]);
        alarms.push(alarm('lost', name, declared.length, plural(declared.length,
          `1 message from ${name} was not delivered (lost on the way)`,
          `${declared.length} messages from ${name} were not delivered (lost on the way)`)));
      }
    }
    if (!history && continuing && equalBytes(m.prev, chain.last) && !equalBytes(m.seen, NO_HASH) &&
        !this.knows(m.seen) && !chain.viewsReported) {
      chain.viewsReported = true;
      alarms.push(alarm('views', name, 1,
        `${name} was shown a message you were not: the server is showing you ` +
        'different views of the room'));
    }
    chain.add(m.seq, m.hash, m.prev);
    chain.epoch = this.epoch;
    return verdict(true, alarms, trusted);
  }
}
