"""NCF split, training, ONNX export, registry and serving helpers, without services."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnxruntime as ort
import pytest

from offline_training.data import Interactions, from_payloads, hit_rate_ndcg, leave_one_out, validation_split
from offline_training.ncf import NCF, NCFConfig, export_onnx, score_candidates, train, vectors
from offline_training.recs import RecsTrainConfig, train_recs
from serving.recs import LoadedModel, _diversify, parse_boosts
from serving.registry import ModelIntegrityError, ModelRegistry, RegistryError
from shopstream.sim import SyntheticShop


@pytest.fixture(scope="module")
def shop_inter() -> Interactions:
    shop = SyntheticShop(seed=11, n_users=120, n_items=150)
    return from_payloads(v for _, _, v in itertools.islice(shop.clicks(), 5000))


def test_leave_one_out_holds_out_the_latest_item_against_untouched_negatives(shop_inter):
    split = leave_one_out(shop_inter, n_negatives=20, seed=0)
    assert np.array_equal(
        split.test_negatives, leave_one_out(shop_inter, n_negatives=20, seed=0).test_negatives
    )
    touched: dict[int, set[int]] = {}
    latest: dict[int, float] = {}
    for u, i, t in zip(
        shop_inter.users.tolist(), shop_inter.items.tolist(), shop_inter.ts.tolist(), strict=True
    ):
        touched.setdefault(u, set()).add(i)
        latest[u] = max(latest.get(u, -1.0), t)
    train_pairs = set(zip(split.train_users.tolist(), split.train_items.tolist(), strict=True))
    for row, u in enumerate(split.test_users.tolist()):
        item = int(split.test_items[row])
        ts_of = [
            t
            for uu, ii, t in zip(shop_inter.users, shop_inter.items, shop_inter.ts, strict=True)
            if uu == u and ii == item
        ]
        assert max(ts_of) == latest[u]
        negs = split.test_negatives[row].tolist()
        assert len(set(negs)) == 20 and not set(negs) & touched[u]
        if (u, item) in train_pairs:  # the held-out item was also touched earlier: allowed, as in NCF
            assert (
                sum(
                    1
                    for uu, ii in zip(shop_inter.users, shop_inter.items, strict=True)
                    if (uu, ii) == (u, item)
                )
                > 1
            )
    other = leave_one_out(shop_inter, n_negatives=20, seed=1)
    assert not np.array_equal(split.test_negatives, other.test_negatives)


def test_validation_split_never_sees_test_items(shop_inter):
    split = leave_one_out(shop_inter, n_negatives=20, seed=0)
    val = validation_split(split, n_negatives=20)
    val_pairs = set(zip(val.train_users.tolist(), val.train_items.tolist(), strict=True)) | set(
        zip(val.test_users.tolist(), val.test_items.tolist(), strict=True)
    )
    train_pairs = set(zip(split.train_users.tolist(), split.train_items.tolist(), strict=True))
    assert val_pairs == train_pairs


def test_hit_rate_counts_ties_against_the_held_out_item():
    assert hit_rate_ndcg(np.zeros((4, 100)), k=10) == (0.0, 0.0)
    scores = np.tile(np.arange(100, 0, -1, dtype=float), (2, 1))  # held-out item ranks first
    hr, ndcg = hit_rate_ndcg(scores, k=10)
    assert hr == 1.0 and ndcg == 1.0
    scores[1, 0] = 0.5  # last
    assert hit_rate_ndcg(scores, k=10) == (0.5, 0.5)


@pytest.mark.parametrize("arch", ["gmf", "mlp", "neumf"])
def test_onnx_export_scores_like_pytorch(arch, tmp_path):
    cfg = NCFConfig(arch=arch, factors=8, mlp_layers=(16, 8), epochs=1)
    model = NCF(30, 40, cfg).eval()
    uv, iv = vectors(model)
    path = export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    users = np.arange(30).repeat(40)
    items = np.tile(np.arange(40), 30)
    (out,) = sess.run(["score"], {"user": uv[users], "item": iv[items]})
    ref = score_candidates(model, np.arange(30), np.tile(np.arange(40), (30, 1))).reshape(-1)
    assert np.max(np.abs(np.asarray(out).reshape(-1) - ref)) <= 1e-5


def test_neumf_pretraining_blends_gmf_and_mlp():
    cfg = {"factors": 4, "mlp_layers": (8, 4)}
    gmf = NCF(5, 6, NCFConfig(arch="gmf", **cfg))
    mlp = NCF(5, 6, NCFConfig(arch="mlp", **cfg))
    neumf = NCF(5, 6, NCFConfig(arch="neumf", **cfg))
    neumf.load_pretrained(gmf, mlp)
    import torch

    u, i = torch.arange(5).repeat(6), torch.arange(6).repeat_interleave(5)
    with torch.no_grad():
        expected = 0.5 * gmf(u, i) + 0.5 * mlp(u, i)
        assert torch.allclose(neumf(u, i), expected, atol=1e-6)


def test_training_beats_popularity_on_structured_data(shop_inter):
    split = leave_one_out(shop_inter, n_negatives=50, seed=0)
    res = train(
        validation_split(split, n_negatives=50),
        NCFConfig(arch="gmf", factors=16, epochs=20, lr=0.005, seed=0),
    )
    hr_model, _ = hit_rate_ndcg(score_candidates(res.model, split.test_users, split.candidates()), k=10)
    counts = np.bincount(split.train_items, minlength=split.n_items)
    hr_pop, _ = hit_rate_ndcg(counts[split.candidates()].astype(float), k=10)
    assert res.best["epoch"] >= 1 and len(res.history) == 20
    # Users have latent tastes over categories: the model finds them (0.68 vs 0.50 when written).
    assert hr_model > hr_pop + 0.1, (hr_model, hr_pop)


def test_registry_refuses_tampered_files_and_unknown_versions(tmp_path):
    reg = ModelRegistry(tmp_path)
    mv = reg.register("m", {"model.onnx": b"abc", "v.npy": b"x"}, metrics={"hr10": 0.5})
    assert reg.production("m") == mv and reg.next_version("m") == 2
    (mv.path / "v.npy").write_bytes(b"y")
    with pytest.raises(ModelIntegrityError, match=r"v\.npy: sha256 mismatch"):
        reg.verify(mv)
    with pytest.raises(ModelIntegrityError):
        reg.promote("m", 1)
    (mv.path / "v.npy").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        reg.read_verified(mv, "v.npy")
    with pytest.raises(RegistryError, match="not registered"):
        reg.get("m", 7)
    with pytest.raises(RegistryError):
        reg.register("../evil", {"a": b""})


def test_served_model_scores_like_the_trained_one(shop_inter, tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    cfg = RecsTrainConfig(factors=8, mlp_layers=(16, 8), epochs=2, neumf_epochs=1, threads=1)
    res = train_recs(shop_inter, reg, cfg=cfg, progress=False, log=lambda _: None)
    served = LoadedModel(res.version, reg)
    split = res.extra["split"]
    users = reg.load_array(res.version, "user_vectors.npy")
    model = res.extra["trained"]["neumf"].model
    cand = split.candidates()[:5]
    ref = score_candidates(model, split.test_users[:5], cand)
    got = np.stack(
        [served.score(users[u], served.item_vecs[cand[r]]) for r, u in enumerate(split.test_users[:5])]
    )
    assert np.max(np.abs(got - ref)) <= 1e-5
    # Fold-in and neighbours work from item ids alone.
    recent = [shop_inter.item_ids[0], shop_inter.item_ids[1]]
    q = served.query("someone-new", recent)
    assert q is not None and q.shape == (served.dim,)
    assert served.query("someone-new", []) is None
    nb = served.neighbours(q, 5, skip=set(recent))
    assert len(nb) == 5 and not set(nb) & set(recent)
    assert set(served.most_similar(nb, recent)) <= set(recent)
    assert served.most_similar(["not-an-item"], recent) == [None]
    assert json.loads((res.version.path / "items.json").read_text()) == shop_inter.item_ids


def test_boosts_and_diversity():
    assert parse_boosts("") == {}
    with pytest.raises(ValueError, match="bad boost"):
        parse_boosts("shoes=2")
    ranked = [(1.0 - n / 10, f"i{n}", "r", "A" if n < 6 else "B") for n in range(8)]
    out = _diversify(ranked, 5, 3)
    assert [r[1] for r in out] == ["i0", "i1", "i2", "i6", "i7"]
    # Relaxed when the list cannot be filled otherwise.
    assert len(_diversify(ranked[:6], 5, 3)) == 5


def test_micro_batcher_delivers_every_request_even_when_scoring_fails():
    import asyncio

    from online_models.recommender import CoVisitationRecommender
    from serving.recs import MicroBatcher, Recommender, RecRequest

    rec = Recommender(CoVisitationRecommender(seed=0), "redis://127.0.0.1:1/0")
    rec.model = object()  # type: ignore[assignment]  # any use of it raises

    delivered: list[tuple[str, str]] = []

    async def deliver(r, token):
        delivered.append((r.user_id, token))

    async def run():
        b = MicroBatcher(rec, deliver, max_batch=3)
        for n in range(5):
            b.add(RecRequest(f"u{n}", ["a"], event_id=f"e{n}"), f"t{n}")
        assert b.full
        assert await b.flush() == 5
        await rec.close()

    asyncio.run(run())
    assert delivered == [(f"u{n}", f"t{n}") for n in range(5)]


def test_micro_batcher_timer_flushes_what_is_queued_and_sleeps_while_idle(monkeypatch):
    import asyncio
    import contextlib
    import time

    from online_models.recommender import CoVisitationRecommender
    from serving.recs import MicroBatcher, Recommender, RecRequest

    rec = Recommender(CoVisitationRecommender(seed=0), "redis://127.0.0.1:1/0")  # no model: online lists
    delivered: list[str] = []
    wait_s = 0.0123  # the batcher's timer, told apart from this test's own sleeps
    ticks: list[float] = []
    sleep = asyncio.sleep

    async def counting_sleep(delay, *args, **kwargs):
        if delay == wait_s:
            ticks.append(delay)
        return await sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)

    async def deliver(r, token):
        delivered.append(token)

    async def until(cond, what: str) -> None:
        deadline = time.monotonic() + 5
        while not cond():
            assert time.monotonic() < deadline, what
            await sleep(0.005)

    async def run():
        b = MicroBatcher(rec, deliver, max_batch=16, max_wait_s=wait_s)
        task = asyncio.create_task(b.run(lambda: False))
        await sleep(0.1)  # idle: no timer ticks (a 12 ms timer would have ticked ~8 times)
        assert ticks == [] and b.batches == 0
        b.add(RecRequest("u0", ["a"], event_id="e0"), "t0")  # a lone request is not stranded
        await until(lambda: delivered == ["t0"], "lone request delivered")
        for n in (1, 2, 3):  # requests queued together go out as one batch
            b.add(RecRequest(f"u{n}", ["a"], event_id=f"e{n}"), f"t{n}")
        await until(lambda: len(delivered) == 4, "queued requests delivered")
        assert delivered == ["t0", "t1", "t2", "t3"]
        assert b.batches == 2
        await sleep(0.1)
        busy_ticks = len(ticks)
        await sleep(0.1)  # idle again
        assert len(ticks) == busy_ticks
        task.cancel()  # how the worker stops it
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        await rec.close()

    asyncio.run(run())


def test_a_reply_that_does_not_match_the_candidates_gives_no_features_rather_than_misread_ones():
    """The fetch script splits ids on newlines: an id holding one shifts the reply; that list ranks online."""
    from types import SimpleNamespace

    import numpy as np

    from online_models.recommender import CoVisitationRecommender
    from serving.recs import Recommender, RecRequest, _Plan

    rec = Recommender(CoVisitationRecommender(seed=0), "redis://127.0.0.1:1/0")
    model = SimpleNamespace(dim=2, fold_in=lambda recent: None)
    vec = np.array([1.0, 2.0], dtype=np.float32).tobytes()
    cands = {"a": (0.5, "together_with:x"), "b\nc": (0.0, "popular")}
    plan = _Plan(RecRequest("u1", ["x"]), cands, [], [])
    shifted = [vec, b"", vec, b"Books", b"0", vec, b"Toys", b"0", vec, b"Toys", b"0"]  # 3 triples for 2 ids
    p = rec._parse(plan, shifted, model)  # type: ignore[arg-type]
    assert p.known == [] and [k[0] for k in p.kept] == ["a", "b\nc"]
    exact = [vec, b"", vec, b"Books", b"0", vec, b"Toys", b"1"]  # b is out of stock
    p = rec._parse(plan, exact, model)  # type: ignore[arg-type]
    assert p.known == [0] and [k[0] for k in p.kept] == ["a"] and p.kept[0][3] == "Books"


class _GatedRecommender:
    """recommend_many waits for its batch's gate (a Redis round trip the test controls)."""

    def __init__(self) -> None:
        import asyncio

        self.gates: list[asyncio.Event] = []
        self.started: list[list[str]] = []
        self.failing_users: set[str] = set()  # a batch with one of them fails once its gate opens

    async def recommend_many(self, reqs):  # type: ignore[no-untyped-def]
        import asyncio

        from serving.clickstream import recommendation

        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.append([r.user_id for r in reqs])
        await gate.wait()
        if any(r.user_id in self.failing_users for r in reqs):
            raise RuntimeError("model call failed")
        return [recommendation(r.user_id, [], "gated", r.event_id) for r in reqs]

    def _online_only(self, req):  # type: ignore[no-untyped-def]
        raise RuntimeError("no online fallback either")

    metrics = None

    async def recommend_many_or_online(self, reqs):  # type: ignore[no-untyped-def]
        from serving.recs import Recommender

        return await Recommender.recommend_many_or_online(self, reqs)  # type: ignore[arg-type]


def test_micro_batcher_overlaps_round_trips_and_delivers_in_order():
    import asyncio

    from serving.recs import MicroBatcher, RecRequest

    rec = _GatedRecommender()
    delivered: list[str] = []

    async def deliver(r, token):
        delivered.append(token)

    async def run():
        b = MicroBatcher(rec, deliver, max_batch=2, max_in_flight=2)  # type: ignore[arg-type]
        for n in range(2):
            b.add(RecRequest(f"u{n}", ["a"]), f"t{n}")
        assert await b.submit() == 2  # returns while the batch waits on its round trip
        for n in (2, 3):
            b.add(RecRequest(f"u{n}", ["a"]), f"t{n}")
        assert await b.submit() == 2  # a second batch starts meanwhile
        await asyncio.sleep(0)
        assert rec.started == [["u0", "u1"], ["u2", "u3"]] and delivered == []
        b.add(RecRequest("u4", ["a"]), "t4")
        third = asyncio.create_task(b.submit())  # no slot: both are in flight
        await asyncio.sleep(0.01)
        assert not third.done() and b.pending
        rec.gates[1].set()  # the later batch's answer comes first ...
        await asyncio.sleep(0.01)
        assert delivered == [] and not third.done()  # ... but waits for the one before it
        rec.gates[0].set()
        assert await third == 1
        rec.gates[2].set()
        assert await b.flush() == 0
        assert delivered == ["t0", "t1", "t2", "t3", "t4"] and b.batches == 3

    asyncio.run(run())


def test_micro_batcher_stops_delivering_after_a_failed_delivery_and_raises_it():
    import asyncio

    import pytest

    from serving.recs import MicroBatcher, RecRequest

    rec = _GatedRecommender()
    delivered: list[str] = []

    async def deliver(r, token):
        if token == "t1":
            raise RuntimeError("producer closed")
        delivered.append(token)

    async def run():
        b = MicroBatcher(rec, deliver, max_batch=2, max_in_flight=2)  # type: ignore[arg-type]
        b.add(RecRequest("u0", ["a"]), "t0")
        b.add(RecRequest("u1", ["a"]), "t1")
        await b.submit()
        b.add(RecRequest("u2", ["a"]), "t2")
        await b.submit()
        await asyncio.sleep(0)
        rec.gates[1].set()
        rec.gates[0].set()
        with pytest.raises(RuntimeError, match="producer closed"):
            await b.flush()
        assert delivered == ["t0"]  # t1 failed; the batch after it delivered nothing (t2 stays unacked)
        b.add(RecRequest("u3", ["a"]), "t3")  # the failure was raised once; the batcher goes on
        await b.submit()
        await asyncio.sleep(0)
        rec.gates[2].set()
        await b.flush()
        assert delivered == ["t0", "t3"]

    asyncio.run(run())


def test_micro_batcher_keeps_order_when_a_batch_cannot_be_computed_and_its_timer_raises_failures():
    import asyncio

    import pytest

    from serving.recs import MicroBatcher, RecRequest

    rec = _GatedRecommender()
    rec.failing_users = {"bad"}
    delivered: list[str] = []

    async def deliver(r, token):
        delivered.append(token)

    async def run():
        b = MicroBatcher(rec, deliver, max_batch=1, max_in_flight=2, max_wait_s=0.001)  # type: ignore[arg-type]
        b.add(RecRequest("u", ["a"]), "older")
        await b.submit()
        b.add(RecRequest("bad", ["a"]), "bad")
        await b.submit()
        await asyncio.sleep(0)
        rec.gates[1].set()  # the second batch fails, and so does its fallback ...
        await asyncio.sleep(0.01)
        assert b._tail is not None and not b._tail.done()  # ... but it ends after the first one
        rec.gates[0].set()
        with pytest.raises(RuntimeError, match="no online fallback"):
            await b.flush()
        assert delivered == ["older"]
        # A failure met by the timer is raised there (the service running it crashes), not swallowed.
        timer = asyncio.create_task(b.run(lambda: False))
        b.add(RecRequest("bad", ["a"]), "bad again")
        while len(rec.gates) < 3:
            await asyncio.sleep(0.001)
        rec.gates[2].set()
        await asyncio.sleep(0.01)
        b.add(RecRequest("u", ["a"]), "newer")
        with pytest.raises(RuntimeError, match="no online fallback"):
            await asyncio.wait_for(timer, 1.0)
        assert delivered == ["older"]

    asyncio.run(run())
