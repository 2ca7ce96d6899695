"""Deep CTR model (DeepFM) over the shared hashed features: data, training, ONNX export, registry.

Data
----
Every loader returns a :class:`CTRData`: one field dict per impression (field
order = the model's input order), its 0/1 label, and whether the rows are in
time order. :meth:`CTRData.ids` hashes the rows with
:func:`online_models.ctr.hash_ids`, so the offline model, the online model
and the stream see the same ids.

* :func:`load_lake_impressions` joins the archived bid requests
  (``ads.bid-requests.v1``) with the archived ad events (``ads.events.v1``)
  by ``(request_id, imp_id)``: each impression is a row, labelled 1 when a
  click for it exists. Fields come from
  :func:`online_models.ctr.request_fields` with the UTC hour of the
  impression. :func:`join_impressions` does the join on any stream of
  ``(topic, value)`` pairs (the lake's, or the simulator's).
* :func:`load_criteo` and :func:`load_avazu` read the public CTR CSVs
  (:func:`load_ctr_file` picks one by the header). Categorical columns are
  taken as they are, Criteo's integer columns bucketised as in the winning
  Kaggle solution (``int(log(x)**2)`` above 2, ``"SP<x>"`` otherwise), and
  missing values become ``""``, a value of its own.

Model
-----
:class:`DeepFM` (Guo et al. 2017): a first-order term, the FM second-order
term and a small MLP, all over one shared embedding table. The input is the
``int64 [batch, n_fields]`` id matrix in ``[0, N_BUCKETS)``; inside the
graph the ids are folded into a smaller table with ``ids % model_buckets``,
so the ONNX file stays a few MB. The ONNX graph has one input ``ids`` and
one output ``pctr`` (float32 ``[batch]``), with a dynamic batch axis.

:func:`train_ctr` splits the data (the last ``test_fraction`` in time order
for time-ordered data, a seeded random part otherwise), trains with Adam and
log loss, stops early on a seeded validation split of the training part,
reports AUC and log loss on the held-out part, exports ONNX (checked against
PyTorch within 1e-5) and registers version ``ctr:vN`` with a PNG of the
training curves.

This module imports torch; serving (:mod:`serving.ctr`) never does.

Examples
--------
>>> rows = [{"size": "300x250", "os": "iOS"}, {"size": "728x90", "os": ""}]
>>> data = CTRData(rows, np.array([1.0, 0.0], dtype=np.float32), ("size", "os"))
>>> data.ids().shape, data.ids().dtype.name
((2, 2), 'int64')
>>> criteo_int("") , criteo_int("1"), criteo_int("100")
('', 'SP1', '21')
>>> round(auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 2)
0.75
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from torch import nn

from online_models.ctr import N_BUCKETS, REQUEST_FIELDS, hash_ids, request_fields
from schemas import topics as T
from schemas.errors import SchemaError
from schemas.events import AD_EVENT_CODEC, AdClick, Impression
from schemas.openrtb import BID_REQUEST_CODEC, BidRequest

# -- data ------------------------------------------------------------------------------------


@dataclass
class CTRData:
    """Labelled impressions: ``rows[k]`` (a field dict in ``fields`` order) was clicked iff ``labels[k]``."""

    rows: list[dict[str, str]]
    labels: np.ndarray  # float32 0/1
    fields: tuple[str, ...]
    source: str = ""
    time_ordered: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    ts: np.ndarray | None = None  # per row: the impression's unix time (joined data only)
    user_ids: list[str] | None = None  # per row: the impression's user id ("" if none; joined data only)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.fields = tuple(self.fields)
        if len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.rows)} rows but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self) -> np.ndarray:
        """``int64 [n, n_fields]``: :func:`hash_ids` of every row, columns in ``fields`` order."""
        out = np.empty((len(self.rows), len(self.fields)), dtype=np.int64)
        fields = self.fields
        for k, row in enumerate(self.rows):
            out[k] = hash_ids({f: row.get(f, "") for f in fields})
        return out

    def subset(self, idx: Sequence[int] | np.ndarray) -> CTRData:
        """The rows ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return CTRData(
            [self.rows[i] for i in idx.tolist()],
            self.labels[idx],
            self.fields,
            self.source,
            self.time_ordered,
            dict(self.stats),
            None if self.ts is None else self.ts[idx],
            None if self.user_ids is None else [self.user_ids[i] for i in idx.tolist()],
        )


class _ClickProfile(msgspec.Struct):
    type: str = ""
    user_id: str | None = None
    category: str | None = None


_decode_click = msgspec.json.Decoder(_ClickProfile).decode
_PROFILE_TYPES = frozenset({"view", "click", "add_to_cart"})


def utc_hour(ts: float) -> int:
    """The UTC hour of day (0-23) of a unix time in seconds.

    >>> utc_hour(1_767_225_600.0 + 5 * 3600 + 59)
    5
    """
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).hour


def join_impressions(
    events: Iterable[tuple[str, bytes]],
    segment_from_clicks: bool = False,
    source: str = "",
) -> CTRData:
    """Join bid requests with ad events: one row per impression, label 1 if it was clicked.

    ``events`` are ``(topic, value)`` pairs in stream order, ``topic`` being a
    base name of :mod:`schemas.topics` (other topics are skipped). A request
    and its impression are matched by ``(request_id, imp_id)`` whatever their
    order; a click anywhere in the stream labels its impression. A repeated
    impression counts once. Rows come out sorted by the impression's time.

    With ``segment_from_clicks``, the ``segment`` field is the product
    category the user viewed, clicked or carted most often (the first such
    category on ties) *before* the impression, from ``shop.clicks.v1``: a
    stand-in for a profile field read from the feature store. Otherwise it is
    ``""``, as for a user without a profile.

    Undecodable records and impressions without their request are skipped and
    counted in ``stats``.
    """
    requests: dict[str, BidRequest] = {}
    pending: list[tuple[str, str, str, str, float, str, str]] = []
    seen: set[tuple[str, str]] = set()
    clicked: set[tuple[str, str]] = set()
    counts: dict[str, dict[str, int]] = {}
    best: dict[str, tuple[str, int]] = {}
    stats = {"requests": 0, "bad_requests": 0, "bad_ad_events": 0, "duplicate_impressions": 0}
    for topic, value in events:
        if topic == T.BID_REQUESTS:
            try:
                req = BID_REQUEST_CODEC.decode(value)
            except SchemaError:
                stats["bad_requests"] += 1
                continue
            requests[req.id] = req
            stats["requests"] += 1
        elif topic == T.AD_EVENTS:
            try:
                ev = AD_EVENT_CODEC.decode(value)
            except SchemaError:
                stats["bad_ad_events"] += 1
                continue
            key = (ev.request_id, ev.imp_id)
            if isinstance(ev, Impression):
                if key in seen:
                    stats["duplicate_impressions"] += 1
                    continue
                seen.add(key)
                seg = best.get(ev.user_id or "", ("", 0))[0] if segment_from_clicks else ""
                pending.append(
                    (
                        ev.request_id,
                        ev.imp_id,
                        ev.campaign_id,
                        ev.creative_id or "",
                        float(ev.ts),
                        seg,
                        ev.user_id or "",
                    )
                )
            elif isinstance(ev, AdClick):
                clicked.add(key)
        elif segment_from_clicks and topic == T.CLICKS:
            try:
                p = _decode_click(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if p.type in _PROFILE_TYPES and p.user_id and p.category:
                c = counts.setdefault(p.user_id, {})
                n = c[p.category] = c.get(p.category, 0) + 1
                if n > best.get(p.user_id, ("", 0))[1]:
                    best[p.user_id] = (p.category, n)
    rows: list[dict[str, str]] = []
    labels: list[float] = []
    times: list[float] = []
    users: list[str] = []
    unmatched = 0
    for rid, imp_id, campaign, creative, ts, seg, uid in pending:
        request = requests.get(rid)
        imp = next((i for i in request.imp if i.id == imp_id), None) if request is not None else None
        if request is None or imp is None:
            unmatched += 1
            continue
        user = {"segment": seg} if seg else None
        rows.append(request_fields(request, imp, campaign, creative, user=user, hour=utc_hour(ts)))
        labels.append(1.0 if (rid, imp_id) in clicked else 0.0)
        times.append(ts)
        users.append(uid)
    order = sorted(range(len(times)), key=times.__getitem__)
    stats.update(impressions=len(rows), clicks=int(sum(labels)), unmatched_impressions=unmatched)
    return CTRData(
        [rows[k] for k in order],
        np.asarray([labels[k] for k in order], dtype=np.float32),
        REQUEST_FIELDS,
        source=source,
        time_ordered=True,
        stats=stats,
        ts=np.asarray([times[k] for k in order], dtype=np.float64),
        user_ids=[users[k] for k in order],
    )


def load_lake_impressions(
    root: str | os.PathLike[str], prefix: str = "", segment_from_clicks: bool = False
) -> CTRData:
    """Impressions from the Parquet event lake (see :func:`join_impressions`).

    Reads ``<prefix>ads.bid-requests.v1`` and ``<prefix>ads.events.v1`` (and
    ``<prefix>shop.clicks.v1`` with ``segment_from_clicks``), merged in Kafka
    timestamp order.
    """
    from schemas.lake import read_lake

    bases = [T.BID_REQUESTS, T.AD_EVENTS] + ([T.CLICKS] if segment_from_clicks else [])
    merged: list[tuple[int, int, int, str, bytes]] = []
    for rank, base in enumerate(bases):
        table = read_lake(root, prefix + base)
        stamps = table.column("timestamp").cast("int64").to_pylist()
        offsets = table.column("offset").to_pylist()
        values = table.column("value").to_pylist()
        merged += [
            (ts, rank, off, base, val)
            for ts, off, val in zip(stamps, offsets, values, strict=True)
            if val is not None
        ]
    merged.sort(key=lambda r: (r[0], r[1], r[2]))
    data = join_impressions(((b, v) for _, _, _, b, v in merged), segment_from_clicks, source=f"lake {root}")
    if not len(data):
        raise ValueError(
            f"{root}: no impressions joined to bid requests under topics {prefix}{T.BID_REQUESTS} and "
            f"{prefix}{T.AD_EVENTS} (is the archive running, and is the topic prefix right?)"
        )
    return data


CRITEO_INT = tuple(f"I{k}" for k in range(1, 14))
CRITEO_CAT = tuple(f"C{k}" for k in range(1, 27))
CRITEO_FIELDS = CRITEO_INT + CRITEO_CAT


def criteo_int(value: str) -> str:
    """Bucketise a Criteo integer feature (Kaggle 2014 winners): ``int(log(x)**2)`` if x > 2, else ``SPx``."""
    value = value.strip()
    if not value:
        return ""
    try:
        x = float(value)
    except ValueError:
        return value
    if x > 2:
        return str(int(math.log(x) ** 2))
    return f"SP{int(x)}"


@contextlib.contextmanager
def _csv_rows(path: Path) -> Iterator[tuple[list[str] | None, Iterator[list[str]]]]:
    """(header or None if the file has none, the data rows), comma or tab separated."""
    with open(path, newline="", encoding="utf-8") as fh:
        first = fh.readline()
        delim = "\t" if first.count("\t") > first.count(",") else ","
        header = next(csv.reader([first], delimiter=delim), [])
        body = csv.reader(fh, delimiter=delim)
        if header and header[0].strip().lstrip("-").isdigit():  # no header: the first line is data
            yield None, itertools.chain([header], body)
        else:
            yield [h.strip() for h in header], body


def load_criteo(path: str | os.PathLike[str], limit: int | None = None) -> CTRData:
    """Criteo display-ads rows: ``label,I1..I13,C1..C26``, ``Id,Label,...``, or the raw headerless TSV."""
    path = Path(path)
    rows: list[dict[str, str]] = []
    labels: list[float] = []
    with _csv_rows(path) as (header, body):
        if header is None:
            header = ["Label", *CRITEO_FIELDS]
        lower = [h.lower() for h in header]
        if "label" not in lower or not set(CRITEO_FIELDS) <= set(header):
            raise ValueError(
                f"{path}: not a Criteo file (expected label, I1..I13, C1..C26; got {header[:5]}...)"
            )
        li = lower.index("label")
        cols = [(f, header.index(f)) for f in CRITEO_FIELDS]
        for rec in itertools.islice(body, limit):
            if not rec:
                continue
            rec += [""] * (len(header) - len(rec))
            rows.append({f: criteo_int(rec[i]) if f[0] == "I" else rec[i].strip() for f, i in cols})
            labels.append(float(rec[li]))
    return CTRData(rows, np.asarray(labels, dtype=np.float32), CRITEO_FIELDS, source=f"criteo {path.name}")


def load_avazu(path: str | os.PathLike[str], limit: int | None = None) -> CTRData:
    """Avazu rows (``id,click,hour,...``): ``hour`` (YYMMDDHH) becomes the hour of day plus ``weekday``.

    Rows keep the file's order, which for Avazu is time order.
    """
    path = Path(path)
    rows: list[dict[str, str]] = []
    labels: list[float] = []
    with _csv_rows(path) as (header, body):
        if header is None or "click" not in header or "hour" not in header:
            raise ValueError(f"{path}: not an Avazu file (expected a header with id, click, hour, ...)")
        ci, hi = header.index("click"), header.index("hour")
        others = [(h, k) for k, h in enumerate(header) if h not in ("id", "click", "hour")]
        fields = ("hour", "weekday", *(h for h, _ in others))
        for rec in itertools.islice(body, limit):
            if not rec:
                continue
            rec += [""] * (len(header) - len(rec))
            stamp = rec[hi].strip()
            try:
                day = dt.datetime.strptime(stamp, "%y%m%d%H")
                hour, weekday = str(day.hour), str(day.weekday())
            except ValueError:
                hour, weekday = stamp, ""
            row = {"hour": hour, "weekday": weekday}
            row.update((h, rec[k].strip()) for h, k in others)
            rows.append(row)
            labels.append(float(rec[ci]))
    return CTRData(
        rows, np.asarray(labels, dtype=np.float32), fields, source=f"avazu {path.name}", time_ordered=True
    )


def load_ctr_file(path: str | os.PathLike[str], limit: int | None = None) -> CTRData:
    """A Criteo or Avazu file, whichever its header says."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    cols = {c.strip() for c in first.replace("\t", ",").split(",")}
    if "click" in cols and "hour" in cols:
        return load_avazu(path, limit)
    return load_criteo(path, limit)


def load_ctr_data(
    path: str | os.PathLike[str], prefix: str = "", segment_from_clicks: bool = False
) -> CTRData:
    """An event-lake folder (:func:`load_lake_impressions`) or a Criteo/Avazu file (:func:`load_ctr_file`)."""
    p = Path(path)
    if p.is_dir():
        return load_lake_impressions(p, prefix, segment_from_clicks)
    if p.is_file():
        return load_ctr_file(p)
    raise FileNotFoundError(f"{p}: neither an event lake folder nor a Criteo/Avazu file")


# -- metrics ---------------------------------------------------------------------------------


def auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count one half); NaN if only one class is present."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(
    labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, eps: float = 1e-7
) -> float:
    """Mean binary log loss, probabilities clipped to ``[eps, 1 - eps]``.

    >>> round(logloss([1, 0], [0.9, 0.2]), 4)
    0.1643
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# -- model -----------------------------------------------------------------------------------


@dataclass
class CTRTrainConfig:
    """Hyper-parameters of the DeepFM and of its training run.

    Defaults picked on simulator data (12k and 40k impressions, three seeds,
    validation log loss): embeddings start at std 0.1 and Adam runs at 0.004
    so the FM term learns the campaign x segment interaction within a few
    epochs; a patience of 5 rides out the noise of a validation split with a
    few dozen clicks (smaller settings stopped before the interaction was
    learnt on some seeds).
    """

    model_buckets: int = 2**18  # the table size inside the graph: ids % model_buckets
    embed_dim: int = 4
    init_std: float = 0.1
    mlp_layers: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    embed_l2: float = 1e-5  # L2 on the embeddings of each batch (sparse regularisation)
    epochs: int = 30
    patience: int = 5  # epochs without a better validation log loss before stopping
    batch_size: int = 256
    lr: float = 0.004
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        self.mlp_layers = tuple(int(x) for x in self.mlp_layers)
        if not 0 < self.model_buckets <= N_BUCKETS:
            raise ValueError(f"model_buckets must be in (0, {N_BUCKETS}], not {self.model_buckets}")
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise ValueError("test_fraction and val_fraction must be in (0, 1)")


class DeepFM(nn.Module):
    """First-order + FM second-order + MLP over shared field embeddings (Guo et al. 2017).

    ``forward(ids)`` takes hashed ids ``int64 [B, n_fields]`` and returns
    P(click) ``[B]``; :meth:`logits` returns the logits.
    """

    def __init__(self, n_fields: int, cfg: CTRTrainConfig) -> None:
        super().__init__()
        self.n_fields = n_fields
        self.model_buckets = cfg.model_buckets
        self.first = nn.Embedding(cfg.model_buckets, 1)
        self.embed = nn.Embedding(cfg.model_buckets, cfg.embed_dim)
        self.bias = nn.Parameter(torch.zeros(1))
        layers: list[nn.Module] = []
        width = n_fields * cfg.embed_dim
        for size in cfg.mlp_layers:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        nn.init.zeros_(self.first.weight)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        for mod in self.mlp.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)

    def parts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``[B]``, the batch's embeddings ``[B, F, D]``)."""
        idx = torch.remainder(ids, self.model_buckets)
        e = self.embed(idx)
        first = self.first(idx).sum(dim=(1, 2))
        s = e.sum(dim=1)
        fm = 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1)
        deep = self.mlp(e.flatten(1)).squeeze(1)
        return self.bias + first + fm + deep, e

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.parts(ids)[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(ids))


def predict(model: DeepFM, ids: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """P(click) of every row of ``ids`` (float32 ``[n]``), in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            out.append(model(torch.as_tensor(ids[start : start + batch_size])).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def split_indices(
    n: int, time_ordered: bool, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices.

    The test part is the last ``test_fraction`` of the rows when they are in
    time order, a seeded random part otherwise; validation is a seeded random
    ``val_fraction`` of the rest.

    >>> tr, va, te = split_indices(10, time_ordered=True, test_fraction=0.2, val_fraction=0.25)
    >>> te.tolist(), len(va), sorted([*tr, *va]) == list(range(8))
    ([8, 9], 2, True)
    """
    rng = np.random.default_rng(seed)
    n_test = max(1, round(n * test_fraction))
    if time_ordered:
        rest, test = np.arange(n - n_test), np.arange(n - n_test, n)
    else:
        perm = rng.permutation(n)
        rest, test = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    n_val = max(1, round(len(rest) * val_fraction))
    pick = rng.permutation(len(rest))
    val = np.sort(rest[pick[:n_val]])
    train = np.sort(rest[pick[n_val:]])
    return train, val, test


@dataclass
class FitResult:
    """A trained DeepFM and its per-epoch history (train loss, validation log loss and AUC)."""

    model: DeepFM
    history: list[dict[str, float]]
    best: dict[str, float]
    seconds: float


def fit_deepfm(
    train_ids: np.ndarray,
    train_y: np.ndarray,
    val_ids: np.ndarray,
    val_y: np.ndarray,
    cfg: CTRTrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    report: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitResult:
    """Train with Adam and log loss; keep the epoch with the best validation log loss.

    Stops after ``cfg.patience`` epochs without improvement. ``report``
    (ids, labels) adds its AUC and log loss to every epoch's history, for the
    curves only: it never steers training.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    model = DeepFM(train_ids.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    tx = torch.as_tensor(train_ids)
    ty = torch.as_tensor(train_y.astype(np.float32))
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.as_tensor(rng.permutation(len(tx)))
        total = 0.0
        for start in range(0, len(perm), cfg.batch_size):
            b = perm[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            logits, e = model.parts(tx[b])
            loss = loss_fn(logits, ty[b])
            if cfg.embed_l2:
                loss = loss + cfg.embed_l2 * (e * e).sum() / len(b)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        p_val = predict(model, val_ids)
        row = {
            "epoch": float(epoch),
            "loss": total / max(len(tx), 1),
            "val_logloss": logloss(val_y, p_val),
            "val_auc": auc(val_y, p_val),
        }
        if report is not None:
            p_rep = predict(model, report[0])
            row.update(test_logloss=logloss(report[1], p_rep), test_auc=auc(report[1], p_rep))
        history.append(row)
        if best_state is None or row["val_logloss"] < best["val_logloss"]:
            best, stale = row, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if progress is not None:
            progress(epoch, row)
        if stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, history, best, time.perf_counter() - started)


class _Export(nn.Module):
    def __init__(self, model: DeepFM) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)


def export_onnx(model: DeepFM, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX: input ``ids`` (int64 ``[batch, n_fields]``), output ``pctr`` ``[batch]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = _Export(model).eval()
    example = torch.zeros(2, model.n_fields, dtype=torch.int64)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and writes
        # one self-contained file (ARCHITECTURE.md, known facts).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["ids"],
            output_names=["pctr"],
            dynamic_axes={"ids": {0: "batch"}, "pctr": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def onnx_max_abs_diff(onnx_bytes: bytes, model: DeepFM, ids: np.ndarray) -> float:
    """Largest ``|onnxruntime - torch|`` over the rows of ``ids``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["pctr"], {"ids": np.ascontiguousarray(ids, dtype=np.int64)})
    want = predict(model, ids)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))) if len(ids) else 0.0


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """Training/validation log loss and validation/test AUC per epoch."""
    from offline_training.plots import two_panel_png

    def draw(ax1: Any, ax2: Any) -> None:
        ep = [r["epoch"] for r in history]
        ax1.plot(ep, [r["loss"] for r in history], marker="o", ms=3, label="training (incl. L2)")
        ax1.plot(ep, [r["val_logloss"] for r in history], marker="o", ms=3, label="validation")
        ax2.plot(ep, [r["val_auc"] for r in history], marker="o", ms=3, label="validation")
        if history and "test_logloss" in history[0]:
            ax1.plot(ep, [r["test_logloss"] for r in history], ls="--", label="held-out")
            ax2.plot(ep, [r["test_auc"] for r in history], ls="--", label="held-out")
        ax1.set(xlabel="epoch", ylabel="log loss", title="log loss")
        ax2.set(xlabel="epoch", ylabel="AUC", title="AUC")

    return two_panel_png(path, title, draw)


# -- the training command --------------------------------------------------------------------


@dataclass
class CTRTrainResult:
    """Everything one :func:`train_ctr` run produced."""

    version: Any  # serving.registry.ModelVersion
    metrics: dict[str, float]
    history: list[dict[str, float]]
    onnx_max_abs_diff: float
    plot: Path | None
    model: DeepFM
    test_ids: np.ndarray
    test_labels: np.ndarray
    test_pctr: np.ndarray  # the torch model's predictions on the held-out rows
    extra: dict[str, Any] = field(default_factory=dict)


def config_dict(cfg: CTRTrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["mlp_layers"] = list(cfg.mlp_layers)
    return d


def train_ctr(
    data: CTRData | str | os.PathLike[str],
    registry: Any,
    cfg: CTRTrainConfig | None = None,
    name: str = "ctr",
    prefix: str = "",
    plot_dir: Path | None = None,
    promote: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CTRTrainResult:
    """Train, evaluate, export and register a DeepFM (see the module docstring).

    ``data`` is a :class:`CTRData` or a path for :func:`load_ctr_data` (an
    event lake, read with topic ``prefix``, or a Criteo/Avazu file).
    ``registry`` is a :class:`serving.registry.ModelRegistry`. The version is
    registered (and promoted unless ``promote=False``) only if the ONNX graph
    matches PyTorch within 1e-5 on every held-out row.
    """
    from tqdm import tqdm

    cfg = cfg or CTRTrainConfig()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    if not isinstance(data, CTRData):
        log(f"loading {data}")
        data = load_ctr_data(data, prefix=prefix)
    if len(data) < 20 or len(set(data.labels.tolist())) < 2:
        raise ValueError(
            f"{data.source or 'data'}: {len(data)} rows, {int(data.labels.sum())} clicks; "
            "need at least 20 rows with both clicks and non-clicks to train a CTR model"
        )
    ids = data.ids()
    y = data.labels
    tr, va, te = split_indices(len(data), data.time_ordered, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    log(
        f"{data.source or 'data'}: {len(data):,} impressions, CTR {y.mean():.4f}, {len(data.fields)} fields; "
        f"train {len(tr):,} / validation {len(va):,} / held-out {len(te):,} "
        f"({'last rows in time order' if data.time_ordered else f'random, seed {cfg.seed}'})"
    )
    bar = tqdm(total=cfg.epochs, desc="train deepfm", unit="epoch", disable=not progress, leave=True)

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['loss']:.4f}", val_ll=f"{row['val_logloss']:.4f}", val_auc=f"{row['val_auc']:.3f}"
        )

    fit = fit_deepfm(ids[tr], y[tr], ids[va], y[va], cfg, progress=on_epoch, report=(ids[te], y[te]))
    bar.close()
    model = fit.model
    p_test = predict(model, ids[te])
    base = float(y[tr].mean())
    metrics = {
        "auc": auc(y[te], p_test),
        "logloss": logloss(y[te], p_test),
        "base_logloss": logloss(y[te], np.full(len(te), base)),
        "val_auc": fit.best["val_auc"],
        "val_logloss": fit.best["val_logloss"],
        "epoch": fit.best["epoch"],
    }
    log(
        f"  held-out AUC {metrics['auc']:.4f}  log loss {metrics['logloss']:.4f} "
        f"(base rate {metrics['base_logloss']:.4f}); best epoch {int(fit.best['epoch'])}, {fit.seconds:.1f}s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_bytes = export_onnx(model, Path(tmp) / "model.onnx").read_bytes()
    max_diff = onnx_max_abs_diff(onnx_bytes, model, ids[te])
    if not max_diff <= 1e-5:
        raise RuntimeError(f"ONNX export differs from PyTorch by {max_diff:.2e} (> 1e-5); not registering")
    metrics["onnx_max_abs_diff"] = max_diff
    title = f"DeepFM on {data.source or 'impressions'}: {len(data):,} rows, held-out AUC {metrics['auc']:.3f}"
    files: dict[str, str | os.PathLike[str] | bytes] = {
        "model.onnx": onnx_bytes,
        "history.json": json.dumps(fit.history).encode(),
    }
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_curves(fit.history, Path(tmp) / "curves.png", title)
        buf.write(png.read_bytes())
    files["curves.png"] = buf.getvalue()
    metadata = {
        "kind": "deepfm",
        "fields": list(data.fields),
        "n_buckets": N_BUCKETS,
        "model_buckets": cfg.model_buckets,
        "config": config_dict(cfg),
        "source": data.source,
        "n_rows": len(data),
        "ctr": float(y.mean()),
        "split": (
            f"held-out: {'last' if data.time_ordered else 'random'} {cfg.test_fraction:.0%}; "
            f"validation: random {cfg.val_fraction:.0%} of the rest, seed {cfg.seed}"
        ),
        "inputs": {"ids": ["batch", len(data.fields)]},
        "output": "pctr: click probability [batch] (float32)",
        "stats": data.stats,
    }
    mv = registry.register(name, files, metadata=metadata, metrics=metrics, promote=promote)
    plot = None
    if plot_dir is not None:
        plot = Path(plot_dir) / f"{name}-v{mv.version}-curves.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(files["curves.png"])  # type: ignore[arg-type]
    log(
        f"registered {mv.tag}{' (production)' if promote else ''} in {registry.root} after "
        f"{time.perf_counter() - t_start:.0f}s; ONNX {len(onnx_bytes) / 2**20:.1f} MB, "
        f"ONNX vs PyTorch max |diff| {max_diff:.1e}"
    )
    return CTRTrainResult(
        version=mv,
        metrics=metrics,
        history=fit.history,
        onnx_max_abs_diff=max_diff,
        plot=plot,
        model=model,
        test_ids=ids[te],
        test_labels=y[te],
        test_pctr=p_test,
        extra={"split": (tr, va, te), "fit": fit},
    )
