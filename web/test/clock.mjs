// The session's time-dependent logic on a fake clock, for tests/test_web_clock.py:
// reconnect backoff (delays, cap, jitter, flapping, reset after a stable
// connection, giving up), keepalive, the login deadline, the pacing to the
// welcome's rate and the wait for acknowledgements when leaving. The server
// is a fake in memory that speaks real frames (wire.js) and the verifier's
// side of SPAKE2+ (built here from spake2plus.js's pieces); scrypt is
// replaced by fixed keys. Reads a JSON request on argv[2], prints JSON.
import { readFileSync } from 'node:fs';
import { webcrypto } from 'node:crypto';

if (!globalThis.crypto) globalThis.crypto = webcrypto;

const tc = await import(new URL('../../twistchat/web/static/twistchat.js', import.meta.url));
const { bytes: B, identity, session: S, spake2plus: P, wire } = tc;
const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const NAME = 'alice';
const ROOM = 'main';
const BINDING = new Uint8Array(64).fill(1);
const W0 = 0x1234567n;
const W1 = 0x89abcdefn;

// --- a fake clock -----------------------------------------------------------------

// Counts what the fake server, the fake clock and the listeners see.
let activity = 0;
// WebCrypto calls started and not finished: their work runs on other threads,
// so a loaded machine can take any time over them. settle() waits for them
// instead of guessing how long they take.
let inFlight = 0;
{
  const subtle = globalThis.crypto.subtle;
  for (const name of ['encrypt', 'decrypt', 'sign', 'verify', 'digest', 'importKey',
    'exportKey', 'generateKey', 'deriveBits', 'deriveKey']) {
    const call = subtle[name].bind(subtle);
    subtle[name] = (...args) => {
      inFlight += 1;
      activity += 1;
      return call(...args).finally(() => {
        inFlight -= 1;
        activity += 1;
      });
    };
  }
}

/**
 * Lets promises, and WebCrypto's work on other threads, run to their end:
 * until no WebCrypto call is in flight and nothing new has happened for a
 * while (bounded: 20 s of real time).
 */
async function settle() {
  let quiet = 0;
  const end = Date.now() + 20000;
  while ((quiet < 8 || inFlight > 0) && Date.now() < end) {
    const before = activity;
    await new Promise((resolve) => setTimeout(resolve, 1));
    for (let j = 0; j < 10; j++) await new Promise((resolve) => setImmediate(resolve));
    quiet = activity === before && inFlight === 0 ? quiet + 1 : 0;
  }
  if (inFlight > 0) throw new Error('WebCrypto calls never finished');
}

/** Settle until test() holds (bounded). */
async function until(test, what) {
  for (let i = 0; i < 500; i++) {
    if (test()) return;
    await settle();
  }
  throw new Error(`never happened: ${what}`);
}

class FakeClock {
  constructor() {
    this.t = 0;
    this.timers = [];
    this.made = 0;
  }

  now() {
    return this.t;
  }

  later(seconds, fn) {
    activity += 1;
    const timer = { at: this.t + seconds, fn, order: this.made++, live: true };
    this.timers.push(timer);
    return () => {
      timer.live = false;
    };
  }

  /** Run every timer due within `seconds`, in order, each at its time. */
  async advance(seconds) {
    const end = this.t + seconds;
    for (let i = 0; ; i++) {
      if (i > 10000) throw new Error('timers never stop');
      this.timers = this.timers.filter((x) => x.live);
      const due = this.timers.filter((x) => x.at <= end)
        .sort((a, b) => a.at - b.at || a.order - b.order)[0];
      if (!due) break;
      due.live = false;
      this.t = due.at;
      due.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }

  get pending() {
    return this.timers.filter((x) => x.live).length;
  }
}

const round = (x) => Math.round(x * 1e6) / 1e6;

// --- a fake server ----------------------------------------------------------------

/** A server frame (wire.encode writes only what a client sends). */
function frame(type, fields) {
  const plain = (v) => {
    if (v instanceof Uint8Array) return B.toBase64(v);
    if (typeof v === 'bigint') return Number(v);
    if (Array.isArray(v)) return v.map(plain);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
    return v;
  };
  return B.utf8(JSON.stringify({ type, ...plain(fields) }));
}

/**
 * Answers every login per `mode`: 'ok', 'busy' (an error frame after hello),
 * 'silent' (never answers hello), 'stall' (answers hello, never the share). Records what clients send, with times.
 */
class FakeServer {
  constructor(clock, { rate, burst, acks = true, pongs = true } = {}) {
    Object.assign(this, { clock, rate, burst, acks, pongs });
    this.mode = 'ok';
    this.log = [];
    this.current = null;
    this.logins = 0;
    this.connect = (sink) => this.#accept(sink);
  }

  #accept(sink) {
    this.logins += 1;
    const conn = { sink, open: true, seq: 0, confirmP: null };
    const send = (kind, fields = {}) => {
      if (conn.open) queueMicrotask(() => conn.open && sink.frame(frame(kind, fields)));
    };
    conn.send = send;
    conn.close = (error = null) => {
      if (!conn.open) return;
      conn.open = false;
      queueMicrotask(() => sink.closed(error));
    };
    this.current = conn;
    const transport = {
      send: (frame) => this.#received(conn, wire.decode(frame, wire.FROM_CLIENT)),
      close: () => {
        this.log.push(['closed', round(this.clock.now())]);
        conn.close();
      },
      abort: () => {
        this.log.push(['aborted', round(this.clock.now())]);
        conn.open = false;
      },
    };
    queueMicrotask(() => sink.opened());
    return transport;
  }

  #received(conn, message) {
    activity += 1;
    const f = message.fields;
    const now = round(this.clock.now());
    switch (message.type) {
      case 'hello':
        if (this.mode === 'busy') conn.send('error', { code: 'busy', text: 'the server is busy: try again later' });
        else if (this.mode !== 'silent') conn.send('params', { salt: new Uint8Array(16), n: 2 ** 15, r: 8, p: 1 });
        break;
      case 'share': {
        if (this.mode === 'stall') break;
        const y = P.randomScalar();
        const Y = P.encodePoint(P.G.multiply(y).add(P.N.multiply(W0)));
        const t = P.decodePoint(f.X).add(P.M.multiply(W0).negate());
        const z = P.encodePoint(t.multiply(y));
        const v = P.encodePoint(P.G.multiply(W1).multiply(y));
        const tt = P.transcript(P.context(BINDING), B.utf8(NAME), B.utf8(ROOM), f.X, Y, z, v, W0);
        const [confirmP, confirmV] = P.confirmationMacs(P.deriveKeys(tt), f.X, Y);
        conn.confirmP = confirmP;
        conn.send('verify', { Y, mac: confirmV });
        break;
      }
      case 'confirm': {
        if (!B.equalBytes(f.mac, conn.confirmP)) throw new Error('the client did not confirm');
        const welcome = { name: NAME, room: ROOM, addr: '127.0.0.1:1000', members: [] };
        if (this.rate) Object.assign(welcome, { rate: this.rate, burst: this.burst });
        conn.send('welcome', welcome);
        break;
      }
      case 'send':
        this.log.push(['send', now]);
        conn.seq += 1;
        if (this.acks) conn.send('ack', { sid: f.sid, n: f.n, seq: conn.seq });
        break;
      case 'ping':
        this.log.push(['ping', now]);
        if (this.pongs) conn.send('pong', f);
        break;
      default:
        this.log.push([message.type, now]);
    }
  }

  /** The current connection ends: with an error frame (code, text), or closed. */
  drop(code = null, text = '') {
    const conn = this.current;
    if (code) conn.send('error', { code, text });
    queueMicrotask(() => conn.close());
  }
}

function recorder(clock) {
  const events = [];
  const at = () => {
    activity += 1;
    return round(clock.now());
  };
  return {
    events,
    listener: {
      reconnecting: (attempt, delay, reason) => events.push(['reconnecting', at(), attempt, round(delay), reason]),
      reconnected: () => events.push(['reconnected', at()]),
      disconnected: (reason) => events.push(['disconnected', at(), reason]),
      messageUndelivered: (count) => events.push(['undelivered', at(), count]),
    },
  };
}

async function start(clock, server, {
  listener, reconnect = null, keepalive = null, timeout = 30, storedTranscript,
} = {}) {
  const login = S.login({
    connect: server.connect, binding: () => BINDING, name: NAME, room: ROOM, password: 'unused',
    derive: async () => ({ w0: W0, w1: W1, contentSecret: new Uint8Array(32).fill(3) }),
    identity: new identity.Identity(new Uint8Array(32).fill(9)), clock, listener, reconnect,
    keepalive, timeout, storedTranscript, log: () => {},
  });
  await settle();
  return login;
}

function jitters(values) {
  let i = 0;
  return () => values[i++ % values.length];
}

// --- the scenarios ------------------------------------------------------------------

const out = {};

// The delays: the table Python computes, and the jitter's bounds.
out.delays = request.delays.map(([options, attempt]) =>
  round(new S.Reconnect({ ...options, jitter: () => 0 }).delay(attempt)));
{
  const policy = new S.Reconnect();
  let ok = true;
  for (let attempt = 1; attempt <= 2000; attempt++) {
    const base = Math.min(2 ** Math.min(attempt - 1, 100), 60);
    const delay = policy.delay(1 + (attempt % 12));
    const expected = Math.min(2 ** (attempt % 12), 60);
    if (!(delay >= expected && delay < expected + 1) || base > 60) ok = false;
  }
  out.jitterWithinASecond = ok;
}

// Reconnecting: a drop, five busy attempts, a rejoin that drops at once
// (flapping), one that lasts, then a server busy for good.
{
  const clock = new FakeClock();
  const server = new FakeServer(clock);
  const { events, listener } = recorder(clock);
  const r = request.reconnect;
  const session = await (await start(clock, server, {
    listener, reconnect: new S.Reconnect({ ...r.policy, jitter: jitters(r.jitter) }) }));
  await clock.advance(100);
  server.mode = 'busy';
  server.drop('shutdown', 'the server is shutting down');
  await settle();
  for (let i = 0; i < 60 && !events.some((e) => e[2] === 5); i++) await clock.advance(1);
  server.mode = 'ok';
  await clock.advance(60);
  server.drop();
  await settle();
  await clock.advance(r.flapAfter);
  server.drop();
  await settle();
  await clock.advance(60);
  await clock.advance(50);
  server.drop();
  await settle();
  await clock.advance(60);
  server.mode = 'busy';
  server.drop();
  await settle();
  await clock.advance(600);
  out.reconnect = { events, state: session.state, logins: server.logins, timers: clock.pending };
}

// Keepalive: pings after 60 s of silence while answered, then a server that
// falls silent: given up on 20 s after the unanswered ping.
{
  const clock = new FakeClock();
  const server = new FakeServer(clock);
  const { events, listener } = recorder(clock);
  await start(clock, server, { listener, keepalive: [60, 20] });
  await clock.advance(150);
  server.pongs = false;
  await clock.advance(100);
  out.keepalive = { events, log: server.log, timers: clock.pending };
}

// The login deadline: a server that never gets past hello, and one that
// answers hello and then nothing (progress does not extend the deadline).
out.deadline = [];
for (const mode of ['silent', 'params']) {
  const clock = new FakeClock();
  const server = new FakeServer(clock);
  server.mode = mode === 'silent' ? 'silent' : 'stall';
  const login = start(clock, server, { timeout: 7 });
  let outcome = null;
  login.then(() => { outcome = ['welcomed']; }, (e) => { outcome = [round(clock.now()), e.name, e.code, e.message]; });
  await settle();
  await clock.advance(6.9);
  const early = outcome;
  await clock.advance(0.1);
  out.deadline.push({ early, outcome, log: server.log, timers: clock.pending });
}

// Pacing to the welcome's rate: messages typed at once go out at the pace.
{
  const clock = new FakeClock();
  const server = new FakeServer(clock, { rate: request.rate.rate, burst: request.rate.burst });
  const session = await (await start(clock, server, {}));
  await clock.advance(1);
  for (let i = 0; i < request.rate.messages; i++) session.send(`m${i}`);
  await until(() => clock.pending, 'the flush waits for the bucket');
  await clock.advance(20);
  out.rate = server.log.filter((e) => e[0] === 'send').map((e) => e[1]);
}

// Leaving waits for acknowledgements: up to ACK_WAIT, or until the last one.
out.leave = [];
for (const acks of [false, true]) {
  const clock = new FakeClock();
  const server = new FakeServer(clock, { acks });
  const { events, listener } = recorder(clock);
  const session = await (await start(clock, server, { listener }));
  await clock.advance(1);
  session.send('one');
  session.send('two');
  await until(() => server.log.length === 2, 'both sent');
  await clock.advance(1);
  session.leave();
  await settle();
  await clock.advance(10);
  out.leave.push({ events, log: server.log });
}

// Catching up at a rejoin: while the session was away, another tab of the
// profile carried its chain on to 7 and kept that. The rejoin reads the kept
// state before sending; a message typed while the read is under way waits
// for it, and goes out as number 8.
{
  const clock = new FakeClock();
  const server = new FakeServer(clock);
  const { events, listener } = recorder(clock);
  let kept = null;
  const reads = [];
  const storedTranscript = () => new Promise((resolve) => reads.push(() => resolve(kept)));
  const login = start(clock, server, {
    listener, reconnect: new S.Reconnect({ jitter: () => 0 }), storedTranscript });
  await until(() => reads.length === 1, 'the first read');
  reads[0]();
  const session = await login;
  await clock.advance(1);
  session.send('one');
  await until(() => server.log.filter((e) => e[0] === 'send').length === 1, 'one sent');
  const before = session.transcript.seq.toString();
  kept = JSON.parse(JSON.stringify(session.transcript.state()));
  Object.assign(kept.out, { seq: 7, last: '07'.repeat(32), seen: '07'.repeat(32), lost: [], flight: [] });
  server.drop();
  await settle();
  await clock.advance(1);
  await until(() => reads.length === 2, 'the read at the rejoin');
  session.send('two'); // while the kept state is being read
  await settle();
  const sentWhileReading = server.log.filter((e) => e[0] === 'send').length - 1;
  reads[1]();
  await until(() => server.log.filter((e) => e[0] === 'send').length === 2, 'two sent');
  out.catchUp = {
    before, sentWhileReading, after: session.transcript.seq.toString(),
    reconnected: events.filter((e) => e[0] === 'reconnected').length,
  };
}

console.log(JSON.stringify(out));
