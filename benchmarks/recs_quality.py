"""Recommendation quality on the NCF split: HR@10 and NDCG@10 for every model in one table.

    python -m benchmarks.recs_quality [--data ../shared/datasets/movielens-100k] [--quick]

Split (He et al. 2017, seed 0): each user's latest interaction is the test
item, ranked against 99 items the user never touched. Rows, all measured in
this run on the same split:

* ItemPop: training popularity;
* ItemKNN: item-item cosine on the binary user-item matrix, k nearest neighbours;
* ALS and BPR from the ``implicit`` library (the ``[bench]`` extra);

  ItemKNN, ALS and BPR are tuned on a grid (``GRIDS``) against a validation
  split carved from the training data, as the NCF models are early-stopped on
  it: the test split is used for the reported numbers only;
* the River online model (co-visitation + BiasedMF) trained in timestamp order;
* GMF, MLP and NeuMF trained by ``shopstream train recs``'s code and scored
  through onnxruntime, each checked against PyTorch on every candidate;
* "served": the registered production model scored by the worker's own
  serving class (:class:`serving.recs.LoadedModel`, sha256-verified).

Targets (issue 3): the served model's HR@10 >= 0.64 and above every other row.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT, parse_args, target, write_results

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "movielens-100k"


def _user_item_matrix(split: Any) -> Any:
    from scipy import sparse

    data = np.ones(len(split.train_users), dtype=np.float32)
    return sparse.csr_matrix(
        (data, (split.train_users, split.train_items)), shape=(split.n_users, split.n_items)
    )


def score_itempop(split: Any) -> np.ndarray:
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(float)
    return counts[split.candidates()]


def score_itemknn(split: Any, k: int) -> np.ndarray:
    """Sum of cosine similarities to the user's items, keeping each item's ``k`` nearest neighbours."""
    ui = _user_item_matrix(split)
    norms = np.sqrt(np.asarray(ui.sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    sim = (ui.T @ ui).toarray() / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]
    sim[sim < kth] = 0.0
    cand = split.candidates()
    out = np.empty(cand.shape)
    for r, u in enumerate(split.test_users.tolist()):
        hist = ui.indices[ui.indptr[u] : ui.indptr[u + 1]]
        out[r] = sim[np.ix_(cand[r], hist)].sum(axis=1)
    return out


def score_implicit(split: Any, kind: str, params: dict[str, float]) -> np.ndarray:
    import implicit

    ui = _user_item_matrix(split)
    if kind == "als":
        model = implicit.cpu.als.AlternatingLeastSquares(random_state=0, **params)
    else:
        model = implicit.cpu.bpr.BayesianPersonalizedRanking(random_state=0, **params)
    model.fit(ui, show_progress=False)
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    cand = split.candidates()
    return np.einsum("rd,rcd->rc", uf[split.test_users], itf[cand])


#: Hyper-parameter grids of the baselines, searched on the validation split (never the test split).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "ItemKNN": [{"k": k} for k in (20, 50, 100, 200)],
    "ALS": [
        {"factors": f, "regularization": r, "alpha": a, "iterations": 15}
        for f in (32, 64, 128)
        for r in (0.01, 0.1, 1.0)
        for a in (1.0, 5.0, 10.0, 20.0)
    ],
    "BPR": [
        {"factors": f, "learning_rate": lr, "regularization": 0.01, "iterations": it}
        for f in (64, 128)
        for lr in (0.01, 0.05)
        for it in (150, 300)
    ],
}
QUICK_GRIDS: dict[str, list[dict[str, Any]]] = {
    "ItemKNN": [{"k": 50}],
    "ALS": [{"factors": 32, "regularization": 0.1, "alpha": 5.0, "iterations": 5}],
    "BPR": [{"factors": 64, "learning_rate": 0.05, "regularization": 0.01, "iterations": 30}],
}


def tuned(
    name: str, grid: list[dict[str, Any]], val: Any, split: Any
) -> tuple[np.ndarray, dict[str, Any], float]:
    """Pick the grid point with the best validation HR@10, then score the test split with it."""
    from offline_training.data import hit_rate_ndcg

    def scores(s: Any, params: dict[str, Any]) -> np.ndarray:
        if name == "ItemKNN":
            return score_itemknn(s, int(params["k"]))
        return score_implicit(s, name.lower(), params)

    best = max(grid, key=lambda p: hit_rate_ndcg(scores(val, p), k=10)[0]) if len(grid) > 1 else grid[0]
    val_hr = hit_rate_ndcg(scores(val, best), k=10)[0]
    return scores(split, best), best, val_hr


def score_river(split: Any, inter: Any) -> np.ndarray:
    from online_models.recommender import CoVisitationRecommender

    model = CoVisitationRecommender(seed=0)
    order = np.argsort(split.train_ts, kind="stable")
    recent: dict[int, list[str]] = {}
    for k in order.tolist():
        u, i = int(split.train_users[k]), int(split.train_items[k])
        hist = recent.setdefault(u, [])
        model.learn_one(str(u), str(i), hist, 2.0)
        hist.append(str(i))
        del hist[:-20]
    cand = split.candidates()
    out = np.empty(cand.shape)
    for r, u in enumerate(split.test_users.tolist()):
        out[r] = model.score_items(str(u), recent.get(u, []), [str(i) for i in cand[r].tolist()])
    return out


def main(argv: list[str] | None = None) -> int:
    def extra(p: Any) -> None:
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens 100K folder")

    args = parse_args("recs_quality", (__doc__ or "").splitlines()[0], extra, argv)
    if not (args.data / "u.data").exists() and not args.data.is_file():
        print(f"error: {args.data}: no MovieLens u.data (pass --data)", file=sys.stderr)
        return 2
    try:
        import implicit  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        print(f"error: {exc}; install the extras: .venv/bin/pip install -e '.[train,bench]'", file=sys.stderr)
        return 2
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from offline_training.data import hit_rate_ndcg, load_movielens, validation_split
    from offline_training.ncf import export_onnx, score_candidates, vectors
    from offline_training.recs import RecsTrainConfig, train_recs
    from serving.recs import LoadedModel
    from serving.registry import ModelRegistry

    inter = load_movielens(args.data)
    cfg = RecsTrainConfig()
    if args.quick:
        cfg.epochs, cfg.neumf_epochs = 2, 1
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}

    def row(name: str, scores: np.ndarray, t0: float) -> None:
        hr, ndcg = hit_rate_ndcg(scores, k=10)
        rows[name] = {"hr10": round(hr, 4), "ndcg10": round(ndcg, 4)}
        seconds[name] = round(time.perf_counter() - t0, 2)
        print(f"  {name:10s} HR@10 {hr:.4f}  NDCG@10 {ndcg:.4f}  ({seconds[name]:.1f}s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(Path(tmp) / "registry")
        t0 = time.perf_counter()
        res = train_recs(inter, registry, cfg=cfg, source=str(args.data), plot_dir=Path(tmp), log=print)
        train_s = time.perf_counter() - t0
        split = res.extra["split"]
        cand = split.candidates()
        print(f"split: {len(split.train_users):,} training pairs, {len(split.test_users):,} test users")
        t0 = time.perf_counter()
        row("ItemPop", score_itempop(split), t0)
        val = validation_split(split, seed=cfg.seed + 1)
        grids = QUICK_GRIDS if args.quick else GRIDS
        chosen: dict[str, Any] = {}
        with threadpool_limits(1, "blas"):  # implicit asks for it; 2 BLAS threads slow it down here
            for name in ("ItemKNN", "ALS", "BPR"):
                t0 = time.perf_counter()
                scores, params, val_hr = tuned(name, grids[name], val, split)
                chosen[name] = {
                    "params": params,
                    "val_hr10": round(val_hr, 4),
                    "grid_points": len(grids[name]),
                }
                row(name, scores, t0)
        t0 = time.perf_counter()
        row("River", score_river(split, inter), t0)
        diffs: dict[str, float] = {}
        flat_u = np.repeat(split.test_users, cand.shape[1])
        for arch in ("gmf", "mlp", "neumf"):
            t0 = time.perf_counter()
            model = res.extra["trained"][arch].model
            uv, iv = vectors(model)
            path = export_onnx(model, Path(tmp) / f"{arch}.onnx")
            sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
            (onnx_scores,) = sess.run(["score"], {"user": uv[flat_u], "item": iv[cand.reshape(-1)]})
            onnx_scores = np.asarray(onnx_scores).reshape(cand.shape)
            diffs[arch] = float(np.max(np.abs(onnx_scores - score_candidates(model, split.test_users, cand))))
            row(arch.upper() if arch != "neumf" else "NeuMF", onnx_scores, t0)
        # The served model, through the worker's own loading and scoring code.
        t0 = time.perf_counter()
        served = LoadedModel(res.version, registry)
        uvecs = registry.load_array(res.version, "user_vectors.npy")
        scores = np.stack(
            [
                served.score(uvecs[u], served.item_vecs[cand[r]])
                for r, u in enumerate(split.test_users.tolist())
            ]
        )
        row("served", scores, t0)
        served_tag = f"{res.version.tag} ({cfg.arch})"

    print()
    print(f"{'model':10s} {'HR@10':>7s} {'NDCG@10':>8s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['hr10']:7.4f} {r['ndcg10']:8.4f}")
    others = {n: r["hr10"] for n, r in rows.items() if n not in ("served", "NeuMF")}
    margin = rows["served"]["hr10"] - max(others.values())
    metrics: dict[str, Any] = {
        "served_model": served_tag,
        "served_hr10": rows["served"]["hr10"],
        "served_ndcg10": rows["served"]["ndcg10"],
        "served_margin_over_best_other": round(margin, 4),
        "onnx_vs_torch_max_abs_diff": max(diffs.values()),
        "rows": rows,
        "seconds": seconds,
        "train_seconds": round(train_s, 1),
        "test_users": len(split.test_users),
        "epochs_kept": {a: r["epoch"] for a, r in res.rows.items()},
        "baseline_tuning": chosen,
    }
    baselines = {f"{n}_hr10": r["hr10"] for n, r in rows.items() if n != "served"}
    targets = {
        "served_hr10": target(rows["served"]["hr10"], 0.64, ">="),
        "served_margin_over_best_other": target(margin, 0.0, ">"),
        "onnx_vs_torch_max_abs_diff": target(max(diffs.values()), 1e-5, "<="),
    }
    _plot(rows, args.out.with_suffix(".png") if args.out else None, args.quick)
    write_results(
        "recs_quality",
        args.quick,
        {"data": str(args.data), "config": vars(cfg), "split": "leave-one-out, 99 negatives, seed 0"},
        metrics,
        baselines,
        targets,
        args.out,
    )
    return 0


def _plot(rows: dict[str, dict[str, float]], path: Path | None, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import default_out

    path = path or default_out("recs_quality", quick).with_suffix(".png")
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [rows[n]["hr10"] for n in names], 0.4, label="HR@10")
    ax.bar(x + 0.2, [rows[n]["ndcg10"] for n in names], 0.4, label="NDCG@10")
    ax.axhline(0.64, color="k", ls="--", lw=0.8, label="HR@10 target 0.64")
    ax.set_xticks(x, names)
    ax.set_title("MovieLens 100K, NCF leave-one-out split (99 negatives, seed 0)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
