"""The archive: every input topic → the Parquet event lake.

It runs inside each worker process but reads through its own consumer group
(``<app_id>-archive``) with a plain aiokafka consumer, like Kafka Connect's
S3 sink: offsets are committed only after the file holding their messages is
committed (renamed into place), so a crash loses nothing and the lake reader
drops replayed duplicates. A separate group matters: a Faust agent that held
its acknowledgements until a file rolls (up to ``lake_max_age_s``) would also
hold back the commits of every other agent reading the same topics. More
workers split the archive group's partitions just as they split the app's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from schemas.lake import LakeWriter
from shopstream.services import MESSAGE_MAX_BYTES
from streams.loops import ConsumeLoop

if TYPE_CHECKING:
    from streams.app import Runtime


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, archiver: LakeArchiver) -> None:
        self.archiver = archiver

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.archiver.flush(force=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class LakeArchiver(Service):
    """Consumes the input topics and rolls them into Parquet files."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        s = runtime.settings
        self.runtime = runtime
        self.writer = LakeWriter(
            s.lake_dir, runtime.worker_name, max_rows=s.lake_max_rows, max_age_s=s.lake_max_age_s
        )
        self.offsets: dict[TopicPartition, int] = {}
        self.counts: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._consume_loop = ConsumeLoop()
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        s = self.runtime.settings
        self.writer.recover()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=f"{s.app_id}-archive",
            client_id=f"{self.runtime.worker_name}-archive",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The archive is not latency-sensitive: let the broker gather data
            # instead of answering a fetch per message (broker CPU is shared).
            fetch_min_bytes=256 * 1024,
            fetch_max_wait_ms=500,
            max_partition_fetch_bytes=MESSAGE_MAX_BYTES,
            fetch_max_bytes=4 * MESSAGE_MAX_BYTES,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
        )
        self.consumer.subscribe(self.runtime.topics.inputs(), listener=_FlushOnRevoke(self))
        await self.consumer.start()

    @Service.task
    async def _consume(self) -> None:
        assert self.consumer is not None
        async with self._consume_loop.running():
            while not self.should_stop:
                batch = await self._consume_loop.fetch(
                    self.consumer.getmany(timeout_ms=500, max_records=5000)
                )
                async with self._lock:
                    for tp, records in batch.items():
                        for r in records:
                            self.writer.add(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value)
                        if records:
                            self.offsets[tp] = records[-1].offset + 1
                            self.counts[tp.topic] = self.counts.get(tp.topic, 0) + len(records)
                await self.flush()

    async def flush(self, force: bool = False) -> int:
        """Commit the buffered rows to Parquet, then commit their offsets."""
        async with self._lock:
            if not self.writer.rows or not (force or self.writer.due()):
                return 0
            rows = self.writer.rows
            files = await asyncio.to_thread(self.writer.flush)
            offsets, self.offsets = self.offsets, {}
            counts, self.counts = self.counts, {}
            if self.consumer is not None and offsets:
                await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
            m = self.runtime.metrics
            m.lake_files.inc(len(files))
            for topic, n in counts.items():
                m.lake_rows.labels(topic=topic).inc(n)
            self.runtime.extra["lake_last_flush"] = time.time()
            return rows

    async def on_stop(self) -> None:
        try:
            # A fetch still waiting is cancelled; a batch in hand goes into the last file and its
            # offsets into the last commit (outside _lock: the loop needs it to finish).
            await self._consume_loop.wait_done()
            await self.flush(force=True)
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
