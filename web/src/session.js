// A member's session in a room, in the page: the JavaScript twin of
// twistchat/client/protocol.py (one connection: the SPAKE2+ login as prover,
// then sealing and signing, opening and verifying), session.py (presence,
// history, pins, the chains, reconnect with backoff), policy.py and
// keyring.py, with the same error codes and messages. Transport-agnostic:
// frames come and go through a connector (transport.js) and the channel
// binding comes from a binding provider. Start with login(); docs/browser.md
// documents the API.

import { equalBytes, toHex, utf8 } from './bytes.js';
import {
  BadPoint, BadSignature, ConnectionClosed, FrameTooLong, ProtocolError, Rejected, SaltChanged, Timeout,
  TwistchatError, UnexpectedMessage, Undecryptable, fromCode,
} from './errors.js';
import { Identity, makeVouch, verifyVouch } from './identity.js';
import { checkParams, contentKey, deriveSecrets } from './kdf.js';
import { MemoryPins, CHANGED, DEVICE, PINNED, keysOf } from './pins.js';
import { roomCommitment, roomSafetyCode, safetyNumber } from './safety.js';
import { MAX_TEXT_BYTES, Opener, Sealer } from './seal.js';
import { openMessage, sealSigned } from './signed.js';
import { Prover, context } from './spake2plus.js';
import { Transcript } from './transcript.js';
import * as wire from './wire.js';

export const HANDSHAKE_TIMEOUT = 30;
export const KEEPALIVE = [60, 20];
export const REMEMBERED = 4096;
export const ACK_WAIT = 5;
export const STABLE_AFTER = 10;
export const PACE = 0.9;
export const SPARE = 2;
/** How long a vouch lasts by default, and at most (days), as twistchat/crypto/vouch.py. */
export const VOUCH_DAYS = 30;
export const VOUCH_MAX_DAYS = 365;

// --- clock, policy, keyring --------------------------------------------------------

/** The real clock: now() in seconds, later(seconds, fn) -> cancel(). */
export const realClock = {
  now: () => Date.now() / 1000,
  later(seconds, fn) {
    const handle = setTimeout(fn, seconds * 1000);
    return () => clearTimeout(handle);
  },
};

/** C{rate} tokens per second, at most C{burst} saved up (twistchat.ratelimit). */
export class TokenBucket {
  constructor(rate, burst, now) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.stamp = now;
  }

  take(now) {
    this.tokens = Math.min(this.burst, this.tokens + (now - this.stamp) * this.rate);
    this.stamp = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }
}

/**
 * How a session reconnects (policy.Reconnect): initialDelay doubling
 * (factor) up to maxDelay, plus jitter() seconds; give up after maxAttempts
 * failed attempts in a row (null: never); keep at most maxQueued messages.
 */
export class Reconnect {
  constructor({ initialDelay = 1, maxDelay = 60, factor = 2, maxAttempts = null, maxQueued = 100,
    jitter = Math.random } = {}) {
    Object.assign(this, { initialDelay, maxDelay, factor, maxAttempts, maxQueued, jitter });
  }

  /** Seconds to wait before attempt number `attempt` (1, 2, ...). */
  delay(attempt) {
    const power = Math.min(attempt - 1, 100);
    const base = Math.min(this.initialDelay * this.factor ** power, this.maxDelay);
    return (Number.isFinite(base) ? base : this.maxDelay) + this.jitter();
  }
}

/** Whether an error rules out trying again (policy.is_final). */
export function isFinal(error, reconnecting = true) {
  if (!(error instanceof TwistchatError)) return false;
  if (error.final) return true;
  return error.retryOnlyWhenReconnecting && !reconnecting;
}

/** One line saying why a connection or login failed (policy.describe). */
export function describe(error) {
  if (error instanceof TwistchatError) return error.message;
  return (error && error.message) || String(error);
}

/**
 * Derives a room's keys from its password once, then forgets the password:
 * a later login naming another salt or cost fails with SaltChanged.
 */
export class Keyring {
  #password;
  #keys = new Map();

  constructor(password, room, { derive = deriveSecrets, onProgress } = {}) {
    this.#password = password;
    this.room = room;
    this.derive = derive;
    this.onProgress = onProgress;
  }

  get holdsPassword() {
    return this.#password !== null;
  }

  /** { w0, w1, contentKey } for this salt and cost. */
  keys(salt, params) {
    const index = `${toHex(salt)}/${params.n}/${params.r}/${params.p}`;
    let keys = this.#keys.get(index);
    if (keys) return keys;
    if (this.#password === null) return Promise.reject(new SaltChanged());
    const password = this.#password;
    this.#password = null;
    keys = this.derive(password, salt, params, { onProgress: this.onProgress }).then(
      (s) => ({ w0: s.w0, w1: s.w1, contentKey: contentKey(s.contentSecret, this.room) }));
    keys.catch(() => this.#keys.delete(index));
    this.#keys.set(index, keys);
    return keys;
  }

  /** Drop the password (if still held) and every derived key. */
  forget() {
    this.#password = null;
    this.#keys.clear();
  }
}

// --- one connection ------------------------------------------------------------------

/** The states of one connection, described as the terminal client does. */
export const ConnectionState = Object.freeze({
  TLS: 'waiting for the TLS handshake',
  PARAMS: 'waiting for the password parameters',
  DERIVING: 'deriving keys from the password',
  VERIFY: "waiting for the server's proof",
  WELCOME: 'waiting for the welcome',
  MEMBER: 'member',
  PINGED: 'member, waiting for an answer to a ping',
  CLOSED: 'closed',
});
const S = ConnectionState;
const LOGGING_IN = new Set([S.TLS, S.PARAMS, S.DERIVING, S.VERIFY, S.WELCOME]);
const EVENTS = new Set(['joined', 'left', 'members', 'notice', 'pong', 'ack']);

/**
 * One connection, as member-to-be `name` of `room` (protocol.ChatClientProtocol).
 * Frames are handled one at a time, in order, each to its end (opening is
 * asynchronous); the handler's methods may return promises, which are awaited.
 * The handler: loggedIn(connection, welcome), loginFailed(error),
 * message(sender, opened, msg), rejected(sender, error, msg), event(msg),
 * closed(error).
 */
export class Connection {
  #handler;
  #keyring;
  #binding;
  #clock;
  #keepalive;
  #timeout;
  #transport = null;
  #queue = Promise.resolve();
  #cancelTimer = null;
  #prover = null;
  #keys = null;
  #sealer = null;
  #opener = null;
  #error = null;
  #log;

  constructor({ handler, name, room, keyring, binding, identity, vouch = null, clock = realClock,
    timeout = HANDSHAKE_TIMEOUT, keepalive = KEEPALIVE, log = console.error }) {
    this.#handler = handler;
    this.name = name;
    this.room = room;
    this.#keyring = keyring;
    this.#binding = binding;
    this.identity = identity;
    this.vouch = vouch && vouch.length ? vouch : null;
    this.#clock = clock;
    this.#timeout = timeout;
    this.#keepalive = keepalive;
    this.#log = log;
    this.state = S.TLS;
    /** A one-way commitment to the room key, for the room's safety code. */
    this.commitment = null;
  }

  get isMember() {
    return this.state === S.MEMBER || this.state === S.PINGED;
  }

  /** Open the connection through `connect` (a connector, transport.js). */
  open(connect) {
    this.#setTimer(this.#timeout, () => this.#abandon(
      new Timeout(`no answer from the server within ${this.#timeout} seconds`)));
    this.#transport = connect({
      opened: () => this.#serial(() => this.#opened()),
      frame: (frame) => this.#serial(() => this.#frame(frame)),
      // After the frames that came before it: the server's last word (an
      // error frame just before it closes) is what the loss reports.
      closed: (error) => {
        this.#queue = this.#queue.then(() => this.#lost(error));
      },
    });
  }

  /** Close in order (the server sees the member leave). */
  close() {
    if (this.state !== S.CLOSED && this.#transport) this.#transport.close();
  }

  #serial(step) {
    this.#queue = this.#queue.then(async () => {
      if (this.state === S.CLOSED || this.#error !== null) return;
      try {
        await step();
      } catch (error) {
        if (error instanceof TwistchatError) {
          this.#abandon(error);
        } else {
          this.#log('twistchat: internal error in the connection', error);
          this.#abandon(new TwistchatError('internal error in the client'));
        }
      }
    });
  }

  #setTimer(seconds, fn) {
    if (this.#cancelTimer) this.#cancelTimer();
    this.#cancelTimer = seconds == null ? null : this.#clock.later(seconds, fn);
  }

  /** Give up on this connection because of error (reported as it closes). */
  #abandon(error) {
    if (this.state === S.CLOSED) return;
    if (this.#error === null) this.#error = error;
    const transport = this.#transport;
    if (transport) (transport.abort ?? transport.close).call(transport);
    this.#lost(null);
  }

  #lost(error) {
    if (this.state === S.CLOSED) return;
    const was = this.state;
    this.state = S.CLOSED;
    this.#setTimer(null);
    this.#prover = null;
    this.#keys = null;
    const reason = this.#error ?? (error instanceof TwistchatError ? error : null);
    // Reported after the frame being handled (if any), never in the middle of it.
    this.#queue = this.#queue.then(async () => {
      if (LOGGING_IN.has(was)) {
        await this.#handler.loginFailed(reason ?? lostReason(error));
      } else {
        await this.#handler.closed(reason);
      }
    });
  }

  #send(kind, fields) {
    this.#transport.send(wire.encode(kind, fields));
  }

  #opened() {
    if (this.state !== S.TLS) throw new UnexpectedMessage('the channel opened twice');
    this.state = S.PARAMS;
    this.#send('hello', { v: wire.PROTOCOL_VERSION, room: this.room, name: this.name });
  }

  async #frame(frame) {
    if (frame.length > wire.MAX_FRAME_FROM_SERVER) {
      throw new FrameTooLong(`the server sent a frame of ${frame.length} bytes`);
    }
    if (this.state === S.MEMBER || this.state === S.PINGED) {
      this.state = S.MEMBER;
      this.#setTimer(this.#keepalive && this.#keepalive[0], () => this.#ping());
    }
    const message = wire.decode(frame, wire.FROM_SERVER);
    const f = message.fields;
    if (message.type === 'error') throw fromCode(f.code, f.text);
    const step = this.#steps(message.type);
    if (!step) throw new UnexpectedMessage(`the server sent '${message.type}' while ${this.state}`);
    await step(f, message);
  }

  #steps(type) {
    switch (this.state) {
      case S.PARAMS:
        return type === 'params' ? (f) => this.#derive(f) : null;
      case S.VERIFY:
        return type === 'verify' ? (f) => this.#confirm(f) : null;
      case S.WELCOME:
        return type === 'welcome' ? (f, m) => this.#welcome(f, m) : null;
      case S.MEMBER:
        if (type === 'msg') return (f, m) => this.#open(f, m);
        if (EVENTS.has(type)) return (f, m) => this.#handler.event(m);
        if (type === 'ping') return (f) => this.#send('pong', f);
        return null;
      default:
        return null;
    }
  }

  async #derive(f) {
    const params = { n: f.n, r: f.r, p: f.p };
    checkParams(params);
    this.state = S.DERIVING;
    const keys = await this.#keyring.keys(f.salt, params);
    if (this.state !== S.DERIVING) return;
    const binding = await this.#binding(this.#transport);
    this.#keys = keys;
    this.#prover = new Prover(context(binding), utf8(this.name), utf8(this.room), keys.w0, keys.w1);
    this.state = S.VERIFY;
    this.#send('share', { X: this.#prover.share() });
  }

  async #confirm(f) {
    const prover = this.#prover;
    this.#prover = null;
    let confirmP;
    try {
      ({ confirmP } = prover.finish(f.Y, f.mac));
    } catch (error) {
      if (error instanceof BadPoint) {
        throw new BadPoint(`the server's handshake share is invalid: ${error.message}`);
      }
      throw error;
    }
    this.state = S.WELCOME;
    const confirm = { mac: confirmP, key: this.identity.publicKey };
    if (this.vouch) confirm.vouch = this.vouch;
    this.#send('confirm', confirm);
  }

  async #welcome(f, message) {
    if (f.name !== this.name || f.room !== this.room) {
      throw new ProtocolError(
        `the server welcomed us as ${pyRepr(f.name)} in room ${pyRepr(f.room)}, not as ` +
        `${pyRepr(this.name)} in room ${pyRepr(this.room)} as we logged in: it may be trying ` +
        "to pass our messages off as someone else's");
    }
    const key = this.#keys.contentKey;
    this.#keys = null;
    this.#sealer = await Sealer.create(key, this.room, this.name);
    this.#opener = new Opener(key, this.room);
    this.commitment = roomCommitment(key, this.room);
    this.state = S.MEMBER;
    this.#setTimer(this.#keepalive && this.#keepalive[0], () => this.#ping());
    await this.#handler.loggedIn(this, message);
  }

  #ping() {
    if (this.state !== S.MEMBER) return;
    this.state = S.PINGED;
    this.#send('ping', {});
    this.#setTimer(this.#keepalive[1], () => this.#abandon(new Timeout(
      `no answer from the server to a ping within ${this.#keepalive[1]} seconds`)));
  }

  async #open(f, message) {
    let opened;
    try {
      opened = await openMessage(this.#opener, f.from, f.sid, f.n, f.ct);
    } catch (error) {
      if (!(error instanceof Rejected)) throw error;
      await this.#handler.rejected(f.from, error, message);
      return;
    }
    await this.#handler.message(f.from, opened, message);
  }

  /**
   * Sign `fields` (text and chain place), seal and send: { sid, n, ciphertext, hash }.
   * Throws ProtocolError when not a member, RangeError for a text too long.
   */
  async sendSigned(fields) {
    if (!this.isMember) throw new ProtocolError('not connected to a room');
    const sent = await sealSigned(this.#sealer, this.identity, fields);
    if (!this.isMember) throw new ProtocolError('not connected to a room');
    this.#send('send', { sid: sent.sid, n: sent.n, ct: sent.ciphertext });
    return sent;
  }

  sendMessage(kind, fields = {}) {
    this.#send(kind, fields);
  }
}

function lostReason(error) {
  if (error instanceof TwistchatError) return error;
  if (!error) return new ConnectionClosed();
  return new ConnectionClosed(
    `the server closed the connection during the handshake (${error.message || error})`);
}

/** A member as the session keeps it, from presence fields. */
function member(f) {
  return { name: f.name, addr: f.addr, key: f.key, vouch: f.vouch ?? new Uint8Array(0) };
}

function pyRepr(text) {
  // Python's repr of a str without quotes or backslashes inside: 'text'.
  return text.includes("'") && !text.includes('"') ? `"${text}"` : `'${text.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

// --- the session -----------------------------------------------------------------------

/** The states of a session (session.SessionState), for a visible state. */
export const SessionState = Object.freeze({
  CONNECTED: 'connected',
  LEAVING: 'leaving',
  WAITING: 'waiting',
  LOGGING_IN: 'logging-in',
  ENDED: 'ended',
});
const T = SessionState;

/**
 * The session's life cycle as one table: state -> input -> [next state (null:
 * stays), ...method names run in order]. Inputs fed while another's run wait.
 */
const TABLE = {
  [T.CONNECTED]: {
    leave: [T.LEAVING, 'sendThenClose'],
    lost: [T.WAITING, 'countOutage', 'nextAttempt'],
    ends: [T.ENDED, 'endLost'],
  },
  [T.LEAVING]: {
    leave: [null, 'sendThenClose'],
    lost: [T.ENDED, 'endLeft'],
    ends: [T.ENDED, 'endLeft'],
  },
  [T.WAITING]: {
    waitOver: [T.LOGGING_IN, 'logIn'],
    giveUp: [T.ENDED, 'giveUp'],
    leave: [T.ENDED, 'cancelWait', 'endLeftNow'],
  },
  [T.LOGGING_IN]: {
    loggedIn: [T.CONNECTED, 'rejoin'],
    loginFailed: [T.WAITING, 'noteFailure', 'nextAttempt'],
    loginRefused: [T.ENDED, 'endRefused'],
    leave: [T.ENDED, 'cancelLogin', 'endLeftNow'],
  },
  [T.ENDED]: {
    loggedIn: [null, 'closeLateLogin'],
    loginFailed: [null],
    loginRefused: [null],
    leave: [null],
  },
};
export const SESSION_TABLE = TABLE;

/**
 * Log in and return the Session once welcomed; rejects with the error the
 * terminal client reports (its code and message: "Unable to connect: " +
 * error.message). Options:
 *   connect, binding        the connector and binding provider (transport.js)
 *   name, room, password    the password is forgotten once stretched
 *   server                  the key of the pins, e.g. 'host:port' or the origin
 *   listener                an object with any of the Session's event methods
 *   identity                { publicKey, sign } (default: a new key)
 *   vouch                   a vouch for identity's key by another device of the name
 *                           (identity.makeVouch, 104 bytes), presented at every login
 *   pins                    a pin store (pins.js; default: MemoryPins)
 *   transcript              a Transcript (default: a new one, in memory)
 *   storedTranscript        an async function giving the transcript state kept for this
 *                           name (what Transcript.state() returned), read again at each
 *                           new connection: another tab of the profile may have carried
 *                           the chain on meanwhile (Transcript.catchUp)
 *   reconnect               a Reconnect policy, or null for none (default)
 *   clock, timeout, keepalive, onProgress (scrypt), derive, log
 */
export async function login(options) {
  const keyring = options.keyring ?? new Keyring(options.password, options.room,
    { derive: options.derive, onProgress: options.onProgress });
  const identity = options.identity ?? Identity.generate();
  const connector = new Connector({ ...options, keyring, identity });
  let first;
  try {
    first = await connector.login();
  } catch (error) {
    keyring.forget();
    throw error;
  }
  return Session.start(first, { ...options, identity, connector });
}

/** Opens and logs in connections for a session (connector.Connector). */
class Connector {
  constructor(options) {
    this.options = options;
    this.keyring = options.keyring;
    this.current = null;
  }

  /** A promise of { connection, welcome, relay }; relay.attach(session) takes over. */
  login() {
    const o = this.options;
    return new Promise((resolve, reject) => {
      const relay = new Relay(resolve, reject);
      const connection = new Connection({
        handler: relay, name: o.name, room: o.room, keyring: this.keyring, binding: o.binding,
        identity: o.identity, vouch: o.vouch ?? null, clock: o.clock ?? realClock, timeout: o.timeout ?? HANDSHAKE_TIMEOUT,
        keepalive: o.keepalive === undefined ? KEEPALIVE : o.keepalive, log: o.log ?? console.error,
      });
      relay.connection = connection;
      this.current = connection;
      connection.open(o.connect);
    });
  }
}

/** Hands a connection's reports to the login, then to the session. */
class Relay {
  constructor(resolve, reject) {
    this.resolve = resolve;
    this.reject = reject;
    this.session = null;
    this.attached = null;
  }

  /** The session takes over (null: nobody will; the connection is closing). */
  attach(session) {
    this.session = session;
    if (this.attached) this.attached();
  }

  loggedIn(connection, welcome) {
    // The frames after the welcome (history) wait until a session is attached.
    const attached = new Promise((resolve) => {
      this.attached = resolve;
    });
    this.resolve({ connection, welcome: welcome.fields, relay: this });
    return attached;
  }

  loginFailed(error) {
    this.reject(error);
  }

  message(sender, opened, message) {
    return this.session?.onMessage(this.connection, sender, opened, message.fields);
  }

  rejected(sender, error, message) {
    return this.session?.onRejected(this.connection, sender, error, message.fields);
  }

  event(message) {
    return this.session?.onEvent(this.connection, message);
  }

  closed(error) {
    return this.session?.onClosed(this.connection, error);
  }
}

/**
 * A member's presence in a room after a successful login; with a Reconnect
 * policy, across as many connections as it takes. Reports to its listener
 * (any of): messageReceived(m), memberJoined(member), memberLeft(member),
 * messageRejected(sender, reason), historyUnreadable(m), historyEnd(),
 * memberKeyChanged(name, oldKey, newKey), memberNewDevice(name, key, voucher),
 * vouchRefused(name, key, reason), transcriptAlarm(alarm),
 * messageUndelivered(count), messageRefused(reason), notice(text),
 * reconnecting(attempt, delay, reason), reconnected(), disconnected(reason),
 * stateChanged(state). A message m is { sender, text, time, history, signed,
 * trusted }; a member { name, addr, key, vouch } (vouch: bytes, maybe empty).
 */
export class Session {
  #conn;
  #relay;
  #listener;
  #clock;
  #connector;
  #policy;
  #pins;
  #server;
  #stored;
  #catchingUp = false;
  #inputs = [];
  #running = false;
  #outbox = [];
  #flushing = false;
  #flushAgain = false;
  #flushTimer = null;
  #ackWait = null;
  #wait = null;
  #login = null;
  #bucket = null;
  #members = new Map();
  #warned = new Set();
  #keys = new Map();
  #seen = new Map();
  #who = [];
  #reason = '';
  #attempt = 0;
  #rejoinedAt = -Infinity;
  #endedResolve;
  #log;

  constructor({ connection, welcome, relay }, options) {
    this.state = T.CONNECTED;
    this.identity = options.identity;
    this.transcript = options.transcript ?? new Transcript(connection.name, this.identity.publicKey);
    this.#listener = options.listener ?? {};
    this.#clock = options.clock ?? realClock;
    this.#connector = options.connector;
    this.#policy = options.reconnect ?? null;
    this.#pins = options.pins ?? new MemoryPins();
    this.#stored = options.storedTranscript ?? null;
    this.#server = options.server ?? '';
    this.#log = options.log ?? console.error;
    this.flapping = 0;
    this.unsent = 0;
    /** Resolves with the reason (null after leave()) when the session ends. */
    this.ended = new Promise((resolve) => {
      this.#endedResolve = resolve;
    });
    this.#conn = connection;
    this.#relay = relay;
  }

  /** The session for a first login: attached, pins checked. */
  static async start(first, options) {
    const session = new Session(first, options);
    await session.#attach(first.connection, first.welcome);
    first.relay.attach(session);
    return session;
  }

  async #attach(connection, welcome) {
    this.#conn = connection;
    const rate = welcome.rate;
    this.#bucket = rate
      ? new TokenBucket(rate * PACE, Math.max(1, (welcome.burst ?? 1) - SPARE), this.#clock.now())
      : null;
    this.name = connection.name;
    this.room = connection.room;
    this.address = welcome.addr;
    this.maxText = welcome.max_text ?? MAX_TEXT_BYTES;
    this.#members = new Map(welcome.members.filter((m) => m.name !== this.name).map(
      (m) => [m.name, member(m)]));
    this.transcript.newConnection();
    await this.#catchUp();
    await this.#checkKeys([...this.#members.values()].map((m) => [m.name, m.key, m.vouch]));
  }

  /**
   * Before anything is sent on a new connection, take up the chain another
   * client of the profile carried on under our name meanwhile (its kept
   * state is ahead of ours); nothing is sent while the store is read (the
   * rejoin flushes what waits). A store that cannot be read leaves ours.
   */
  async #catchUp() {
    if (!this.#stored) return;
    this.#catchingUp = true;
    let state;
    try {
      state = await this.#stored();
    } catch (e) {
      this.#log(`could not read the kept transcript: ${e?.message ?? e}`);
      return;
    } finally {
      this.#catchingUp = false;
    }
    this.transcript.catchUp(state);
  }

  // --- to the listener

  #tell(method, ...args) {
    const fn = this.#listener[method];
    if (typeof fn !== 'function') {
      if (method === 'transcriptAlarm') this.#tell('notice', args[0].text);
      else if (method === 'messageUndelivered') this.#tell('notice', `${args[0]} message(s) you sent were not delivered`);
      else if (method === 'messageRefused') this.#tell('notice', args[0]);
      return;
    }
    try {
      fn.apply(this.#listener, args);
    } catch (error) {
      this.#log(`twistchat: listener ${method} raised`, error);
    }
  }

  // --- the life cycle table

  #feed(input, ...args) {
    this.#inputs.push([input, args]);
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#inputs.length) {
        const [name, a] = this.#inputs.shift();
        const row = TABLE[this.state][name];
        if (!row) throw new Error(`no transition for ${name} in state ${this.state}`);
        const [to, ...outputs] = row;
        if (to !== null && to !== this.state) {
          this.state = to;
          this.#tell('stateChanged', to);
        }
        for (const output of outputs) this.#outputs[output].apply(this, a);
      }
    } finally {
      this.#running = false;
      this.#inputs = [];
    }
  }

  get #outputs() {
    return {
      sendThenClose: () => {
        if (this.#flushTimer === null) this.#flush();
      },
      endLost: (error) => this.#end(error ? describe(error) : 'the server closed the connection'),
      endLeft: (error) => this.#end(error ? describe(error) : null),
      endLeftNow: () => this.#end(null),
      countOutage: (error) => {
        this.#reason = error ? describe(error) : 'the server closed the connection';
        if (this.#clock.now() - this.#rejoinedAt < STABLE_AFTER) this.flapping += 1;
        else this.flapping = 0;
        this.#attempt = 0;
      },
      noteFailure: (error) => {
        this.#login = null;
        this.#reason = describe(error);
      },
      nextAttempt: () => {
        this.#attempt += 1;
        const limit = this.#policy.maxAttempts;
        if (limit !== null && this.flapping + this.#attempt > limit) {
          this.#inputs.push(['giveUp', []]);
          return;
        }
        const delay = this.#policy.delay(this.flapping + this.#attempt);
        this.#wait = this.#clock.later(delay, () => this.#feed('waitOver'));
        this.#tell('reconnecting', this.#attempt, delay, this.#reason);
      },
      giveUp: () => {
        const flapping = this.flapping ? '; the connection keeps dropping' : '';
        this.#end(`${this.#reason} (gave up after ${this.#policy.maxAttempts} attempts to ` +
          `reconnect${flapping})`);
      },
      cancelWait: () => {
        const cancel = this.#wait;
        this.#wait = null;
        if (cancel) cancel();
      },
      logIn: () => {
        this.#wait = null;
        const login = this.#login = this.#connector.login();
        login.then((result) => this.#feed('loggedIn', result), (error) => this.#feed(
          isFinal(error) ? 'loginRefused' : 'loginFailed', error));
      },
      cancelLogin: () => {
        this.#login = null;
        this.#connector.current?.close();
      },
      endRefused: (error) => {
        this.#login = null;
        this.#end(describe(error));
      },
      rejoin: (result) => {
        this.#login = null;
        this.#rejoin(result);
      },
      closeLateLogin: (result) => {
        result.relay.attach(null);
        result.connection.close();
      },
    };
  }

  async #rejoin({ connection, welcome, relay }) {
    this.#rejoinedAt = this.#clock.now();
    const before = this.#members;
    this.#relay = relay;
    await this.#attach(connection, welcome);
    relay.attach(this);
    this.#tell('reconnected');
    const after = this.#members;
    this.#members = new Map(before);
    for (const [name, member] of after) {
      if (!before.has(name)) {
        this.#members.set(name, member);
        this.#tell('memberJoined', member);
      }
    }
    for (const [name, member] of before) {
      if (!after.has(name)) {
        this.#members.delete(name);
        this.#tell('memberLeft', member);
      }
    }
    this.#flush();
  }

  #end(reason) {
    if (this.#outbox.length) {
      this.unsent = this.#outbox.length;
      const unsent = `${this.#outbox.length} queued message(s) were not sent`;
      reason = reason === null ? unsent : `${reason}; ${unsent}`;
      this.#outbox = [];
    }
    this.#connector.keyring.forget();
    this.#tell('disconnected', reason);
    this.#endedResolve(reason);
  }

  // --- identity keys

  /** Our identity public key. */
  get key() {
    return this.identity.publicKey;
  }

  /**
   * Compare each (name, key, vouch) with the pins (pinning on first sight),
   * as the terminal's session._check_keys: a key not pinned yet whose vouch
   * (docs/protocol.md 12.8) verifies under a key pinned for the name is
   * pinned as another device; any other new key is a change, reported once
   * per session. Whether each key is a pinned one.
   */
  async #checkKeys(triples) {
    const keys = triples.filter(([, key]) => key && key.length);
    if (!keys.length) return [];
    let seen;
    const vouchers = [];
    const refused = [];
    try {
      for (const [name, key, vouch] of keys) {
        // (No await without a vouch: the common case keeps its turns.)
        const [voucher, reason] = vouch && vouch.length
          ? await this.#checkVouch(name, key, vouch) : [null, null];
        vouchers.push(voucher);
        refused.push(reason);
      }
      seen = await this.#pins.seeAll(this.#server, this.room,
        keys.map(([name, key], i) => [name, key, vouchers[i]]));
    } catch (error) {
      this.#tell('notice', describe(error));
      return keys.map(() => false);
    }
    const result = [];
    for (let i = 0; i < keys.length; i++) {
      const [name, key, vouch] = keys[i];
      let how = seen[i];
      if (name === this.name && equalBytes(key, this.key)) how = PINNED;
      result.push(how !== CHANGED);
      const id = `${name}\0${toHex(key)}`;
      if (how === DEVICE) {
        this.#tell('memberNewDevice', name, key, vouchers[i]);
      } else if (how === CHANGED && !this.#warned.has(id)) {
        this.#warned.add(id);
        const pin = await this.#pins.get(this.#server, this.room, name);
        this.#tell('memberKeyChanged', name, pin ? pin.key : key, key);
        if (vouch && vouch.length) {
          this.#tell('vouchRefused', name, key,
            refused[i] ?? `it was made by a key you have not pinned for ${name}`);
        }
      }
    }
    return result;
  }

  /**
   * [the key that made a good vouch, or null; why a vouch was refused, or
   * null]: only a key not pinned yet, of a name that has a pin, has its vouch
   * checked (session._check_vouches).
   */
  async #checkVouch(name, key, vouch) {
    if (!vouch || !vouch.length) return [null, null];
    const pinned = keysOf(await this.#pins.get(this.#server, this.room, name));
    if (!pinned.length || pinned.some((k) => equalBytes(k, key))) return [null, null];
    try {
      return [verifyVouch(vouch, this.room, name, key, this.#clock.now()).voucher, null];
    } catch (error) {
      if (error instanceof BadSignature) return [null, error.message];
      throw error;
    }
  }

  async #theirKey(name) {
    const pin = await this.#pins.get(this.#server, this.room, name);
    if (pin) return pin.key;
    const member = this.#members.get(name);
    if (!member || !member.key) throw new RangeError(`no key is known for ${name}`);
    return member.key;
  }

  /**
   * The keys pinned for `name`, one per device (docs/protocol.md 12.8), the
   * first pinned first; without a pin, the key it announced. Rejects with
   * RangeError if no key is known for it.
   */
  async devices(name) {
    if (name === this.name) throw new RangeError(`no key is known for ${name}`);
    const pinned = keysOf(await this.#pins.get(this.#server, this.room, name));
    return pinned.length ? pinned : [await this.#theirKey(name)];
  }

  /** The key `name` is present with, if present and it announced one (else null). */
  inUse(name) {
    const member = this.#members.get(name);
    return member && member.key && member.key.length ? member.key : null;
  }

  /**
   * The safety number of us and `name` (60 digits in groups of 5), the same
   * on both sides. Safety numbers are per device: `key` is one of
   * devices(name); by default the pinned key name is present with, else the
   * first pinned. Rejects with RangeError if no key is known for name, or
   * `key` is not pinned for it.
   */
  async verify(name, key = null) {
    const devices = await this.devices(name);
    if (key === null) {
      const present = this.inUse(name);
      key = present && devices.some((k) => equalBytes(k, present)) ? present : await this.#theirKey(name);
    } else if (!devices.some((k) => equalBytes(k, key))) {
      throw new RangeError(`${toHex(key.slice(0, 4))} is not a device of ${name}`);
    }
    return safetyNumber(this.name, this.key, name, key);
  }

  /**
   * A vouch, by our identity key, that `key` also speaks for our name in this
   * room for `days` days (docs/protocol.md 12.8): give it to that device.
   * Rejects with RangeError (days out of range, our own key) or BadSignature
   * (not an Ed25519 public key).
   */
  async vouchFor(key, days = VOUCH_DAYS) {
    if (!Number.isInteger(days) || days < 1 || days > VOUCH_MAX_DAYS) {
      throw new RangeError(`a vouch lasts 1 to ${VOUCH_MAX_DAYS} days`);
    }
    const notAfter = BigInt(Math.floor(this.#clock.now())) + BigInt(days) * 86400n;
    return makeVouch(this.identity, this.room, this.name, key, notAfter);
  }

  /** The room's safety code (30 digits in groups of 5): the same for all who share key, members and keys. */
  safety() {
    const members = [[this.name, this.key]];
    for (const m of this.#members.values()) if (m.key && m.key.length) members.push([m.name, m.key]);
    return roomSafetyCode(this.room, this.#conn.commitment, members);
  }

  /** Trust name's new identity key from now on; whether a change waited. */
  async accept(name) {
    return (await this.#pins.accept(this.#server, this.room, name)) !== null;
  }

  /** Whether name's key differs from the pinned one, not yet accepted. */
  async changedKey(name) {
    const pin = await this.#pins.get(this.#server, this.room, name);
    return Boolean(pin && pin.changed);
  }

  /** The other members, as of the latest presence. */
  get members() {
    return [...this.#members.values()];
  }

  get connected() {
    return this.#conn.isMember;
  }

  get reconnecting() {
    return this.state === T.WAITING || this.state === T.LOGGING_IN;
  }

  /** Messages queued (for the rate, or while reconnecting), not yet sent. */
  get pending() {
    return this.#outbox.length;
  }

  // --- sending

  /**
   * Seal and send text (queued while reconnecting, or to keep within the
   * server's rate). Throws RangeError if longer than the server accepts,
   * ProtocolError if the session has ended or too many wait.
   */
  send(text) {
    if (utf8(text).length > this.maxText) throw new RangeError(`message longer than ${this.maxText} bytes`);
    if (this.state === T.LEAVING || this.state === T.ENDED) throw new ProtocolError('not connected to a room');
    if (this.reconnecting) {
      if (this.#outbox.length >= this.#policy.maxQueued) {
        throw new ProtocolError(
          `not connected, and ${this.#outbox.length} messages already wait to be sent`);
      }
      this.#outbox.push(text);
      return;
    }
    if (!this.connected) throw new ProtocolError('not connected to a room');
    this.#outbox.push(text);
    this.#flush();
  }

  async #flush() {
    this.#flushTimer = null;
    if (this.#catchingUp) return; // the rejoin flushes once caught up
    if (this.#flushing) {
      this.#flushAgain = true;
      return;
    }
    this.#flushing = true;
    this.#flushAgain = false;
    try {
      while (this.#outbox.length && this.connected) {
        if (this.#bucket && !this.#bucket.take(this.#clock.now())) {
          this.#flushTimer = this.#clock.later(1 / this.#bucket.rate, () => this.#flush());
          return;
        }
        const conn = this.#conn;
        const fields = this.transcript.nextFields(this.#outbox[0]);
        let sent;
        try {
          sent = await conn.sendSigned(fields);
        } catch (error) {
          if (error instanceof ProtocolError) break; // the connection went: kept for the next
          this.#log('twistchat: a message could not be sent', error);
          this.#outbox.shift();
          continue;
        }
        this.#outbox.shift();
        this.transcript.sent(fields, sent.sid, sent.n, sent.hash);
        this.#firstTime(this.name, sent.sid, sent.n);
      }
      if (this.state === T.LEAVING && this.connected) this.#closeWhenAcknowledged();
    } finally {
      this.#flushing = false;
    }
    if (this.#flushAgain && this.#flushTimer === null) this.#flush();
  }

  #closeWhenAcknowledged() {
    if (!this.transcript.inFlight.size) {
      this.#cancelAckWait();
      this.#conn.close();
    } else if (this.#ackWait === null) {
      const conn = this.#conn;
      this.#ackWait = this.#clock.later(ACK_WAIT, () => conn.close());
    }
  }

  #cancelAckWait() {
    const cancel = this.#ackWait;
    this.#ackWait = null;
    if (cancel) cancel();
  }

  /** Ask the server who is in the room: a promise of every member, us too. */
  who() {
    if (!this.connected) return Promise.reject(new ProtocolError('not connected to a room'));
    return new Promise((resolve, reject) => {
      this.#who.push({ resolve, reject });
      this.#conn.sendMessage('who');
    });
  }

  /** Leave: queued messages are sent, then the connection closes. Resolves with the reason. */
  leave() {
    if (this.state === T.ENDED) return Promise.resolve(null);
    this.#feed('leave');
    return this.ended;
  }

  // --- from the connection

  #firstTime(sender, sid, n) {
    const id = `${sender}\0${toHex(sid)}\0${n}`;
    if (this.#seen.has(id)) return false;
    this.#seen.set(id, true);
    if (this.#seen.size > REMEMBERED) this.#seen.delete(this.#seen.keys().next().value);
    return true;
  }

  /** @private (from the connection) */
  async onMessage(conn, sender, opened, f) {
    if (conn !== this.#conn) return;
    const history = Boolean(f.hist);
    const time = f.ts ?? null;
    if (!opened.signed) {
      if (!history) {
        this.#tell('messageRejected', sender, 'an unsigned message (without an identity key) was refused');
        return;
      }
      if (!this.#firstTime(sender, f.sid, f.n)) return;
      this.#tell('messageReceived', { sender, text: opened.text, time, history: true, signed: false, trusted: false });
      return;
    }
    const [pinned] = await this.#checkKeys([[sender, opened.key]]);
    const verdict = this.transcript.receive(sender, opened, history);
    for (const a of verdict.alarms) this.#tell('transcriptAlarm', a);
    const first = this.#firstTime(sender, f.sid, f.n);
    if (verdict.show || (verdict.overlap && first)) {
      this.#tell('messageReceived', {
        sender, text: opened.text, time, history, signed: true, trusted: pinned && verdict.trusted,
      });
    }
  }

  /** @private */
  onRejected(conn, sender, error, f) {
    if (conn !== this.#conn) return;
    if (f.hist && error instanceof Undecryptable) {
      if (this.#firstTime(sender, f.sid, f.n)) {
        this.#tell('historyUnreadable', { sender, text: '', time: f.ts ?? null, history: true, signed: false, trusted: false });
      }
    } else {
      this.#tell('messageRejected', sender, error.message);
    }
  }

  /** @private */
  async onEvent(conn, message) {
    if (conn !== this.#conn) return;
    const f = message.fields;
    switch (message.type) {
      case 'ack':
        this.transcript.acked(f.sid, f.n);
        if (this.state === T.LEAVING && !this.#outbox.length && this.connected) this.#closeWhenAcknowledged();
        break;
      case 'joined': {
        const joined = member(f);
        this.#members.set(joined.name, joined);
        this.#tell('memberJoined', joined);
        await this.#checkKeys([[joined.name, joined.key, joined.vouch]]);
        break;
      }
      case 'left': {
        const member = this.#members.get(f.name) ?? { name: f.name, addr: f.addr, key: new Uint8Array(0) };
        this.#members.delete(f.name);
        this.#tell('memberLeft', member);
        break;
      }
      case 'members': {
        const everyone = f.members.map(member);
        this.#members = new Map(everyone.filter((m) => m.name !== this.name).map((m) => [m.name, m]));
        await this.#checkKeys(everyone.filter((m) => m.name !== this.name).map((m) => [m.name, m.key, m.vouch]));
        const waiting = this.#who.shift();
        if (waiting) waiting.resolve(everyone);
        break;
      }
      case 'notice':
        if (f.code === 'history') this.#tell('historyEnd');
        else if (f.code === 'rate') this.#tell('messageRefused', f.text);
        else this.#tell('notice', f.text);
        break;
      default:
        break; // pong: the keepalive was answered
    }
  }

  /** @private */
  onClosed(conn, error) {
    if (conn !== this.#conn) return;
    if (this.#flushTimer) this.#flushTimer();
    this.#flushTimer = null;
    this.#cancelAckWait();
    const pending = this.#who;
    this.#who = [];
    for (const w of pending) w.reject(new ProtocolError('disconnected'));
    const undelivered = this.transcript.connectionLost();
    if (undelivered) this.#tell('messageUndelivered', undelivered);
    if (this.#policy !== null && (error === null || !isFinal(error))) this.#feed('lost', error);
    else this.#feed('ends', error);
  }
}

