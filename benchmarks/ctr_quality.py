"""CTR quality: the online model in stream order beside offline models trained in the same run.

    nice python -m benchmarks.ctr_quality [--data ../shared/datasets/ctr] [--impressions N] [--quick]

Data sets, each read as a stream in its own order (time order for the
simulator and Avazu, file order for Criteo):

* ``sim``: auctions of :class:`shopstream.sim.SyntheticShop` (``ad_share``
  raised so auctions come quickly), joined to their impressions and clicks
  by :func:`offline_training.ctr.join_impressions`, exactly as the lake
  loader joins archived topics. ``segment`` is the user's most-visited
  product category so far (from the same stream's clickstream), the
  stand-in for the profile field the bidder reads from Redis;
  ``sim-noprofile`` is the same rows with an empty ``segment``.
* the files of ``--data``: ``criteo_train_tiny.csv`` (2k rows),
  ``criteo_sample.txt`` (200) and ``avazu_sample.txt`` (100). The last two
  are too small for their AUCs to mean much (a few dozen clicks); they are
  reported, not targeted.

Rows, all on the same data and the same held-out part (the last 20% of the
stream):

* ``online``: :class:`online_models.ctr.OnlineCTR` as shipped, test-then-train
  over the whole stream (prequential AUC and log loss); "held-out" is its
  prequential predictions on the last 20%, i.e. what it served there while
  still learning, as it would in production;
* ``online-frozen``: the same model frozen after the first 80%;
* ``online-sgd``: OnlineCTR with its previous optimiser (plain SGD, rate 0.05,
  intercept rate 0.01), the baseline of the switch to FTRL-Proximal;
* ``base-rate``: the running click rate, the floor for log loss;
* ``offline-lr``: scikit-learn logistic regression (liblinear) on the same
  hashed one-hot features, trained on the first 80% (``C`` picked from
  ``LR_GRID`` on the last eighth of it by log loss, then refitted on all of it);
* ``deepfm``: :func:`offline_training.ctr.train_ctr` on the first 80%
  (validation split inside it), registered, and scored by the serving class
  :class:`serving.ctr.DeepCTRModel` (sha256-verified ONNX) on the last 20%.
  Run on ``sim`` and on ``criteo_train_tiny.csv``.

Targets (bidding issue: "Online CTR: prequential AUC and logloss on
../shared/datasets/ctr/ and on simulator data, beside an offline logistic
regression trained on the same data in the same run"): on ``sim``, the
online model's prequential AUC >= 0.60 and its prequential log loss below the
running base rate's; on ``sim`` and ``criteo_train_tiny``, the online model's
held-out AUC within 0.03 of the offline logistic regression's; on ``sim``,
the DeepFM's held-out AUC at least the offline logistic regression's (the
simulator's clicks depend on user taste x campaign, an interaction a linear
model cannot express) and its ONNX graph equal to PyTorch within 1e-5. The
simulator's own click probabilities give the ceiling (``oracle``): a model of
these fields cannot reach it, as the user id is not a field.
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT, parse_args, target, write_results

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "ctr"
FILES = ("criteo_train_tiny.csv", "criteo_sample.txt", "avazu_sample.txt")
HOLDOUT = 0.2
LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def sim_data(n_impressions: int, seed: int, ad_share: float = 1.0) -> tuple[Any, np.ndarray]:
    """(joined impressions with a clickstream segment, the simulator's true P(click) per row)."""
    from offline_training.ctr import join_impressions
    from schemas import topics as T
    from shopstream.sim import SyntheticShop

    shop = SyntheticShop(seed=seed, ad_share=ad_share)

    def stream() -> Any:
        n = 0
        for topic, _key, value in shop.events():
            yield topic, value
            if topic == T.AD_EVENTS and b'"impression"' in value:
                n += 1
                if n >= n_impressions:
                    return

    data = join_impressions(stream(), segment_from_clicks=True, source=f"SyntheticShop(seed={seed})")
    users = {u: k for k, u in enumerate(shop.users)}
    pubs = [p[0] for p in shop.PUBLISHERS]
    oracle = np.empty(len(data))
    for k, (row, uid) in enumerate(zip(data.rows, data.user_ids or [], strict=True)):
        w, h = (int(x) for x in row["size"].split("x"))
        oracle[k] = shop.ad_click_probability(
            users[uid],
            int(row["campaign"].split("-")[1]),
            (w, h),
            int(row["devicetype"]),
            pubs.index(row["publisher"]),
        )
    return data, oracle


def running_base_rate(y: np.ndarray, prior: float = 0.02, weight: float = 10.0) -> np.ndarray:
    """P(click) = the click rate seen so far (test-then-train), started from ``prior``."""
    clicks_before = np.concatenate([[0.0], np.cumsum(y)[:-1]])
    return (clicks_before + prior * weight) / (np.arange(len(y)) + weight)


def online_run(data: Any, make: Callable[[], Any], n_train: int) -> dict[str, np.ndarray | float]:
    """Test-then-train over the stream; also a copy frozen after ``n_train`` rows."""
    model = make()
    preds = np.empty(len(data))
    frozen = None
    t0 = time.perf_counter()
    for k, (row, y) in enumerate(zip(data.rows, data.labels.tolist(), strict=True)):
        if k == n_train:
            frozen = copy.deepcopy(model)
        preds[k] = model.predict_one(row)
        model.learn_one(row, y > 0.5)
    us = (time.perf_counter() - t0) / max(len(data), 1) * 1e6
    frozen_preds = np.array([frozen.predict_one(r) for r in data.rows[n_train:]]) if frozen else np.zeros(0)
    return {"preq": preds, "frozen": frozen_preds, "us_per_event": us}


def sgd_online() -> Any:
    """OnlineCTR with its previous optimiser (SGD, 0.05): the baseline of the FTRL switch."""
    from river import linear_model, optim

    from online_models.ctr import OnlineCTR, logit

    m = OnlineCTR()
    m.model = linear_model.LogisticRegression(
        optimizer=optim.SGD(0.05), l2=1e-6, intercept_init=logit(m.prior_ctr), intercept_lr=0.01
    )
    return m


def one_hot(data: Any) -> Any:
    """The hashed one-hot matrix OnlineCTR sees (one column per hashed (field, value))."""
    from scipy import sparse

    from online_models.ctr import N_BUCKETS

    ids = data.ids()
    n, f = ids.shape
    # Only the columns that occur: the same model as over all N_BUCKETS columns (an unused
    # column's weight stays 0 under L2), but lbfgs then works on thousands of weights, not 1M.
    used, cols = np.unique(ids.reshape(-1), return_inverse=True)
    assert used.max(initial=0) < N_BUCKETS
    return sparse.csr_matrix((np.ones(n * f), cols, np.arange(0, n * f + 1, f)), shape=(n, len(used)))


def offline_lr(data: Any, n_train: int) -> tuple[np.ndarray, float]:
    """Held-out P(click) of a logistic regression fitted on the first ``n_train`` rows, and its ``C``."""
    from sklearn.linear_model import LogisticRegression

    from offline_training.ctr import logloss

    x = one_hot(data)
    y = data.labels

    def fit(c: float, rows: slice) -> Any:
        # liblinear: exact and fast on sparse one-hot rows (lbfgs took seconds per fit on
        # Criteo's 39 fields); a large intercept_scaling keeps the intercept almost unpenalised.
        return LogisticRegression(C=c, solver="liblinear", intercept_scaling=10.0, max_iter=1000).fit(
            x[rows], y[rows]
        )

    cut = n_train - max(1, n_train // 8)
    best_c, best_ll = LR_GRID[0], math.inf
    if 0 < y[:cut].sum() < cut:
        for c in LR_GRID:
            m = fit(c, slice(0, cut))
            ll = logloss(y[cut:n_train], m.predict_proba(x[cut:n_train])[:, 1])
            if ll < best_ll:
                best_c, best_ll = c, ll
    m = fit(best_c, slice(0, n_train))
    return m.predict_proba(x[n_train:])[:, 1], best_c


def deepfm(data: Any, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train, register and serve a DeepFM; its held-out predictions through :class:`DeepCTRModel`."""
    from offline_training.ctr import CTRTrainConfig, train_ctr
    from serving.ctr import DeepCTRModel
    from serving.registry import ModelRegistry

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(Path(tmp) / "registry")
        cfg = CTRTrainConfig(test_fraction=HOLDOUT, seed=seed)
        t0 = time.perf_counter()
        res = train_ctr(data, registry, cfg, progress=False, log=lambda s: log(f"    {s}"))
        seconds = time.perf_counter() - t0
        served = DeepCTRModel.load(registry)
        t1 = time.perf_counter()
        p = served.predict(res.test_ids)
        predict_us = (time.perf_counter() - t1) / max(len(p), 1) * 1e6
        size = (res.version.path / "model.onnx").stat().st_size
    return {
        "pred": p.astype(np.float64),
        "torch_vs_served": float(np.max(np.abs(p - res.test_pctr))) if len(p) else 0.0,
        "onnx_max_abs_diff": res.onnx_max_abs_diff,
        "epoch": res.metrics["epoch"],
        "train_seconds": seconds,
        "predict_us_per_row_batched": predict_us,
        "onnx_mb": size / 2**20,
    }


def evaluate(
    name: str,
    data: Any,
    with_deepfm: bool,
    seed: int,
    log: Callable[[str], None],
    oracle: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Every row of the table for one data set: {model: {metric: value}}."""
    from offline_training.ctr import auc, logloss
    from online_models.ctr import OnlineCTR

    y = data.labels.astype(np.float64)
    n = len(data)
    n_test = max(1, round(n * HOLDOUT))
    n_train = n - n_test
    yt = y[n_train:]
    log(f"  {name}: {n:,} impressions, {int(y.sum()):,} clicks (CTR {y.mean():.4f}), held-out {n_test:,}")

    def row(preq: np.ndarray | None, held: np.ndarray, **extra: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if preq is not None:
            out.update(preq_auc=auc(y, preq), preq_logloss=logloss(y, preq))
        out.update(holdout_auc=auc(yt, held), holdout_logloss=logloss(yt, held))
        out.update(extra)
        return out

    rows: dict[str, dict[str, float]] = {}
    on = online_run(data, lambda: OnlineCTR(seed=seed), n_train)
    preq = np.asarray(on["preq"])
    rows["online"] = row(preq, preq[n_train:], us_per_event=float(on["us_per_event"]))
    rows["online-frozen"] = row(None, np.asarray(on["frozen"]))
    sgd = online_run(data, sgd_online, n_train)
    sgd_preq = np.asarray(sgd["preq"])
    rows["online-sgd"] = row(sgd_preq, sgd_preq[n_train:], us_per_event=float(sgd["us_per_event"]))
    base = running_base_rate(y)
    rows["base-rate"] = {"preq_logloss": logloss(y, base), "holdout_logloss": logloss(yt, base[n_train:])}
    t0 = time.perf_counter()
    lr_pred, c = offline_lr(data, n_train)
    rows["offline-lr"] = row(None, lr_pred, C=c, seconds=time.perf_counter() - t0)
    if with_deepfm:
        d = deepfm(data, seed, log)
        pred = d.pop("pred")
        rows["deepfm"] = row(None, pred, **d)
    if oracle is not None:
        rows["oracle"] = row(oracle, oracle[n_train:])
    return rows


def print_table(results: dict[str, dict[str, dict[str, float]]]) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    head = f"{'data':<20} {'model':<14} {'preq AUC':>9} {'preq LL':>9} {'held AUC':>9} {'held LL':>9}"
    print(head)
    print("-" * len(head))
    for ds, rows in results.items():
        for model, m in rows.items():
            print(
                f"{ds:<20} {model:<14} {f(m.get('preq_auc')):>9} {f(m.get('preq_logloss')):>9} "
                f"{f(m.get('holdout_auc')):>9} {f(m.get('holdout_logloss')):>9}"
            )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    def extra(p: Any) -> None:
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the Criteo/Avazu samples")
        p.add_argument(
            "--impressions", type=int, default=None, help="simulated impressions (40000; quick 12000)"
        )
        p.add_argument("--seed", type=int, default=1, help="simulator and training seed")

    args = parse_args("ctr_quality", "Online CTR prequential quality beside offline models", extra, argv)
    import torch

    torch.set_num_threads(1)
    from offline_training.ctr import CTRData, load_ctr_file

    n_imp = args.impressions or (12_000 if args.quick else 40_000)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    log(f"simulating {n_imp:,} impressions (SyntheticShop seed {args.seed}, ad_share 1.0)")
    sim, oracle = sim_data(n_imp, args.seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    results["sim"] = evaluate("sim", sim, True, args.seed, log, oracle)
    noprof = CTRData([dict(r, segment="") for r in sim.rows], sim.labels, sim.fields, sim.source, True)
    results["sim-noprofile"] = evaluate("sim-noprofile", noprof, False, args.seed, log)
    files: dict[str, int] = {}
    for fname in FILES:
        path = args.data / fname
        if not path.exists():
            log(f"  {path}: missing, skipped (give --data the folder with {', '.join(FILES)})")
            continue
        data = load_ctr_file(path)
        data.time_ordered = True  # the file's order is the stream's order: hold out its last 20%
        files[fname] = len(data)
        results[fname.rsplit(".", 1)[0]] = evaluate(fname, data, len(data) >= 1000, args.seed, log)
    print()
    print_table(results)
    print()

    metrics = {
        f"{ds}.{model}.{k}": v
        for ds, rows in results.items()
        for model, m in rows.items()
        if model not in ("online-sgd", "base-rate")
        for k, v in m.items()
    }
    baselines = {
        f"{ds}.{model}.{k}": v
        for ds, rows in results.items()
        for model, m in rows.items()
        if model in ("online-sgd", "base-rate")
        for k, v in m.items()
    }
    s = results["sim"]
    targets = {
        "sim.online.preq_auc": target(s["online"]["preq_auc"], 0.60, ">="),
        "sim.online.preq_logloss": target(s["online"]["preq_logloss"], s["base-rate"]["preq_logloss"], "<"),
        "sim.online.holdout_auc_gap_to_lr": target(
            s["offline-lr"]["holdout_auc"] - s["online"]["holdout_auc"], 0.03, "<="
        ),
        "sim.deepfm.holdout_auc": target(s["deepfm"]["holdout_auc"], s["offline-lr"]["holdout_auc"], ">="),
        "sim.deepfm.onnx_max_abs_diff": target(s["deepfm"]["onnx_max_abs_diff"], 1e-5, "<="),
    }
    if "criteo_train_tiny" in results:
        c = results["criteo_train_tiny"]
        targets["criteo_train_tiny.online.holdout_auc_gap_to_lr"] = target(
            c["offline-lr"]["holdout_auc"] - c["online"]["holdout_auc"], 0.03, "<="
        )
    for ds, rows in results.items():
        metrics[f"{ds}.online_vs_sgd.preq_auc_gain"] = (
            rows["online"]["preq_auc"] - rows["online-sgd"]["preq_auc"]
        )
    params = {
        "sim_impressions": n_imp,
        "sim_seed": args.seed,
        "sim_ad_share": 1.0,
        "holdout": f"last {HOLDOUT:.0%} of each stream",
        "data": str(args.data),
        "files": files,
        "lr_grid": list(LR_GRID),
        "sim_stats": sim.stats,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_results("ctr_quality", args.quick, params, metrics, baselines, targets, args.out)


if __name__ == "__main__":
    main()
