"""
The twistchat client: a Deferred-based library (L{connect}), a blocking helper
for scripts (L{BlockingChat}), and the C{twistchat} command.
"""

from twistchat.client.api import (
    ChatListener,
    ChatMessage,
    ChatSession,
    Member,
    Reconnect,
    connect,
)
from twistchat.client.blocking import BlockingChat
from twistchat.client.trust import CertificateAuthority, TrustOnFirstUse

__all__ = [
    "BlockingChat",
    "CertificateAuthority",
    "ChatListener",
    "ChatMessage",
    "ChatSession",
    "Member",
    "Reconnect",
    "TrustOnFirstUse",
    "connect",
]
