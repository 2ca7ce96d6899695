"""Bid pricing with budget pacing.

:class:`PacedLinearBidder` prices an impression as linear bidding does,
``b0 * pCTR / mean pCTR``, times a pacing multiplier ``mu``. After each batch
of auctions it compares spend with the plan (the budget spread evenly over
the expected auctions) and moves ``log mu`` by a gain times the relative
gap: under-spending raises bids, over-spending lowers them. The gain starts
at ``gain`` and decays to ``gain / (1 + decay)`` by the end of the plan. The mean pCTR is
a running mean of the requests seen (started from ``prior_ctr`` with weight
``prior_weight``), so a drift in the CTR model's calibration moves the bids'
scale with it.

Examples
--------
>>> import numpy as np
>>> b = PacedLinearBidder(b0=100.0, budget=1000.0, n_auctions=1000, prior_ctr=0.01)
>>> b.bids(np.array([0.01, 0.02])).round(1).tolist()
[100.0, 200.0]
>>> b.observe(100, 0.0)   # spent nothing of a 100 plan: bid more
>>> b.mu > 1.0
True
"""

from __future__ import annotations

import math
import random
from collections import deque

import numpy as np


class PacedLinearBidder:
    """Linear bidding with a multiplicative pacing controller (see the module docstring)."""

    def __init__(
        self,
        b0: float,
        budget: float,
        n_auctions: int,
        prior_ctr: float,
        prior_weight: float = 5_000.0,
        gain: float = 0.5,
        decay: float = 20.0,
        mu_min: float = 0.05,
        mu_max: float = 20.0,
        max_bid: float | None = None,
    ) -> None:
        if budget <= 0 or n_auctions <= 0 or prior_ctr <= 0:
            raise ValueError("budget, n_auctions and prior_ctr must be positive")
        self.b0 = b0
        self.budget = budget
        self.n_auctions = n_auctions
        self.gain = gain
        self.decay = decay
        self.mu_min, self.mu_max = mu_min, mu_max
        self.max_bid = max_bid
        self.mu = 1.0
        self.spent = 0.0
        self.seen = 0
        self._ctr_sum = prior_ctr * prior_weight
        self._ctr_n = prior_weight

    @property
    def mean_ctr(self) -> float:
        return self._ctr_sum / self._ctr_n

    def bids(self, pctr: np.ndarray) -> np.ndarray:
        """Bids for a batch of requests with predicted CTRs ``pctr`` (0 once the budget is spent)."""
        self._ctr_sum += float(pctr.sum())
        self._ctr_n += len(pctr)
        if self.spent >= self.budget:
            return np.zeros(len(pctr))
        out = self.b0 * self.mu * pctr / self.mean_ctr
        return np.minimum(out, self.max_bid) if self.max_bid is not None else out

    def bid(self, pctr: float) -> float:
        """One request's bid."""
        return float(self.bids(np.array([pctr]))[0])

    def observe(self, auctions: int, cost: float) -> None:
        """Record ``auctions`` more auctions and the ``cost`` won in them; update the pacing multiplier."""
        self.seen += auctions
        self.spent += cost
        self.mu = pacing_step(
            self.mu,
            progress=min(self.seen / self.n_auctions, 1.0),
            share=auctions / max(self.n_auctions, 1000),
            spent=self.spent,
            budget=self.budget,
            gain=self.gain,
            decay=self.decay,
            bounds=(self.mu_min, self.mu_max),
        )


def pacing_step(
    mu: float,
    progress: float,
    share: float,
    spent: float,
    budget: float,
    gain: float,
    decay: float,
    bounds: tuple[float, float],
) -> float:
    """One move of the pacing multiplier ``mu``.

    ``progress`` is how far through the plan we are (0..1), ``share`` the part
    of the plan since the last move. The plan is the budget spread evenly:
    ``budget * progress``. ``log mu`` moves by the relative gap between plan
    and spend, scaled to the share of the plan (1/1000 of it = one unit), with
    a gain that decays as the plan advances: large corrections early, while
    the multiplier finds its level, then a steady hand.

    >>> pacing_step(1.0, 0.5, 0.01, 0.0, 100.0, 0.5, 0.0, (0.1, 10.0)) > 1.0   # behind plan: bid up
    True
    >>> pacing_step(1.0, 0.5, 0.01, 80.0, 100.0, 0.5, 0.0, (0.1, 10.0)) < 1.0  # ahead of plan: bid down
    True
    """
    planned = budget * progress
    gap = (planned - spent) / max(planned, 0.01 * budget)
    step = gain / (1.0 + decay * progress) * gap * share * 1000
    return min(max(mu * math.exp(step), bounds[0]), bounds[1])


class DayPacer:
    """The live pacing controller of one campaign: spend against the day's plan.

    The plan spreads the daily budget evenly over the UTC day (or over
    ``period_s`` seconds from ``start``, for demos and tests). ``update`` is
    called with the campaign's spend of the day, as the budget ledger reports
    it for every worker together, and moves the multiplier with
    :func:`pacing_step`.
    """

    def __init__(
        self,
        gain: float = 0.5,
        decay: float = 0.0,
        bounds: tuple[float, float] = (0.05, 10.0),
        period_s: float = 86_400.0,
        start: float | None = None,
    ) -> None:
        self.gain, self.decay, self.bounds = gain, decay, bounds
        self.period_s = period_s
        self.start = start
        self.mu = 1.0
        self._last: float | None = None

    def progress(self, now: float) -> float:
        """How far through the plan ``now`` is (0..1)."""
        start = self.start if self.start is not None else now - now % 86_400
        return min(max((now - start) / self.period_s, 0.0), 1.0)

    def update(self, budget: float, spent: float, now: float, bids: int = 0) -> float:
        """Move the multiplier by spend against the plan at ``now`` (``bids`` is not used)."""
        prog = self.progress(now)
        if self._last is not None and now > self._last:
            share = (now - self._last) / self.period_s
            self.mu = pacing_step(
                self.mu, max(prog, 1e-3), share, spent, budget, self.gain, self.decay, self.bounds
            )
        self._last = now
        return self.mu


class SelfTuningLinearBidder:
    """Linear bidding whose ``b0`` is re-solved from the market it has seen, to spend on plan.

    Every ``step`` auctions, ``b0`` is set so that, had it been bid over the
    last ``window`` auctions seen, it would have spent at the rate the
    remaining budget allows (remaining budget / remaining auctions), by
    bisection on ``log b0``. The market prices come from the auctions already
    played: a second-price winner learns the price from its win notice, and
    a loser from the ``${AUCTION_MIN_TO_WIN}`` macro of its loss notice
    (OpenRTB 2.6). ``history`` seeds the window (the tuning file) before any
    auction is seen. Bids are ``b0 * pCTR / mean pCTR`` over the window, so a
    shift in the CTR model's scale moves ``b0``'s meaning with it.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> hist = np.column_stack([rng.beta(2, 300, 5000), rng.gamma(2.0, 40.0, 5000)])
    >>> b = SelfTuningLinearBidder(budget=1000.0, n_auctions=10_000, history=hist)
    >>> b.retune()
    >>> round(float((hist[:, 1] * (b.bids(hist[:, 0]) >= hist[:, 1])).mean()), 3)  # spends 0.1 per auction
    0.1
    """

    def __init__(
        self,
        budget: float,
        n_auctions: int,
        history: np.ndarray,
        window: int = 100_000,
        step: int = 1000,
        bounds: tuple[float, float] = (0.01, 1e5),
    ) -> None:
        if budget <= 0 or n_auctions <= 0 or len(history) == 0:
            raise ValueError("budget, n_auctions and history must be positive / non-empty")
        self.budget = budget
        self.n_auctions = n_auctions
        self.window = window
        self.step = step
        self.bounds = bounds
        self.spent = 0.0
        self.seen = 0
        self._theta = np.asarray(history[-window:, 0], dtype=float)
        self._price = np.asarray(history[-window:, 1], dtype=float)
        self.b0 = 1.0
        self.mean_ctr = float(self._theta.mean())

    def retune(self) -> None:
        """Re-solve ``b0`` for the remaining budget and auctions."""
        th, pr = self._theta, self._price
        self.mean_ctr = m = float(th.mean())
        rate = max(self.budget - self.spent, 0.0) / max(self.n_auctions - self.seen, 1)
        lo, hi = self.bounds
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            if float((pr * (mid * th / m >= pr)).mean()) > rate:
                hi = mid
            else:
                lo = mid
        self.b0 = lo

    def bids(self, pctr: np.ndarray) -> np.ndarray:
        """Bids for a batch of requests (0 once the budget is spent)."""
        if self.spent >= self.budget:
            return np.zeros(len(pctr))
        return self.b0 * np.asarray(pctr, dtype=float) / self.mean_ctr

    def observe(self, pctr: np.ndarray, market_price: np.ndarray, cost: float) -> None:
        """Record a batch of auctions (their pCTRs and market prices) and what was spent on them."""
        due = self.seen // self.step != (self.seen + len(pctr)) // self.step
        self.seen += len(pctr)
        self.spent += cost
        self._theta = np.concatenate([self._theta, pctr])[-self.window :]
        self._price = np.concatenate([self._price, market_price])[-self.window :]
        if due:
            self.retune()


class MarketPacer:
    """The live pacing controller of one campaign: self-tuning linear bidding over the market seen.

    The bidder prices an impression at its value (value per click x pCTR, as a
    CPM) times this pacer's multiplier ``mu``. Bidding ``mu x value`` is linear
    bidding with ``b0 = mu x mean value``, so ``mu`` is re-solved the way
    :class:`SelfTuningLinearBidder` re-solves ``b0`` (the same code, evaluated by
    ``benchmarks/bid_strategy.py`` on iPinYou): the multiplier at which the last
    ``window`` auctions would have spent at the rate that the remaining budget
    allows for the remaining auctions of the day.

    What it learns from, in a live exchange:

    * the market price of each auction it took part in: the clearing price of a
      win (the win or billing notice, or the impression event), and the
      ``${AUCTION_MIN_TO_WIN}`` of a loss notice, each with the value the bid was
      made from (stored with the bid in the budget ledger), via :meth:`observe`.
      Each worker keeps its own window (a sample of the same market);
    * spend and the number of bids of the day, for every worker together, from
      the budget ledger. The day's remaining auctions are extrapolated from the
      bids so far at the day's rate.

    The solver assumes second-price auctions (a win costs the market price), which
    is why first-price bids send no prices (see :meth:`serving.bidder.Bidder.observe_market`),
    and it ignores the campaign's bid cap (a capped bid wins less than it predicts;
    the next solve, from the budget left, makes up for it).

    Until ``min_obs`` market prices are known, a quarter of them from losses (a new
    campaign, or an exchange that sends no loss prices: win prices alone show only
    the auctions already won, and would say that bidding more buys nothing), it
    paces with :class:`DayPacer`, spend against the plan, and starts from the
    multiplier that controller reached.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> pacer = MarketPacer(period_s=1000.0, start=0.0, min_obs=100, resolve_s=0.0)
    >>> for v, p in zip(rng.gamma(2.0, 50.0, 2000), rng.gamma(2.0, 40.0, 2000)):
    ...     pacer.observe(float(v), float(p), lost=p > v)
    >>> # Half the day gone, 10,000 bids made: at mu = 1 this market takes ~320 per 10,000
    >>> # auctions. With 540 of 640 left, bid up; with 140 left, bid down.
    >>> round(pacer.update(budget=640.0, spent=100.0, now=500.0, bids=10_000), 2), pacer.mode
    (2.06, 'market')
    >>> round(pacer.update(budget=640.0, spent=500.0, now=500.0, bids=10_000), 2)
    0.52
    """

    def __init__(
        self,
        period_s: float = 86_400.0,
        start: float | None = None,
        window: int = 10_000,
        min_obs: int = 200,
        bounds: tuple[float, float] = (0.05, 10.0),
        resolve_s: float = 5.0,
    ) -> None:
        if window < 1 or min_obs < 1:
            raise ValueError("window and min_obs must be at least 1")
        self.plan = DayPacer(bounds=bounds, period_s=period_s, start=start)
        self.resolve_s = resolve_s
        self._solved_at: float | None = None
        # Pacers of different campaigns re-solve at different ticks (each solve holds the
        # event loop for ~1 ms): the first solve comes after a random part of resolve_s.
        self._offset = random.random() * resolve_s
        self.window = window
        self.min_obs = min_obs
        self.bounds = bounds
        self._value: deque[float] = deque(maxlen=window)
        self._price: deque[float] = deque(maxlen=window)
        self._lost: deque[bool] = deque(maxlen=window)
        self._n_lost = 0
        self.mu = 1.0
        self.mode = "plan"

    @property
    def observations(self) -> int:
        return len(self._price)

    @property
    def losses(self) -> int:
        """Market prices in the window that came from lost auctions."""
        return self._n_lost

    def observe(self, value_cpm: float, price_cpm: float, lost: bool = False) -> None:
        """One auction's outcome: the bid's unpaced value and the market price (both CPM).

        ``lost``: the price came from a loss notice (the minimum to win), not a win.
        """
        if value_cpm > 0.0 and price_cpm >= 0.0 and math.isfinite(value_cpm) and math.isfinite(price_cpm):
            if len(self._lost) == self.window and self._lost[0]:
                self._n_lost -= 1
            self._value.append(value_cpm)
            self._price.append(price_cpm)
            self._lost.append(lost)
            self._n_lost += lost

    def update(self, budget: float, spent: float, now: float, bids: int = 0) -> float:
        """Re-solve the multiplier from the day's ``spent`` and ``bids`` (all workers) at ``now``."""
        mu_plan = self.plan.update(budget, spent, now)
        progress = self.plan.progress(now)
        known = self.observations >= self.min_obs and 4 * self.losses >= self.min_obs
        if not known or bids <= 0 or not 0.0 < progress < 1.0:
            self.mu, self.mode = mu_plan, "plan"
            return self.mu
        if self._solved_at is None:
            self._solved_at = now - self.resolve_s + self._offset
        if now - self._solved_at < self.resolve_s:
            if self.mode == "plan":
                self.mu = mu_plan
            self.plan.mu = self.mu
            return self.mu  # a solve costs ~1 ms of the event loop: at most every resolve_s
        self._solved_at = now
        expected = bids / progress  # the day's auctions at today's rate so far
        # Prices are CPMs: the solver counts money in CPM units (1,000 x the currency).
        solver = SelfTuningLinearBidder(
            budget * 1000.0,
            max(int(expected), bids + 1),
            np.column_stack([np.fromiter(self._value, float), np.fromiter(self._price, float)]),
            window=self.window,
        )
        solver.spent, solver.seen = spent * 1000.0, bids
        solver.retune()
        self.mu = min(max(solver.b0 / solver.mean_ctr, self.bounds[0]), self.bounds[1])
        self.plan.mu = self.mu  # a fall back to the plan continues from here
        self.mode = "market"
        return self.mu
