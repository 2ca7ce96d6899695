"""The first live slice against a real Kafka broker and Redis, in a real worker process."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import msgspec
import pytest
import redis

from schemas.events import DEAD_LETTER_CODEC, RECOMMENDATION_CODEC
from schemas.lake import read_lake
from shopstream.procs import metric_value
from streams.app import ensure_topics
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.integration

enc = msgspec.json.Encoder()


def consume_recs(settings, n: int, timeout_s: float = 120) -> list:
    """At least ``n`` messages of the recommendations topic, or all that came within ``timeout_s``."""
    topic = settings.topic_prefix + "shop.recommendations.v1"
    return asyncio.run(consume_until(settings.kafka_bootstrap, topic, lambda m: len(m) >= n, timeout_s))


def make_clicks(n: int, n_users: int = 300, n_items: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        u = rng.randrange(n_users)
        item = (u * 7 + int(rng.paretovariate(1.5))) % n_items
        out.append(
            {
                "type": "click",
                "event_id": f"ev-{seed}-{i}",
                "ts": 1_700_000_000.0 + i,
                "user_id": f"user-{u}",
                "item_id": f"item-{item}",
                "category": f"c{item % 10}",
            }
        )
    return out


def test_every_click_gets_one_recommendation_and_features_reach_redis(settings_factory, worker_factory):
    settings = settings_factory()
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")

    clicks = make_clicks(10_000)
    topic = settings.topic_prefix + "shop.clicks.v1"
    asyncio.run(
        produce_all(settings.kafka_bootstrap, ((topic, c["user_id"].encode(), enc.encode(c)) for c in clicks))
    )
    want = {c["event_id"] for c in clicks}

    def done(msgs: list) -> bool:
        return len({RECOMMENDATION_CODEC.decode(m.value).event_id for m in msgs}) >= len(want)

    msgs = asyncio.run(
        consume_until(settings.kafka_bootstrap, settings.topic_prefix + "shop.recommendations.v1", done, 120)
    )
    recs = [RECOMMENDATION_CODEC.decode(m.value) for m in msgs]
    per_event = Counter(r.event_id for r in recs)
    assert set(per_event) == want, f"missing {len(want - set(per_event))} recommendations"
    assert max(per_event.values()) == 1, "a click produced more than one recommendation"
    by_event = {c["event_id"]: c for c in clicks}
    for m, r in zip(msgs, recs, strict=True):
        assert m.key == r.user_id.encode() == by_event[r.event_id]["user_id"].encode()
        assert len(r.items) <= settings.recs_k
        assert all(it.reason for it in r.items)
        assert r.user_id not in {it.item_id for it in r.items}
    # Only the very first events of a cold model can have short lists.
    assert sum(len(r.items) == settings.recs_k for r in recs) >= 0.99 * len(recs)
    # Later lists of an active user come from co-visitation, not only popularity.
    assert sum(1 for r in recs for it in r.items if it.reason.startswith("together_with:")) > len(recs)

    # User and item features are in Redis, one hash per entity, with a TTL.
    n_by_user = Counter(c["user_id"] for c in clicks)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    deadline_users = list(n_by_user)[:50]
    import time

    end = time.monotonic() + 15
    while time.monotonic() < end:
        hashes = [client.hgetall(f"{settings.redis_prefix}user:{u}") for u in deadline_users]
        if all(
            int(h.get("n_events", 0)) == n_by_user[u] for u, h in zip(deadline_users, hashes, strict=True)
        ):
            break
        time.sleep(0.2)
    for u, h in zip(deadline_users, hashes, strict=True):
        assert int(h["n_events"]) == n_by_user[u]
        assert h["last_item"].startswith("item-")
    ttl = client.ttl(f"{settings.redis_prefix}user:{deadline_users[0]}")
    assert 0 < ttl <= settings.feature_ttl_s
    assert client.hgetall(f"{settings.redis_prefix}item:{clicks[0]['item_id']}")["n_click"]

    # The archive agent wrote every click to the Parquet lake.
    end = time.monotonic() + 30
    rows = 0
    while time.monotonic() < end:
        rows = read_lake(settings.lake_dir, topic).num_rows
        if rows >= len(clicks):
            break
        time.sleep(0.5)
    assert rows == len(clicks)
    assert worker.alive()


BAD_KINDS = {
    "malformed_json": 100,
    "wrong_type": 100,
    "missing_field": 100,
    "too_large": 2,
    "invalid_utf8": 100,
    "unknown_event_type": 98,
}


def make_bad(rng: random.Random) -> list[tuple[str, bytes]]:
    bad: list[tuple[str, bytes]] = []
    good = {"type": "click", "event_id": "x", "ts": 1.0, "user_id": "user-bad", "item_id": "item-1"}
    for i in range(BAD_KINDS["malformed_json"]):
        raw = enc.encode(dict(good, event_id=f"bad-t{i}"))
        bad.append(("malformed_json", raw[: rng.randrange(1, len(raw) - 1)]))
    for i in range(BAD_KINDS["wrong_type"]):
        bad.append(("wrong_type", enc.encode(dict(good, event_id=f"bad-w{i}", ts="yesterday"))))
    for i in range(BAD_KINDS["missing_field"]):
        ev = dict(good, event_id=f"bad-m{i}")
        del ev["item_id"]
        bad.append(("missing_field", enc.encode(ev)))
    for i in range(BAD_KINDS["too_large"]):
        bad.append(
            ("too_large", enc.encode(dict(good, event_id=f"bad-l{i}", item_id="i" * (2 * 1024 * 1024))))
        )
    for i in range(BAD_KINDS["invalid_utf8"]):
        bad.append(
            (
                "invalid_utf8",
                enc.encode(dict(good, event_id=f"bad-u{i}")).replace(b"user-bad", b"user-\xff\xfe"),
            )
        )
    for i in range(BAD_KINDS["unknown_event_type"]):
        bad.append(("unknown_event_type", enc.encode(dict(good, event_id=f"bad-k{i}", type="teleport"))))
    return bad


def test_bad_input_goes_to_the_dlq_and_good_input_is_all_processed(settings_factory, worker_factory):
    settings = settings_factory()
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")

    rng = random.Random(1)
    clicks = make_clicks(10_000, seed=1)
    bad = make_bad(rng)
    assert len(bad) == 500
    topic = settings.topic_prefix + "shop.clicks.v1"
    mixed: list[tuple[str, bytes, bytes]] = [(topic, c["user_id"].encode(), enc.encode(c)) for c in clicks]
    for _, raw in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), (topic, b"user-bad", raw))
    asyncio.run(produce_all(settings.kafka_bootstrap, mixed))

    dlq = asyncio.run(consume_until(settings.kafka_bootstrap, topic + ".dlq", lambda m: len(m) >= 500, 120))
    recs = consume_recs(settings, len(clicks))
    assert len({RECOMMENDATION_CODEC.decode(m.value).event_id for m in recs}) == len(clicks)

    # Exactly 500 dead letters: nothing more arrives after a grace period.
    more = asyncio.run(consume_until(settings.kafka_bootstrap, topic + ".dlq", lambda m: len(m) > 500, 3))
    assert len(more) == 500
    letters = [DEAD_LETTER_CODEC.decode(m.value) for m in dlq]
    assert Counter(d.reason for d in letters) == Counter(BAD_KINDS)
    originals = Counter(raw for _, raw in bad)
    assert Counter(d.original for d in letters) == originals
    for d, m in zip(letters, dlq, strict=True):
        assert d.source_topic == topic
        assert 0 <= d.partition < settings.partitions and d.offset >= 0
        assert d.error and d.ts > 0
        assert dict(m.headers)["dlq.reason"] == d.reason.encode()
    assert {d.field for d in letters if d.reason == "missing_field"} == {"$.item_id"}
    assert {d.field for d in letters if d.reason == "wrong_type"} == {"$.ts"}

    assert worker.alive()
    text = worker.metrics_text()
    for reason, n in BAD_KINDS.items():
        assert metric_value(text, "shopstream_dlq_events_total", {"reason": reason}) == n


def test_a_recs_only_worker_reads_clicks_and_orders_only_and_recommends(settings_factory, worker_factory):
    """SHOPSTREAM_AGENTS=recs: the slice works, and the worker is assigned no other input topic."""
    import json
    import urllib.error
    import urllib.request

    settings = settings_factory(agents="recs", archive=False)
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    health = worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")
    assigned = {t.rpartition(":")[0] for t in health["assigned"]}
    tables = {f"{settings.app_id}-{t}-changelog" for t in ("recent-items", "bought-items")}
    inputs = assigned - tables - {f"{settings.app_id}-__assignor-__leader"}
    assert inputs == {settings.topic_prefix + "shop.clicks.v1", settings.topic_prefix + "shop.orders.v1"}

    clicks = make_clicks(500, seed=3)
    topic = settings.topic_prefix + "shop.clicks.v1"
    asyncio.run(
        produce_all(settings.kafka_bootstrap, ((topic, c["user_id"].encode(), enc.encode(c)) for c in clicks))
    )
    recs = consume_recs(settings, len(clicks))
    assert {RECOMMENDATION_CODEC.decode(m.value).event_id for m in recs} == {c["event_id"] for c in clicks}

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(worker.url + "/campaigns", timeout=5)
    assert err.value.code == 404
    assert json.loads(err.value.read())["group"] == "bidding"
    with urllib.request.urlopen(worker.url + "/recommendations/user-1?k=5", timeout=5) as r:
        assert r.status == 200 and 1 <= len(json.loads(r.read())["items"]) <= 5
