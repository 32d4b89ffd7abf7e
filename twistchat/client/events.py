"""
What a session reports, and to what: L{ChatListener} and the values it is
given (L{ChatMessage}, L{Member}). Plain data, no Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twistchat.client.transcript import Alarm

__all__ = ["Alarm", "ChatListener", "ChatMessage", "Member"]


@dataclass(frozen=True)
class Member:
    """
    A member of the room: name and address as the server sees it, and the
    identity key the server says it announced (a claim: the signatures of its
    messages are what count; empty if unknown), with the vouch for that key it
    presented, if any (docs/protocol.md, section 12.8).
    """

    name: str
    addr: str
    key: bytes = field(default=b"", repr=False)
    vouch: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ChatMessage:
    """
    A message opened with the room key. C{time} is the server's time for
    history; live messages have None. C{history} is true for a message the
    server replayed from its history when we joined (or rejoined) rather than
    relayed as it was sent.

    C{signed} is false for a message sealed before identity keys (history
    only: attributed by the room key alone, so any member could have written
    it). C{trusted} is false while the sender's key differs from the one
    pinned for its name (until L{twistchat.client.session.ChatSession.accept}),
    and for a message that is evidence of a fork.
    """

    sender: str
    text: str
    time: float | None = None
    history: bool = False
    signed: bool = True
    trusted: bool = True


class ChatListener:
    """
    Receives a session's events. Override the methods you need; each is optional.

    A listener's exception is logged and does not affect the session.
    """

    def message_received(self, message: ChatMessage) -> None:
        """
        A member's message, opened and checked; each message once.

        At the login the server replays the room's recent history (marked
        C{message.history}), then L{history_end}, then live messages. It
        replays its history again at every rejoin after a reconnect: there
        the session passes on only the replayed messages it has not already
        delivered (or sent itself), that is, what was said while it was away,
        and L{history_end} follows as usual. (Signed messages are checked
        against each sender's chain, kept in the profile,
        L{twistchat.client.transcript}; for unsigned ones from before identity
        keys it remembers the last L{twistchat.client.session.REMEMBERED}.)
        """

    def member_joined(self, member: Member) -> None:
        """Someone entered the room (or, after a reconnect, entered while we were away)."""

    def member_left(self, member: Member) -> None:
        """Someone left the room (or, after a reconnect, left while we were away)."""

    def message_rejected(self, sender: str, reason: str) -> None:
        """A message that could not be opened, or a replay; it is not shown as chat."""

    def history_unreadable(self, message: ChatMessage) -> None:
        """
        A replayed message that the room key does not open: it was sealed under
        an earlier password of the room. C{message.text} is empty.
        """

    def member_key_changed(self, name: str, old: bytes, new: bytes) -> None:
        """
        C{name} now uses identity key C{new}, not the C{old} one pinned for it
        (announced with its presence, or signing its messages): someone else
        may be using the name. Its messages come marked untrusted until the
        person accepts the new key (L{twistchat.client.session.ChatSession.accept}).
        """

    def member_new_device(self, name: str, key: bytes, voucher: bytes) -> None:
        """
        C{name} uses identity key C{key}, new to us, vouched for by C{voucher},
        a key pinned for C{name}: C{key} is now pinned as another device of
        C{name} (docs/protocol.md, section 12.8).
        """

    def vouch_refused(self, name: str, key: bytes, reason: str) -> None:
        """
        C{name}'s new key C{key} came with a vouch that was not accepted
        (C{reason}: made by a key not pinned for C{name}, expired, or not
        valid); L{member_key_changed} reported the key as a change.
        """

    def transcript_alarm(self, alarm: Alarm) -> None:
        """
        The transcript is not what it should be: a message replayed, withheld
        or lost, a sender's messages that fork, different views of the room,
        or messages missed while offline (L{Alarm.kind}). By default the
        alarm's text goes to L{notice}.
        """
        self.notice(alarm.text)

    def message_undelivered(self, count: int) -> None:
        """
        C{count} messages this session sent were never acknowledged by the
        server before the connection ended: they were not delivered. (The
        next message tells the others they were lost.) By default a line goes
        to L{notice}.
        """
        self.notice(f"{count} message(s) you sent were not delivered")

    def history_end(self) -> None:
        """The replayed history is over: what follows is live."""

    def notice(self, text: str) -> None:
        """A notice from the server."""

    def message_refused(self, reason: str) -> None:
        """
        The server refused to relay at least one message this session sent
        (it says so for sending too fast); C{reason} is its notice. The server
        does not say which message, nor how many more it drops before it
        disconnects us. By default the notice goes to L{notice}.
        """
        self.notice(reason)

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        """
        The connection was lost (C{attempt} 1) or reconnect attempt
        C{attempt - 1} failed, because of C{reason}; attempt C{attempt} starts in
        C{delay} seconds. Only with C{reconnect}. Each outage numbers its
        attempts from 1. When L{ChatSession.flapping} is above 0 the connection
        keeps dropping soon after each rejoin, and that is why C{delay} is
        longer than the outage's attempt number alone would make it.
        """

    def reconnected(self) -> None:
        """
        Back in the room after a reconnect; L{member_left} and L{member_joined}
        follow for the changes while away, then queued messages are sent.
        """

    def disconnected(self, reason: str | None) -> None:
        """The session ended: C{None} after L{ChatSession.leave}, else why."""
