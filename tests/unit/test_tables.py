"""Changelog coalescing of the worker's tables (``streams/tables.py``), under ``agent.test_context()``."""

from __future__ import annotations

import asyncio
import json
import weakref
from types import SimpleNamespace

import msgspec
import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.types import TP

from shopstream.settings import Settings
from streams.app import create_app
from streams.tables import ChangelogWriteError, CoalescingTable
from tests.unit.test_agent import Collector

enc = msgspec.json.Encoder()


def _app(tmp_path):  # type: ignore[no-untyped-def]
    settings = Settings.from_env({}, data_dir=tmp_path / "d", lake_dir=tmp_path / "lake")
    app = create_app(settings, worker_name="unit")
    app.finalize()
    app.conf.store = "memory://"
    rt = app.shopstream  # type: ignore[attr-defined]
    rt.publish = Collector().publish
    return app, rt


def _record_sends(app):  # type: ignore[no-untyped-def]
    """Replace the producer's ``send`` (no broker here) with one that records and succeeds."""
    sent: list[tuple[str, bytes, bytes, int | None]] = []

    async def send(topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        sent.append((topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        p = partition or 0
        fut.set_result(RecordMetadata(topic, p, TopicPartition(topic, p), len(sent), None, 0, None))
        return fut

    app.producer.send = send
    return sent


async def _clicks(agent, pairs, partition=None):  # type: ignore[no-untyped-def]
    async with agent.test_context() as ctx:
        for n, (user, item) in enumerate(pairs):
            ev = {"type": "click", "event_id": f"e{n}", "ts": 1.0 + n, "user_id": user, "item_id": item}
            await ctx.put(enc.encode(ev), key=user.encode(), partition=partition)


async def test_changelog_gets_one_record_per_changed_key_when_the_producer_flushes(tmp_path):
    app, rt = _app(tmp_path)
    table = rt.extra["recent_items"]
    assert isinstance(table, CoalescingTable)
    sent = _record_sends(app)
    await _clicks(
        rt.extra["recommend_agent"], [("u1", "a"), ("u2", "x"), ("u1", "b"), ("u1", "c"), ("u2", "y")]
    )

    # Five assignments, two keys: nothing is written until Faust flushes the producer.
    assert table["u1"] == ["a", "b", "c"] and table["u2"] == ["x", "y"]
    assert sent == []
    assert (table.dirty, table.coalesced_writes) == (2, 3)
    assert app.producer.buffer.size == 0

    # faust-streaming awaits this before it commits offsets, on revocation and on stop.
    await app.producer.flush()
    name = table.changelog_topic.get_topic_name()
    # Serialised as Faust's own changelog records are (its recovery reads them back).
    assert [(t, json.loads(k), json.loads(v), p) for t, k, v, p in sent] == [
        (name, "u1", ["a", "b", "c"], 0),
        (name, "u2", ["x", "y"], 0),
    ]
    assert (table.dirty, table.changelog_writes, table.write_errors) == (0, 2, 0)

    # Only keys changed since are written next time.
    await _clicks(rt.extra["recommend_agent"], [("u2", "z")])
    await app.producer.flush()
    assert [(json.loads(k), json.loads(v)) for _, k, v, _ in sent[2:]] == [("u2", ["x", "y", "z"])]


async def test_dirty_keys_are_bounded_and_a_delete_is_written_as_a_tombstone(tmp_path):
    app, rt = _app(tmp_path)
    table = rt.extra["recent_items"]
    table.max_dirty = 3
    sent = _record_sends(app)
    await _clicks(rt.extra["recommend_agent"], [("u1", "a"), ("u2", "b"), ("u1", "c")])
    assert table.dirty == 2 and sent == []

    # The third distinct key reaches the bound: the three are written without waiting for a commit.
    await _clicks(rt.extra["recommend_agent"], [("u3", "d")])
    for _ in range(3):
        await asyncio.sleep(0)
    assert table.dirty == 0 and table.changelog_writes == 3
    assert [(json.loads(k), json.loads(v)) for _, k, v, _ in sent] == [
        ("u1", ["a", "c"]),
        ("u2", ["b"]),
        ("u3", ["d"]),
    ]
    assert app.producer.buffer.size == 0  # nothing went through Faust's per-assignment path

    # A delete replaces the key's pending value: one tombstone, nothing of the value before it.
    await _clicks(rt.extra["recommend_agent"], [("u4", "e")])
    from faust.streams import _current_event

    class Event:  # what partition_for_key reads from the event being processed
        message = SimpleNamespace(topic="shop.clicks.v1", partition=0)

    event = Event()
    token = _current_event.set(weakref.ref(event))
    try:
        del table["u4"]
    finally:
        _current_event.reset(token)
    assert "u4" not in table and table.dirty == 1 and table.coalesced_writes == 2
    await app.producer.flush()
    assert [(json.loads(k), v) for _, k, v, _ in sent[3:]] == [("u4", None)]


async def test_fausts_commit_writes_the_changelog_before_it_commits_offsets(tmp_path):
    """faust-streaming's own commit path: records handed to the producer, producer flushed, then offsets."""
    app, rt = _app(tmp_path)
    agent = rt.extra["recommend_agent"]
    order: list[tuple] = []
    sent = _record_sends(app)
    send = app.producer.send

    async def send_in_order(topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        order.append(("send", json.loads(key), partition))
        return await send(topic, key, value, partition, timestamp, headers)

    app.producer.send = send_in_order
    await _clicks(agent, [("u1", "a"), ("u1", "b")], partition=1)
    await _clicks(agent, [("u2", "x")], partition=3)

    consumer = app.consumer
    tp = TP("shop.clicks.v1", 1)

    async def commit(offsets):  # type: ignore[no-untyped-def]
        order.append(("commit", dict(offsets)))
        return True

    class AIOKafka:  # the aiokafka producer under faust's: its flush waits for every batch's outcome
        async def flush(self) -> None:
            order.append(("flush",))

    app.producer._producer = AIOKafka()
    consumer.assignment = lambda: {tp}
    consumer._commit = commit
    assert await consumer._commit_offsets({tp: 2})
    assert order == [("send", "u1", 1), ("send", "u2", 3), ("flush",), ("commit", {tp: 2})]
    assert len(sent) == 2


async def test_a_failed_write_keeps_its_keys_and_refuses_the_commit(tmp_path):
    app, rt = _app(tmp_path)
    table = rt.extra["recent_items"]
    await _clicks(rt.extra["recommend_agent"], [("u1", "a"), ("u2", "b"), ("u3", "c")])
    calls = 0

    async def send(topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KafkaTimeoutError("send buffer full")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(topic, 0, TopicPartition(topic, 0), calls, None, 0, None))
        return fut

    app.producer.send = send
    consumer = app.consumer
    tp = TP("shop.clicks.v1", 0)
    committed: list = []

    async def commit(offsets):  # type: ignore[no-untyped-def]
        committed.append(offsets)
        return True

    consumer.assignment = lambda: {tp}
    consumer._commit = commit
    with pytest.raises(KafkaTimeoutError):
        await consumer._commit_offsets({tp: 3})
    assert committed == []
    # u1 went out; u2 (whose send failed) and u3 are dirty again, with their values.
    assert table.dirty == 2 and table.changelog_writes == 1
    assert await table.write_changelog() == 2
    assert calls == 4

    # A record the producer accepted but failed to deliver: the next flush refuses the commit.
    await _clicks(rt.extra["recommend_agent"], [("u4", "d")])

    async def undeliverable(topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(KafkaTimeoutError("delivery timed out"))
        return fut

    app.producer.send = undeliverable
    with pytest.raises(ChangelogWriteError):
        await consumer._commit_offsets({tp: 4})
    assert committed == [] and table.write_errors == 1
    # Its key is dirty again, and the next flush writes it (with its value as it is then).
    assert table.dirty == 1
    recorded = _record_sends(app)
    assert await consumer._commit_offsets({tp: 4})
    assert committed == [{tp: 4}]
    assert [(json.loads(k), json.loads(v)) for _, k, v, _ in recorded] == [("u4", ["d"])]
