"""
The twistchat relay: per-connection protocol, rooms and fan-out, limits, and the
service that listens with TLS.

The server holds only SPAKE2+ verifiers. It routes sealed messages it cannot open.
"""
