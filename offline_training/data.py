"""Interaction datasets for offline training, and the NCF evaluation split.

One loader serves both sources: the Parquet event lake written by the
archive agent, and MovieLens ``u.data`` files (user, item, rating, unix time).
Both become an :class:`Interactions` table of dense integer ids with the
original string ids kept beside them, so that exported embeddings are keyed
by the ids the stream uses.

The split is the one of He et al. 2017 (NCF): for every user, the latest
interaction is held out as the test item and ranked against 99 items the user
never touched, sampled with a fixed seed. Everything else is training data.

This module needs numpy and pyarrow only; torch lives in :mod:`offline_training.ncf`.

Examples
--------
>>> inter = Interactions.from_arrays(["u1", "u1", "u2", "u2", "u2"], ["a", "b", "a", "c", "b"],
...                                  [1.0, 2.0, 1.0, 2.0, 3.0])
>>> inter.n_users, inter.n_items
(2, 3)
>>> split = leave_one_out(inter, n_negatives=1, seed=0)
>>> [inter.item_ids[i] for i in split.test_items], [inter.item_ids[i] for i in split.test_negatives[:, 0]]
(['b'], ['c'])
>>> hit_rate_ndcg(np.array([[0.9, 0.1], [0.2, 0.8]]), k=1)
(0.5, 0.5)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Event types that count as an implicit positive interaction.
POSITIVE_TYPES = ("view", "click", "add_to_cart", "order")


@dataclass(frozen=True)
class Interactions:
    """User-item interactions with dense ids (``users[k]`` interacted with ``items[k]`` at ``ts[k]``)."""

    users: np.ndarray  # int32
    items: np.ndarray  # int32
    ts: np.ndarray  # float64
    user_ids: list[str]
    item_ids: list[str]
    item_category: dict[str, str]

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_arrays(
        cls,
        users: Sequence[str],
        items: Sequence[str],
        ts: Sequence[float],
        item_category: dict[str, str] | None = None,
    ) -> Interactions:
        """Build from parallel sequences of string ids and timestamps (order is kept)."""
        if not (len(users) == len(items) == len(ts)):
            raise ValueError("users, items and ts must have the same length")
        if len(users) == 0:
            raise ValueError("no interactions to train on")
        u_codes, u_ids = _encode(users)
        i_codes, i_ids = _encode(items)
        return cls(
            users=u_codes,
            items=i_codes,
            ts=np.asarray(ts, dtype=np.float64),
            user_ids=u_ids,
            item_ids=i_ids,
            item_category=dict(item_category or {}),
        )


def _encode(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    index: dict[str, int] = {}
    codes = np.empty(len(values), dtype=np.int32)
    for k, v in enumerate(values):
        code = index.get(v)
        if code is None:
            code = index[v] = len(index)
        codes[k] = code
    return codes, list(index)


def load_movielens(path: str | os.PathLike[str]) -> Interactions:
    """Read MovieLens 100K (``u.data``, or the folder holding it; ``u.item`` genres become categories).

    Every rating is an implicit positive, as in the NCF paper. Ids become
    ``ml-u<user>`` and ``ml-i<item>``, as ``shopstream replay --movielens``
    names them, so a model trained here serves the replayed stream.
    """
    p = Path(path)
    data = p / "u.data" if p.is_dir() else p
    if not data.exists():
        raise FileNotFoundError(f"{data}: no MovieLens u.data here (give the movielens-100k folder)")
    raw = np.loadtxt(data, dtype=np.int64, ndmin=2)
    if raw.shape[1] < 4:
        raise ValueError(f"{data}: expected 'user item rating timestamp' per line")
    categories: dict[str, str] = {}
    item_file = data.parent / "u.item"
    genre_file = data.parent / "u.genre"
    if item_file.exists() and genre_file.exists():
        genres = [ln.split("|")[0] for ln in genre_file.read_text("latin-1").splitlines() if "|" in ln]
        for line in item_file.read_text("latin-1").splitlines():
            parts = line.split("|")
            flags = parts[5:]
            if len(parts) > 5 and len(flags) == len(genres):
                first = next((g for g, f in zip(genres, flags, strict=True) if f == "1"), "unknown")
                categories[f"ml-i{parts[0]}"] = first
    return Interactions.from_arrays(
        [f"ml-u{u}" for u in raw[:, 0]],
        [f"ml-i{i}" for i in raw[:, 1]],
        raw[:, 3].astype(float).tolist(),
        categories,
    )


def load_lake(root: str | os.PathLike[str], topics: Sequence[str]) -> Interactions:
    """Item interactions (views, clicks, carts, order lines) of ``topics`` from the Parquet event lake."""
    from schemas.lake import read_lake

    values: list[bytes] = []
    for topic in topics:
        values += read_lake(root, topic).column("value").to_pylist()
    if not values:
        raise ValueError(f"{root}: the event lake has no rows for {', '.join(topics)}")
    return from_payloads(values)


def from_payloads(payloads: Iterable[bytes]) -> Interactions:
    """Interactions from raw clickstream/order JSON events (the lake's payloads, or a replay's values).

    Item events (view, click, add to cart) and placed order lines count;
    everything else is skipped. Sorted by time.
    """
    import msgspec

    users: list[str] = []
    items: list[str] = []
    ts: list[float] = []
    cats: dict[str, str] = {}
    decode = msgspec.json.Decoder().decode
    for payload in payloads:
        ev = decode(payload)
        kind = ev.get("type")
        user = ev.get("user_id")
        if not user:
            continue
        pairs: list[tuple[str, str | None]] = []
        if kind in POSITIVE_TYPES and ev.get("item_id"):
            pairs.append((str(ev["item_id"]), ev.get("category")))
        elif kind == "order" and ev.get("status", "placed") == "placed":
            pairs += [(str(line["sku"]), line.get("category")) for line in ev.get("lines", [])]
        for item, cat in pairs:
            users.append(str(user))
            items.append(item)
            ts.append(float(ev.get("ts", 0.0)))
            if cat:
                cats[item] = str(cat)
    if not users:
        raise ValueError("no item interactions (view, click, add_to_cart, order) among the events")
    order = sorted(range(len(ts)), key=ts.__getitem__)
    return Interactions.from_arrays(
        [users[k] for k in order], [items[k] for k in order], [ts[k] for k in order], cats
    )


def load_interactions(path: str | os.PathLike[str], topics: Sequence[str] = ()) -> Interactions:
    """MovieLens files or an event lake folder, whichever ``path`` holds."""
    p = Path(path)
    if p.name == "u.data" or (p / "u.data").exists():
        return load_movielens(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: neither a MovieLens folder nor an event lake")
    if not topics:
        raise ValueError(f"{p}: not a MovieLens folder; give the lake topics to read (e.g. shop.clicks.v1)")
    return load_lake(p, topics)


@dataclass(frozen=True)
class Split:
    """The NCF leave-one-out split.

    ``train_users``/``train_items`` are the training positives (deduplicated);
    ``test_items[u]`` is user ``u``'s held-out item and ``test_negatives[u]``
    its sampled negatives. ``candidates()`` puts the test item in column 0.
    """

    train_users: np.ndarray
    train_items: np.ndarray
    train_ts: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    test_negatives: np.ndarray
    n_users: int
    n_items: int

    def candidates(self) -> np.ndarray:
        """``[n_test, 1 + n_negatives]`` item ids per test user, the held-out item first."""
        return np.concatenate([self.test_items[:, None], self.test_negatives], axis=1)

    def user_positives(self) -> list[set[int]]:
        """Training items per user."""
        out: list[set[int]] = [set() for _ in range(self.n_users)]
        for u, i in zip(self.train_users.tolist(), self.train_items.tolist(), strict=True):
            out[u].add(i)
        return out


def leave_one_out(inter: Interactions, n_negatives: int = 99, seed: int = 0) -> Split:
    """Hold out each user's latest interaction; sample ``n_negatives`` untouched items for it.

    Ties on the latest timestamp go to the interaction that comes last in the
    input. Users with a single interaction, or too few untouched items to
    sample from, keep everything for training and are not tested. Duplicate
    (user, item) pairs in training are merged.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((np.arange(len(inter)), inter.ts, inter.users))  # by user, then time, then position
    users = inter.users[order]
    items = inter.items[order]
    ts = inter.ts[order]
    last = np.ones(len(users), dtype=bool)
    last[:-1] = users[:-1] != users[1:]
    counts = np.bincount(users, minlength=inter.n_users)
    touched: list[set[int]] = [set() for _ in range(inter.n_users)]
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        touched[u].add(i)
    room = np.array([inter.n_items - len(t) >= n_negatives for t in touched], dtype=bool)
    is_test = last & (counts[users] > 1) & room[users]
    if not is_test.any():
        raise ValueError(
            f"no user can be tested: each needs 2+ interactions and {n_negatives} untouched items "
            f"({inter.n_items} items in all)"
        )
    test_users = users[is_test]
    test_items = items[is_test]
    negs = np.empty((len(test_users), n_negatives), dtype=np.int32)
    for row, u in enumerate(test_users.tolist()):
        seen = touched[u]
        picked: list[int] = []
        chosen: set[int] = set()
        while len(picked) < n_negatives:
            for j in rng.integers(0, inter.n_items, size=2 * n_negatives).tolist():
                if j not in seen and j not in chosen:
                    chosen.add(j)
                    picked.append(j)
                    if len(picked) == n_negatives:
                        break
        negs[row] = picked
    keep = ~is_test
    pairs = np.unique(np.stack([users[keep], items[keep]], axis=1), axis=0, return_index=True)
    uniq, first = pairs
    return Split(
        train_users=uniq[:, 0].astype(np.int32),
        train_items=uniq[:, 1].astype(np.int32),
        train_ts=ts[keep][first],
        test_users=test_users.astype(np.int32),
        test_items=test_items.astype(np.int32),
        test_negatives=negs,
        n_users=inter.n_users,
        n_items=inter.n_items,
    )


def validation_split(split: Split, n_negatives: int = 99, seed: int = 1) -> Split:
    """Hold out each user's latest *training* interaction for model selection.

    The result trains on what is left and tests on the held-out ones, so
    early stopping never looks at ``split``'s test items.
    """
    inter = Interactions(
        users=split.train_users,
        items=split.train_items,
        ts=split.train_ts,
        user_ids=[str(u) for u in range(split.n_users)],
        item_ids=[str(i) for i in range(split.n_items)],
        item_category={},
    )
    return leave_one_out(inter, n_negatives=n_negatives, seed=seed)


def hit_rate_ndcg(scores: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k when column 0 of ``scores`` is the held-out item.

    Ties count against the held-out item (its rank is the number of
    candidates scoring at least as high, minus one), so a constant scorer
    gets no credit.
    """
    s = np.asarray(scores, dtype=np.float64)
    rank = (s[:, 1:] >= s[:, :1]).sum(axis=1)
    hit = rank < k
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return float(hit.mean()), float(ndcg.mean())
