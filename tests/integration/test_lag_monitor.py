"""The lag monitor against a real Kafka: Burrow-style statuses, lag equal to Kafka's own tool, time lag."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.lag import LagMonitor
from shopstream.services import create_topics

pytestmark = pytest.mark.integration


async def produce_forever(
    bootstrap: str, topic: str, rate: float, stop: asyncio.Event, partitions: int
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    n = 0
    t0 = time.perf_counter()
    try:
        while not stop.is_set():
            due = int((time.perf_counter() - t0) * rate)
            while n < due:
                await producer.send(topic, b"x" * 50, partition=n % partitions)
                n += 1
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def consume(
    bootstrap: str,
    topic: str,
    group: str,
    stop: asyncio.Event,
    max_rate: float | None = None,
    rewind_at: float | None = None,
    stop_after: float | None = None,
) -> None:
    """A consumer group member committing every 0.5 s; optionally slow, rewinding or stopping."""
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await c.start()
    t0 = time.monotonic()
    last_commit = t0
    rewound = False
    try:
        while not stop.is_set():
            now = time.monotonic()
            if stop_after is not None and now - t0 > stop_after:
                await c.commit()
                return
            limit = max(1, int(max_rate * 0.1)) if max_rate else 1000
            await c.getmany(timeout_ms=100, max_records=limit)
            if max_rate:
                await asyncio.sleep(0.1)
            if rewind_at is not None and not rewound and now - t0 > rewind_at:
                offsets = {}
                for tp in c.assignment():
                    pos = await c.position(tp)
                    offsets[tp] = max(pos - 100, 0)
                await c.commit(offsets)
                for tp, off in offsets.items():
                    c.seek(tp, off)
                rewound = True
                last_commit = now
                continue
            if now - last_commit >= 0.5:
                await c.commit()
                last_commit = now
    finally:
        await c.stop()


def test_statuses_and_lag_match_kafkas_own_tool(services):
    kafka, _ = services
    asyncio.run(_scenario(kafka))


async def _scenario(kafka) -> None:
    bootstrap = kafka.bootstrap
    tag = uuid.uuid4().hex[:8]
    topic = f"lag-{tag}"
    await create_topics(bootstrap, {topic: 2}, 1)
    g = {name: f"lag-{name}-{tag}" for name in ("healthy", "slow", "stopped", "rewound")}
    seen: dict[str, list[tuple[float, str]]] = {name: [] for name in g}

    monitor = LagMonitor(bootstrap, g.values(), interval_s=0.5, window=5, stop_after_s=3.0)
    await monitor.start()
    stop_prod, stop_cons = asyncio.Event(), asyncio.Event()
    prod = asyncio.create_task(produce_forever(bootstrap, topic, 200, stop_prod, 2))
    tasks = [
        asyncio.create_task(consume(bootstrap, topic, g["healthy"], stop_cons)),
        asyncio.create_task(consume(bootstrap, topic, g["slow"], stop_cons, max_rate=60)),
        asyncio.create_task(consume(bootstrap, topic, g["stopped"], stop_cons, stop_after=4.0)),
        asyncio.create_task(consume(bootstrap, topic, g["rewound"], stop_cons, rewind_at=6.0)),
    ]
    t0 = time.monotonic()
    first_stop = None
    try:
        while time.monotonic() - t0 < 22:
            await monitor.sample()
            now = time.monotonic() - t0
            for name, gid in g.items():
                seen[name].append((now, monitor.groups[gid].status))
            if first_stop is None and monitor.groups[g["stopped"]].status == "STOP":
                first_stop = now
            await asyncio.sleep(0.5)
    finally:
        stop_cons.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_prod.set()
        await prod

    statuses = {name: [s for _, s in obs] for name, obs in seen.items()}
    # The healthy group is OK once its first commits are in (no flapping after that).
    healthy_after = [s for t, s in seen["healthy"] if t > 4.0]
    assert set(healthy_after) == {"OK"}, seen["healthy"]
    # The slowed group falls behind and says so.
    assert "WARNING" in statuses["slow"], seen["slow"]
    # The stopped group (it left at ~4 s) is STOP within a bounded time: stop_after_s + 2 intervals + slack.
    assert first_stop is not None, seen["stopped"]
    assert first_stop <= 4.0 + 3.0 + 5.0, first_stop
    # The rewound group is seen rewinding.
    assert "REWIND" in statuses["rewound"], seen["rewound"]

    # Lag numbers equal Kafka's own tool once nothing moves.
    await monitor.sample()
    for name in ("stopped", "rewound", "healthy"):
        gid = g[name]
        rows = await asyncio.to_thread(kafka.describe_group, gid)
        assert rows, f"kafka-consumer-groups shows nothing for {gid}"
        tool = {
            (r["TOPIC"], int(r["PARTITION"])): (
                int(r["CURRENT-OFFSET"]),
                int(r["LOG-END-OFFSET"]),
                int(r["LAG"]),
            )
            for r in rows
        }
        ours = {k: (p.committed, p.end_offset, p.lag) for k, p in monitor.groups[gid].partitions.items()}
        assert ours == tool, (name, ours, tool)
    await monitor.stop()


def test_time_lag_estimate_tracks_the_age_of_the_oldest_unconsumed_message(services, capsys):
    kafka, _ = services
    errors = asyncio.run(_time_lag(kafka.bootstrap))
    with capsys.disabled():
        print(f"\ntime-lag estimate: {len(errors)} checks, max relative error {max(errors):.3f}")


async def _time_lag(bootstrap: str) -> list[float]:
    tag = uuid.uuid4().hex[:8]
    topic = f"tlag-{tag}"
    group = f"tlag-{tag}"
    await create_topics(bootstrap, {topic: 1}, 1)
    stop = asyncio.Event()
    prod = asyncio.create_task(produce_forever(bootstrap, topic, 100, stop, 1))
    monitor = LagMonitor(bootstrap, [group], interval_s=0.5, stop_after_s=60)
    await monitor.start()
    # The group reads the first ~2 s of the stream, commits, and stops.
    await consume(bootstrap, topic, group, asyncio.Event(), stop_after=2.0)
    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    reader.assign([tp])
    errors = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            await monitor.sample()
            ps = monitor.groups[group].partitions.get((topic, 0))
            if ps is not None and ps.committed is not None and ps.lag > 0 and monitor.samples > 4:
                reader.seek(tp, ps.committed)
                msg = await asyncio.wait_for(reader.getone(), 5)
                true_age = time.time() - msg.timestamp / 1000.0
                errors.append(abs(ps.lag_seconds - true_age) / true_age)
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await prod
        await reader.stop()
        await monitor.stop()
    assert len(errors) >= 8, errors
    assert max(errors) <= 0.20, [round(e, 3) for e in errors]
    return errors
