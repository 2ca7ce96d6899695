"""The OpenRTB 2.6 bidder: targeting, pCTR, price, pacing, budget, deadline.

One :meth:`Bidder.decide` serves both transports (the bid-requests topic and
``POST /openrtb2/bid``):

1. **Deadline.** The decision must be out by the request's arrival plus
   ``tmax`` (the exchange's own clock starts earlier: ``safety_ms`` is kept
   back for the way home). Each awaited step runs under what is left of it;
   when time runs out the answer is a no-bid with ``nbr`` 15 (insufficient
   auction time), and any budget reserved is released.
2. **Request checks**, with the ``nbr`` that applies: a blocked site or app
   (7), a device type no campaign buys (6), every campaign frequency-capped
   for this user (9).
3. **Candidates.** For each impression, the campaigns whose targeting
   matches (country, device type, site/app category, the user's CRM segment
   from the Redis profile), with a creative that fits the slot and is not
   excluded by ``bcat``/``badv``, in a currency the request allows.
4. **pCTR.** The online River model (:class:`online_models.ctr.OnlineCTR`)
   and, when one is registered, the deep model (one batched onnxruntime call
   for every candidate of the request), blended and calibrated by
   :class:`online_models.ctr.CTRBlend`.
5. **Price.** Value per click (target CPC, or target CPA x configured CVR)
   x pCTR x 1000 (a CPM) x the campaign's pacing multiplier
   (:class:`serving.bidding.MarketPacer`: self-tuning linear bidding, re-solved
   from the market prices that win and loss notices reveal and the day's
   spend; spend against the plan until enough prices are known). First-price
   auctions (``at`` = 1) shade the bid by ``shade``; second-price auctions bid
   their value. Bids are capped at the campaign's
   ``bid_cap`` and dropped below the floor.
6. **Budget.** The best candidate of each impression reserves its price in
   the Redis ledger (:mod:`serving.budget`, which says why the budget is one
   keyed table); if that campaign's budget or cap is used up, the next one
   is tried, atomically, in the same round trip.

Two Redis round trips per request: the user's profile, then the reservation.
The bid's features are stored with its reservation, where the label join of
the ad-events agent finds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec
import numpy as np

from online_models.ctr import CTRBlend, OnlineCTR, hash_ids, request_fields
from schemas.openrtb import NBR, Bid, BidRequest, BidResponse, Imp, SeatBid
from serving.bidding import MarketPacer
from serving.budget import BudgetLedger, Candidate
from serving.campaigns import Campaign, CampaignBook, Creative

log = logging.getLogger(__name__)

#: OpenRTB's default currency when a request names none.
DEFAULT_CURRENCY = "USD"
MTYPE = {"banner": 1, "video": 2, "native": 4}

_ctx_enc = msgspec.json.Encoder()


@dataclass
class BidderConfig:
    seat: str = "shopstream"
    #: Base URL of this bidder's notice endpoints (``/openrtb2/win``, ``bill``, ``loss``).
    notice_url: str = "http://127.0.0.1:6066"
    default_tmax_ms: int = 100
    #: Kept back from ``tmax`` for the network on the way back.
    safety_ms: float = 5.0
    #: First-price bid shading factor.
    shade: float = 0.8
    #: The most a user-profile read may take (a slower profile is skipped, not waited for).
    redis_timeout_s: float = 0.02


@dataclass
class Decision:
    """The response and what went into it (for metrics, logs and tests)."""

    response: BidResponse
    outcome: str  # "bid" or "nbr:<code>" or "nobid"
    bids: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def is_bid(self) -> bool:
        return self.outcome == "bid"


class Bidder:
    """Decides OpenRTB bid responses (see the module docstring)."""

    def __init__(
        self,
        book: CampaignBook,
        ledger: BudgetLedger,
        online: OnlineCTR,
        blend: CTRBlend,
        profiles: Callable[[str], Any] | None = None,
        deep: Any = None,
        config: BidderConfig | None = None,
        pacer_factory: Callable[[], MarketPacer] = MarketPacer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.ledger = ledger
        self.online = online
        self.blend = blend
        self.profiles = profiles
        self.deep = deep
        self.config = config or BidderConfig()
        self.pacer_factory = pacer_factory
        self.pacers: dict[str, MarketPacer] = {}
        self.clock = clock

    # --- pacing -------------------------------------------------------------------------

    def multiplier(self, campaign: str) -> float:
        p = self.pacers.get(campaign)
        return p.mu if p is not None else 1.0

    def _pacer(self, campaign: str) -> MarketPacer:
        pacer = self.pacers.get(campaign)
        if pacer is None:
            pacer = self.pacers[campaign] = self.pacer_factory()
        return pacer

    async def update_pacing(self, now: float | None = None) -> dict[str, float]:
        """Move every campaign's multiplier from the day's spend and bids (one Redis round trip)."""
        now = self.clock() if now is None else now
        camps = self.book.campaigns
        spend = await self.ledger.spend([c.id for c in camps])
        return {
            c.id: self._pacer(c.id).update(c.daily_budget, spend[c.id].spent, now, bids=spend[c.id].bids)
            for c in camps
        }

    def pacer_status(self, campaign: str) -> dict[str, Any]:
        """How a campaign is paced: ``mode`` (``plan`` or ``market``) and market prices known."""
        p = self.pacers.get(campaign)
        if p is None:
            return {"mode": "plan", "market_prices": 0, "from_losses": 0}
        return {"mode": p.mode, "market_prices": p.observations, "from_losses": p.losses}

    def observe_market(
        self, campaign: str, context: str | None, price_cpm: float, lost: bool = False
    ) -> bool:
        """Feed one auction's market price to the campaign's pacer (from a notice).

        ``context`` is what the bid stored in the ledger (it holds the bid's unpaced
        value, except for first-price auctions, whose clearing price is the bid itself);
        ``price_cpm`` the clearing price of a win or the minimum to win of a loss.
        Returns whether the observation was used.
        """
        if not context or not campaign:
            return False
        try:
            value = float(msgspec.json.decode(context).get("v") or 0.0)
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
            return False
        if value <= 0.0:
            return False
        self._pacer(campaign).observe(value, price_cpm, lost)
        return True

    async def learn_price(self, bid_id: str, campaign: str, price_cpm: float, lost: bool = False) -> bool:
        """:meth:`observe_market` for a notice that carries no context (one ledger read)."""
        return self.observe_market(campaign, await self.ledger.bid_context(bid_id), price_cpm, lost)

    # --- the decision -------------------------------------------------------------------------

    async def decide(self, req: BidRequest, received: float | None = None) -> Decision:
        """The response to ``req``, which arrived at ``received`` (epoch seconds)."""
        t0 = self.clock()
        received = t0 if received is None else received
        tmax = req.tmax if req.tmax else self.config.default_tmax_ms
        deadline = received + (tmax - self.config.safety_ms) / 1000.0
        if deadline - t0 <= 0.0005:
            return self._no(req, NBR.INSUFFICIENT_AUCTION_TIME, t0)
        try:
            # asyncio.timeout, not wait_for: no task per request (wait_for wraps the coroutine in one)
            async with asyncio.timeout(deadline - t0):
                return await self._decide(req, deadline, t0)
        except TimeoutError:
            return self._no(req, NBR.INSUFFICIENT_AUCTION_TIME, t0)
        except Exception as exc:  # Redis down, a bad model: no bid, never an error page or a dead worker
            log.warning("bid decision failed, answering no-bid (technical error): %r", exc)
            return self._no(req, NBR.TECHNICAL_ERROR, t0)

    def _no(self, req: BidRequest, nbr: int | None, t0: float) -> Decision:
        resp = BidResponse(id=req.id, nbr=int(nbr)) if nbr is not None else BidResponse(id=req.id)
        return Decision(resp, f"nbr:{int(nbr)}" if nbr is not None else "nobid", elapsed_s=self.clock() - t0)

    def _publisher(self, req: BidRequest) -> tuple[str, list[str]]:
        if req.site is not None:
            return req.site.domain or req.site.id or "", list(req.site.cat or ())
        if req.app is not None:
            return req.app.bundle or req.app.id or "", list(req.app.cat or ())
        return "", []

    def eligible(self, req: BidRequest, profile: Mapping[str, str]) -> list[Campaign]:
        """The campaigns whose targeting matches the request and the user's profile."""
        allowed = set(req.cur or (DEFAULT_CURRENCY,))
        dev = req.device
        devicetype = dev.devicetype if dev is not None else None
        country = dev.geo.country if dev is not None and dev.geo is not None else None
        _, cats = self._publisher(req)
        segment = profile.get("segment")
        out = []
        for c in self.book.campaigns:
            t = c.targeting
            if c.currency not in allowed:
                continue
            if t.countries is not None and country not in t.countries:
                continue
            if t.devicetypes is not None and devicetype not in t.devicetypes:
                continue
            if t.pub_cats is not None and not set(t.pub_cats) & set(cats):
                continue
            if t.segments is not None and segment not in t.segments:
                continue
            out.append(c)
        return out

    def _creative_ok(self, req: BidRequest, cr: Creative) -> bool:
        if req.badv and set(cr.adomain) & set(req.badv):
            return False
        return not (req.bcat and cr.cat and set(cr.cat) & set(req.bcat))

    async def _profile(self, user_id: str | None, deadline: float) -> dict[str, str]:
        if not user_id or self.profiles is None:
            return {}
        try:
            # At most half of what is left: the reservation and the response need the rest.
            budget = max(min(self.config.redis_timeout_s, (deadline - self.clock()) / 2), 0.0005)
            async with asyncio.timeout(budget):
                return dict(await self.profiles(user_id) or {})
        except Exception as exc:  # a missing profile must not cost the bid
            log.debug("user profile unavailable: %s", exc)
            return {}

    async def _decide(self, req: BidRequest, deadline: float, t0: float) -> Decision:
        pub, _ = self._publisher(req)
        if pub and pub in self.book.blocked:
            return self._no(req, NBR.BLOCKED_PUBLISHER_OR_SITE, t0)
        camps = self.book.campaigns
        devicetype = req.device.devicetype if req.device is not None else None
        if (
            devicetype is not None
            and camps
            and all(
                c.targeting.devicetypes is not None and devicetype not in c.targeting.devicetypes
                for c in camps
            )
        ):
            return self._no(req, NBR.UNSUPPORTED_DEVICE, t0)
        user_id = req.user.id if req.user is not None else None
        if user_id is None and req.user is not None:
            user_id = req.user.buyeruid
        profile = await self._profile(user_id, deadline)
        eligible = self.eligible(req, profile)
        if not eligible:
            return self._no(req, None, t0)
        hour = time.gmtime(t0).tm_hour
        at = req.at or 2
        # (imp, campaign, creative, fields) for every candidate, then one batched deep call.
        rows: list[tuple[Imp, Campaign, Creative, dict[str, str]]] = []
        for imp in req.imp:
            if imp.pmp is not None and imp.pmp.private_auction == 1:
                continue  # private marketplace only: a bid must name one of its deals, and we hold none
            for c in eligible:
                fits = [cr for cr in c.creatives_for(imp) if self._creative_ok(req, cr)]
                if fits:
                    cr = fits[0]
                    rows.append((imp, c, cr, request_fields(req, imp, c.id, cr.id, profile, hour)))
        if not rows:
            return self._no(req, None, t0)
        p_online = [self.online.predict_one(f) for *_, f in rows]
        p_deep: Sequence[float | None] = [None] * len(rows)
        deep = self.deep
        if deep is not None:
            ids = np.stack([hash_ids(f) for *_, f in rows])
            p_deep = [float(x) for x in deep.predict(ids)]
        slots: dict[str, list[tuple[float, Candidate, dict[str, Any]]]] = {}
        for (imp, c, cr, f), po, pd in zip(rows, p_online, p_deep, strict=True):
            pctr = self.blend.predict(po, pd)
            value = c.value_per_click * pctr * 1000.0  # CPM
            if at == 1:
                value *= self.config.shade
            price = round(min(value * self.multiplier(c.id), c.bid_cap), 4)
            floor = imp.bidfloor or 0.0
            if imp.bidfloorcur and imp.bidfloorcur != c.currency and floor > 0:
                continue  # no FX table: a floor in another currency is not comparable
            if price <= 0 or price < floor:
                continue
            bid_id = f"{req.id}:{imp.id}"
            # "v", the unpaced value, feeds the pacer with this auction's market price; a
            # first-price auction's clearing price is its own bid, not the market's: no "v".
            v = value if at != 1 else 0.0
            ctx = _ctx_enc.encode({"f": f, "po": po, "pd": pd, "u": user_id or "", "v": v}).decode()
            cand = Candidate(
                bid_id=bid_id,
                campaign=c.id,
                amount=price / 1000.0,
                budget=c.daily_budget,
                user=user_id or "",
                fcap_max=c.frequency_cap.impressions if c.frequency_cap else 0,
                fcap_period_s=c.frequency_cap.period_s if c.frequency_cap else 86_400,
                context=ctx,
            )
            info = {"campaign": c.id, "creative": cr, "price": price, "pctr": pctr, "imp": imp}
            slots.setdefault(imp.id, []).append((price, cand, info))
        if not slots:
            return self._no(req, None, t0)
        order = list(slots)
        ranked = [sorted(slots[i], key=lambda x: -x[0]) for i in order]
        reservations = await self.ledger.reserve([[cand for _, cand, _ in r] for r in ranked], now=t0)
        bids: list[dict[str, Any]] = []
        reasons = set()
        for r, res in zip(ranked, reservations, strict=True):
            reasons.add(res.reason)
            if res.index is not None:
                bids.append({**r[res.index][2], "bid_id": r[res.index][1].bid_id})
        if not bids:
            return self._no(req, NBR.DAILY_USER_CAP_MET if reasons == {"fcap"} else None, t0)
        if self.clock() > deadline:
            await self._release(bids)
            return self._no(req, NBR.INSUFFICIENT_AUCTION_TIME, t0)
        resp = self._response(req, bids)
        return Decision(resp, "bid", bids, elapsed_s=self.clock() - t0)

    async def _release(self, bids: list[dict[str, Any]]) -> None:
        for b in bids:
            try:
                await self.ledger.settle(b["bid_id"], "loss")
            except Exception as exc:
                log.warning("could not release %s (it expires by itself): %s", b["bid_id"], exc)

    def _response(self, req: BidRequest, bids: list[dict[str, Any]]) -> BidResponse:
        base = self.config.notice_url.rstrip("/")
        out: list[Bid] = []
        cur = None
        for b in bids:
            cr: Creative = b["creative"]
            camp = self.book.get(b["campaign"])
            cur = camp.currency if camp is not None else cur
            q = quote(b["bid_id"], safe="")
            adm = cr.adm or _default_adm(cr, b["bid_id"])
            out.append(
                Bid(
                    id=b["bid_id"],
                    impid=b["imp"].id,
                    price=b["price"],
                    nurl=f"{base}/openrtb2/win?bid={q}&price=${{AUCTION_PRICE}}",
                    burl=f"{base}/openrtb2/bill?bid={q}&price=${{AUCTION_PRICE}}",
                    lurl=f"{base}/openrtb2/loss?bid={q}&reason=${{AUCTION_LOSS}}&mtw=${{AUCTION_MIN_TO_WIN}}",
                    adm=adm,
                    adomain=list(cr.adomain),
                    cid=b["campaign"],
                    crid=cr.id,
                    cat=list(cr.cat) or None,
                    w=cr.w,
                    h=cr.h,
                    mtype=MTYPE[cr.kind],
                )
            )
        return BidResponse(
            id=req.id,
            bidid=f"{req.id}:{self.config.seat}",
            cur=cur,
            seatbid=[SeatBid(seat=self.config.seat, bid=out)],
        )


def _default_adm(cr: Creative, bid_id: str) -> str:
    if cr.kind == "video":
        return (
            '<VAST version="4.2"><Ad id="' + cr.id + '"><InLine><AdSystem>shopstream</AdSystem>'
            "<AdTitle>" + cr.id + "</AdTitle><Creatives/></InLine></Ad></VAST>"
        )
    if cr.kind == "native":
        return '{"native":{"ver":"1.2","assets":[],"link":{"url":"https://' + cr.adomain[0] + '/"}}}'
    return (
        f'<a href="https://{cr.adomain[0]}/?bid={quote(bid_id, safe="")}">'
        f'<img src="https://{cr.adomain[0]}/creatives/{cr.id}.png" width="{cr.w}" height="{cr.h}"></a>'
    )
