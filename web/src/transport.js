// How the session meets the network: a connector opens one connection and
// returns its transport; the session never touches sockets itself, so the
// same code runs over a WebSocket in the page and over TLS in Node's tests.
//
//   connect(sink) -> transport
//     sink.opened()          the channel is up (WebSocket open, TLS done): hello goes out
//     sink.frame(bytes)      one frame body (a Uint8Array), in order
//     sink.closed(error)     the channel ended: null, a TwistchatError, or another Error
//   transport.send(bytes)    one frame body
//   transport.close()        orderly close
//   transport.abort()        drop at once (optional: close() is used instead)
//
// A binding provider, binding(transport) -> bytes (or a promise of them), gives
// the channel binding of that connection for the SPAKE2+ context: the TLS
// exporter and certificate hash in Node (web/test/node-transport.mjs), the
// web binding in the page (webHello below).

import { ConnectionClosed, FrameTooLong, ProtocolError } from './errors.js';
import { webBinding } from './spake2plus.js';
import * as wire from './wire.js';

// --- web-hello adapter ------------------------------------------------------------
// The WebSocket endpoint (issue 14, on its own branch) starts every connection
// with a server message web-hello {nonce: bytes(32), cert: bytes(32)}, and adds
// it to wire.js. Until that lands, the schema lives here. On merge: use
// wire.FROM_SERVER in place of WEB_HELLO_SCHEMA and delete it.
const WEB_HELLO = 'web-hello';
const WEB_HELLO_SCHEMA = {
  ...wire.FROM_SERVER,
  [WEB_HELLO]: [{ nonce: wire.binary(32), cert: wire.binary(32) }, {}],
};

/**
 * Wrap a connector whose server starts with web-hello: the first frame, if
 * it is web-hello, is taken here (any other goes on, e.g. an error); then
 * binding(transport) gives webBinding(origin, nonce, cert) for that
 * connection. Returns { connect, binding }.
 */
export function webHello(connect, origin) {
  const hellos = new WeakMap();
  function wrapped(sink) {
    let first = true;
    let transport = null;
    transport = connect({
      opened: () => sink.opened(),
      closed: (error) => sink.closed(error),
      frame(frame) {
        if (first) {
          first = false;
          let message = null;
          try {
            message = wire.decode(frame, WEB_HELLO_SCHEMA);
          } catch {
            // not ours: the session refuses it with the usual message
          }
          if (message && message.type === WEB_HELLO) {
            hellos.set(transport, message.fields);
            return;
          }
        }
        sink.frame(frame);
      },
    });
    return transport;
  }
  function binding(transport) {
    const hello = hellos.get(transport);
    if (!hello) throw new ProtocolError('the server did not start with web-hello');
    return webBinding(origin, hello.nonce, hello.cert);
  }
  return { connect: wrapped, binding };
}
// --- end of the web-hello adapter ----------------------------------------------------

/**
 * A connector for the page: one binary WebSocket message per frame, on
 * `url` (wss://HOST:PORT/ws) with subprotocol twistchat.3. Not exercised by
 * the Node tests (Node 20 has no WebSocket); the Chromium tests cover it.
 */
export function webSocketConnector(url, { protocol = 'twistchat.3', WebSocket = globalThis.WebSocket } = {}) {
  return (sink) => {
    const socket = new WebSocket(url, protocol);
    socket.binaryType = 'arraybuffer';
    let error = null;
    const drop = (why) => {
      if (error === null) error = why;
      socket.close();
    };
    socket.onopen = () => {
      if (socket.protocol !== protocol) drop(new ProtocolError(`the server did not agree to ${protocol}`));
      else sink.opened();
    };
    socket.onmessage = (event) => {
      if (error !== null) return;
      if (!(event.data instanceof ArrayBuffer)) {
        drop(new ProtocolError('the server sent a text WebSocket message'));
      } else if (event.data.byteLength > wire.MAX_FRAME_FROM_SERVER) {
        drop(new FrameTooLong(`the server sent a frame of ${event.data.byteLength} bytes`));
      } else {
        sink.frame(new Uint8Array(event.data));
      }
    };
    socket.onclose = (event) => {
      sink.closed(error ?? (event.wasClean ? null : new ConnectionClosed()));
    };
    return {
      send: (frame) => socket.send(frame),
      close: () => socket.close(1000),
      abort: () => socket.close(),
    };
  };
}
