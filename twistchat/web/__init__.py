"""
The browser client's files, shipped inside the Python package.

C{static/twistchat.js} is one ES module with the page's cryptography and protocol
codec (scrypt, SPAKE2+, sealing, signed envelopes, safety numbers, the wire schema),
byte for byte the same as L{twistchat.crypto} and L{twistchat.wire}. It is built from
C{web/src} by C{npm run build} in C{web/} and committed, so installing twistchat needs
no Node.js; C{tests/test_web_crypto.py} checks that it is exactly what the lockfile
builds. C{static/LICENSES.txt} lists the licences of the code bundled into it.
"""
