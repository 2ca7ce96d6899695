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
        planned = self.budget * min(self.seen / self.n_auctions, 1.0)
        gap = (planned - self.spent) / max(planned, 0.01 * self.budget)
        # The step is scaled to the share of the plan these auctions are (1/1000 of it = one
        # unit), and the gain decays as the plan advances: large corrections early, while the
        # multiplier finds its level, then a steady hand.
        gain = self.gain / (1.0 + self.decay * min(self.seen / self.n_auctions, 1.0))
        step = gain * gap * auctions / max(self.n_auctions / 1000, 1)
        self.mu = min(max(self.mu * math.exp(step), self.mu_min), self.mu_max)
