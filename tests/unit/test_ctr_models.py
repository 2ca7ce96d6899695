"""Deep CTR model: data loaders, DeepFM training, ONNX export, registry round trip, hot swap."""

from __future__ import annotations

import itertools
import math

import msgspec
import numpy as np
import onnxruntime as ort
import pytest

from offline_training.ctr import (
    CRITEO_FIELDS,
    CTRData,
    CTRTrainConfig,
    auc,
    criteo_int,
    export_onnx,
    join_impressions,
    load_avazu,
    load_criteo,
    load_ctr_file,
    load_lake_impressions,
    predict,
    split_indices,
    train_ctr,
)
from online_models.ctr import N_BUCKETS, REQUEST_FIELDS, hash_ids, request_fields
from schemas import topics as T
from schemas.lake import LakeWriter
from schemas.openrtb import BID_REQUEST_CODEC
from serving.ctr import DeepCTRModel, RegistryWatcher, deep_ctr_watcher
from serving.registry import ModelIntegrityError, ModelRegistry

SMALL = CTRTrainConfig(model_buckets=2**12, embed_dim=4, mlp_layers=(16,), epochs=12, patience=3, lr=0.01)
TS0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def synthetic(n: int, seed: int = 0) -> CTRData:
    """Clicks depend on an interaction (segment matches the campaign's category) and on the size."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(n):
        camp, seg, size, noise = (
            rng.integers(0, 8),
            rng.integers(0, 8),
            rng.integers(0, 3),
            rng.integers(0, 50),
        )
        z = -2.5 + 3.0 * (camp == seg) + 0.8 * (size == 0)
        rows.append({"campaign": f"c{camp}", "segment": f"s{seg}", "size": f"z{size}", "noise": f"n{noise}"})
        labels.append(float(rng.random() < 1 / (1 + math.exp(-z))))
    return CTRData(
        rows, np.array(labels, dtype=np.float32), ("campaign", "segment", "size", "noise"), "synthetic"
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    result = train_ctr(synthetic(5000), registry, SMALL, progress=False, log=lambda _: None)
    return registry, result


def test_deepfm_learns_an_interaction_signal(trained):
    _, result = trained
    assert result.metrics["auc"] > 0.7
    assert result.metrics["logloss"] < result.metrics["base_logloss"]
    # the model ranks a matching (campaign, segment) pair above a mismatched one
    data = CTRData(
        [
            {"campaign": "c3", "segment": "s3", "size": "z1", "noise": "n1"},
            {"campaign": "c3", "segment": "s5", "size": "z1", "noise": "n1"},
        ],
        np.zeros(2),
        ("campaign", "segment", "size", "noise"),
    )
    p = predict(result.model, data.ids())
    assert p[0] > 2 * p[1]


def test_onnx_export_equals_torch(trained, tmp_path):
    _, result = trained
    assert result.onnx_max_abs_diff <= 1e-5
    path = export_onnx(result.model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ids"] and [o.name for o in sess.get_outputs()] == ["pctr"]
    ids = np.random.default_rng(1).integers(0, N_BUCKETS, size=(257, 4), dtype=np.int64)  # any hashed id
    (got,) = sess.run(["pctr"], {"ids": ids})
    assert got.shape == (257,) and got.dtype == np.float32
    np.testing.assert_allclose(got, predict(result.model, ids), atol=1e-5, rtol=0)
    (one,) = sess.run(["pctr"], {"ids": ids[:1]})  # dynamic batch axis
    assert one.shape == (1,)


def test_registry_round_trip_serves_what_torch_predicts(trained):
    registry, result = trained
    mv = registry.production("ctr")
    assert mv is not None and mv.version == result.version.version
    assert {"model.onnx", "curves.png"} <= set(mv.files)
    assert (mv.path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = mv.metadata
    assert meta["fields"] == ["campaign", "segment", "size", "noise"]
    assert meta["kind"] == "deepfm" and meta["n_buckets"] == N_BUCKETS and meta["model_buckets"] == 2**12
    assert {"auc", "logloss"} <= set(mv.metrics)
    served = DeepCTRModel.load(registry)
    assert served.version == mv.version and served.fields == tuple(meta["fields"])
    out = served.predict(result.test_ids)
    assert out.shape == (len(result.test_ids),)
    np.testing.assert_allclose(out, predict(result.model, result.test_ids), atol=1e-5, rtol=0)
    assert served.predict(np.zeros((0, 4), dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="expects ids of shape"):
        served.predict(result.test_ids[:, :3])


def test_tampered_model_is_refused_and_the_old_one_keeps_serving(trained):
    registry, _ = trained
    watcher = deep_ctr_watcher(registry)
    assert watcher.refresh() is True
    old = watcher.model
    assert old is not None
    v1 = registry.production("ctr")
    assert v1 is not None
    files = {f: (v1.path / f).read_bytes() for f in v1.files}
    v2 = registry.register("ctr", files, metadata=v1.metadata, metrics=v1.metrics)
    blob = bytearray((v2.path / "model.onnx").read_bytes())
    blob[-5] ^= 0xFF
    (v2.path / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        DeepCTRModel.load(registry)
    assert watcher.refresh() is False
    assert watcher.model is old and watcher.loaded_version == v1.version
    assert "sha256 mismatch" in watcher.refused[v2.version]
    assert watcher.refresh() is False  # refused versions are not retried
    v3 = registry.register("ctr", files, metadata=v1.metadata, metrics=v1.metrics)
    assert watcher.refresh() is True
    assert watcher.model is not old and watcher.model.version == v3.version
    assert watcher.status()["model"] == f"ctr:v{v3.version}"


def test_watcher_check_runs_from_an_event_loop(trained):
    import asyncio

    registry, _ = trained
    watcher: RegistryWatcher[DeepCTRModel] = RegistryWatcher(registry, "ctr", DeepCTRModel)
    assert asyncio.run(watcher.check()) is True
    assert watcher.model is not None and watcher.model.version == registry.production_version("ctr")


# -- data ------------------------------------------------------------------------------------

_enc = msgspec.json.Encoder()


def _request(rid: str, w: int, domain: str) -> bytes:
    return _enc.encode(
        {
            "id": rid,
            "imp": [{"id": "1", "banner": {"w": w, "h": 250}}],
            "site": {"domain": domain, "cat": ["IAB22"]},
            "device": {"devicetype": 2, "os": "iOS", "geo": {"country": "DEU"}},
            "user": {"id": "u1"},
        }
    )


def _ad(kind: str, rid: str, ts: float, user: str = "u1") -> bytes:
    return _enc.encode(
        {
            "type": kind,
            "event_id": f"{kind}-{rid}",
            "ts": ts,
            "request_id": rid,
            "imp_id": "1",
            "campaign_id": "camp-1",
            "creative_id": "camp-1-cr1",
            "user_id": user,
        }
    )


def test_lake_join_labels_a_click_1_and_a_shown_ad_without_click_0(tmp_path):
    prefix = "t1-"
    w = LakeWriter(tmp_path, worker="test")
    ms = lambda ts: int(ts * 1000)  # noqa: E731
    msgs = [
        (T.BID_REQUESTS, TS0 + 10, _request("r1", 300, "a.example")),
        (T.BID_REQUESTS, TS0 + 11, _request("r2", 728, "b.example")),
        (T.AD_EVENTS, TS0 + 3 * 3600 + 12, _ad("impression", "r1", TS0 + 3 * 3600 + 12)),
        (T.AD_EVENTS, TS0 + 3 * 3600 + 13, _ad("impression", "r2", TS0 + 3 * 3600 + 13)),
        (T.AD_EVENTS, TS0 + 3 * 3600 + 14, _ad("ad_click", "r1", TS0 + 3 * 3600 + 14)),
        (T.AD_EVENTS, TS0 + 3 * 3600 + 15, _ad("impression", "r-unknown", TS0 + 3 * 3600 + 15)),
        (T.AD_EVENTS, TS0 + 3 * 3600 + 16, b'{"type": "impression"}'),
    ]
    for offset, (topic, ts, value) in enumerate(msgs):
        w.add(prefix + topic, 0, offset, ms(ts), b"k", value)
    w.add(prefix + T.AD_EVENTS, 0, 2, ms(TS0 + 3 * 3600 + 12), b"k", msgs[2][2])  # a replayed duplicate
    w.flush()

    data = load_lake_impressions(tmp_path, prefix=prefix)
    assert data.labels.tolist() == [1.0, 0.0]
    assert data.fields == REQUEST_FIELDS and data.time_ordered
    req1 = BID_REQUEST_CODEC.decode(msgs[0][2])
    assert data.rows[0] == request_fields(req1, req1.imp[0], "camp-1", "camp-1-cr1", None, hour=3)
    assert data.rows[1]["size"] == "728x250" and data.rows[1]["publisher"] == "b.example"
    assert data.stats["unmatched_impressions"] == 1 and data.stats["bad_ad_events"] == 1
    assert data.ids().tolist()[0] == hash_ids(data.rows[0]).tolist()
    with pytest.raises(ValueError, match="no impressions"):
        load_lake_impressions(tmp_path, prefix="other-")


def test_join_segment_comes_from_clicks_before_the_impression():
    def view(cat: str) -> tuple[str, bytes]:
        ev = {"type": "view", "event_id": "e", "ts": TS0, "user_id": "u1", "item_id": "i", "category": cat}
        return T.CLICKS, _enc.encode(ev)

    events = [
        view("c01"),
        (T.BID_REQUESTS, _request("r1", 300, "a.example")),
        (T.AD_EVENTS, _ad("impression", "r1", TS0 + 1)),
        view("c02"),
        view("c02"),
        (T.BID_REQUESTS, _request("r2", 300, "a.example")),
        (T.AD_EVENTS, _ad("impression", "r2", TS0 + 2)),
        (T.AD_EVENTS, _ad("impression", "r3", TS0 + 3, user="u2")),
        (T.BID_REQUESTS, _request("r3", 300, "a.example")),  # the request may come after
    ]
    data = join_impressions(events, segment_from_clicks=True)
    assert [r["segment"] for r in data.rows] == ["c01", "c02", ""]
    assert [r["segment"] for r in join_impressions(events).rows] == ["", "", ""]


def test_criteo_and_avazu_loaders(tmp_path):
    ints = ["1", "", "100", "3"] + [""] * 9
    cats = ["68fd1e64", ""] + ["x"] * 24
    (tmp_path / "a.csv").write_text(
        "label," + ",".join(CRITEO_FIELDS) + "\n" + ",".join(["1", *ints, *cats]) + "\n"
    )
    (tmp_path / "b.csv").write_text(
        "Id,Label," + ",".join(CRITEO_FIELDS) + "\n" + ",".join(["7", "0", *ints, *cats]) + "\n"
    )
    (tmp_path / "c.txt").write_text("\t".join(["1", *ints, *cats]) + "\n")
    for name, label in (("a.csv", 1.0), ("b.csv", 0.0), ("c.txt", 1.0)):
        data = load_criteo(tmp_path / name)
        assert data.labels.tolist() == [label] and data.fields == CRITEO_FIELDS
        row = data.rows[0]
        assert (row["I1"], row["I2"], row["I3"], row["I4"]) == ("SP1", "", "21", "1")
        assert (row["C1"], row["C2"]) == ("68fd1e64", "")
    assert criteo_int("-1") == "SP-1" and criteo_int("260.0") == str(int(math.log(260) ** 2))
    (tmp_path / "av.csv").write_text(
        "id,click,hour,C1,site_id\n1,0,14102100,1005,1fbe01fe\n2,1,14102213,1002,\n"
    )
    av = load_ctr_file(tmp_path / "av.csv")
    assert av.fields == ("hour", "weekday", "C1", "site_id") and av.time_ordered
    assert av.labels.tolist() == [0.0, 1.0]
    assert av.rows[1] == {"hour": "13", "weekday": "2", "C1": "1002", "site_id": ""}  # 2014-10-22: Wednesday
    assert load_avazu(tmp_path / "av.csv").rows == av.rows
    with pytest.raises(ValueError, match="not a Criteo file"):
        load_criteo(tmp_path / "av.csv")


def test_auc_and_split():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.3 * y, 1)  # with ties
    pos, neg = s[y], s[~y]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)])
    assert auc(y, s) == pytest.approx(brute, abs=1e-12)
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    tr, va, te = split_indices(100, time_ordered=False, seed=3)
    assert sorted([*tr, *va, *te]) == list(range(100)) and len(te) == 20 and len(va) == 8
    assert np.array_equal(te, split_indices(100, time_ordered=False, seed=3)[2])
    assert not np.array_equal(te, np.arange(80, 100))
