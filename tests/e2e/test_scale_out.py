"""Two workers in one consumer group split the partitions; stopping one moves its work."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import msgspec
import pytest

from schemas.events import RECOMMENDATION_CODEC
from shopstream.services import free_port
from streams.app import ensure_topics
from tests.integration.test_clicks_pipeline import make_clicks
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.e2e
enc = msgspec.json.Encoder()


def clicks_partitions(health: dict | None, topic: str) -> set[int]:
    return {
        int(a.rsplit(":", 1)[1]) for a in (health or {}).get("assigned", []) if a.rsplit(":", 1)[0] == topic
    }


def test_two_workers_split_partitions_and_fail_over(settings_factory, worker_factory, capsys):
    settings = settings_factory()
    asyncio.run(ensure_topics(settings))
    topic = settings.topic_prefix + "shop.clicks.v1"
    recs_topic = settings.topic_prefix + "shop.recommendations.v1"
    changelog = f"{settings.app_id}-recent-items-changelog"
    w1 = worker_factory(settings, "w1")
    w1.wait_ready(timeout=90, topic=topic)
    w2 = worker_factory(settings.with_(web_port=free_port()), "w2")
    w2.wait_ready(timeout=90, topic=topic)

    # Both workers own clicks partitions, disjoint and covering all of them.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        h1, h2 = w1.health() or {}, w2.health() or {}
        p1, p2 = clicks_partitions(h1, topic), clicks_partitions(h2, topic)
        settled = h1.get("ready") and h2.get("ready")
        if settled and p1 and p2 and p1 | p2 == set(range(settings.partitions)) and not p1 & p2:
            break
        time.sleep(0.3)
    assert p1 and p2 and not p1 & p2 and p1 | p2 == set(range(settings.partitions)), (p1, p2)
    # Table partitions follow their co-partitioned input partitions.
    assert clicks_partitions(w2.health(), changelog) >= p2

    clicks = make_clicks(6_000, n_users=200, seed=9)
    part1, part2 = clicks[:3_000], clicks[3_000:]
    asyncio.run(
        produce_all(settings.kafka_bootstrap, ((topic, c["user_id"].encode(), enc.encode(c)) for c in part1))
    )
    # At-least-once: a rebalance can repeat some lists, so wait for every click's id, not a count.
    first_ids = {c["event_id"] for c in part1}

    def first_done(msgs: list) -> bool:
        return first_ids <= {RECOMMENDATION_CODEC.decode(m.value).event_id for m in msgs}

    first = asyncio.run(consume_until(settings.kafka_bootstrap, recs_topic, first_done, 90))
    assert first_ids <= {RECOMMENDATION_CODEC.decode(m.value).event_id for m in first}

    assert w2.stop(timeout=30) is not None  # graceful stop: SIGTERM
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if clicks_partitions(w1.health(), topic) == set(range(settings.partitions)):
            break
        time.sleep(0.3)
    moved = clicks_partitions(w1.health(), topic)
    assert moved == set(range(settings.partitions)), moved
    assert clicks_partitions(w1.health(), changelog) >= p2

    asyncio.run(
        produce_all(settings.kafka_bootstrap, ((topic, c["user_id"].encode(), enc.encode(c)) for c in part2))
    )
    want = {c["event_id"] for c in clicks}

    def done(msgs: list) -> bool:
        return len({RECOMMENDATION_CODEC.decode(m.value).event_id for m in msgs}) >= len(want)

    msgs = asyncio.run(consume_until(settings.kafka_bootstrap, recs_topic, done, 120))
    per_event = Counter(RECOMMENDATION_CODEC.decode(m.value).event_id for m in msgs)
    with capsys.disabled():
        print(
            f"\nscale-out: w1 {sorted(p1)} + w2 {sorted(p2)} -> w1 {sorted(moved)}; "
            f"{len(msgs)} recommendations for {len(want)} clicks"
        )
    missing = want - set(per_event)
    if missing:
        from aiokafka.partitioner import DefaultPartitioner

        by_id = {c["event_id"]: c for c in clicks}
        parts = Counter(
            DefaultPartitioner()(by_id[e]["user_id"].encode(), list(range(settings.partitions)), None)
            for e in missing
        )
        pytest.fail(f"{len(missing)} clicks lost, by partition {dict(parts)}: {sorted(missing)[:10]}")
    assert w1.alive()
