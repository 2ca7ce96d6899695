"""The archive agent: every input topic → the Parquet event lake.

The agent's stream does not acknowledge messages by itself: offsets are
acknowledged only after the file holding them is committed (renamed into
place), so a crash loses nothing and the lake reader drops the replayed
duplicates. A timer rolls the file on the age bound even when no new
messages arrive.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from schemas.lake import LakeWriter

if TYPE_CHECKING:
    import faust

    from streams.app import Runtime


class LakeArchive:
    """The writer plus the events whose offsets wait for the next file commit."""

    def __init__(self, writer: LakeWriter, runtime: Runtime) -> None:
        self.writer = writer
        self.runtime = runtime
        self.pending: list[Any] = []
        self.stream: Any = None
        self.lock = asyncio.Lock()

    def add(self, event: Any) -> None:
        m = event.message
        self.writer.add(m.topic, m.partition, m.offset, int(m.timestamp * 1000), m.key, m.value)
        self.pending.append(event)

    async def flush(self, force: bool = False) -> int:
        """Commit the buffered rows to Parquet, then acknowledge their offsets."""
        async with self.lock:
            if not self.pending or not (force or self.writer.due()):
                return 0
            pending, self.pending = self.pending, []
            counts: dict[str, int] = {}
            for event in pending:
                counts[event.message.topic] = counts.get(event.message.topic, 0) + 1
            files = self.writer.flush()
            if self.stream is not None:
                for event in pending:
                    await self.stream.ack(event)
            metrics = self.runtime.metrics
            metrics.lake_files.inc(len(files))
            for topic, n in counts.items():
                metrics.lake_rows.labels(topic=topic).inc(n)
            self.runtime.extra["lake_last_flush"] = time.time()
            return len(pending)


def register_lake(app: faust.App, runtime: Runtime) -> None:
    """Add the archive agent and its roll timer to ``app``."""
    settings = runtime.settings
    writer = LakeWriter(
        settings.lake_dir,
        runtime.worker_name,
        max_rows=settings.lake_max_rows,
        max_age_s=settings.lake_max_age_s,
    )
    archive_state = LakeArchive(writer, runtime)
    runtime.extra["lake"] = archive_state
    source = app.topic(*runtime.topics.inputs(), partitions=settings.partitions, value_serializer="raw")

    @app.agent(source, name="archive")
    async def archive(stream: faust.StreamT) -> None:
        """Buffer raw input messages and roll them into Parquet files."""
        writer.recover()
        s = stream.noack()  # type: ignore[attr-defined]
        archive_state.stream = s
        async for events in s.take_events(1000, within=1.0):
            for event in events:
                archive_state.add(event)
            await archive_state.flush()

    @app.timer(interval=max(0.5, min(5.0, settings.lake_max_age_s / 4)))
    async def roll_lake() -> None:
        await archive_state.flush()
