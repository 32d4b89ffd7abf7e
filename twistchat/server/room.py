"""
Rooms: who is in them, presence notices, and fan-out of sealed messages.

A room never sees plaintext. It receives frames already encoded once by the
sender's connection and hands the same bytes to every other member.

A room only keeps its member list and fans frames out. It does not decide
when a frame goes out: the factory (L{twistchat.server.service}) announces
joins and leaves through the same ordered path as messages, so that every
member sees a room's events in the order the server received them.
"""

from __future__ import annotations

import base64
import re
from typing import Iterable, Protocol

from twistchat import wire
from twistchat.crypto.verifier import Verifier
from twistchat.crypto.spake2plus import VerifierKey
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


class Member(Protocol):
    """
    What a room needs of a connection.
    """

    name: str
    addr: str
    #: The member's identity public key, as it announced it (a claim the
    #: server relays; clients check the signatures inside sealed messages).
    key: bytes

    def deliver(self, data: bytes) -> None:
        """
        Queue one already length-prefixed frame for this member.
        """


class Room:
    """
    One password-protected room: its verifier and its members.
    """

    def __init__(self, verifier: Verifier) -> None:
        self.name = verifier.room
        self.verifier = verifier
        self.key = VerifierKey.from_verifier(verifier)
        # casefolded name -> member: "Alice" and "alice" cannot both be present.
        self._members: dict[str, Member] = {}
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
            {"name": m.name, "addr": m.addr, "key": base64.b64encode(m.key).decode("ascii")}
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
        return wire.encode("joined", name=member.name, addr=member.addr, key=member.key)

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
        for member in self._recipients(exclude):
            member.deliver(data)

    def _recipients(self, exclude: Member | None) -> Iterable[Member]:
        # A copy: a delivery may drop a member (slow consumer) mid-loop.
        return [m for m in self._members.values() if m is not exclude]


def ack_frame(room: Room, message: wire.Message) -> bytes:
    """
    The C{ack} frame (with its length prefix) that tells the sender of
    C{message} it was accepted, at the next position in C{room}'s order.
    """
    raw = message.raw
    return wire.prefixed(wire.encode("ack", sid=raw["sid"], n=raw["n"], seq=room.accept()))


class Rooms:
    """
    The rooms a server hosts, by name.
    """

    def __init__(self, verifiers: Iterable[Verifier] = ()) -> None:
        self._rooms: dict[str, Room] = {}
        for verifier in verifiers:
            self.add(verifier)

    def add(self, verifier: Verifier) -> Room:
        room = Room(verifier)
        self._rooms[room.name] = room
        return room

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def remove(self, name: str) -> Room | None:
        """
        Stop hosting room C{name}; return it (its members are still in it).
        """
        return self._rooms.pop(name, None)

    def __iter__(self):
        return iter(self._rooms.values())
