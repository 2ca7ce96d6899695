"""The clickstream slice's logic, free of Faust: learn, featurise, recommend.

:class:`ClickstreamProcessor` takes one decoded click event and the user's
recent items (owned by the caller's changelogged table), and returns the new
recent-items list and, for meaningful events, a recommendation. Feature
updates go to a :class:`~serving.features.FeatureWriter`.

Examples
--------
>>> from serving.features import FeatureWriter, InMemoryFeatureStore
>>> from schemas.events import Click
>>> p = ClickstreamProcessor(FeatureWriter(InMemoryFeatureStore(), ttl_s=60), k=3, seed=0)
>>> recent, rec = p.process(Click(event_id="e1", ts=1.0, user_id="u1", item_id="i1"), [])
>>> recent, rec.event_id, rec.user_id
(['i1'], 'e1', 'u1')
"""

from __future__ import annotations

import time

from online_models.recommender import EVENT_WEIGHTS, CoVisitationRecommender
from schemas.events import ITEM_EVENTS, ClickEvent, Order, RecItem, Recommendation, Search
from serving.features import FeatureWriter

#: Event types after which a fresh list is published.
MEANINGFUL = frozenset({"view", "click", "add_to_cart"})

MODEL_NAME = "covis-biasedmf-v1"

#: Purchased items remembered per user (re-ranking drops them).
BOUGHT_KEPT = 50


class ClickstreamProcessor:
    """Per-worker online recommender plus feature writer."""

    def __init__(
        self,
        features: FeatureWriter,
        k: int = 10,
        recent_items: int = 20,
        seed: int | None = None,
        model: CoVisitationRecommender | None = None,
    ) -> None:
        self.features = features
        self.k = k
        self.recent_items = recent_items
        self.model = model or CoVisitationRecommender(seed=seed)

    def learn(self, event: ClickEvent, recent: list[str]) -> tuple[list[str], bool]:
        """Learn from ``event``; return the user's new recent items and whether a fresh list is due."""
        kind = type(event).__struct_config__.tag
        assert isinstance(kind, str)
        ts = str(event.ts)
        if isinstance(event, Search):
            self.features.update(
                "user", event.user_id, set_={"last_query": event.query, "last_ts": ts}, incr={"n_searches": 1}
            )
            return recent, False
        assert isinstance(event, ITEM_EVENTS)
        item = event.item_id
        weight = EVENT_WEIGHTS.get(kind, 1.0)
        self.model.learn_one(event.user_id, item, recent, weight, event.category)
        keep = self.recent_items
        new_recent = [*(i for i in recent if i != item), item][-keep:] if weight > 0 else recent
        self.features.update(
            "user",
            event.user_id,
            set_={"last_item": item, "last_ts": ts, "recent": ",".join(new_recent[-10:])},
            incr={"n_events": 1, f"n_{kind}": 1},
        )
        item_set = {"last_ts": ts}
        if event.category is not None:
            item_set["category"] = event.category
        if event.price is not None:
            item_set["price"] = str(event.price)
        self.features.update("item", item, set_=item_set, incr={f"n_{kind}": 1})
        return new_recent, kind in MEANINGFUL

    def learn_order(self, order: Order, recent: list[str], bought: list[str]) -> tuple[list[str], list[str]]:
        """Learn from a placed order: each line is a strong positive. Returns (recent, bought) updated.

        Returns and cancellations change neither list (the items stay "bought").
        """
        if order.status != "placed":
            return recent, bought
        weight = EVENT_WEIGHTS["order"]
        user = order.user_id
        new_recent = list(recent)
        new_bought = list(bought)
        for line in order.lines:
            self.model.learn_one(user, line.sku, new_recent, weight, line.category)
            new_recent = [*(i for i in new_recent if i != line.sku), line.sku][-self.recent_items :]
            new_bought = [*(i for i in new_bought if i != line.sku), line.sku][-BOUGHT_KEPT:]
            self.features.update("item", line.sku, incr={"n_order": int(line.qty)})
        self.features.update(
            "user",
            user,
            set_={"bought": ",".join(new_bought), "last_ts": str(order.ts)},
            incr={"n_orders": 1},
        )
        return new_recent, new_bought

    def process(self, event: ClickEvent, recent: list[str]) -> tuple[list[str], Recommendation | None]:
        """Learn from ``event``; return the user's new recent items and maybe a recommendation."""
        new_recent, due = self.learn(event, recent)
        if not due:
            return new_recent, None
        return new_recent, self.recommend(
            event.user_id, new_recent, event_id=event.event_id, source_ts=event.ts
        )

    def recommend(
        self,
        user_id: str,
        recent: list[str],
        event_id: str = "",
        source_ts: float | None = None,
        k: int | None = None,
    ) -> Recommendation:
        """A recommendation for ``user_id`` from the current model."""
        return online_recommendation(self.model, user_id, recent, k or self.k, event_id, source_ts)


def recommendation(
    user_id: str, items: list[RecItem], model: str, event_id: str = "", source_ts: float | None = None
) -> Recommendation:
    """A :class:`Recommendation` stamped now (``source_ts`` defaults to now: a request, not an event)."""
    now = time.time()
    return Recommendation(
        event_id=event_id,
        user_id=user_id,
        items=items,
        model=model,
        source_ts=now if source_ts is None else source_ts,
        generated_at=now,
    )


def online_recommendation(
    model: CoVisitationRecommender,
    user_id: str,
    recent: list[str],
    k: int,
    event_id: str = "",
    source_ts: float | None = None,
) -> Recommendation:
    """Top-``k`` from the online model alone (no trained model, or its features unavailable)."""
    scored = model.recommend(user_id, recent, k)
    items = [RecItem(item_id=s.item_id, score=round(s.score, 6), reason=s.reason) for s in scored]
    return recommendation(user_id, items, MODEL_NAME, event_id, source_ts)
