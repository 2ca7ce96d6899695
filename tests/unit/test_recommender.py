"""The online recommender and the clickstream processor, without services."""

from __future__ import annotations

import asyncio

from online_models.recommender import CoVisitationRecommender
from schemas.events import AddToCart, Click, RemoveFromCart, Search, View
from serving.clickstream import ClickstreamProcessor
from serving.features import FeatureWriter, InMemoryFeatureStore


def train(rec: CoVisitationRecommender, sessions: dict[str, list[str]]) -> None:
    for user, items in sessions.items():
        recent: list[str] = []
        for item in items:
            rec.learn_one(user, item, recent, 2.0)
            recent.append(item)


def test_items_seen_together_are_recommended_together():
    rec = CoVisitationRecommender(seed=0)
    sessions = {f"u{n}": ["phone", "case", "charger"] for n in range(30)}
    sessions.update({f"v{n}": ["tent", "stove"] for n in range(30)})
    train(rec, sessions)
    out = rec.recommend("new-user", ["tent"], k=3)
    assert out[0].item_id == "stove" and out[0].reason == "together_with:tent"
    phone = [r.item_id for r in rec.recommend("new-user", ["phone"], k=2)]
    assert set(phone) == {"case", "charger"}


def test_recent_and_excluded_items_are_never_recommended():
    rec = CoVisitationRecommender(seed=0)
    train(rec, {f"u{n}": ["a", "b", "c", "d"] for n in range(10)})
    items = {r.item_id for r in rec.recommend("x", ["a", "b"], k=10, exclude={"c"})}
    assert items == {"d"}


def test_cold_user_gets_popular_items():
    rec = CoVisitationRecommender(seed=0)
    train(rec, {f"u{n}": ["hit"] for n in range(50)} | {"w": ["niche"]})
    out = rec.recommend("cold", [], k=2)
    assert [r.item_id for r in out] == ["hit", "niche"] and out[0].reason == "popular"


def test_memory_is_bounded_per_item():
    rec = CoVisitationRecommender(max_neighbours=10, seed=0)
    train(rec, {f"u{n}": ["hub", f"x{n}"] for n in range(200)})
    assert len(rec.covis["hub"]) <= 20


def test_processor_updates_features_and_recent_items():
    store = InMemoryFeatureStore()
    p = ClickstreamProcessor(FeatureWriter(store, ttl_s=30), k=5, recent_items=3, seed=0)
    recent: list[str] = []
    for n, item in enumerate(["a", "b", "c", "d"]):
        recent, rec = p.process(View(event_id=f"e{n}", ts=float(n), user_id="u", item_id=item), recent)
        assert rec is not None and rec.event_id == f"e{n}"
    assert recent == ["b", "c", "d"]
    recent2, rec = p.process(Search(event_id="s", ts=9.0, user_id="u", query="q"), recent)
    assert rec is None and recent2 == recent
    _, rec = p.process(RemoveFromCart(event_id="r", ts=10.0, user_id="u", item_id="d"), recent)
    assert rec is None
    _, rec = p.process(AddToCart(event_id="c", ts=11.0, user_id="u", item_id="a", category="c1"), recent)
    assert rec is not None
    _, rec = p.process(Click(event_id="k", ts=12.0, user_id="u", item_id="b"), recent)
    assert rec is not None
    asyncio.run(p.features.flush())
    user = asyncio.run(store.get("user", "u"))
    assert user["n_events"] == "7" and user["n_view"] == "4" and user["last_query"] == "q"
    assert asyncio.run(store.get("item", "a"))["category"] == "c1"
    assert store.ttls[("user", "u")] == 30


def test_feature_writer_keeps_updates_when_the_store_fails():
    class Failing(InMemoryFeatureStore):
        fail = True

        async def write(self, updates, ttl_s):  # type: ignore[no-untyped-def]
            if self.fail:
                raise ConnectionError("down")
            await super().write(updates, ttl_s)

    store = Failing()
    w = FeatureWriter(store, ttl_s=5)
    w.update("user", "u", set_={"a": "1"}, incr={"n": 2})
    try:
        asyncio.run(w.flush())
    except ConnectionError:
        pass
    w.update("user", "u", set_={"a": "2"}, incr={"n": 1})
    store.fail = False
    assert asyncio.run(w.flush()) == 1
    assert asyncio.run(store.get("user", "u")) == {"a": "2", "n": "3"}
    assert w.errors == 1
