"""Faust tables whose changelog is written when the worker commits, one record per changed key.

A faust-streaming table sends one changelog record for every assignment: a
user who clicks five times in a second costs five changelog records, each
serialised, buffered and produced on the event loop that also runs the
agents (in ``benchmarks/pipeline.py`` a saturated worker spent about a fifth
less CPU per click without them). Kafka Streams puts a record cache in
front of its state stores for the same reason (``statestore.cache.max.bytes``):
writes to a key coalesce, and the cache is flushed to the changelog when the
task commits.

:class:`CoalescingTable` does the same. An assignment marks the key dirty and
keeps the latest value (a delete keeps a tombstone); the dirty keys are handed
to the producer, one record each:

* whenever Faust flushes the producer: before it commits offsets, when
  partitions are revoked, and when the worker stops
  (:func:`flush_changelogs_with_producer`). Every assignment happens while an
  event is processed (Faust refuses one outside stream iteration), and that
  event's offset is committed only after such a flush, so offsets are never
  committed ahead of the table state. Recovery after a crash is as before:
  the events since the last commit are replayed on a changelog at least as
  new as that commit;
* when ``max_dirty`` keys are waiting, so memory stays bounded.

A write that fails, by an exception or a cancellation, puts its unsent keys
back, and a flush that follows a failed delivery raises, so Faust does not
commit past it (it crashes the consumer, and the worker restarts from the
last commit). All records go out through one write at a time, so each key's
records reach the changelog in the order they were assigned.

Only Faust's at-least-once processing is supported: under exactly-once Faust
commits through its transactional producers, which these writes bypass.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import faust
from faust.types import TP
from faust.types.enums import ProcessingGuarantee
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Dirty keys a table holds before it writes them out regardless of commits.
MAX_DIRTY = 20_000

#: The pending "value" of a deleted key: its changelog record is a tombstone.
_DELETED = object()


class CoalescingTable(faust.Table):  # type: ignore[misc]
    """A :class:`faust.Table` whose changelog records coalesce per key until the next write.

    Every record, tombstones included, goes out through :meth:`write_changelog`,
    one write at a time, so a key's records reach the changelog in the order
    its values were assigned.
    """

    max_dirty: int = MAX_DIRTY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.use_partitioner:
            raise ValueError(
                f"table {self.name!r}: CoalescingTable writes each key to its event's partition;"
                " use_partitioner=True is not supported"
            )
        #: key -> (partition, latest value or _DELETED), in first-write order
        self._dirty: dict[Any, tuple[int | None, Any]] = {}
        self._writing = asyncio.Lock()
        self._spill: asyncio.Future | None = None
        #: delivery futures of the records written since the last flush
        self._sent: list[tuple[asyncio.Future, Any, int | None]] = []
        self.changelog_writes = 0
        self.coalesced_writes = 0
        self.write_errors = 0

    def on_key_set(self, key: Any, value: Any) -> None:
        """Mark ``key`` dirty with ``value`` (Faust calls this after every assignment)."""
        partition = self._mark(key, value)
        if partition is not None:
            self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        """Mark ``key`` deleted: its next changelog record is a tombstone."""
        partition = self._mark(key, _DELETED)
        if partition is not None:
            self._maybe_del_key_ttl(key, partition)
        self._sensor_on_del(self, key)

    def _mark(self, key: Any, value: Any) -> int | None:
        partition = self.partition_for_key(key)
        dirty = self._dirty
        if key in dirty:
            self.coalesced_writes += 1
        dirty[key] = (partition, value)
        if len(dirty) >= self.max_dirty and self._spill is None:
            self._spill = asyncio.ensure_future(self._write_spill())
        return partition

    async def _write_spill(self) -> None:
        try:
            await self.write_changelog()
        except Exception as exc:  # the keys are dirty again; the next commit's flush retries (or raises)
            self.log.error("changelog write failed: %r", exc)
        finally:
            self._spill = None

    @property
    def dirty(self) -> int:
        """Keys whose latest value is not yet handed to the producer."""
        return len(self._dirty)

    async def write_changelog(self, yield_every: int = 256) -> int:
        """Produce every dirty key's latest value to the changelog topic; returns how many records.

        Serialised as Faust's own changelog records (its recovery reads them),
        but handed to the producer directly: Faust's producer buffer holds at
        most 100 records before it pauses the agents' input
        (``wait_until_ebb``). The event loop gets a turn every ``yield_every``
        records; keys assigned meanwhile wait for the next write, which starts
        only when this one has handed over all its records.
        """
        async with self._writing:
            dirty = self._dirty
            if not dirty:
                return 0
            self._dirty = {}
            topic = self.changelog_topic
            name = topic.get_topic_name()
            producer = self.app.producer
            ks, vs = self.key_serializer, self.value_serializer
            sent = self._sent
            n = 0
            try:
                for key, (partition, value) in dirty.items():
                    k, _ = topic.prepare_key(key, ks)
                    v = None if value is _DELETED else topic.prepare_value(value, vs)[0]
                    fut: asyncio.Future = await producer.send(name, k, v, partition, None, None)  # type: ignore[assignment]
                    sent.append((fut, key, partition))
                    n += 1
                    if n % yield_every == 0:
                        await asyncio.sleep(0)
            except BaseException:
                # Not handed over: the key being sent and those after it. Values assigned
                # since this write began are newer, and stay.
                restore = self._dirty
                self._dirty = dict(itertools.islice(dirty.items(), n, None))
                self._dirty.update(restore)
                raise
            finally:
                self.changelog_writes += n
            return n

    def check_delivered(self) -> int:
        """Settle the records written since the last check; returns how many failed.

        A delivered record moves the partition's persisted offset (kept by
        stores that persist, such as RocksDB). A failed record's key is marked
        dirty again, and the next write sends its value as it is then. Records
        still in flight are kept for the next check.
        """
        failed: list[BaseException | None] = []
        pending = []
        dirty = self._dirty
        data = self.data
        for fut, key, partition in self._sent:
            if not fut.done():
                pending.append((fut, key, partition))
            elif fut.cancelled() or fut.exception() is not None:
                failed.append(None if fut.cancelled() else fut.exception())
                if key not in dirty:
                    dirty[key] = (partition, data.get(key, _DELETED))
            else:
                md = fut.result()
                data.set_persisted_offset(TP(md.topic, md.partition), md.offset)
        self._sent[:] = pending  # in place: a write in progress appends to this list
        if failed:
            self.write_errors += len(failed)
            self.log.error("%d changelog record(s) not delivered (first: %r)", len(failed), failed[0])
        return len(failed)


async def write_all(app: faust.App) -> int:
    """Produce the pending changelog records of every coalescing table of ``app``."""
    n = 0
    for t in _coalescing(app):
        n += await t.write_changelog()
    return n


def _coalescing(app: faust.App) -> list[CoalescingTable]:
    return [t for t in app.tables.values() if isinstance(t, CoalescingTable)]


class ChangelogWriteError(RuntimeError):
    """Changelog records of a coalescing table were not delivered: the offsets must not be committed."""


def flush_changelogs_with_producer(app: faust.App) -> None:
    """Make every flush of ``app``'s producer write the tables' pending changelog records first.

    faust-streaming flushes the producer before it commits offsets, when
    partitions are revoked and when the app stops; each of those is a point
    where the changelog must be complete. aiokafka's flush does not fail
    for batches it could not deliver (it waits for their outcome), so the
    flush then looks at every record written since the last one and raises
    :class:`ChangelogWriteError` if any failed.
    """
    if app.conf.processing_guarantee != ProcessingGuarantee.AT_LEAST_ONCE:
        raise ValueError("CoalescingTable supports processing_guarantee='at_least_once' only")
    producer = app.producer
    flush = producer.flush

    async def flush_tables_then_producer() -> None:
        await write_all(app)
        await flush()
        failed = sum(t.check_delivered() for t in _coalescing(app))
        if failed:
            raise ChangelogWriteError(f"{failed} changelog record(s) were not delivered; not committing")

    producer.flush = flush_tables_then_producer  # type: ignore[method-assign]


class ChangelogCollector:
    """Prometheus view of the coalescing tables: records, coalesced assignments, failures, dirty keys."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        written = CounterMetricFamily(
            "shopstream_table_changelog_records",
            "Changelog records written by the worker's tables, by table.",
            labels=["table"],
        )
        coalesced = CounterMetricFamily(
            "shopstream_table_changelog_coalesced",
            "Table assignments absorbed by a later one to the same key before the changelog write.",
            labels=["table"],
        )
        failed = CounterMetricFamily(
            "shopstream_table_changelog_write_errors",
            "Changelog records the producer failed to deliver, by table (the next commit is refused).",
            labels=["table"],
        )
        dirty = GaugeMetricFamily(
            "shopstream_table_changelog_dirty",
            "Keys changed since the table's last changelog write, by table.",
            labels=["table"],
        )
        for t in _coalescing(self.app):
            written.add_metric([t.name], t.changelog_writes)
            coalesced.add_metric([t.name], t.coalesced_writes)
            failed.add_metric([t.name], t.write_errors)
            dirty.add_metric([t.name], t.dirty)
        yield from (written, coalesced, failed, dirty)
