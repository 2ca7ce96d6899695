"""Produce and consume helpers for tests (real aiokafka clients, deadlines, no fixed sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shopstream.services import MESSAGE_MAX_BYTES


async def produce_all(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Send (topic, key, value) messages and wait for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=MESSAGE_MAX_BYTES, acks="all"
    )
    await producer.start()
    n = 0
    try:
        futs = []
        for topic, key, value in messages:
            futs.append(await producer.send(topic, value=value, key=key))
            n += 1
            if len(futs) >= 1000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return n


async def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list], bool],
    timeout: float,
    group: str | None = None,
) -> list:
    """Read ``topic`` from the start until ``done(messages)`` or the deadline; return the messages."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=MESSAGE_MAX_BYTES,
        fetch_max_bytes=4 * MESSAGE_MAX_BYTES,
    )
    await consumer.start()
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(out):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out
