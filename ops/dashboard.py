"""The lag dashboard: a time series kept by the worker, and the page that draws it.

:class:`Timeline` turns, every few seconds, the worker's own Prometheus text
and the lag monitor's snapshot into one point: lag per partition, lag in
seconds per group, throughput per topic, p50/p99 latency per agent (from
histogram bucket deltas), dead letters per second and online-model quality.
It keeps the last ``maxlen`` points in memory.

The page (``/dashboard``) is plain HTML and JavaScript drawing with uPlot,
which ``make bootstrap`` takes from the npm registry into
``ops/static/vendor/``; the worker serves it, so the dashboard needs no
internet and no CDN.

Examples
--------
>>> text = '''x_bucket{agent="a",le="0.001"} 5
... x_bucket{agent="a",le="0.01"} 10
... x_bucket{agent="a",le="+Inf"} 10
... '''
>>> buckets = histogram_buckets(text, "x", "agent")
>>> buckets["a"]
[(0.001, 5.0), (0.01, 10.0), (inf, 10.0)]
>>> quantile_from_buckets([(0.001, 0.0), (0.01, 0.0), (float("inf"), 0.0)], buckets["a"], 0.5)
0.001
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFNa]+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line.strip())
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def histogram_buckets(text: str, name: str, key: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative buckets ``[(le, count)]`` of histogram ``name``, per value of label ``key``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for n, labels, v in parse_samples(text):
        if n == name + "_bucket" and key in labels:
            le = labels.get("le", "+Inf")
            out.setdefault(labels[key], []).append((math.inf if le == "+Inf" else float(le), v))
    for rows in out.values():
        rows.sort()
    return out


def quantile_from_buckets(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of the observations between two scrapes."""
    prev = dict(before)
    diff = [(le, c - prev.get(le, 0.0)) for le, c in after]
    if not diff or diff[-1][1] <= 0:
        return None
    total = diff[-1][1]
    for le, c in diff:
        if c >= q * total:
            return le if math.isfinite(le) else None
    return None


class Timeline:
    """The dashboard's time series (see the module docstring)."""

    def __init__(self, maxlen: int = 900) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._prev_text: str | None = None
        self._prev_t = 0.0

    def add(
        self,
        metrics_text: str,
        lag: dict[str, Any] | None,
        alerts: list[dict[str, Any]],
        now: float | None = None,
    ) -> dict[str, Any]:
        """Build and keep one point from the current metrics text and lag snapshot."""
        now = time.time() if now is None else now
        point: dict[str, Any] = {"ts": now}
        samples = parse_samples(metrics_text)
        prev = parse_samples(self._prev_text) if self._prev_text else []
        dt = now - self._prev_t if self._prev_text else 0.0

        def totals(rows: list[tuple[str, dict[str, str], float]], name: str, key: str) -> dict[str, float]:
            acc: dict[str, float] = {}
            for n, labels, v in rows:
                if n == name:
                    k = labels.get(key, "")
                    acc[k] = acc.get(k, 0.0) + v
            return acc

        def rates(name: str, key: str) -> dict[str, float]:
            if dt <= 0:
                return {}
            a, b = totals(prev, name, key), totals(samples, name, key)
            return {k: max(v - a.get(k, 0.0), 0.0) / dt for k, v in b.items()}

        point["events_in_per_s"] = rates("shopstream_events_in_total", "topic")
        point["events_out_per_s"] = rates("shopstream_events_out_total", "topic")
        point["dlq_per_s"] = sum(rates("shopstream_dlq_events_total", "reason").values()) if dt > 0 else 0.0
        latency: dict[str, dict[str, float | None]] = {}
        if self._prev_text:
            b0 = histogram_buckets(self._prev_text, "shopstream_processing_seconds", "agent")
            b1 = histogram_buckets(metrics_text, "shopstream_processing_seconds", "agent")
            for agent, rows in b1.items():
                p50 = quantile_from_buckets(b0.get(agent, []), rows, 0.5)
                p99 = quantile_from_buckets(b0.get(agent, []), rows, 0.99)
                latency[agent] = {
                    "p50_ms": None if p50 is None else 1e3 * p50,
                    "p99_ms": None if p99 is None else 1e3 * p99,
                }
        point["latency"] = latency
        quality = {}
        for n, labels, v in samples:
            if n == "shopstream_model_quality":
                quality[f"{labels.get('model')}:{labels.get('metric')}"] = v
        point["quality"] = quality
        lag_by_partition: dict[str, int] = {}
        lag_s_by_group: dict[str, float] = {}
        statuses: dict[str, str] = {}
        for g in (lag or {}).get("groups", []):
            statuses[g["group"]] = g["status"]
            lag_s_by_group[g["group"]] = g["max_lag_seconds"]
            for p in g["partitions"]:
                lag_by_partition[f"{g['group']} {p['topic']}:{p['partition']}"] = p["lag"]
        point["lag"] = lag_by_partition
        point["lag_seconds"] = lag_s_by_group
        point["status"] = statuses
        self.points.append(point)
        self._prev_text, self._prev_t = metrics_text, now
        return point

    def data(self, lag: dict[str, Any] | None, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        """What ``/dashboard/data`` returns: the points, the current lag table and recent alerts."""
        return {"points": list(self.points), "lag": lag or {"groups": []}, "alerts": alerts[-50:]}


def vendor_file(name: str) -> bytes | None:
    """A vendored static file (the chart library), or None if ``make bootstrap`` has not fetched it."""
    path = VENDOR / name
    if path.parent != VENDOR or not path.is_file():
        return None
    return path.read_bytes()


def page() -> bytes:
    """The dashboard HTML."""
    return (STATIC / "dashboard.html").read_bytes()
