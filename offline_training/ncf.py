"""Neural collaborative filtering (He et al. 2017) in PyTorch: GMF, MLP and NeuMF.

Training follows the paper: pointwise log loss, ``n_neg`` sampled negatives
per observed positive (re-sampled every epoch), Adam, and NeuMF initialised
from pre-trained GMF and MLP. Everything runs on the CPU.

For serving, each model is split into *embeddings* (exported to Redis, one
vector per user and per item) and a *scoring network* that maps a user
vector and an item vector to a probability. Only the scoring network goes
to ONNX, so serving reads vectors from Redis and runs one batched
onnxruntime call over all candidates. The user vector of NeuMF is the GMF
embedding followed by the MLP embedding; the same for items.

This is the only package that imports torch; serving never imports it.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from offline_training.data import Split, hit_rate_ndcg

ARCHS = ("gmf", "mlp", "neumf")


@dataclass
class NCFConfig:
    """Hyper-parameters of one NCF model."""

    arch: str = "neumf"
    factors: int = 32  # GMF embedding size ("predictive factors")
    mlp_layers: tuple[int, ...] = (128, 64, 32)  # MLP tower; embeddings are mlp_layers[0] // 2 each
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0
    n_neg: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {self.arch!r}")
        self.mlp_layers = tuple(int(x) for x in self.mlp_layers)


class NCF(nn.Module):
    """GMF, MLP or NeuMF, with ``vectors()`` / ``score_vectors()`` for the serving split."""

    def __init__(self, n_users: int, n_items: int, cfg: NCFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch = cfg.arch
        d = cfg.factors
        m = cfg.mlp_layers[0] // 2
        self.gmf_dim = d if cfg.arch in ("gmf", "neumf") else 0
        self.mlp_dim = m if cfg.arch in ("mlp", "neumf") else 0
        if self.gmf_dim:
            self.u_gmf = nn.Embedding(n_users, d)
            self.i_gmf = nn.Embedding(n_items, d)
        if self.mlp_dim:
            self.u_mlp = nn.Embedding(n_users, m)
            self.i_mlp = nn.Embedding(n_items, m)
            layers: list[nn.Module] = []
            sizes = cfg.mlp_layers
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.tower = nn.Sequential(*layers)
        head_in = self.gmf_dim + (cfg.mlp_layers[-1] if self.mlp_dim else 0)
        self.head = nn.Linear(head_in, 1)
        for emb in (getattr(self, n, None) for n in ("u_gmf", "i_gmf", "u_mlp", "i_mlp")):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.01)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)

    @property
    def vector_dim(self) -> int:
        return self.gmf_dim + self.mlp_dim

    def score_vectors(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Logits from user vectors ``u`` and item vectors ``i`` (``[B, vector_dim]`` each)."""
        g = self.gmf_dim
        parts = []
        if g:
            parts.append(u[:, :g] * i[:, :g])
        if self.mlp_dim:
            parts.append(self.tower(torch.cat([u[:, g:], i[:, g:]], dim=1)))
        return self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]).squeeze(1)

    def user_vectors(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._vectors("u", idx)

    def item_vectors(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._vectors("i", idx)

    def _vectors(self, side: str, idx: torch.Tensor | None) -> torch.Tensor:
        parts = []
        for name in (f"{side}_gmf", f"{side}_mlp"):
            emb = getattr(self, name, None)
            if emb is not None:
                parts.append(emb.weight if idx is None else emb(idx))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score_vectors(self.user_vectors(users), self.item_vectors(items))

    def load_pretrained(self, gmf: NCF, mlp: NCF, alpha: float = 0.5) -> None:
        """NeuMF initialisation from trained GMF and MLP (the paper's pre-training, alpha = 0.5)."""
        if self.arch != "neumf" or gmf.arch != "gmf" or mlp.arch != "mlp":
            raise ValueError("load_pretrained needs a NeuMF, a GMF and an MLP")
        with torch.no_grad():
            self.u_gmf.weight.copy_(gmf.u_gmf.weight)
            self.i_gmf.weight.copy_(gmf.i_gmf.weight)
            self.u_mlp.weight.copy_(mlp.u_mlp.weight)
            self.i_mlp.weight.copy_(mlp.i_mlp.weight)
            self.tower.load_state_dict(mlp.tower.state_dict())
            g = self.gmf_dim
            self.head.weight[:, :g].copy_(alpha * gmf.head.weight)
            self.head.weight[:, g:].copy_((1 - alpha) * mlp.head.weight)
            self.head.bias.copy_(alpha * gmf.head.bias + (1 - alpha) * mlp.head.bias)


class ScoringNet(nn.Module):
    """The ONNX-exported part: (user vectors, item vectors) → click probability."""

    def __init__(self, model: NCF) -> None:
        super().__init__()
        self.model = model

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.score_vectors(user, item))


@dataclass
class TrainResult:
    """A trained model and its per-epoch history."""

    model: NCF
    config: NCFConfig
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    #: The history row of the epoch whose weights were kept.
    best: dict[str, float] = field(default_factory=dict)


def _sample_negatives(
    users: np.ndarray, n_items: int, pos_keys: np.ndarray, n_neg: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_neg`` items per user in ``users`` that are not among its training positives."""
    u = np.repeat(users.astype(np.int64), n_neg)
    neg = rng.integers(0, n_items, size=len(u))
    bad = np.isin(u * n_items + neg, pos_keys, assume_unique=False)
    while bad.any():
        neg[bad] = rng.integers(0, n_items, size=int(bad.sum()))
        bad[bad] = np.isin(u[bad] * n_items + neg[bad], pos_keys)
    return neg


def score_candidates(model: NCF, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Probabilities of ``candidates[r, :]`` for ``users[r]`` (PyTorch, no grad)."""
    model.eval()
    with torch.no_grad():
        u = torch.as_tensor(np.repeat(users, candidates.shape[1]), dtype=torch.long)
        i = torch.as_tensor(candidates.reshape(-1), dtype=torch.long)
        out = torch.sigmoid(model(u, i)).numpy()
    return out.reshape(candidates.shape)


def train(
    split: Split,
    cfg: NCFConfig,
    pretrained: tuple[NCF, NCF] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    report: Split | None = None,
) -> TrainResult:
    """Train one NCF model on ``split``'s training positives.

    After each epoch HR@10/NDCG@10 are measured on ``split``'s test users
    (``val_hr10``), and the weights of the best epoch are kept: pass a
    :func:`~offline_training.data.validation_split` as ``split`` so that this
    early stopping never sees the real test items. ``report`` (the real
    split) is scored each epoch too, for the training curves only.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = NCF(split.n_users, split.n_items, cfg)
    if pretrained is not None:
        model.load_pretrained(*pretrained)
    # The paper fine-tunes pre-trained NeuMF with plain SGD; Adam from a
    # warm start works as well here and needs no extra learning-rate search.
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    pos_u = split.train_users.astype(np.int64)
    pos_i = split.train_items.astype(np.int64)
    pos_keys = np.unique(pos_u * split.n_items + pos_i)
    cand = split.candidates()
    result = TrainResult(model=model, config=cfg)
    best_state: dict[str, torch.Tensor] | None = None
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        neg_i = _sample_negatives(pos_u, split.n_items, pos_keys, cfg.n_neg, rng)
        users = np.concatenate([pos_u, np.repeat(pos_u, cfg.n_neg)])
        items = np.concatenate([pos_i, neg_i])
        labels = np.concatenate([np.ones(len(pos_u)), np.zeros(len(neg_i))]).astype(np.float32)
        perm = rng.permutation(len(users))
        tu = torch.as_tensor(users[perm])
        ti = torch.as_tensor(items[perm])
        tl = torch.as_tensor(labels[perm])
        total = 0.0
        n_batches = math.ceil(len(perm) / cfg.batch_size)
        for b in range(n_batches):
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(tu[sl], ti[sl]), tl[sl])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(tl[sl])
        hr, ndcg = hit_rate_ndcg(score_candidates(model, split.test_users, cand), k=10)
        row = {"epoch": float(epoch), "loss": total / len(perm), "val_hr10": hr, "val_ndcg10": ndcg}
        if report is not None:
            rhr, rndcg = hit_rate_ndcg(score_candidates(model, report.test_users, report.candidates()), k=10)
            row.update(hr10=rhr, ndcg10=rndcg)
        result.history.append(row)
        if best_state is None or hr > result.best["val_hr10"]:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.best = row
        if progress is not None:
            progress(epoch, row)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


def export_onnx(model: NCF, path: str | Path, opset: int = 17) -> Path:
    """Write the scoring network to ``path``.

    Inputs ``user`` and ``item`` are ``[B, dim]`` float32; the output ``score`` is ``[B]``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = ScoringNet(model).eval()
    dim = model.vector_dim
    example = (torch.zeros(2, dim), torch.zeros(2, dim))
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript, and
        # writes one self-contained file (ARCHITECTURE.md, known facts).
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(net, example, path, opset)
    return path


def _export(net: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path, opset: int) -> None:
    torch.onnx.export(
        net,
        example,
        str(path),
        input_names=["user", "item"],
        output_names=["score"],
        dynamic_axes={"user": {0: "batch"}, "item": {0: "batch"}, "score": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def vectors(model: NCF) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) as float32 arrays, rows in dense-id order."""
    with torch.no_grad():
        return (
            model.user_vectors().detach().numpy().astype(np.float32),
            model.item_vectors().detach().numpy().astype(np.float32),
        )


def config_dict(cfg: NCFConfig) -> dict[str, object]:
    d = asdict(cfg)
    d["mlp_layers"] = list(cfg.mlp_layers)
    return d
