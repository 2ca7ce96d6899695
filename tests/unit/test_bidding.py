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


def _market_day(pacer_factory, n=60_000, budget=900.0, seed=3):
    """A simulated day of one campaign: ``n`` auctions (second price) over 1,000 s; pacing every 10 s.

    The value of each auction is ``value_per_click x pCTR`` (CPM); the market is set so that
    bidding the plain value would spend about twice the budget over the day.
    """
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 1000.0, n))
    pctr = rng.beta(2, 300, size=n)
    value = 10.0 * pctr * 1000.0  # CPM: value per click 10
    price = rng.gamma(2.0, 35.0, size=n)
    clicks = rng.random(n) < pctr
    pacer = pacer_factory()
    spent = 0.0
    bids = won_clicks = 0
    spent_at = {}
    nxt = 10.0
    for i in range(n):
        if t[i] >= nxt:
            pacer.update(budget, spent, nxt, bids=bids)
            spent_at[round(nxt)] = spent
            nxt += 10.0
        bid = value[i] * pacer.mu
        if spent + price[i] / 1000 > budget:
            continue
        bids += 1
        if bid >= price[i]:
            spent += price[i] / 1000
            won_clicks += int(clicks[i])
            pacer_observe = getattr(pacer, "observe", None)
            if pacer_observe:
                pacer_observe(value[i], price[i])  # the win notice's clearing price
        elif getattr(pacer, "observe", None):
            pacer.observe(value[i], price[i], lost=True)  # the loss notice's ${AUCTION_MIN_TO_WIN}
    return pacer, spent, spent_at, won_clicks


def test_market_pacer_spends_the_day_evenly_and_wins_at_least_the_plan_controllers_clicks():
    from serving.bidding import DayPacer, MarketPacer

    budget = 900.0
    pacer, spent, at, clicks = _market_day(lambda: MarketPacer(period_s=1000.0, start=0.0))
    assert pacer.mode == "market" and pacer.observations == 10_000  # a full window of prices
    assert 0.9 * budget <= spent <= budget  # the budget is used, never overrun
    assert 0.35 * budget <= at[500] <= 0.65 * budget  # ... evenly over the day
    _, plan_spent, _, plan_clicks = _market_day(lambda: DayPacer(period_s=1000.0, start=0.0))
    assert plan_spent <= budget
    assert clicks >= plan_clicks  # the market-solved multiplier buys at least as many clicks


def test_market_pacer_paces_by_plan_until_it_knows_prices():
    from serving.bidding import MarketPacer

    p = MarketPacer(period_s=1000.0, start=0.0, min_obs=50, resolve_s=0.0)
    for _ in range(49):
        p.observe(10.0, 5.0)  # wins
    p.update(100.0, 0.0, 10.0, bids=100)
    mu = p.update(100.0, 0.0, 20.0, bids=200)  # nothing spent: behind plan
    assert p.mode == "plan" and mu > 1.0
    p.observe(-1.0, 5.0)  # not a value: ignored
    p.observe(10.0, float("nan"))
    assert p.observations == 49
    p.observe(10.0, 5.0)
    p.update(100.0, 0.0, 30.0, bids=300)
    # Enough prices, but all from wins: they cannot tell what more money would buy.
    assert p.mode == "plan" and p.losses == 0
    for _ in range(13):
        p.observe(10.0, 30.0, lost=True)
    p.update(100.0, 0.0, 40.0, bids=400)
    assert p.mode == "market" and p.losses == 13


def test_bidder_feeds_notice_prices_to_the_campaign_pacer():
    from serving.bidder import Bidder

    b = Bidder.__new__(Bidder)  # only the pacing half of the bidder is exercised
    from serving.bidding import MarketPacer

    b.pacers, b.pacer_factory = {}, MarketPacer
    assert b.observe_market("c1", '{"f": {}, "po": 0.01, "v": 12.5}', 8.0)
    assert not b.observe_market("c1", '{"f": {}, "po": 0.01}', 8.0)  # a bid from before prices were kept
    assert not b.observe_market("c1", "not json", 8.0)
    assert not b.observe_market("c1", None, 8.0)
    assert b.observe_market("c1", '{"v": 12.5}', 20.0, lost=True)
    assert b.pacer_status("c1") == {"mode": "plan", "market_prices": 2, "from_losses": 1}
    assert b.pacer_status("unknown") == {"mode": "plan", "market_prices": 0, "from_losses": 0}


def test_bid_consumer_long_polls_briefly_only_while_requests_flow():
    """aiokafka's fetcher reads its long-poll limit per request; the bid consumer sets it."""
    import inspect
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import Fetcher

    from ops.metrics import Metrics
    from schemas.topics import Topics
    from shopstream.settings import Settings
    from streams.bid_consumer import IDLE_FETCH_WAIT_MS, BidRequestConsumer

    # The attribute it is built from, and which each fetch request reads again.
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_max_wait_ms," in inspect.getsource(Fetcher._get_actions_per_node)
    rt = SimpleNamespace(metrics=Metrics(), topics=Topics(""), settings=Settings(bid_fetch_wait_ms=2))
    c = BidRequestConsumer(rt, bidder=None)  # type: ignore[arg-type]
    c.consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=IDLE_FETCH_WAIT_MS))  # type: ignore[assignment]
    c._fetch_wait(busy=True)
    assert c.consumer._fetcher._fetch_max_wait_ms == 2
    c._fetch_wait(busy=False)
    assert c.consumer._fetcher._fetch_max_wait_ms == IDLE_FETCH_WAIT_MS


def test_bid_consumer_commits_only_partitions_it_still_owns():
    """After a rebalance, offsets of revoked partitions are dropped, not allowed to fail the whole commit."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from ops.metrics import Metrics
    from schemas.topics import Topics
    from shopstream.settings import Settings
    from streams.bid_consumer import BidRequestConsumer

    kept, revoked = TopicPartition("bids", 0), TopicPartition("bids", 1)
    committed: list[dict] = []

    class Consumer:
        def assignment(self) -> set:
            return {kept}

        async def commit(self, offsets: dict) -> None:
            if revoked in offsets:
                raise RuntimeError("IllegalStateError: partition not assigned")
            committed.append({t: o.offset for t, o in offsets.items()})

    async def run() -> None:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        rt = SimpleNamespace(metrics=Metrics(), topics=Topics(""), settings=Settings())
        c = BidRequestConsumer(rt, bidder=None)  # type: ignore[arg-type]
        c.consumer = Consumer()  # type: ignore[assignment]
        c._pending.append(({kept: 7, revoked: 3}, [done]))
        await c.commit()

    asyncio.run(run())
    assert committed == [{kept: 7}]


def test_bid_consumer_stop_answers_the_batch_in_hand_before_the_producer_stops():
    """mode calls on_stop before it cancels tasks: a batch being decided then is answered and committed."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from ops.metrics import Metrics
    from schemas.openrtb import no_bid
    from schemas.topics import Topics
    from serving.bidder import Decision
    from shopstream.settings import Settings
    from streams.bid_consumer import BidRequestConsumer
    from tests.unit.stopping import OneBatchConsumer, stop_when

    tp = TopicPartition("bids", 0)
    log: list[str] = []
    record = SimpleNamespace(
        value=b'{"id":"r1","imp":[{"id":"1","banner":{"w":300,"h":250}}]}',
        timestamp=0,
        timestamp_type=1,
        offset=41,
    )

    class Producer:
        stopped = False

        async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
            log.append("sent after stop" if self.stopped else f"sent {key.decode()}")
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        async def stop(self) -> None:
            self.stopped = True
            log.append("producer stopped")

    async def run() -> OneBatchConsumer:
        deciding, decided = asyncio.Event(), asyncio.Event()

        class Bidder:
            async def decide(self, req: object, received: float) -> Decision:
                deciding.set()
                await decided.wait()  # stopping begins while the request is being decided
                return Decision(no_bid("r1", 8), "nbr:8")

        rt = SimpleNamespace(metrics=Metrics(), topics=Topics(""), settings=Settings())
        c = BidRequestConsumer(rt, bidder=Bidder())  # type: ignore[arg-type]
        c.consumer = consumer = OneBatchConsumer({tp: [record]}, log)  # type: ignore[assignment]
        c.producer = Producer()  # type: ignore[assignment]
        await stop_when(c, BidRequestConsumer._consume, deciding, decided)
        return consumer

    consumer = asyncio.run(run())
    assert log == ["sent r1", "consumer stopped", "producer stopped"]
    assert consumer.committed == [{tp: 42}]


def test_ctr_quality_reports_no_auc_until_it_has_seen_both_a_click_and_a_non_click():
    """AUC ranks clicks against non-clicks: with one class it is undefined, not 0 (the demo showed -0.000)."""
    from streams.app import _CTRQuality

    q = _CTRQuality()
    assert q.status()["auc"] is None and q.status()["logloss"] is None
    q.add(0.9, True)
    q.add(0.7, True)
    st = q.status()
    assert st["auc"] is None and st["labels"] == 2 and st["positives"] == 2 and st["logloss"] is not None
    q.add(0.1, False)
    assert q.status()["auc"] == 1.0
    q.add(0.95, False)
    assert 0.0 < q.status()["auc"] < 1.0
