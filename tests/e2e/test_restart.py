"""Whole worker processes: ``kill -9`` mid-stream, restart, nothing lost, state recovered."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import msgspec
import pytest
import redis

from schemas.events import RECOMMENDATION_CODEC
from streams.app import ensure_topics
from tests.integration.test_clicks_pipeline import make_clicks
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.e2e
enc = msgspec.json.Encoder()


def expected_recent(events: list[dict], keep: int = 20) -> dict[str, list[str]]:
    recent: dict[str, list[str]] = {}
    for e in events:
        r = recent.get(e["user_id"], [])
        recent[e["user_id"]] = [*(i for i in r if i != e["item_id"]), e["item_id"]][-keep:]
    return recent


def test_kill_9_and_restart_loses_nothing_and_recovers_table_state(settings_factory, worker_factory, capsys):
    settings = settings_factory()
    asyncio.run(ensure_topics(settings))
    clicks_topic = settings.topic_prefix + "shop.clicks.v1"
    recs_topic = settings.topic_prefix + "shop.recommendations.v1"
    first = worker_factory(settings, "w1")
    first.wait_ready(timeout=90, topic=clicks_topic)

    clicks = make_clicks(8_000, n_users=150, seed=5)
    part1, part2 = clicks[:5_000], clicks[5_000:]
    asyncio.run(
        produce_all(
            settings.kafka_bootstrap, ((clicks_topic, c["user_id"].encode(), enc.encode(c)) for c in part1)
        )
    )
    seen = asyncio.run(consume_until(settings.kafka_bootstrap, recs_topic, lambda m: len(m) >= 1_500, 60))
    assert len(seen) >= 1_500
    first.kill()  # kill -9 mid-stream
    assert not first.alive()

    asyncio.run(
        produce_all(
            settings.kafka_bootstrap, ((clicks_topic, c["user_id"].encode(), enc.encode(c)) for c in part2)
        )
    )
    second = worker_factory(settings, "w1-restarted")
    second.wait_ready(timeout=90, topic=clicks_topic)
    want = {c["event_id"] for c in clicks}

    def done(msgs: list) -> bool:
        return len({RECOMMENDATION_CODEC.decode(m.value).event_id for m in msgs}) >= len(want)

    msgs = asyncio.run(consume_until(settings.kafka_bootstrap, recs_topic, done, 120))
    per_event = Counter(RECOMMENDATION_CODEC.decode(m.value).event_id for m in msgs)
    missing = want - set(per_event)
    duplicates = sum(n - 1 for n in per_event.values())
    with capsys.disabled():
        print(
            f"\nrestart: {len(want)} clicks, {len(msgs)} recommendations, "
            f"{duplicates} duplicates (at-least-once)"
        )
    assert not missing, f"{len(missing)} clicks have no recommendation"
    assert set(per_event) == want

    # The recent-items table was recovered from its changelog: the restarted worker's
    # lists continue the history from before the crash (visible in the users' Redis features).
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    expect = expected_recent(clicks)
    users = sorted({c["user_id"] for c in part2 if any(p["user_id"] == c["user_id"] for p in part1)})[:40]
    assert users
    deadline = time.monotonic() + 20
    while True:
        got = {u: client.hget(f"{settings.redis_prefix}user:{u}", "recent") for u in users}
        ok = all(got[u] == ",".join(expect[u][-10:]) for u in users)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for u in users:
        assert got[u] == ",".join(expect[u][-10:]), u
    assert second.alive()
