"""Paced linear bidding (no services)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.bidding import PacedLinearBidder


def test_pacing_keeps_spend_on_plan_when_the_model_drifts():
    rng = np.random.default_rng(0)
    n, budget = 50_000, 20_000.0
    pctr = rng.beta(2, 400, size=n)
    price = rng.gamma(2.0, 30.0, size=n)
    # A b0 tuned for much cheaper traffic: without pacing it would barely spend.
    bidder = PacedLinearBidder(b0=3.0, budget=budget, n_auctions=n, prior_ctr=float(pctr.mean()))
    spent_at_half = None
    for start in range(0, n, 100):
        bids = bidder.bids(pctr[start : start + 100])
        won = bids >= price[start : start + 100]
        cost = float(price[start : start + 100][won].sum())
        cost = min(cost, budget - bidder.spent)
        bidder.observe(100, cost)
        if start + 100 == n // 2:
            spent_at_half = bidder.spent
    assert bidder.spent <= budget
    assert 0.8 * budget <= bidder.spent  # the budget is used ...
    assert spent_at_half is not None and 0.35 * budget <= spent_at_half <= 0.65 * budget  # ... evenly
    assert bidder.mu > 1.0  # it learnt to bid higher than the stale b0


def test_no_bids_once_the_budget_is_spent_and_bad_arguments_are_refused():
    b = PacedLinearBidder(b0=10.0, budget=5.0, n_auctions=10, prior_ctr=0.01, max_bid=15.0)
    assert b.bid(0.05) == 15.0  # capped
    b.observe(5, 5.0)
    assert b.bid(0.05) == 0.0
    with pytest.raises(ValueError):
        PacedLinearBidder(b0=1.0, budget=0.0, n_auctions=1, prior_ctr=0.1)


def test_self_tuning_lin_follows_a_market_that_changes_and_uses_the_budget():
    from serving.bidding import SelfTuningLinearBidder

    rng = np.random.default_rng(1)
    n, budget = 40_000, 4_000.0
    pctr = rng.beta(2, 300, size=n)
    # The market doubles its prices halfway through; the history is the cheap market.
    price = rng.gamma(2.0, 20.0, size=n) * np.where(np.arange(n) < n // 2, 1.0, 2.0)
    history = np.column_stack([rng.beta(2, 300, 10_000), rng.gamma(2.0, 20.0, 10_000)])
    b = SelfTuningLinearBidder(budget, n, history, window=5_000, step=500)
    b.retune()
    b0_at: dict[int, float] = {}
    for s in range(0, n, 500):
        b0_at[s] = b.b0
        bids = b.bids(pctr[s : s + 500])
        won = bids >= price[s : s + 500]
        cost = min(float(price[s : s + 500][won].sum()), budget - b.spent)
        b.observe(pctr[s : s + 500], price[s : s + 500], cost)
        if s + 500 == n // 2:
            half = b.spent
    assert 0.9 * budget <= b.spent <= budget
    assert 0.35 * budget <= half <= 0.65 * budget  # evenly, despite the price change
    # it raised its bids to keep buying in the dearer market
    assert b0_at[3 * n // 4] > 1.3 * b0_at[n // 2 - 500]
