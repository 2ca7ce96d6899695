"""A synthetic shop: users with latent tastes, a catalogue, sessions, ads, reviews, care, stock.

Deterministic for a given seed. Each event is ``(topic_base, key, value_bytes)``
with ``topic_base`` one of :mod:`schemas.topics`' input names.

Examples
--------
>>> shop = SyntheticShop(seed=7, n_users=50, n_items=200)
>>> evs = list(itertools.islice(shop.events(), 200))
>>> evs == list(itertools.islice(SyntheticShop(seed=7, n_users=50, n_items=200).events(), 200))
True
>>> 'shop.clicks.v1' in {t for t, _, _ in evs}
True
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from schemas import topics as T

Event = tuple[str, bytes, bytes]

_enc = msgspec.json.Encoder()

REVIEW_TEXT = {
    5: ["Excellent quality, arrived fast.", "Love it, would buy again!", "Perfect fit and great value."],
    4: ["Good product, minor issues.", "Works well, packaging could be better."],
    3: ["It's okay, nothing special.", "Average, as expected for the price."],
    2: ["Disappointed, the colour is off.", "Arrived late and scratched."],
    1: ["Broken on arrival, want a refund.", "Terrible, does not work at all."],
}
SUPPORT_TEXT = [
    ("order_status", "Where is my order {o}? It has not arrived yet."),
    ("order_status", "My parcel {o} still shows in transit after a week, any update?"),
    ("order_status", "我的订单{o}还没有到，请帮我查一下物流"),
    ("refund", "I want a refund for order {o}, the item is broken."),
    ("refund", "Please send my money back for {o}, it was not what I ordered."),
    ("refund", "订单{o}的商品坏了，我要退款"),
    ("cancel", "Please cancel my order {o} before it ships."),
    ("cancel", "I ordered {o} by mistake, can you cancel it?"),
    ("cancel", "请帮我取消订单{o}"),
    ("payment", "My card was charged twice for order {o}."),
    ("payment", "The payment for {o} failed but money left my account."),
    ("payment", "订单{o}被扣了两次钱"),
    ("account", "I can't log in to my account, password reset does not work."),
    ("account", "How do I change the email address on my account?"),
    ("account", "我的账号登录不上，密码重置也不行"),
]
#: Messages no intent covers (the router must recognise them as out of scope).
OUT_OF_SCOPE_TEXT = [
    "What is the weather going to be like tomorrow?",
    "Can you recommend a good movie for tonight?",
    "Who won the football match yesterday?",
    "今天天气怎么样？",
]
#: Chinese reviews, by rating.
REVIEW_TEXT_ZH = {
    5: ["质量很好，物流很快，非常满意！", "东西不错，会回购"],
    4: ["还可以，包装一般"],
    3: ["一般般，没什么特别的"],
    2: ["有点失望，颜色不对"],
    1: ["收到就坏了，太差了，要退货", "质量很差，不推荐"],
}


@dataclass
class Item:
    """A catalogue entry."""

    item_id: str
    category: str
    price: float
    popularity: float


class SyntheticShop:
    """Generates an endless, realistic-looking event stream."""

    def __init__(
        self,
        seed: int = 0,
        n_users: int = 2000,
        n_items: int = 1000,
        n_categories: int = 20,
        start_ts: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z
        events_per_s: float = 1000.0,
        ad_share: float = 0.15,
        ad_outcomes: bool = True,
        labelled_share: float = 0.3,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        rng = self.rng
        self.categories = [f"c{c:02d}" for c in range(n_categories)]
        self.items: list[Item] = []
        self.by_cat: dict[str, list[Item]] = {c: [] for c in self.categories}
        for i in range(n_items):
            cat = self.categories[i % n_categories]
            base = math.exp(rng.gauss(3.0 + (i % n_categories) / 10, 0.6))
            it = Item(f"sku-{i:05d}", cat, round(base, 2), rng.paretovariate(1.3))
            self.items.append(it)
            self.by_cat[cat].append(it)
        self.users = [f"user-{u:05d}" for u in range(n_users)]
        self.tastes = [self._taste() for _ in range(n_users)]
        self.ts = start_ts
        self._stocked: set[str] = set()
        self.dt = 1.0 / max(events_per_s, 1e-6)
        self.ad_share = ad_share
        #: Whether the shop also emits auction outcomes (impressions, clicks) for random campaigns;
        #: off when :class:`shopstream.exchange.ExchangeSimulator` runs the auctions against the bidder.
        self.ad_outcomes = ad_outcomes
        #: Share of support messages that carry the intent an agent gave them.
        self.labelled_share = labelled_share
        self._n = itertools.count()
        self._orders = itertools.count()

    def _taste(self) -> list[float]:
        w = [self.rng.gammavariate(0.3, 1.0) for _ in self.categories]
        s = sum(w) or 1.0
        return [x / s for x in w]

    def _eid(self) -> str:
        return f"s{self.seed}-{next(self._n):09d}"

    def _tick(self) -> float:
        self.ts += self.rng.expovariate(1.0 / self.dt)
        return round(self.ts, 3)

    def _pick_item(self, cat: str) -> Item:
        items = self.by_cat[cat]
        return self.rng.choices(items, weights=[i.popularity for i in items])[0]

    def session(self) -> Iterator[Event]:
        """One user session: views → clicks → cart → maybe an order, reviews, messages, ads."""
        rng = self.rng
        u = rng.randrange(len(self.users))
        user = self.users[u]
        sid = f"sess-{self._eid()}"
        cat = rng.choices(self.categories, weights=self.tastes[u])[0]
        key = user.encode()
        if rng.random() < 0.2:
            yield (
                T.CLICKS,
                key,
                _enc.encode(
                    {
                        "type": "search",
                        "event_id": self._eid(),
                        "ts": self._tick(),
                        "user_id": user,
                        "session_id": sid,
                        "query": f"{cat} best",
                        "category": cat,
                    }
                ),
            )
        cart: list[Item] = []
        for _ in range(rng.randint(1, 8)):
            it = self._pick_item(cat if rng.random() < 0.8 else rng.choice(self.categories))
            base = {
                "event_id": "",
                "ts": 0.0,
                "user_id": user,
                "session_id": sid,
                "item_id": it.item_id,
                "category": it.category,
                "price": it.price,
            }
            for kind, p in (("view", 1.0), ("click", 0.45), ("add_to_cart", 0.25)):
                if rng.random() > p:
                    break
                ev = dict(base, type=kind, event_id=self._eid(), ts=self._tick())
                yield T.CLICKS, key, _enc.encode(ev)
                if kind == "add_to_cart":
                    cart.append(it)
        if cart and rng.random() < 0.5:
            # The first order of a SKU comes after its opening stock count (a stock
            # take before the shop opened), so the inventory agent knows every SKU sold.
            for it in cart:
                if it.item_id not in self._stocked:
                    self._stocked.add(it.item_id)
                    yield (
                        T.INVENTORY,
                        it.item_id.encode(),
                        _enc.encode(
                            {
                                "type": "stock_count",
                                "event_id": self._eid(),
                                "ts": self.ts,
                                "sku": it.item_id,
                                "warehouse": "main",
                                "on_hand": 200 + 40 * int(10 * it.popularity) % 800,
                            }
                        ),
                    )
            oid = f"o-{self.seed}-{next(self._orders):08d}"
            lines = [
                {
                    "sku": it.item_id,
                    "qty": rng.randint(1, 3),
                    "unit_price": it.price,
                    "currency": "EUR",
                    "category": it.category,
                }
                for it in cart
            ]
            yield (
                T.ORDERS,
                key,
                _enc.encode(
                    {
                        "type": "order",
                        "event_id": self._eid(),
                        "ts": self._tick(),
                        "order_id": oid,
                        "user_id": user,
                        "lines": lines,
                        "warehouse": "main",
                    }
                ),
            )
            if rng.random() < 0.15:
                it = cart[0]
                rating = rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 2, 4, 6])[0]
                yield (
                    T.REVIEWS,
                    key,
                    _enc.encode(
                        {
                            "type": "review",
                            "event_id": self._eid(),
                            "ts": self._tick(),
                            "review_id": f"r-{oid}",
                            "user_id": user,
                            "sku": it.item_id,
                            "rating": rating,
                            "text": rng.choice(
                                (REVIEW_TEXT_ZH if rng.random() < 0.2 else REVIEW_TEXT)[rating]
                            ),
                        }
                    ),
                )
            if rng.random() < 0.05:
                if rng.random() < 0.1:
                    intent, text = "out_of_scope", rng.choice(OUT_OF_SCOPE_TEXT)
                else:
                    intent, text = rng.choice(SUPPORT_TEXT)
                yield (
                    T.CARE_MESSAGES,
                    key,
                    _enc.encode(
                        {
                            "type": "support_message",
                            "event_id": self._eid(),
                            "ts": self._tick(),
                            "message_id": f"m-{oid}",
                            "user_id": user,
                            "conversation_id": f"conv-{oid}",
                            "channel": "chat",
                            "text": text.format(o=oid),
                            # A share of messages comes back labelled by the agent who handled it.
                            **({"intent": intent} if rng.random() < self.labelled_share else {}),
                        }
                    ),
                )
        if rng.random() < self.ad_share:
            yield from self._auction(u)
        if rng.random() < 0.02:
            it = rng.choice(self.items)
            yield (
                T.INVENTORY,
                it.item_id.encode(),
                _enc.encode(
                    {
                        "type": "receipt",
                        "event_id": self._eid(),
                        "ts": self._tick(),
                        "sku": it.item_id,
                        "warehouse": "main",
                        "qty": rng.randint(10, 200),
                    }
                ),
            )

    #: Publishers of the ad auctions: (domain, IAB category, click-rate effect).
    PUBLISHERS = (
        ("shop.example", "IAB22", 0.3),
        ("news.example", "IAB12", -0.4),
        ("recipes.example", "IAB8", 0.0),
        ("games.example", "IAB9", -0.2),
    )
    #: Click-rate effects of the ad sizes and device types.
    SIZE_EFFECT = {(300, 250): 0.4, (728, 90): -0.3, (320, 50): 0.0}
    DEVICE_EFFECT = {1: 0.2, 2: -0.3, 4: 0.1}

    def ad_click_probability(
        self, u: int, campaign: int, size: tuple[int, int], devicetype: int, pub: int
    ) -> float:
        """The simulator's true P(click) of one impression: a logistic model of the user's taste
        for the campaign's category, the ad size, the device and the publisher (about 4.5% on average)."""
        cat = self.categories.index(self.campaign_category(campaign))
        z = (
            -4.3
            + 12.0 * self.tastes[u][cat]
            + self.SIZE_EFFECT[size]
            + self.DEVICE_EFFECT[devicetype]
            + self.PUBLISHERS[pub][2]
            + 0.15 * (campaign - 2)
        )
        return 1.0 / (1.0 + math.exp(-z))

    def campaign_category(self, campaign: int) -> str:
        """The product category that campaign ``camp-<campaign>`` advertises."""
        return self.categories[(campaign * 3) % len(self.categories)]

    def _auction(self, u: int) -> Iterator[Event]:
        rng = self.rng
        user = self.users[u]
        rid = f"req-{self._eid()}"
        w, h = rng.choice([(300, 250), (728, 90), (320, 50)])
        pub = rng.randrange(len(self.PUBLISHERS))
        domain, pcat, _ = self.PUBLISHERS[pub]
        devicetype = rng.choice([1, 2, 4])
        req = {
            "id": rid,
            "tmax": 120,
            "cur": ["EUR"],
            "at": 2,
            "imp": [
                {
                    "id": "1",
                    "banner": {"w": w, "h": h},
                    "bidfloor": round(rng.uniform(0.1, 1.0), 2),
                    "bidfloorcur": "EUR",
                }
            ],
            "site": {
                "id": domain,
                "domain": domain,
                "cat": [pcat],
                "page": f"https://{domain}/",
            },
            "device": {
                "devicetype": devicetype,
                "os": rng.choice(["iOS", "Android", "Linux"]),
                "geo": {"country": rng.choice(["DEU", "FRA", "NLD"])},
            },
            "user": {"id": user},
        }
        key = user.encode()
        yield T.BID_REQUESTS, key, _enc.encode(req)
        if self.ad_outcomes and rng.random() < 0.4:
            c = rng.randrange(5)
            camp = f"camp-{c}"
            base = {
                "request_id": rid,
                "imp_id": "1",
                "campaign_id": camp,
                "creative_id": f"{camp}-cr1",
                "user_id": user,
            }
            yield (
                T.AD_EVENTS,
                rid.encode(),
                _enc.encode(
                    dict(
                        base,
                        type="impression",
                        event_id=self._eid(),
                        ts=self._tick(),
                        price=round(rng.uniform(0.2, 2.0), 3),
                    )
                ),
            )
            if rng.random() < self.ad_click_probability(u, c, (w, h), devicetype, pub):
                yield (
                    T.AD_EVENTS,
                    rid.encode(),
                    _enc.encode(dict(base, type="ad_click", event_id=self._eid(), ts=self._tick())),
                )

    def events(self) -> Iterator[Event]:
        """An endless stream of sessions' events."""
        while True:
            yield from self.session()

    def clicks(self) -> Iterator[Event]:
        """Only clickstream events (for benchmarks and tests of the recommendation slice)."""
        return (e for e in self.events() if e[0] == T.CLICKS)


def movielens_clicks(path: str) -> Iterator[tuple[float, Event]]:
    """MovieLens ``u.data`` (user, item, rating, ts) as click events in timestamp order.

    Ratings of 4 and 5 become ``add_to_cart``, the others ``click``.
    """
    rows = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 4:
                continue
            rows.append((int(parts[3]), parts[0], parts[1], int(parts[2])))
    rows.sort()
    for n, (ts, user, item, rating) in enumerate(rows):
        kind = "add_to_cart" if rating >= 4 else "click"
        ev = {
            "type": kind,
            "event_id": f"ml-{n:07d}",
            "ts": float(ts),
            "user_id": f"ml-u{user}",
            "item_id": f"ml-i{item}",
        }
        yield float(ts), (T.CLICKS, f"ml-u{user}".encode(), _enc.encode(ev))
