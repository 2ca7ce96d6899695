"""``make demo``: local services, a worker, the synthetic shop replayed, live recommendations."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from shopstream.settings import Settings


async def tail(settings: Settings, topic: str, count: int) -> None:
    """Print ``count`` new messages of ``topic``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic_prefix + topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="latest"
    )
    await consumer.start()
    try:
        n = 0
        async for msg in consumer:
            print(msg.value.decode(errors="replace"))
            n += 1
            if n >= count:
                break
    finally:
        await consumer.stop()


_SHORT_REASONS = (("together_with:", "+"), ("similar_to:", "~"), ("popular_in:", "top "))


def _fmt_rec(value: bytes) -> str:
    from schemas.events import RECOMMENDATION_CODEC

    rec = RECOMMENDATION_CODEC.decode(value)

    def short(reason: str) -> str:
        for long, abbrev in _SHORT_REASONS:
            reason = reason.replace(long, abbrev)
        return reason

    items = ", ".join(f"{i.item_id}({short(i.reason)})" for i in rec.items[:4])
    return f"  {rec.user_id:>10} -> {items}{' ...' if len(rec.items) > 4 else ''}  [{rec.model}]"


def ensure_demo_model(settings: Settings, seed: int, n_events: int = 40_000) -> str:
    """Train and register a small NCF model on the synthetic shop's history unless one is served already.

    Returns a line for the console. Without the ``[train]`` extra the demo runs on the online model.
    """
    import itertools

    import redis

    from serving.registry import ModelRegistry

    registry = ModelRegistry(settings.model_dir)
    mv = registry.production(settings.recs_model)
    if mv is not None:
        users = registry.load_json(mv, "users.json")
        client = redis.Redis.from_url(settings.redis_url)
        try:
            if users and client.exists(f"{settings.redis_prefix}vec:{mv.tag}:u:{users[0]}"):
                hr = mv.metrics.get("hr10", float("nan"))
                return f"model: serving {mv.tag} (HR@10 {hr:.3f}) from {registry.root}"
        finally:
            client.close()
    try:
        from offline_training.data import from_payloads
        from offline_training.recs import RecsTrainConfig, train_recs
    except ImportError as exc:
        return f"model: none ({exc}); serving the online model only"
    from shopstream.sim import SyntheticShop

    print(
        f"model: training NCF on {n_events:,} events of the shop's history (first run only) ...", flush=True
    )
    inter = from_payloads(v for _, _, v in itertools.islice(SyntheticShop(seed=seed).clicks(), n_events))
    cfg = RecsTrainConfig(factors=16, mlp_layers=(32, 16, 8), epochs=4, neumf_epochs=1)
    res = train_recs(
        inter,
        registry,
        name=settings.recs_model,
        cfg=cfg,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        source="synthetic shop history",
        plot_dir=Path(settings.model_dir).parent / "plots",
        progress=True,
        log=lambda line: print("  " + line.strip(), flush=True),
    )
    return f"model: serving {res.version.tag}; training curves in {res.plot}"


DEMO_CAMPAIGNS = Path(__file__).resolve().parents[1] / "infra" / "campaigns" / "demo.json"


def _ads_line(campaigns: dict, exchange) -> str:  # type: ignore[no-untyped-def]
    st = exchange.stats
    ctr = campaigns.get("ctr") or {}
    spend = sum(v["spent"] for v in (campaigns.get("today") or {}).values())
    auc = (
        f"{ctr['auc']:.3f} over {ctr['labels']:,} labels"
        if ctr.get("auc") is not None
        else f"waiting for both clicks and non-clicks ({ctr.get('labels', 0):,} labelled so far)"
    )
    win = f"{100 * st.wins / st.bids:.0f}%" if st.bids else "-"
    pacers = [v.get("pacer") or {} for v in (campaigns.get("today") or {}).values()]
    market = sum(p.get("mode") == "market" for p in pacers)
    return (
        f"  ads: {st.requests:,} bid requests, {st.bids:,} bids, {st.wins:,} won ({win}), "
        f"{st.clicks:,} clicks, ledger spend today {spend:.2f} EUR | pCTR AUC (blend, prequential) {auc} | "
        f"pacing on market prices: {market}/{len(pacers)} campaigns"
    )


def ensure_demo_ctr_model(settings: Settings, seed: int, n_sessions: int = 60_000) -> str:
    """Train and register a small DeepFM on the shop's past ad auctions unless one is registered already."""
    import itertools

    from serving.registry import ModelRegistry

    registry = ModelRegistry(settings.model_dir)
    mv = registry.production(settings.ctr_model)
    if mv is not None:
        return f"bidder: deep CTR model {mv.tag} (held-out AUC {mv.metrics.get('auc', float('nan')):.3f})"
    try:
        from offline_training.ctr import CTRTrainConfig, join_impressions, train_ctr
    except ImportError as exc:
        return f"bidder: no deep CTR model ({exc}); pricing from the online model only"
    from shopstream.sim import SyntheticShop

    print(
        f"bidder: training DeepFM on the ad auctions in {n_sessions:,} past events (first run only) ...",
        flush=True,
    )
    past = SyntheticShop(seed=seed + 1, ad_share=1.0)  # the shop's auctions before today, with their clicks
    events = ((t, v) for t, _, v in itertools.islice(past.events(), n_sessions))
    data = join_impressions(events, source="synthetic shop auction history")
    res = train_ctr(
        data,
        registry,
        cfg=CTRTrainConfig(epochs=10, patience=3),
        name=settings.ctr_model,
        plot_dir=Path(settings.model_dir).parent / "plots",
        progress=True,
        log=lambda line: print("  " + line.strip(), flush=True),
    )
    return f"bidder: serving {res.version.tag} (held-out AUC {res.metrics['auc']:.3f}); curves in {res.plot}"


async def _watch(
    settings: Settings, worker, stop: asyncio.Event, started: float, exchange=None
) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Print live recommendations and rates until ``stop`` is set."""
    from aiokafka import AIOKafkaConsumer

    from shopstream.procs import metric_value

    consumer = AIOKafkaConsumer(
        settings.topic_prefix + "shop.recommendations.v1",
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest",
    )
    await consumer.start()
    recs = 0
    last_print = time.monotonic()
    last_in = 0.0
    last_t = time.monotonic()
    stats = {"recs": 0.0, "events_in": 0.0, "dlq": 0.0}
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=250, max_records=2000)
            msgs = [m for ms in batch.values() for m in ms]
            recs += len(msgs)
            now = time.monotonic()
            if now - last_print >= 2.0:
                text = await asyncio.to_thread(worker.metrics_text)
                ev_in = metric_value(text, "shopstream_events_in_total")
                lake = metric_value(text, "shopstream_lake_rows_total")
                dlq = metric_value(text, "shopstream_dlq_events_total")
                restock = metric_value(
                    text,
                    "shopstream_events_out_total",
                    {"topic": settings.topic_prefix + "ops.replenishment.v1"},
                )
                rate = (ev_in - last_in) / (now - last_t) if now > last_t else 0.0
                last_in, last_t = ev_in, now
                print(
                    f"[{now - started:6.1f}s] processed {ev_in:,.0f} clicks ({rate:,.0f}/s) | "
                    f"recommendations {recs:,} | reorder alerts {restock:,.0f} | lake rows {lake:,.0f} | "
                    f"dead letters {dlq:,.0f}",
                    flush=True,
                )
                for m in msgs[-3:]:
                    print(_fmt_rec(m.value), flush=True)
                if exchange is not None:
                    with contextlib.suppress(Exception):
                        print(
                            _ads_line(await asyncio.to_thread(_get_json, worker.url + "/campaigns"), exchange)
                        )
                last_print = now
                stats.update(recs=recs, events_in=ev_in, dlq=dlq)
    finally:
        await consumer.stop()
    return stats


def _get_json(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=2.0) as r:
        return dict(json.loads(r.read()))


def run_demo(
    settings: Settings, duration: float = 0.0, rate: float = 500.0, seed: int = 0, keep: bool = False
) -> int:
    """Run the demo; returns the exit code."""
    from shopstream.cli import _services
    from shopstream.exchange import ExchangeSimulator
    from shopstream.procs import WorkerProcess
    from shopstream.replay import produce
    from shopstream.sim import SyntheticShop
    from streams.app import ensure_topics

    t0 = time.monotonic()
    # Roll lake files often enough that the demo shows them.
    settings = settings.with_(lake_max_age_s=min(settings.lake_max_age_s, 10.0))
    if not settings.campaigns:
        settings = settings.with_(campaigns=str(DEMO_CAMPAIGNS))
    # Label ad impressions within seconds, so the CTR model's quality shows while the demo runs.
    settings = settings.with_(attribution_window_s=min(settings.attribution_window_s, 10.0))
    print(
        "== shopstream demo ==  (Ctrl-C to stop"
        + (f"; streams for {duration:.0f}s once the worker is ready" if duration else "")
        + ")"
    )
    kafka, redis = _services(settings, persistent=True)
    redis.start()
    kafka.start()
    created = asyncio.run(ensure_topics(settings))
    print(f"topics: {len(created)} created, {settings.partitions} partitions each")
    print(ensure_demo_model(settings, seed), flush=True)
    print(ensure_demo_ctr_model(settings, seed), flush=True)
    log = Path(settings.services_dir).parent / "demo-worker.log"
    worker = WorkerProcess(settings, "demo-1", log).start()
    print(f"worker: starting (log {log}) ...", flush=True)
    stopping = {"flag": False}

    def on_signal(signum, frame):  # type: ignore[no-untyped-def]
        stopping["flag"] = True

    old = signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        h = worker.wait_ready(timeout=120, topic=settings.topic_prefix + "shop.clicks.v1")
        print(f"worker: ready, owns {len(h['assigned'])} partitions; metrics at {worker.url}/metrics")
        print(f"dashboard: {worker.url}/dashboard  (consumer lag, throughput, latency, alerts)")
        print(f"replay: synthetic shop, seed {seed}, {rate:.0f} events/s", flush=True)

        async def main() -> dict[str, float]:
            stop = asyncio.Event()
            started = time.monotonic()
            # The exchange simulator runs the ad auctions against the bidder, so the shop emits only requests.
            shop = SyntheticShop(seed=seed, ad_share=0.6, ad_outcomes=False)
            exchange = ExchangeSimulator(settings, SyntheticShop(seed=seed), seed=seed, market_cpm=6.0)

            async def stopper() -> None:
                # DURATION is the live part: start-up (services, models, worker) can take a minute or more.
                while not stopping["flag"] and (not duration or time.monotonic() - started < duration):
                    if not worker.alive():
                        raise RuntimeError("the worker died; see " + str(log))
                    await asyncio.sleep(0.2)
                stop.set()

            replay = asyncio.create_task(produce(settings, shop.events(), rate=rate, progress=False))
            watch = asyncio.create_task(_watch(settings, worker, stop, started, exchange))
            auctions = asyncio.create_task(exchange.run(stop))
            await stopper()
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay
            await auctions
            stats = await watch
            ex = exchange.stats
            stats.update(bids=ex.bids, wins=ex.wins, ad_clicks=ex.clicks, ad_spend=ex.spend)
            return stats

        stats = asyncio.run(main())
        took = time.monotonic() - t0
        print(
            f"== done in {took:.0f}s (set-up included): {stats['events_in']:,.0f} clicks processed, "
            f"{stats['recs']:,.0f} recommendations, {stats['dlq']:,.0f} dead letters; "
            f"{stats['bids']:,.0f} bids, {stats['wins']:,.0f} won, {stats['ad_clicks']:,.0f} ad clicks, "
            f"{stats['ad_spend']:.2f} EUR spent =="
        )
        if stats["recs"] <= 0:
            print("error: no recommendations were produced", file=sys.stderr)
            code = 1
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, old)
        print("stopping worker ...", flush=True)
        worker.stop(timeout=30)
        if not keep:
            kafka.stop()
            redis.stop()
    return code
