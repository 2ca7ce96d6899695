"""The ``shopstream`` command: services, topics, worker, replay, demo, tail."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import urlparse

from shopstream.settings import Settings, SettingsError


def _services(settings: Settings, persistent: bool = False):  # type: ignore[no-untyped-def]
    from shopstream.services import Kafka, Redis

    kport = int(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
    r = urlparse(settings.redis_url)
    home = settings.services_dir.resolve()
    return (
        Kafka(home / "kafka", port=kport, controller_port=settings.kafka_controller_port),
        Redis(home / "redis", port=r.port or 6379, persistent=persistent),
    )


def cmd_services(args: argparse.Namespace, settings: Settings) -> int:
    kafka, redis = _services(settings, persistent=args.persistent)
    if args.action == "up":
        t0 = time.monotonic()
        redis.start()
        kafka.start()
        from streams.app import ensure_topics

        created = asyncio.run(ensure_topics(settings))
        print(f"topics: {len(created)} created ({settings.partitions} partitions each)")
        print(f"services ready in {time.monotonic() - t0:.1f}s: kafka {kafka.bootstrap}, redis {redis.url}")
    elif args.action == "down":
        kafka.stop()
        redis.stop()
    else:
        print(kafka.status())
        print(redis.status())
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    print(f"created {len(created)} topics" + (": " + ", ".join(created) if created else " (all existed)"))
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if not args.child:
        from shopstream.supervise import supervise

        argv = [sys.executable, "-m", "shopstream.cli", "worker", "--child"]
        if args.name:
            argv += ["--name", args.name]
        return supervise(argv, say=lambda line: print(line, file=sys.stderr, flush=True))
    from streams.app import run_worker

    run_worker(settings, args.name)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.replay import produce
    from shopstream.sim import SyntheticShop, movielens_clicks

    if args.movielens:
        rows = movielens_clicks(args.movielens)
        res = asyncio.run(produce(settings, rows, limit=args.count, speedup=args.speedup, desc="replay file"))
    else:
        shop = SyntheticShop(seed=args.seed, n_users=args.users, n_items=args.items)
        events = shop.clicks() if args.clicks_only else shop.events()
        res = asyncio.run(produce(settings, events, rate=args.rate, limit=args.count, duration=args.duration))
    print(f"sent {res['sent']:,} events in {res['seconds']:.1f}s ({res['rate']:,.0f} ev/s)")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.demo import run_demo

    return run_demo(settings, duration=args.duration, rate=args.rate, seed=args.seed, keep=args.keep_services)


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from shopstream.demo import tail

    asyncio.run(tail(settings, args.topic, args.count))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    if args.what == "ctr":
        return _train_ctr(args, settings)
    if args.what in ("intent", "sentiment"):
        return _train_text(args, settings)
    try:
        from offline_training.data import load_interactions
        from offline_training.recs import RecsTrainConfig, train_recs
    except ImportError as exc:
        print(f"error: training needs the [train] extra ({exc}); run: .venv/bin/pip install -e '.[train]'")
        return 2
    from schemas.topics import Topics
    from serving.registry import ModelRegistry

    try:
        t = Topics(settings.topic_prefix)
        inter = load_interactions(args.data, topics=args.topic or [t.clicks, t.orders])
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = RecsTrainConfig(arch=args.arch, epochs=args.epochs or 12, factors=args.factors, seed=args.seed)
    if args.quick:
        cfg.epochs, cfg.neumf_epochs = min(cfg.epochs, 3), 1
    registry = ModelRegistry(args.registry or settings.model_dir)
    res = train_recs(
        inter,
        registry,
        name=args.name or settings.recs_model,
        cfg=cfg,
        redis_url=None if args.no_redis else settings.redis_url,
        redis_prefix=settings.redis_prefix,
        source=str(args.data),
        plot_dir=Path(args.plot_dir),
    )
    if res.plot:
        print(f"training curves: {res.plot}")
    return 0


def text_training_data(path: str, what: str, prefix: str = "") -> tuple[list[str], list[str]]:
    """``(texts, labels)`` for the intent or sentiment model.

    ``path`` is a CSV with a header (``text,category`` as banking77, ``label,review``
    as waimai: the text column is the longest-valued one of ``text``/``review``, the
    label ``category``/``label``/``intent``), or the event lake root: support messages an
    agent labelled (intent), or reviews with their stars, 4-5 positive and 1-2
    negative (sentiment).
    """
    import csv
    from pathlib import Path

    p = Path(path)
    if p.is_file():
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise ValueError(f"{p}: no rows")
        cols = rows[0].keys()
        text_col = next((c for c in ("text", "review", "message") if c in cols), None)
        label_col = next((c for c in ("category", "label", "intent") if c in cols), None)
        if text_col is None or label_col is None:
            raise ValueError(f"{p}: want a text column (text/review) and a label column (category/label)")
        return [r[text_col] for r in rows], [r[label_col] for r in rows]
    import msgspec

    from schemas.lake import read_lake
    from schemas.topics import Topics

    topic = Topics(prefix).care_messages if what == "intent" else Topics(prefix).reviews
    texts, labels = [], []
    for raw in read_lake(p, topic).column("value").to_pylist():
        doc = msgspec.json.decode(raw)
        if what == "intent" and doc.get("intent"):
            texts.append(doc["text"])
            labels.append(doc["intent"])
        elif what == "sentiment" and doc.get("text") and doc.get("rating") in (1, 2, 4, 5):
            texts.append(doc["text"])
            labels.append("1" if doc["rating"] >= 4 else "0")
    if len(set(labels)) < 2:
        raise ValueError(
            f"{p}: the lake holds {len(labels)} labelled {topic} rows in {len(set(labels))} classes"
        )
    return texts, labels


def _train_text(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile
    from pathlib import Path

    try:
        from offline_training.text import (
            TextTrainConfig,
            export_onnx,
            onnx_max_abs_diff,
            register_text_model,
            sentiment_members,
            train_text_classifier,
        )
    except ImportError as exc:
        print(f"error: training needs the [train] extra ({exc}); run: .venv/bin/pip install -e '.[train]'")
        return 2
    from serving.registry import ModelRegistry

    try:
        texts, labels = text_training_data(args.data, args.what, settings.topic_prefix)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = TextTrainConfig(members=sentiment_members()) if args.what == "sentiment" else TextTrainConfig()
    print(
        f"training the {args.what} model on {len(texts):,} texts, {len(set(labels))} classes ...", flush=True
    )
    model = train_text_classifier(texts, labels, cfg, progress=lambda name, row: print(f"  {name}: {row}"))
    name = args.name or (settings.intent_model if args.what == "intent" else settings.sentiment_model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        diff = onnx_max_abs_diff(model, path, texts[:500])
        if not diff <= 1e-4:
            print(
                f"error: the ONNX export differs from PyTorch by {diff:.2e}; not registered", file=sys.stderr
            )
            return 1
        mv = register_text_model(
            ModelRegistry(args.registry or settings.model_dir), name, model, path, {"onnx_max_abs_diff": diff}
        )
    print(f"registered {mv.tag} (ONNX vs PyTorch max |diff| {diff:.1e}); workers swap it in within seconds")
    return 0


def _train_ctr(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    try:
        from offline_training.ctr import CTRTrainConfig, train_ctr
    except ImportError as exc:
        print(f"error: training needs the [train] extra ({exc}); run: .venv/bin/pip install -e '.[train]'")
        return 2
    from serving.registry import ModelRegistry

    cfg = CTRTrainConfig(seed=args.seed)
    if args.epochs:
        cfg.epochs = args.epochs
    if args.quick:
        cfg.epochs = min(cfg.epochs, 3)
    try:
        res = train_ctr(
            args.data,
            ModelRegistry(args.registry or settings.model_dir),
            cfg=cfg,
            name=args.name or settings.ctr_model,
            prefix=settings.topic_prefix,
            plot_dir=Path(args.plot_dir),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res.plot:
        print(f"training curves: {res.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="shopstream", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("services", help="start/stop/status of the local Kafka broker and Redis")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--persistent", action="store_true", help="Redis with persistence (AOF + RDB)")
    s.set_defaults(func=cmd_services)

    s = sub.add_parser("topics", help="create every topic with explicit partition counts")
    s.add_argument("action", choices=["create"])
    s.set_defaults(func=cmd_topics)

    s = sub.add_parser("worker", help="run a Faust worker in the foreground")
    s.add_argument("--name", default=None, help="worker name used in logs, metrics and lake file names")
    s.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("replay", help="produce a synthetic shop (or a real file) to Kafka")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rate", type=float, default=1000.0, help="events/s; 0 = as fast as possible")
    s.add_argument("--count", type=int, default=None, help="stop after this many events")
    s.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    s.add_argument("--users", type=int, default=2000)
    s.add_argument("--items", type=int, default=1000)
    s.add_argument("--clicks-only", action="store_true", help="only clickstream events")
    s.add_argument("--movielens", metavar="U_DATA", help="replay MovieLens u.data as clicks, in time order")
    s.add_argument("--speedup", type=float, default=1e6, help="time compression for file replays")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("demo", help="services + worker + replay + live recommendations")
    s.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="seconds of streaming once the worker is ready; 0 = until Ctrl-C",
    )
    s.add_argument("--rate", type=float, default=500.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--keep-services", action="store_true", help="leave Kafka and Redis running")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("tail", help="print messages of an output topic")
    s.add_argument("--topic", default="shop.recommendations.v1")
    s.add_argument("--count", type=int, default=10)
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser("train", help="train a model offline (needs the [train] extra) and register it")
    s.add_argument(
        "what",
        choices=["recs", "ctr", "intent", "sentiment"],
        help="recs: NCF (GMF, MLP, NeuMF) → ONNX + Redis + registry; ctr: DeepFM → ONNX + registry; "
        "intent, sentiment: text ensembles → ONNX + registry",
    )
    s.add_argument(
        "--data",
        required=True,
        help="recs: MovieLens folder or u.data, or the event lake root; ctr: the event lake root "
        "(bid requests joined to impressions and clicks) or a Criteo/Avazu CSV; intent/sentiment: "
        "a labelled CSV (banking77, waimai) or the event lake root (agent-labelled messages, review stars)",
    )
    s.add_argument(
        "--topic", action="append", help="lake topic to read, repeatable (default: clicks and orders)"
    )
    s.add_argument("--arch", choices=["gmf", "mlp", "neumf"], default="neumf", help="the model to serve")
    s.add_argument("--epochs", type=int, default=None, help="most epochs (recs: 12 for GMF and MLP; ctr: 30)")
    s.add_argument("--factors", type=int, default=64, help="GMF predictive factors")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--name", default=None, help="registry name (default SHOPSTREAM_RECS_MODEL / SHOPSTREAM_CTR_MODEL)"
    )
    s.add_argument("--registry", default=None, help="registry root (default SHOPSTREAM_MODEL_DIR)")
    s.add_argument("--no-redis", action="store_true", help="do not write vectors to Redis")
    s.add_argument("--plot-dir", default=".var/plots", help="where the training-curve PNG goes")
    s.add_argument("--quick", action="store_true", help="few epochs (smoke test)")
    s.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shopstream`` command."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from shopstream.services import ServiceError

    try:
        return int(args.func(args, settings) or 0)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
