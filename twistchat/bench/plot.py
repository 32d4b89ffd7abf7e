"""
The figure of C{twistchat-bench --plot}: fan-out deliveries per second and
latency p99 of each server (matplotlib, an optional dependency).
"""

from __future__ import annotations

from typing import Any

from twistchat.bench.config import SERVERS
from twistchat.bench.processes import BenchError


def plot(results: list[dict[str, Any]], path: str) -> None:
    """
    Draw the fanout and latency results into the image file C{path}.

    @raise BenchError: when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'twistchat[bench]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, style in zip(SERVERS, ("o-", "s--", "^:")):
        fan = sorted((r["members"], r["deliveries_per_s"]) for r in results
                     if r["scenario"] == "fanout" and r["server"] == kind)
        if fan:
            left.plot(*zip(*fan), style, label=kind)
        lat = sorted((r["rate"], r["p99_ms"]) for r in results
                     if r["scenario"] == "latency" and r["server"] == kind and "p99_ms" in r)
        if lat:
            right.plot(*zip(*lat), style, label=kind)
    left.set(xscale="log", yscale="log", xlabel="members", ylabel="deliveries / s",
             title="fanout: deliveries per second")
    right.set(yscale="log", xlabel="offered messages / s (room of 100)", ylabel="p99 latency (ms)",
              title="latency: p99")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
