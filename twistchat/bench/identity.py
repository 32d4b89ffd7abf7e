"""
The client's CPU per message with and without identity signatures.

Run C{python -m twistchat.bench.identity [--rounds N] [--text-bytes B]}: it prints,
in microseconds per message (the median of five batches of N), what a sender spends
to seal a version 1 text and to sign and seal a version 2 envelope
(L{twistchat.crypto.signed.seal_signed}), and what a receiver spends to open each
(L{twistchat.crypto.signed.open_message}: for version 2, the GCM pass plus the
signature check). Nothing touches the network; the figures are CPU on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

from twistchat.crypto.identity import Identity
from twistchat.crypto.seal import Opener, Sealer
from twistchat.crypto.signed import NO_HASH, Fields, open_message, seal_signed

__all__ = ["main", "measure"]

_BATCHES = 5


def _per_call_us(batch: Callable[[], None], rounds: int) -> float:
    """
    The median over L{_BATCHES} runs of C{batch} (which does C{rounds} operations)
    of the time per operation, in microseconds.
    """
    times = []
    for _ in range(_BATCHES):
        start = time.perf_counter()
        batch()
        times.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(times)


def measure(rounds: int = 1000, text_bytes: int = 100) -> dict[str, float]:
    """
    Microseconds per message for: C{seal_v1_us} (seal a text), C{sign_seal_us} (sign
    and seal an envelope), C{open_v1_us} (open a text), C{open_verify_us} (open and
    verify an envelope), C{sign_only_us} and C{verify_overhead_us} (the difference
    the signature makes to each side).
    """
    text = "x" * text_bytes
    key = bytes(32)
    identity = Identity.generate()
    fields = Fields(seq=2, prev=b"\x01" * 32, seen=NO_HASH, text=text)
    total = _BATCHES * rounds
    sealer_v1 = Sealer(key, "bench", "alice")
    sealer_v2 = Sealer(key, "bench", "alice")
    v1 = [sealer_v1.seal(text) for _ in range(total)]
    v2 = [seal_signed(sealer_v2, identity, dataclasses.replace(fields, seq=i + 2))
          for i in range(total)]

    def seal_v1() -> None:
        sealer = Sealer(key, "bench", "alice")
        for _ in range(rounds):
            sealer.seal(text)

    def sign_seal() -> None:
        sealer = Sealer(key, "bench", "alice")
        for _ in range(rounds):
            seal_signed(sealer, identity, fields)

    def opener(items: list[tuple[bytes, int, bytes]]) -> Callable[[], None]:
        batches = iter(range(_BATCHES))

        def run() -> None:
            b = next(batches)
            receiver = Opener(key, "bench")
            for sid, n, ciphertext in items[b * rounds : (b + 1) * rounds]:
                open_message(receiver, "alice", sid, n, ciphertext)

        return run

    result = {
        "seal_v1_us": _per_call_us(seal_v1, rounds),
        "sign_seal_us": _per_call_us(sign_seal, rounds),
        "open_v1_us": _per_call_us(opener(v1), rounds),
        "open_verify_us": _per_call_us(
            opener([(s.sid, s.n, s.ciphertext) for s in v2]), rounds
        ),
    }
    result["sign_only_us"] = result["sign_seal_us"] - result["seal_v1_us"]
    result["verify_overhead_us"] = result["open_verify_us"] - result["open_v1_us"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twistchat.bench.identity",
        description="CPU per message of sealing/opening with and without identity signatures.",
    )
    parser.add_argument("--rounds", type=int, default=1000, help="messages per batch (5 batches)")
    parser.add_argument("--text-bytes", type=int, default=100, help="text length in bytes")
    args = parser.parse_args(argv)
    if args.rounds < 1 or not 0 <= args.text_bytes <= 16384:
        parser.error("--rounds must be positive and --text-bytes within 0..16384")
    result = measure(args.rounds, args.text_bytes)
    print(f"per message, {args.text_bytes}-byte text, median of {_BATCHES} x {args.rounds}:")
    for name, value in result.items():
        print(f"  {name:20} {value:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
