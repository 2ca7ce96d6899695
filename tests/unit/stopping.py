"""Fakes for stop tests of services with a consume loop (streams.loops.ConsumeLoop)."""

from __future__ import annotations

import asyncio
from typing import Any


class OneBatchConsumer:
    """Stands in for an ``AIOKafkaConsumer`` whose first ``getmany`` returns ``batch``.

    With ``hold``, that first fetch waits until ``released`` is set (and logs its cancellation).
    """

    def __init__(self, batch: dict[Any, list[Any]], log: list[str], hold: bool = False) -> None:
        self.batch = batch
        self.log = log
        self.hold = hold
        self.committed: list[dict[Any, int]] = []
        self.calls = 0
        self.fetched = asyncio.Event()
        self.released = asyncio.Event()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.calls += 1
        if self.calls > 1:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.fetched.set()
        if self.hold:
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                self.log.append("fetch cancelled")
                raise
        return self.batch

    def assignment(self) -> set[Any]:
        return set(self.batch)

    async def commit(self, offsets: dict[Any, Any]) -> None:
        self.committed.append({tp: o.offset for tp, o in offsets.items()})

    async def stop(self) -> None:
        self.log.append("consumer stopped")


async def stop_when(service: Any, consume: Any, ready: asyncio.Event, go: asyncio.Event) -> None:
    """Start the ``consume`` loop; once ``ready``, stop ``service`` as mode does, then set ``go``.

    mode's ``Service.stop`` sets the stop flag, awaits ``on_stop`` and only then
    cancels the service's tasks; ``go`` lets the loop on 50 ms into ``on_stop``.
    """
    loop_task = asyncio.ensure_future(consume(service))
    await asyncio.wait_for(ready.wait(), 5)
    service._stopped_set()
    stopping = asyncio.ensure_future(service.on_stop())
    await asyncio.sleep(0.05)
    go.set()
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(asyncio.gather(loop_task, return_exceptions=True), 5)
