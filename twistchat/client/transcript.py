"""
Transcript integrity: the sender's chain of its own messages and what a
receiver remembers of everyone else's, per (server, room, own name), kept in
the profile across reconnects and restarts (docs/protocol.md, "Transcript
integrity"; docs/security.md says what it detects and what it cannot).

No I/O but reading and writing the state file. L{Transcript} decides, for each
signed message opened, whether it is shown and what is reported:

  - B{replay}: a message already accepted (or older than the sender's newest),
    presented live again, or twice in one history replay;
  - B{fork}: a message with the sequence number of another one, or one that
    follows the newest but names another predecessor;
  - B{gap}: numbers skipped between two messages of one sender accepted on the
    same connection, not declared lost by the sender (withheld by the server);
  - B{lost}: numbers skipped that the sender declared never acknowledged;
  - B{offline}: the first message of a sender on a new connection skips
    numbers: missed while away, reported once per connection, not as a gap;
  - B{views}: a message that follows its sender's previous one on this
    connection names, as the last message its sender saw, one we never saw.

Absences that are not gaps: before the first message ever accepted from a
sender (joining late, the edge of the history replay, C{--history 0}), and
while this client was not connected (reported as B{offline}).

Each sender is tracked per (name, key): one key used under two names is two
chains. The sender side keeps its next number, the hash of its last message,
the messages not yet acknowledged (which become lost when a connection ends
without their C{ack}) and the lost numbers still to declare.

When the file is written: at once (and synced) for each message sent, before
it leaves the process, so a crash never reuses a number; for what is
received and for acknowledgements, only when the caller calls L{flush}
(the session does at most once a second, and when a connection ends):
docs/protocol.md, section 12.5, says what a crash loses. One file has one
writer at a time: the server admits one member per name in a room, and a
profile's file is per (server, room, name). Two clients of one profile can
still take turns under one name (one waits to reconnect while the other
joins), so each new connection first takes up the chain the file carries
when it is ahead (L{Transcript.catch_up}).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twistchat.crypto.keyfile import read_private_file, write_private_file
from twistchat.crypto.signed import MAX_LOST, NO_HASH, Fields, SignedMessage
from twistchat.errors import ConfigError

#: The directory beside known_hosts that holds one state file per (server, room, name).
TRANSCRIPTS_DIR = "transcripts"
#: Messages per sender whose hash and predecessor are kept (fork and replay checks).
RECENT = 64
#: Numbers per sender remembered as missing or declared lost.
MAX_MISSING = 1024
#: Senders remembered per room (the least recently heard are forgotten).
MAX_SENDERS = 256
#: Message hashes of the room remembered (for C{seen}: different views).
MAX_HASHES = 1024
#: Largest state file read (bytes).
MAX_STATE_BYTES = 8 << 20
_FORMAT = "twistchat-transcript"


@dataclass(frozen=True)
class Alarm:
    """
    Something wrong with the transcript: C{kind} (replay, fork, gap, lost,
    offline, views), the member it concerns, how many messages, and a line
    saying it.
    """

    kind: str
    sender: str
    count: int
    text: str


@dataclass
class Verdict:
    """
    What to do with one message: show it or not, and what to report.
    C{trusted} is false for a message shown as evidence of a fork. C{overlap}
    is true for a replayed history message that repeats what this profile
    already has: not shown by the chain's rules, but a new session may show
    it as history again (the caller knows what it already showed).
    """

    show: bool
    alarms: list[Alarm] = field(default_factory=list)
    trusted: bool = True
    overlap: bool = False


@dataclass
class _Chain:
    """
    What a receiver keeps of one sender (name, key).
    """

    high: int = 0
    last: bytes = NO_HASH
    recent: OrderedDict[int, tuple[bytes, bytes]] = field(default_factory=OrderedDict)
    missing: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    views_reported: bool = False
    #: The connection on which the last message was accepted (0: none yet
    #: in this process).
    epoch: int = 0

    def knows(self, digest: bytes) -> bool:
        return any(h == digest for h, _ in self.recent.values())

    def add(self, seq: int, digest: bytes, prev: bytes) -> None:
        self.recent[seq] = (digest, prev)
        self.recent.move_to_end(seq)
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        if seq > self.high:
            self.high = seq
            self.last = digest


def _bounded(numbers: set[int]) -> set[int]:
    return set(sorted(numbers)[-MAX_MISSING:])


def _read_state(path: Path) -> dict[str, Any] | None:
    """
    The state file at C{path}, parsed: None when there is none.

    @raise ConfigError: it cannot be read (see L{read_private_file}).
    @raise ValueError, UnicodeDecodeError: it is not a state file of this
        format and version.
    """
    try:
        data = read_private_file(path, MAX_STATE_BYTES, "transcript state file")
    except FileNotFoundError:
        return None
    state = json.loads(data.decode("utf-8"))
    if not isinstance(state, dict) or state.get("format") != _FORMAT \
            or state.get("version") != 1:
        raise ValueError("unknown format")
    return state


def _sender_side(out: dict[str, Any]) -> tuple[int, bytes, bytes, list[int]]:
    """
    The sender side a state file keeps (its C{out}): the last number used,
    the hash of the message that carried it, the hash of the last message
    accepted, and the numbers still to declare lost, with those that were in
    flight when the file was written (never acknowledged).

    @raise ValueError, KeyError, TypeError: C{out} is damaged.
    """
    if not isinstance(out["lost"], list) or not isinstance(out["flight"], list):
        raise TypeError("lost and flight are lists")
    lost = {int(x) for x in out["lost"]} | {int(seq) for _, _, seq in out["flight"]}
    return (int(out["seq"]), bytes.fromhex(out["last"]), bytes.fromhex(out["seen"]),
            sorted(lost)[-MAX_LOST:])


#: Sequence numbers above this are written to the state file as decimal
#: strings: a JSON reader in the page (JavaScript's) rounds larger numbers.
#: Only a sender that skips ahead can reach them; both readers take either.
MAX_EXACT = 2**53


def _number(value: int) -> int | str:
    return value if value <= MAX_EXACT else str(value)


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many.format(count=count)


class Transcript:
    """
    The chains of one member (C{me}, with identity key C{my_key}) in one room
    on one server, kept in the state file C{path} (None: in memory only).

    @raise ConfigError: the state file exists but cannot be read or is damaged.
    """

    def __init__(self, path: Path | None, me: str, my_key: bytes) -> None:
        self.path = path
        self.me = me
        self.my_key = my_key
        self.epoch = 0
        self._offline_reported = False
        self._shown: set[bytes] = set()
        # The sender side.
        self.seq = 0
        self.last = NO_HASH
        self.seen = NO_HASH
        self.lost: list[int] = []
        #: (sid, n) -> (seq, lost numbers it declares), sent and not yet acknowledged.
        self.in_flight: dict[tuple[bytes, int], tuple[int, tuple[int, ...]]] = {}
        # The receiver side.
        self._chains: OrderedDict[tuple[str, bytes], _Chain] = OrderedDict()
        self._hashes: deque[bytes] = deque(maxlen=MAX_HASHES)
        self._known: set[bytes] = set()
        #: Changed since the state file was last written (the receiver side and
        #: acknowledgements are written lazily: L{flush}).
        self.dirty = False
        if path is not None:
            self._load(path)

    # --- persistence ------------------------------------------------------------------

    @staticmethod
    def path_for(directory: Path, server: str, room: str, me: str) -> Path:
        """
        The state file of C{me} in C{room} on C{server}, under the profile
        directory C{directory}.
        """
        digest = hashlib.sha256(f"{server}\0{room}\0{me}".encode()).hexdigest()[:32]
        return directory / TRANSCRIPTS_DIR / f"{digest}.json"

    def _load(self, path: Path) -> None:
        try:
            state = _read_state(path)
            if state is None:
                return
            out = state["out"]
            if bytes.fromhex(out["key"]) != self.my_key:
                # Another identity key: its chain starts afresh (receivers see
                # a key change, not a fork).
                out = {"seq": 0, "last": NO_HASH.hex(), "seen": out["seen"], "lost": [],
                       "flight": []}
            self.seq, self.last, self.seen, self.lost = _sender_side(out)
            for c in state["chains"]:
                chain = _Chain(
                    high=int(c["high"]), last=bytes.fromhex(c["last"]),
                    missing={int(x) for x in c["missing"]}, lost={int(x) for x in c["lost"]},
                    views_reported=bool(c["views"]),
                )
                for seq, digest, prev in c["recent"]:
                    chain.recent[int(seq)] = (bytes.fromhex(digest), bytes.fromhex(prev))
                self._chains[c["name"], bytes.fromhex(c["key"])] = chain
            for digest in state["hashes"]:
                self._remember(bytes.fromhex(digest))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise ConfigError(f"transcript state file {path} is damaged") from None

    def save(self) -> None:
        """
        Write the state file (owner-only, replaced whole).

        @raise ConfigError: it cannot be written.
        """
        self.dirty = False
        if self.path is None:
            return
        state: dict[str, Any] = {
            "format": _FORMAT,
            "version": 1,
            "out": {
                "key": self.my_key.hex(), "seq": _number(self.seq), "last": self.last.hex(),
                "seen": self.seen.hex(),
                "lost": [_number(x) for x in self.lost],
                "flight": [[sid.hex(), n, _number(seq)]
                           for (sid, n), (seq, _) in self.in_flight.items()],
            },
            "chains": [
                {
                    "name": name, "key": key.hex(), "high": _number(c.high),
                    "last": c.last.hex(),
                    "recent": [[_number(s), h.hex(), p.hex()] for s, (h, p) in c.recent.items()],
                    "missing": [_number(x) for x in sorted(c.missing)],
                    "lost": [_number(x) for x in sorted(c.lost)],
                    "views": c.views_reported,
                }
                for (name, key), c in self._chains.items()
            ],
            "hashes": [h.hex() for h in self._hashes],
        }
        try:
            write_private_file(self.path, json.dumps(state).encode("utf-8"), replace=True)
        except ConfigError:
            self.dirty = True
            raise

    def flush(self) -> None:
        """
        Write the state file if anything changed since it was last written.

        @raise ConfigError: it cannot be written.
        """
        if self.dirty:
            self.save()

    # --- the sender side ----------------------------------------------------------------

    def new_connection(self) -> None:
        """
        A new connection to the room: chains continue only through what it
        replays or relays; the first message of a sender that skips numbers
        is a miss while offline.

        Our own chain continues from the state file when another client of
        the same profile sent under our name while we were away (L{catch_up}).
        """
        self.epoch += 1
        self._offline_reported = False
        self._shown = set()
        self.catch_up()

    def catch_up(self) -> bool:
        """
        Take the sender side from the state file if another client of this
        profile has carried our chain further since we last wrote it: it
        could only do so between our connections (the server admits one
        member per name), and numbering on from our own memory would give
        its numbers a second message each, a fork to every receiver.

        A file that is missing, unreadable, of another identity key or not
        ahead of us changes nothing: what we hold is ours and our next write
        replaces it.

        @return: whether the file was ahead and its sender side was taken.
        """
        if self.path is None or self.in_flight:
            return False
        try:
            state = _read_state(self.path)
            if state is None or bytes.fromhex(state["out"]["key"]) != self.my_key:
                return False
            seq, last, seen, lost = _sender_side(state["out"])
        except (OSError, ConfigError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return False
        if seq <= self.seq:
            return False
        self.seq, self.last, self.seen, self.lost = seq, last, seen, lost
        return True

    def next_fields(self, text: str) -> Fields:
        """
        The chain fields of the next message to send.
        """
        return Fields(seq=self.seq + 1, prev=self.last, seen=self.seen, text=text,
                      lost=tuple(self.lost))

    def sent(self, fields: Fields, sid: bytes, n: int, digest: bytes) -> None:
        """
        C{fields} went out as message C{n} of session C{sid}, with hash C{digest}.
        """
        self.seq = fields.seq
        self.last = digest
        self.seen = digest
        self.in_flight[sid, n] = (fields.seq, fields.lost)
        self._chain(self.me, self.my_key).add(fields.seq, digest, fields.prev)
        self._remember(digest)
        self.save()

    def acked(self, sid: bytes, n: int) -> bool:
        """
        The server acknowledged message C{n} of session C{sid}; whether it
        was one in flight. The lost numbers it declared need no repeating.
        """
        entry = self.in_flight.pop((sid, n), None)
        if entry is None:
            return False
        declared = set(entry[1])
        self.lost = [x for x in self.lost if x not in declared]
        self.dirty = True  # written lazily: see L{flush}
        return True

    def connection_lost(self) -> int:
        """
        The connection ended: what was in flight was never acknowledged.

        @return: how many messages that is (to report as not delivered).
        """
        count = len(self.in_flight)
        if count:
            self.lost = sorted(set(self.lost) | {seq for seq, _ in self.in_flight.values()})
            self.lost = self.lost[-MAX_LOST:]
            self.in_flight.clear()
            self.save()
        return count

    # --- the receiver side --------------------------------------------------------------

    def _chain(self, name: str, key: bytes) -> _Chain:
        chain = self._chains.get((name, key))
        if chain is None:
            chain = self._chains[name, key] = _Chain()
            while len(self._chains) > MAX_SENDERS:
                self._chains.popitem(last=False)
        self._chains.move_to_end((name, key))
        return chain

    def _remember(self, digest: bytes) -> None:
        if len(self._hashes) == self._hashes.maxlen:
            self._known.discard(self._hashes[0])
        self._hashes.append(digest)
        self._known.add(digest)

    def knows(self, digest: bytes) -> bool:
        """
        Whether C{digest} is the hash of a message accepted here (bounded).
        """
        return digest in self._known

    def receive(self, sender: str, message: SignedMessage, history: bool) -> Verdict:
        """
        Check one signed message from C{sender} (its signature verified, its
        key compared with the pin by the caller), update the chains and say
        what to do with it.

        @param history: the server replayed it from its history.
        """
        verdict = self._check(sender, message, history)
        if verdict.show:
            self._shown.add(message.hash)
            self._remember(message.hash)
            self.seen = message.hash
        self.dirty = True  # written lazily: see L{flush}
        return verdict

    def _check(self, sender: str, m: SignedMessage, history: bool) -> Verdict:
        name = sender
        first_ever = (sender, m.key) not in self._chains
        chain = self._chain(sender, m.key)
        continuing = chain.epoch == self.epoch
        if first_ever:
            chain.add(m.seq, m.hash, m.prev)
            chain.epoch = self.epoch
            return Verdict(True)
        if chain.knows(m.hash) or m.hash in self._shown:
            chain.epoch = self.epoch
            if history and m.hash not in self._shown:
                return Verdict(False, overlap=True)  # the replay overlaps what we have
            return Verdict(False, [Alarm(
                "replay", name, 1, f"an old message from {name} was presented again (dropped)"
            )])
        if m.seq in chain.missing:
            # Arrived late, out of order: no longer missing.
            chain.missing.discard(m.seq)
            chain.add(m.seq, m.hash, m.prev)
            return Verdict(True)
        if m.seq <= chain.high:
            if m.seq in chain.recent:
                return Verdict(True, [Alarm(
                    "fork", name, 1,
                    f"{name}'s messages disagree: the server or someone holding {name}'s "
                    f"key is showing different histories (two messages numbered {m.seq})",
                )], trusted=False)
            if history:
                chain.epoch = self.epoch
                return Verdict(False, overlap=True)  # older than we can compare: overlap
            return Verdict(False, [Alarm(
                "replay", name, 1, f"an old message from {name} was presented again (dropped)"
            )])
        alarms: list[Alarm] = []
        trusted = True
        if m.seq == chain.high + 1 and m.prev != chain.last:
            alarms.append(Alarm(
                "fork", name, 1,
                f"{name}'s messages disagree: the server or someone holding {name}'s key "
                f"is showing different histories (message {m.seq} follows another one)",
            ))
            trusted = False
        skipped = set(range(chain.high + 1, m.seq)) if m.seq - chain.high <= MAX_MISSING else set(
            range(m.seq - MAX_MISSING, m.seq)
        )
        count = m.seq - chain.high - 1
        declared = skipped & set(m.lost)
        if count and not continuing:
            if not self._offline_reported:
                self._offline_reported = True
                alarms.append(Alarm("offline", name, count,
                                    "you missed messages while offline"))
        elif count:
            withheld = count - len(declared)
            if withheld:
                chain.missing = _bounded(chain.missing | (skipped - declared))
                alarms.append(Alarm("gap", name, withheld, _plural(
                    withheld, f"1 message from {name} was withheld from you",
                    "{count} messages from " + name + " were withheld from you",
                )))
            if declared:
                chain.lost = _bounded(chain.lost | declared)
                alarms.append(Alarm("lost", name, len(declared), _plural(
                    len(declared), f"1 message from {name} was not delivered (lost on the way)",
                    "{count} messages from " + name + " were not delivered (lost on the way)",
                )))
        if (
            not history and continuing and m.prev == chain.last and m.seen != NO_HASH
            and not self.knows(m.seen) and not chain.views_reported
        ):
            chain.views_reported = True
            alarms.append(Alarm(
                "views", name, 1,
                f"{name} was shown a message you were not: the server is showing you "
                "different views of the room",
            ))
        chain.add(m.seq, m.hash, m.prev)
        chain.epoch = self.epoch
        return Verdict(True, alarms, trusted)
