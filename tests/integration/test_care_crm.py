"""Customer care and CRM against real Kafka and Redis in a worker process."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request

import aiohttp
import msgspec
import pytest
import redis

from schemas.events import CRM_CODEC, DEAD_LETTER_CODEC, ROUTING_CODEC
from schemas.openrtb import BID_RESPONSE_CODEC
from shopstream.sim import SUPPORT_TEXT
from streams.app import ensure_topics
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.integration

enc = msgspec.json.Encoder()


def message(n: int, user: str, text: str, intent: str | None = None, channel: str = "chat") -> dict:
    doc = {
        "type": "support_message",
        "event_id": f"m{n}",
        "ts": time.time(),
        "message_id": f"msg-{n}",
        "user_id": user,
        "conversation_id": f"conv-{n}",
        "channel": channel,
        "text": text,
    }
    if intent:
        doc["intent"] = intent
    return doc


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))


def test_intents_learn_routing_rules_crm_profiles_feed_bidding_and_bad_messages_dead_letter(
    settings_factory, worker_factory, tmp_path
):
    cfile = tmp_path / "campaigns.json"
    cfile.write_text(
        json.dumps(
            {
                "campaigns": [
                    {
                        "id": "new-customers",
                        "daily_budget": 100.0,
                        "bid_cap": 3.0,
                        "target_cpc": 1.0,
                        "currency": "EUR",
                        "targeting": {"segments": ["new"]},
                        "creatives": [{"id": "mrec", "w": 300, "h": 250, "adomain": ["shop.example"]}],
                    }
                ]
            }
        )
    )
    s = settings_factory(campaigns=str(cfile), lag_interval_s=0.5, bid_profile_ttl_s=0.0)
    asyncio.run(ensure_topics(s))
    w = worker_factory(s)
    w.wait_ready(timeout=90, topic=s.topic_prefix + "care.messages.v1")
    care = s.topic_prefix + "care.messages.v1"

    # 1. Agent-labelled messages: the online model's prequential accuracy rises.
    rng = random.Random(0)
    labelled = []
    for n in range(400):
        intent, text = rng.choice(SUPPORT_TEXT)
        labelled.append(message(n, f"u{n % 50}", text.format(o=f"o-{rng.randrange(10**6)}"), intent))
    asyncio.run(
        produce_all(s.kafka_bootstrap, [(care, m["user_id"].encode(), enc.encode(m)) for m in labelled])
    )
    end = time.monotonic() + 60
    status: dict = {}
    while time.monotonic() < end:
        status = get_json(w.url + "/care")["intent"]
        if status["labels"] >= 400:
            break
        time.sleep(0.5)
    assert status["labels"] == 400
    assert status["recent_accuracy"] >= 0.9 and status["recent_accuracy"] > status["first_accuracy"] + 0.2
    gauge = 'shopstream_model_quality{metric="accuracy",model="intent"}'
    end = time.monotonic() + 15
    while time.monotonic() < end and gauge not in w.metrics_text():
        time.sleep(0.3)
    assert gauge in w.metrics_text()

    # 2. Routing: confident FAQ questions are answered; angry or unsure ones escalate, VIPs first.
    rc = redis.Redis.from_url(s.redis_url, decode_responses=True)
    rc.hset(f"{s.redis_prefix}user:vip-1", mapping={"segment": "champions", "clv": "900"})
    unlabelled = [
        message(1001, "calm-1", "Where is my order o-77? It has not arrived yet."),
        message(1002, "angry-1", "This is terrible, the item is broken and useless, I want a refund now!"),
        message(1003, "vip-1", "This is terrible, the item is broken and useless, I want a refund now!"),
        message(1004, "calm-2", "What is the weather going to be like tomorrow?"),
        message(1005, "calm-3", "我的订单o-88还没有到，请帮我查一下物流"),
        message(1006, "calm-4", "Who won the football match yesterday?", channel="phone"),
    ]
    asyncio.run(
        produce_all(s.kafka_bootstrap, [(care, m["user_id"].encode(), enc.encode(m)) for m in unlabelled])
    )
    routed_topic = s.topic_prefix + "care.routing.v1"
    msgs = asyncio.run(consume_until(s.kafka_bootstrap, routed_topic, lambda m: len(m) >= 6, 30))
    by_id = {d.message_id: d for d in (ROUTING_CODEC.decode(m.value) for m in msgs)}
    calm = by_id["msg-1001"]
    assert calm.queue == "auto" and not calm.escalate and calm.intent == "order_status" and calm.answer
    angry, vip = by_id["msg-1002"], by_id["msg-1003"]
    assert angry.escalate and angry.queue == "human:refund" and angry.sentiment < 0 and angry.priority >= 5
    assert vip.escalate and vip.priority == min(angry.priority + 2, 9) and "champions" in (vip.reason or "")
    weather = by_id["msg-1004"]
    assert weather.intent == "out_of_scope" and weather.queue == "general"
    zh = by_id["msg-1005"]
    assert zh.lang == "zh" and zh.intent == "order_status"
    assert by_id["msg-1006"].intent == "out_of_scope"

    # 3. CRM: an order makes a "new" customer in Redis, and the bidder's segment targeting reads it.
    orders = s.topic_prefix + "shop.orders.v1"
    now = time.time()
    order = {
        "type": "order",
        "event_id": "o-crm-1",
        "ts": now,
        "order_id": "order-crm-1",
        "user_id": "buyer-1",
        "lines": [{"sku": "sku-1", "qty": 2, "unit_price": 30.0, "currency": "EUR"}],
    }
    asyncio.run(produce_all(s.kafka_bootstrap, [(orders, b"buyer-1", enc.encode(order))]))
    end = time.monotonic() + 30
    while time.monotonic() < end and rc.hget(f"{s.redis_prefix}user:buyer-1", "segment") != "new":
        time.sleep(0.2)
    profile = rc.hgetall(f"{s.redis_prefix}user:buyer-1")
    assert (
        profile["segment"] == "new" and float(profile["clv"]) > 0 and 0 <= float(profile["churn_risk"]) <= 1
    )
    signals = asyncio.run(
        consume_until(s.kafka_bootstrap, s.topic_prefix + "crm.signals.v1", lambda m: len(m) >= 1, 20)
    )
    sig = CRM_CODEC.decode(signals[0].value)
    assert sig.user_id == "buyer-1" and sig.kind == "segment" and sig.label == "new"
    assert get_json(w.url + "/crm/buyer-1")["profile"]["segment"] == "new"

    def bid_for(user: str) -> tuple[int, bytes]:
        req = {
            "id": f"crm-bid-{user}",
            "tmax": 500,
            "cur": ["EUR"],
            "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
            "site": {"id": "s", "domain": "news.example"},
            "user": {"id": user},
        }

        async def go() -> tuple[int, bytes]:
            headers = {"Content-Type": "application/json", "x-openrtb-version": "2.6"}
            async with (
                aiohttp.ClientSession() as session,
                session.post(w.url + "/openrtb2/bid", data=enc.encode(req), headers=headers) as r,
            ):
                return r.status, await r.read()

        return asyncio.run(go())

    status_code, body = bid_for("buyer-1")
    assert status_code == 200 and BID_RESPONSE_CODEC.decode(body).seatbid[0].bid[0].cid == "new-customers"
    assert bid_for("stranger-1")[0] == 204  # no CRM profile, no segment: the campaign does not target them

    # 4. Malformed support messages and reviews go to their dead-letter topics; the worker lives on.
    bad = [(care, b"u1", b'{"type": "support_message", "event_id": "x"}'), (care, b"u1", b"\xff\xfe")]
    asyncio.run(produce_all(s.kafka_bootstrap, bad))
    dlq = asyncio.run(consume_until(s.kafka_bootstrap, care + ".dlq", lambda m: len(m) >= 2, 30))
    reasons = {DEAD_LETTER_CODEC.decode(m.value).reason for m in dlq}
    assert len(dlq) == 2 and reasons == {"missing_field", "malformed_json"}
    assert (w.health() or {}).get("status") == "ok"
