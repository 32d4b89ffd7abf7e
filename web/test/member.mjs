// A room member in Node, on the shipped bundle's session code, for
// tests/test_web_session.py: the terminal client's lines for what it
// shows, plus a DATA line (JSON) per message with exactly what the session
// handed over.
//
//   TWISTCHAT_PASSWORD=... node web/test/member.mjs HOST PORT NAME [--room ROOM] [--reconnect]
//
// Lines on stdin: text is sent; /verify NAME, /safety, /who, /quit.
import { webcrypto } from 'node:crypto';
import { createInterface } from 'node:readline';

import { tlsBinding, tlsConnector } from './node-transport.mjs';

if (!globalThis.crypto) globalThis.crypto = webcrypto;

const tc = await import(new URL('../../twistchat/web/static/twistchat.js', import.meta.url));
const { bytes, errors, session: S, wire } = tc;

const [host, port, name, ...rest] = process.argv.slice(2);
const room = rest.includes('--room') ? rest[rest.indexOf('--room') + 1] : 'main';
const say = (line) => process.stdout.write(`${line}\n`);

const showTime = (t) => new Date(t * 1000).toISOString().slice(11, 19);
const who = (m) => (m.trusted ? m.sender : `${m.sender} (NOT VERIFIED: key changed)`);
let inHistory = false;
let session = null;
const endHistory = () => {
  if (inHistory) {
    inHistory = false;
    say('--- live ---');
  }
};

const listener = {
  messageReceived(m) {
    say(`DATA ${JSON.stringify(m)}`);
    if (m.history) {
      if (!inHistory) {
        inHistory = true;
        say('--- history ---');
      }
      say(`${showTime(m.time)} [ ${who(m)}: ] ${m.signed ? '' : '(unsigned: sent before identity keys) '}${m.text}`);
      return;
    }
    endHistory();
    say(`[ ${who(m)}: ] ${m.text}`);
  },
  historyEnd: endHistory,
  historyUnreadable(m) {
    say(`${showTime(m.time)} [ ${m.sender}: ] (unreadable: sealed under an earlier room password)`);
  },
  memberJoined: (m) => say(`* ${m.name} (${m.addr}) entered the room`),
  memberLeft(m) {
    say(`* ${m.name} (${m.addr}) left the room`);
    if (session && !session.members.length) say('* The room is empty.');
  },
  messageRejected: (sender, reason) => say(`! A message from ${sender} was rejected: ${reason}`),
  memberKeyChanged: (n) => say(`!!! WARNING: ${n}'s safety number has changed.`),
  transcriptAlarm: (a) => say(`!!! ${a.text}`),
  notice: (text) => say(`! Server: ${text}`),
  reconnecting: (attempt, delay, reason) => say(
    `* Connection lost or attempt failed: ${reason}. Reconnecting in ${delay.toFixed(1)} s (attempt ${attempt})...`),
  reconnected: () => say(`* Reconnected: back in room '${session.room}'.`),
  stateChanged: (state) => say(`* state: ${state}`),
  disconnected(reason) {
    if (reason !== null) say(`Disconnected from chat server: ${reason}`);
  },
};

try {
  session = await S.login({
    connect: tlsConnector(host, Number(port), { errors, maxFrame: wire.MAX_FRAME_FROM_SERVER }),
    binding: tlsBinding,
    name, room, password: process.env.TWISTCHAT_PASSWORD, server: `${host}:${port}`, listener,
    reconnect: rest.includes('--reconnect') ? new S.Reconnect({ initialDelay: 0.2, maxDelay: 1 }) : null,
  });
} catch (error) {
  process.stderr.write(`Unable to connect: ${S.describe(error)}\n`);
  process.stderr.write(`code: ${error.code}\n`);
  process.exit(1);
}
say('connected — you can start sending messages');
say(`* Your identity key: ${bytes.toHex(session.key)}`);
const others = session.members;
say(others.length ? `* In the room: ${others.map((m) => `${m.name} (${m.addr})`).join(', ')}` : '* The room is empty.');

const lines = createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  const [word, arg] = line.split(' ');
  try {
    if (word === '/verify') say(`* Safety number with ${arg}: ${await session.verify(arg)}`);
    else if (word === '/safety') say(`* Room safety code: ${session.safety()}`);
    else if (word === '/who') say(`* Members: ${(await session.who()).map((m) => m.name).join(', ')}`);
    else if (word === '/quit') lines.close();
    else session.send(line);
  } catch (error) {
    say(`! ${error.message}`);
  }
});
lines.on('close', () => session.leave());
const reason = await session.ended;
process.exit(reason === null ? 0 : 1);
