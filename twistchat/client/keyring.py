"""
What the client keeps of the room password: the secrets derived from it, not
the password itself.

scrypt needs the room's salt, which only the server's C{params} message gives,
so the password is held until the first derivation and dropped as soon as it
has run. From then on the client holds only w0 and w1 (for further SPAKE2+
logins, e.g. when it reconnects) and the room's content key, cached under the
salt and scrypt parameters they were derived with. A server that later offers
another salt (its password was rotated, or it is not the same server) cannot be
answered: that login fails with L{SaltChanged}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from twistchat.crypto.kdf import PasswordSecrets, ScryptParams, content_key
from twistchat.errors import SaltChanged

Deriver = Callable[[str, bytes, ScryptParams], "Deferred[PasswordSecrets]"]


@dataclass(frozen=True)
class RoomKeys:
    """
    Everything a member needs from the password: the SPAKE2+ scalars and the
    room's content key. The repr shows none of them.
    """

    w0: int = field(repr=False)
    w1: int = field(repr=False)
    content_key: bytes = field(repr=False)


class Keyring:
    """
    Derive a room's keys from its password once, then forget the password.

    @param derive: runs scrypt (in a thread: see L{twistchat.client.connector.thread_deriver}).
    """

    def __init__(self, password: str, room: str, derive: Deriver) -> None:
        self._password: str | None = password
        self.room = room
        self._derive = derive
        self._keys: dict[tuple[bytes, ScryptParams], RoomKeys] = {}
        self._waiting: dict[tuple[bytes, ScryptParams], list[Deferred[RoomKeys]]] = {}

    @property
    def holds_password(self) -> bool:
        return self._password is not None

    def keys(self, salt: bytes, params: ScryptParams) -> Deferred[RoomKeys]:
        """
        The keys for this salt and cost: cached, or derived from the password.

        @return: a Deferred failing with L{SaltChanged} if the password has
            already been forgotten and the salt or cost is not the cached one.
        """
        index = (bytes(salt), params)
        if index in self._keys:
            return succeed(self._keys[index])
        d: Deferred[RoomKeys] = Deferred()
        if index in self._waiting:
            self._waiting[index].append(d)
            return d
        if self._password is None:
            return fail(SaltChanged())
        password, self._password = self._password, None
        self._waiting[index] = [d]
        self._derive(password, index[0], params).addBoth(self._derived, index)
        return d

    def _derived(self, result: PasswordSecrets | Failure,
                 index: tuple[bytes, ScryptParams]) -> None:
        waiting = self._waiting.pop(index)
        if isinstance(result, Failure):
            for d in waiting:
                d.errback(result)
            return None
        keys = RoomKeys(result.w0, result.w1, content_key(result.content_secret, self.room))
        self._keys[index] = keys
        for d in waiting:
            d.callback(keys)
        return None

    def forget(self) -> None:
        """
        Drop the password (if still held) and every derived key.
        """
        self._password = None
        self._keys.clear()


__all__ = ["Deriver", "Keyring", "RoomKeys"]
