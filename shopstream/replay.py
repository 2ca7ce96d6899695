"""Produce events to Kafka at a target rate, with a progress bar and the achieved rate."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Iterable, Iterator

from shopstream.settings import Settings

Event = tuple[str, bytes, bytes]


class Pacer:
    """Sleeps so that ``n`` events take ``n / rate`` seconds (``rate`` <= 0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()

    async def wait(self, sent: int) -> None:
        if self.rate <= 0:
            if sent % 1000 == 0:
                await asyncio.sleep(0)
            return
        ahead = sent / self.rate - (time.monotonic() - self.t0)
        if ahead > 0.002:
            await asyncio.sleep(ahead)


async def produce(
    settings: Settings,
    events: Iterable[Event],
    rate: float = 1000.0,
    limit: int | None = None,
    duration: float | None = None,
    progress: bool = True,
    desc: str = "replay",
) -> dict[str, float]:
    """Send ``events`` (topic base, key, value) to Kafka; return counts and the achieved rate."""
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    from shopstream.services import MESSAGE_MAX_BYTES

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        linger_ms=5,
        max_request_size=MESSAGE_MAX_BYTES,
        max_batch_size=256 * 1024,
        acks=1,
    )
    await producer.start()
    prefix = settings.topic_prefix
    it: Iterator[Event] = iter(events)
    if limit is not None:
        it = itertools.islice(it, limit)
    bar = tqdm(total=limit, desc=desc, unit="ev", disable=not progress, file=sys.stderr, smoothing=0.1)
    pacer = Pacer(rate)
    sent = 0
    t0 = time.monotonic()
    pending: list[asyncio.Future] = []
    try:
        for topic, key, value in it:
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            pending.append(await producer.send(prefix + topic, value=value, key=key))
            sent += 1
            if sent % 500 == 0:
                bar.update(500)
                await asyncio.gather(*pending)
                pending.clear()
            await pacer.wait(sent)
        await producer.flush()
        if pending:
            await asyncio.gather(*pending)
        bar.update(sent % 500)
    finally:
        bar.close()
        await producer.stop()
    took = time.monotonic() - t0
    return {"sent": sent, "seconds": took, "rate": sent / took if took > 0 else 0.0}


async def produce_timed(
    settings: Settings,
    rows: Iterable[tuple[float, Event]],
    speedup: float,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Replay timestamped events in order, ``speedup`` times faster than they happened."""
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks=1)
    await producer.start()
    bar = tqdm(total=limit, desc="replay file", unit="ev", disable=not progress, file=sys.stderr)
    sent = 0
    t0 = time.monotonic()
    first: float | None = None
    try:
        for ts, (topic, key, value) in itertools.islice(rows, limit):
            if first is None:
                first = ts
            due = (ts - first) / speedup - (time.monotonic() - t0)
            if due > 0.002:
                await asyncio.sleep(due)
            await producer.send(settings.topic_prefix + topic, value=value, key=key)
            sent += 1
            if sent % 500 == 0:
                bar.update(500)
        await producer.flush()
        bar.update(sent % 500)
    finally:
        bar.close()
        await producer.stop()
    took = time.monotonic() - t0
    return {"sent": sent, "seconds": took, "rate": sent / took if took > 0 else 0.0}
