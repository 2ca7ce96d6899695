"""The topic path of the bidder: bid requests → :meth:`Bidder.decide` → bid responses.

It runs inside each worker process with a plain aiokafka consumer in its own
group (``<app_id>-bidder``) and its own producer, as the archive does, for
latency. Measured on this machine (``benchmarks/bid_latency.py`` and the
notes in its results), a Faust agent cost about 1.0 ms of worker CPU per
request on this path (the consumer thread hand-off, the event objects and
their acknowledgements), so it fell behind well below 1,000 requests/s and
answered most requests after their ``tmax``. Bidding needs none of what Faust
adds here (no table, no co-partitioning), so the bidder reads the topic
directly:

* every record of a fetch is decided concurrently (so concurrent decisions
  share the budget ledger's round trips);
* while requests flow, fetches wait at most ``bid_fetch_wait_ms`` (2 ms) on the
  broker (20 ms when idle): aiokafka keeps one fetch in flight per broker, so a
  partition that was just drained is fetched again only when the long poll for
  the others returns. In quick
  runs of ``benchmarks/bid_latency.py`` at 1,000/s, 1.9% of requests took over
  10 ms from their CreateTime to their response with 20 ms, 0.2% with 2 ms
  (end-to-end p99 13.5 ms and 7.6 ms);
* responses go out with no producer linger, keyed by request id;
* offsets are committed every ``commit_interval_s``, after the responses of
  the records before them were acknowledged by the broker. A response that
  could not be delivered is counted (``shopstream_produce_errors``) and not
  retried: by the time a restarted worker read its request again, the
  request's ``tmax`` would long have passed;
* an invalid request is dead-lettered, and answered with ``nbr`` 2 when its
  id can be read.

More workers split the bidder group's partitions as they split the app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from schemas.errors import SchemaError
from schemas.openrtb import BID_REQUEST_CODEC, BID_RESPONSE_CODEC, NBR, no_bid
from shopstream.services import MESSAGE_MAX_BYTES
from streams.loops import ConsumeLoop

if TYPE_CHECKING:
    from serving.bidder import Bidder
    from streams.app import Runtime


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BidRequestConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.commit()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


def request_id(raw: bytes) -> str | None:
    """The ``id`` of a bid request that failed validation, when its JSON still gives one."""
    import msgspec

    try:
        doc = msgspec.json.decode(raw)
    except Exception:
        return None
    rid = doc.get("id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 256 else None


#: The bid consumer's long-poll limit when no request has arrived for BUSY_FOR_S seconds.
IDLE_FETCH_WAIT_MS = 20
BUSY_FOR_S = 1.0


class BidRequestConsumer(Service):
    """Consumes bid requests and produces bid responses (see the module docstring)."""

    def __init__(self, runtime: Runtime, bidder: Bidder, **kwargs: Any) -> None:
        self.runtime = runtime
        self.bidder = bidder
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        #: Per partition: the next offset to commit, once the deliveries listed with it are done.
        self._done: dict[TopicPartition, int] = {}
        self._pending: list[tuple[dict[TopicPartition, int], list[asyncio.Future]]] = []
        self._last_commit = time.monotonic()
        self._committing: asyncio.Future | None = None
        self._commit_lock = asyncio.Lock()
        self._consume_loop = ConsumeLoop()
        m = runtime.metrics
        t = runtime.topics
        self._in = m.events_in.labels(topic=t.bid_requests)
        self._out = m.events_out.labels(topic=t.bid_responses)
        self._seconds = m.bid_seconds.labels(path="topic")
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        s = self.runtime.settings
        common = {"bootstrap_servers": s.kafka_bootstrap, "client_id": f"{self.runtime.worker_name}-bidder"}
        self.producer = AIOKafkaProducer(**common, linger_ms=0, acks=1, max_request_size=MESSAGE_MAX_BYTES)
        self.consumer = AIOKafkaConsumer(
            **common,
            group_id=f"{s.app_id}-bidder",
            enable_auto_commit=False,
            auto_offset_reset="latest",  # a request older than its tmax is worthless
            # Idle: a long poll over every partition returns as soon as any request arrives.
            # While requests flow the limit drops to bid_fetch_wait_ms (see _fetch_wait).
            fetch_max_wait_ms=IDLE_FETCH_WAIT_MS,
            max_partition_fetch_bytes=MESSAGE_MAX_BYTES,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
        )
        self.consumer.subscribe([self.runtime.topics.bid_requests], listener=_CommitOnRevoke(self))
        await self.producer.start()
        await self.consumer.start()

    def assignment(self) -> set[TopicPartition]:
        """The bid-request partitions this worker reads (empty before the group assigned them)."""
        return set(self.consumer.assignment()) if self.consumer is not None else set()

    async def handle(self, record: Any) -> asyncio.Future | None:
        """Decide one request; returns the response's delivery future."""
        assert self.producer is not None
        rt = self.runtime
        self._in.inc()
        # The request's clock starts when the exchange produced it (CreateTime, in ms).
        received = record.timestamp / 1000.0 if record.timestamp_type == 0 else time.time()
        responses = rt.topics.bid_responses
        try:
            req = BID_REQUEST_CODEC.decode(record.value)
        except SchemaError as err:
            await rt.dlq.send(err, record)
            rt.metrics.bids.labels(path="topic", outcome="nbr:2").inc()
            rid = request_id(record.value)
            if rid is None:
                return None
            body = BID_RESPONSE_CODEC.encode(no_bid(rid, NBR.INVALID_REQUEST))
            return await self.producer.send(responses, value=body, key=rid.encode())
        dec = await self.bidder.decide(req, received)
        fut = await self.producer.send(
            responses, value=BID_RESPONSE_CODEC.encode(dec.response), key=req.id.encode()
        )
        self._out.inc()
        rt.metrics.bids.labels(path="topic", outcome=dec.outcome).inc()
        self._seconds.observe(time.time() - received)
        return fut

    def _fetch_wait(self, busy: bool) -> None:
        """Long-poll for ``bid_fetch_wait_ms`` while requests flow, and IDLE_FETCH_WAIT_MS when not.

        aiokafka keeps one fetch in flight per broker, and a partition whose records
        were just handed over is fetched again only when that fetch, for the other
        partitions, returns: while requests flow, its limit is what a new request can
        wait on the broker. When none flow, every partition is in the fetch and the
        first request ends it, so a longer limit costs no latency and saves the idle
        round trips (500 a second at 2 ms, enough CPU to push a worker busy with
        recommendations past saturation). Not much longer, though: a partition newly
        assigned by a rebalance gets its starting offset only after the fetch in
        flight returns, and requests produced meanwhile are skipped (the offset reset
        is "latest"); with 500 ms the two-worker integration test lost 56 of 300. aiokafka
        reads the limit from its fetcher each time it builds a request; without that
        attribute the limit stays as built.
        """
        fetcher = getattr(self.consumer, "_fetcher", None)
        want = self.runtime.settings.bid_fetch_wait_ms if busy else IDLE_FETCH_WAIT_MS
        if fetcher is not None and getattr(fetcher, "_fetch_max_wait_ms", want) != want:
            fetcher._fetch_max_wait_ms = want

    @Service.task
    async def _consume(self) -> None:
        assert self.consumer is not None
        async with self._consume_loop.running():
            interval = self.runtime.settings.commit_interval_s
            last_records = 0.0
            while not self.should_stop:
                batch = await self._consume_loop.fetch(self.consumer.getmany(timeout_ms=100, max_records=256))
                now = time.monotonic()
                if batch:
                    last_records = now
                self._fetch_wait(busy=now - last_records < BUSY_FOR_S)
                if batch:
                    futs = await asyncio.gather(*(self.handle(r) for rs in batch.values() for r in rs))
                    offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}
                    self._pending.append((offsets, [f for f in futs if f is not None]))
                if time.monotonic() - self._last_commit >= interval and (
                    self._committing is None or self._committing.done()
                ):
                    # In its own task: a commit waits for deliveries and a broker round trip,
                    # and requests that arrive meanwhile must not wait behind it.
                    self._last_commit = time.monotonic()
                    self._committing = asyncio.ensure_future(self.commit())

    async def commit(self) -> None:
        """Commit the offsets of every request whose response the broker has acknowledged.

        Commits run one at a time (the periodic one runs in its own task, and a rebalance
        commits too), so that an older offset can never be committed after a newer one.
        """
        async with self._commit_lock:
            pending, self._pending = self._pending, []
            for offsets, futs in pending:
                results = await asyncio.gather(*futs, return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    self.runtime.metrics.produce_errors.inc(len(failed))
                    self.log.error("%d bid responses were not delivered: %r", len(failed), failed[0])
                self._done.update(offsets)
            self._last_commit = time.monotonic()
            if self.consumer is not None and self._done:
                # A batch fetched just before a rebalance may hold revoked partitions, whose
                # commit would fail the whole call: commit only what is still assigned.
                assigned = self.consumer.assignment()
                done = {tp: o for tp, o in self._done.items() if tp in assigned}
                self._done = {}
                if done:
                    with contextlib.suppress(Exception):  # a rebalance in progress: the next commit retries
                        await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in done.items()})

    async def on_stop(self) -> None:
        try:
            # A fetch still waiting is cancelled; a batch in hand is answered before the producer
            # stops, and is in the final commit (outside _commit_lock: the loop may need it).
            await self._consume_loop.wait_done()
            if self._committing is not None:
                with contextlib.suppress(Exception):
                    await self._committing
            await self.commit()
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
