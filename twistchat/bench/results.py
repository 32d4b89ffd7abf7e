"""
Results of twistchat-bench: the median over repeated runs, twistchat's
figures as ratios to the baselines', and the table printed before the JSON
lines. A result is a flat dict (one JSON line); nothing here measures.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from twistchat.bench.config import REDIS_SERVERS

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


#: The figures the targets are set on: a result of several runs also keeps
#: each run's (C{each}), in the order the runs were made.
EACH_KEYS = ("p99_ms", "cpu_us_per_delivery", "deliveries_per_s", "rss_kib_per_member",
             "cpu_ms_per_login")


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
    if len(runs) > 1:
        each = {key: [r[key] for r in runs] for key in EACH_KEYS
                if all(isinstance(r.get(key), (int, float)) for r in runs)}
        if each:
            merged["each"] = each
    return merged


#: The servers twistchat's figures are divided by (a variant's also by
#: twistchat's), in the order shown.
BASES = ("bare", "threaded", "before", "twistchat")
#: What the other Redis servers are also compared with (C{vs_redis1}).
REDIS_BASE = "redis1"


def add_ratios(results: list[dict[str, Any]]) -> None:
    """
    Give each twistchat result (and each variant's) C{vs_bare},
    C{vs_threaded}, C{vs_before} (and C{vs_twistchat}; a Redis server's also
    C{vs_redis1}): its figures divided by those of the same setting on that
    server.
    """
    index = {(r["scenario"], r["members"], r.get("rate"), r["server"]): r for r in results}
    for r in results:
        if r["server"] in ("bare", "threaded", "before"):
            continue
        bases = BASES + (REDIS_BASE,) if r["server"] in REDIS_SERVERS else BASES
        for base in bases:
            if base == r["server"]:
                continue
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
    servers = max([10, *(len(r["server"]) for r in results)])
    lines = [f"{'scenario':<{width}} {'server':<{servers}} {'setting':<16} figures"]
    for r in results:
        setting = SETTING[r["scenario"]](r)
        figures = ", ".join(
            f"{m}={r[m]:g}" for m, _ in METRICS[r["scenario"]] if r.get(m) is not None
        )
        for base in (*BASES, REDIS_BASE):
            ratios = r.get(f"vs_{base}")
            if ratios:
                figures += f" | x{base}: " + ", ".join(f"{k}={v:g}" for k, v in ratios.items())
        lines.append(f"{r['scenario']:<{width}} {r['server']:<{servers}} {setting:<16} {figures}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Target:
    """
    One speed target: a figure of one setting, either absolute (C{limit} in
    the figure's unit) or relative (C{limit} times bare's figure).
    """

    label: str
    scenario: str
    metric: str
    limit: float
    #: Whether the figure must be at least (True) or at most (False) the limit.
    at_least: bool
    #: Whether the limit is a ratio to the bare relay's figure.
    vs_bare: bool = False
    members: int | None = None
    rate: float | None = None

    def meets(self, value: float) -> bool:
        """
        Whether C{value} (the figure, or its ratio to bare's) is within the limit.
        """
        return value >= self.limit if self.at_least else value <= self.limit


#: The targets of docs/performance.md, "Targets" (issue 13), in the order
#: printed. The idle target is set at 10,000 members; --targets measures
#: it at the mode's count (the figure per member hardly varies with it).
TARGETS = (
    Target("latency 1000/s into 100: p99 < 10 ms", "latency", "p99_ms", 10, False,
           rate=1000),
    Target("latency 1000/s into 100: CPU/delivery <= 0.4 x bare", "latency",
           "cpu_us_per_delivery", 0.4, False, vs_bare=True, rate=1000),
    Target("latency 200/s into 100: p99 < 10 ms", "latency", "p99_ms", 10, False, rate=200),
    Target("latency 200/s into 100: CPU/delivery <= 0.7 x bare", "latency",
           "cpu_us_per_delivery", 0.7, False, vs_bare=True, rate=200),
    Target("fanout at 10, history on: deliveries/s >= 1.0 x bare", "fanout",
           "deliveries_per_s", 1.0, True, vs_bare=True, members=10),
    Target("fanout at 100, history on: deliveries/s >= 1.0 x bare", "fanout",
           "deliveries_per_s", 1.0, True, vs_bare=True, members=100),
    Target("idle members: <= 24 KiB RSS each", "idle", "rss_kib_per_member", 24, False),
    Target("server CPU per login <= 2 ms", "handshake", "cpu_ms_per_login", 2, False),
)


def _find(results: list[dict[str, Any]], target: Target, server: str) -> dict[str, Any] | None:
    for r in results:
        if (r["scenario"] == target.scenario and r["server"] == server
                and (target.members is None or r["members"] == target.members)
                and (target.rate is None or r.get("rate") == target.rate)):
            return r
    return None


def check_targets(results: list[dict[str, Any]], server: str = "twistchat"
                  ) -> list[dict[str, Any]]:
    """
    Each target against C{server}'s figures and bare's, from the same run.

    @return: per target: its label, the figure, bare's, their ratio, the
        value compared with the limit (the ratio for relative targets),
        C{met} (None when a figure is missing), C{margin} (that value
        divided by the limit), C{each} (that value in each run, or None
        when the runs were not kept) and C{within} (how many of those runs
        were within the limit).
    """
    checked = []
    for target in TARGETS:
        mine, bare = _find(results, target, server), _find(results, target, "bare")
        figure = None if mine is None else mine.get(target.metric)
        base = None if bare is None else bare.get(target.metric)
        ratio = figure / base if figure is not None and base else None
        value = ratio if target.vs_bare else figure
        met = None if value is None else target.meets(value)
        each = _each(target, mine, bare)
        checked.append({
            "target": target.label, "server": server, "figure": figure, "bare": base,
            "vs_bare": None if ratio is None else round(ratio, 3), "met": met,
            "margin": None if value is None else round(value / target.limit, 3),
            "each": each, "within": None if each is None else sum(map(target.meets, each)),
        })
    return checked


def _each(target: Target, mine: dict[str, Any] | None, bare: dict[str, Any] | None
          ) -> list[float] | None:
    """
    The value compared with C{target}'s limit in each run, when the runs
    were kept: a relative target's pairs each run with bare's of the same
    round (the kinds alternate within a round).
    """
    figures = (mine or {}).get("each", {}).get(target.metric)
    if not figures:
        return None
    if not target.vs_bare:
        return list(figures)
    bases = (bare or {}).get("each", {}).get(target.metric)
    if not bases:
        return None
    return [f / b for f, b in zip(figures, bases) if b]


def targets(results: list[dict[str, Any]]) -> str:
    """
    The targets table of a --targets run: one line per target and
    twistchat-like server (twistchat and each variant).
    """
    servers = [s for s in dict.fromkeys(r["server"] for r in results)
               if s not in ("bare", "threaded", "before")]
    lines = ["# targets (figure; bare; figure / bare; value / limit, where < 1 is "
             "better for an upper limit and > 1 for a lower one)"]
    for server in servers:
        for row in check_targets(results, server):
            verdict = {True: "met", False: "MISSED", None: "unmeasured"}[row["met"]]
            numbers = ", ".join(
                f"{k} {row[k]:g}" for k in ("figure", "bare", "vs_bare", "margin")
                if row[k] is not None)
            each = row["each"]
            if each:
                # How near the limit the median is: the runs one by one.
                numbers += (f"; within the limit in {row['within']} of {len(each)} runs "
                            f"({min(each):.3g} to {max(each):.3g})")
            lines.append(f"{server:<10} {verdict:<12} {row['target']}: {numbers}")
    return "\n".join(lines)
