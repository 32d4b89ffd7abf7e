"""
The client does not depend on the server package: the pieces both use live in
neutral modules, and the old names stay importable from the server.
"""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_nothing_from_the_server() -> None:
    code = (
        "import sys, twistchat.client, twistchat.client.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('twistchat.server')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_old_names_still_importable() -> None:
    from twistchat.ratelimit import TokenBucket
    from twistchat.server.limits import TokenBucket as ServerBucket
    from twistchat.server.tls import tls_exporter as server_exporter
    from twistchat.tlsbinding import tls_exporter

    assert ServerBucket is TokenBucket
    assert server_exporter is tls_exporter


def test_token_bucket() -> None:
    from twistchat.ratelimit import TokenBucket

    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert bucket.take(100.0) and bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)
