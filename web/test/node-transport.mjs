// The terminal client's transport, for the session tests in Node: TLS 1.3 to
// a real twistd over node:tls, frames with a 4-byte big-endian length prefix
// (docs/protocol.md section 2), and the terminal client's channel binding:
// the TLS exporter (label EXPORTER-twistchat-spake2plus, 32 bytes, no
// context) then the SHA-256 of the server certificate's DER (section 5.3).
import { createHash } from 'node:crypto';
import tls from 'node:tls';

const EXPORTER_LABEL = 'EXPORTER-twistchat-spake2plus';
const EXPORTER_LENGTH = 32;

/**
 * A connector (web/src/transport.js) to host:port. The certificate is not
 * verified here: as for the terminal client's first use, the SPAKE2+
 * binding is what makes a relay fail.
 */
export function tlsConnector(host, port, { errors, maxFrame }) {
  return (sink) => {
    const socket = tls.connect({ host, port, minVersion: 'TLSv1.3', rejectUnauthorized: false });
    let buffer = Buffer.alloc(0);
    let failure = null;
    socket.on('secureConnect', () => sink.opened());
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 4 && failure === null) {
        const length = buffer.readUInt32BE(0);
        if (length > maxFrame) {
          failure = new errors.FrameTooLong(`the server sent a frame of ${length} bytes`);
          socket.destroy();
          return;
        }
        if (buffer.length < 4 + length) return;
        const frame = new Uint8Array(buffer.subarray(4, 4 + length));
        buffer = buffer.subarray(4 + length);
        sink.frame(frame);
      }
    });
    socket.on('error', (error) => {
      if (failure === null) failure = error;
    });
    socket.on('close', () => sink.closed(failure));
    return {
      socket,
      send(frame) {
        const header = Buffer.alloc(4);
        header.writeUInt32BE(frame.length, 0);
        socket.write(Buffer.concat([header, frame]));
      },
      close: () => socket.end(),
      abort: () => socket.destroy(),
    };
  };
}

/** The terminal client's binding provider: exporter || SHA-256(certificate DER). */
export function tlsBinding(transport) {
  const exporter = transport.socket.exportKeyingMaterial(EXPORTER_LENGTH, EXPORTER_LABEL);
  const der = transport.socket.getPeerCertificate().raw;
  return new Uint8Array(Buffer.concat([exporter, createHash('sha256').update(der).digest()]));
}
