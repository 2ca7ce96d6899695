"""An ad exchange for the demo: runs the auctions of the synthetic shop's bid requests against the bidder.

It reads the bid requests (to remember what each one offered) and the
bidder's responses from Kafka, and plays a second-price auction for every
bid against a market price drawn from a log-normal distribution (the other
bidders). A win calls the bid's ``nurl`` with the clearing price substituted
for ``${AUCTION_PRICE}``, as exchanges do, and puts the impression (the
billing event) on the ad-events topic; the user then clicks with the
synthetic shop's true click probability for that user, campaign, size,
device and site, and the click follows on the same topic. A loss calls
``lurl`` with loss reason 102 (lost to a higher bid) and the price that
would have won (``${AUCTION_MIN_TO_WIN}``).

The bidder thus learns its CTR model from clicks that depend on the features
it sees, and spends real (simulated) money through its budget ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.openrtb import BID_REQUEST_CODEC, BID_RESPONSE_CODEC
from shopstream.settings import Settings
from shopstream.sim import SyntheticShop

_enc = msgspec.json.Encoder()


@dataclass
class ExchangeStats:
    requests: int = 0
    responses: int = 0
    bids: int = 0
    wins: int = 0
    clicks: int = 0
    spend: float = 0.0
    notice_errors: int = 0
    by_campaign: dict[str, dict[str, float]] = field(default_factory=dict)

    def campaign(self, cid: str) -> dict[str, float]:
        return self.by_campaign.setdefault(cid, {"wins": 0.0, "clicks": 0.0, "spend": 0.0})


class ExchangeSimulator:
    """Second-price auctions for the bidder's responses (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        shop: SyntheticShop,
        seed: int = 0,
        market_cpm: float = 1.5,
        market_sigma: float = 0.7,
        remember: int = 50_000,
    ) -> None:
        self.settings = settings
        self.shop = shop
        self.rng = random.Random(seed)
        self.mu = math.log(market_cpm) - market_sigma**2 / 2  # mean market CPM = market_cpm
        self.sigma = market_sigma
        self.requests: OrderedDict[str, Any] = OrderedDict()
        self.remember = remember
        self.stats = ExchangeStats()
        self._pubs = {p[0]: i for i, p in enumerate(shop.PUBLISHERS)}
        self._users = {u: i for i, u in enumerate(shop.users)}

    def market_price(self) -> float:
        return math.exp(self.rng.gauss(self.mu, self.sigma))

    def click_probability(self, req: Any, cid: str) -> float:
        """The shop's true P(click) for this request and campaign (0 if the request is not the shop's)."""
        u = self._users.get(req.user.id if req.user is not None else "")
        pub = self._pubs.get(req.site.domain if req.site is not None else "")
        banner = req.imp[0].banner
        dev = req.device.devicetype if req.device is not None else None
        try:
            camp = int(cid.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            return 0.0
        size = (banner.w, banner.h) if banner is not None else None
        if (
            u is None
            or pub is None
            or size not in self.shop.SIZE_EFFECT
            or dev not in self.shop.DEVICE_EFFECT
        ):
            return 0.0
        return self.shop.ad_click_probability(u, camp, size, dev, pub)  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> ExchangeStats:
        """Auction every response until ``stop`` is set."""
        import aiohttp
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        s = self.settings
        req_topic = s.topic_prefix + "ads.bid-requests.v1"
        resp_topic = s.topic_prefix + "ads.bid-responses.v1"
        ad_topic = s.topic_prefix + "ads.events.v1"
        consumer = AIOKafkaConsumer(
            req_topic, resp_topic, bootstrap_servers=s.kafka_bootstrap, auto_offset_reset="latest"
        )
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=5, acks=1)
        await consumer.start()
        await producer.start()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        notices: set[asyncio.Task] = set()

        async def notify(url: str) -> None:
            try:
                async with session.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        self.stats.notice_errors += 1
            except Exception:
                self.stats.notice_errors += 1

        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        if tp.topic == req_topic:
                            self._remember(m.value)
                            continue
                        self.stats.responses += 1
                        try:
                            resp = BID_RESPONSE_CODEC.decode(m.value)
                        except Exception:
                            continue
                        req = self.requests.pop(resp.id, None)
                        for sb in resp.seatbid or ():
                            for bid in sb.bid:
                                self.stats.bids += 1
                                price = self.market_price()
                                if bid.price < price or req is None:
                                    if bid.lurl:
                                        if req is None:  # request not remembered: no auction held
                                            url = bid.lurl.replace("${AUCTION_LOSS}", "1")
                                        else:  # lost to a higher bid, which was the market price
                                            url = bid.lurl.replace("${AUCTION_LOSS}", "102").replace(
                                                "${AUCTION_MIN_TO_WIN}", f"{price:.4f}"
                                            )
                                        t = asyncio.create_task(notify(url))
                                        notices.add(t)
                                        t.add_done_callback(notices.discard)
                                    continue
                                await self._win(producer, ad_topic, req, bid, price, notify, notices)
        finally:
            for t in list(notices):
                with contextlib.suppress(Exception):
                    await t
            await session.close()
            await producer.stop()
            await consumer.stop()
        return self.stats

    def _remember(self, value: bytes) -> None:
        try:
            req = BID_REQUEST_CODEC.decode(value)
        except Exception:
            return
        self.stats.requests += 1
        self.requests[req.id] = req
        while len(self.requests) > self.remember:
            self.requests.popitem(last=False)

    async def _win(
        self, producer: Any, topic: str, req: Any, bid: Any, price: float, notify: Any, notices: set
    ) -> None:
        st = self.stats
        st.wins += 1
        st.spend += price / 1000
        camp = st.campaign(bid.cid or "")
        camp["wins"] += 1
        camp["spend"] += price / 1000
        if bid.nurl:
            t = asyncio.create_task(notify(bid.nurl.replace("${AUCTION_PRICE}", f"{price:.4f}")))
            notices.add(t)
            t.add_done_callback(notices.discard)
        now = time.time()
        base = {
            "request_id": req.id,
            "imp_id": bid.impid,
            "campaign_id": bid.cid or "",
            "creative_id": bid.crid,
            "user_id": req.user.id if req.user is not None else None,
        }
        key = req.id.encode()
        imp = {
            **base,
            "type": "impression",
            "event_id": f"x-imp-{bid.id}",
            "ts": now,
            "price": round(price, 4),
        }
        await producer.send(topic, value=_enc.encode(imp), key=key)
        if self.rng.random() < self.click_probability(req, bid.cid or ""):
            st.clicks += 1
            camp["clicks"] += 1
            click = {
                **base,
                "type": "ad_click",
                "event_id": f"x-clk-{bid.id}",
                "ts": now + self.rng.uniform(0.5, 5),
            }
            await producer.send(topic, value=_enc.encode(click), key=key)
