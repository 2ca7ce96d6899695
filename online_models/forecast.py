"""Online demand forecasters per SKU, and a selector that picks the best by rolling error.

Every forecaster follows River's ``time_series.base.Forecaster`` protocol:
``learn_one(y)`` when a demand window closes, ``forecast(horizon)`` for the
next ``horizon`` windows.

* :class:`SeasonalNaive`: the value one season ago;
* :class:`DampedTrend`: additive damped-trend exponential smoothing (Gardner &
  McKenzie), fixed smoothing constants, O(1) per update;
* :class:`SeasonalMedian`: per position in the season, the median of the last
  ``seasons`` values, scaled by a smoothed level: robust to the spikes of
  retail demand;
* River's :class:`~river.time_series.HoltWinters` and
  :class:`~river.time_series.SNARIMAX` through :class:`RiverForecaster`;
* :class:`AutoForecaster`: runs several of them, scores each one's
  one-step-ahead forecast before it learns (prequential), and forecasts with
  the combination of the ``top`` candidates with the lowest exponentially
  weighted absolute error. Prediction intervals come from the chosen
  combination's own one-step errors, widened with the square root of the
  horizon.

Examples
--------
>>> f = AutoForecaster(season=7)
>>> for t in range(70):
...     f.learn_one(10.0 + (5.0 if t % 7 == 0 else 0.0))
>>> [round(v, 1) for v in f.forecast(7)]
[15.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
>>> lo, hi = f.interval(1, level=0.95)
>>> lo[0] <= 15.0 <= hi[0]
True
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

from river.time_series.base import Forecaster


class SeasonalNaive(Forecaster):
    """The value observed one season before."""

    def __init__(self, season: int = 7) -> None:
        self.season = season
        self.history: deque[float] = deque(maxlen=season)

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self.history.append(float(y))

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        h = list(self.history)
        if not h:
            return [0.0] * horizon
        if len(h) < self.season:
            return [h[-1]] * horizon
        return [h[i % self.season] for i in range(horizon)]


class DampedTrend(Forecaster):
    """Additive damped-trend exponential smoothing with fixed constants."""

    def __init__(self, alpha: float = 0.1, beta: float = 0.02, phi: float = 0.9) -> None:
        self.alpha = alpha
        self.beta = beta
        self.phi = phi
        self.level: float | None = None
        self.trend = 0.0

    def learn_one(self, y: float, x: dict | None = None) -> None:
        y = float(y)
        if self.level is None:
            self.level = y
            return
        prev = self.level
        self.level = self.alpha * y + (1 - self.alpha) * (prev + self.phi * self.trend)
        self.trend = self.beta * (self.level - prev) + (1 - self.beta) * self.phi * self.trend

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        if self.level is None:
            return [0.0] * horizon
        out, damp = [], 0.0
        for h in range(1, horizon + 1):
            damp += self.phi**h
            out.append(self.level + damp * self.trend)
        return out


class SeasonalMedian(Forecaster):
    """Median of the last ``seasons`` values at each position of the season."""

    def __init__(self, season: int = 7, seasons: int = 8) -> None:
        self.season = season
        self.seasons = seasons
        self.history: deque[float] = deque(maxlen=season * seasons)
        self.n = 0

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self.history.append(float(y))
        self.n += 1

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        h = list(self.history)
        if not h:
            return [0.0] * horizon
        m, n_hist = self.season, len(h)
        out = []
        for step in range(horizon):
            # h[j] is ``n_hist - j`` steps back; the same position of the season as
            # step ``step`` ahead sits at j = n_hist + step - m*k for k = 1, 2, ...
            first = n_hist + step - m * (step // m + 1)
            vals = h[first::-m] if first >= 0 else []
            out.append(statistics.median(vals) if vals else statistics.median(h))
        return out


class RiverForecaster(Forecaster):
    """A River forecaster, fed only once it has seen ``warmup`` values (River's models need a start)."""

    def __init__(self, kind: str = "holtwinters", season: int = 7, warmup: int = 14) -> None:
        self.kind = kind
        self.season = season
        self.warmup = warmup
        self.model = self._make()
        self.n = 0
        self.last = 0.0

    def _make(self) -> Any:
        from river import time_series

        if self.kind == "holtwinters":
            return time_series.HoltWinters(alpha=0.2, beta=0.02, gamma=0.2, seasonality=self.season)
        if self.kind == "snarimax":
            # A seasonal AR(1) + MA(1); richer orders diverged on sparse retail demand.
            return time_series.SNARIMAX(p=0, d=0, q=0, m=self.season, sp=1, sd=0, sq=1)
        raise ValueError(f"unknown River forecaster {self.kind!r}")

    def learn_one(self, y: float, x: dict | None = None) -> None:
        self.model.learn_one(float(y))
        self.n += 1
        self.last = float(y)

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        if self.n < self.warmup:
            return [self.last] * horizon
        try:
            out = [float(v) for v in self.model.forecast(horizon=horizon)]
        except (ValueError, ZeroDivisionError, OverflowError):
            return [self.last] * horizon
        return [v if math.isfinite(v) else self.last for v in out]


def default_candidates(season: int = 7) -> dict[str, Forecaster]:
    """The forecasters :class:`AutoForecaster` chooses from."""
    return {
        "seasonal_naive": SeasonalNaive(season),
        "damped_trend": DampedTrend(),
        "seasonal_median": SeasonalMedian(season),
        "holt_winters": RiverForecaster("holtwinters", season),
        "snarimax": RiverForecaster("snarimax", season),
    }


class AutoForecaster(Forecaster):
    """Per-SKU model choice by rolling one-step error (see the module docstring)."""

    def __init__(
        self, season: int = 7, top: int = 2, decay: float = 0.05, candidates: dict | None = None
    ) -> None:
        self.season = season
        self.top = top
        self.decay = decay
        self.candidates: dict[str, Forecaster] = candidates or default_candidates(season)
        self.errors: dict[str, float] = dict.fromkeys(self.candidates, 0.0)
        self.residuals: deque[float] = deque(maxlen=60)
        self.n = 0

    def chosen(self) -> list[str]:
        """The candidates whose combination forecasts now (lowest rolling error first)."""
        if self.n < 2 * self.season:
            return ["seasonal_median", "damped_trend"][: self.top]
        return sorted(self.errors, key=self.errors.__getitem__)[: self.top]

    def learn_one(self, y: float, x: dict | None = None) -> None:
        y = float(y)
        if self.n > 0:
            one = {name: f.forecast(1)[0] for name, f in self.candidates.items()}
            for name, pred in one.items():
                self.errors[name] = (1 - self.decay) * self.errors[name] + self.decay * abs(
                    y - max(pred, 0.0)
                )
            combo = sum(max(one[n], 0.0) for n in self.chosen()) / self.top
            self.residuals.append(y - combo)
        for f in self.candidates.values():
            f.learn_one(y)
        self.n += 1

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        names = self.chosen()
        paths = [self.candidates[n].forecast(horizon) for n in names]
        return [max(sum(p[h] for p in paths) / len(paths), 0.0) for h in range(horizon)]

    def sigma(self) -> float:
        """Standard deviation of the one-step errors of the forecasts made so far."""
        r = list(self.residuals)
        return statistics.pstdev(r) if len(r) >= 2 else (abs(r[0]) if r else 0.0)

    def interval(self, horizon: int, level: float = 0.95) -> tuple[list[float], list[float]]:
        """Lower and upper bounds for steps 1..``horizon`` (normal errors; sd grows with sqrt(h))."""
        z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
        mean = self.forecast(horizon)
        s = self.sigma()
        lo = [max(m - z * s * math.sqrt(h + 1), 0.0) for h, m in enumerate(mean)]
        hi = [m + z * s * math.sqrt(h + 1) for h, m in enumerate(mean)]
        return lo, hi
