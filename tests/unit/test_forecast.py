"""Online demand forecasters (no services)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from online_models.forecast import (
    AutoForecaster,
    DampedTrend,
    RiverForecaster,
    SeasonalMedian,
    SeasonalNaive,
    default_candidates,
)


def weekly(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    profile = [20, 12, 12, 14, 16, 0, 8]
    return [max(profile[t % 7] * (1 + 0.002 * t) + rng.gauss(0, 2), 0.0) for t in range(n)]


@pytest.mark.parametrize("name", list(default_candidates(7)))
def test_every_candidate_learns_and_forecasts_any_horizon(name):
    f = default_candidates(7)[name]
    assert f.forecast(3) == [0.0, 0.0, 0.0]  # nothing learnt yet
    for y in weekly(60):
        f.learn_one(y)
    out = f.forecast(28)
    assert len(out) == 28 and all(math.isfinite(v) for v in out)
    # River convention: the constructor parameters are kept, so clone() rebuilds an equal model.
    assert f.clone()._get_params() == f._get_params()


def test_seasonal_models_repeat_the_weekly_profile_beyond_one_season():
    series = [float(t % 7) for t in range(70)]
    for f in (SeasonalNaive(7), SeasonalMedian(7, 4)):
        for y in series:
            f.learn_one(y)
        assert f.forecast(14) == [float(t % 7) for t in range(70, 84)]


def test_damped_trend_flattens():
    f = DampedTrend(alpha=0.5, beta=0.5, phi=0.8)
    for t in range(30):
        f.learn_one(float(t))
    out = f.forecast(50)
    steps = [b - a for a, b in itertools.pairwise(out)]
    assert steps[0] > 0 and steps[-1] < 0.01 * steps[0]


def test_auto_picks_the_better_models_and_its_interval_covers():
    f = AutoForecaster(season=7)
    data = weekly(200)
    for y in data[:172]:
        f.learn_one(y)
    # A weekly profile: a seasonal model is among those chosen, not only the trend model.
    assert set(f.chosen()) & {"seasonal_median", "seasonal_naive", "holt_winters", "snarimax"}, f.chosen()
    lo, hi = f.interval(28, level=0.95)
    covered = sum(low <= y <= high for low, y, high in zip(lo, data[172:], hi, strict=True))
    assert covered >= 24
    widths = [b - a for a, b in zip(lo, hi, strict=True)]
    assert widths[-1] > widths[0]
    assert all(v >= 0 for v in f.forecast(28))


def test_river_forecaster_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown River forecaster"):
        RiverForecaster("prophet")
