"""The Parquet event lake: layout, writer and reader.

Layout: ``<root>/topic=<topic>/date=<YYYY-MM-DD>/part-<worker>-<seq>.parquet``,
one row per Kafka message (topic, partition, offset, timestamp, key, value),
partitioned by topic and by the message's UTC date (Hive style, so
``pyarrow.dataset`` reads it with partition pruning).

Files are written to ``*.parquet.tmp``, fsynced, then atomically renamed, so a
reader never sees a torn file; leftovers of a crash are removed by
:meth:`LakeWriter.recover`. The writer's caller acknowledges the Kafka
offsets only after :meth:`LakeWriter.flush` returns, so a crash replays the
unflushed messages (at-least-once); :func:`read_lake` drops the duplicates by
``(topic, partition, offset)``.

Examples
--------
>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> w = LakeWriter(root, worker="w1", max_rows=2)
>>> w.add("shop.clicks.v1", 0, 5, 1_700_000_000_000, b"u1", b'{"a":1}')
>>> w.add("shop.clicks.v1", 0, 5, 1_700_000_000_000, b"u1", b'{"a":1}')
>>> w.due()
True
>>> [p.parent.name for p in w.flush()]
['date=2023-11-14']
>>> read_lake(root, "shop.clicks.v1").num_rows
1
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

LAKE_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("key", pa.binary()),
        ("value", pa.binary()),
    ]
)


class LakeWriter:
    """Buffers messages and rolls them into Parquet files on a row or age bound."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        worker: str,
        max_rows: int = 50_000,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.worker = "".join(c if c.isalnum() or c in "-_" else "_" for c in worker)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.clock = clock
        self._cols: dict[tuple[str, str], dict[str, list]] = {}
        self.rows = 0
        self._first_at: float | None = None
        self._seq = 0
        self.files_written = 0

    def add(
        self, topic: str, partition: int, offset: int, ts_ms: int, key: bytes | None, value: bytes | None
    ) -> None:
        """Buffer one message."""
        date = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")
        cols = self._cols.get((topic, date))
        if cols is None:
            cols = self._cols[(topic, date)] = {n: [] for n in LAKE_SCHEMA.names}
        cols["topic"].append(topic)
        cols["partition"].append(partition)
        cols["offset"].append(offset)
        cols["timestamp"].append(ts_ms)
        cols["key"].append(key)
        cols["value"].append(value)
        self.rows += 1
        if self._first_at is None:
            self._first_at = self.clock()

    def due(self) -> bool:
        """Whether the buffer has reached its row or age bound."""
        if not self.rows:
            return False
        if self.rows >= self.max_rows:
            return True
        return self._first_at is not None and self.clock() - self._first_at >= self.max_age_s

    def flush(self) -> list[Path]:
        """Write every buffered (topic, date) group to its own file; return the files."""
        written: list[Path] = []
        for (topic, date), cols in self._cols.items():
            table = pa.Table.from_pydict(cols, schema=LAKE_SCHEMA)
            folder = self.root / f"topic={topic}" / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            final = folder / f"part-{self.worker}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = final.with_name(final.name + ".tmp")
            pq.write_table(table, tmp, compression="zstd")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            written.append(final)
        self._cols.clear()
        self.rows = 0
        self._first_at = None
        self.files_written += len(written)
        return written

    def recover(self) -> int:
        """Delete ``*.tmp`` files left by a crash (their offsets were never acknowledged)."""
        n = 0
        if self.root.exists():
            for p in self.root.rglob("*.parquet.tmp"):
                p.unlink(missing_ok=True)
                n += 1
        return n


def read_lake(root: str | os.PathLike[str], topic: str | None = None, dedupe: bool = True) -> pa.Table:
    """Read the lake (optionally one topic) as one table, without replay duplicates."""
    root = Path(root)
    if not root.exists() or not any(root.rglob("*.parquet")):
        return LAKE_SCHEMA.empty_table()
    files = sorted(str(p) for p in root.rglob("*.parquet"))
    if topic is not None:
        files = [f for f in files if f"/topic={topic}/" in f]
    if not files:
        return LAKE_SCHEMA.empty_table()
    table = ds.dataset(files, format="parquet", schema=LAKE_SCHEMA).to_table()
    if dedupe and table.num_rows:
        table = table.group_by(["topic", "partition", "offset"], use_threads=False).aggregate(
            [("timestamp", "min"), ("key", "first"), ("value", "first")]
        )
        table = table.rename_columns(["topic", "partition", "offset", "timestamp", "key", "value"])
        table = table.select(LAKE_SCHEMA.names).sort_by([("timestamp", "ascending"), ("offset", "ascending")])
    return table
