"""The loop-lag reading of benchmarks/recs_latency.py, from two real metrics renders."""

from __future__ import annotations

import math

from benchmarks.pipeline import histogram_buckets
from benchmarks.recs_latency import LAG_METRIC, loop_lag
from ops.metrics import Metrics


def test_loop_lag_counts_only_the_ticks_between_the_two_texts():
    m = Metrics()
    for lag in (0.0005, 0.03):  # before the phase: must not count
        m.loop_lag.observe(lag)
    before = m.render().decode()
    for lag in [0.0005] * 90 + [0.008] * 6 + [0.03] * 3 + [0.2]:
        m.loop_lag.observe(lag)
    after = m.render().decode()
    assert histogram_buckets(after, LAG_METRIC)["+Inf"] == 102
    got = loop_lag(before, after)
    assert got["ticks"] == 100
    assert math.isclose(got["share_later_than_5ms"], 0.10)
    assert math.isclose(got["share_later_than_20ms"], 0.04)
    assert math.isclose(got["share_later_than_50ms"], 0.01)
    assert got["p99_le_s"] == 0.05  # the 99th of 100 ticks is in the (0.02, 0.05] bucket


def test_loop_lag_without_ticks_is_nan_not_an_error():
    text = Metrics().render().decode()
    got = loop_lag(text, text)
    assert got["ticks"] == 0 and math.isnan(got["share_later_than_5ms"]) and math.isnan(got["p99_le_s"])
