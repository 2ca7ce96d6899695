"""The Faust application factory.

``create_app(settings)`` builds a fresh app with its topics, tables, agents
and web views; there is no module-global app (tests build as many as they
need). Agents stay thin: decode, call a plain object, send.

Partitioning: the clickstream is keyed by ``user_id``, so one user's
recent-items table entry and the events that change it live on the same
partition and therefore in one worker. The ``recent-items`` table has as
many partitions as the clickstream topic (co-partitioned) and is backed by a
compacted changelog topic, from which a restarted or newly assigned worker
recovers it.

The online recommender's weights are per-process: each worker learns from
the partitions it owns. Co-visitation learned by one worker is not shared
with the others; later issues add model snapshots through the registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import msgspec
from mode import Service

from online_models.ctr import REQUEST_FIELDS, CTRBlend, OnlineCTR
from ops.alerts import AlertRules
from ops.dashboard import Timeline, page, vendor_file
from ops.lag import STATUSES, LagMonitor
from ops.loopwatch import LoopWatch
from ops.metrics import Metrics
from ops.quality import PrequentialHits
from schemas.codec import Codec, encode
from schemas.errors import SchemaError
from schemas.events import (
    AdClick,
    AdEvent,
    ClickEvent,
    Conversion,
    DemandEvent,
    Impression,
    InventoryEvent,
    Order,
)
from schemas.openrtb import BID_REQUEST_CODEC, BID_RESPONSE_CODEC, NBR
from schemas.topics import Topics
from serving.attribution import AttributionJoin, Labelled
from serving.bidder import Bidder, BidderConfig, Decision
from serving.bidding import MarketPacer
from serving.budget import BudgetLedger
from serving.campaigns import CampaignBook, CampaignError
from serving.clickstream import ClickstreamProcessor
from serving.ctr import DeepCTRModel, RegistryWatcher
from serving.features import CachedReader, FeatureWriter, RedisFeatureStore
from serving.inventory import InventoryProcessor, UnknownSku
from serving.recs import (
    MicroBatcher,
    ModelWatcher,
    Recommender,
    RecRequest,
    RequestCoalescer,
    parse_boosts,
)
from serving.registry import ModelRegistry, RegistryError
from shopstream.services import MESSAGE_MAX_BYTES
from shopstream.settings import ORDERS_READERS, Settings
from streams.archive import LakeArchiver
from streams.bid_consumer import BidRequestConsumer, request_id
from streams.care_crm import care_crm_agents
from streams.dlq import DeadLetterSink, Publish
from streams.linger import backlog_linger, partition_backlog
from streams.partitioning import MemoPartitioner
from streams.tables import (
    ChangelogCollector,
    CoalescingTable,
    flush_changelogs_with_producer,
)


@dataclass
class Runtime:
    """Objects shared by the agents of one app (reachable as ``app.shopstream``)."""

    settings: Settings
    metrics: Metrics
    topics: Topics
    features: FeatureWriter
    store: RedisFeatureStore
    processor: ClickstreamProcessor
    recommender: Recommender
    model_watcher: ModelWatcher
    dlq: DeadLetterSink
    worker_name: str
    #: Hands a message to the producer; returns its delivery future (tests replace it).
    publish: Publish
    quality: PrequentialHits = field(default_factory=PrequentialHits)
    alerts: AlertRules = field(default_factory=AlertRules)
    timeline: Timeline = field(default_factory=Timeline)
    lag_monitor: LagMonitor | None = None
    started_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)


class FeatureFlusher(Service):
    """Flushes buffered feature updates to Redis every ``interval`` seconds."""

    def __init__(self, runtime: Runtime, interval: float = 0.05, **kwargs: Any) -> None:
        self.runtime = runtime
        self.interval = interval
        super().__init__(**kwargs)

    async def flush_once(self) -> None:
        rt = self.runtime
        n = len(rt.features.pending)
        if not n:
            return
        t0 = time.perf_counter()
        try:
            await rt.features.flush()
        except Exception as exc:
            rt.metrics.redis_errors.labels(op="write").inc()
            rt.metrics.redis_up.set(0)
            if len(rt.features.pending) > 50 * rt.features.max_pending:
                # Redis has been down for long: keep memory bounded, features are a cache.
                rt.features.pending.clear()
            self.log.warning("feature flush failed (%s); will retry", exc)
            return
        rt.metrics.redis_up.set(1)
        rt.metrics.redis_seconds.labels(op="write").observe(time.perf_counter() - t0)

    @Service.task
    async def _flush_loop(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            await self.flush_once()

    async def on_stop(self) -> None:
        await self.flush_once()
        await self.runtime.store.close()


class RecoveryWatchdog(Service):
    """Ends the worker when table recovery makes no progress for ``stall_s`` seconds.

    faust-streaming can hang in recovery after a rebalance (see
    :mod:`shopstream.supervise`); the supervisor restarts the worker. ``on_stall``
    is replaceable for tests.
    """

    def __init__(
        self, app: faust.App, stall_s: float, on_stall: Any = None, interval: float = 1.0, **kwargs: Any
    ) -> None:
        self.app = app
        self.stall_s = stall_s
        self.interval = interval
        self.on_stall = on_stall or _exit_recovery_stalled
        self._last: tuple[int, float] | None = None
        super().__init__(**kwargs)

    def check(self, in_recovery: bool, remaining: int, now: float) -> bool:
        """Record one observation; True when recovery is stalled."""
        if not in_recovery or remaining <= 0:
            self._last = None
            return False
        if self._last is None or self._last[0] != remaining:
            self._last = (remaining, now)
            return False
        return now - self._last[1] >= self.stall_s

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            recovery = self.app.tables.recovery  # type: ignore[attr-defined]
            remaining = recovery.active_remaining_total() if recovery.in_recovery else 0
            if self.check(bool(recovery.in_recovery), remaining, time.monotonic()):
                self.log.error(
                    "table recovery made no progress for %.0fs (%d changelog records left); restarting",
                    self.stall_s,
                    remaining,
                )
                self.on_stall()


class ModelWatcherService(Service):
    """Checks the registry every ``interval`` seconds and hot-swaps the served model;
    runs the recommendation micro-batches computed with it."""

    def __init__(
        self,
        runtime: Runtime,
        batcher: MicroBatcher,
        coalescer: RequestCoalescer,
        interval: float,
        **kwargs: Any,
    ) -> None:
        self.runtime = runtime
        self.batcher = batcher
        self.coalescer = coalescer
        self.interval = interval
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.runtime.model_watcher.check()

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            await self.runtime.model_watcher.check()

    @Service.task
    async def _batches(self) -> None:
        await self.batcher.run(lambda: self.should_stop)

    async def on_stop(self) -> None:
        try:
            await self.batcher.flush()
        finally:
            await self.coalescer.close()
            await self.runtime.recommender.close()


def bound_consumer_long_poll(app: faust.App, wait_ms: int) -> None:
    """Give the agents' aiokafka consumer a fetch wait limit (``fetch_max_wait_ms``) of ``wait_ms``.

    faust-streaming builds that consumer, in its consumer thread, with 1,500 ms
    and no setting for it. aiokafka keeps one fetch in flight per broker and
    never puts a partition whose fetched records are not yet consumed into a
    fetch; when the agent falls behind for a moment, the fetch it sends covers
    only the other (quiet) topics, and the busy partitions wait until it
    returns, after the whole limit if the quiet topics stay quiet. In
    ``benchmarks/recs_latency.py`` runs at 1,000 clicks/s, lists then fell
    seconds behind (README, Recommendations → Latency). While records flow a
    fetch returns with them, so a lower limit costs nothing; an idle worker
    makes ``1000 / wait_ms`` empty fetches a second.

    The limit is set on each consumer the thread creates (table recovery
    included): ``AIOKafkaConsumer.start()`` hands it to its fetcher.
    """
    if not 1 <= wait_ms <= 1500:
        raise ValueError(f"SHOPSTREAM_CONSUMER_FETCH_WAIT_MS={wait_ms}: expected 1-1500 ms")
    thread = app.consumer._thread  # type: ignore[attr-defined]
    create = thread._create_worker_consumer

    def create_bounded(transport: Any) -> Any:
        consumer = create(transport)
        consumer._fetch_max_wait_ms = wait_ms
        app.log.info("agents' consumer: fetches wait at most %d ms", wait_ms)
        return consumer

    thread._create_worker_consumer = create_bounded


class LingerTicker(Service):
    """Ticks the adaptive producer linger (streams/linger.py) every ``interval`` seconds.

    A linger switched on by a burst goes back once no click came for a whole
    interval, though the events that would show the backlog gone never came.
    """

    def __init__(self, linger: Any, interval: float = 0.5, **kwargs: Any) -> None:
        self.linger = linger
        self.interval = interval
        super().__init__(**kwargs)

    @Service.task
    async def _tick(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            self.linger.tick()


class LoopWatchService(Service):
    """Runs :class:`ops.loopwatch.LoopWatch` for the worker's lifetime."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        self.watch = LoopWatch(runtime.metrics)
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self.watch.install_gc_hook()

    @Service.task
    async def _sample(self) -> None:
        await self.watch.run()

    async def on_stop(self) -> None:
        self.watch.remove_gc_hook()


class OpsService(Service):
    """Lag monitor, dashboard time series and alerts of one worker.

    Every worker samples lag (cheap: one admin request per group per
    interval) and keeps its own dashboard; only the worker that owns
    partition 0 of the clickstream (the lead topic: :meth:`leads`) publishes
    alerts, so each alert reaches the ops-alerts topic once however many workers run.
    """

    def __init__(self, app: faust.App, runtime: Runtime, **kwargs: Any) -> None:
        self.app = app
        self.runtime = runtime
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        rt = self.runtime
        if rt.settings.lag_monitor:
            s = rt.settings
            groups = [
                s.app_id,
                f"{s.app_id}-archive",
                *filter(None, (g.strip() for g in s.lag_groups.split(","))),
            ]
            rt.lag_monitor = LagMonitor(
                s.kafka_bootstrap, groups, interval_s=s.lag_interval_s, stop_after_s=s.lag_stop_after_s
            )
            try:
                await rt.lag_monitor.start()
            except Exception as exc:
                self.log.warning("lag monitor unavailable: %s", exc)
                rt.lag_monitor = None

    def leads(self) -> bool:
        """Whether this worker owns partition 0 of the lead topic (and so publishes alerts).

        The lead topic is the clickstream, or in an application that does not run
        the recommendation agents (``SHOPSTREAM_AGENTS``), the first input topic by name.
        """
        lead = self.runtime.extra.get("lead_topic", self.runtime.topics.clicks)
        return any(tp.topic == lead and tp.partition == 0 for tp in self.app.assignor.assigned_actives())

    async def publish_alerts(self, alerts: list[Any]) -> None:
        rt = self.runtime
        for alert in alerts:
            rt.metrics.alerts.labels(kind=alert.kind, status=alert.status).inc()
            if self.leads():
                await rt.publish(rt.topics.ops_alerts, alert.subject.encode(), encode(alert), None)

    async def sample_once(self) -> None:
        rt = self.runtime
        m = rt.metrics
        snap: dict[str, Any] | None = None
        alerts: list[Any] = []
        if rt.lag_monitor is not None:
            t0 = time.perf_counter()
            try:
                await rt.lag_monitor.sample()
            except Exception as exc:
                self.log.warning("lag sample failed: %s", exc)
            m.lag_sample_seconds.observe(time.perf_counter() - t0)
            snap = rt.lag_monitor.snapshot()
            for g in snap["groups"]:
                for st in STATUSES:
                    m.consumer_group_status.labels(group=g["group"], status=st).set(
                        1 if st == g["status"] else 0
                    )
                for p in g["partitions"]:
                    labels = {"group": g["group"], "topic": p["topic"], "partition": str(p["partition"])}
                    m.consumer_lag.labels(**labels).set(p["lag"])
                    m.consumer_lag_seconds.labels(**labels).set(p["lag_seconds"])
                alerts += rt.alerts.group_status(g["group"], g["status"])
                fire = rt.settings.alert_lag_s
                alerts += rt.alerts.threshold(
                    "lag_seconds", g["group"], g["max_lag_seconds"], fire, fire * 2 / 3
                )
        if rt.quality.total:
            m.model_quality.labels(model="recs", metric="hr10").set(rt.quality.value)
        iq = rt.extra.get("intent_quality")
        if iq is not None and iq.total:
            m.model_quality.labels(model="intent", metric="accuracy").set(iq.correct / iq.total)
        ctrq = rt.extra.get("ctr_quality")
        if ctrq is not None and ctrq.n:
            if ctrq.auc_defined:
                m.model_quality.labels(model="ctr", metric="auc").set(ctrq.auc.get())
            m.model_quality.labels(model="ctr", metric="logloss").set(ctrq.logloss.get())
        point = rt.timeline.add(m.render().decode(), snap, [])
        fire = rt.settings.alert_dlq_per_s
        alerts += rt.alerts.threshold("dlq_rate", rt.worker_name, point["dlq_per_s"], fire, fire / 2)
        alerts += rt.extra.pop("pending_alerts", [])
        await self.publish_alerts(alerts)

    @Service.task
    async def _sample_loop(self) -> None:
        while not self.should_stop:
            await self.sleep(self.runtime.settings.lag_interval_s)
            try:
                await self.sample_once()
            except Exception as exc:  # the dashboard must never take the worker down
                self.log.warning("ops sample failed: %s", exc)

    async def on_stop(self) -> None:
        if self.runtime.lag_monitor is not None:
            await self.runtime.lag_monitor.stop()


class BiddingService(Service):
    """Campaign-file reloads and pacing of one worker's bidder, every ``campaigns_poll_s`` seconds."""

    def __init__(self, runtime: Runtime, bidder: Bidder, deep: RegistryWatcher, **kwargs: Any) -> None:
        self.runtime = runtime
        self.bidder = bidder
        self.deep = deep
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.swap_deep_model()
        try:
            await self.bidder.ledger.warm()
        except Exception as exc:
            self.log.warning("budget ledger not reachable yet (bids get no-bid until it is): %s", exc)

    async def swap_deep_model(self) -> None:
        """Serve the registry's production deep CTR model (verified; a bad version is refused)."""
        if await self.deep.check():
            self.bidder.deep = self.deep.model

    async def tick(self) -> None:
        rt = self.runtime
        self.bidder.book.reload()
        await self.swap_deep_model()
        try:
            mus = await self.bidder.update_pacing()
            spend = await self.bidder.ledger.spend(list(mus))
        except Exception as exc:
            self.log.warning("pacing update failed (multipliers kept): %s", exc)
            return
        for cid, mu in mus.items():
            rt.metrics.campaign_pacing.labels(campaign=cid).set(mu)
            rt.metrics.campaign_spend.labels(campaign=cid).set(spend[cid].spent)

    @Service.task
    async def _upkeep(self) -> None:
        while not self.should_stop:
            await self.sleep(self.runtime.settings.campaigns_poll_s)
            try:
                await self.tick()
            except Exception as exc:  # never take the worker down
                self.log.warning("bidding upkeep failed: %s", exc)

    async def on_stop(self) -> None:
        await self.bidder.ledger.close()


def _load_request_ctr_model(mv: Any, registry: ModelRegistry) -> DeepCTRModel:
    """A deep CTR model the bidder can feed: trained on the bid-request fields, in their order."""
    model = DeepCTRModel(mv, registry)
    if model.fields != REQUEST_FIELDS:
        raise RegistryError(
            f"{mv.tag} was trained on fields {list(model.fields)}; the bidder sends {list(REQUEST_FIELDS)}"
        )
    return model


def _bidding_agents(app: faust.App, runtime: Runtime) -> Bidder:
    """Bid requests → bid responses; ad events → notices to the budget ledger and CTR labels.

    Bid requests are keyed by user (falling back to the request id); the
    response goes to ``ads.bid-responses.v1`` keyed by request id. The budget
    is one keyed table in Redis shared by every worker (:mod:`serving.budget`
    says why). Ad events are keyed by request id: an impression is the
    exchange's billing notice (charged once, however often it is delivered)
    and the start of its attribution window (:mod:`serving.attribution`).
    """
    s = runtime.settings
    topics = runtime.topics
    m = runtime.metrics
    ledger = BudgetLedger(s.redis_url, s.redis_prefix, reservation_ttl_s=s.bid_reservation_ttl_s)
    try:
        book = CampaignBook(s.campaigns or None)
    except CampaignError as exc:
        raise SystemExit(f"shopstream: {exc}") from None
    online = OnlineCTR()
    blend = CTRBlend()
    store = runtime.store
    bidder = Bidder(
        book,
        ledger,
        online,
        blend,
        profiles=CachedReader(lambda uid: store.get("user", uid), ttl_s=s.bid_profile_ttl_s).get,
        config=BidderConfig(
            notice_url=s.bid_notice_url or f"http://{s.web_host}:{s.web_port}",
            default_tmax_ms=s.bid_default_tmax_ms,
            safety_ms=s.bid_safety_ms,
            shade=s.bid_shade,
        ),
        pacer_factory=lambda: MarketPacer(period_s=s.bid_plan_s),
    )
    runtime.extra["bidder"] = bidder
    deep = RegistryWatcher(ModelRegistry(s.model_dir), s.ctr_model, _load_request_ctr_model, m)
    runtime.extra["deep_ctr"] = deep
    app.service(BiddingService(runtime, bidder, deep))  # type: ignore[arg-type]

    # The topic path reads bid requests with its own aiokafka consumer (latency: see streams.bid_consumer).
    bid_consumer = runtime.extra["bid_consumer"] = BidRequestConsumer(runtime, bidder)
    app.service(bid_consumer)  # type: ignore[arg-type]

    ad_topic = app.topic(topics.ad_events, partitions=s.partitions, value_serializer="raw")
    ad_codec: Codec[AdEvent] = Codec(AdEvent, s.max_event_bytes)  # type: ignore[arg-type]
    attribution = app.Table("ad-attribution", default=None, partitions=s.partitions)
    join = AttributionJoin(s.attribution_window_s)
    runtime.extra["attribution"] = join
    runtime.extra["attribution_table"] = attribution
    ctr_quality = runtime.extra["ctr_quality"] = _CTRQuality()
    in_ads = m.events_in.labels(topic=topics.ad_events)

    def learn(labels: list[Labelled]) -> None:
        for label, _delay in labels:
            if label.context is None:
                continue
            ctx = msgspec.json.decode(label.context)
            po, pd = float(ctx["po"]), ctx.get("pd")
            ctr_quality.add(blend.predict(po, pd), label.clicked)
            online.learn_one(ctx["f"], label.clicked)
            blend.learn(po, pd, label.clicked)

    @app.agent(ad_topic, name="ad_events")
    async def ad_events(stream: faust.StreamT) -> None:
        """Impressions (billing notices) and clicks → the budget ledger and the CTR label join."""
        async for event in stream.events():
            message = event.message
            in_ads.inc()
            ev = await runtime.dlq.decode(ad_codec, message)
            if ev is None:
                continue
            bid_id = f"{ev.request_id}:{ev.imp_id}"
            part = message.partition
            if isinstance(ev, Impression):
                result, campaign = await ledger.settle(bid_id, "bill", ev.price / 1000.0)
                m.bid_notices.labels(kind="impression", result=result).inc()
                ctx = await ledger.bid_context(bid_id) if result != "unknown" else None
                if result == "charged":  # the first report of this win: its market price
                    bidder.observe_market(campaign, ctx, ev.price)
                learn(join.impression(attribution, part, ev.request_id, ev.imp_id, ev.ts, ctx))
            elif isinstance(ev, AdClick):
                learn(join.click(attribution, part, ev.request_id, ev.imp_id, ev.ts))
            elif isinstance(ev, Conversion):
                learn(join.advance(attribution, part, ev.ts))

    return bidder


class _CTRQuality:
    """Prequential quality of the blended CTR (log loss and AUC over the labels seen)."""

    def __init__(self) -> None:
        from river import metrics

        self.auc = metrics.ROCAUC()
        self.logloss = metrics.LogLoss()
        self.n = 0
        self.positives = 0

    def add(self, p: float, clicked: bool) -> None:
        self.auc.update(clicked, p)
        self.logloss.update(clicked, p)
        self.n += 1
        self.positives += int(clicked)

    @property
    def auc_defined(self) -> bool:
        """Whether both a click and a non-click were seen (AUC ranks one against the other)."""
        return 0 < self.positives < self.n

    def status(self) -> dict[str, Any]:
        return {
            "labels": self.n,
            "positives": self.positives,
            "auc": float(self.auc.get()) if self.auc_defined else None,
            "logloss": float(self.logloss.get()) if self.n else None,
        }


def _exit_recovery_stalled() -> None:
    from shopstream.supervise import EXIT_RECOVERY_STALLED

    logging.shutdown()
    os._exit(EXIT_RECOVERY_STALLED)


def faust_app(settings: Settings) -> faust.App:
    """The :class:`faust.App` of a worker, with no agents: transport, commit, producer and table settings.

    :func:`create_app` adds shopstream's agents to it; ``benchmarks/faust_floor.py``
    adds an agent that does nothing, to measure what the framework alone costs.
    """
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_url,
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        datadir=str(settings.data_dir),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        producer_linger=settings.producer_linger_s,
        producer_max_request_size=MESSAGE_MAX_BYTES,
        producer_partitioner=MemoPartitioner(),
        consumer_max_fetch_size=MESSAGE_MAX_BYTES,
        key_serializer="raw",
        value_serializer="json",
        processing_guarantee="at_least_once",
        table_cleanup_interval=60.0,
        # Changelog records coalesce per key until the next commit (streams/tables.py).
        Table=CoalescingTable,
    )
    flush_changelogs_with_producer(app)
    return app


def create_app(settings: Settings, worker_name: str | None = None) -> faust.App:
    """Build a shopstream Faust app from ``settings``."""
    name = worker_name or f"{socket.gethostname()}-{os.getpid()}"
    app = faust_app(settings)
    topics = Topics(settings.topic_prefix)
    metrics = Metrics()
    metrics.registry.register(ChangelogCollector(app))
    store = RedisFeatureStore(settings.redis_url, settings.redis_prefix)
    features = FeatureWriter(store, ttl_s=settings.feature_ttl_s)

    async def publish(
        topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> Any:
        # The producer directly: Faust's Topic.send wraps each message in several
        # objects, which cost more than building the recommendation itself.
        delivery = await app.producer.send(topic, key, value, None, None, headers)
        delivery.add_done_callback(on_delivery)  # type: ignore[attr-defined]
        return delivery

    def on_delivery(fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            metrics.produce_errors.inc()
            app.log.error("message delivery failed: %r", None if fut.cancelled() else fut.exception())

    async def publish_via_runtime(
        topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> Any:
        return await runtime.publish(topic, key, value, headers)

    processor = ClickstreamProcessor(features, k=settings.recs_k, recent_items=settings.recent_items)
    recommender = Recommender(
        processor.model,
        settings.redis_url,
        prefix=settings.redis_prefix,
        k=settings.recs_k,
        max_per_category=settings.recs_max_per_category,
        boosts=parse_boosts(settings.recs_boosts),
        timeout_s=settings.recs_redis_timeout_s,
        retry_after_s=settings.recs_redis_retry_after_s,
        metrics=metrics,
    )
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        topics=topics,
        features=features,
        store=store,
        processor=processor,
        recommender=recommender,
        model_watcher=ModelWatcher(
            recommender, ModelRegistry(settings.model_dir), settings.recs_model, metrics=metrics
        ),
        dlq=DeadLetterSink(publish_via_runtime, metrics, worker=name),
        worker_name=name,
        publish=publish,
    )
    app.shopstream = runtime  # type: ignore[attr-defined]

    flusher = FeatureFlusher(runtime)
    app.service(flusher)  # type: ignore[arg-type]
    groups = settings.agent_groups()
    # The producer's linger (it grows while the clickstream agent is behind: recs only).
    metrics.producer_linger.set(settings.producer_linger_s)
    app.service(OpsService(app, runtime))  # type: ignore[arg-type]
    app.service(LoopWatchService(runtime))  # type: ignore[arg-type]
    watchdog = RecoveryWatchdog(app, settings.recovery_stall_s)
    runtime.extra["recovery_watchdog"] = watchdog
    app.service(watchdog)  # type: ignore[arg-type]

    # Orders feed three agent groups (SHOPSTREAM_AGENTS); the first of those that runs here
    # dead-letters the orders that fail their schema, unless SHOPSTREAM_DEAD_LETTER_ORDERS=false.
    orders_topic = app.topic(topics.orders, partitions=settings.partitions, value_serializer="raw")
    order_codec: Codec[Order] = Codec(Order, settings.max_event_bytes)
    runtime.extra["agent_groups"] = groups
    runtime.extra["orders_dead_lettered_by"] = (
        next((g for g in ORDERS_READERS if g in groups), None) if settings.dead_letter_orders else None
    )
    if "recs" in groups:
        _recs_agents(app, runtime, flusher, orders_topic, order_codec)
    if "inventory" in groups:
        _inventory_agents(app, runtime, orders_topic)
    if "bidding" in groups:
        _bidding_agents(app, runtime)
    if "care_crm" in groups:
        care_crm_agents(app, runtime, orders_topic)
    inputs = sorted({t for agent in app.agents.values() for t in agent.channel.topics})
    runtime.extra["lead_topic"] = topics.clicks if topics.clicks in inputs else inputs[0]

    if settings.archive:
        archiver = LakeArchiver(runtime)
        runtime.extra["archiver"] = archiver
        app.service(archiver)  # type: ignore[arg-type]
    _register_views(app, runtime)
    return app


def _recs_agents(
    app: faust.App, runtime: Runtime, flusher: FeatureFlusher, orders_topic: Any, order_codec: Codec[Order]
) -> None:
    """Clicks and orders → recent- and bought-items tables, the online model, features → lists.

    With them the served model's watcher and the micro-batches it computes lists in.
    """
    settings, metrics, topics = runtime.settings, runtime.metrics, runtime.topics
    processor, recommender = runtime.processor, runtime.recommender
    batcher = MicroBatcher(
        recommender,
        lambda rec, token: deliver_rec(rec, token),
        max_batch=settings.recs_batch_max,
        max_wait_s=settings.recs_batch_wait_s,
    )
    coalescer = runtime.extra["http_recs"] = RequestCoalescer(
        recommender, max_batch=settings.recs_http_batch_max
    )
    watcher = ModelWatcherService(runtime, batcher, coalescer, settings.model_poll_s)
    app.service(watcher)  # type: ignore[arg-type]
    clicks_topic = app.topic(topics.clicks, partitions=settings.partitions, value_serializer="raw")
    recs_name = topics.recommendations
    recent_items = app.Table("recent-items", default=list, partitions=settings.partitions)
    runtime.extra["recent_items"] = recent_items
    click_codec: Codec[ClickEvent] = Codec(ClickEvent, settings.max_event_bytes)

    bought_items = app.Table("bought-items", default=list, partitions=settings.partitions)
    runtime.extra["bought_items"] = bought_items

    in_clicks = metrics.events_in.labels(topic=topics.clicks)
    in_orders = metrics.events_in.labels(topic=topics.orders)
    out_recs = metrics.events_out.labels(topic=topics.recommendations)
    proc_time = metrics.processing.labels(agent="recommend")
    # Longer producer batches while the agent is behind (streams/linger.py).
    linger_now = metrics.producer_linger

    def linger_switched(seconds: float) -> None:
        linger_now.set(seconds)
        metrics.producer_linger_switches.inc()
        app.log.info(
            "producer linger now %.0f ms (clickstream %s)",
            1e3 * seconds,
            "behind" if seconds > settings.producer_linger_s else "caught up",
        )

    linger = backlog_linger(app, settings, on_switch=linger_switched)
    runtime.extra["producer_linger"] = linger
    if linger is not None:
        app.service(LingerTicker(linger))  # type: ignore[arg-type]
    # Records behind each event in its partition (the agent's own buffer stays empty: streams/linger.py).
    runtime.extra["partition_backlog"] = partition_backlog(app.consumer)
    order_time = metrics.processing.labels(agent="recommend_orders")

    async def publish_recs(user: str, recent: list[str], event_id: str, source_ts: float) -> None:
        """A fresh list for ``user``: from the trained model when one is loaded, else the online model."""
        rec = await recommender.recommend(user, recent, event_id=event_id, source_ts=source_ts)
        await deliver_rec(rec, None)

    served_by: dict[str, Any] = {}  # model name -> its labelled counter (labels() per message costs)

    async def deliver_rec(rec: Any, token: Any) -> None:
        runtime.quality.shown(rec.user_id, (i.item_id for i in rec.items))
        await runtime.publish(recs_name, rec.user_id.encode(), encode(rec), None)
        out_recs.inc()
        served = served_by.get(rec.model)
        if served is None:
            served = served_by[rec.model] = metrics.recs_served.labels(path="topic", source=rec.model)
        served.inc()
        if token is not None:
            stream, event = token
            await stream.ack(event)

    @app.agent(clicks_topic, name="recommend")
    async def recommend(stream: faust.StreamT) -> None:
        """Clickstream → recent-items table, online model, features → recommendations.

        Outputs are handed to the producer without waiting for their delivery;
        Faust flushes the producer before it commits offsets, so a crash can
        repeat outputs but never lose them (at-least-once).
        """
        # Acks are manual: with a trained model, lists are computed in micro-batches
        # (one Redis round trip and one ONNX call per batch) and an event is acked
        # only once its list is handed to the producer.
        noack: Any = stream.noack()  # type: ignore[attr-defined]
        quality = runtime.quality
        behind = runtime.extra["partition_backlog"]
        async for event in noack.events():
            t0 = time.perf_counter()
            message = event.message
            if linger is not None:
                linger.observe(behind(message))
            in_clicks.inc()
            ev = await runtime.dlq.decode(click_codec, message)
            if ev is None:
                await noack.ack(event)
                continue
            user = ev.user_id
            item = getattr(ev, "item_id", None)
            if item is not None and quality.test(user, item) is not None:
                miss_rate = quality.batch_error()
                if miss_rate is not None and (drift := runtime.alerts.model_error("recs", miss_rate)):
                    runtime.extra.setdefault("pending_alerts", []).extend(drift)
            recent = recent_items[user]
            new_recent, due = processor.learn(ev, recent)
            if new_recent is not recent:
                recent_items[user] = new_recent
            if not due:
                await noack.ack(event)
            elif recommender.model is None:
                await deliver_rec(processor.recommend(user, new_recent, ev.event_id, ev.ts), (noack, event))
            else:
                batcher.add(RecRequest(user, new_recent, None, ev.event_id, ev.ts), (noack, event))
                if batcher.full:
                    await batcher.submit()
            proc_time.observe(time.perf_counter() - t0)
            if runtime.features.full:
                await flusher.flush_once()

    @app.agent(orders_topic, name="recommend_orders")
    async def recommend_orders(stream: faust.StreamT) -> None:
        """Orders → bought-items table, online model, features → a fresh list (bought items dropped)."""
        async for event in stream.events():
            t0 = time.perf_counter()
            message = event.message
            in_orders.inc()
            order = await runtime.dlq.decode(order_codec, message)
            if order is None or order.status != "placed":
                continue
            user = order.user_id
            recent, bought = processor.learn_order(order, recent_items[user], bought_items[user])
            recent_items[user] = recent
            bought_items[user] = bought
            # The list must not offer what was just bought, even before the features reach Redis.
            await flusher.flush_once()
            await publish_recs(user, recent, order.event_id, order.ts)
            order_time.observe(time.perf_counter() - t0)

    runtime.extra["recommend_agent"] = recommend


def _inventory_agents(app: faust.App, runtime: Runtime, orders_topic: Any) -> None:
    """Orders → demand re-keyed by sku → per-SKU windows, forecasts and replenishment alerts.

    Partitioning: orders are keyed by user, so ``inventory_demand`` re-keys each
    order line by sku onto ``shop.demand.v1`` (its Kafka timestamp is the
    order's event time). ``inventory`` reads that topic and ``shop.inventory.v1``
    (both keyed by sku, same partition count), so one worker owns each SKU's
    state table entry. Schema errors in orders are dead-lettered once, by the
    first agent group that reads orders in this worker (recs, inventory, care_crm).
    """
    s = runtime.settings
    topics = runtime.topics
    metrics = runtime.metrics
    demand_name = topics.demand
    processor = InventoryProcessor(
        window_s=s.demand_window_s,
        lateness_s=s.demand_lateness_s,
        lead_time=s.lead_time_windows,
        service_level=s.service_level,
    )
    runtime.extra["inventory_processor"] = processor
    order_codec: Codec[Order] = Codec(Order, s.max_event_bytes)
    demand_codec: Codec[DemandEvent] = Codec(DemandEvent, s.max_event_bytes)
    inventory_codec: Codec[InventoryEvent] = Codec(InventoryEvent, s.max_event_bytes)  # type: ignore[arg-type]
    state = app.Table("inventory-state", default=dict, partitions=s.partitions)
    runtime.extra["inventory_state"] = state
    stock_topic = app.topic(demand_name, topics.inventory, partitions=s.partitions, value_serializer="raw")
    out_alerts = metrics.events_out.labels(topic=topics.replenishment)
    in_inventory = metrics.events_in.labels(topic=topics.inventory)
    inv_time = metrics.processing.labels(agent="inventory")

    @app.agent(orders_topic, name="inventory_demand")
    async def inventory_demand(stream: faust.StreamT) -> None:
        """Order lines → ``shop.demand.v1`` keyed by sku (returns and cancellations negative)."""
        dead_letters = runtime.extra.get("orders_dead_lettered_by") == "inventory"
        async for event in stream.events():
            order = await runtime.dlq.decode_shared(order_codec, event.message, dead_letters)
            if order is None:
                continue  # dead-lettered once, by the first agent group that reads orders here
            sign = 1 if order.status == "placed" else -1
            for n, line in enumerate(order.lines):
                ev = DemandEvent(
                    event_id=f"{order.event_id}:{n}",
                    ts=order.ts,
                    sku=line.sku,
                    warehouse=order.warehouse or "main",
                    qty=sign * line.qty,
                    order_id=order.order_id,
                )
                await app.producer.send(
                    demand_name, line.sku.encode(), encode(ev), None, order.ts or None, None
                )

    @app.agent(stock_topic, name="inventory")
    async def inventory(stream: faust.StreamT) -> None:
        """Demand and inventory events → per-SKU state → replenishment alerts and stock-outs in Redis."""
        async for event in stream.events():
            t0 = time.perf_counter()
            message = event.message
            is_demand = message.topic == demand_name
            if not is_demand:
                in_inventory.inc()
            ev: Any = await runtime.dlq.decode(demand_codec if is_demand else inventory_codec, message)
            if ev is None:
                continue
            st = dict(state[ev.sku]) or processor.new_state()
            try:
                alerts = processor.on_demand(st, ev) if is_demand else processor.on_inventory(st, ev)
            except UnknownSku:
                unknown = SchemaError("unknown_sku", f"no inventory event ever named sku {ev.sku!r}", "$.sku")
                await runtime.dlq.send(unknown, message)
                continue
            state[ev.sku] = st
            for alert in alerts:
                await runtime.publish(topics.replenishment, alert.sku.encode(), encode(alert), None)
                out_alerts.inc()
            runtime.features.update(
                "item",
                ev.sku,
                set_={"oos": "1" if st["on_hand"] <= 0 else "0", "on_hand": str(st["on_hand"])},
            )
            inv_time.observe(time.perf_counter() - t0)

    runtime.extra["inventory_agent"] = inventory


MAX_K = 100


def _bad_parameter(web: Any, parameter: str, detail: str) -> Any:
    return web.json({"error": "bad_parameter", "parameter": parameter, "detail": detail}, status=400)


def _register_views(app: faust.App, runtime: Runtime) -> None:
    """The worker's web pages: those of the agent groups it runs, and 404s naming the others."""
    groups = runtime.extra["agent_groups"]
    for group, register, paths in (
        ("recs", _recs_views, ("/recommendations/{user_id}",)),
        ("inventory", _inventory_views, ("/inventory/{sku}",)),
        ("bidding", _bidding_views, ("/openrtb2/bid", "/openrtb2/{kind}", "/campaigns")),
        ("care_crm", _care_crm_views, ("/crm/{user_id}", "/care")),
    ):
        if group in groups:
            register(app, runtime)
        else:
            for path in paths:
                _unserved(app, runtime, path, group)
    bid_consumer: BidRequestConsumer | None = runtime.extra.get("bid_consumer")

    @app.page("/dashboard")
    async def dashboard_view(web: Any, request: Any) -> Any:
        return web.bytes(page(), content_type="text/html")

    @app.page("/dashboard/data")
    async def dashboard_data(web: Any, request: Any) -> Any:
        lag = runtime.lag_monitor.snapshot() if runtime.lag_monitor else None
        alerts = [msgspec.to_builtins(a) for a in runtime.alerts.history]
        return web.json(runtime.timeline.data(lag, alerts))

    @app.page("/dashboard/static/{name}")
    async def dashboard_static(web: Any, request: Any, name: str) -> Any:
        data = vendor_file(name)
        if data is None:
            return web.json({"error": "not_found", "detail": f"{name}: run `make bootstrap`"}, status=404)
        ctype = "text/css" if name.endswith(".css") else "application/javascript"
        return web.bytes(data, content_type=ctype)

    @app.page("/lag")
    async def lag_view(web: Any, request: Any) -> Any:
        if runtime.lag_monitor is None:
            return web.json({"error": "lag monitor disabled (SHOPSTREAM_LAG_MONITOR=false)"}, status=404)
        return web.json(runtime.lag_monitor.snapshot())

    @app.page("/models")
    async def models_view(web: Any, request: Any) -> Any:
        deep_ctr = runtime.extra.get("deep_ctr")  # the bidding agents' model
        return web.json({**runtime.model_watcher.status(), "ctr": deep_ctr.status() if deep_ctr else None})

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(runtime.metrics.render(), content_type="text/plain; version=0.0.4")

    live = b'{"status":"ok"}'

    @app.page("/livez")
    async def livez(web: Any, request: Any) -> Any:
        """Liveness: the process answers, so its event loop runs. Constant, for probes polled often."""
        return web.bytes(live, content_type="application/json")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json(
            {
                "status": "ok",
                "worker": runtime.worker_name,
                "uptime_s": round(time.time() - runtime.started_at, 1),
                "assigned": sorted(
                    f"{tp.topic}:{tp.partition}"
                    for tp in [
                        *app.assignor.assigned_actives(),
                        *(bid_consumer.assignment() if bid_consumer is not None else ()),
                    ]
                ),
                # Not rebalancing, tables recovered, streams flowing: input produced now is processed
                # (faust-streaming skips, and acks, messages fetched while a rebalance is in progress).
                "ready": not app.rebalancing
                and not getattr(app, "in_recovery", False)
                and app.flow_control.is_active(),
            }
        )


def _unserved(app: faust.App, runtime: Runtime, path: str, group: str) -> None:
    """``path`` answers 404, naming the agent group this worker does not run (any method)."""
    doc = {
        "error": "not_served",
        "group": group,
        "detail": f"this worker does not run the {group} agents "
        f"(SHOPSTREAM_AGENTS={runtime.settings.agents}); ask a worker of the application that does",
    }

    class Unserved(faust.web.View):
        async def get(self, request: Any, **params: Any) -> Any:
            return self.json(doc, status=404)

        post = put = delete = get

    app.page(path, name=f"unserved:{path}")(Unserved)


def _recs_views(app: faust.App, runtime: Runtime) -> None:
    recent_items = runtime.extra["recent_items"]
    coalescer: RequestCoalescer = runtime.extra["http_recs"]

    @app.page("/recommendations/{user_id}")
    @app.table_route(table=recent_items, match_info="user_id")
    async def recommendations_view(web: Any, request: Any, user_id: str) -> Any:
        """``GET /recommendations/{user_id}?k=10``, answered by the worker that owns the user's partition."""
        raw_k = request.query.get("k", str(runtime.settings.recs_k))
        try:
            k = int(raw_k)
        except ValueError:
            k = -1
        if not 1 <= k <= MAX_K:
            return _bad_parameter(web, "k", f"k must be an integer in 1..{MAX_K}, got {raw_k!r}")
        if not user_id or len(user_id) > 256:
            return _bad_parameter(web, "user_id", "user_id must be 1..256 characters")
        recent = list(recent_items[user_id])
        rec = await coalescer.recommend(RecRequest(user_id, recent, k))
        runtime.metrics.recs_served.labels(path="http", source=rec.model).inc()
        return web.bytes(encode(rec), content_type="application/json")


def _inventory_views(app: faust.App, runtime: Runtime) -> None:
    inventory_state = runtime.extra["inventory_state"]
    inventory_processor: InventoryProcessor = runtime.extra["inventory_processor"]

    @app.page("/inventory/{sku}")
    @app.table_route(table=inventory_state, match_info="sku")
    async def inventory_view(web: Any, request: Any, sku: str) -> Any:
        """A SKU's stock, closed demand windows, forecast and reorder point (from the worker that owns it)."""
        st = inventory_state.get(sku)
        if not st:
            return web.json({"error": "unknown_sku", "sku": sku}, status=404)
        doc = dict(st)
        doc.pop("seen", None)
        if st["history"]:
            plan = inventory_processor.plan(sku, dict(st))
            doc["plan"] = {k: v for k, v in plan.items()}
        return web.json(doc)


def _bidding_views(app: faust.App, runtime: Runtime) -> None:
    bidder: Bidder = runtime.extra["bidder"]
    http_seconds = runtime.metrics.bid_seconds.labels(path="http")
    openrtb_headers = {"x-openrtb-version": "2.6"}

    def openrtb(web: Any, body: bytes, status: int = 200) -> Any:
        return web.bytes(body, content_type="application/json", status=status, headers=dict(openrtb_headers))

    def invalid(web: Any, rid: str | None, detail: str, status: int = 400) -> Any:
        runtime.metrics.bids.labels(path="http", outcome="nbr:2").inc()
        body = {"id": rid or "unknown", "nbr": int(NBR.INVALID_REQUEST), "ext": {"error": detail}}
        return openrtb(web, msgspec.json.encode(body), status)

    class BidView(faust.web.View):
        """``POST /openrtb2/bid``: 200 with a BidResponse, 204 for no bid, 400 (nbr 2) if invalid."""

        async def post(self, request: Any) -> Any:
            received = time.time()
            ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
            version = request.headers.get("x-openrtb-version", "2.6").strip()
            body = await request.read()
            if ctype != "application/json":
                return invalid(self, None, f"Content-Type must be application/json, not {ctype!r}", 415)
            if not version.startswith("2."):
                return invalid(self, request_id(body), f"x-openrtb-version {version!r} is not 2.x")
            try:
                req = BID_REQUEST_CODEC.decode(body)
            except SchemaError as err:
                return invalid(self, request_id(body), str(err))
            dec: Decision = await bidder.decide(req, received)
            runtime.metrics.bids.labels(path="http", outcome=dec.outcome).inc()
            http_seconds.observe(time.time() - received)
            if not dec.is_bid and dec.response.nbr is None:
                return self.bytes(b"", status=204, headers=dict(openrtb_headers))
            return openrtb(self, BID_RESPONSE_CODEC.encode(dec.response))

    app.page("/openrtb2/bid")(BidView)

    @app.page("/openrtb2/{kind}")
    async def notice_view(web: Any, request: Any, kind: str) -> Any:
        """Win (``nurl``), billing (``burl``) and loss (``lurl``) notices: each bid is charged once."""
        kinds = {"win": "win", "bill": "bill", "loss": "loss"}
        if kind not in kinds:
            return web.json({"error": "not_found", "detail": "notices are win, bill or loss"}, status=404)
        bid_id = request.query.get("bid", "")
        if not bid_id or len(bid_id) > 600:
            return _bad_parameter(web, "bid", "bid must be the bid id of the notice URL")
        price = 0.0
        if kind != "loss":
            raw = request.query.get("price", "")
            try:
                price = float(raw)
            except ValueError:
                price = -1.0
            if not 0.0 <= price < 1e6:
                return _bad_parameter(
                    web, "price", f"price must be the clearing CPM (macro substituted), got {raw!r}"
                )
        result, campaign = await bidder.ledger.settle(bid_id, kinds[kind], price / 1000.0)
        runtime.metrics.bid_notices.labels(kind=kind, result=result).inc()
        # The market price, for the campaign's pacer: a win's clearing price (its first
        # report; not a capped or late one), or the ${AUCTION_MIN_TO_WIN} of an auction
        # lost to a higher bid (loss reason 102), when the exchange fills it in.
        market = price if result == "charged" else None
        if kind == "loss" and result == "released" and request.query.get("reason") == "102":
            try:
                market = float(request.query.get("mtw", ""))
            except ValueError:
                market = None  # macro not supported by this exchange
        if market is not None and 0.0 <= market < 1e6:
            try:
                await bidder.learn_price(bid_id, campaign, market, lost=kind == "loss")
            except Exception as exc:  # the notice is settled; pacing can do without this price
                app.log.warning("market price of %s not recorded: %s", bid_id, exc)
        return web.json({"bid": bid_id, "kind": kind, "result": result, "campaign": campaign})

    @app.page("/campaigns")
    async def campaigns_view(web: Any, request: Any) -> Any:
        st = bidder.book.status()
        spend = await bidder.ledger.spend(st["campaigns"]) if st["campaigns"] else {}
        st["today"] = {
            c: {
                **dataclasses.asdict(v),
                "pacing": bidder.multiplier(c),
                "pacer": bidder.pacer_status(c),
            }
            for c, v in spend.items()
        }
        join = runtime.extra["attribution"]
        st["ctr"] = {
            **runtime.extra["ctr_quality"].status(),
            "unjoined": join.unjoined,
            "online_seen": bidder.online.seen,
            "deep_model": getattr(bidder.deep, "version", None),
        }
        return web.json(st)


def _care_crm_views(app: faust.App, runtime: Runtime) -> None:
    crm_state = runtime.extra["crm_state"]

    @app.page("/crm/{user_id}")
    @app.table_route(table=crm_state, match_info="user_id")
    async def crm_view(web: Any, request: Any, user_id: str) -> Any:
        """A customer's CRM state and Redis profile (from the worker that owns the customer)."""
        st = crm_state.get(user_id)
        if st is None:
            return web.json({"error": "unknown_customer", "user_id": user_id}, status=404)
        return web.json({"state": st, "profile": await runtime.store.get("user", user_id)})

    @app.page("/care")
    async def care_view(web: Any, request: Any) -> Any:
        router = runtime.extra["care_router"]
        return web.json(
            {
                "intent": runtime.extra["intent_quality"].status(),
                "intents_known": sorted(str(c) for c in getattr(router.online[-1], "classes", [])),
                "offline_model": getattr(getattr(router.offline, "version", None), "tag", None),
                "sentiment_labels_seen": runtime.extra["sentiment"].seen,
                "faq_entries": [e.id for e in router.faq.entries],
            }
        )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every input, output and dead-letter topic with explicit partitions."""
    from shopstream.services import create_topics

    t = Topics(settings.topic_prefix)
    wanted = {name: settings.partitions for name in t.inputs()}
    wanted.update({f"{name}.dlq": settings.partitions for name in t.inputs()})
    wanted.update({name: settings.partitions for name in t.outputs()})
    wanted.update({name: settings.partitions for name in t.internal()})
    wanted.update({f"{name}.dlq": settings.partitions for name in t.internal()})
    return await create_topics(settings.kafka_bootstrap, wanted, settings.replication)


def limit_blas_threads(n: int) -> None:
    """Let numpy's BLAS use at most ``n`` threads in this process (``threadpoolctl``).

    A worker is sized to one core. OpenBLAS, left to its default, starts a
    thread per core and splits every product above a small size between them;
    the recommender's retrieval product (items x dim, once per list) then
    waits for a thread on another core, and the worker uses two cores.
    """
    if n < 1:
        raise ValueError(f"SHOPSTREAM_BLAS_THREADS={n}: expected at least 1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


def run_worker(settings: Settings, worker_name: str | None = None) -> None:
    """Run one worker in the foreground until SIGINT/SIGTERM."""
    run_faust(settings, lambda s: create_app(s, worker_name))


def run_faust(settings: Settings, build: Callable[[Settings], faust.App]) -> None:
    """Run the app ``build(settings)`` makes as a Faust worker in the foreground, until SIGINT/SIGTERM.

    On uvloop, with the topics created, the agents' fetch wait bounded, and no terminal spinner.
    """
    import uvloop

    limit_blas_threads(settings.blas_threads)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(ensure_topics(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build(settings)
    bound_consumer_long_poll(app, settings.consumer_fetch_wait_ms)
    from faust.worker import Worker

    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner lowers the root logger to DEBUG (to spin on every
    # record), which makes every logger.debug() call build a record: ~9% of a
    # busy worker's CPU. A worker here logs to a file, so no spinner.
    worker.spinner = None
    # Everything built so far (modules, the app, models) lives as long as the process: move it
    # out of the collector's reach, so that full collections, which stop the event loop, stay
    # short (the bidder answers within a request's tmax).
    import gc

    gc.collect()
    gc.freeze()
    worker.execute_from_commandline()
