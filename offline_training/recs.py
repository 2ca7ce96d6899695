"""``shopstream train recs``: train NCF, export to ONNX and Redis, register the version.

Steps: load interactions (event lake or MovieLens) → NCF leave-one-out split
(seed 0) → a validation split from the training part for early stopping →
GMF and MLP, then NeuMF initialised from both → HR@10/NDCG@10 on the test
split → the chosen model's scoring network to ONNX (checked against PyTorch
on every test candidate) → vectors and item metadata to Redis → a registry
version with files, metadata, metrics and sha256 → a PNG of the training
curves.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_training.data import Interactions, Split, hit_rate_ndcg, leave_one_out, validation_split
from serving.registry import ModelRegistry, ModelVersion


@dataclass
class RecsTrainConfig:
    """What ``shopstream train recs`` does."""

    arch: str = "neumf"
    factors: int = 64
    mlp_layers: tuple[int, ...] = (128, 64, 32)
    # Picked among five settings tried on MovieLens 100K (negatives 4 or 8,
    # NeuMF fine-tuning rate 2e-5..2e-4); they differ by less than the noise
    # of 943 test users (about ±0.015 HR@10). Early stopping on the
    # validation split picks the epoch.
    epochs: int = 12
    neumf_epochs: int = 4
    neumf_lr: float = 0.0001
    weight_decay: float = 1e-6
    n_neg: int = 8
    batch_size: int = 256
    seed: int = 0
    threads: int = 2


@dataclass
class RecsTrainResult:
    """Everything one training run produced."""

    version: ModelVersion
    rows: dict[str, dict[str, float]]  # arch -> hr10, ndcg10, seconds, epoch
    onnx_max_abs_diff: float
    plot: Path | None
    redis_keys: int
    extra: dict[str, Any] = field(default_factory=dict)


def _item_fold_vectors(split: Split, user_vecs: np.ndarray) -> np.ndarray:
    """Per item, the mean vector of the training users who touched it (zeros if none)."""
    sums = np.zeros((split.n_items, user_vecs.shape[1]), dtype=np.float64)
    np.add.at(sums, split.train_items, user_vecs[split.train_users])
    counts = np.bincount(split.train_items, minlength=split.n_items)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def _retrieval_matrix(model: Any, item_vecs: np.ndarray) -> np.ndarray:
    """Item matrix whose dot product with a user vector approximates the model's score.

    For GMF and NeuMF: the GMF part weighted by the output layer (exact for
    GMF up to the bias); for the MLP: the raw item embedding.
    """
    out = np.zeros_like(item_vecs)
    g = model.gmf_dim
    if g:
        h = model.head.weight.detach().numpy()[0, :g]
        out[:, :g] = item_vecs[:, :g] * h
    else:
        out[:] = item_vecs
    return out


def plot_curves(histories: dict[str, list[dict[str, float]]], path: Path, title: str) -> Path:
    """Loss and HR@10 (validation and test) per epoch, one line per architecture."""
    from offline_training.plots import two_panel_png

    def draw(ax1: Any, ax2: Any) -> None:
        for arch, hist in histories.items():
            ep = [r["epoch"] for r in hist]
            ax1.plot(ep, [r["loss"] for r in hist], marker="o", ms=3, label=arch)
            (line,) = ax2.plot(
                ep, [r["val_hr10"] for r in hist], marker="o", ms=3, label=f"{arch} validation"
            )
            if "hr10" in hist[0]:
                ax2.plot(ep, [r["hr10"] for r in hist], ls="--", color=line.get_color(), label=f"{arch} test")
        ax1.set(xlabel="epoch", ylabel="log loss", title="training loss")
        ax2.set(xlabel="epoch", ylabel="HR@10", title="hit rate @10 (99 sampled negatives)")

    return two_panel_png(path, title, draw)


def export_to_redis(
    redis_url: str,
    prefix: str,
    tag: str,
    inter: Interactions,
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
) -> int:
    """Write user and item vectors (float32 bytes) and item categories; returns keys written."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    n = 0
    try:
        pipe = client.pipeline(transaction=False)
        for uid, vec in zip(inter.user_ids, user_vecs, strict=True):
            pipe.set(f"{prefix}vec:{tag}:u:{uid}", vec.astype(np.float32).tobytes())
            n += 1
            if n % 2000 == 0:
                pipe.execute()
        for iid, vec in zip(inter.item_ids, item_vecs, strict=True):
            pipe.set(f"{prefix}vec:{tag}:i:{iid}", vec.astype(np.float32).tobytes())
            cat = inter.item_category.get(iid)
            if cat is not None:
                pipe.hset(f"{prefix}item:{iid}", "category", cat)
            n += 1
            if n % 2000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()
    return n


def train_recs(
    inter: Interactions,
    registry: ModelRegistry,
    name: str = "recs",
    cfg: RecsTrainConfig | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "ss:",
    source: str = "",
    plot_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RecsTrainResult:
    """Train, evaluate, export and register a recommendation model (see the module docstring)."""
    import torch
    from tqdm import tqdm

    from offline_training.ncf import NCFConfig, config_dict, export_onnx, score_candidates, train, vectors

    cfg = cfg or RecsTrainConfig()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    split = leave_one_out(inter, n_negatives=99, seed=cfg.seed)
    val = validation_split(split, seed=cfg.seed + 1)
    log(
        f"{len(inter):,} interactions, {inter.n_users:,} users, {inter.n_items:,} items; "
        f"{len(split.test_users):,} test users"
    )
    base = {
        "factors": cfg.factors,
        "mlp_layers": cfg.mlp_layers,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay,
        "n_neg": cfg.n_neg,
        "seed": cfg.seed,
    }
    plan: list[tuple[str, NCFConfig]] = []
    if cfg.arch in ("gmf", "neumf"):
        plan.append(("gmf", NCFConfig(arch="gmf", epochs=cfg.epochs, **base)))  # type: ignore[arg-type]
    if cfg.arch in ("mlp", "neumf"):
        plan.append(("mlp", NCFConfig(arch="mlp", epochs=cfg.epochs, **base)))  # type: ignore[arg-type]
    if cfg.arch == "neumf":
        plan.append(
            ("neumf", NCFConfig(arch="neumf", epochs=cfg.neumf_epochs, lr=cfg.neumf_lr, **base))  # type: ignore[arg-type]
        )
    trained: dict[str, Any] = {}
    rows: dict[str, dict[str, float]] = {}
    histories: dict[str, list[dict[str, float]]] = {}
    for arch, ncfg in plan:
        bar = tqdm(total=ncfg.epochs, desc=f"train {arch}", unit="epoch", disable=not progress, leave=True)

        def on_epoch(epoch: int, row: dict[str, float], bar: Any = bar) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", val_hr10=f"{row['val_hr10']:.3f}")

        pre = (trained["gmf"].model, trained["mlp"].model) if arch == "neumf" else None
        res = train(val, ncfg, pretrained=pre, progress=on_epoch, report=split)
        bar.close()
        trained[arch] = res
        histories[arch] = res.history
        hr, ndcg = hit_rate_ndcg(score_candidates(res.model, split.test_users, split.candidates()), k=10)
        rows[arch] = {
            "hr10": hr,
            "ndcg10": ndcg,
            "val_hr10": res.best["val_hr10"],
            "epoch": res.best["epoch"],
            "seconds": res.seconds,
        }
        log(
            f"  {arch:6s} HR@10 {hr:.4f}  NDCG@10 {ndcg:.4f}  "
            f"(epoch {int(res.best['epoch'])}, {res.seconds:.0f}s)"
        )
    chosen = trained[cfg.arch].model
    user_vecs, item_vecs = vectors(chosen)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(chosen, Path(tmp) / "model.onnx")
        onnx_bytes = onnx_path.read_bytes()
    # The exported graph must score exactly like PyTorch on every test candidate.
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    cand = split.candidates()
    flat_u = np.repeat(split.test_users, cand.shape[1])
    (onnx_scores,) = sess.run(["score"], {"user": user_vecs[flat_u], "item": item_vecs[cand.reshape(-1)]})
    torch_scores = score_candidates(chosen, split.test_users, cand).reshape(-1)
    max_diff = float(np.max(np.abs(np.asarray(onnx_scores).reshape(-1) - torch_scores)))
    if max_diff > 1e-5:
        raise RuntimeError(f"ONNX export differs from PyTorch by {max_diff:.2e} (> 1e-5); not registering")
    fold = _item_fold_vectors(split, user_vecs)
    retrieval = _retrieval_matrix(chosen, item_vecs)

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()

    files: dict[str, str | os.PathLike[str] | bytes] = {
        "model.onnx": onnx_bytes,
        "items.json": json.dumps(inter.item_ids).encode(),
        "users.json": json.dumps(inter.user_ids).encode(),
        "item_vectors.npy": npy(item_vecs),
        "user_vectors.npy": npy(user_vecs),
        "item_fold.npy": npy(fold),
        "item_retrieval.npy": npy(retrieval),
        "train_items.npy": npy(split.train_items.astype(np.int32)),
        "history.json": json.dumps(histories).encode(),
    }
    title = f"NCF on {source or 'interactions'}: {len(inter):,} interactions"
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_curves(histories, Path(tmp) / "curves.png", title)
        files["curves.png"] = png.read_bytes()
    metadata = {
        "arch": cfg.arch,
        "config": config_dict(trained[cfg.arch].config),
        "dim": int(item_vecs.shape[1]),
        "n_users": inter.n_users,
        "n_items": inter.n_items,
        "n_interactions": len(inter),
        "source": source,
        "split": f"NCF leave-one-out, 99 sampled negatives, seed {cfg.seed}",
        "inputs": {"user": ["batch", int(item_vecs.shape[1])], "item": ["batch", int(item_vecs.shape[1])]},
        "output": "score: click probability [batch]",
        "redis_layout": "<prefix>vec:<name>:v<N>:{u,i}:<id> = float32 bytes",
        "rows": rows,
    }
    metrics = {
        "hr10": rows[cfg.arch]["hr10"],
        "ndcg10": rows[cfg.arch]["ndcg10"],
        "onnx_max_abs_diff": max_diff,
    }
    # Vectors reach Redis before the version is promoted, so no worker serves a model without them.
    tag = f"{name}:v{registry.next_version(name)}"
    n_keys = 0
    if redis_url:
        n_keys = export_to_redis(redis_url, redis_prefix, tag, inter, user_vecs, item_vecs)
        log(f"  {n_keys:,} vectors written to Redis under {redis_prefix}vec:{tag}:*")
    mv = registry.register(name, files, metadata=metadata, metrics=metrics)
    if mv.tag != tag and redis_url:  # someone registered concurrently: rewrite under the real tag
        n_keys = export_to_redis(redis_url, redis_prefix, mv.tag, inter, user_vecs, item_vecs)
    plot = None
    if plot_dir is not None:
        plot = Path(plot_dir) / f"{name}-v{mv.version}-curves.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(bytes(files["curves.png"]))  # type: ignore[arg-type]
    log(
        f"registered {mv.tag} (production) in {registry.root} after {time.perf_counter() - t_start:.0f}s; "
        f"ONNX vs PyTorch max |diff| {max_diff:.1e}"
    )
    return RecsTrainResult(
        version=mv,
        rows=rows,
        onnx_max_abs_diff=max_diff,
        plot=plot,
        redis_keys=n_keys,
        extra={"trained": trained, "split": split},
    )
