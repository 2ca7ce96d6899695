"""Produce events to Kafka at a target rate, or at their own pace, with a progress bar.

Examples
--------
>>> p = Pacer(rate=0)
>>> asyncio.run(p.wait(10, None))  # no pacing: returns at once
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Iterable
from typing import cast

from shopstream.settings import Settings

Event = tuple[str, bytes, bytes]


class Pacer:
    """Sleeps so that ``n`` events take ``n / rate`` seconds (``rate`` <= 0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()

    async def wait(self, sent: int, ts: float | None) -> None:
        """Wait before sending event number ``sent`` (``ts``: its own timestamp, unused)."""
        if self.rate <= 0:
            if sent % 1000 == 0:
                await asyncio.sleep(0)
            return
        ahead = sent / self.rate - (time.monotonic() - self.t0)
        if ahead > 0.002:
            await asyncio.sleep(ahead)


class TimestampPacer:
    """Keeps the events' own spacing, ``speedup`` times faster than it happened."""

    def __init__(self, speedup: float) -> None:
        self.speedup = speedup
        self.t0 = time.monotonic()
        self.first: float | None = None

    async def wait(self, sent: int, ts: float | None) -> None:
        """Wait until event time ``ts`` is due."""
        if ts is None:
            return
        if self.first is None:
            self.first = ts
        due = (ts - self.first) / self.speedup - (time.monotonic() - self.t0)
        if due > 0.002:
            await asyncio.sleep(due)
        elif sent % 1000 == 0:
            await asyncio.sleep(0)


async def produce(
    settings: Settings,
    events: Iterable[Event] | Iterable[tuple[float, Event]],
    rate: float = 1000.0,
    limit: int | None = None,
    duration: float | None = None,
    progress: bool = True,
    desc: str = "replay",
    speedup: float | None = None,
) -> dict[str, float]:
    """Send events to Kafka; return counts and the achieved rate.

    ``events`` are ``(topic base, key, value)``, paced to ``rate`` per second;
    with ``speedup`` they are ``(ts, (topic base, key, value))`` in time order,
    paced by their timestamps.
    """
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
    pacer: Pacer | TimestampPacer = Pacer(rate) if speedup is None else TimestampPacer(speedup)
    rows = cast(
        Iterable[tuple[float | None, Event]], ((None, e) for e in events) if speedup is None else events
    )
    bar = tqdm(total=limit, desc=desc, unit="ev", disable=not progress, file=sys.stderr, smoothing=0.1)
    sent = 0
    t0 = time.monotonic()
    pending: list[asyncio.Future] = []
    try:
        for ts, (topic, key, value) in itertools.islice(rows, limit):
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            await pacer.wait(sent, ts)
            pending.append(await producer.send(prefix + topic, value=value, key=key))
            sent += 1
            if sent % 500 == 0:
                bar.update(500)
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
        bar.update(sent % 500)
    finally:
        bar.close()
        await producer.stop()
    took = time.monotonic() - t0
    return {"sent": sent, "seconds": took, "rate": sent / took if took > 0 else 0.0}
