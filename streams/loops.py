"""Stopping a service whose task runs a consume loop, without cutting off the batch it holds.

mode's ``Service.stop`` calls ``on_stop`` first and cancels the service's
tasks afterwards. A loop that had just fetched a batch would otherwise be
answering it while ``on_stop`` commits and closes the consumer and producer:
its outputs would fail, and its offsets miss the final commit.
:class:`ConsumeLoop` lets ``on_stop`` wait for the loop to end (it checks
``should_stop`` after each batch).

Examples
--------
>>> import asyncio
>>> async def demo() -> list[str]:
...     loop, seen = ConsumeLoop(), []
...     async def consume() -> None:
...         async with loop.running():
...             await asyncio.sleep(0.01)  # the batch in hand
...             seen.append("batch answered")
...     task = asyncio.ensure_future(consume())
...     await asyncio.sleep(0)
...     await loop.wait_done(timeout_s=1.0)
...     seen.append("on_stop goes on")
...     await task
...     return seen
>>> asyncio.run(demo())
['batch answered', 'on_stop goes on']
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: How long stopping waits for a consume loop to finish the batch it holds, seconds.
STOP_WAIT_S = 5.0


class ConsumeLoop:
    """Marks when a consume loop runs, so that stopping can wait for it to end."""

    def __init__(self) -> None:
        self._done: asyncio.Event | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Wrap the loop: from here until it returns, :meth:`wait_done` waits for it."""
        self._done = done = asyncio.Event()
        try:
            yield
        finally:
            done.set()

    async def wait_done(self, timeout_s: float = STOP_WAIT_S) -> bool:
        """Wait until the loop has ended (at most ``timeout_s``); True if it has, or never started."""
        if self._done is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._done.wait()
        return self._done.is_set()
