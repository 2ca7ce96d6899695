"""A consumer fake for stop tests: its first fetch returns one batch, but only once the test lets it."""

from __future__ import annotations

import asyncio
from typing import Any


class OneBatchConsumer:
    """Stands in for an ``AIOKafkaConsumer``: the first ``getmany`` blocks until :meth:`release`."""

    def __init__(self, batch: dict[Any, list[Any]], log: list[str]) -> None:
        self.batch = batch
        self.log = log
        self.committed: list[dict[Any, int]] = []
        self.calls = 0
        self.fetched = asyncio.Event()
        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.calls += 1
        if self.calls > 1:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.fetched.set()
        await self._release.wait()
        return self.batch

    def assignment(self) -> set[Any]:
        return set(self.batch)

    async def commit(self, offsets: dict[Any, Any]) -> None:
        self.committed.append({tp: o.offset for tp, o in offsets.items()})

    async def stop(self) -> None:
        self.log.append("consumer stopped")


async def stop_with_batch_in_hand(service: Any, consume: Any, consumer: OneBatchConsumer) -> None:
    """Stop ``service`` as mode does (flag, then ``on_stop``) while ``consume`` waits on its fetch."""
    loop_task = asyncio.ensure_future(consume(service))
    await consumer.fetched.wait()
    service._stopped_set()  # what Service.stop does before it calls on_stop
    stopping = asyncio.ensure_future(service.on_stop())
    await asyncio.sleep(0.05)
    consumer.release()  # the fetch in flight returns its batch now
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(loop_task, 5)
