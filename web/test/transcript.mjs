// Runs the transcript cases of tests/test_web_transcript.py on the built bundle.
//
//   node web/test/transcript.mjs REQUEST.json > RESULTS.json
//
// For each case: every operation's result on a fresh Transcript (`full`), and,
// from each checkpoint, the results of the rest of the case after loading
// Python's saved state (`fromPython`) and after loading our own (`fromOwn`).
// Received messages with an envelope are decoded and verified here and must
// give the fields Python decoded. Prints JSON; the Python test compares.
import { readFileSync } from 'node:fs';

const tc = await import(new URL('../../twistchat/web/static/twistchat.js', import.meta.url));
const { bytes: B, identity, signed, transcript } = tc;
const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const me = new identity.Identity(B.fromHex(request.seed));

const decoded = new WeakMap(); // op -> its verified envelope (verified once)

function message(op) {
  if (!decoded.has(op)) decoded.set(op, decode(op));
  return decoded.get(op);
}

function decode(op) {
  const m = op.m;
  const fields = {
    key: B.fromHex(m.key), seq: BigInt(m.seq), prev: B.fromHex(m.prev), seen: B.fromHex(m.seen),
    lost: m.lost.map(BigInt), hash: B.fromHex(m.hash),
  };
  if (!op.env) return fields;
  const e = op.env;
  const d = signed.decodeSigned(request.room, op.sender, B.fromHex(e.sid), e.n, B.fromHex(e.data));
  const view = {
    key: B.toHex(d.key), seq: d.seq.toString(), prev: B.toHex(d.prev),
    seen: B.toHex(d.seen), lost: d.lost.map(String), hash: B.toHex(d.hash),
  };
  if (JSON.stringify(view) !== JSON.stringify(m)) {
    throw new Error(`decoded ${JSON.stringify(view)}, Python decoded ${JSON.stringify(m)}`);
  }
  return d;
}

// As tests/test_web_transcript.py writes an alarm's count.
function count(c) {
  return Number.isSafeInteger(c) ? String(c) : c.toPrecision(17);
}

async function run(ops, t) {
  const out = [];
  for (const op of ops) {
    switch (op.op) {
      case 'connect':
        t.newConnection();
        out.push(null);
        break;
      case 'recv': {
        const v = t.receive(op.sender, message(op), op.history);
        out.push({
          show: v.show, trusted: v.trusted, overlap: v.overlap,
          alarms: v.alarms.map((a) => [a.kind, a.sender, count(a.count), a.text]),
        });
        break;
      }
      case 'send': {
        const fields = t.nextFields(op.text);
        const sid = B.fromHex(op.sid);
        const data = await signed.encodeSigned(me, request.room, request.me, sid, op.n, fields);
        const hash = signed.messageHash(sid, op.n, data);
        t.sent(fields, sid, op.n, hash);
        out.push({
          seq: fields.seq.toString(), prev: B.toHex(fields.prev), seen: B.toHex(fields.seen),
          lost: fields.lost.map(String), hash: B.toHex(hash),
        });
        break;
      }
      case 'ack':
        out.push(t.acked(B.fromHex(op.sid), op.n));
        break;
      case 'drop':
        out.push(t.connectionLost());
        break;
      case 'catchup':
        out.push(t.catchUp(op.state));
        break;
      case 'state':
        // As it would be kept: through JSON.
        out.push(JSON.parse(JSON.stringify(t.state())));
        break;
      default:
        throw new Error(`unknown operation ${op.op}`);
    }
  }
  return out;
}

const results = [];
for (const c of request.cases) {
  const full = await run(c.ops, new transcript.Transcript(request.me, me.publicKey));
  const fromPython = {};
  const fromOwn = {};
  for (const [index, state] of Object.entries(c.states)) {
    const rest = c.ops.slice(Number(index) + 1);
    fromPython[index] = await run(rest, new transcript.Transcript(request.me, me.publicKey, state));
    fromOwn[index] = await run(rest, new transcript.Transcript(request.me, me.publicKey, full[Number(index)]));
  }
  results.push({ full, fromPython, fromOwn });
}
console.log(JSON.stringify(results));
