"""
BASELINE (b): a thread-per-client relay that decrypts each message and
re-encrypts it for every recipient (plain sockets, C{ssl}, threads,
pycryptodome AES-GCM).

This is the design twistchat replaces: the server holds the key and does the
cryptography per recipient. A frame is C{n=DIGITS;} (the sender's counter in
clear, so the load can time it) followed by a 12-byte nonce, the AES-GCM
ciphertext and its 16-byte tag. Nothing here is meant for real use.

    python -m twistchat.bench.baselines.threaded_relay CERT_DIR [PORT]
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path

from Crypto.Cipher import AES
from Crypto.Random import get_random_bytes

from twistchat.server.tls import CERT_FILE, KEY_FILE, load_certificate

#: The shared key of this baseline (the server knows it: that is the point).
KEY = bytes(range(32))


def seal(plaintext: bytes) -> bytes:
    nonce = get_random_bytes(12)
    ciphertext, tag = AES.new(KEY, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(plaintext)
    return nonce + ciphertext + tag


def open_sealed(blob: bytes) -> bytes:
    cipher = AES.new(KEY, AES.MODE_GCM, nonce=blob[:12])
    return cipher.decrypt_and_verify(blob[12:-16], blob[-16:])


def recv_exactly(conn: ssl.SSLSocket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = conn.recv(size)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Relay:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: dict[ssl.SSLSocket, threading.Lock] = {}

    def serve(self, context: ssl.SSLContext, raw: socket.socket) -> None:
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self.lock:
            self.clients[conn] = threading.Lock()
        try:
            while True:
                size = int.from_bytes(recv_exactly(conn, 4), "big")
                frame = recv_exactly(conn, size)
                head, _, blob = frame.partition(b";")
                plaintext = open_sealed(blob)
                with self.lock:
                    others = [(c, lock) for c, lock in self.clients.items() if c is not conn]
                for other, lock in others:
                    body = head + b";" + seal(plaintext)
                    try:
                        with lock:
                            other.sendall(len(body).to_bytes(4, "big") + body)
                    except OSError:
                        pass
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            with self.lock:
                self.clients.pop(conn, None)
            conn.close()


def main() -> None:
    cert_dir = Path(sys.argv[1])
    load_certificate(cert_dir)  # creates the self-signed pair if it is missing
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_dir / CERT_FILE, cert_dir / KEY_FILE)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    listener.listen(1024)
    print(f"listening on port {listener.getsockname()[1]}", flush=True)
    relay = Relay()
    while True:
        raw, _ = listener.accept()
        # As twistchat does: no Nagle delay on small frames.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=relay.serve, args=(context, raw), daemon=True).start()


if __name__ == "__main__":
    main()
