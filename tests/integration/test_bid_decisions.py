"""Bid decisions and the budget ledger against a real Redis (no worker process).

The ledger's guarantees (reserve within budget, settle once, release, caps)
are checked directly, including under concurrent clients; the bidder is
fuzzed with generated requests, and its deadline is checked with a slow
profile store.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from online_models.ctr import CTRBlend, OnlineCTR
from schemas.openrtb import BID_REQUEST_CODEC, BID_RESPONSE_CODEC, NBR
from serving.bidder import Bidder, BidderConfig
from serving.budget import BudgetLedger, Candidate
from serving.campaigns import CampaignBook, parse_campaigns

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openrtb" / "iab-2.6"
CAMPAIGNS = {
    "blocked_publishers": ["blocked.example"],
    "campaigns": [
        {
            "id": "usd-banner",
            "daily_budget": 50.0,
            "bid_cap": 6.0,
            "target_cpc": 1.5,
            "currency": "USD",
            "targeting": {"devicetypes": [1, 2, 4]},
            "frequency_cap": {"impressions": 50, "period_s": 600},
            "creatives": [
                {"id": "mrec", "w": 300, "h": 250, "adomain": ["a.example"], "cat": ["IAB3"]},
                {"id": "leader", "w": 728, "h": 90, "adomain": ["apple.com"]},
            ],
        },
        {
            "id": "usd-video",
            "daily_budget": 20.0,
            "bid_cap": 12.0,
            "target_cpa": 20.0,
            "cvr": 0.1,
            "currency": "USD",
            "creatives": [{"id": "vid", "kind": "video", "adomain": ["b.example"]}],
        },
        {
            "id": "eur-any",
            "daily_budget": 10.0,
            "bid_cap": 3.0,
            "target_cpc": 0.5,
            "currency": "EUR",
            "creatives": [{"id": "mrec-eur", "w": 300, "h": 250, "adomain": ["c.example"]}],
        },
    ],
}


@pytest.fixture
def redis_url(services) -> str:
    return services[1].url


def ledger(url: str, **kw: Any) -> BudgetLedger:
    return BudgetLedger(url, prefix=f"t{uuid.uuid4().hex[:8]}:", **kw)


def run(coro):
    return asyncio.run(coro)


def test_reserve_settle_release_and_expiry(redis_url):
    async def go() -> None:
        lg = ledger(redis_url, reservation_ttl_s=10)
        t = time.time()
        c = lambda bid, amt, user="u", fmax=0: Candidate(bid, "c", amt, 1.0, user, fmax, 60)  # noqa: E731
        r = await lg.reserve([[c("b1", 0.4)], [c("b2", 0.4)], [c("b3", 0.4)]], now=t)
        assert [x.reason for x in r] == ["ok", "ok", "budget"] and r[2].index is None
        assert (await lg.reserve([[c("b1", 0.4)]], now=t))[0].reason == "dup"  # redelivered request
        assert await lg.settle("b1", "win", 0.3) == ("charged", "c")
        assert await lg.settle("b1", "win", 0.3) == ("duplicate", "c")
        assert await lg.settle("b1", "bill", 0.3) == ("duplicate", "c")
        assert await lg.settle("b2", "loss") == ("released", "c")
        assert await lg.settle("nope", "win", 1.0) == ("unknown", "")
        # a clearing price above the bid (a bad or forged notice) is charged at the bid
        assert (await lg.reserve([[c("b9", 0.1)]], now=t))[0].reason == "ok"
        assert await lg.settle("b9", "win", 5.0) == ("charged_capped", "c")
        assert await lg.settle("b2b", "loss") == ("unknown", "")
        spend = (await lg.spend(["c"]))["c"]
        assert spend.spent == pytest.approx(0.4) and spend.reserved == 0.0 and spend.wins == 2
        # a reservation with no notice expires and its money comes back
        assert (await lg.reserve([[c("b4", 0.5)]], now=t))[0].reason == "ok"
        assert (await lg.reserve([[c("b5", 0.2)]], now=t))[0].reason == "budget"
        assert (await lg.reserve([[c("b5", 0.2)]], now=t + 11))[0].reason == "ok"
        # ... and a late win of the expired bid is still charged (the impression was bought)
        assert await lg.settle("b4", "win", 0.4) == ("charged_late", "c")
        assert (await lg.spend(["c"]))["c"].spent == pytest.approx(0.8)
        await lg.close()

    run(go())


def test_frequency_cap_counts_pending_bids_and_loss_frees_a_slot(redis_url):
    async def go() -> None:
        lg = ledger(redis_url)
        c = lambda bid: Candidate(bid, "c", 0.001, 100.0, "u1", 2, 60)  # noqa: E731
        other = Candidate("o1", "d", 0.001, 100.0, "u1", 0, 60)
        out = await lg.reserve([[c("a")], [c("b")], [c("x"), other]])
        assert [(x.index, x.reason) for x in out] == [(0, "ok"), (0, "ok"), (1, "ok")]  # fell back to "d"
        assert await lg.frequency("c", "u1") == 2
        await lg.settle("a", "loss")
        assert (await lg.reserve([[c("y")]]))[0].reason == "ok"
        assert (await lg.reserve([[c("z")]]))[0].reason == "fcap"
        await lg.close()

    run(go())


def test_concurrent_clients_never_reserve_more_than_the_budget(redis_url):
    async def go() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        clients = [BudgetLedger(redis_url, prefix=prefix) for _ in range(4)]
        budget = 1.0

        async def bid(i: int) -> bool:
            lg = clients[i % 4]
            r = await lg.reserve([[Candidate(f"b{i}", "c", 0.003 + (i % 7) * 0.001, budget)]])
            if r[0].index is None:
                return False
            await lg.settle(f"b{i}", "win", 0.003 + (i % 7) * 0.001)  # worst case: pays its full bid
            return True

        won = await asyncio.gather(*(bid(i) for i in range(600)))
        spend = (await clients[0].spend(["c"]))["c"]
        assert sum(won) < 600  # the budget ran out ...
        assert spend.spent <= budget + 1e-9 and spend.spent > budget - 0.01  # ... and was used, never overrun
        for lg in clients:
            await lg.close()

    run(go())


def _bidder(url: str, tmp_path: Path, **kw: Any) -> Bidder:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(CAMPAIGNS))
    return Bidder(CampaignBook(path), ledger(url), OnlineCTR(prior_ctr=0.01), CTRBlend(), **kw)


REQUESTS = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*bidrequest*.json"))]

mutation = st.fixed_dictionaries(
    {
        "base": st.integers(0, len(REQUESTS) - 1),
        "cur": st.sampled_from([None, ["USD"], ["EUR"], ["USD", "EUR"], ["JPY"]]),
        "at": st.sampled_from([None, 1, 2]),
        "tmax": st.sampled_from([None, 50, 120, 1000]),
        "devicetype": st.sampled_from([None, 1, 2, 3, 4, 7]),
        "floor": st.sampled_from([None, 0.0, 0.5, 4.0, 50.0]),
        "size": st.sampled_from([None, (300, 250), (728, 90), (320, 50)]),
        "badv": st.sampled_from([None, ["a.example"], ["apple.com", "a.example", "c.example"]]),
        "bcat": st.sampled_from([None, ["IAB3"], ["IAB25"]]),
        "domain": st.sampled_from([None, "blocked.example", "ok.example"]),
        "n_imp": st.integers(1, 3),
    }
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation)
def test_any_request_gets_a_valid_response_or_a_no_bid(redis_url, tmp_path, m):
    req = copy.deepcopy(REQUESTS[m["base"]])
    for k in ("cur", "at", "tmax", "badv", "bcat"):
        if m[k] is None:
            req.pop(k, None)
        else:
            req[k] = m[k]
    if m["devicetype"] is not None:
        req.setdefault("device", {})["devicetype"] = m["devicetype"]
    if m["domain"] and "site" in req:
        req["site"]["domain"] = m["domain"]
    imp0 = req["imp"][0]
    if m["floor"] is not None:
        imp0["bidfloor"] = m["floor"]
    if m["size"] is not None and "banner" in imp0:
        imp0["banner"].update(w=m["size"][0], h=m["size"][1])
    req["imp"] = [dict(imp0, id=str(i + 1)) for i in range(m["n_imp"])]
    req["id"] = f"fz-{uuid.uuid4().hex}"
    parsed = BID_REQUEST_CODEC.decode(json.dumps(req).encode())

    async def go():
        b = _bidder(redis_url, tmp_path)
        try:
            return await b.decide(parsed)
        finally:
            await b.ledger.close()

    dec = run(go())
    resp = BID_RESPONSE_CODEC.decode(BID_RESPONSE_CODEC.encode(dec.response))  # valid OpenRTB 2.6
    assert resp.id == req["id"]
    bids = [b for sb in resp.seatbid or () for b in sb.bid]
    if not bids:
        assert dec.outcome != "bid" and (resp.nbr is None or resp.nbr in {int(x) for x in NBR})
        if m["domain"] == "blocked.example" and "site" in req:
            assert resp.nbr == NBR.BLOCKED_PUBLISHER_OR_SITE
        return
    allowed = set(req.get("cur") or ["USD"])
    assert resp.cur in allowed
    imp_ids = {i["id"] for i in req["imp"]}
    caps = {c["id"]: c["bid_cap"] for c in CAMPAIGNS["campaigns"]}
    for b in bids:
        assert b.impid in imp_ids and b.price <= caps[b.cid] + 1e-9
        assert b.price >= (imp0.get("bidfloor") or 0.0)
        assert not set(b.adomain or ()) & set(req.get("badv") or ())
        assert b.nurl and "${AUCTION_PRICE}" in b.nurl and b.crid
    assert len({b.impid for b in bids}) == len(bids)  # one bid per impression


def test_deadline_is_kept_when_the_profile_store_is_slow(redis_url, tmp_path):
    async def slow_profile(user_id: str) -> dict:
        await asyncio.sleep(0.5)
        return {"segment": "vip"}

    async def go():
        b = _bidder(redis_url, tmp_path, profiles=slow_profile, config=BidderConfig(safety_ms=5.0))
        await b.ledger.warm()
        base = dict(REQUESTS[0], device={"devicetype": 2})
        req = BID_REQUEST_CODEC.decode(json.dumps(dict(base, tmax=25, id="slow-1")).encode())
        t0 = time.time()
        dec = await b.decide(req, received=t0)
        late = await b.decide(
            BID_REQUEST_CODEC.decode(json.dumps(dict(base, tmax=25, id="slow-2")).encode()),
            received=t0 - 0.03,  # it sat in a queue longer than its tmax
        )
        await b.ledger.close()
        return dec, time.time() - t0, late

    dec, elapsed, late = run(go())
    assert elapsed < 0.025 and dec.is_bid  # answered in time, without the profile
    assert late.response.nbr == NBR.INSUFFICIENT_AUCTION_TIME


def test_campaign_targeting_and_creative_fit(redis_url, tmp_path):
    camps = parse_campaigns(json.dumps(CAMPAIGNS).encode())
    assert [c.value_per_click for c in camps] == [1.5, 2.0, 0.5]

    async def go():
        b = _bidder(redis_url, tmp_path)
        video = BID_REQUEST_CODEC.decode(json.dumps(dict(REQUESTS[3], id="v-1")).encode())
        mobile = BID_REQUEST_CODEC.decode(json.dumps(dict(REQUESTS[2], id="m-1", cur=["USD"])).encode())
        out = await b.decide(video), await b.decide(mobile)
        await b.ledger.close()
        return out

    video, mobile = run(go())
    assert [x.crid for sb in video.response.seatbid for x in sb.bid] == ["vid"]
    assert "<VAST" in video.response.seatbid[0].bid[0].adm
    # The mobile example blocks apple.com (badv): the 728x90 creative of that domain must not serve.
    assert not mobile.is_bid


def test_private_marketplace_impressions_get_no_open_auction_bid(redis_url, tmp_path):
    pmp = REQUESTS[4]
    assert pmp["imp"][0]["pmp"]["private_auction"] == 1

    async def go():
        b = _bidder(redis_url, tmp_path)
        open_ = dict(pmp, id="pmp-open", device={"devicetype": 2})
        open_["imp"] = [{k: v for k, v in pmp["imp"][0].items() if k != "pmp"}]
        private = dict(pmp, id="pmp-private", device={"devicetype": 2})
        out = [await b.decide(BID_REQUEST_CODEC.decode(json.dumps(r).encode())) for r in (private, open_)]
        await b.ledger.close()
        return out

    private, open_ = run(go())
    assert not private.is_bid and open_.is_bid
