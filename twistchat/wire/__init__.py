"""
The wire format: frame limits and the message schema. No I/O here.
"""

from twistchat.crypto.seal import MAX_TEXT_BYTES
from twistchat.wire.messages import (
    FROM_CLIENT,
    FROM_SERVER,
    MAX_FRAME,
    MAX_FRAME_FROM_SERVER,
    MAX_FRAME_PREAUTH,
    MAX_NAME,
    MAX_ROOM,
    PROTOCOL_VERSION,
    Message,
    ack_of,
    acknowledged,
    decode,
    encode,
    max_text_for,
    prefixed,
    relayed,
)

__all__ = [
    "FROM_CLIENT",
    "FROM_SERVER",
    "MAX_FRAME",
    "MAX_FRAME_FROM_SERVER",
    "MAX_FRAME_PREAUTH",
    "MAX_NAME",
    "MAX_ROOM",
    "MAX_TEXT_BYTES",
    "PROTOCOL_VERSION",
    "Message",
    "ack_of",
    "acknowledged",
    "decode",
    "encode",
    "max_text_for",
    "prefixed",
    "relayed",
]
