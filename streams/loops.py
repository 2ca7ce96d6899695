"""Stopping a service whose task runs a consume loop, without cutting off the batch it holds.

mode's ``Service.stop`` calls ``on_stop`` first and cancels the service's
tasks afterwards. A loop that had just fetched a batch would otherwise be
answering it while ``on_stop`` commits and closes the consumer and producer:
its outputs would fail, and its offsets miss the final commit. And a fetch
still waiting (for records, or for a rebalance to assign partitions) could
return a batch after the consumer and producer had stopped.

:class:`ConsumeLoop` tracks the loop: wrap it in :meth:`~ConsumeLoop.running`
and each fetch in :meth:`~ConsumeLoop.fetch`. Then ``on_stop`` calls
:meth:`~ConsumeLoop.wait_done`: a pending fetch is cancelled at once (nothing
is in hand yet; what it would have returned is read again by the partition's
next owner), and a batch in hand is finished first (the loop checks
``should_stop`` after each batch).

Examples
--------
>>> import asyncio
>>> async def demo(stop_while: str) -> list[str]:
...     loop, seen = ConsumeLoop(), []
...     async def consume() -> None:
...         async with loop.running():
...             try:
...                 await loop.fetch(asyncio.sleep(0.01 if stop_while == "handling" else 60))
...             except asyncio.CancelledError:
...                 seen.append("fetch cancelled")
...                 raise
...             await asyncio.sleep(0.01)  # the batch in hand
...             seen.append("batch answered")
...     task = asyncio.ensure_future(consume())
...     await asyncio.sleep(0.015 if stop_while == "handling" else 0)
...     seen.append(f"ended: {await loop.wait_done(timeout_s=1.0)}")
...     await asyncio.gather(task, return_exceptions=True)
...     return seen
>>> asyncio.run(demo("handling"))
['batch answered', 'ended: True']
>>> asyncio.run(demo("fetching"))
['fetch cancelled', 'ended: True']
>>> asyncio.run(ConsumeLoop().wait_done())  # never started: nothing to wait for
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long stopping waits for a consume loop to finish the batch it holds, seconds.
STOP_WAIT_S = 5.0


class ConsumeLoop:
    """Marks when a consume loop runs and when it waits on a fetch (see the module docstring)."""

    def __init__(self) -> None:
        self._ended: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._fetching = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Wrap the loop: from here until it returns, :meth:`wait_done` waits for it."""
        self._ended = ended = asyncio.Event()
        self._task = asyncio.current_task()
        try:
            yield
        finally:
            self._fetching = False
            ended.set()

    async def fetch(self, fetching: Awaitable[T]) -> T:
        """Await one fetch (``consumer.getmany(...)``); stopping cancels it, as nothing is in hand yet."""
        self._fetching = True
        try:
            return await fetching
        finally:
            self._fetching = False

    async def wait_done(self, timeout_s: float = STOP_WAIT_S) -> bool:
        """Cancel a pending fetch, or wait (at most ``timeout_s``) for the batch in hand; True once ended.

        Call it outside the service's own locks: the loop may need them to finish.
        """
        ended = self._ended
        if ended is None or ended.is_set():
            return True
        if self._fetching and self._task is not None:
            self._task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await ended.wait()
        if not ended.is_set():
            log.warning("consume loop still busy after %.1fs; stopping without it", timeout_s)
        return ended.is_set()
