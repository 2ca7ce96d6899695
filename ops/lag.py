"""Consumer-lag monitor: offsets, lag in messages and seconds, rates, and Burrow-style status.

Every ``interval_s`` the monitor reads, for each watched consumer group, the
committed offsets (admin ``OffsetFetch``) and the log-end offsets of their
partitions (one ``ListOffsets`` per broker), and keeps per partition:

* **lag** in messages: end offset - committed offset;
* **lag in seconds**, as kafka-lag-exporter does: a bounded history of
  (end offset, time) samples is a lookup table from offset to the time the
  log reached it; the lag is *now - the time the log end was at the committed
  offset*, interpolated between samples (and extrapolated from the oldest
  rate when the committed offset is older than the history);
* **consume and produce rates** from the last two samples.

Commit events come from the ``__consumer_offsets`` topic (as Burrow reads
them), so the monitor knows *when* each commit happened, including commits
that repeat the same offset. Each partition keeps a sliding window of its
last ``window`` commits (time, offset, lag at that time). Partition status,
evaluated like Burrow's rules, in this order:

1. no commit in the window: OK with zero lag, else STOP once ``stop_after_s`` passed;
2. **REWIND**: an offset in the window is lower than the one before it;
3. **STOP**: the time since the last commit is longer than the window's span
   (and at least ``stop_after_s``), while there is lag;
4. OK if any commit in the window had zero lag (the consumer caught up);
5. **STALL**: the window's offsets never move while lag is above zero;
6. **WARNING**: offsets move but the lag never decreases across the window;
7. OK.

A group's status is its worst partition's; **ERROR** when its offsets could
not be read. Overhead is bounded: per interval one admin request per group,
one list-offsets request per broker, and history of ``history`` samples per
partition.

Examples
--------
>>> h = OffsetHistory(maxlen=10)
>>> for t, end in [(0.0, 0), (10.0, 100), (20.0, 200)]:
...     h.add(t, end)
>>> h.time_at(150), h.time_at(250), h.time_at(-50)
(15.0, 20.0, -5.0)
>>> w = [Commit(0.0, 10, 5), Commit(1.0, 10, 6), Commit(2.0, 10, 7)]
>>> evaluate(w, lag=7, now=2.5, stop_after_s=30.0)
'STALL'
>>> evaluate([Commit(0.0, 10, 5), Commit(1.0, 8, 7)], lag=7, now=1.5, stop_after_s=30.0)
'REWIND'
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("OK", "WARNING", "STALL", "STOP", "REWIND", "ERROR")
#: Higher is worse (a group's status is its worst partition's).
SEVERITY = {s: n for n, s in enumerate(STATUSES)}


@dataclass(frozen=True, slots=True)
class Commit:
    """One offset commit: when (seconds), which offset, and the lag then."""

    ts: float
    offset: int
    lag: int


class OffsetHistory:
    """Bounded (time, log-end offset) samples of one partition: offset → time lookup."""

    def __init__(self, maxlen: int = 300) -> None:
        self.ts: deque[float] = deque(maxlen=maxlen)
        self.end: deque[int] = deque(maxlen=maxlen)

    def add(self, ts: float, end_offset: int) -> None:
        if self.end and end_offset == self.end[-1] and len(self.end) > 1 and self.end[-2] == end_offset:
            self.ts[-1] = ts  # a flat stretch needs only its two ends
            return
        self.ts.append(ts)
        self.end.append(end_offset)

    def time_at(self, offset: int) -> float | None:
        """When the log end reached ``offset`` (interpolated); None without samples."""
        if not self.end:
            return None
        ends = list(self.end)
        times = list(self.ts)
        if offset >= ends[-1]:
            return times[-1]
        k = bisect.bisect_right(ends, offset)
        if k == 0:
            # Older than the history: extrapolate with the oldest observed rate.
            for j in range(1, len(ends)):
                if ends[j] > ends[0]:
                    rate = (ends[j] - ends[0]) / (times[j] - times[0])
                    return times[0] - (ends[0] - offset) / rate
            return times[0]
        # ends[k-1] <= offset < ends[k]
        e0, e1, t0, t1 = ends[k - 1], ends[k], times[k - 1], times[k]
        if e1 == e0:
            return t1
        # The log end first reached e0 somewhere after the previous sample; with
        # flat stretches collapsed, t0 is the last time it still was e0.
        return t0 + (t1 - t0) * (offset - e0) / (e1 - e0)

    def rate(self) -> float:
        """Messages per second over the last two samples."""
        if len(self.end) < 2 or self.ts[-1] <= self.ts[-2]:
            return 0.0
        return (self.end[-1] - self.end[-2]) / (self.ts[-1] - self.ts[-2])


def evaluate(window: list[Commit], lag: int, now: float, stop_after_s: float) -> str:
    """Burrow-style status of one partition from its commit window (see the module docstring)."""
    if not window:
        return "OK" if lag <= 0 else "STOP"
    for a, b in itertools.pairwise(window):
        if b.offset < a.offset:
            return "REWIND"
    last, first = window[-1], window[0]
    if lag > 0 and now - last.ts > max(last.ts - first.ts, stop_after_s):
        return "STOP"
    if lag <= 0 or any(c.lag <= 0 for c in window):
        return "OK"
    if len(window) >= 2 and first.offset == last.offset:
        return "STALL"
    if (
        len(window) >= 3
        and all(b.lag >= a.lag for a, b in itertools.pairwise(window))
        and (last.lag > first.lag)
    ):
        return "WARNING"
    return "OK"


@dataclass
class PartitionState:
    """What the monitor knows about one (group, topic, partition)."""

    group: str
    topic: str
    partition: int
    end_offset: int = 0
    committed: int | None = None
    lag: int = 0
    lag_seconds: float = 0.0
    consume_rate: float = 0.0
    produce_rate: float = 0.0
    status: str = "OK"
    window: deque[Commit] = field(default_factory=lambda: deque(maxlen=10))
    _prev_committed: tuple[float, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "end_offset": self.end_offset,
            "committed": self.committed,
            "lag": self.lag,
            "lag_seconds": round(self.lag_seconds, 3),
            "consume_rate": round(self.consume_rate, 2),
            "produce_rate": round(self.produce_rate, 2),
            "status": self.status,
            "last_commit_ts": self.window[-1].ts if self.window else None,
        }


@dataclass
class GroupState:
    group: str
    status: str = "OK"
    error: str | None = None
    partitions: dict[tuple[str, int], PartitionState] = field(default_factory=dict)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions.values())

    @property
    def max_lag_seconds(self) -> float:
        return max((p.lag_seconds for p in self.partitions.values()), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "status": self.status,
            "error": self.error,
            "total_lag": self.total_lag,
            "max_lag_seconds": round(self.max_lag_seconds, 3),
            "partitions": [p.as_dict() for _, p in sorted(self.partitions.items())],
        }


# --- __consumer_offsets records ----------------------------------------------------------------


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    if n < 0:
        return "", pos
    return buf[pos : pos + n].decode("utf-8", "replace"), pos + n


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def parse_offset_commit(
    key: bytes | None, value: bytes | None
) -> tuple[str, str, int, int | None, float] | None:
    """Decode one ``__consumer_offsets`` record: (group, topic, partition, offset, commit time in s).

    Returns None for group-metadata records; ``offset`` is None for a
    tombstone (offsets deleted). Handles OffsetCommitValue versions 0-4.

    >>> import struct
    >>> key = struct.pack(">hh2sh1si", 1, 2, b"g1", 1, b"t", 3)
    >>> value = struct.pack(">hqih", 3, 42, -1, 0) + struct.pack(">q", 1_700_000_000_000)
    >>> parse_offset_commit(key, value)
    ('g1', 't', 3, 42, 1700000000.0)
    """
    if not key or len(key) < 2:
        return None
    (kver,) = struct.unpack_from(">h", key, 0)
    if kver not in (0, 1):
        return None  # group metadata
    group, pos = _read_string(key, 2)
    topic, pos = _read_string(key, pos)
    (partition,) = struct.unpack_from(">i", key, pos)
    if value is None:
        return group, topic, partition, None, time.time()
    (vver,) = struct.unpack_from(">h", value, 0)
    (offset,) = struct.unpack_from(">q", value, 2)
    pos = 10
    if vver >= 3:
        pos += 4  # leader epoch
    if vver >= 4:  # flexible version: compact string
        n, pos = _read_uvarint(value, pos)
        pos += max(n - 1, 0)
    else:
        _, pos = _read_string(value, pos)
    (commit_ms,) = struct.unpack_from(">q", value, pos)
    return group, topic, partition, offset, commit_ms / 1000.0


# --- the monitor --------------------------------------------------------------------------------


class LagMonitor:
    """Samples offsets of ``groups`` every ``interval_s`` and keeps their lag state (see module docstring).

    Call :meth:`start`, then :meth:`sample` periodically (or :meth:`run`), and
    read :attr:`groups`. ``on_status(group, old, new)`` is called on group
    status changes.
    """

    def __init__(
        self,
        bootstrap: str,
        groups: Iterable[str],
        interval_s: float = 1.0,
        window: int = 10,
        history: int = 300,
        stop_after_s: float = 10.0,
        discover: bool = False,
        on_status: Any = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.watch = list(dict.fromkeys(groups))
        self.interval_s = interval_s
        self.window = window
        self.history_len = history
        self.stop_after_s = stop_after_s
        self.discover = discover
        self.on_status = on_status
        self.groups: dict[str, GroupState] = {}
        self.histories: dict[tuple[str, int], OffsetHistory] = {}
        self.samples = 0
        self.last_sample_s = 0.0
        self._admin: Any = None
        self._consumer: Any = None
        self._commits: Any = None
        self._commit_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        self._commits = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            exclude_internal_topics=False,
            auto_offset_reset="latest",
        )
        await self._commits.start()
        await self._assign_commit_log()
        self._commit_task = asyncio.create_task(self._read_commits())

    async def _assign_commit_log(self) -> bool:
        """Follow ``__consumer_offsets`` from its end; False while the topic does not exist yet.

        Kafka creates it when the first consumer group coordinates.
        """
        from aiokafka import TopicPartition

        parts = self._commits.partitions_for_topic("__consumer_offsets")
        if not parts:
            await self._commits._client.force_metadata_update()
            parts = self._commits.partitions_for_topic("__consumer_offsets")
        if not parts:
            return False
        tps = [TopicPartition("__consumer_offsets", p) for p in sorted(parts)]
        self._commits.assign(tps)
        await self._commits.seek_to_end(*tps)
        return True

    async def stop(self) -> None:
        if self._commit_task is not None:
            self._commit_task.cancel()
            try:
                await self._commit_task
            except (asyncio.CancelledError, Exception):
                pass
        for client in (self._commits, self._consumer, self._admin):
            if client is not None:
                try:
                    await (client.close() if client is self._admin else client.stop())
                except Exception:  # closing best-effort
                    pass

    async def _read_commits(self) -> None:
        while not self._commits.assignment():
            try:
                if await self._assign_commit_log():
                    break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("waiting for __consumer_offsets: %s", exc)
            await asyncio.sleep(0.5)
        while True:
            try:
                batches = await self._commits.getmany(timeout_ms=200, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading __consumer_offsets failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for r in records:
                    try:
                        parsed = parse_offset_commit(r.key, r.value)
                    except (struct.error, IndexError):
                        continue
                    if parsed is not None:
                        self.record_commit(*parsed)

    def record_commit(self, group: str, topic: str, partition: int, offset: int | None, ts: float) -> None:
        """Add a commit event to the partition's window (only for watched groups)."""
        gs = self.groups.get(group)
        if gs is None or offset is None:
            return
        ps = gs.partitions.get((topic, partition))
        if ps is None:
            ps = gs.partitions[(topic, partition)] = PartitionState(
                group, topic, partition, window=deque(maxlen=self.window)
            )
        h = self.histories.get((topic, partition))
        end = h.end[-1] if h is not None and h.end else offset
        ps.window.append(Commit(ts, offset, max(end - offset, 0)))

    async def _group_ids(self) -> list[str]:
        ids = list(self.watch)
        if self.discover:
            try:
                for g in await self._admin.list_consumer_groups():
                    gid = g[0] if isinstance(g, tuple) else getattr(g, "group_id", None)
                    if gid and gid not in ids:
                        ids.append(gid)
            except Exception as exc:
                log.warning("list_consumer_groups failed: %s", exc)
        return ids

    async def sample(self, now: float | None = None) -> dict[str, GroupState]:
        """One round: committed and end offsets for every watched group; statuses re-evaluated."""
        t0 = time.perf_counter()
        committed: dict[str, dict[Any, Any]] = {}
        errors: dict[str, str] = {}
        for gid in await self._group_ids():
            self.groups.setdefault(gid, GroupState(gid))
            try:
                committed[gid] = await self._admin.list_consumer_group_offsets(gid)
            except Exception as exc:
                errors[gid] = f"{type(exc).__name__}: {exc}"
        tps = {tp for offs in committed.values() for tp in offs}
        ends: dict[Any, int] = {}
        if tps:
            try:
                ends = await self._consumer.end_offsets(list(tps))
            except Exception as exc:
                for gid in committed:
                    errors.setdefault(gid, f"end offsets: {exc}")
        now = time.time() if now is None else now
        for tp, end in ends.items():
            h = self.histories.get((tp.topic, tp.partition))
            if h is None:
                h = self.histories[(tp.topic, tp.partition)] = OffsetHistory(self.history_len)
            h.add(now, end)
        for gid, gs in self.groups.items():
            old = gs.status
            if gid in errors:
                gs.status, gs.error = "ERROR", errors[gid]
            else:
                gs.error = None
                for tp, meta in committed.get(gid, {}).items():
                    self._update_partition(gs, tp, meta.offset, ends.get(tp), now)
                statuses = [p.status for p in gs.partitions.values()] or ["OK"]
                gs.status = max(statuses, key=SEVERITY.__getitem__)
            if old != gs.status and self.on_status is not None:
                self.on_status(gid, old, gs.status)
        self.samples += 1
        self.last_sample_s = time.perf_counter() - t0
        return self.groups

    def _update_partition(self, gs: GroupState, tp: Any, offset: int, end: int | None, now: float) -> None:
        key = (tp.topic, tp.partition)
        ps = gs.partitions.get(key)
        if ps is None:
            ps = gs.partitions[key] = PartitionState(
                gs.group, tp.topic, tp.partition, window=deque(maxlen=self.window)
            )
        h = self.histories.get(key)
        if end is not None:
            ps.end_offset = end
        if offset is None or offset < 0:
            ps.committed = None
            ps.lag = 0
            ps.lag_seconds = 0.0
            ps.status = "OK"
            return
        ps.committed = offset
        ps.lag = max(ps.end_offset - offset, 0)
        t_at = h.time_at(offset) if h is not None else None
        ps.lag_seconds = max(now - t_at, 0.0) if (t_at is not None and ps.lag > 0) else 0.0
        ps.produce_rate = h.rate() if h is not None else 0.0
        if ps._prev_committed is not None and now > ps._prev_committed[0]:
            ps.consume_rate = max(offset - ps._prev_committed[1], 0) / (now - ps._prev_committed[0])
        ps._prev_committed = (now, offset)
        ps.status = evaluate(list(ps.window), ps.lag, now, self.stop_after_s)

    async def run(self, should_stop: Any = lambda: False) -> None:
        while not should_stop():
            try:
                await self.sample()
            except Exception as exc:  # keep monitoring through broker hiccups
                log.warning("lag sample failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state of every group."""
        return {
            "ts": time.time(),
            "samples": self.samples,
            "groups": [g.as_dict() for _, g in sorted(self.groups.items())],
        }
