"""
Logging in: L{connect} (the first login, which is never retried) and the
L{Connector} a session logs in again with when it reconnects. Each login opens
one TLS connection (Twisted endpoints), runs the client protocol to its
welcome, and pins or checks the server's certificate; scrypt runs in the
reactor's thread pool (L{thread_deriver}).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from twistchat import wire
from twistchat.client.events import ChatListener
from twistchat.client.keyring import Deriver, Keyring
from twistchat.client.pins import PINS_FILE, Pins
from twistchat.client.policy import Reconnect
from twistchat.client.protocol import HANDSHAKE_TIMEOUT, ChatClientProtocol
from twistchat.client.session import ChatSession
from twistchat.client.transcript import Transcript
from twistchat.client.trust import CertificateAuthority, TrustOnFirstUse, default_known_hosts
from twistchat.config import DEFAULT_ROOM
from twistchat.crypto.identity import Identity, load_or_create
from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, derive_secrets
from twistchat.crypto.signed import SignedMessage, UnsignedMessage
from twistchat.crypto.vouch import check_vouch
from twistchat.errors import BadSignature, ConfigError, Rejected, TrustError, TwistchatError
from twistchat.tlsbinding import client_binding


class Login:
    """
    The protocol's handler: first for the login, then forwarding to the session.
    """

    def __init__(self) -> None:
        self.result: Deferred[tuple[ChatClientProtocol, wire.Message, Login]] = Deferred()
        self.session: ChatSession | None = None

    def attach(self, session: ChatSession) -> None:
        self.session = session

    def logged_in(self, protocol: ChatClientProtocol, welcome: wire.Message) -> None:
        if not self.result.called:
            self.result.callback((protocol, welcome, self))

    def login_failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    # The session attaches itself in the callbacks of result, which run inside
    # logged_in: nothing can arrive before it.

    def message(self, sender: str, opened: SignedMessage | UnsignedMessage,
                message: wire.Message) -> None:
        assert self.session is not None
        self.session._message(sender, opened, message)

    def rejected(self, sender: str, error: Rejected, message: wire.Message) -> None:
        assert self.session is not None
        self.session._rejected(sender, error, message)

    def event(self, message: wire.Message) -> None:
        assert self.session is not None
        self.session._event(message)

    def closed(self, reason: TwistchatError | None) -> None:
        if self.session is not None:
            self.session._closed(reason)


class ClientReactor(IReactorTCP, IReactorTime, IReactorThreads, IReactorPluggableNameResolver):
    """
    What connecting uses of the reactor: TCP, name resolution and timers for
    L{HostnameEndpoint}, timers for the session, threads for scrypt. Only a
    type: every real reactor provides all four.
    """


def thread_deriver(reactor: IReactorThreads) -> Deriver:
    """
    Run scrypt in the reactor's thread pool, so the reactor never blocks on it.
    """

    def derive(password: str, salt: bytes, params: ScryptParams) -> Deferred[PasswordSecrets]:
        return threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), derive_secrets, password, salt, params
        )

    return derive


class Connector:
    """
    Opens one connection and logs in: for the first login and each reconnect.
    """

    def __init__(self, reactor: ClientReactor, host: str, port: int, name: str, room: str,
                 keyring: Keyring, trust: TrustOnFirstUse | CertificateAuthority,
                 timeout: float, identity: Identity | None = None, vouch: bytes = b"") -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.name = name
        self.room = room
        self.keyring = keyring
        self.trust = trust
        self.timeout = timeout
        self.identity = identity if identity is not None else Identity.generate()
        self.vouch = vouch

    def login(self) -> Deferred[tuple[ChatClientProtocol, wire.Message, Login]]:
        login = Login()
        factory = Factory.forProtocol(
            partial(
                ChatClientProtocol,
                login,
                self.name,
                self.room,
                self.keyring,
                client_binding,
                self.trust.check,
                self.reactor,
                self.timeout,
                identity=self.identity,
                vouch=self.vouch,
            )
        )
        try:
            creator = self.trust.connection_creator(self.host, self.port)
        except TwistchatError:
            return fail()
        endpoint = wrapClientTLS(
            creator, HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        )
        connected: list[ChatClientProtocol] = []
        connecting = endpoint.connect(factory)
        connecting.addCallbacks(connected.append, login.login_failed)

        def done(result: Any) -> Any:
            if not isinstance(result, Failure):
                try:
                    self.trust.remember()
                except TwistchatError:
                    result = Failure()
            if isinstance(result, Failure):
                if (isinstance(result.value, TrustError)
                        and isinstance(self.trust, CertificateAuthority)):
                    # Say which CAs were trusted, for a refused certificate.
                    result = Failure(TrustError(
                        f"{result.value.message}; trusted: {self.trust.source}"
                    ))
                if connected:
                    # Connected, but the login failed: drop the connection.
                    connected[0].transport.abortConnection()
                elif not connecting.called:
                    connecting.cancel()
            return result

        def cancel(d: Deferred[Any]) -> None:
            login.login_failed(Failure(CancelledError()))

        result: Deferred[tuple[ChatClientProtocol, wire.Message, Login]] = Deferred(cancel)
        login.result.addBoth(done).chainDeferred(result)
        return result


def _check_own_vouch(vouch: bytes, room: str, name: str, key: bytes, now: float) -> None:
    """
    Refuse, before logging in, a vouch the members would refuse anyway.

    @raise ConfigError: it is not a vouch for C{key} as C{name} in C{room}, or has
        expired.
    """
    try:
        check_vouch(vouch, room, name, key, now)
    except BadSignature as e:
        raise ConfigError(
            f"the vouch is not usable here: {e.message} (a vouch is made for one identity "
            "key, one room and one name)"
        ) from None


def connect(
    reactor: ClientReactor,
    host: str,
    port: int,
    name: str,
    password: str,
    *,
    room: str = DEFAULT_ROOM,
    listener: ChatListener | None = None,
    trust: TrustOnFirstUse | CertificateAuthority | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    reconnect: Reconnect | None = None,
    identity: Identity | Path | str | None = None,
    profile: Path | None = None,
    vouch: bytes | None = None,
) -> Deferred[ChatSession]:
    """
    Connect over TLS, prove knowledge of the room password, and join the room.

    The password is kept only until scrypt has run; the session keeps the keys
    derived from it (L{twistchat.client.keyring}).

    @param trust: how to trust the server's certificate; by default its
        fingerprint is pinned on first use in C{~/.config/twistchat/known_hosts}.
    @param timeout: seconds for the TCP connection, and again from the TCP
        connection to the end of the login (TLS and password handshake).
    @param reconnect: reconnect after a connection is lost (see L{Reconnect});
        the first login is never retried.
    @param identity: the member's identity key, or the file that holds it
        (created on first use); by default C{identity.json} in the profile.
    @param profile: the directory of the pinned identity keys (C{identities})
        and the transcript state (C{transcripts/}); by default the directory of
        the known-hosts file (C{~/.config/twistchat}).
    @param vouch: a vouch for this identity key, as C{name} in C{room}, made by
        another device of the name (L{twistchat.crypto.vouch}), presented at every
        login so that members who pinned that device pin this one too.
    @return: a Deferred firing with a L{ChatSession}, or failing with a
        L{TwistchatError} (e.g. L{WrongPassword}, L{ServerNotAuthenticated},
        L{NameTaken}, L{FingerprintChanged}), a L{ConfigError} for a vouch that is
        not for this key, room and name or has expired, or a Twisted connection
        error.
    """
    listener = listener or ChatListener()
    trust = trust or TrustOnFirstUse()
    if profile is None:
        profile = (trust.path if isinstance(trust, TrustOnFirstUse)
                   else default_known_hosts()).parent
    try:
        if not isinstance(identity, Identity):
            identity = load_or_create(profile / "identity.json" if identity is None else identity)
        server = f"{host}:{port}"
        pins = Pins(profile / PINS_FILE)
        transcript = Transcript(Transcript.path_for(profile, server, room, name), name,
                                identity.public_key)
        if vouch:
            _check_own_vouch(vouch, room, name, identity.public_key, reactor.seconds())
    except TwistchatError:
        return fail()
    keyring = Keyring(password, room, thread_deriver(reactor))
    del password
    connector = Connector(reactor, host, port, name, room, keyring, trust, timeout, identity,
                          vouch or b"")

    def logged_in(result: tuple[ChatClientProtocol, wire.Message, Login]) -> ChatSession:
        protocol, welcome, login = result
        session = ChatSession(protocol, welcome, listener, reactor, connector, reconnect,
                              transcript=transcript, pins=pins, server=server)
        login.attach(session)
        return session

    def failed(failure: Failure) -> Failure:
        keyring.forget()
        return failure

    return connector.login().addCallbacks(logged_in, failed)
