"""
twistd plugin: ``twistd -n socketchat`` runs a twistchat relay.

Kept tiny on purpose: twistd imports every plugin module to list them, so the real
work lives in L{twistchat.tap}, imported only when this plugin is chosen.
"""

from twisted.application.service import ServiceMaker

socketchat = ServiceMaker(
    "twistchat relay",
    "twistchat.tap",
    "End-to-end encrypted group chat relay (TLS + SPAKE2+, sealed messages)",
    "socketchat",
)
