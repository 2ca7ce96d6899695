"""Recommendation serving: candidates, one Redis round trip, one ONNX call, re-ranking.

A request for user ``u`` with recent items ``R`` (oldest first) goes through:

1. **Candidates**, all from worker memory, no I/O:
   co-visitation neighbours of ``R`` from the online model ("together with X");
   nearest items to the user's embedding ("similar to X"), found in the
   model's item matrix; the query is the user's trained embedding (the
   worker keeps the model's user matrix, 4 x dim bytes per user, so 1M users
   of a 96-dim model take 384 MB) averaged with a vector folded in from
   ``R``, so the last click moves the list at once;
   popular items of the category the user is browsing ("popular in C");
   and items new to the catalogue ("new item"). A user with no history gets
   the popular items (online popularity, topped up with the training set's).
2. **Features**, one round trip: a Lua script reads the user's embedding and
   purchase history, and every candidate's embedding, category and stock flag
   (``EVALSHA``, one command on the wire, whatever the number of candidates).
3. **Scoring**: one batched onnxruntime call over all candidates with an
   embedding; the online model's co-visitation score is added with weight
   ``online_weight``, so what the user did seconds ago counts at once. A
   user unknown to the model gets an embedding folded in from ``R`` (the
   mean, over ``R``, of the trained users who touched each item); items
   unknown to the model rank by their online score below the model's.
4. **Re-ranking**: drop what the user recently saw or already bought, drop
   out-of-stock SKUs (item hash field ``oos`` = 1), apply business boosts,
   keep at most ``max_per_category`` per category while the list can still
   be filled, and take the top ``k``, each with its reason code.

If Redis is down or slow (``timeout_s``), the answer comes from the online
model alone and is marked with the online model's name; the next attempt is
made after ``retry_after_s``. A model is swapped atomically: a request holds
the :class:`LoadedModel` it started with.

Redis layout (``P`` = key prefix, ``T`` = model tag ``name:vN``)::

    P vec:T:u:<user_id>   float32 bytes of the user's embedding
    P vec:T:i:<item_id>   float32 bytes of the item's embedding
    P user:<user_id>      hash; field ``bought`` = comma-separated item ids
    P item:<item_id>      hash; fields ``category``, ``oos``

Examples
--------
>>> parse_boosts("category:Comedy=1.5, item:i9=2")
{('category', 'Comedy'): 1.5, ('item', 'i9'): 2.0}
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.recommender import CoVisitationRecommender
from schemas.events import RecItem, Recommendation
from serving.registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

# KEYS: user vector, user hash, then per item: vector key, item hash key.
# Returns {user vector, bought, vec1, cat1, oos1, vec2, ...}; false for a missing value.
_FETCH_LUA = """
local out = {redis.call('GET', KEYS[1]), redis.call('HGET', KEYS[2], 'bought')}
local n = (#KEYS - 2) / 2
for j = 1, n do
  out[#out + 1] = redis.call('GET', KEYS[2 + j])
  local meta = redis.call('HMGET', KEYS[2 + n + j], 'category', 'oos')
  out[#out + 1] = meta[1]
  out[#out + 1] = meta[2]
end
return out
"""

#: Reason codes (the part before the colon).
REASONS = ("together_with", "similar_to", "popular_in", "new_item", "popular", "for_you")


def parse_boosts(spec: str) -> dict[tuple[str, str], float]:
    """``"category:C=1.5,item:I=2"`` → ``{("category", "C"): 1.5, ("item", "I"): 2.0}``."""
    out: dict[tuple[str, str], float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            target, factor = part.rsplit("=", 1)
            kind, name = target.split(":", 1)
            if kind not in ("category", "item"):
                raise ValueError(kind)
            out[(kind, name)] = float(factor)
        except ValueError:
            raise ValueError(
                f"bad boost {part!r}: expected category:<name>=<factor> or item:<id>=<factor>"
            ) from None
    return out


class LoadedModel:
    """One registry version, verified and ready to score.

    Holds the ONNX session, and the item matrix used for nearest-neighbour
    candidates and for folding in unknown users (loaded from the registry,
    not Redis: it is shared by every request).
    """

    def __init__(self, mv: ModelVersion, registry: ModelRegistry) -> None:
        import onnxruntime as ort

        self.version = mv
        self.tag = mv.tag
        onnx_bytes = registry.read_verified(mv, "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.item_ids: list[str] = registry.load_json(mv, "items.json")
        self.item_index = {item: k for k, item in enumerate(self.item_ids)}
        self.item_vecs = registry.load_array(mv, "item_vectors.npy").astype(np.float32)
        self.fold_vecs = registry.load_array(mv, "item_fold.npy").astype(np.float32)
        self.retrieval = registry.load_array(mv, "item_retrieval.npy").astype(np.float32)
        self.user_index = {u: k for k, u in enumerate(registry.load_json(mv, "users.json"))}
        self.user_vecs = registry.load_array(mv, "user_vectors.npy").astype(np.float32)
        counts = np.bincount(registry.load_array(mv, "train_items.npy"), minlength=len(self.item_ids))
        self.popular = [self.item_ids[j] for j in np.argsort(-counts, kind="stable")[:200].tolist()]
        if not (len(self.item_ids) == len(self.item_vecs) == len(self.fold_vecs) == len(self.retrieval)):
            raise ValueError(f"{mv.tag}: item files disagree in length")
        self.dim = int(self.item_vecs.shape[1])
        norms = np.linalg.norm(self.item_vecs, axis=1, keepdims=True)
        self.item_unit = self.item_vecs / np.maximum(norms, 1e-9)

    def score(self, user_vec: np.ndarray, item_vecs: np.ndarray) -> np.ndarray:
        """Probabilities of ``item_vecs`` ``[N, dim]`` for one user vector (one onnxruntime call)."""
        users = np.broadcast_to(user_vec.astype(np.float32), item_vecs.shape)
        (out,) = self.session.run(["score"], {"user": np.ascontiguousarray(users), "item": item_vecs})
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def fold_in(self, recent: Sequence[str]) -> np.ndarray | None:
        """A user vector for someone the model never saw, from the items they touched (None if none known)."""
        rows = [self.item_index[i] for i in recent if i in self.item_index]
        if not rows:
            return None
        return self.fold_vecs[rows[-10:]].mean(axis=0)

    def query(self, user_id: str, recent: Sequence[str]) -> np.ndarray | None:
        """The retrieval vector of a user: trained embedding and/or fold-in of the recent items."""
        row = self.user_index.get(user_id)
        trained = self.user_vecs[row] if row is not None else None
        folded = self.fold_in(recent)
        if trained is None:
            return folded
        return trained if folded is None else 0.5 * (trained + folded)

    def neighbours(self, query: np.ndarray, n: int, skip: set[str]) -> list[str]:
        """The ``n`` items whose retrieval score for the user vector ``query`` is highest."""
        scores = self.retrieval @ query
        take = min(len(scores), n + len(skip))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top])]
        out = [self.item_ids[j] for j in top.tolist() if self.item_ids[j] not in skip]
        return out[:n]

    def most_similar(self, item: str, recent: Sequence[str]) -> str | None:
        """The recent item whose embedding is closest (cosine) to ``item``'s."""
        j = self.item_index.get(item)
        rows = [(r, self.item_index[r]) for r in recent if r in self.item_index]
        if j is None or not rows:
            return None
        sims = self.item_unit[[k for _, k in rows]] @ self.item_unit[j]
        return rows[int(np.argmax(sims))][0]


@dataclass(frozen=True)
class Candidate:
    item_id: str
    online: float  # online-model score (co-visitation share; 0 if none)
    reason: str


class Recommender:
    """Serves top-K lists from the production model (if any) and the online model."""

    def __init__(
        self,
        online: CoVisitationRecommender,
        redis_url: str,
        prefix: str = "ss:",
        k: int = 10,
        n_neighbours: int = 50,
        max_per_category: int = 3,
        boosts: dict[tuple[str, str], float] | None = None,
        timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
        online_name: str = "covis-biasedmf-v1",
        metrics: Any = None,
        online_weight: float = 0.3,
    ) -> None:
        import redis.asyncio as aioredis

        self.online = online
        self.prefix = prefix
        self.k = k
        self.n_neighbours = n_neighbours
        self.max_per_category = max_per_category
        self.boosts = boosts or {}
        self.online_name = online_name
        self.online_weight = online_weight
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.client = aioredis.Redis.from_url(
            redis_url, decode_responses=False, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._fetch = self.client.register_script(_FETCH_LUA)
        self._down_until = 0.0
        self.round_trips = 0

    async def close(self) -> None:
        await self.client.aclose()

    # -- candidates ---------------------------------------------------------------
    def candidates(
        self, user_id: str, recent: Sequence[str], skip: set[str], model: LoadedModel | None
    ) -> list[Candidate]:
        """Candidate items with their online score and reason, best source first (see module docstring)."""
        online = self.online
        out: dict[str, Candidate] = {}
        for item, (share, source) in online.covis_candidates(recent, skip).items():
            out[item] = Candidate(item, share, f"together_with:{source}")
        query = model.query(user_id, recent) if model is not None else None
        if model is not None and query is not None:
            for item in model.neighbours(query, self.n_neighbours, skip | out.keys()):
                src = model.most_similar(item, recent[-5:])
                out[item] = Candidate(item, 0.0, f"similar_to:{src}" if src else "for_you")
        if recent:
            cat = online.item_category.get(recent[-1])
            if cat is not None:
                for item in online.popular_in(cat)[: self.k]:
                    if item not in skip and item not in out:
                        out[item] = Candidate(item, 0.0, f"popular_in:{cat}")
        for item in list(online.new_items)[-self.k :]:
            if item not in skip and item not in out:
                out[item] = Candidate(item, 0.0, "new_item")
        popular = online.popular()
        if model is not None:
            popular = [*popular, *model.popular]
        for item in popular:
            if len(out) >= 2 * self.k + self.n_neighbours:
                break
            if item not in skip and item not in out:
                out[item] = Candidate(item, 0.0, "popular")
        return list(out.values())

    # -- serving ------------------------------------------------------------------
    async def recommend(
        self,
        user_id: str,
        recent: Sequence[str],
        k: int | None = None,
        event_id: str = "",
        source_ts: float | None = None,
    ) -> Recommendation:
        """The top-``k`` list for ``user_id`` (``recent``: the user's items, oldest first)."""
        k = k or self.k
        model = self.model
        recent = list(recent)
        skip = set(recent[-2 * self.online.window :])
        if model is None or time.monotonic() < self._down_until:
            return self._online_only(user_id, recent, k, event_id, source_ts)
        cands = self.candidates(user_id, recent, skip, model)
        p = self.prefix
        keys = [f"{p}vec:{model.tag}:u:{user_id}", f"{p}user:{user_id}"]
        keys += [f"{p}vec:{model.tag}:i:{c.item_id}" for c in cands]
        keys += [f"{p}item:{c.item_id}" for c in cands]
        t0 = time.perf_counter()
        try:
            raw = await self._fetch(keys=keys)
        except Exception as exc:  # redis down, slow or failing: serve from the online model
            self._down_until = time.monotonic() + self.retry_after_s
            if self.metrics is not None:
                self.metrics.redis_errors.labels(op="recs_read").inc()
            log.warning("recommendation features unavailable (%s); online model only", exc)
            return self._online_only(user_id, recent, k, event_id, source_ts)
        self.round_trips += 1
        if self.metrics is not None:
            self.metrics.redis_seconds.labels(op="recs_read").observe(time.perf_counter() - t0)
        user_raw, bought_raw = raw[0], raw[1]
        bought = set(bought_raw.decode().split(",")) if bought_raw else set()
        if user_raw and len(user_raw) == 4 * model.dim:
            user_vec: np.ndarray | None = np.frombuffer(user_raw, dtype=np.float32)
        else:
            user_vec = model.fold_in(recent)
        kept: list[tuple[Candidate, str | None, bytes | None]] = []
        for j, c in enumerate(cands):
            vec, cat, oos = raw[2 + 3 * j], raw[3 + 3 * j], raw[4 + 3 * j]
            if c.item_id in bought or oos == b"1":
                continue
            kept.append((c, cat.decode() if cat else self.online.item_category.get(c.item_id), vec))
        scores = np.zeros(len(kept), dtype=np.float32)
        known = [j for j, (_, _, vec) in enumerate(kept) if vec and len(vec) == 4 * model.dim]
        if user_vec is not None and known:
            t1 = time.perf_counter()
            mat = np.frombuffer(b"".join(kept[j][2] for j in known), dtype=np.float32)  # type: ignore[misc]
            probs = model.score(user_vec, mat.reshape(len(known), model.dim))
            if self.metrics is not None:
                self.metrics.model_seconds.labels(model="recs").observe(time.perf_counter() - t1)
            scores[known] = probs
            floor = float(probs.min()) if len(probs) else 0.0
        else:
            floor = 0.0
        known_set = set(known)
        ranked: list[tuple[float, str, str, str | None]] = []
        for j, (c, cat, _) in enumerate(kept):
            # Items the model cannot score rank below those it can, by their online score.
            s = float(scores[j]) if j in known_set else floor * min(c.online, 1.0) * 0.99
            s += self.online_weight * c.online
            s *= self.boosts.get(("item", c.item_id), 1.0) * (
                self.boosts.get(("category", cat), 1.0) if cat else 1.0
            )
            reason = c.reason
            if reason == "popular" and user_vec is not None and j in known_set:
                reason = "for_you"
            ranked.append((s, c.item_id, reason, cat))
        ranked.sort(key=lambda r: -r[0])
        items = _diversify(ranked, k, self.max_per_category)
        now = time.time()
        return Recommendation(
            event_id=event_id,
            user_id=user_id,
            items=[RecItem(item_id=i, score=round(s, 6), reason=r) for s, i, r, _ in items],
            model=model.tag,
            source_ts=now if source_ts is None else source_ts,
            generated_at=now,
        )

    def _online_only(
        self, user_id: str, recent: list[str], k: int, event_id: str, source_ts: float | None
    ) -> Recommendation:
        scored = self.online.recommend(user_id, recent, k)
        now = time.time()
        return Recommendation(
            event_id=event_id,
            user_id=user_id,
            items=[RecItem(item_id=s.item_id, score=round(s.score, 6), reason=s.reason) for s in scored],
            model=self.online_name,
            source_ts=now if source_ts is None else source_ts,
            generated_at=now,
        )


def _diversify(
    ranked: list[tuple[float, str, str, str | None]], k: int, max_per_category: int
) -> list[tuple[float, str, str, str | None]]:
    """Top ``k`` by score, at most ``max_per_category`` per category (relaxed if the list would be short)."""
    out: list[tuple[float, str, str, str | None]] = []
    per_cat: dict[str, int] = {}
    held: list[tuple[float, str, str, str | None]] = []
    for row in ranked:
        if len(out) >= k:
            break
        cat = row[3]
        if cat is not None and per_cat.get(cat, 0) >= max_per_category:
            held.append(row)
            continue
        out.append(row)
        if cat is not None:
            per_cat[cat] = per_cat.get(cat, 0) + 1
    if len(out) < k:
        out += held[: k - len(out)]
        out.sort(key=lambda r: -r[0])
    return out


class ModelWatcher:
    """Polls the registry's production alias and hot-swaps :attr:`Recommender.model`.

    Loading (sha256 check, ONNX session, item matrices) runs in a thread, so
    requests keep being served by the old model until the new one is ready.
    A version that fails verification is refused, logged, and not retried.
    """

    def __init__(self, recommender: Recommender, registry: ModelRegistry, name: str, metrics: Any = None):
        self.recommender = recommender
        self.registry = registry
        self.name = name
        self.metrics = metrics
        self.refused: dict[int, str] = {}
        self.swaps = 0

    async def check(self) -> bool:
        """Load the production version if it changed; True if a new model was swapped in."""
        try:
            version = self.registry.production_version(self.name)
        except Exception as exc:
            log.warning("model registry unreadable: %s", exc)
            return False
        current = self.recommender.model
        if version is None or version in self.refused:
            return False
        if current is not None and current.version.version == version:
            return False
        try:
            mv = self.registry.get(self.name, version)
            loaded = await asyncio.to_thread(LoadedModel, mv, self.registry)
        except Exception as exc:
            self.refused[version] = str(exc)
            if self.metrics is not None:
                self.metrics.model_load_errors.labels(model=self.name).inc()
            log.error("refusing model %s v%s: %s", self.name, version, exc)
            return False
        self.recommender.model = loaded
        self.swaps += 1
        if self.metrics is not None:
            self.metrics.model_version.labels(model=self.name).set(version)
        log.warning("serving model %s", loaded.tag)
        return True

    def status(self) -> dict[str, Any]:
        m = self.recommender.model
        return {
            "model": m.tag if m else None,
            "metrics": m.version.metrics if m else {},
            "refused": {str(v): why for v, why in self.refused.items()},
        }


def model_info(model: LoadedModel | None) -> str:
    """One line describing the serving model, for logs."""
    if model is None:
        return "no trained model (online model only)"
    return f"{model.tag} ({len(model.item_ids)} items, dim {model.dim}, {json.dumps(model.version.metrics)})"
