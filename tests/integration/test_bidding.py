"""The bidder against real Kafka and Redis in worker processes: budget, caps, notices, reloads, DLQ."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import redis

from schemas.events import DEAD_LETTER_CODEC
from schemas.openrtb import BID_RESPONSE_CODEC, NBR, BidResponse
from shopstream.procs import metric_value
from streams.app import ensure_topics
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.integration

enc = msgspec.json.Encoder()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openrtb" / "iab-2.6"
HEADERS = {"Content-Type": "application/json", "x-openrtb-version": "2.6"}


def campaign(cid: str, budget: float, bid_cap: float, **extra: Any) -> dict:
    return {
        "id": cid,
        "daily_budget": budget,
        "bid_cap": bid_cap,
        "target_cpc": 5.0,
        "currency": "EUR",
        "creatives": [{"id": f"{cid}-mrec", "w": 300, "h": 250, "adomain": ["shop.example"]}],
        **extra,
    }


def write_campaigns(path: Path, campaigns: list[dict], **extra: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"campaigns": campaigns, **extra}))
    tmp.replace(path)  # atomic, as an operator's deploy would be


def request(
    rid: str, user: str, *, country: str = "DEU", devicetype: int = 2, tmax: int = 500, at: int = 1
) -> dict:
    return {
        "id": rid,
        "tmax": tmax,
        "cur": ["EUR"],
        "at": at,
        "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01, "bidfloorcur": "EUR"}],
        "site": {"id": "s1", "domain": "news.example", "cat": ["IAB12"]},
        "device": {"devicetype": devicetype, "os": "iOS", "geo": {"country": country}},
        "user": {"id": user},
    }


async def post_all(url: str, bodies: list[bytes], concurrency: int = 16) -> list[tuple[int, bytes, Any]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one(body: bytes) -> tuple[int, bytes, Any]:
            async with sem, s.post(url + "/openrtb2/bid", data=body, headers=HEADERS) as r:
                return r.status, await r.read(), r.headers

        return await asyncio.gather(*(one(b) for b in bodies))


async def get_all(urls: list[str]) -> list[dict]:
    async with aiohttp.ClientSession() as s:

        async def one(u: str) -> dict:
            async with s.get(u) as r:
                return await r.json()

        return await asyncio.gather(*(one(u) for u in urls))


def bids_of(resp: BidResponse) -> list:
    return [b for sb in resp.seatbid or () for b in sb.bid]


def test_budget_holds_under_concurrent_requests_across_workers_and_notices_charge_once(
    settings_factory, worker_factory, tmp_path
):
    """Two workers bid for one campaign over the topic (4 partitions) and HTTP at once.

    Every bid is then won at its full price (the worst case: a first-price
    auction), and every win notice is delivered twice, once as a URL and once
    more as the exchange's impression event: the sum charged stays within the
    budget, and equals the sum of the distinct wins.
    """
    budget = 0.05  # EUR; bids are capped at 2 CPM = 0.002 EUR, so ~25 wins exhaust it
    cfile = tmp_path / "campaigns.json"
    write_campaigns(cfile, [campaign("c-budget", budget, bid_cap=2.0)])
    s1 = settings_factory(campaigns=str(cfile), partitions=4)
    asyncio.run(ensure_topics(s1))
    s2 = s1.with_(web_port=s1.web_port + 1)
    w1 = worker_factory(s1, "w1")
    w2 = worker_factory(s2, "w2")
    w1.wait_ready(timeout=90, topic=s1.topic_prefix + "ads.bid-requests.v1")
    w2.wait_ready(timeout=90, topic=s1.topic_prefix + "ads.bid-requests.v1")
    req_topic = s1.topic_prefix + "ads.bid-requests.v1"
    n_topic, n_http = 300, 150
    topic_msgs = [
        (req_topic, f"user-{i % 97}".encode(), enc.encode(request(f"t-{i}", f"user-{i % 97}")))
        for i in range(n_topic)
    ]

    async def fire() -> list[tuple[int, bytes, Any]]:
        producing = asyncio.create_task(produce_all(s1.kafka_bootstrap, topic_msgs))
        # HTTP requests are second-price auctions, topic ones first-price.
        bodies = [enc.encode(request(f"h-{i}", f"user-{i % 89}", at=2)) for i in range(n_http)]
        answers = await asyncio.gather(post_all(w1.url, bodies[::2]), post_all(w2.url, bodies[1::2]))
        await producing
        return answers[0] + answers[1]

    http = asyncio.run(fire())
    assert all(status in (200, 204) for status, _, _ in http), {s for s, _, _ in http}
    http_bids = [b for st, body, _ in http if st == 200 for b in bids_of(BID_RESPONSE_CODEC.decode(body))]
    resp_topic = s1.topic_prefix + "ads.bid-responses.v1"
    msgs = asyncio.run(consume_until(s1.kafka_bootstrap, resp_topic, lambda m: len(m) >= n_topic, 60))
    assert len({m.key for m in msgs}) == n_topic
    topic_bids = [b for m in msgs for b in bids_of(BID_RESPONSE_CODEC.decode(m.value))]
    all_bids = http_bids + topic_bids
    # The budget was the binding constraint: without it these bids would have spent more.
    assert sum(b.price for b in all_bids) / 1000 <= budget + 1e-9
    assert len(all_bids) >= 15 and len(all_bids) < n_topic + n_http
    # The last bid loses (its loss notice says what would have won); every other bid wins at its
    # full price: the win notice twice over HTTP, then again as an impression event.
    lost, all_bids = all_bids[-1], all_bids[:-1]
    assert lost.lurl is not None
    loss = lost.lurl.replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", str(lost.price + 0.5))
    assert [r["result"] for r in asyncio.run(get_all([loss]))] == ["released"]
    urls = [b.nurl.replace("${AUCTION_PRICE}", str(b.price)) for b in all_bids]
    first = asyncio.run(get_all(urls))
    again = asyncio.run(get_all(urls[::2] + [u.replace("/win?", "/bill?") for u in urls[1::2]]))
    assert [r["result"] for r in first] == ["charged"] * len(urls)
    assert {r["result"] for r in again} == {"duplicate"}
    # Each second-price auction's market price reached the campaign's pacer once: the first
    # report of each win, and the loss's minimum to win (duplicates are not counted again). A
    # first-price auction's clearing price is the bid itself, not a market price: not counted.
    second_price = sum(b.id.startswith("h-") for b in all_bids)
    assert second_price > 0
    pacers = [
        st["today"]["c-budget"]["pacer"]
        for st in asyncio.run(get_all([w1.url + "/campaigns", w2.url + "/campaigns"]))
    ]
    assert sum(p["market_prices"] for p in pacers) == second_price + lost.id.startswith("h-")
    assert sum(p["from_losses"] for p in pacers) == int(lost.id.startswith("h-"))
    ad_topic = s1.topic_prefix + "ads.events.v1"
    impressions = [
        (
            ad_topic,
            b.id.rsplit(":", 1)[0].encode(),
            enc.encode(
                {
                    "type": "impression",
                    "event_id": f"imp-{b.id}",
                    "ts": time.time(),
                    "request_id": b.id.rsplit(":", 1)[0],
                    "imp_id": b.impid,
                    "campaign_id": "c-budget",
                    "price": b.price,
                }
            ),
        )
        for b in all_bids
    ]
    asyncio.run(produce_all(s1.kafka_bootstrap, impressions))
    rc = redis.Redis.from_url(s1.redis_url, decode_responses=True)
    day = time.strftime("%Y%m%d", time.gmtime())
    key = f"{s1.redis_prefix}bud:c-budget:{day}"

    def duplicates_seen() -> float:
        return sum(
            metric_value(
                w.metrics_text(),
                "shopstream_bid_notices_total",
                {"kind": "impression", "result": "duplicate"},
            )
            for w in (w1, w2)
        )

    end = time.monotonic() + 30
    while time.monotonic() < end and duplicates_seen() < len(all_bids):
        time.sleep(0.3)
    assert duplicates_seen() == len(all_bids)
    spent = int(rc.hget(key, "spent") or 0) / 1e6
    assert spent == pytest.approx(sum(b.price for b in all_bids) / 1000, abs=1e-6)
    assert spent <= budget
    assert int(rc.hget(key, "wins") or 0) == len(all_bids)
    assert int(rc.hget(key, "reserved") or 0) == 0


def test_caps_reloads_invalid_requests_iab_examples_and_ctr_labels(
    settings_factory, worker_factory, tmp_path
):
    cfile = tmp_path / "campaigns.json"
    capped = campaign("c-capped", 100.0, bid_cap=3.0, frequency_cap={"impressions": 3, "period_s": 3600})
    write_campaigns(cfile, [capped])
    s = settings_factory(
        campaigns=str(cfile), campaigns_poll_s=0.2, attribution_window_s=5.0, lag_interval_s=0.5
    )
    asyncio.run(ensure_topics(s))
    w = worker_factory(s)
    w.wait_ready(timeout=90, topic=s.topic_prefix + "ads.bid-requests.v1")

    # Frequency cap: 20 concurrent requests for one user, 3 bids at most.
    answers = asyncio.run(post_all(w.url, [enc.encode(request(f"f-{i}", "u-cap")) for i in range(20)], 10))
    bid_answers = [BID_RESPONSE_CODEC.decode(b) for st, b, _ in answers if st == 200]
    with_bids = [r for r in bid_answers if bids_of(r)]
    assert len(with_bids) == 3
    capped_out = [r for r in bid_answers if not bids_of(r)]
    assert capped_out and all(r.nbr == NBR.DAILY_USER_CAP_MET for r in capped_out)
    assert all(h.get("x-openrtb-version") == "2.6" for _, _, h in answers)
    # Another user is not affected.
    ((st, body, _),) = asyncio.run(post_all(w.url, [enc.encode(request("f-other", "u-other"))]))
    assert st == 200 and bids_of(BID_RESPONSE_CODEC.decode(body))

    # Reload without restart: targeting moves to France only, the cap is lifted, the cap price changes.
    write_campaigns(
        cfile,
        [campaign("c-fr", 100.0, bid_cap=1.25, targeting={"countries": ["FRA"]})],
        blocked_publishers=["bad.example"],
    )
    deadline = time.monotonic() + 15
    fr = None
    while time.monotonic() < deadline:
        (st_fr, fr, _), (st_de, _de, _) = asyncio.run(
            post_all(
                w.url, [enc.encode(request(f"r-{time.time()}", "u-cap", country=c)) for c in ("FRA", "DEU")]
            )
        )
        if st_fr == 200 and st_de == 204:
            break
        time.sleep(0.3)
    assert st_fr == 200 and st_de == 204, (st_fr, st_de)
    (b,) = bids_of(BID_RESPONSE_CODEC.decode(fr))
    assert b.cid == "c-fr" and b.price <= 1.25
    blocked = request("blk", "u1", country="FRA")
    blocked["site"]["domain"] = "bad.example"
    ((st, body, _),) = asyncio.run(post_all(w.url, [enc.encode(blocked)]))
    assert st == 200 and BID_RESPONSE_CODEC.decode(body).nbr == NBR.BLOCKED_PUBLISHER_OR_SITE
    # A broken file is refused; the campaigns in force stay.
    cfile.write_text('{"campaigns": [{"id": "x", "daily_budget": -5}]}')
    time.sleep(1.0)
    ((st, body, _),) = asyncio.run(post_all(w.url, [enc.encode(request("after-bad", "u9", country="FRA"))]))
    assert st == 200 and bids_of(BID_RESPONSE_CODEC.decode(body))[0].cid == "c-fr"
    status = asyncio.run(get_all([w.url + "/campaigns"]))[0]
    assert status["campaigns"] == ["c-fr"] and "daily_budget" in (status["last_error"] or "")

    # Every IAB 2.6 example request gets a valid response or a no-bid (these are USD, our campaign EUR).
    for f in sorted(FIXTURES.glob("*bidrequest*.json")):
        ((st, body, _headers),) = asyncio.run(post_all(w.url, [f.read_bytes()]))
        assert st in (200, 204), f.name
        if st == 200:
            BID_RESPONSE_CODEC.decode(body)
    # Invalid requests: nbr 2 over HTTP; dead letter plus an nbr-2 response on the topic.
    bad = [b'{"id": "bad-1", "imp": []}', b"{not json", b'{"id": "bad-3", "imp": [{"id": "1"}], "tmax": -1}']
    for body in bad:
        ((st, out, _),) = asyncio.run(post_all(w.url, [body]))
        doc = json.loads(out)
        assert st == 400 and doc["nbr"] == 2 and doc["ext"]["error"]
    req_topic = s.topic_prefix + "ads.bid-requests.v1"
    asyncio.run(produce_all(s.kafka_bootstrap, [(req_topic, b"k", body) for body in bad]))
    dlq = asyncio.run(consume_until(s.kafka_bootstrap, req_topic + ".dlq", lambda m: len(m) >= 3, 30))
    assert len(dlq) == 3 and {DEAD_LETTER_CODEC.decode(m.value).source_topic for m in dlq} == {req_topic}
    resp_topic = s.topic_prefix + "ads.bid-responses.v1"
    resp = asyncio.run(consume_until(s.kafka_bootstrap, resp_topic, lambda m: len(m) >= 2, 30))
    assert {m.key for m in resp} == {b"bad-1", b"bad-3"}
    assert all(BID_RESPONSE_CODEC.decode(m.value).nbr == NBR.INVALID_REQUEST for m in resp)
    assert (w.health() or {}).get("status") == "ok"

    # CTR labels: impressions of our bids, a third clicked; the rest become negatives when the window closes.
    bodies = [enc.encode(request(f"ctr-{i}", f"cu-{i}", country="FRA")) for i in range(30)]
    won = [
        bids_of(BID_RESPONSE_CODEC.decode(b))[0]
        for st, b, _ in asyncio.run(post_all(w.url, bodies))
        if st == 200
    ]
    assert len(won) == 30
    ad_topic = s.topic_prefix + "ads.events.v1"
    now = time.time()
    events = []
    for i, b in enumerate(won):
        rid = b.id.rsplit(":", 1)[0]
        base = {"request_id": rid, "imp_id": b.impid, "campaign_id": b.cid}
        events.append(
            (
                ad_topic,
                rid.encode(),
                enc.encode({**base, "type": "impression", "event_id": f"i{i}", "ts": now, "price": 0.5}),
            )
        )
        if i % 3 == 0:
            events.append(
                (
                    ad_topic,
                    rid.encode(),
                    enc.encode({**base, "type": "ad_click", "event_id": f"c{i}", "ts": now + 1}),
                )
            )
    # A later event on every partition moves the watermarks past the window.
    events += [
        (
            ad_topic,
            f"late-{k}".encode(),
            enc.encode(
                {
                    "type": "conversion",
                    "event_id": f"z{k}",
                    "ts": now + 60,
                    "request_id": f"late-{k}",
                    "imp_id": "1",
                    "campaign_id": "c-fr",
                }
            ),
        )
        for k in range(40)
    ]
    asyncio.run(produce_all(s.kafka_bootstrap, events))
    end = time.monotonic() + 30
    while time.monotonic() < end:
        text = w.metrics_text()
        charged = metric_value(
            text, "shopstream_bid_notices_total", {"kind": "impression", "result": "charged"}
        )
        ctr = asyncio.run(get_all([w.url + "/campaigns"]))[0]["ctr"]
        if charged == 30 and ctr["labels"] == 30:
            break
        time.sleep(0.3)
    assert charged == 30
    assert ctr["labels"] == 30 and ctr["positives"] == 10 and ctr["unjoined"] == 0
    assert 0.0 <= ctr["auc"] <= 1.0 and ctr["logloss"] > 0
