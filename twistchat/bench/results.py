"""
Results of twistchat-bench: the median over repeated runs, twistchat's
figures as ratios to the baselines', and the table printed before the JSON
lines. A result is a flat dict (one JSON line); nothing here measures.
"""

from __future__ import annotations

import statistics
from typing import Any

#: The figures of each scenario shown in the table (and compared with the
#: baselines), and whether more is better.
METRICS = {
    "fanout": [("deliveries_per_s", True), ("cpu_us_per_delivery", False)],
    "latency": [("p99_ms", False), ("cpu_us_per_delivery", False), ("deliveries_per_s", True)],
    "idle": [("rss_kib_per_member", False), ("admit_seconds", False)],
    "handshake": [("logins_per_s", True), ("cpu_ms_per_login", False)],
    "hardening-idle": [("rss_kib_each", False), ("rss_kib_after", False), ("closed", True)],
    "hardening-slow": [("rss_kib_max", False), ("received_each", True),
                       ("not_reading_lines", True)],
    "hardening-ping": [("dropped_after_s", False)],
    "hardening-guess": [("evaluated", False), ("refused", True)],
    "history": [("msgs_per_s", True), ("cpu_ms_per_1000", False)],
}

#: What each scenario's row says about its setting.
SETTING = {
    "fanout": lambda r: f"N={r['members']} S={r.get('senders')}",
    "latency": lambda r: f"N={r['members']} {r.get('rate', 0):g}/s",
    "idle": lambda r: f"C={r['members']}",
    "handshake": lambda r: "",
    "hardening-idle": lambda r: f"C={r['members']} x{r['waves']}",
    "hardening-slow": lambda r: f"N={r['members']} {r['seconds']:g}s",
    "hardening-ping": lambda r: f"{r['idle_timeout']:g}+{r['ping_timeout']:g}s",
    "hardening-guess": lambda r: f"{r['seconds']:g}s",
    "history": lambda r: f"history={r['history']}",
}

SETTING_KEYS = {"members", "senders", "size", "rate", "room_size", "seconds", "history"}


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One result whose figures are the medians of C{runs}' (runs of one setting).
    """
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if key in SETTING_KEYS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            merged[key] = round(statistics.median(values), 3)
    merged["runs"] = len(runs)
    return merged


def add_ratios(results: list[dict[str, Any]]) -> None:
    """
    Give each twistchat result C{vs_bare}, C{vs_threaded} and C{vs_before}:
    its figures divided by those of the same setting on that server.
    """
    index = {(r["scenario"], r["members"], r.get("rate"), r["server"]): r for r in results}
    for r in results:
        if r["server"] != "twistchat":
            continue
        for base in ("bare", "threaded", "before"):
            other = index.get((r["scenario"], r["members"], r.get("rate"), base))
            if other is None:
                continue
            ratios = {}
            for metric, _ in METRICS[r["scenario"]]:
                a, b = r.get(metric), other.get(metric)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                    ratios[metric] = round(a / b, 3)
            r[f"vs_{base}"] = ratios


def table(results: list[dict[str, Any]]) -> str:
    """
    One line per result: scenario, server, setting, figures and ratios.
    """
    width = max([10, *(len(r["scenario"]) for r in results)])
    lines = [f"{'scenario':<{width}} {'server':<10} {'setting':<16} figures"]
    for r in results:
        setting = SETTING[r["scenario"]](r)
        figures = ", ".join(
            f"{m}={r[m]:g}" for m, _ in METRICS[r["scenario"]] if r.get(m) is not None
        )
        for base in ("bare", "threaded", "before"):
            ratios = r.get(f"vs_{base}")
            if ratios:
                figures += f" | x{base}: " + ", ".join(f"{k}={v:g}" for k, v in ratios.items())
        lines.append(f"{r['scenario']:<{width}} {r['server']:<10} {setting:<16} {figures}")
    return "\n".join(lines)
