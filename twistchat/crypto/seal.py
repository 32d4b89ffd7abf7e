"""
Sealed messages: AES-256-GCM under the room's content key.

Every sender session (one client connection) picks a random 16-byte session id
C{sid} and derives its own subkey::

    subkey = HKDF-SHA256(content_key, salt=sid, info="twistchat/1 session key\\0", 32)

and numbers its messages n = 1, 2, 3...; the 12-byte GCM nonce is n big-endian. A
(key, nonce) pair therefore never repeats, as long as session ids do not collide
(2^-128 per pair of sessions) and a session never reuses a counter (L{Sealer} refuses
to go past 2^63 - 1).

The associated data binds protocol version, room, sender name, session id and counter
(L{associated_data}), so a message re-attributed to another sender, moved to another
room or renumbered fails authentication. Receivers (L{Opener}) also refuse replays and
reordering within a sender session.

Plaintexts are padded (UTF-8, then 0x80, then zero bytes up to a multiple of
L{PAD_BLOCK}) so that ciphertext lengths reveal the text length only to 32 bytes.

Note: every member holds the content key, so members can forge messages in each
other's names; the attribution check protects against the server and outsiders.

Versions of the sealed payload
==============================

The first 16 bytes of the associated data name the payload's version:

  - C{"twistchat/1 msg\\0"}: the padded UTF-8 text (L{Sealer.seal}, L{Opener.open});
  - C{"twistchat/2 msg\\0"}: a padded signed envelope
    (L{twistchat.crypto.signed}; L{Sealer.seal_payload}).

Everything else (subkey, nonce, padding, the rest of the associated data) is the same.
L{Opener.open_payload} tries version 2 first and then version 1, so a message sealed
before identity keys still opens, and is reported as version 1 (unsigned): a version 1
message can never be taken for a signed one, nor the reverse, since the tag covers
the version.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from Crypto.Cipher import AES

from twistchat.crypto.kdf import hkdf_sha256
from twistchat.errors import Replayed, Undecryptable

__all__ = [
    "KEY_BYTES",
    "MAX_CIPHERTEXT",
    "MAX_COUNTER",
    "MAX_SESSIONS",
    "MAX_TEXT_BYTES",
    "Opened",
    "Opener",
    "PAD_BLOCK",
    "SID_BYTES",
    "Sealer",
    "TAG_BYTES",
    "associated_data",
    "pad",
    "session_key",
    "unpad",
]

# The wire schema (twistchat.wire.messages) checks sizes against these constants.
KEY_BYTES = 32
#: Bytes of a sender session id.
SID_BYTES = 16
#: Bytes of the GCM tag appended to every ciphertext.
TAG_BYTES = 16
NONCE_BYTES = 12
#: Largest message counter; a session that reaches it must be replaced.
MAX_COUNTER = 2**63 - 1
#: Largest plaintext a member may seal in one message (UTF-8 bytes).
MAX_TEXT_BYTES = 16384
#: Plaintexts are padded to a multiple of this many bytes before sealing.
PAD_BLOCK = 32
#: Largest sealed payload: the padded text plus the GCM tag.
MAX_CIPHERTEXT = MAX_TEXT_BYTES + PAD_BLOCK + TAG_BYTES
#: Sender sessions an L{Opener} remembers (least recently used evicted first).
MAX_SESSIONS = 4096
#: Evicted sender sessions whose highest counter an L{Opener} still remembers
#: (8-byte digests), so that an old message cannot be replayed into a live
#: connection just because its session was evicted.
MAX_RETIRED = 65536

_AD_PREFIX = b"twistchat/1 msg\x00"
#: The associated data's prefix for each payload version.
_AD_PREFIXES = {1: _AD_PREFIX, 2: b"twistchat/2 msg\x00"}
_SESSION_INFO = b"twistchat/1 session key\x00"


def pad(data: bytes) -> bytes:
    """
    C{data}, then 0x80, then zero bytes up to a multiple of L{PAD_BLOCK}.
    """
    padded_len = (len(data) // PAD_BLOCK + 1) * PAD_BLOCK
    return data + b"\x80" + b"\x00" * (padded_len - len(data) - 1)


def unpad(padded: bytes) -> bytes:
    """
    Strictly undo L{pad}.

    @raise Undecryptable: the length is not a positive multiple of L{PAD_BLOCK}, or
        the last non-zero byte is not 0x80, or it is followed by a block or more of
        zeros.
    """
    if not padded or len(padded) % PAD_BLOCK:
        raise Undecryptable("malformed padding")
    end = len(padded.rstrip(b"\x00")) - 1
    if end < 0 or padded[end] != 0x80 or len(padded) - end > PAD_BLOCK:
        raise Undecryptable("malformed padding")
    return padded[:end]


def encode_field(name: str, value: str) -> bytes:
    """
    C{value} as UTF-8 after its length as 2 bytes big-endian: how room and
    member names enter associated data, signatures and safety numbers.

    @raise TypeError: C{value} is not a str.
    @raise ValueError: it is longer than 65535 bytes.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str")
    data = value.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"{name} is too long")
    return len(data).to_bytes(2, "big") + data


def associated_data(room: str, sender: str, sid: bytes, n: int, version: int = 1) -> bytes:
    """
    The GCM associated data of message C{n} of session C{sid} by C{sender} in
    C{room}: "twistchat/1 msg\\0" (for payload C{version} 2: "twistchat/2 msg\\0"),
    room and sender each as a 2-byte big-endian length and UTF-8 bytes, the 16-byte
    sid, and n as 8 bytes big-endian.

    @raise ValueError: an unknown version, a sid that is not 16 bytes, n outside
        [0, L{MAX_COUNTER}], or a name longer than 65535 bytes of UTF-8.
    """
    if version not in _AD_PREFIXES:
        raise ValueError(f"unknown payload version {version!r}")
    if not isinstance(sid, (bytes, bytearray)) or len(sid) != SID_BYTES:
        raise ValueError(f"sid must be {SID_BYTES} bytes")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_COUNTER:
        raise ValueError("n out of range")
    return (
        _AD_PREFIXES[version]
        + encode_field("room", room)
        + encode_field("sender", sender)
        + bytes(sid)
        + n.to_bytes(8, "big")
    )


def session_key(content_key: bytes, sid: bytes) -> bytes:
    """
    The AES-256-GCM subkey of sender session C{sid}.
    """
    return hkdf_sha256(content_key, _SESSION_INFO, KEY_BYTES, salt=bytes(sid))


def _nonce(n: int) -> bytes:
    return n.to_bytes(NONCE_BYTES, "big")


def _check_key(content_key: bytes) -> bytes:
    if not isinstance(content_key, (bytes, bytearray)) or len(content_key) != KEY_BYTES:
        raise ValueError(f"content key must be {KEY_BYTES} bytes")
    return bytes(content_key)


class Sealer:
    """
    Seals one sender's messages for one connection (one sender session).
    """

    def __init__(
        self, content_key: bytes, room: str, sender: str, *, sid: bytes | None = None
    ) -> None:
        """
        @param sid: the session id; 16 random bytes unless given (tests only: a
            given sid must never have been used with this key before).
        """
        key = _check_key(content_key)
        if sid is None:
            sid = secrets.token_bytes(SID_BYTES)
        if not isinstance(sid, (bytes, bytearray)) or len(sid) != SID_BYTES:
            raise ValueError(f"sid must be {SID_BYTES} bytes")
        self._sid = bytes(sid)
        # fail now, not at the first message, on a room or sender name that cannot
        # be encoded
        associated_data(room, sender, self._sid, 0)
        self._room = room
        self._sender = sender
        self._key = session_key(key, self._sid)
        self._next = 1

    def __repr__(self) -> str:
        return f"<Sealer room={self._room!r} sender={self._sender!r} next={self._next}>"

    @property
    def sid(self) -> bytes:
        """
        This session's id.
        """
        return self._sid

    def seal(self, text: str) -> tuple[bytes, int, bytes]:
        """
        Seal the next message.

        @return: (sid, n, ciphertext with the 16-byte tag appended).
        @raise ValueError: the text's UTF-8 encoding is longer than L{MAX_TEXT_BYTES} or
            it cannot be encoded (lone surrogates).
        @raise OverflowError: the session has used up its counters.
        """
        data = text.encode("utf-8")
        if len(data) > MAX_TEXT_BYTES:
            raise ValueError(f"text longer than {MAX_TEXT_BYTES} bytes")
        n = self._next
        if n > MAX_COUNTER:
            raise OverflowError("sender session exhausted; start a new one")
        self._next = n + 1
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=_nonce(n), mac_len=TAG_BYTES)
        cipher.update(associated_data(self._room, self._sender, self._sid, n))
        ciphertext, tag = cipher.encrypt_and_digest(pad(data))
        return self._sid, n, ciphertext + tag

    @property
    def room(self) -> str:
        """
        The room this session seals for.
        """
        return self._room

    @property
    def sender(self) -> str:
        """
        The sender name this session seals under.
        """
        return self._sender

    def seal_payload(self, build: Callable[[bytes, int], bytes]) -> tuple[bytes, int, bytes]:
        """
        Seal the next message as a version 2 payload: C{build(sid, n)} makes the
        payload for this session's next counter (a signed envelope, which must name
        that sid and n: L{twistchat.crypto.signed.seal_signed}), which is then padded
        and sealed under the version 2 associated data.

        The counter is used up only once C{build} has returned.

        @return: (sid, n, ciphertext with the 16-byte tag appended).
        @raise OverflowError: the session has used up its counters.
        @raise ValueError: C{build} returned something other than bytes.
        """
        n = self._next
        if n > MAX_COUNTER:
            raise OverflowError("sender session exhausted; start a new one")
        payload = build(self._sid, n)
        if not isinstance(payload, (bytes, bytearray)):
            raise ValueError("a payload must be bytes")
        if self._next != n:
            raise RuntimeError("Sealer used while building a payload")
        self._next = n + 1
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=_nonce(n), mac_len=TAG_BYTES)
        cipher.update(associated_data(self._room, self._sender, self._sid, n, 2))
        ciphertext, tag = cipher.encrypt_and_digest(pad(bytes(payload)))
        return self._sid, n, ciphertext + tag


class Opened(NamedTuple):
    """
    An opened message: its payload C{version} (1: unsigned text, 2: signed envelope)
    and the unpadded C{payload} (for version 1, valid UTF-8).
    """

    version: int
    payload: bytes


class _Session:
    __slots__ = ("key", "last")

    def __init__(self, key: bytes, last: int) -> None:
        self.key = key
        self.last = last


def _retired_id(ident: tuple[str, bytes]) -> bytes:
    sender, sid = ident
    return hashlib.blake2b(encode_field("sender", sender) + sid, digest_size=8).digest()


class Opener:
    """
    Opens the messages of every member of one room, and refuses replays.

    Per (sender, sid) it remembers the subkey and the highest counter accepted, for
    the L{MAX_SESSIONS} most recently used sessions; an evicted session's highest
    counter is kept (under an 8-byte digest of sender and sid) for the
    L{MAX_RETIRED} most recently evicted, so its old messages are still refused
    as replays if they come back. Only messages that authenticate create or
    update that state, so forged messages can neither evict genuine sessions nor
    advance their counters.
    """

    def __init__(self, content_key: bytes, room: str, *, max_sessions: int = MAX_SESSIONS,
                 max_retired: int = MAX_RETIRED) -> None:
        self._content_key = _check_key(content_key)
        encode_field("room", room)
        self._room = room
        self._max_sessions = max_sessions
        self._max_retired = max_retired
        self._sessions: OrderedDict[tuple[str, bytes], _Session] = OrderedDict()
        self._retired: OrderedDict[bytes, int] = OrderedDict()

    def __repr__(self) -> str:
        return f"<Opener room={self._room!r} sessions={len(self._sessions)}>"

    def open(self, sender: str, sid: bytes, n: int, ciphertext: bytes) -> str:
        """
        Authenticate and decrypt message C{n} of session C{sid} attributed to
        C{sender}.

        @return: the text.
        @raise Undecryptable: the message does not authenticate (altered, attributed
            to another sender, sealed for another room or under another key), or is
            malformed.
        @raise Replayed: it authenticates, but its counter is not above the highest
            already accepted from this sender session.
        """
        return self._open(sender, sid, n, ciphertext, (1,)).payload.decode("utf-8")

    @property
    def room(self) -> str:
        """
        The room whose messages this opener opens.
        """
        return self._room

    def open_payload(
        self,
        sender: str,
        sid: bytes,
        n: int,
        ciphertext: bytes,
        *,
        check: Callable[[Opened], object] | None = None,
    ) -> Opened:
        """
        Like L{open}, for both payload versions: try version 2 (a signed envelope,
        to be checked with L{twistchat.crypto.signed.decode_signed}), then version 1
        (text sealed before identity keys). Both share one replay state.

        @param check: called with the opened payload once it has authenticated and
            passed the replay check, before the replay state is updated; if it
            raises, the exception propagates and the message leaves no trace (so a
            message whose signature fails cannot advance a session's counter).
        @raise Undecryptable: the message authenticates under neither version, or is
            malformed (for version 1: the text is not UTF-8).
        @raise Replayed: as for L{open}.
        """
        return self._open(sender, sid, n, ciphertext, (2, 1), check)

    def _open(
        self,
        sender: str,
        sid: bytes,
        n: int,
        ciphertext: bytes,
        versions: tuple[int, ...],
        check: Callable[[Opened], object] | None = None,
    ) -> Opened:
        try:
            ads = [associated_data(self._room, sender, sid, n, v) for v in versions]
        except (TypeError, ValueError):
            raise Undecryptable() from None
        if not isinstance(ciphertext, (bytes, bytearray)):
            raise Undecryptable()
        body_len = len(ciphertext) - TAG_BYTES
        if body_len < PAD_BLOCK or body_len % PAD_BLOCK:
            raise Undecryptable()

        sid = bytes(sid)
        ident = (sender, sid)
        session = self._sessions.get(ident)
        key = session.key if session is not None else session_key(self._content_key, sid)
        body, tag = bytes(ciphertext[:body_len]), bytes(ciphertext[body_len:])
        # version is read after the loop: the one whose data opened the message
        for version, ad in zip(versions, ads):  # noqa: B007
            cipher = AES.new(key, AES.MODE_GCM, nonce=_nonce(n), mac_len=TAG_BYTES)
            cipher.update(ad)
            try:
                padded = cipher.decrypt_and_verify(body, tag)
            except ValueError:
                continue
            break
        else:
            raise Undecryptable()

        # authentic: now, and only now, consult and update the replay state
        if session is not None and n <= session.last:
            self._sessions.move_to_end(ident)
            raise Replayed()
        retired = _retired_id(ident) if session is None else b""
        if session is None and n <= self._retired.get(retired, 0):
            raise Replayed()
        opened = Opened(version, unpad(padded))
        if version == 1:
            try:
                opened.payload.decode("utf-8")
            except UnicodeDecodeError:
                raise Undecryptable() from None
        if check is not None:
            check(opened)
        if session is None:
            self._retired.pop(retired, None)
            self._sessions[ident] = _Session(key, n)
            while len(self._sessions) > self._max_sessions:
                evicted, old = self._sessions.popitem(last=False)
                self._retired[_retired_id(evicted)] = old.last
                while len(self._retired) > self._max_retired:
                    self._retired.popitem(last=False)
        else:
            session.last = n
            self._sessions.move_to_end(ident)
        return opened
