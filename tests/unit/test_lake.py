"""The Parquet event lake: rolling, atomic files, crash leftovers, dedupe on read."""

from __future__ import annotations

import pyarrow.parquet as pq

from schemas.lake import LakeWriter, read_lake

DAY = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def test_rolls_on_rows_and_partitions_by_topic_and_date(tmp_path):
    w = LakeWriter(tmp_path, worker="w/1", max_rows=3)
    w.add("a.v1", 0, 0, DAY, b"k", b"1")
    w.add("a.v1", 0, 1, DAY + 86_400_000, b"k", b"2")
    assert not w.due()
    w.add("b.v1", 1, 0, DAY, None, b"3")
    assert w.due()
    files = w.flush()
    rel = sorted(str(f.relative_to(tmp_path).parent) for f in files)
    assert rel == ["topic=a.v1/date=2026-01-01", "topic=a.v1/date=2026-01-02", "topic=b.v1/date=2026-01-01"]
    assert all(f.name.startswith("part-w_1-") for f in files)
    assert not list(tmp_path.rglob("*.tmp"))
    assert pq.read_table(files[0]).num_rows == 1
    assert read_lake(tmp_path, "a.v1").column("value").to_pylist() == [b"1", b"2"]


def test_rolls_on_age(tmp_path):
    now = [0.0]
    w = LakeWriter(tmp_path, worker="w", max_rows=100, max_age_s=5, clock=lambda: now[0])
    w.add("a", 0, 0, DAY, None, b"x")
    now[0] = 4.9
    assert not w.due()
    now[0] = 5.0
    assert w.due()


def test_crash_leftovers_are_removed_and_replays_deduplicated(tmp_path):
    w = LakeWriter(tmp_path, worker="w", max_rows=10)
    for off in range(5):
        w.add("a", 0, off, DAY, None, b"v%d" % off)
    w.flush()
    torn = tmp_path / "topic=a" / "date=2026-01-01" / "part-w-9-torn.parquet.tmp"
    torn.write_bytes(b"PAR1 half a file")
    assert w.recover() == 1 and not torn.exists()
    # After a crash the unacknowledged offsets 3..6 are consumed again.
    for off in range(3, 7):
        w.add("a", 0, off, DAY, None, b"v%d" % off)
    w.flush()
    t = read_lake(tmp_path, "a")
    assert t.column("offset").to_pylist() == list(range(7))
    assert read_lake(tmp_path, "a", dedupe=False).num_rows == 9
    assert read_lake(tmp_path / "missing").num_rows == 0


def test_archiver_stop_cancels_a_waiting_fetch_so_nothing_lands_after_the_last_file(tmp_path):
    """A fetch still waiting when stopping begins is cancelled, not answered after the final flush."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from ops.metrics import Metrics
    from shopstream.settings import Settings
    from streams.archive import LakeArchiver
    from tests.unit.stopping import OneBatchConsumer, stop_when

    tp = TopicPartition("clicks.v1", 2)
    log: list[str] = []
    rec = SimpleNamespace(topic=tp.topic, partition=2, offset=9, timestamp=DAY, key=b"u1", value=b"{}")

    async def run() -> tuple[LakeArchiver, OneBatchConsumer]:
        settings = Settings(lake_dir=tmp_path, lake_max_rows=1000, lake_max_age_s=3600)
        rt = SimpleNamespace(settings=settings, worker_name="w", metrics=Metrics(), extra={})
        a = LakeArchiver(rt)  # type: ignore[arg-type]
        a.consumer = consumer = OneBatchConsumer({tp: [rec]}, log, hold=True)  # type: ignore[assignment]
        # The fetch in flight would return its batch 50 ms into on_stop.
        await stop_when(a, LakeArchiver._consume, consumer.fetched, consumer.released)
        await asyncio.sleep(0.05)
        return a, consumer

    archiver, consumer = asyncio.run(run())
    assert log == ["fetch cancelled", "consumer stopped"]
    assert archiver.writer.rows == 0 and consumer.committed == []
