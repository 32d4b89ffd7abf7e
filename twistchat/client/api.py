"""
The twistchat client library: a Deferred-based API.

    from twistchat.client import connect, ChatListener

    class Printer(ChatListener):
        def message_received(self, message):
            print(f"{message.sender}: {message.text}")

    session = await connect(reactor, "chat.example.org", 7777, "alice",
                            password, listener=Printer())
    session.send("Hello world")
    print([m.name for m in await session.who()])
    await session.leave()

C{connect} fires with a L{ChatSession} once the password handshake has succeeded
(or fails with a L{twistchat.errors.TwistchatError} subclass such as
L{WrongPassword}, or a Twisted connection error). Events arrive through the
methods of a L{ChatListener}. The reactor is passed in; nothing here starts or
stops it (see L{twistchat.client.blocking} for scripts without a reactor).

With C{reconnect=Reconnect()} a session outlives a dropped connection: when the
connection ends for a reason that may pass (connection lost, server shutting
down, ping timeout, ...) it logs in again with exponential backoff, rejoins the
room and reports who left or joined meanwhile; messages sent meanwhile are
queued (up to L{Reconnect.max_queued}) and sent after the rejoin. Final reasons
(L{is_final}: wrong password, banned address, certificate changed, a server
that breaks the protocol, ...) end the session as without it.

This module gathers the public names of the parts: L{twistchat.client.events}
(the listener and what it is given), L{twistchat.client.policy} (reconnecting,
final reasons, pacing), L{twistchat.client.session} (the session and its life
cycle) and L{twistchat.client.connector} (logging in, L{connect}).
"""

from __future__ import annotations

from twistchat.client.connector import Connector, Login, connect, thread_deriver
from twistchat.client.events import Alarm, ChatListener, ChatMessage, Member
from twistchat.client.policy import (
    PACE,
    SPARE,
    STABLE_AFTER,
    Reconnect,
    describe,
    is_final,
    pacing,
)
from twistchat.client.session import REMEMBERED, ChatSession, SessionState

__all__ = [
    "Alarm",
    "PACE",
    "REMEMBERED",
    "SPARE",
    "STABLE_AFTER",
    "ChatListener",
    "ChatMessage",
    "ChatSession",
    "Connector",
    "Login",
    "Member",
    "Reconnect",
    "SessionState",
    "connect",
    "describe",
    "is_final",
    "pacing",
    "thread_deriver",
]
