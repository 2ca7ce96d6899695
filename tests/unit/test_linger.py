"""The producer linger that grows while the worker is behind (streams/linger.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from faust.types import TP

from shopstream.settings import Settings
from streams.app import create_app
from streams.linger import BacklogLinger, backlog_linger, partition_backlog, producer_accumulator


def batch_linger_after(depths: list[int]) -> tuple[list[float], int]:
    """The linger of a batch aiokafka creates after each observed backlog, and the switches made."""

    async def run() -> tuple[list[float], int]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=5)
        acc = producer._message_accumulator
        linger = BacklogLinger(lambda: acc, linger_s=0.005, behind_s=0.02, high=100, low=10, calm=2)
        seen = []
        for i, depth in enumerate(depths):
            linger.observe(depth)
            batch = acc._append_batch(acc.create_builder(), TopicPartition("recs", i))
            seen.append(batch._linger_time)
        for batches in acc._batches.values():
            for b in batches:
                b.done_noack()
        await producer.stop()
        return seen, linger.switches

    return asyncio.run(run())


def test_batches_linger_longer_only_while_the_backlog_is_high() -> None:
    seen, switches = batch_linger_after([0, 50, 99, 100, 500, 50, 11, 10, 0, 99, 100])
    assert seen == [0.005, 0.005, 0.005, 0.02, 0.02, 0.02, 0.02, 0.02, 0.005, 0.005, 0.02]
    assert switches == 3


def test_it_switches_back_only_after_a_calm_streak() -> None:
    """Records of a drained partition, between those of partitions still behind, keep the long linger."""

    class Acc:
        _linger_time = 0.005

    linger = BacklogLinger(lambda: Acc, 0.005, 0.02, high=256, low=32, calm=3)
    states = [linger.observe(d) for d in (300, 5, 400, 5, 5, 500, 5, 5, 5, 5)]
    assert states == [True] * 8 + [False] * 2 and linger.switches == 2
    with pytest.raises(ValueError, match="calm"):
        BacklogLinger(lambda: Acc, 0.005, 0.02, calm=0)


def test_the_accumulator_is_looked_up_on_each_switch_only() -> None:
    """A restarted producer has a new accumulator: each switch goes to the current one."""

    class Acc:
        _linger_time = 0.005

    accs = [Acc(), Acc()]
    current = [accs[0]]
    calls = []

    def lookup() -> Acc:
        calls.append(1)
        return current[0]

    linger = BacklogLinger(lookup, linger_s=0.005, behind_s=0.02, high=2, low=1, calm=1)
    linger.observe(0)
    assert calls == []  # no switch, no lookup: the producer may not be started yet
    linger.observe(5)
    current[0] = accs[1]  # the producer restarted
    linger.observe(0)
    linger.observe(5)
    assert len(calls) == 3 and linger.switches == 3
    assert (accs[0]._linger_time, accs[1]._linger_time) == (0.02, 0.02)


def test_nothing_switches_until_the_producer_exists() -> None:
    class Acc:
        _linger_time = 0.005

    box: list[Acc | None] = [None]
    linger = BacklogLinger(lambda: box[0], 0.005, 0.02, high=2, low=1)
    assert linger.observe(5) is False and linger.switches == 0
    acc = box[0] = Acc()
    assert linger.observe(5) is True and linger.switches == 1 and acc._linger_time == 0.02


def test_an_accumulator_without_a_linger_is_refused() -> None:
    linger = BacklogLinger(lambda: object(), linger_s=0.005, behind_s=0.02, high=2, low=1)
    with pytest.raises(RuntimeError, match="_linger_time"):
        linger.observe(5)


@pytest.mark.parametrize(
    ("linger_s", "behind_s", "high", "low", "match"),
    [(0.02, 0.005, 256, 32, "shorter"), (0.005, 0.02, 32, 32, "low < high"), (0.005, 0.02, 10, -1, "low")],
)
def test_bad_settings_are_refused(linger_s: float, behind_s: float, high: int, low: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BacklogLinger(lambda: None, linger_s=linger_s, behind_s=behind_s, high=high, low=low)


def test_producer_accumulator_follows_the_faust_producer() -> None:
    class App:
        class producer:  # stands in for app.producer
            _producer = None

    app = App()
    assert producer_accumulator(app) is None

    async def started() -> object:
        aio = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=5)
        App.producer._producer = aio
        try:
            return producer_accumulator(app) is aio._message_accumulator
        finally:
            await aio.stop()

    assert asyncio.run(started()) is True


def test_settings_turn_it_on_off_or_are_refused() -> None:
    on = backlog_linger(None, Settings.from_env({}))
    assert on is not None and (on.linger_s, on.behind_s) == (0.005, 0.02)
    assert backlog_linger(None, Settings.from_env({"SHOPSTREAM_PRODUCER_LINGER_BEHIND_S": "0.005"})) is None
    with pytest.raises(ValueError, match=r"SHOPSTREAM_PRODUCER_LINGER_BEHIND_S=0\.001"):
        backlog_linger(None, Settings.from_env({"SHOPSTREAM_PRODUCER_LINGER_BEHIND_S": "0.001"}))


class Msg:
    def __init__(self, tp: TopicPartition, offset: int) -> None:
        self.tp, self.offset = tp, offset


def test_partition_backlog_counts_the_records_after_the_event() -> None:
    tp = TopicPartition("clicks", 3)
    highwaters: dict[TopicPartition, int | None] = {tp: 5000}

    class Consumer:
        def highwater(self, tp: TopicPartition) -> int | None:
            return highwaters[tp]  # KeyError for a partition it does not hold

    backlog = partition_backlog(Consumer())
    assert [backlog(Msg(tp, off)) for off in (0, 4000, 4998, 4999, 6000)] == [4999, 999, 1, 0, 0]
    assert backlog(Msg(TopicPartition("clicks", 0), 10)) == 0  # not assigned: nothing known
    highwaters[tp] = None  # assigned, never fetched
    assert backlog(Msg(tp, 10)) == 0


def test_partition_backlog_reads_aiokafkas_highwater_for_fausts_partitions() -> None:
    """Faust's ``TP`` keys aiokafka's partition state; before a fetch, and unassigned, it is 0."""

    async def run() -> list[int]:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        try:
            backlog = partition_backlog(consumer)
            seen = [backlog(Msg(TP("clicks", 0), 7))]  # not assigned: aiokafka asserts
            consumer.assign([TopicPartition("clicks", 2)])
            seen.append(backlog(Msg(TP("clicks", 2), 7)))  # assigned, never fetched
            state = consumer._subscription.subscription.assignment.state_value(TopicPartition("clicks", 2))
            state.highwater = 1000  # as aiokafka's fetcher sets it from a fetch response
            seen.append(backlog(Msg(TP("clicks", 2), 7)))
            return seen
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == [0, 0, 992]


def test_partition_backlog_of_the_workers_consumer_before_it_starts_is_zero(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}, data_dir=tmp_path / "d", lake_dir=tmp_path / "lake"), "unit")
    assert partition_backlog(app.consumer)(Msg(TP("shop.clicks.v1", 0), 3)) == 0  # ConsumerNotStarted


def test_an_unexpected_error_gives_zero_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def highwater(self, tp: TP) -> int:
            raise RuntimeError("internals changed")

    backlog = partition_backlog(Broken())
    with caplog.at_level("WARNING", logger="streams.linger"):
        assert [backlog(Msg(TP("clicks", 0), 1)) for _ in range(3)] == [0, 0, 0]
    assert [r.getMessage() for r in caplog.records] == [
        "partition backlog unavailable (linger stays as it is): RuntimeError('internals changed')"
    ]


def test_no_event_for_a_whole_tick_switches_it_back() -> None:
    class Acc:
        _linger_time = 0.005

    linger = BacklogLinger(lambda: Acc, 0.005, 0.02, high=256, low=32)
    linger.observe(5000)
    assert linger.tick() is True  # events came since the last tick (the one above)
    linger.observe(4000)
    assert linger.tick() is True
    assert linger.tick() is False and Acc._linger_time == 0.005  # a whole interval without events
    assert linger.tick() is False and linger.switches == 2


def test_each_switch_is_reported() -> None:
    class Acc:
        _linger_time = 0.005

    seen: list[float] = []
    linger = BacklogLinger(lambda: Acc, 0.005, 0.02, high=100, low=10, on_switch=seen.append, calm=1)
    for depth in (0, 150, 50, 5, 5, 200):
        linger.observe(depth)
    assert seen == [0.02, 0.005, 0.02] and linger.switches == 3


def test_a_producer_restarted_while_behind_gets_the_long_linger_on_the_next_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Acc:
        def __init__(self) -> None:
            self._linger_time = 0.005

    current = [Acc()]
    seen: list[float] = []
    linger = BacklogLinger(lambda: current[0], 0.005, 0.02, high=100, low=10, on_switch=seen.append)
    linger.observe(500)
    assert current[0]._linger_time == 0.02
    current[0] = Acc()  # the producer restarted: a new accumulator at the configured linger
    linger.observe(400)
    with caplog.at_level("INFO", logger="streams.linger"):
        assert linger.tick() is True
    assert current[0]._linger_time == 0.02 and linger.reapplied == 1
    assert "producer restarted while behind" in caplog.text
    linger.observe(300)
    assert linger.tick() is True and linger.reapplied == 1  # already long: nothing to do
    assert linger.tick() is False and current[0]._linger_time == 0.005  # quiet: back, as before
    assert seen == [0.02, 0.005] and linger.switches == 2
