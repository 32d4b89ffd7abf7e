"""
Rooms: who is in them, presence notices, and fan-out of sealed messages.

A room never sees plaintext. It receives frames already encoded once by the
sender's connection and hands the same bytes to every other member.

A room only keeps its member list and fans frames out. It does not decide
which frame goes out next: the factory (L{twistchat.server.service})
announces joins and leaves through the same ordered path as messages, so that
every member sees a room's events in the order the server received them.

Adaptive batching (L{Batcher}, C{--batch-window}): a frame the room sends
goes out at once, unless the room already sent one less than a window ago;
then it is held, with whatever else comes, until that window ends, and each
member gets everything held for it as one write. A quiet room pays nothing;
a busy one pays the per-write cost (a TLS record, a socket write) once per
member per window instead of once per frame. Nothing is held longer than one
window, and the order stays the room's. A burst ends a window early: once
it holds 1,600 bytes per member of the room for each member, it is written.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twistchat import wire
from twistchat.crypto.spake2plus import VerifierKey
from twistchat.crypto.verifier import Verifier
from twistchat.errors import NameInvalid, NameTaken

#: Names: 1 to 32 ASCII letters, digits, '_', '.', '-', starting with a letter or
#: digit. ASCII only, so that names cannot carry terminal escapes, bidi overrides
#: or look-alike letters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}\Z")


def check_name(name: str) -> str:
    """
    Return C{name} if it is a valid member name.

    @raise NameInvalid: otherwise.
    """
    if not NAME_PATTERN.match(name):
        raise NameInvalid(
            "invalid name: use 1 to 32 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def listed(name: str, addr: str, key: str, vouch: str) -> dict[str, object]:
    """
    A member as a member list gives it: the vouch only when there is one.
    """
    listed: dict[str, object] = {"name": name, "addr": addr, "key": key}
    if vouch:
        listed["vouch"] = vouch
    return listed


class Member(Protocol):
    """
    What a room needs of a connection.
    """

    name: str
    addr: str
    #: The member's identity public key, as it announced it (a claim the
    #: server relays; clients check the signatures inside sealed messages).
    key: bytes
    #: A device's vouch for that key (docs/protocol.md, section 12.8), as the
    #: member presented it, or empty; relayed unchecked, like the key.
    vouch: bytes

    def deliver(self, data: bytes) -> None:
        """
        Queue one already length-prefixed frame for this member.
        """


#: A window ends early once it holds this many bytes for each member, per
#: member of the room (16 KiB each in a room of 10, 160 KiB in a room of
#: 100). A flush costs one write per member, so a small room's is cheap and
#: need not wait out the window in a burst; a large room's writes are what
#: the window saves, and it holds more before it flushes.
EARLY_BYTES_PER_MEMBER = 1600


class Batcher:
    """
    Adaptive batching of one room's deliveries.

    A frame goes out at once when the room sent nothing in the last
    C{window} seconds. Otherwise it is held until C{window} seconds after
    the room's last write, together with every frame sent meanwhile; then
    each member still in the room gets its held frames joined, as one
    delivery. So no frame waits longer than C{window}, and each member gets
    the room's frames in the order they were sent.

    A window that holds L{EARLY_BYTES_PER_MEMBER} bytes per member of the
    room is written at once: a small room in a burst does not idle out the
    window with its frames, a large one still gathers.
    """

    __slots__ = ("room", "clock", "window", "_last", "_held", "_timer", "_bytes")

    def __init__(self, room: Room, clock: IReactorTime, window: float) -> None:
        self.room = room
        self.clock = clock
        self.window = window
        #: When the room last wrote to its members.
        self._last = -window
        #: member -> frames held for it, in order.
        self._held: dict[Member, list[bytes]] = {}
        self._timer: IDelayedCall | None = None
        #: Bytes of the frames held for every member (acks not counted).
        self._bytes = 0

    def send(self, recipients: Iterable[Member], data: bytes,
             ack: tuple[Member, bytes] | None = None) -> None:
        """
        Deliver C{data} to each of C{recipients}, and C{ack}'s frame to its
        member, now or at the end of the current window (both the same).
        """
        if self._timer is None:
            now = self.clock.seconds()
            if now - self._last >= self.window:
                # Set before (a frame a delivery causes waits) and after: in a
                # large room the writes take longer than a window, and the
                # window runs from their end.
                self._last = now
                for member in recipients:
                    member.deliver(data)
                if ack is not None:
                    ack[0].deliver(ack[1])
                self._last = self.clock.seconds()
                return
            self._timer = self.clock.callLater(self._last + self.window - now, self.flush)
        held = self._held
        for member in recipients:
            frames = held.get(member)
            if frames is None:
                held[member] = [data]
            else:
                frames.append(data)
        if ack is not None:
            held.setdefault(ack[0], []).append(ack[1])
        self._bytes += len(data)
        if self._bytes >= EARLY_BYTES_PER_MEMBER * len(self.room):
            self.flush()

    def flush(self) -> None:
        """
        Deliver everything held now (the window ended, or the room closes).
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        held, self._held = self._held, {}
        self._bytes = 0
        if not held:
            return
        self._last = self.clock.seconds()
        room = self.room
        for member, frames in held.items():
            # A member dropped meanwhile (it left, or was too slow) gets nothing.
            if member in room:
                member.deliver(frames[0] if len(frames) == 1 else b"".join(frames))
        self._last = self.clock.seconds()  # the window runs from the writes' end


class Room:
    """
    One password-protected room: its verifier and its members.
    """

    def __init__(self, verifier: Verifier, clock: IReactorTime | None = None,
                 batch_window: float = 0.0) -> None:
        """
        @param clock: with a C{batch_window} above zero, the clock that
            times the room's batches (L{Batcher}).
        @param batch_window: seconds a busy room may hold a frame (0: never).
        """
        self.name = verifier.room
        self.verifier = verifier
        self.key = VerifierKey.from_verifier(verifier)
        # casefolded name -> member: "Alice" and "alice" cannot both be present.
        self._members: dict[str, Member] = {}
        self._batcher = (Batcher(self, clock, batch_window)
                         if clock is not None and batch_window > 0 else None)
        #: Messages accepted so far: the position of the last in the room's order.
        self.position = 0

    def __len__(self) -> int:
        return len(self._members)

    def rekey(self, verifier: Verifier) -> None:
        """
        Use a new verifier for future logins; members already in stay.
        """
        self.verifier = verifier
        self.key = VerifierKey.from_verifier(verifier)

    def taken(self, name: str) -> bool:
        """
        Whether a member already uses C{name} (names are compared casefolded).
        """
        return name.casefold() in self._members

    def __contains__(self, member: Member) -> bool:
        return self._members.get(member.name.casefold()) is member

    @property
    def members(self) -> list[Member]:
        return list(self._members.values())

    def accept(self) -> int:
        """
        Give the next message accepted its position in the room's order.
        """
        self.position += 1
        return self.position

    def roster(self, exclude: Member | None = None) -> list[dict[str, object]]:
        """
        The member list as sent on the wire (keys as base64 text).
        """
        return [
            listed(m.name, m.addr, base64.b64encode(m.key).decode("ascii"),
                    base64.b64encode(m.vouch).decode("ascii"))
            for m in self._members.values()
            if m is not exclude
        ]

    def join(self, member: Member) -> bytes:
        """
        Add C{member}.

        @return: the C{joined} frame to announce to the others (the caller
            sends it, in order with the room's other events).
        @raise NameTaken: if another member already uses that name.
        """
        key = member.name.casefold()
        if key in self._members:
            raise NameTaken(f"the name {member.name!r} is already taken in this room")
        self._members[key] = member
        vouch = {"vouch": member.vouch} if member.vouch else {}
        return wire.encode("joined", name=member.name, addr=member.addr, key=member.key, **vouch)

    def leave(self, member: Member) -> bytes | None:
        """
        Remove C{member}, if present.

        @return: the C{left} frame to announce to the others, or None if
            C{member} was not in the room.
        """
        key = member.name.casefold()
        if self._members.get(key) is not member:
            return None
        del self._members[key]
        return wire.encode("left", name=member.name, addr=member.addr)

    def broadcast(self, frame: bytes, exclude: Member | None = None) -> None:
        """
        Send one encoded frame to every member but C{exclude}.

        The length prefix is added once; each member gets the same bytes.
        """
        self.send(wire.prefixed(frame), exclude)

    def send(self, data: bytes, exclude: Member | None = None) -> None:
        """
        Send one already length-prefixed frame to every member but C{exclude}.
        """
        self.send_to(self.recipients(exclude), data)

    def send_to(self, recipients: Iterable[Member], data: bytes,
                ack: tuple[Member, bytes] | None = None) -> None:
        """
        Send one already length-prefixed frame to C{recipients} (members of
        this room), in order with the room's other frames: at once, or at the
        end of the current batch window. C{ack}, if given, is a frame for
        one member (the sender's acknowledgement) that goes with it, so that
        the sender learns its message was accepted as the others receive it.
        """
        if self._batcher is None:
            for member in recipients:
                member.deliver(data)
            if ack is not None:
                ack[0].deliver(ack[1])
        else:
            self._batcher.send(recipients, data, ack)

    def flush(self) -> None:
        """
        Deliver at once the frames held for the current batch window (before
        something that must come after them, such as the room closing).
        """
        if self._batcher is not None:
            self._batcher.flush()

    def recipients(self, exclude: Member | None = None) -> list[Member]:
        """
        The members but C{exclude}, as a new list: a delivery may drop a
        member (a slow reader) while the list is walked.
        """
        return [m for m in self._members.values() if m is not exclude]


def ack_frame(room: Room, message: wire.Message) -> bytes:
    """
    The C{ack} frame (with its length prefix) that tells the sender of
    C{message} it was accepted, at the next position in C{room}'s order.
    """
    return wire.prefixed(wire.acknowledged(message, room.accept()))


def ack(sid: str, n: int, seq: int) -> bytes:
    """
    The C{ack} frame (with its length prefix) for message C{n} of sender
    session C{sid} (as the base64 text it came in), at position C{seq}.
    """
    return wire.prefixed(wire.ack_of(sid, n, seq))


class Rooms:
    """
    The rooms a server hosts, by name.
    """

    def __init__(self, verifiers: Iterable[Verifier] = (), clock: IReactorTime | None = None,
                 batch_window: float = 0.0) -> None:
        """
        @param clock: times the rooms' batches (see L{Room}).
        @param batch_window: seconds a busy room may hold a frame (0: never).
        """
        self._rooms: dict[str, Room] = {}
        self.clock = clock
        self.batch_window = batch_window
        for verifier in verifiers:
            self.add(verifier)

    def add(self, verifier: Verifier) -> Room:
        room = Room(verifier, self.clock, self.batch_window)
        self._rooms[room.name] = room
        return room

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def remove(self, name: str) -> Room | None:
        """
        Stop hosting room C{name}; return it (its members are still in it).
        """
        return self._rooms.pop(name, None)

    def __iter__(self) -> Iterator[Room]:
        return iter(self._rooms.values())
