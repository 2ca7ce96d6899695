"""Customer-lifetime signals for CRM: BG/NBD purchase forecasts, churn risk and RFM segments.

Everything a worker needs per customer fits in a few numbers that one order updates
(:class:`CustomerState`), so the CRM signals are computed online, per customer, in
constant time:

* :class:`BGNBD` is the beta-geometric/negative-binomial model of Fader, Hardie and
  Lee (2005, "Counting your customers the easy way"). Its four population
  parameters ``(r, alpha, a, b)`` are fitted offline by maximum likelihood (scipy)
  on the per-customer sufficient statistics ``x`` (repeat purchases), ``t_x`` (time
  of the last purchase since the first) and ``T`` (time since the first purchase);
  predictions for one customer are then closed-form (one Gauss hypergeometric
  function).
* ``churn risk = 1 - P(alive)``, BG/NBD's probability that the customer has not
  silently left.
* :class:`RFMScorer` scores recency, frequency and monetary value 1-5 against
  population quintiles, and :func:`rfm_segment` names the segment.

Purchases on the same UTC calendar day count as one purchase occasion, as in the
BG/NBD literature (and ``lifetimes``' ``summary_data_from_transaction_data``). Time
is measured in ``unit`` seconds (a week by default) everywhere.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x, t_x, T = simulate_bgnbd(2000, r=0.5, alpha=4.0, a=0.8, b=2.5, T=40.0, rng=rng)
>>> model = BGNBD().fit(x, t_x, T)
>>> 0.2 < model.r < 1.0 and 1.0 < model.alpha < 10.0
True
>>> # a frequent buyer seen recently is likely alive; the same one silent for 30 weeks is not
>>> bool(model.p_alive(10, 39.0, 40.0) > 0.9 > model.p_alive(10, 10.0, 40.0))
True
>>> s = CustomerState()
>>> for day in (0, 10, 30):
...     s.update(day * DAY, 25.0)
>>> s.frequency, round(s.recency_t(30 * DAY), 3), round(s.age(44 * DAY), 1)
(2, 4.286, 6.3)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special

DAY = 86_400.0
WEEK = 7 * DAY

#: The segment names :func:`rfm_segment` returns.
SEGMENTS = ("new", "champions", "loyal", "at_risk", "hibernating", "needs_attention")


def _seconds(ts: float | dt.datetime | dt.date) -> float:
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        return ts.timestamp()
    if isinstance(ts, dt.date):
        return dt.datetime(ts.year, ts.month, ts.day, tzinfo=dt.UTC).timestamp()
    return float(ts)


@dataclass
class CustomerState:
    """One customer's purchase summary, updated by each order in O(1).

    ``purchase_days`` counts distinct UTC days with an order; ``frequency`` (BG/NBD's
    ``x``) is that minus one, the number of *repeat* purchase occasions. An order
    that arrives late still counts; it is a new occasion unless it falls on the day of
    the first or the last order (the state keeps no list of days, so a late order on
    another day that already had one is counted twice: orders are expected roughly in
    time order).

    Examples
    --------
    >>> s = CustomerState()
    >>> s.update(dt.datetime(2024, 1, 1), 10.0)
    >>> s.update(dt.datetime(2024, 1, 1, 18), 5.0)     # same day: same purchase occasion
    >>> s.update(dt.datetime(2024, 1, 15), 30.0)
    >>> s.frequency, s.n_orders, s.total_value, s.mean_value
    (1, 3, 45.0, 15.0)
    >>> s.summary(dt.datetime(2024, 1, 29))             # (x, t_x, T) in weeks
    (1, 2.0, 4.0)
    """

    first_ts: float | None = None
    last_ts: float | None = None
    purchase_days: int = 0
    n_orders: int = 0
    total_value: float = 0.0

    def update(self, order_ts: float | dt.datetime | dt.date, value: float = 0.0) -> None:
        """Fold one order (time as a datetime, a date or Unix seconds; its value) into the state."""
        t = _seconds(order_ts)
        if self.first_ts is None or self.last_ts is None:
            self.first_ts = self.last_ts = t
            self.purchase_days = 1
        else:
            day = math.floor(t / DAY)
            if day not in (math.floor(self.first_ts / DAY), math.floor(self.last_ts / DAY)):
                self.purchase_days += 1
            self.first_ts = min(self.first_ts, t)
            self.last_ts = max(self.last_ts, t)
        self.n_orders += 1
        self.total_value += float(value)

    @property
    def frequency(self) -> int:
        """Repeat purchase occasions (BG/NBD's ``x``)."""
        return max(self.purchase_days - 1, 0)

    @property
    def mean_value(self) -> float:
        """Mean order value (0 before any order)."""
        return self.total_value / self.n_orders if self.n_orders else 0.0

    def recency_t(self, now: float | dt.datetime | dt.date | None = None, unit: float = WEEK) -> float:
        """BG/NBD's ``t_x``: time from the first to the last purchase, in ``unit`` seconds."""
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return (self.last_ts - self.first_ts) / unit

    def age(self, now: float | dt.datetime | dt.date, unit: float = WEEK) -> float:
        """BG/NBD's ``T``: time from the first purchase to ``now``, in ``unit`` seconds."""
        if self.first_ts is None:
            return 0.0
        return max(_seconds(now) - self.first_ts, 0.0) / unit

    def days_since_last(self, now: float | dt.datetime | dt.date) -> float:
        """Days since the last order (the R of RFM); ``inf`` before any order."""
        if self.last_ts is None:
            return math.inf
        return max(_seconds(now) - self.last_ts, 0.0) / DAY

    def summary(self, now: float | dt.datetime | dt.date, unit: float = WEEK) -> tuple[int, float, float]:
        """``(x, t_x, T)`` at ``now`` for :class:`BGNBD`."""
        return self.frequency, self.recency_t(unit=unit), self.age(now, unit)


@dataclass
class BGNBD:
    """The BG/NBD model: population parameters fitted offline, per-customer predictions online.

    Purchases of a living customer are Poisson with a gamma(``r``, ``alpha``) rate; after
    each purchase the customer leaves with a probability drawn from beta(``a``, ``b``).
    ``x``, ``t_x`` and ``T`` may be scalars or arrays (all predictions broadcast).

    Examples
    --------
    >>> m = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)  # Fader et al.'s CDNOW estimates (weeks)
    >>> round(float(m.expected_purchases(39, 2, 30.43, 38.86)), 3)  # their worked example: 1.226
    1.226
    >>> float(m.p_alive(0, 0.0, 30.0)), round(float(m.churn_risk(2, 10.0, 38.0)), 3)
    (1.0, 0.723)
    """

    r: float = 1.0
    alpha: float = 1.0
    a: float = 1.0
    b: float = 1.0
    #: Negative log-likelihood per customer at the fitted parameters (NaN before :meth:`fit`).
    nll: float = math.nan

    @property
    def params(self) -> dict[str, float]:
        """``{"r", "alpha", "a", "b"}``."""
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able) of the parameters; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BGNBD:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: float(d[k]) for k in ("r", "alpha", "a", "b", "nll") if k in d})

    @staticmethod
    def _loglik(
        log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        r, alpha, a, b = np.exp(log_params)
        a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        a2 = special.betaln(a, b + x) - special.betaln(a, b)
        a3 = -(r + x) * np.log(alpha + T)
        has = x > 0
        a4 = np.full_like(a3, -np.inf)
        a4[has] = np.log(a) - np.log(b + x[has] - 1.0) - (r + x[has]) * np.log(alpha + t_x[has])
        return w * (a1 + a2 + np.logaddexp(a3, a4))

    def log_likelihood(self, x: Any, t_x: Any, T: Any) -> float:
        """Total log-likelihood of customers ``(x, t_x, T)`` under the current parameters."""
        xa, ta, Ta = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (x, t_x, T))
        lp = np.log([self.r, self.alpha, self.a, self.b])
        return float(self._loglik(lp, xa, ta, Ta, np.ones_like(xa)).sum())

    def fit(
        self,
        x: Sequence[float] | np.ndarray,
        t_x: Sequence[float] | np.ndarray,
        T: Sequence[float] | np.ndarray,
        penalizer: float = 0.0,
    ) -> BGNBD:
        """Maximum-likelihood fit of ``(r, alpha, a, b)``; returns ``self``.

        Identical ``(x, t_x, T)`` rows are merged and weighted, so the cost grows with
        the number of distinct summaries, not of customers. ``penalizer`` adds
        ``penalizer * sum(params**2)`` to the objective, as ``lifetimes`` does.
        """
        xa, ta, Ta = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        if not (xa.shape == ta.shape == Ta.shape) or xa.size == 0:
            raise ValueError("x, t_x and T must be non-empty arrays of the same shape")
        if (xa < 0).any() or (ta < 0).any() or (ta > Ta + 1e-9).any():
            raise ValueError("need x >= 0 and 0 <= t_x <= T for every customer")
        rows, weights = np.unique(np.stack([xa, ta, Ta], 1), axis=0, return_counts=True)
        ux, ut, uT = rows[:, 0], rows[:, 1], rows[:, 2]
        w = weights.astype(float)
        n = w.sum()

        def objective(lp: np.ndarray) -> float:
            val = -self._loglik(lp, ux, ut, uT, w).sum() / n
            return float(val + penalizer * np.sum(np.exp(lp) ** 2))

        best = None
        for start in ([0.0, np.log(max(Ta.mean(), 1e-3)), 0.0, 0.0], [np.log(0.5), 0.0, np.log(0.5), 0.0]):
            res = optimize.minimize(
                objective,
                np.asarray(start, dtype=float),
                method="Nelder-Mead",
                options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-10},
            )
            res = optimize.minimize(objective, res.x, method="L-BFGS-B")
            if best is None or res.fun < best.fun:
                best = res
        assert best is not None
        self.r, self.alpha, self.a, self.b = (float(v) for v in np.exp(best.x))
        self.nll = float(best.fun)
        return self

    def p_alive(self, x: Any, t_x: Any, T: Any) -> Any:
        """P(the customer is still active | x, t_x, T); 1 for a customer with no repeat purchase."""
        xa, ta, Ta = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        odds = np.where(
            xa > 0,
            self.a
            / np.maximum(self.b + xa - 1.0, 1e-12)
            * ((self.alpha + Ta) / (self.alpha + ta)) ** (self.r + xa),
            0.0,
        )
        return 1.0 / (1.0 + odds)

    def churn_risk(self, x: Any, t_x: Any, T: Any) -> Any:
        """``1 - p_alive``."""
        return 1.0 - self.p_alive(x, t_x, T)

    def expected_purchases(self, t: Any, x: Any, t_x: Any, T: Any) -> Any:
        """Expected purchases in the next ``t`` time units, given ``(x, t_x, T)`` (eq. 10 of the paper)."""
        ta_, xa, txa, Ta = (np.asarray(v, dtype=float) for v in (t, x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, _off_one(self.a), self.b
        z = ta_ / (alpha + Ta + ta_)
        hyp = special.hyp2f1(r + xa, b + xa, a + b + xa - 1.0, z)
        num = (a + b + xa - 1.0) / (a - 1.0) * (1.0 - ((alpha + Ta) / (alpha + Ta + ta_)) ** (r + xa) * hyp)
        den = 1.0 + np.where(
            xa > 0, a / np.maximum(b + xa - 1.0, 1e-12) * ((alpha + Ta) / (alpha + txa)) ** (r + xa), 0.0
        )
        return num / den

    def expected_purchases_new(self, t: Any) -> Any:
        """Expected purchases of a newly acquired customer in ``t`` time units (eq. 9)."""
        ta = np.asarray(t, dtype=float)
        r, alpha, a, b = self.r, self.alpha, _off_one(self.a), self.b
        z = ta / (alpha + ta)
        return (
            (a + b - 1.0)
            / (a - 1.0)
            * (1.0 - (alpha / (alpha + ta)) ** r * special.hyp2f1(r, b, a + b - 1.0, z))
        )


def _off_one(a: float) -> float:
    """``a`` moved off 1, where the closed forms divide 0 by 0 (their limit is continuous)."""
    return a if abs(a - 1.0) > 1e-7 else 1.0 + 1e-7


def simulate_bgnbd(
    n: int, r: float, alpha: float, a: float, b: float, T: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, t_x, T)`` of ``n`` customers simulated from BG/NBD, each observed for ``T`` units.

    For tests and examples: each customer's rate is gamma(``r``, scale ``1/alpha``) and
    dropout probability beta(``a``, ``b``); after every purchase the customer leaves
    with that probability.
    """
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    xs = np.zeros(n)
    txs = np.zeros(n)
    for i in range(n):
        t, x = 0.0, 0
        while True:
            t += rng.exponential(1.0 / lam[i]) if lam[i] > 0 else math.inf
            if t > T:
                break
            x += 1
            txs[i] = t
            if rng.random() < p[i]:
                break
        xs[i] = x
    return xs, txs, np.full(n, float(T))


@dataclass
class RFMScorer:
    """Recency, frequency and monetary scores 1-5 against population quintile edges.

    :meth:`fit` learns the edges offline from a population; :meth:`score` then scores
    one customer in O(1). A higher score is better on every axis (recent, frequent,
    high value).

    Examples
    --------
    >>> sc = RFMScorer().fit(days_since_last=range(1, 101), orders=range(1, 101), mean_value=range(1, 101))
    >>> sc.score(days_since_last=3, orders=95, mean_value=50)
    (5, 5, 3)
    """

    recency_edges: list[float] = field(default_factory=lambda: [14.0, 30.0, 60.0, 120.0])
    frequency_edges: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    monetary_edges: list[float] = field(default_factory=lambda: [20.0, 40.0, 80.0, 160.0])

    def fit(
        self,
        days_since_last: Sequence[float] | np.ndarray | range,
        orders: Sequence[float] | np.ndarray | range,
        mean_value: Sequence[float] | np.ndarray | range,
    ) -> RFMScorer:
        """Set the edges to the 20/40/60/80 % quantiles of a population; returns ``self``."""
        q = [20, 40, 60, 80]
        self.recency_edges = [float(v) for v in np.percentile(np.asarray(days_since_last, float), q)]
        self.frequency_edges = [float(v) for v in np.percentile(np.asarray(orders, float), q)]
        self.monetary_edges = [float(v) for v in np.percentile(np.asarray(mean_value, float), q)]
        return self

    def score(self, days_since_last: float, orders: float, mean_value: float) -> tuple[int, int, int]:
        """``(R, F, M)`` scores, each 1-5."""
        r = 5 - int(np.searchsorted(self.recency_edges, days_since_last, side="left"))
        f = 1 + int(np.searchsorted(self.frequency_edges, orders, side="left"))
        m = 1 + int(np.searchsorted(self.monetary_edges, mean_value, side="left"))
        return r, f, m

    def score_state(self, state: CustomerState, now: float | dt.datetime | dt.date) -> tuple[int, int, int]:
        """:meth:`score` of a :class:`CustomerState` at ``now``."""
        return self.score(state.days_since_last(now), state.n_orders, state.mean_value)


def rfm_segment(recency: int, frequency: int, n_orders: int | None = None) -> str:
    """Name the RFM segment of a customer from the R and F scores (1-5, 5 best).

    Rules, first match wins:

    * ``new``: one order so far (``n_orders == 1``) and recent (R >= 4);
    * ``champions``: R >= 4 and F >= 4;
    * ``loyal``: R >= 3 and F >= 3;
    * ``at_risk``: R <= 2 and F >= 3 (used to buy often, silent lately);
    * ``hibernating``: R <= 2 and F <= 2;
    * ``needs_attention``: everything else (recent but infrequent, middling).

    >>> [rfm_segment(5, 1, 1), rfm_segment(5, 5), rfm_segment(3, 4), rfm_segment(1, 5), rfm_segment(1, 1),
    ...  rfm_segment(4, 2, 3)]
    ['new', 'champions', 'loyal', 'at_risk', 'hibernating', 'needs_attention']
    """
    for name, v in (("recency", recency), ("frequency", frequency)):
        if not 1 <= v <= 5:
            raise ValueError(f"{name} score must be 1..5, got {v}")
    if n_orders == 1 and recency >= 4:
        return "new"
    if recency >= 4 and frequency >= 4:
        return "champions"
    if recency >= 3 and frequency >= 3:
        return "loyal"
    if recency <= 2 and frequency >= 3:
        return "at_risk"
    if recency <= 2:
        return "hibernating"
    return "needs_attention"


@dataclass(frozen=True)
class CRMSignals:
    """What the CRM agent publishes for one customer after an order."""

    expected_purchases: float
    p_alive: float
    churn_risk: float
    rfm: tuple[int, int, int]
    segment: str


def crm_signals(
    state: CustomerState,
    model: BGNBD,
    scorer: RFMScorer,
    now: float | dt.datetime | dt.date,
    horizon: float = 13.0,
    unit: float = WEEK,
) -> CRMSignals:
    """BG/NBD forecast over ``horizon`` units, churn risk, RFM scores and segment of one customer.

    >>> s = CustomerState()
    >>> s.update(0.0, 20.0); s.update(10 * WEEK, 40.0)
    >>> sig = crm_signals(s, BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426), RFMScorer(), now=12 * WEEK)
    >>> sig.segment, sig.rfm, round(sig.churn_risk, 3)
    ('needs_attention', (5, 2, 2), 0.278)
    """
    x, t_x, T = state.summary(now, unit)
    p = float(model.p_alive(x, t_x, T))
    rfm = scorer.score_state(state, now)
    return CRMSignals(
        expected_purchases=float(model.expected_purchases(horizon, x, t_x, T)),
        p_alive=p,
        churn_risk=1.0 - p,
        rfm=rfm,
        segment=rfm_segment(rfm[0], rfm[1], state.n_orders),
    )
