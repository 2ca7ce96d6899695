"""Online recommender: item co-visitation plus River matrix factorisation.

Every interaction updates three things:

* **co-visitation** counts between the item and the user's recent items
  (bounded per item, so memory stays flat on long streams);
* a decayed **popularity** count per item, the fallback for cold users;
* a River :class:`river.reco.BiasedMF` on implicit feedback (the event's weight
  as a positive and one sampled popular item as a negative).

Recommendations take co-visitation neighbours of the user's recent items as
candidates, re-rank the best of them with the MF score, fill up with popular
items, drop what the user has just seen, and give each item a reason code.

Examples
--------
>>> rec = CoVisitationRecommender(seed=1)
>>> for user, items in {"u1": ["a", "b"], "u2": ["a", "b", "c"], "u3": ["b", "c"]}.items():
...     recent: list[str] = []
...     for item in items:
...         rec.learn_one(user, item, recent)
...         recent.append(item)
>>> [(r.item_id, r.reason) for r in rec.recommend("u4", ["a"], k=2)]
[('b', 'together_with:a'), ('c', 'together_with:a')]
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from river import base, optim, reco

#: Implicit-feedback weight of each event type.
EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "order": 6.0,
    "remove_from_cart": -1.0,
}


def _second(kv: tuple[str, float]) -> float:
    return kv[1]


@dataclass(frozen=True, slots=True)
class Scored:
    """A recommended item, its score and the reason code."""

    item_id: str
    score: float
    reason: str


class CoVisitationRecommender(base.Base):
    """Co-visitation candidates re-ranked by online matrix factorisation.

    Parameters
    ----------
    n_factors
        Latent factors of the River BiasedMF.
    window
        How many of the user's recent items an interaction is paired with.
    max_neighbours
        Co-visitation neighbours kept per item (the weakest are pruned).
    n_candidates
        Co-visitation candidates re-ranked by the MF model.
    mf_weight
        Weight of the MF score against the normalised co-visitation score.
    popular_size
        Length of the popularity list used for cold users and fill-up.
    decay
        Multiplicative decay of popularity counts per 1,000 events.
    seed
        Seed for negative sampling and MF initialisation.
    """

    def __init__(
        self,
        n_factors: int = 16,
        window: int = 5,
        max_neighbours: int = 100,
        n_candidates: int = 20,
        mf_weight: float = 0.3,
        popular_size: int = 50,
        decay: float = 0.98,
        seed: int | None = None,
    ) -> None:
        self.n_factors = n_factors
        self.window = window
        self.max_neighbours = max_neighbours
        self.n_candidates = n_candidates
        self.mf_weight = mf_weight
        self.popular_size = popular_size
        self.decay = decay
        self.seed = seed
        self._rng = random.Random(seed)
        self.mf = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(0.02),
            latent_optimizer=optim.SGD(0.02),
            l2_latent=0.001,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.05, seed=seed),
            seed=seed,
        )
        self.covis: dict[str, dict[str, float]] = {}
        self.popularity: dict[str, float] = {}
        self._top: dict[str, list] = {}
        self.n_events = 0
        self._popular: list[str] = []
        self._popular_at = -1
        self.item_category: dict[str, str] = {}
        self._popular_by_cat: dict[str, list[str]] = {}
        self.new_items: deque[str] = deque(maxlen=popular_size)

    # -- learning ---------------------------------------------------------------
    def learn_one(
        self, user: str, item: str, recent: Sequence[str], weight: float = 1.0, category: str | None = None
    ) -> None:
        """Learn from ``user`` interacting with ``item``; ``recent`` are the user's items before it."""
        self.n_events += 1
        if item not in self.popularity:
            self.new_items.append(item)
        if category is not None and self.item_category.get(item) != category:
            self.item_category[item] = category
        if self.n_events % 1000 == 0:
            d = self.decay
            self.popularity = {i: c * d for i, c in self.popularity.items() if c * d > 0.01}
        self.popularity[item] = self.popularity.get(item, 0.0) + max(weight, 0.0)
        if weight > 0:
            w = min(weight, 4.0)
            seen = set()
            for other in reversed(recent[-self.window :]):
                if other == item or other in seen:
                    continue
                seen.add(other)
                self._bump(item, other, w)
                self._bump(other, item, w)
        self.mf.learn_one(user, item, 1.0 if weight > 0 else 0.0)
        popular = self.popular()
        if popular:
            negative = popular[self._rng.randrange(len(popular))]
            if negative != item:
                self.mf.learn_one(user, negative, 0.0)

    def _neighbours(self, item: str) -> list[tuple[str, float]]:
        """The item's strongest co-visited items with their share of its co-visits.

        Cached, and recomputed after 10 (or a quarter of its neighbour count) new co-visits.
        """
        cached = self._top.get(item)
        if cached is not None and cached[0] < cached[2]:
            return cached[1]
        nb = self.covis.get(item)
        if not nb:
            return []
        total = sum(nb.values()) or 1.0
        top = [(o, c / total) for o, c in heapq.nlargest(self.n_candidates, nb.items(), key=_second)]
        # Busy items change their top list slowly: refresh after a share of their co-visits.
        self._top[item] = [0, top, max(10, len(nb) // 4)]
        return top

    def _bump(self, a: str, b: str, w: float) -> None:
        cached = self._top.get(a)
        if cached is not None:
            cached[0] += 1
        nb = self.covis.get(a)
        if nb is None:
            nb = self.covis[a] = {}
        nb[b] = nb.get(b, 0.0) + w
        if len(nb) > 2 * self.max_neighbours:
            keep = heapq.nlargest(self.max_neighbours, nb.items(), key=_second)
            self.covis[a] = dict(keep)

    def _mf_scores(self, user: str, items: list[str]) -> list[float]:
        """BiasedMF scores of ``items`` for ``user`` in one vectorised step (0 for unknown users)."""
        mf = self.mf
        u = mf.u_latents.get(user)
        if u is None or not items:
            return [0.0] * len(items)
        lat = mf.i_latents
        zero = np.zeros_like(u)
        # ``lat`` is a defaultdict: .get() leaves unknown items out of it.
        dots = (np.array([lat.get(i, zero) for i in items]) @ u).tolist()
        ib = mf.i_biases
        base_ = mf.global_mean.get() + mf.u_biases.get(user, 0.0)
        return [float(base_ + ib.get(i, 0.0) + d) for i, d in zip(items, dots, strict=True)]

    def score_items(self, user: str, recent: Sequence[str], items: Sequence[str]) -> list[float]:
        """Scores of arbitrary ``items`` for ``user``: co-visitation with ``recent`` plus the MF score.

        The same blend as :meth:`recommend`, for offline evaluation against sampled candidates.
        """
        scores, _ = self.covis_scores(recent)
        mf = self._mf_scores(user, list(items))
        return [scores.get(i, 0.0) + self.mf_weight * m for i, m in zip(items, mf, strict=True)]

    # -- serving ------------------------------------------------------------------
    def popular(self) -> list[str]:
        """The currently most popular items."""
        # Refresh every 500 events, and more often while the catalogue is young.
        if self._popular_at < 0 or self.n_events - self._popular_at >= min(500, max(1, self.n_events // 4)):
            ranked = heapq.nlargest(self.popular_size * 20, self.popularity.items(), key=_second)
            self._popular = [i for i, _ in ranked[: self.popular_size]]
            by_cat: dict[str, list[str]] = {}
            cats = self.item_category
            for i, _ in ranked:
                c = cats.get(i)
                if c is not None:
                    lst = by_cat.setdefault(c, [])
                    if len(lst) < self.popular_size:
                        lst.append(i)
            self._popular_by_cat = by_cat
            self._popular_at = self.n_events
        return self._popular

    def popular_in(self, category: str) -> list[str]:
        """The most popular items of ``category`` (refreshed with :meth:`popular`)."""
        self.popular()
        return self._popular_by_cat.get(category, [])

    def covis_scores(
        self, recent: Sequence[str], skip: set[str] | frozenset[str] = frozenset()
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Co-visitation candidates of ``recent``: (item → score, item → the recent item it came from).

        A neighbour's share of its item's co-visits counts ``1/(1 + age)`` of the
        recent item (the latest has age 0); the source is the most recent item
        that brought the candidate in.
        """
        scores: dict[str, float] = {}
        source: dict[str, str] = {}
        get = scores.get
        for age, item in enumerate(reversed(recent[-self.window :])):
            recency = 1.0 / (1 + age)
            for other, share in self._neighbours(item):
                if other in skip:
                    continue
                prev = get(other)
                if prev is None:
                    scores[other] = recency * share
                    source[other] = item
                else:
                    scores[other] = prev + recency * share
        return scores, source

    def recommend(
        self, user: str, recent: Sequence[str], k: int = 10, exclude: set[str] | None = None
    ) -> list[Scored]:
        """Top-``k`` items for ``user`` given the ``recent`` items (oldest first)."""
        skip = set(recent[-self.window * 2 :])
        if exclude:
            skip |= exclude
        scores, source = self.covis_scores(recent, skip)
        ranked: list[Scored] = []
        if scores:
            # sorted() is stable, so ties keep their order as heapq.nlargest would, at a fraction of its cost.
            top = sorted(scores, key=scores.__getitem__, reverse=True)[: self.n_candidates]
            w = self.mf_weight
            mf = self._mf_scores(user, top)
            blended = sorted(((scores[i] + w * m, i) for i, m in zip(top, mf, strict=True)), reverse=True)
            ranked = [Scored(item, score, f"together_with:{source[item]}") for score, item in blended[:k]]
        if len(ranked) < k:
            have = {r.item_id for r in ranked}
            for item in self.popular():
                if len(ranked) >= k:
                    break
                if item in skip or item in have:
                    continue
                ranked.append(Scored(item, 0.0, "popular"))
        return ranked
