"""Recommendations end to end: train NCF on generated data, export, register, serve, hot-swap.

Real Kafka, real Redis, a real worker process, real PyTorch training and
onnxruntime serving. The training data comes from the synthetic shop, so the
test needs nothing from ``../shared``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import redis

from offline_training.data import from_payloads
from offline_training.recs import RecsTrainConfig, train_recs
from schemas.events import RECOMMENDATION_CODEC
from serving.registry import ModelIntegrityError, ModelRegistry
from shopstream.procs import metric_value
from shopstream.services import Redis, free_port
from shopstream.sim import SyntheticShop
from streams.app import ensure_topics
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.integration

enc = msgspec.json.Encoder()
TINY = RecsTrainConfig(arch="neumf", factors=8, mlp_layers=(16, 8), epochs=3, neumf_epochs=1, threads=1)


def shop_interactions(seed: int = 3, n: int = 6000):
    shop = SyntheticShop(seed=seed, n_users=150, n_items=120)
    values = [v for _, _, v in itertools.islice(shop.clicks(), n)]
    return from_payloads(values)


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(cond, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def recs_for(settings, event_ids: set[str], timeout: float = 60) -> list:
    """Recommendation messages until one has arrived for each of ``event_ids``."""
    return asyncio.run(
        consume_until(
            settings.kafka_bootstrap,
            settings.topic_prefix + "shop.recommendations.v1",
            lambda ms: event_ids <= {RECOMMENDATION_CODEC.decode(m.value).event_id for m in ms},
            timeout,
        )
    )


def click(user: str, item: str, kind: str = "click", category: str | None = None, n: int = 0) -> dict:
    ev = {
        "type": kind,
        "event_id": f"{user}-{item}-{kind}-{n}",
        "ts": 1.8e9 + n,
        "user_id": user,
        "item_id": item,
    }
    if category:
        ev["category"] = category
    return ev


def test_train_register_serve_hot_swap_and_refuse_bad_sha(settings_factory, worker_factory, tmp_path: Path):
    models = tmp_path / "models"
    # Training v2 below shares this machine's two cores with the worker: a generous
    # Redis timeout keeps the worker on the trained model instead of its fallback.
    settings = settings_factory(model_dir=models, model_poll_s=0.2, recs_redis_timeout_s=1.0)
    registry = ModelRegistry(models)
    inter = shop_interactions()
    res = train_recs(
        inter,
        registry,
        cfg=TINY,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        source="synthetic shop",
        plot_dir=tmp_path / "plots",
        progress=False,
        log=lambda _: None,
    )
    v1 = res.version
    assert v1.tag == "recs:v1" and registry.production("recs") == v1
    assert res.onnx_max_abs_diff <= 1e-5
    assert set(res.rows) == {"gmf", "mlp", "neumf"} and 0 < v1.metrics["hr10"] <= 1
    assert res.plot is not None and res.plot.read_bytes().startswith(b"\x89PNG")
    registry.verify(v1)
    r = redis.Redis.from_url(settings.redis_url)
    some_user, some_item = inter.user_ids[0], inter.item_ids[0]
    assert len(r.get(f"{settings.redis_prefix}vec:recs:v1:u:{some_user}")) == 4 * v1.metadata["dim"]
    assert len(r.get(f"{settings.redis_prefix}vec:recs:v1:i:{some_item}")) == 4 * v1.metadata["dim"]

    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")
    base = worker.url
    wait_for(
        lambda: get_json(base + "/models")[1].get("model") == "recs:v1", 30, "the worker to load recs:v1"
    )

    # Request/response: a known user gets a list from the trained model, with reason codes.
    status, doc = get_json(f"{base}/recommendations/{some_user}?k=5")
    assert status == 200, doc
    assert doc["model"] == "recs:v1" and doc["user_id"] == some_user and len(doc["items"]) == 5
    assert all(it["reason"] for it in doc["items"])
    # Bad parameters get a clear 4xx.
    for bad in ("k=0", "k=abc", "k=1000", "k=-3"):
        status, err = get_json(f"{base}/recommendations/{some_user}?{bad}")
        assert status == 400 and err["parameter"] == "k" and "1..100" in err["detail"], (bad, err)

    # The topic path. First the online model learns from live traffic...
    topic = settings.topic_prefix + "shop.clicks.v1"
    warm = list(itertools.islice(SyntheticShop(seed=5, n_users=150, n_items=120).clicks(), 3000))
    asyncio.run(produce_all(settings.kafka_bootstrap, ((topic, k, v) for _, k, v in warm)))
    asyncio.run(
        consume_until(
            settings.kafka_bootstrap,
            settings.topic_prefix + "shop.recommendations.v1",
            lambda ms: len(ms) >= 0.5 * len(warm),
            60,
        )
    )
    # ... then the clicks of a user the trained model never saw change that user's lists.
    cat_of = inter.item_category
    target = sorted(cat_of.items())[0][1]
    same_cat = [i for i, c in sorted(cat_of.items()) if c == target][:3]
    user = "brand-new-user"
    events = [click(user, item, "add_to_cart", target, n) for n, item in enumerate(same_cat)]
    # ... and an item the trained model does not know.
    events.append(click(user, "sku-never-trained", "click", target, 99))
    asyncio.run(
        produce_all(settings.kafka_bootstrap, ((topic, user.encode(), enc.encode(e)) for e in events))
    )
    want = {e["event_id"] for e in events}
    msgs = recs_for(settings, want)
    recs = {r.event_id: r for r in (RECOMMENDATION_CODEC.decode(m.value) for m in msgs) if r.event_id in want}
    assert all(r.model == "recs:v1" and len(r.items) == settings.recs_k for r in recs.values())
    first, last = recs[events[0]["event_id"]], recs[events[-1]["event_id"]]
    assert [i.item_id for i in first.items] != [i.item_id for i in last.items]
    for r, upto in ((recs[e["event_id"]], n + 1) for n, e in enumerate(events)):
        seen = {e["item_id"] for e in events[:upto]}
        assert not seen & {i.item_id for i in r.items}, "a list offered an item the user just touched"
    reasons = Counter(i.reason.split(":")[0] for r in recs.values() for i in r.items)
    assert reasons["similar_to"] + reasons["together_with"] > 0, reasons

    # A cold user with no history gets popular items; an empty user id path is not a route.
    status, cold = get_json(f"{base}/recommendations/nobody-at-all?k=4")
    assert status == 200 and len(cold["items"]) == 4
    assert {i["reason"].split(":")[0] for i in cold["items"]} <= {"popular", "new_item", "for_you"}

    # Hot swap under load: a client keeps asking while v2 is trained and promoted.
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            u = inter.user_ids[n % len(inter.user_ids)]
            n += 1
            try:
                status, doc = get_json(f"{base}/recommendations/{u}?k=10", timeout=5)
                results.append((status, doc.get("model", "")))
            except Exception as exc:  # a refused or dropped request is a lost request
                results.append((0, repr(exc)))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    v2 = train_recs(
        shop_interactions(seed=4),
        registry,
        cfg=TINY,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        progress=False,
        log=lambda _: None,
    ).version
    assert v2.tag == "recs:v2"
    wait_for(lambda: any(m == "recs:v2" for _, m in results[-20:]), 30, "requests served by recs:v2")
    n_after = len(results)
    wait_for(lambda: len(results) > n_after + 50, 30, "more requests after the swap")
    stop.set()
    for t in threads:
        t.join(timeout=10)
    statuses = Counter(s for s, _ in results)
    assert statuses == {200: len(results)}, f"lost requests during the swap: {statuses}"
    served = Counter(m for _, m in results)
    assert served["recs:v1"] > 0 and served["recs:v2"] > 0, served
    assert set(served) == {"recs:v1", "recs:v2"}, served
    assert all(m == "recs:v2" for _, m in results[n_after:])

    # A version whose file does not match its sha256 is refused; v2 keeps serving.
    v3 = registry.register("recs", dict.fromkeys(v2.files, b""), promote=False)  # placeholder files
    for fname in v2.files:
        (v3.path / fname).write_bytes((v2.path / fname).read_bytes())  # now the hashes do not match
    with pytest.raises(ModelIntegrityError):
        registry.promote("recs", v3.version)
    index = json.loads((models / "recs" / "index.json").read_text())
    index["production"] = v3.version  # as if the alias were edited behind the registry's back
    (models / "recs" / "index.json").write_text(json.dumps(index))
    doc = wait_for(lambda: get_json(base + "/models")[1].get("refused"), 30, "the worker to refuse v3")
    assert "sha256 mismatch" in doc[str(v3.version)]
    assert get_json(f"{base}/recommendations/{some_user}")[1]["model"] == "recs:v2"
    assert metric_value(worker.metrics_text(), "shopstream_model_load_errors_total", {"model": "recs"}) == 1
    assert worker.alive()


def test_redis_outage_falls_back_to_the_online_model(settings_factory, worker_factory, tmp_path: Path):
    own = Redis(tmp_path / "redis", port=free_port(), persistent=False)
    own.start(quiet=True)
    try:
        models = tmp_path / "models"
        settings = settings_factory(
            model_dir=models, model_poll_s=0.2, redis_url=own.url, recs_redis_retry_after_s=5.0
        )
        inter = shop_interactions()
        train_recs(
            inter,
            ModelRegistry(models),
            cfg=TINY,
            redis_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
            progress=False,
            log=lambda _: None,
        )
        asyncio.run(ensure_topics(settings))
        worker = worker_factory(settings)
        worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")
        base = worker.url
        user = inter.user_ids[1]
        wait_for(lambda: get_json(f"{base}/recommendations/{user}")[1]["model"] == "recs:v1", 30, "recs:v1")

        own.stop(quiet=True)
        t0 = time.monotonic()
        status, doc = get_json(f"{base}/recommendations/{user}?k=5")
        assert status == 200 and doc["model"] == "covis-biasedmf-v1", doc
        assert time.monotonic() - t0 < 2.0

        def errors() -> float:
            return metric_value(worker.metrics_text(), "shopstream_redis_errors_total", {"op": "recs_read"})

        # One failed read costs only its own list: the next request tries Redis again...
        assert errors() == 1
        for n in (2, 3):
            assert get_json(f"{base}/recommendations/{user}")[1]["model"] == "covis-biasedmf-v1"
            assert errors() == n
        # ... and three in a row open the breaker: then no request tries Redis for 5 s.
        for _ in range(5):
            assert get_json(f"{base}/recommendations/{user}")[1]["model"] == "covis-biasedmf-v1"
        assert errors() == 3
        # The clickstream keeps flowing while Redis is down.
        topic = settings.topic_prefix + "shop.clicks.v1"
        events = [click(user, item, n=n) for n, item in enumerate(inter.item_ids[:5])]
        asyncio.run(
            produce_all(settings.kafka_bootstrap, ((topic, user.encode(), enc.encode(e)) for e in events))
        )
        want = {e["event_id"] for e in events}
        msgs = recs_for(settings, want)
        assert len(msgs) >= len(want)
        assert metric_value(worker.metrics_text(), "shopstream_redis_errors_total", {"op": "recs_read"}) >= 1

        own.start(quiet=True)  # no persistence: the vectors are gone, so the model folds users in
        doc = wait_for(
            lambda: (d := get_json(f"{base}/recommendations/{user}")[1])["model"] == "recs:v1" and d,
            30,
            "the trained model to serve again after Redis came back",
        )
        assert len(doc["items"]) == settings.recs_k
        assert worker.alive()
    finally:
        own.stop(quiet=True)
