// Runs the cross-implementation vectors through the built bundle.
//
//   node web/test/vectors.mjs VECTORS.json > RESULTS.json
//
// VECTORS.json is written by tests/test_web_crypto.py with the Python code;
// this script computes the same values with the JavaScript code, opens and
// verifies what Python sealed and signed, seals and signs its own for Python
// to open, and prints everything as JSON. The Python test compares.
import { readFileSync } from 'node:fs';
import { webcrypto } from 'node:crypto';

if (!globalThis.crypto) globalThis.crypto = webcrypto;

const bundle = new URL('../../twistchat/web/static/twistchat.js', import.meta.url);
const tc = await import(bundle);
const { bytes: B, kdf, spake2plus, seal, identity, signed, safety, wire, pins: P } = tc;
const hex = B.toHex;
const unhex = B.fromHex;

const vectors = JSON.parse(readFileSync(process.argv[2], 'utf8'));

function outcome(fn) {
  try {
    return { ok: fn() };
  } catch (error) {
    return { error: error.name, message: error.message };
  }
}

async function outcomeAsync(fn) {
  try {
    return { ok: await fn() };
  } catch (error) {
    return { error: error.name, message: error.message };
  }
}

// JSON-able view of decoded values, as the Python side writes its own.
// Fields of the `number` kind are floats in Python.
const FLOAT_FIELDS = new Set(['ts', 'rate']);

function plain(value, key) {
  if (FLOAT_FIELDS.has(key)) return { float: value };
  if (value instanceof Uint8Array) return { hex: hex(value) };
  if (typeof value === 'bigint') return { int: value.toString() };
  if (typeof value === 'number' && Number.isInteger(value)) return { int: value.toString() };
  if (Array.isArray(value)) return value.map((v) => plain(v));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v, k)]));
  }
  return value;
}

function signedView(m) {
  return m.signed
    ? {
      signed: true, key: hex(m.key), seq: m.seq.toString(), prev: hex(m.prev), seen: hex(m.seen),
      lost: m.lost.map(String), text: m.text, signature: hex(m.signature), hash: hex(m.hash),
    }
    : { signed: false, text: m.text };
}

const out = {};

// --- RFC 9383 -----------------------------------------------------------------
{
  const v = vectors.rfc9383;
  const prover = new spake2plus.Prover(
    B.utf8(v.context), B.utf8(v.idProver), B.utf8(v.idVerifier),
    BigInt('0x' + v.w0), BigInt('0x' + v.w1), { x: BigInt('0x' + v.x) });
  const keys = prover.derive(unhex(v.shareV));
  const done = prover.finish(unhex(v.shareV), unhex(v.confirmV));
  out.rfc9383 = {
    shareP: hex(prover.share()), Z: hex(keys.z), V: hex(keys.v), TT: hex(keys.tt),
    K_main: hex(keys.kMain), K_confirmP: hex(keys.kConfirmP), K_confirmV: hex(keys.kConfirmV),
    confirmP: hex(done.confirmP), K_shared: hex(done.kShared),
  };
}

// --- scrypt (RFC 7914) and the parameter floor ------------------------------------
out.rfc7914 = vectors.rfc7914.map((v) => hex(kdf.scrypt(
  unhex(v.passwordHex), unhex(v.saltHex), { n: v.N, r: v.r, p: v.p }, v.dkLen)));
out.checkParams = vectors.checkParams.map((p) => outcome(() => kdf.checkParams(p) ?? null));
out.deriveRefused = await outcomeAsync(
  () => kdf.deriveSecrets('x', new Uint8Array(16), { n: 2 ** 14, r: 8, p: 1 }));

// --- the twistchat login ------------------------------------------------------------
{
  const v = vectors.login;
  const salt = unhex(v.salt);
  const secrets = await kdf.deriveSecrets(v.password, salt, v.params);
  const binding = spake2plus.webBinding(v.origin, unhex(v.nonce), unhex(v.certSha256));
  const context = spake2plus.context(binding);
  const make = () => new spake2plus.Prover(context, B.utf8(v.name), B.utf8(v.room),
    secrets.w0, secrets.w1, { x: BigInt(v.x) });
  const prover = make();
  const done = prover.finish(unhex(v.shareV), unhex(v.confirmV));
  const contentKey = kdf.contentKey(secrets.contentSecret, v.room);
  const wrong = make();
  const badMac = unhex(v.confirmV);
  badMac[0] ^= 1;
  const random = [0, 1].map(() => new spake2plus.Prover(context, B.utf8(v.name), B.utf8(v.room),
    secrets.w0, secrets.w1));
  out.login = {
    w0: secrets.w0.toString(), w1: secrets.w1.toString(), contentSecret: hex(secrets.contentSecret),
    binding: hex(binding), context: hex(context), shareP: hex(prover.share()),
    confirmP: hex(done.confirmP), K_shared: hex(done.kShared), contentKey: hex(contentKey),
    wrongConfirmV: outcome(() => wrong.finish(unhex(v.shareV), badMac) && null),
    badShareV: v.badShareV.map((s) => outcome(() => make().finish(unhex(s), unhex(v.confirmV)) && null)),
    randomShares: random.map((p) => hex(p.share())),
    nfc: (await kdf.deriveSecrets(v.passwordNfd, salt, v.params)).w0.toString(),
  };
}

// --- sealing and opening -------------------------------------------------------------
{
  const v = vectors.seal;
  const contentKey = unhex(v.contentKey);
  const sid = unhex(v.sid);
  out.seal = { sessionKey: hex(seal.sessionKeyBytes(contentKey, sid)) };
  out.seal.pad = v.padCases.map((h) => hex(seal.pad(unhex(h))));
  out.seal.unpad = v.unpadCases.map((h) => outcome(() => hex(seal.unpad(unhex(h)))));
  out.seal.ad = v.adCases.map(([room, sender, n, version]) =>
    hex(seal.associatedData(room, sender, sid, BigInt(n), version)));

  // what Python sealed: open it
  const opener = new seal.Opener(contentKey, v.room);
  const opened = [];
  for (const m of v.sealed) {
    opened.push(await outcomeAsync(async () => signedView(
      await signed.openMessage(opener, m.sender, unhex(m.sid), BigInt(m.n), unhex(m.ct)))));
  }
  out.seal.opened = opened;
  out.seal.refused = [];
  for (const m of v.refused) {
    const fresh = new seal.Opener(contentKey, v.room);
    for (const first of m.before) {
      await signed.openMessage(fresh, first.sender, unhex(first.sid), BigInt(first.n), unhex(first.ct));
    }
    out.seal.refused.push(await outcomeAsync(async () => signedView(
      await signed.openMessage(fresh, m.sender, unhex(m.sid), BigInt(m.n), unhex(m.ct)))));
  }

  // the same inputs as Python: byte for byte the same ciphertexts
  const same = await seal.Sealer.create(contentKey, v.room, v.sender, { sid });
  const sameIdentity = new identity.Identity(unhex(v.seed));
  out.seal.same = [];
  for (const m of v.plan) {
    const sent = m.version === 1
      ? await same.seal(m.text)
      : await signed.sealSigned(same, sameIdentity, fieldsOf(m));
    out.seal.same.push({ n: sent.n.toString(), ct: hex(sent.ciphertext), hash: sent.hash ? hex(sent.hash) : null });
  }

  // fresh randomness and a key made here: for Python to open and verify
  const own = await seal.Sealer.create(contentKey, v.room, v.sender);
  const ownIdentity = identity.Identity.generate();
  out.seal.ownKey = hex(ownIdentity.publicKey);
  out.seal.own = [];
  for (const m of v.plan) {
    const sent = m.version === 1
      ? await own.seal(m.text)
      : await signed.sealSigned(own, ownIdentity, fieldsOf(m));
    out.seal.own.push({ sid: hex(sent.sid), n: sent.n.toString(), ct: hex(sent.ciphertext),
      hash: sent.hash ? hex(sent.hash) : null });
  }
}

function fieldsOf(m) {
  return { seq: BigInt(m.seq), prev: unhex(m.prev), seen: unhex(m.seen), text: m.text,
    lost: m.lost.map(BigInt) };
}

// --- envelopes, decoded directly ----------------------------------------------------------
out.envelopes = vectors.envelopes.map((e) => outcome(() => signedView({ signed: true,
  ...signed.decodeSigned(e.room, e.sender, unhex(e.sid), BigInt(e.n), unhex(e.data)) })));
out.encodeErrors = [];
for (const e of vectors.encodeErrors) {
  out.encodeErrors.push(await outcomeAsync(() => signed.encodeSigned(
    new identity.Identity(new Uint8Array(32)), 'room', 'alice', new Uint8Array(16), 1n,
    fieldsOf(e)).then(hex)));
}
out.messageHash = vectors.messageHash.map(([sid, n, data]) =>
  hex(signed.messageHash(unhex(sid), BigInt(n), unhex(data))));

// --- device vouches ------------------------------------------------------------------------
{
  const v = vectors.vouches;
  const voucher = new identity.Identity(unhex(v.seed));
  out.vouches = { make: [], check: [] };
  for (const [room, name, key, notAfter] of v.make) {
    out.vouches.make.push(await outcomeAsync(
      async () => hex(await identity.makeVouch(voucher, room, name, unhex(key), BigInt(notAfter)))));
  }
  out.vouches.check = v.check.map(([data, room, name, key, now]) => outcome(() => {
    const checked = identity.verifyVouch(unhex(data), room, name, unhex(key), now);
    return { voucher: hex(checked.voucher), notAfter: checked.notAfter.toString() };
  }));
  const fresh = identity.Identity.generate();
  const newKey = identity.Identity.generate().publicKey;
  const [room, name] = ['sala \u00e9', 'zo\u00eb'];
  out.vouches.own = {
    room, name, newKey: hex(newKey), voucher: hex(fresh.publicKey),
    data: hex(await identity.makeVouch(fresh, room, name, newKey, 1800000000n + 86400n)),
  };
}

// --- pins: keys, vouched devices, changes -------------------------------------------
{
  const pins = new P.MemoryPins();
  out.pinSteps = [];
  for (const [what, name, key, voucher] of vectors.pinSteps) {
    let outcome;
    if (what === 'see') {
      [outcome] = await pins.seeAll('s', 'r', [[name, unhex(key), voucher === null ? null : unhex(voucher)]]);
    } else {
      const now = await pins.accept('s', 'r', name);
      outcome = now === null ? null : hex(now);
    }
    const pin = await pins.get('s', 'r', name);
    out.pinSteps.push([outcome, pin === null ? null : {
      key: hex(pin.key), changed: pin.changed ? hex(pin.changed) : null,
      devices: pin.devices.map(([d, v]) => [hex(d), hex(v)]),
    }]);
  }
}

// --- safety numbers -------------------------------------------------------------------------
out.safetyNumbers = vectors.safetyNumbers.map(([a, ka, b, kb]) =>
  safety.safetyNumber(a, unhex(ka), b, unhex(kb)));
out.roomCommitments = vectors.roomCodes.map((r) => hex(safety.roomCommitment(unhex(r.contentKey), r.room)));
out.roomCodes = vectors.roomCodes.map((r) => outcome(() => safety.roomSafetyCode(
  r.room, safety.roomCommitment(unhex(r.contentKey), r.room),
  r.members.map(([name, key]) => [name, unhex(key)]))));

// --- the wire codec ---------------------------------------------------------------------------
out.schemas = { FROM_CLIENT: wire.describe(wire.FROM_CLIENT), FROM_SERVER: wire.describe(wire.FROM_SERVER) };
out.decoded = vectors.frames.map(([schema, frameHex]) =>
  outcome(() => plain(wire.decode(unhex(frameHex), wire[schema]))));
function jsValue(v) {
  if (v && v.hex !== undefined) return unhex(v.hex);
  if (v && v.int !== undefined) return BigInt(v.int);
  return v;
}
out.encoded = vectors.encode.map(([kind, fields]) =>
  hex(wire.encode(kind, Object.fromEntries(fields.map(([k, v]) => [k, jsValue(v)])))));

process.stdout.write(JSON.stringify(out));
