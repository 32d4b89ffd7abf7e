// Pieces of the session code that need no server, on the shipped bundle, for
// tests/test_web_session.py: the error table (compared with Python's) and the
// web-hello adapter over a fake connector. Reads a JSON request on argv[2],
// prints JSON results.
import { readFileSync } from 'node:fs';

const tc = await import(new URL('../../twistchat/web/static/twistchat.js', import.meta.url));
const { bytes: B, errors, transport, wire } = tc;
const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const codes = [...errors.CODES.entries()].map(([code, cls]) => [
  code, cls.name, cls.final, cls.retryOnlyWhenReconnecting, cls.defaultMessage]);

// A fake connector that plays the given frames once the channel opens.
function fake(frames) {
  return (sink) => {
    const sent = [];
    queueMicrotask(() => {
      sink.opened();
      for (const f of frames) sink.frame(new TextEncoder().encode(f));
      sink.closed(null);
    });
    return { sent, send: (f) => sent.push(f), close() {} };
  };
}

async function run(frames) {
  const web = transport.webHello(fake(frames), request.origin);
  const seen = [];
  let t;
  await new Promise((resolve) => {
    t = web.connect({ opened() {}, frame: (f) => seen.push(wire.decode(f, wire.FROM_SERVER).type), closed: resolve });
  });
  let binding;
  try {
    binding = { hex: B.toHex(web.binding(t)) };
  } catch (error) {
    binding = { error: error.name, message: error.message };
  }
  return { seen, binding };
}

console.log(JSON.stringify({
  codes,
  withHello: await run([request.hello, request.params]),
  withoutHello: await run([request.error]),
}));
