"""The consumer's drain loop without four tasks per record (streams/handover.py).

Each scenario runs on a real faust-streaming consumer (no broker: ``getmany``
is replaced by fixed batches) twice, once with faust-streaming's own
``_drain_messages`` and once with :func:`streams.handover.drain`, and the
two must agree on what was handed over, what was abandoned and the read
offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.handover import Guard, drain, hand_over_without_task_per_record

A, B = TP("clicks", 0), TP("clicks", 1)


class Record:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.topic, self.partition, self.offset = tp, tp.topic, tp.partition, offset
        self.key, self.value = b"k", b"v"

    def __repr__(self) -> str:
        return f"{self.tp.partition}@{self.offset}"


class Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def make_consumer(batches: list[list[Record]], fetcher: Fetcher) -> Any:
    app = faust.App("t-handover", broker="kafka://127.0.0.1:1", store="memory://")
    consumer: Any = app.consumer
    pending = list(batches)

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Record]]:
        if not pending:
            fetcher._stopped.set()
            return
        for record in pending.pop(0):
            yield record.tp, record

    consumer.getmany = getmany
    return consumer


async def run_drain(
    which: str, batches: list[list[Record]], hand_over: Any, during: Any = None
) -> tuple[Any, dict[TP, int | None]]:
    fetcher = Fetcher()
    consumer = make_consumer(batches, fetcher)
    consumer.callback = lambda record: hand_over(consumer, record)
    loop = consumer._drain_messages(fetcher) if which == "faust" else drain(consumer, fetcher)
    task = asyncio.ensure_future(loop)
    if during is not None:
        await during(consumer, task)
    await asyncio.wait_for(task, 5)
    return consumer, dict(consumer._read_offset)


def both(scenario: Any) -> tuple[Any, Any]:
    return asyncio.run(scenario("faust")), asyncio.run(scenario("ours"))


BATCHES = [[Record(A, 0), Record(B, 0), Record(A, 1)], [Record(A, 2), Record(B, 1)]]


def test_every_record_is_handed_over_in_order_without_a_wait_per_record() -> None:
    async def scenario(which: str) -> tuple[list[str], dict[TP, int | None], int]:
        seen: list[str] = []
        waits = 0

        async def hand_over(consumer: Any, record: Record) -> None:
            seen.append(repr(record))

        fetcher = Fetcher()
        consumer = make_consumer([list(b) for b in BATCHES], fetcher)
        consumer.callback = lambda record: hand_over(consumer, record)
        wait_first = consumer.wait_first

        async def counting_wait_first(*coros: Any, **kw: Any) -> Any:
            nonlocal waits
            waits += 1
            return await wait_first(*coros, **kw)

        consumer.wait_first = counting_wait_first
        loop = consumer._drain_messages(fetcher) if which == "faust" else drain(consumer, fetcher)
        await asyncio.wait_for(loop, 5)
        return seen, dict(consumer._read_offset), waits

    (seen_f, offsets_f, waits_f), (seen_o, offsets_o, waits_o) = both(scenario)
    assert seen_o == seen_f == ["0@0", "1@0", "0@1", "0@2", "1@1"]
    assert offsets_o == offsets_f == {A: 2, B: 1}
    assert waits_f == 5  # faust-streaming: one wait_first (four tasks) per record
    assert waits_o == 1  # ours: the one watcher


def test_a_stuck_hand_over_is_abandoned_when_the_flow_is_suspended() -> None:
    """A rebalance suspends the flow while a stream's queue is full: that record is given up, as before."""

    async def scenario(which: str) -> tuple[list[str], dict[TP, int | None]]:
        seen: list[str] = []
        stuck = asyncio.Event()

        async def hand_over(consumer: Any, record: Record) -> None:
            if record.offset == 1 and record.tp == A:
                stuck.set()
                try:
                    await asyncio.sleep(60)  # a full queue
                except asyncio.CancelledError:
                    seen.append(f"cancelled {record!r}")
                    raise
            seen.append(repr(record))

        async def during(consumer: Any, task: Any) -> None:
            await stuck.wait()
            consumer.stop_flow()  # what faust-streaming does when partitions are revoked

        _, offsets = await run_drain(which, [list(b) for b in BATCHES], hand_over, during)
        return seen, offsets

    (seen_f, offsets_f), (seen_o, offsets_o) = both(scenario)
    assert seen_o == seen_f == ["0@0", "1@0", "cancelled 0@1", "0@2", "1@1"]
    assert offsets_o == offsets_f == {A: 2, B: 1}


def test_the_flow_suspended_and_resumed_between_batches() -> None:
    async def scenario(which: str) -> list[str]:
        seen: list[str] = []
        gate = asyncio.Event()

        async def hand_over(consumer: Any, record: Record) -> None:
            seen.append(repr(record))
            if record.offset == 1 and record.tp == A:
                consumer.stop_flow()
                consumer.resume_flow()
            if record.offset == 2:
                gate.set()
                await asyncio.sleep(0.05)
                seen.append("slow hand-over done")

        await run_drain(which, [list(b) for b in BATCHES], hand_over)
        return seen

    seen_f, seen_o = both(scenario)
    assert seen_o == seen_f == ["0@0", "1@0", "0@1", "0@2", "slow hand-over done", "1@1"]


def test_cancelling_the_fetcher_still_cancels_it() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        stuck = asyncio.Event()

        async def hand_over(consumer: Any, record: Record) -> None:
            stuck.set()
            await asyncio.sleep(60)

        fetcher = Fetcher()
        consumer = make_consumer([[Record(A, 0)]], fetcher)
        consumer.callback = lambda record: hand_over(consumer, record)
        task = asyncio.ensure_future(drain(consumer, fetcher))
        await stuck.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            seen.append("cancelled")
        return seen

    assert asyncio.run(scenario()) == ["cancelled"]


def test_guard_leaves_other_cancellations_alone() -> None:
    async def scenario() -> tuple[str, int]:
        async def hand_over(record: Any) -> None:
            await asyncio.sleep(60)

        guard = Guard(hand_over)
        task = asyncio.ensure_future(guard.deliver("r"))
        await asyncio.sleep(0)
        assert guard.abandon()
        task.cancel()  # a real cancellation on top of the guard's
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled", guard.abandoned
        return "returned", guard.abandoned

    assert asyncio.run(scenario()) == ("cancelled", 0)


def test_guard_survives_a_hand_over_that_swallows_the_cancellation() -> None:
    async def scenario() -> tuple[bool, bool, int, int]:
        async def hand_over(record: Any) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # finishes anyway

        guard = Guard(hand_over)
        first = asyncio.ensure_future(guard.deliver("r"))
        await asyncio.sleep(0)
        assert guard.abandon()
        abandoned = await first
        # The task that ran it is not left with a pending cancellation.
        return abandoned, guard.abandon(), first.cancelling(), guard.abandoned

    assert asyncio.run(scenario()) == (False, False, 0, 0)


def test_installed_on_the_app_consumer() -> None:
    app = faust.App("t-handover-install", broker="kafka://127.0.0.1:1", store="memory://")
    original = app.consumer._drain_messages
    hand_over_without_task_per_record(app)
    assert app.consumer._drain_messages != original


@pytest.mark.parametrize("which", ["faust", "ours"])
def test_records_before_the_read_offset_are_dropped(which: str) -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []

        async def hand_over(consumer: Any, record: Record) -> None:
            seen.append(repr(record))

        await run_drain(which, [[Record(A, 5), Record(A, 3), Record(A, 6)]], hand_over)
        return seen

    assert asyncio.run(scenario()) == ["0@5", "0@6"]
