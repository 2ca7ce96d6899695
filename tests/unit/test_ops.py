"""Alert hysteresis, drift detection, lag evaluation rules and the dashboard's time series (no services)."""

from __future__ import annotations

import random

from ops.alerts import AlertRules
from ops.dashboard import Timeline
from ops.lag import Commit, OffsetHistory, evaluate, parse_offset_commit


def test_group_status_alerts_fire_once_and_resolve_after_hysteresis():
    rules = AlertRules(fire_after=2, clear_after=3)
    seq = ["OK", "STOP", "OK", "STOP", "STOP", "STOP", "OK", "STOP", "OK", "OK", "OK"]
    out = [a for s in seq for a in rules.group_status("g", s)]
    assert [(a.status, a.severity) for a in out] == [("firing", "critical"), ("resolved", "info")]
    assert out[0].kind == "group_status" and out[0].subject == "g" and "STOP" in out[0].message


def test_threshold_band_does_not_flap():
    rules = AlertRules(fire_after=1, clear_after=1)
    values = [10, 35, 29, 25, 31, 21, 19, 40]
    statuses = [
        a.status for v in values for a in rules.threshold("lag_seconds", "g", v, fire_at=30, clear_at=20)
    ]
    assert statuses == ["firing", "resolved", "firing"]


def test_adwin_flags_a_drop_in_hit_rate():
    rules = AlertRules(drift_cooldown=500)
    rng = random.Random(0)
    alerts = []
    for n in range(6000):
        p_hit = 0.4 if n < 3000 else 0.05
        alerts += rules.model_error("recs", 0.0 if rng.random() < p_hit else 1.0)
    firing = [a for a in alerts if a.status == "firing"]
    assert firing and firing[0].kind == "model_drift"
    assert all(a.ts for a in alerts)


def test_burrow_rules():
    ok = [Commit(float(t), 100 * t, 0) for t in range(5)]
    assert evaluate(ok, lag=0, now=5.0, stop_after_s=10) == "OK"
    growing = [Commit(float(t), 100 * t, 10 * (t + 1)) for t in range(5)]
    assert evaluate(growing, lag=60, now=5.0, stop_after_s=10) == "WARNING"
    assert evaluate(growing, lag=60, now=30.0, stop_after_s=10) == "STOP"
    shrinking = [Commit(float(t), 100 * t, 50 - 10 * t) for t in range(5)]
    assert evaluate(shrinking, lag=10, now=5.0, stop_after_s=10) == "OK"
    assert evaluate([], lag=5, now=1.0, stop_after_s=10) == "STOP"


def test_offset_history_collapses_flat_stretches_and_stays_bounded():
    h = OffsetHistory(maxlen=5)
    for t in range(10):
        h.add(float(t), 100)
    assert list(h.end) == [100, 100] and list(h.ts) == [0.0, 9.0]
    for t in range(10, 30):
        h.add(float(t), 100 + 10 * t)
    assert len(h.end) == 5
    assert h.rate() == 10.0


def test_parse_offset_commit_v4_and_tombstone():
    import struct

    key = struct.pack(">hh1sh2si", 1, 1, b"g", 2, b"tp", 0)
    # version 4 (flexible): offset, leader epoch, compact string "", commit ts, no tagged fields
    value = struct.pack(">hqi", 4, 7, 0) + bytes([1]) + struct.pack(">q", 2_000) + bytes([0])
    assert parse_offset_commit(key, value) == ("g", "tp", 0, 7, 2.0)
    assert parse_offset_commit(key, None)[3] is None
    assert parse_offset_commit(struct.pack(">hh1s", 2, 1, b"g"), b"...") is None


def test_timeline_rates_and_latency_quantiles():
    tl = Timeline()

    def text(n_in: int, fast: int, total: int) -> str:
        return (
            f'shopstream_events_in_total{{topic="c"}} {n_in}\n'
            f'shopstream_processing_seconds_bucket{{agent="a",le="0.001"}} {fast}\n'
            f'shopstream_processing_seconds_bucket{{agent="a",le="+Inf"}} {total}\n'
        )

    text0, text1 = text(100, 0, 0), text(300, 90, 100)
    lag = {
        "groups": [
            {
                "group": "g",
                "status": "OK",
                "max_lag_seconds": 1.5,
                "partitions": [{"topic": "c", "partition": 0, "lag": 7}],
            }
        ]
    }
    tl.add(text0, lag, [], now=0.0)
    p = tl.add(text1, lag, [], now=2.0)
    assert p["events_in_per_s"] == {"c": 100.0}
    assert (
        p["latency"]["a"]["p50_ms"] == 1.0 and p["latency"]["a"]["p99_ms"] is None
    )  # p99 above the last bound
    assert p["lag"] == {"g c:0": 7} and p["status"] == {"g": "OK"}


def test_loop_watch_sees_a_blocked_loop_and_gc_pauses() -> None:
    import asyncio
    import gc
    import time

    from ops.loopwatch import LoopWatch
    from ops.metrics import Metrics

    m = Metrics()
    watch = LoopWatch(m, interval_s=0.005)

    async def main() -> None:
        watch.install_gc_hook()
        task = asyncio.ensure_future(watch.run())
        await asyncio.sleep(0.03)
        time.sleep(0.06)  # a callback that holds the loop for 60 ms
        await asyncio.sleep(0.03)
        gc.collect()
        task.cancel()
        watch.remove_gc_hook()

    asyncio.run(main())
    assert watch.max_lag_s >= 0.05
    text = m.render().decode()
    over_50ms = [ln for ln in text.splitlines() if ln.startswith("shopstream_event_loop_lag_seconds_bucket")]
    below = {ln.split('le="')[1].split('"')[0]: float(ln.rpartition(" ")[2]) for ln in over_50ms}
    assert below["+Inf"] - below["0.05"] >= 1  # the stall is in the histogram
    assert below["0.005"] >= 1  # and so are the ordinary, punctual ticks
    from shopstream.procs import metric_value

    assert metric_value(text, "shopstream_gc_pause_seconds_count", {"generation": "2"}) >= 1
