"""
A blocking client for scripts and notebooks: the reactor runs in a background
thread, and every method here blocks (with a timeout) until it is done.

    from twistchat.client import BlockingChat

    with BlockingChat.connect("127.0.0.1", 7777, "bot", password) as chat:
        chat.send("hello from a script")
        message = chat.receive(timeout=30)
        print(message.sender, message.text)

One reactor serves every BlockingChat in the process. Do not use this from code
that already runs a reactor: use L{twistchat.client.connect} there. A call made
from the reactor's thread (a Twisted callback) raises L{RuntimeError} at once,
since it would wait for itself. Once the session has ended (the server went
away, or L{BlockingChat.close}), C{receive} raises at once and C{close} does
nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python import threadable

from twistchat.client.api import Alarm, ChatListener, ChatMessage, ChatSession, Member, connect
from twistchat.errors import TwistchatError

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _reactor() -> Any:
    """
    The global reactor, running in a daemon thread (started on first use).
    """
    global _thread
    from twisted.internet import reactor

    with _lock:
        if _thread is None:
            _thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="twistchat-reactor",
                daemon=True,
            )
            _thread.start()
    return reactor


def _call(reactor: IReactorFromThreads, timeout: float | None, f: Callable[[], Any]) -> Any:
    """
    Run C{f} in the reactor thread; wait for its (possibly Deferred) result.

    C{f} takes no arguments (bind them with L{functools.partial}), so that none
    of its keyword arguments can collide with this function's own.

    @raise RuntimeError: if called from the reactor thread, which would wait
        for itself.
    @raise TimeoutError: if there is no result within C{timeout} seconds.
    """
    if threadable.isInIOThread():
        raise RuntimeError(
            "BlockingChat called from the reactor thread, where it would wait for "
            "itself: use twistchat.client.connect there"
        )
    result: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        d = defer.maybeDeferred(f)
        d.addCallbacks(lambda r: result.put((True, r)), lambda f: result.put((False, f)))

    reactor.callFromThread(run)
    try:
        ok, value = result.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no result within {timeout} seconds") from None
    if not ok:
        value.raiseException()
    return value


class _Queueing(ChatListener):
    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()

    def message_received(self, message: ChatMessage) -> None:
        self.events.put(message)

    def member_joined(self, member: Member) -> None:
        self.events.put(("joined", member))

    def member_left(self, member: Member) -> None:
        self.events.put(("left", member))

    def message_rejected(self, sender: str, reason: str) -> None:
        self.events.put(("rejected", sender, reason))

    def history_unreadable(self, message: ChatMessage) -> None:
        self.events.put(("unreadable", message))

    def notice(self, text: str) -> None:
        self.events.put(("notice", text))

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.events.put(("reconnecting", attempt, delay, reason))

    def member_key_changed(self, name: str, old: bytes, new: bytes) -> None:
        self.events.put(("key changed", name, new))

    def transcript_alarm(self, alarm: Alarm) -> None:
        self.events.put(("alarm", alarm))

    def message_undelivered(self, count: int) -> None:
        self.events.put(("undelivered", count))

    def reconnected(self) -> None:
        self.events.put(("reconnected",))

    def disconnected(self, reason: str | None) -> None:
        self.events.put(("disconnected", reason))


class BlockingChat:
    """
    A room session driven from ordinary (non-Twisted) code.
    """

    def __init__(
        self, reactor: IReactorFromThreads, session: ChatSession, listener: _Queueing
    ) -> None:
        self._reactor = reactor
        self._session = session
        self._listener = listener
        self.name = session.name
        self.room = session.room

    @classmethod
    def connect(
        cls, host: str, port: int, name: str, password: str, timeout: float = 60.0, **kw: Any
    ) -> BlockingChat:
        """
        Log in and join; keyword arguments are those of L{twistchat.client.connect}.

        @raise TwistchatError: e.g. WrongPassword; or a connection error.
        """
        reactor = _reactor()
        listener = _Queueing()
        session = _call(reactor, timeout, partial(
            connect, reactor, host, port, name, password,
            listener=listener, timeout=timeout, **kw,
        ))
        return cls(reactor, session, listener)

    def send(self, text: str) -> None:
        """
        Seal and send C{text} (see L{ChatSession.send}).

        @raise ValueError: if the text is longer than the server accepts.
        @raise TwistchatError: if the session has ended.
        @raise RuntimeError: if called from the reactor thread.
        """
        _call(self._reactor, 30, partial(self._session.send, text))

    def members(self, timeout: float = 30) -> list[Member]:
        """
        Everyone in the room, asked of the server.
        """
        members: list[Member] = _call(self._reactor, timeout, self._session.who)
        return members

    def verify(self, name: str) -> str:
        """
        Our safety number with C{name} (L{ChatSession.verify}).

        @raise KeyError: no key is known for C{name}.
        """
        number: str = _call(self._reactor, 30, partial(self._session.verify, name))
        return number

    def safety(self) -> str:
        """
        The room's safety code (L{ChatSession.safety}).
        """
        code: str = _call(self._reactor, 30, self._session.safety)
        return code

    def next_event(self, timeout: float | None = None) -> Any:
        """
        The next event: a L{ChatMessage}, or a tuple such as C{("joined", member)},
        C{("left", member)}, C{("rejected", sender, reason)}, C{("notice", text)},
        C{("reconnecting", attempt, delay, reason)}, C{("reconnected",)} (with
        C{reconnect=Reconnect()}), C{("key changed", name, new_key)},
        C{("alarm", alarm)} (an L{Alarm}), C{("undelivered", count)},
        C{("disconnected", reason)}. Once the session
        has ended, every call returns C{("disconnected", reason)} at once.

        @raise TimeoutError: if nothing arrives within C{timeout} seconds.
        """
        try:
            event = self._listener.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing received within {timeout} seconds") from None
        if isinstance(event, tuple) and event[0] == "disconnected":
            # Nothing follows the end: keep it for the next call.
            self._listener.events.put(event)
        return event

    def receive(self, timeout: float | None = None) -> ChatMessage:
        """
        The next chat message, skipping other events.

        @raise TwistchatError: if the session ends first, or has ended.
        @raise TimeoutError: if no message arrives within C{timeout} seconds.
        """
        while True:
            event = self.next_event(timeout)
            if isinstance(event, ChatMessage):
                return event
            if event[0] == "disconnected":
                raise TwistchatError(f"disconnected: {event[1] or 'left the room'}")

    def close(self, timeout: float = 30) -> None:
        """
        Leave the room (idempotent).
        """
        _call(self._reactor, timeout, self._session.leave)

    def __enter__(self) -> BlockingChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BlockingChat"]
