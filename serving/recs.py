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
model alone and is marked with the online model's name. After ``trip_after``
such failures with no success between them (:class:`Breaker`), Redis is left
alone for ``retry_after_s``: a Redis that is down costs no timeouts meanwhile,
while one late reply (a busy moment on the worker's own loop counts against
the timeout too) costs only the lists of its own batch. A model is swapped
atomically: a request holds the :class:`LoadedModel` it started with.

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
import itertools
import json
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError

from online_models.recommender import CoVisitationRecommender
from schemas.events import RecItem, Recommendation
from serving.clickstream import online_recommendation, recommendation
from serving.registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

# KEYS: user vector, user hash. ARGV: vector key prefix, item hash prefix, then the
# item ids joined by "\n" (one argument: encoding 100 separate keys costs more
# client CPU than the whole round trip). Returns {user vector, bought, vec1,
# cat1, oos1, vec2, ...}; false for a missing value. The item keys are built
# server-side, so this needs a single Redis node (or hash-tagged keys in a cluster).
_FETCH_LUA = r"""
local out = {redis.call('GET', KEYS[1]), redis.call('HGET', KEYS[2], 'bought')}
local vp, ip = ARGV[1], ARGV[2]
for id in string.gmatch(ARGV[3], '[^\n]+') do
  out[#out + 1] = redis.call('GET', vp .. id)
  local meta = redis.call('HMGET', ip .. id, 'category', 'oos')
  out[#out + 1] = meta[1]
  out[#out + 1] = meta[2]
end
return out
"""


class Breaker:
    """Opens after ``trip_after`` failures with no success between them, for ``open_s``.

    A success resets the count. Failures of reads that were already in flight
    when it opened neither extend the open spell nor open it again; after the
    spell, one more failure opens it again at once.

    >>> now = [0.0]
    >>> b = Breaker(trip_after=3, open_s=1.0, clock=lambda: now[0])
    >>> [b.failed() for _ in range(3)], b.open
    ([False, False, True], True)
    >>> now[0] = 0.5; b.failed()   # a read from before it opened: no new spell
    False
    >>> now[0] = 1.5; b.open
    False
    >>> b.failed(), b.open          # still failing: open again at once
    (True, True)
    >>> now[0] = 3.0; b.succeeded(); b.failed(), b.open
    (False, False)
    """

    def __init__(self, trip_after: int = 3, open_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if trip_after < 1:
            raise ValueError(f"trip_after must be >= 1, got {trip_after}")
        self.trip_after = trip_after
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self.clock() < self._open_until

    def failed(self) -> bool:
        """Count a failure; True when this one opened the breaker."""
        self.failures += 1
        if self.failures >= self.trip_after and not self.open:
            self._open_until = self.clock() + self.open_s
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0


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
        return self.score_pairs(np.broadcast_to(user_vec.astype(np.float32), item_vecs.shape), item_vecs)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Probabilities of row-aligned (user vector, item vector) pairs, one onnxruntime call."""
        feed = {"user": np.ascontiguousarray(users, dtype=np.float32), "item": np.ascontiguousarray(items)}
        (out,) = self.session.run(["score"], feed)
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def fold_in(self, recent: Sequence[str]) -> np.ndarray | None:
        """A user vector for someone the model never saw, from the items they touched (None if none known)."""
        rows = [self.item_index[i] for i in recent if i in self.item_index]
        if not rows:
            return None
        return self.fold_vecs[rows[-10:]].mean(axis=0)

    def query(self, user_id: str, recent: Sequence[str]) -> np.ndarray | None:
        """The retrieval vector of a user: trained embedding and/or fold-in of the recent items."""
        return self.user_query(user_id, self.fold_in(recent))

    def user_query(self, user_id: str, folded: np.ndarray | None) -> np.ndarray | None:
        """:meth:`query` from a fold-in already computed (None: no recent item known to the model)."""
        row = self.user_index.get(user_id)
        trained = self.user_vecs[row] if row is not None else None
        if trained is None:
            return folded
        return trained if folded is None else 0.5 * (trained + folded)

    def neighbours(self, query: np.ndarray, n: int, skip: set[str]) -> list[str]:
        """The ``n`` items whose retrieval score for the user vector ``query`` is highest."""
        scores = self.retrieval @ query
        size = len(scores)
        take = min(size, n + len(skip))
        top = np.argpartition(scores, size - take)[size - take :]
        top = top[np.argsort(-scores[top])]
        out = [i for i in map(self.item_ids.__getitem__, top.tolist()) if i not in skip]
        return out[:n]

    def most_similar(self, items: Sequence[str], recent: Sequence[str]) -> list[str | None]:
        """For each of ``items``, the recent item whose embedding is closest (cosine); None if unknown."""
        index = self.item_index
        known = [r for r in recent if r in index]
        if not known:
            return [None] * len(items)
        rows = [index.get(i, 0) for i in items]
        sims = self.item_unit[rows] @ self.item_unit[[index[r] for r in known]].T
        best = sims.argmax(axis=1).tolist()
        return [known[b] if i in index else None for i, b in zip(items, best, strict=True)]


_score = operator.itemgetter(0)


#: Candidates of one request: item id -> (online-model score, reason code), best source first.
#: The online score is the item's co-visitation share (0 if none). Plain tuples: a request
#: has ~70 candidates, and building an object for each cost more than ranking them.
Candidates = dict[str, tuple[float, str]]


@dataclass(slots=True)
class RecRequest:
    """One list to compute: for ``user_id`` with ``recent`` items (oldest first)."""

    user_id: str
    recent: list[str]
    k: int | None = None
    event_id: str = ""
    source_ts: float | None = None


@dataclass(slots=True)
class _Plan:
    req: RecRequest
    cands: Candidates
    keys: list[str]
    args: list[str]
    folded: np.ndarray | None = None  # the model's fold-in of the recent items


@dataclass(slots=True)
class _Parsed:
    req: RecRequest
    kept: list[tuple[str, float, str, str | None]]  # (item, online score, reason, category)
    known: list[int]  # indexes into kept of the candidates the model can score
    mat: np.ndarray  # their vectors, [len(known), dim]
    user_vec: np.ndarray | None
    probs: np.ndarray | None = None

    @property
    def scorable(self) -> bool:
        return self.user_vec is not None and bool(self.known)


class Recommender:
    """Serves top-K lists from the production model (if any) and the online model."""

    def __init__(
        self,
        online: CoVisitationRecommender,
        redis_url: str,
        prefix: str = "ss:",
        k: int = 10,
        n_neighbours: int = 30,
        n_covis: int = 30,
        max_per_category: int = 3,
        boosts: dict[tuple[str, str], float] | None = None,
        timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
        trip_after: int = 3,
        metrics: Any = None,
        online_weight: float = 0.3,
    ) -> None:
        import redis.asyncio as aioredis

        self.online = online
        self.prefix = prefix
        self.k = k
        self.n_neighbours = n_neighbours
        self.n_covis = n_covis
        self.max_per_category = max_per_category
        self.boosts = boosts or {}
        self.online_weight = online_weight
        self.breaker = Breaker(trip_after, retry_after_s)
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.client = aioredis.Redis.from_url(
            redis_url, decode_responses=False, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._fetch = self.client.register_script(_FETCH_LUA)
        self.round_trips = 0

    async def close(self) -> None:
        await self.client.aclose()

    # -- candidates ---------------------------------------------------------------
    def candidates(
        self, user_id: str, recent: Sequence[str], skip: set[str], model: LoadedModel | None
    ) -> Candidates:
        """Candidate items with their online score and reason, best source first (see module docstring)."""
        folded = model.fold_in(recent) if model is not None else None
        return self._candidates(user_id, recent, skip, model, folded)

    def _candidates(
        self,
        user_id: str,
        recent: Sequence[str],
        skip: set[str],
        model: LoadedModel | None,
        folded: np.ndarray | None,
    ) -> Candidates:
        online = self.online
        scores, source = online.covis_scores(recent, skip)
        covis = list(scores)
        if len(covis) > self.n_covis:
            # Best first, ties in their original order (as heapq.nlargest would).
            covis = sorted(covis, key=scores.__getitem__, reverse=True)[: self.n_covis]
        out: Candidates = {item: (scores[item], f"together_with:{source[item]}") for item in covis}
        query = model.user_query(user_id, folded) if model is not None else None
        if model is not None and query is not None:
            near = model.neighbours(query, self.n_neighbours, skip | out.keys())
            for item, src in zip(near, model.most_similar(near, recent[-5:]), strict=True):
                out[item] = (0.0, f"similar_to:{src}" if src else "for_you")
        if recent:
            cat = online.item_category.get(recent[-1])
            if cat is not None:
                reason = f"popular_in:{cat}"
                for item in online.popular_in(cat)[: self.k]:
                    if item not in skip and item not in out:
                        out[item] = (0.0, reason)
        new_items = online.new_items
        for item in itertools.islice(new_items, max(0, len(new_items) - self.k), None):
            if item not in skip and item not in out:
                out[item] = (0.0, "new_item")
        full = self.k + self.n_neighbours + self.n_covis // 2
        popular = online.popular()
        for item in itertools.chain(popular, model.popular) if model is not None else popular:
            if len(out) >= full:
                break
            if item not in skip and item not in out:
                out[item] = (0.0, "popular")
        return out

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
        (rec,) = await self.recommend_many([RecRequest(user_id, list(recent), k, event_id, source_ts)])
        return rec

    async def recommend_many(self, requests: Sequence[RecRequest]) -> list[Recommendation]:
        """Lists for several requests: one Redis round trip and one onnxruntime call for all of them."""
        model = self.model
        if model is None or self.breaker.open:
            return [self._online_only(r) for r in requests]
        plans = [self._plan(r, model) for r in requests]
        t0 = time.perf_counter()
        try:
            raws = await self._fetch_all(plans, model)
        except Exception as exc:  # redis down, slow or failing: serve from the online model
            if self.metrics is not None:
                self.metrics.redis_errors.labels(op="recs_read").inc()
            if self.breaker.failed():
                log.warning(
                    "recommendation features unavailable (%d failures in a row, the last: %r); "
                    "online model only for %.1fs",
                    self.breaker.failures,
                    exc,
                    self.breaker.open_s,
                )
            else:
                log.debug("recommendation features: a read failed (%r); this list from the online model", exc)
            return [self._online_only(r) for r in requests]
        self.breaker.succeeded()
        self.round_trips += 1
        if self.metrics is not None:
            self.metrics.redis_seconds.labels(op="recs_read").observe(time.perf_counter() - t0)
        parsed = [self._parse(plan, raw, model) for plan, raw in zip(plans, raws, strict=True)]
        # One onnxruntime call over every (user, candidate) pair of every request.
        users = [
            np.broadcast_to(p.user_vec, (len(p.known), model.dim))
            for p in parsed
            if p.scorable and p.user_vec is not None
        ]
        if users:
            t1 = time.perf_counter()
            mats = [p.mat for p in parsed if p.scorable]
            probs = model.score_pairs(np.concatenate(users), np.concatenate(mats))
            if self.metrics is not None:
                self.metrics.model_seconds.labels(model="recs").observe(time.perf_counter() - t1)
            at = 0
            for p in parsed:
                if p.scorable:
                    p.probs = probs[at : at + len(p.known)]
                    at += len(p.known)
        return [self._rank(p, model) for p in parsed]

    def _plan(self, req: RecRequest, model: LoadedModel) -> _Plan:
        skip = set(req.recent[-2 * self.online.window :])
        folded = model.fold_in(req.recent)
        cands = self._candidates(req.user_id, req.recent, skip, model, folded)
        p = self.prefix
        keys = [f"{p}vec:{model.tag}:u:{req.user_id}", f"{p}user:{req.user_id}"]
        args = [f"{p}vec:{model.tag}:i:", f"{p}item:", "\n".join(cands)]
        return _Plan(req, cands, keys, args, folded)

    async def _fetch_all(self, plans: list[_Plan], model: LoadedModel) -> list[list[Any]]:
        """Run the fetch script for every plan in one pipelined round trip."""
        if len(plans) == 1:
            return [await self._fetch(keys=plans[0].keys, args=plans[0].args)]
        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=False)
            for plan in plans:
                pipe.evalsha(self._fetch.sha, 2, *plan.keys, *plan.args)
            try:
                out: list[list[Any]] = await pipe.execute()
                return out
            except NoScriptError:
                if attempt:
                    raise
                await self.client.script_load(_FETCH_LUA)
        raise AssertionError("unreachable")

    def _parse(self, plan: _Plan, raw: list[Any], model: LoadedModel) -> _Parsed:
        user_raw, bought_raw = raw[0], raw[1]
        bought = set(bought_raw.decode().split(",")) if bought_raw else set()
        if user_raw and len(user_raw) == 4 * model.dim:
            user_vec: np.ndarray | None = np.frombuffer(user_raw, dtype=np.float32)
        else:
            user_vec = plan.folded
        kept: list[tuple[str, float, str, str | None]] = []
        vecs: list[bytes] = []
        known: list[int] = []
        size = 4 * model.dim
        cats = self.online.item_category
        # raw[2:] holds (vector, category, out-of-stock flag) per candidate, in candidate order.
        if len(raw) != 2 + 3 * len(plan.cands):
            # An item id holding a newline was split by the script: no features for this list
            # (its candidates rank by their online score), rather than misread ones.
            raw = [*raw[:2], *([None] * (3 * len(plan.cands)))]
        rows = zip(plan.cands.items(), raw[2::3], raw[3::3], raw[4::3], strict=True)
        for (item, (online, reason)), vec, cat, oos in rows:
            if oos == b"1" or item in bought:
                continue
            if vec and len(vec) == size:
                known.append(len(kept))
                vecs.append(vec)
            kept.append((item, online, reason, cat.decode() if cat else cats.get(item)))
        mat = np.frombuffer(b"".join(vecs), dtype=np.float32).reshape(len(vecs), model.dim)
        return _Parsed(plan.req, kept, known, mat, user_vec)

    def _rank(self, p: _Parsed, model: LoadedModel) -> Recommendation:
        # The model's probability by index into p.kept; items it cannot score rank below
        # those it can, by their online score.
        by_row: list[float | None] = [None] * len(p.kept)
        floor = 0.0
        if p.probs is not None:
            probs = p.probs.tolist()
            for j, prob in zip(p.known, probs, strict=True):
                by_row[j] = prob
            floor = min(probs, default=0.0)
        boosts = self.boosts
        w = self.online_weight
        ranked: list[tuple[float, str, str, str | None]] = []
        for (item, online, reason, cat), s in zip(p.kept, by_row, strict=True):
            if s is None:
                s = floor * (online if online < 1.0 else 1.0) * 0.99
            elif reason == "popular":
                reason = "for_you"
            s += w * online
            if boosts:
                s *= boosts.get(("item", item), 1.0) * (boosts.get(("category", cat), 1.0) if cat else 1.0)
            ranked.append((s, item, reason, cat))
        ranked.sort(key=_score, reverse=True)  # stable: ties keep their candidate order
        req = p.req
        top = _diversify(ranked, req.k or self.k, self.max_per_category)
        items = [RecItem(item_id=i, score=round(s, 6), reason=r) for s, i, r, _ in top]
        return recommendation(req.user_id, items, model.tag, req.event_id, req.source_ts)

    async def recommend_many_or_online(
        self, requests: Sequence[RecRequest], path: str = "topic"
    ) -> list[Recommendation]:
        """:meth:`recommend_many`, or the online model's lists if it raises (a bug, not Redis: that
        falls back inside); raises only if the online model fails too. Batches never strand a request.

        ``path`` labels the batch's size in ``shopstream_recs_batch_size``.
        """
        if self.metrics is not None:
            self.metrics.recs_batch_size.labels(path=path).observe(len(requests))
        try:
            return await self.recommend_many(requests)
        except Exception as exc:
            log.error("batch of %d lists failed (%r); serving them from the online model", len(requests), exc)
            return [self._online_only(r) for r in requests]

    def _online_only(self, req: RecRequest) -> Recommendation:
        return online_recommendation(
            self.online, req.user_id, req.recent, req.k or self.k, req.event_id, req.source_ts
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


class MicroBatcher:
    """Computes recommendation requests in small batches: one Redis round trip and one model call each.

    ``add`` queues a request with an opaque ``token``; a batch is started when
    it holds ``max_batch`` requests (the caller then awaits :meth:`submit`) or
    when the oldest request has waited ``max_wait_s`` (:meth:`run`'s timer).
    Up to ``max_in_flight`` batches run at once, so the worker goes on with
    the next events (and the next batch's candidates) while a batch waits for
    its Redis round trip; with one at a time, the agent sat idle through every
    round trip of a full batch. ``deliver(recommendation, token)`` is awaited
    for each result, batch after batch in the order they were started; the
    stream acknowledges the event there, after its output is handed to the
    producer, so batching never commits an offset whose output is not out.

    A delivery that raises (or a batch whose lists cannot be computed even
    by the online fallback) stops the deliveries of the batches already
    started after it (their events stay unacknowledged) and is raised again
    by the next :meth:`submit` or :meth:`flush`; batches started after that
    deliver again.
    """

    def __init__(
        self,
        recommender: Recommender,
        deliver: Callable[[Recommendation, Any], Awaitable[None]],
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        max_in_flight: int = 2,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: expected at least 1")
        self.recommender = recommender
        self.deliver = deliver
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.pending: list[tuple[RecRequest, Any]] = []
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tail: asyncio.Task | None = None  # the batch started last; it finishes after those before it
        self._failed: BaseException | None = None
        self._queued = asyncio.Event()  # set when a request joins an empty queue
        self.batches = 0

    def add(self, req: RecRequest, token: Any) -> None:
        self.pending.append((req, token))
        if len(self.pending) == 1:
            self._queued.set()

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_batch

    async def submit(self) -> int:
        """Start computing everything queued (after a slot frees up); returns how many."""
        self._raise_failure()
        await self._slots.acquire()
        batch, self.pending = self.pending, []  # taken after the wait: as large as it got meanwhile
        if not batch:
            self._slots.release()
            return 0
        self._tail = asyncio.ensure_future(self._compute_and_deliver(batch, self._tail))
        return len(batch)

    async def flush(self) -> int:
        """Compute and deliver everything queued, and wait for every batch in flight; returns how many.

        A recorded delivery failure is raised, before the queue is touched if
        it happened earlier (the queued events then stay unacknowledged).
        """
        await self._wait_tail()
        n = await self.submit()
        await self._wait_tail()
        self._raise_failure()
        return n

    async def _wait_tail(self) -> None:
        if self._tail is not None:
            await asyncio.wait([self._tail])

    def _raise_failure(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            self._tail = None  # raised once: the batches started from now on deliver again
            raise failed

    async def _compute_and_deliver(
        self, batch: list[tuple[RecRequest, Any]], before: asyncio.Task | None
    ) -> bool:
        """Compute ``batch``, then deliver it after the batch ``before`` it; False if a delivery failed.

        Whatever happens, it returns only after ``before`` has: a batch that
        ends early must not let the one after it overtake the one before it.
        """
        try:
            computing: list[Recommendation] | BaseException
            try:
                computing = await self.recommender.recommend_many_or_online([req for req, _ in batch])
            except Exception as exc:  # the online fallback failed too
                computing = exc
            if before is not None:
                await asyncio.wait([before])  # deliveries keep the order the batches started in
                if before.cancelled():
                    raise RuntimeError("an earlier batch of lists was cancelled before its delivery")
                if not before.result():
                    return False  # deliver nothing after a failed delivery (it is recorded)
            if isinstance(computing, BaseException):
                raise computing
            self.batches += 1
            for rec, (_, token) in zip(computing, batch, strict=True):
                await self.deliver(rec, token)
            return True
        except Exception as exc:
            log.error("a batch of %d lists was not delivered: %r", len(batch), exc)
            self._failed = exc
            return False
        finally:
            self._slots.release()

    async def run(self, should_stop: Callable[[], bool]) -> None:
        """Start whatever waits, every ``max_wait_s``, until ``should_stop()`` or cancellation.

        While requests flow this is a ``max_wait_s`` timer, so a request waits
        half of it on average. With nothing queued it waits for the next
        request instead of waking every ``max_wait_s`` (a 2 ms timer cost an
        idle worker 500 wake-ups a second); the service running it cancels it
        when the worker stops. A failed delivery is raised here, and crashes
        the service running the timer (mode's ``Service.crash``), as it did
        when batches ran one at a time.
        """
        while not should_stop():
            if not self.pending:
                self._queued.clear()  # any earlier arrival has been taken
                await self._queued.wait()
            await asyncio.sleep(self.max_wait_s)
            if self.pending:
                await self.submit()


class RequestCoalescer:
    """Concurrent request/response lists share Redis round trips and model calls.

    Up to ``max_in_flight`` batches compute at once. A request that arrives
    while that many are computing waits for one of them to finish, then goes
    with every request that queued meanwhile (at most ``max_batch`` a batch).
    So a lightly loaded worker computes each request at once, as it arrives
    (two of them overlap their round trips), and batches form only under
    load, where they cut the CPU each list costs: the round trip, the
    onnxruntime call and the task switches are paid once per batch. A request
    whose caller went away (a cancelled HTTP handler) is left out of its
    batch. A batch that raises is answered by the online model, as the topic
    path's are (:meth:`Recommender.recommend_many_or_online`). With
    ``max_batch`` 1 every request is computed alone, directly.

    >>> class Echo:  # a stand-in for the Recommender
    ...     sizes = []
    ...     async def recommend_many_or_online(self, reqs, path):
    ...         self.sizes.append(len(reqs))
    ...         await asyncio.sleep(0.01)
    ...         return [r.user_id for r in reqs]
    >>> async def demo():
    ...     rc = RequestCoalescer(Echo(), max_in_flight=2)
    ...     alone = await rc.recommend(RecRequest("u0", []))
    ...     busy = []
    ...     for user in ("u1", "u2"):
    ...         busy.append(asyncio.ensure_future(rc.recommend(RecRequest(user, []))))
    ...         await asyncio.sleep(0.001)
    ...     # u1 and u2 are computing, one batch each
    ...     rest = await asyncio.gather(*(rc.recommend(RecRequest(f"u{n}", [])) for n in range(3, 7)))
    ...     return alone, await asyncio.gather(*busy), rest, Echo.sizes
    >>> asyncio.run(demo())  # u3..u6 arrive while both slots compute, and share the next batch
    ('u0', ['u1', 'u2'], ['u3', 'u4', 'u5', 'u6'], [1, 1, 1, 4])
    """

    def __init__(self, recommender: Any, max_batch: int = 16, max_in_flight: int = 2) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: expected at least 1")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: expected at least 1")
        self.recommender = recommender
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.pending: list[tuple[RecRequest, asyncio.Future[Recommendation]]] = []
        # Counted in the drain itself, in the same step as its last look at the queue: a request
        # queued after that look always starts a drain of its own.
        self.running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.requests = 0

    async def recommend(self, req: RecRequest) -> Recommendation:
        if self.max_batch == 1 or self._closed:  # closed: the worker is stopping; no more drains
            (rec,) = await self.recommender.recommend_many_or_online([req], "http")
            return rec  # type: ignore[no-any-return]
        fut: asyncio.Future[Recommendation] = asyncio.get_running_loop().create_future()
        self.pending.append((req, fut))
        if self.running < self.max_in_flight:
            self.running += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                live = [(req, fut) for req, fut in batch if not fut.done()]
                if not live:
                    continue
                try:
                    recs = await self.recommender.recommend_many_or_online([req for req, _ in live], "http")
                    for rec, (_, fut) in zip(recs, live, strict=True):
                        if not fut.done():
                            fut.set_result(rec)
                except asyncio.CancelledError:  # the worker is stopping
                    for _, fut in live:
                        fut.cancel()
                    raise
                except Exception as exc:  # the online fallback failed too: these requests get the error
                    for _, fut in live:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.batches += 1
                self.requests += len(live)
        finally:
            self.running -= 1

    async def close(self) -> None:
        """Stop computing: cancel the batches in flight and every queued request (the worker is stopping)."""
        self._closed = True
        while self._tasks:  # a drain cancelled before it ran skips its finally: count them all out
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        self.running = 0
        pending, self.pending = self.pending, []
        for _, fut in pending:
            fut.cancel()


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
