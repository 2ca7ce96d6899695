"""Handing fetched records to the agents without four asyncio tasks per record.

faust-streaming's consumer hands each fetched record to the conductor (which
decodes it and puts it on the queues of the streams that read its topic) with
``await self.wait_first(callback(message), self.suspend_flow.wait())``. That
lets a rebalance abandon a record whose hand-over is stuck (a stream's queue is
full, or flow control holds it), but it makes four tasks for every record (the
hand-over, and waits on the flow's suspension, the consumer's stop and its
crash), an ``asyncio.wait`` over them, and three cancellations. Almost every
hand-over finishes without waiting at all, so all of that is spent to guard
against a case that rarely happens. On this project's 2-core machine it cost
47-66 µs per record under uvloop (``wait_first`` against a plain ``await`` of a
coroutine that returns at once: 0.1-0.2 µs).

:func:`hand_over_without_task_per_record` replaces the consumer's drain loop
with one that awaits the hand-over in place. One long-lived watcher waits for
what ``wait_first`` waited for (the flow suspended, the consumer stopped or
crashed). If it fires while a hand-over is waiting, it cancels that hand-over,
as ``wait_first`` did, and the loop goes on with the next record; a record
found while the flow is already suspended goes through ``wait_first`` itself.
Everything else follows faust-streaming's loop: read offsets, gaps in the
offsets of acking topics, commits every ``broker_commit_every`` acks, and a
yield to the event loop every 100 records.

Examples
--------
>>> import asyncio
>>> async def demo() -> list[str]:
...     seen: list[str] = []
...     gate = asyncio.Event()
...     async def hand_over(record: str) -> None:
...         if record == "stuck":
...             await gate.wait()       # a full queue, say
...         seen.append(record)
...     guard = Guard(hand_over)
...     await guard.deliver("a")
...     stuck = asyncio.ensure_future(guard.deliver("stuck"))
...     await asyncio.sleep(0)
...     guard.abandon()                 # what the watcher does when the flow is suspended
...     seen.append(f"abandoned: {await stuck}")
...     await guard.deliver("b")
...     return seen
>>> asyncio.run(demo())
['a', 'abandoned: True', 'b']
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING

#: faust-streaming's drain loop yields to the event loop after this many records.
YIELD_EVERY = 100


class Guard:
    """Runs hand-overs in the caller's task; :meth:`abandon` cancels the one that is waiting.

    The caller's task is cancelled for it, and :meth:`deliver` turns that
    cancellation back into a return value (``True``: abandoned). A cancellation
    from anyone else still propagates.
    """

    def __init__(self, hand_over: Callable[[Any], Awaitable[Any]]) -> None:
        self.hand_over = hand_over
        self._task: asyncio.Task[Any] | None = None
        self._waiting = False
        self._abandoning = False
        self.abandoned = 0

    async def deliver(self, record: Any) -> bool:
        """Hand ``record`` over; False when done, True when :meth:`abandon` cut it off."""
        self._task = asyncio.current_task()
        self._waiting = True
        try:
            await self.hand_over(record)
            return False
        except asyncio.CancelledError:
            if not self._abandoning:
                raise
            self._abandoning = False
            if self._uncancel() > 0:  # cancelled by someone else too
                raise
            self.abandoned += 1
            return True
        finally:
            self._waiting = False
            if self._abandoning:  # the hand-over swallowed the cancellation and finished
                self._abandoning = False
                self._uncancel()

    def _uncancel(self) -> int:
        task = self._task
        assert task is not None
        return task.uncancel()

    def abandon(self) -> bool:
        """Cancel the hand-over in progress, if any (called from another task)."""
        if not self._waiting or self._abandoning or self._task is None:
            return False
        self._abandoning = True
        self._task.cancel()
        return True


def hand_over_without_task_per_record(app: faust.App) -> None:
    """Replace the drain loop of ``app``'s consumer with :func:`drain` (module docstring)."""
    consumer: Any = app.consumer

    async def drain_messages(fetcher: Any) -> None:
        await drain(consumer, fetcher)

    consumer._drain_messages = drain_messages


async def drain(consumer: Any, fetcher: Any) -> None:
    """faust-streaming's ``Consumer._drain_messages``, with hand-overs awaited in place."""
    guard = Guard(consumer.callback)
    getmany = consumer.getmany
    consumer_stopped = consumer._stopped.is_set
    fetcher_stopped = fetcher._stopped.is_set
    suspended = consumer.suspend_flow.is_set
    read_offsets = consumer._read_offset
    set_flag, unset_flag = consumer.diag.set_flag, consumer.diag.unset_flag
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    flag = CONSUMER_FETCHING
    watcher: asyncio.Future[Any] | None = None

    async def watch() -> None:
        # Returns when the flow is suspended or the consumer stops or crashes.
        await consumer.wait_first(consumer.suspend_flow.wait())
        guard.abandon()

    since_yield = 0
    try:
        while not (consumer_stopped() or fetcher_stopped()):
            set_flag(flag)
            records = getmany(timeout=1.0)
            await consumer.sleep(0)
            if not consumer.should_stop:
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    read = read_offsets[tp]
                    if read is not None and offset < read:
                        continue  # read already: faust-streaming drops it too
                    if offset - (read or 0) > 1 and read and acks_enabled_for(message.topic):
                        await consumer._add_gap(tp, read + 1, offset)
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    if suspended() or consumer_stopped():
                        await consumer.wait_first(consumer.callback(message), consumer.suspend_flow.wait())
                    else:
                        if watcher is None or watcher.done():
                            watcher = asyncio.ensure_future(watch())
                        await guard.deliver(message)
                    read_offsets[tp] = offset
                unset_flag(flag)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag)
        if watcher is not None and not watcher.done():
            watcher.cancel()
