"""Input events and output records.

Conventions: ``ts`` is a Unix timestamp in seconds (float); ids are non-empty
strings of at most 128 characters; money is a float in ``currency`` (ISO 4217).
Tagged unions use the ``type`` field. Unknown fields are ignored on input (a
producer may add a field without a new topic version); missing or mistyped
known fields are errors.

Examples
--------
>>> from schemas.codec import Codec
>>> CLICK_CODEC.decode(b'{"type":"click","event_id":"e1","ts":1.5,"user_id":"u1","item_id":"i9"}')
Click(event_id='e1', ts=1.5, user_id='u1', session_id=None, item_id='i9', category=None, price=None)
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

from schemas.codec import DEFAULT_MAX_BYTES, Codec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Ts = Annotated[float, msgspec.Meta(ge=0)]
Money = Annotated[float, msgspec.Meta(ge=0)]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
Text = Annotated[str, msgspec.Meta(max_length=10_000)]
Qty = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class _Event(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    event_id: Id
    ts: Ts


# --- clickstream: shop.clicks.v1, keyed by user_id ---------------------------


class _ItemEvent(_Event, kw_only=True, frozen=True):
    user_id: Id
    session_id: Id | None = None
    item_id: Id
    category: Id | None = None
    price: Money | None = None


class View(_ItemEvent, tag="view", kw_only=True, frozen=True):
    """A product page view."""


class Click(_ItemEvent, tag="click", kw_only=True, frozen=True):
    """A click on a product (list, recommendation slot, search result)."""


class AddToCart(_ItemEvent, tag="add_to_cart", kw_only=True, frozen=True):
    """An item put in the cart."""

    qty: Qty = 1


class RemoveFromCart(_ItemEvent, tag="remove_from_cart", kw_only=True, frozen=True):
    """An item taken out of the cart."""

    qty: Qty = 1


class Search(_Event, tag="search", kw_only=True, frozen=True):
    """A search query."""

    user_id: Id
    session_id: Id | None = None
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    category: Id | None = None


ClickEvent = Union[View, Click, AddToCart, RemoveFromCart, Search]
ITEM_EVENTS = (View, Click, AddToCart, RemoveFromCart)

# --- orders: shop.orders.v1, keyed by user_id --------------------------------


class OrderLine(msgspec.Struct, kw_only=True, frozen=True):
    """One line of an order."""

    sku: Id
    qty: Qty
    unit_price: Money
    currency: Currency
    category: Id | None = None


class Order(msgspec.Struct, tag_field="type", tag="order", kw_only=True, frozen=True):
    """A placed order, or (``status``) its return or cancellation."""

    event_id: Id
    ts: Ts
    order_id: Id
    user_id: Id
    lines: Annotated[list[OrderLine], msgspec.Meta(min_length=1, max_length=500)]
    status: Literal["placed", "returned", "cancelled"] = "placed"
    warehouse: Id | None = None


# --- ad events: ads.events.v1, keyed by request id ---------------------------


class _AdEvent(_Event, kw_only=True, frozen=True):
    request_id: Id
    imp_id: Id
    campaign_id: Id
    creative_id: Id | None = None
    user_id: Id | None = None


class Impression(_AdEvent, tag="impression", kw_only=True, frozen=True):
    """An ad was shown; ``price`` is the clearing price (CPM / 1000 per impression)."""

    price: Money = 0.0


class AdClick(_AdEvent, tag="ad_click", kw_only=True, frozen=True):
    """A click on a shown ad."""


class Conversion(_AdEvent, tag="conversion", kw_only=True, frozen=True):
    """A conversion attributed to an ad."""

    value: Money = 0.0


AdEvent = Union[Impression, AdClick, Conversion]

# --- reviews, support messages ------------------------------------------------


class Review(msgspec.Struct, tag_field="type", tag="review", kw_only=True, frozen=True):
    """A product review."""

    event_id: Id
    ts: Ts
    review_id: Id
    user_id: Id
    sku: Id
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    text: Text = ""
    lang: Annotated[str, msgspec.Meta(max_length=16)] | None = None


class SupportMessage(msgspec.Struct, tag_field="type", tag="support_message", kw_only=True, frozen=True):
    """A customer-service message; ``intent`` is set when an agent labelled it."""

    event_id: Id
    ts: Ts
    message_id: Id
    user_id: Id
    conversation_id: Id | None = None
    channel: Literal["email", "chat", "phone", "social"] = "chat"
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
    intent: Id | None = None


# --- inventory: shop.inventory.v1, keyed by sku --------------------------------


class _InventoryEvent(_Event, kw_only=True, frozen=True):
    sku: Id
    warehouse: Id = "main"


class Receipt(_InventoryEvent, tag="receipt", kw_only=True, frozen=True):
    """Goods received into a warehouse."""

    qty: Qty


class Adjustment(_InventoryEvent, tag="adjustment", kw_only=True, frozen=True):
    """A manual correction (damage, loss, found stock); ``delta`` may be negative."""

    delta: Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)]
    reason: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class StockCount(_InventoryEvent, tag="stock_count", kw_only=True, frozen=True):
    """A physical count that replaces the book level."""

    on_hand: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]


InventoryEvent = Union[Receipt, Adjustment, StockCount]


class DemandEvent(msgspec.Struct, tag_field="type", tag="demand", kw_only=True, frozen=True):
    """One order line re-keyed by sku (internal topic shop.demand.v1).

    ``qty`` is signed: positive for a placed order, negative for a return or
    cancellation. ``event_id`` is the order event's id and the line number.
    """

    event_id: Id
    ts: Ts
    sku: Id
    warehouse: Id = "main"
    qty: Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)]
    order_id: Id


# --- outputs -------------------------------------------------------------------


class RecItem(msgspec.Struct, kw_only=True, frozen=True):
    """One recommended item with the reason it was chosen."""

    item_id: Id
    score: float
    reason: Annotated[str, msgspec.Meta(max_length=256)]


class Recommendation(msgspec.Struct, kw_only=True, frozen=True):
    """A top-K list for a user (shop.recommendations.v1, keyed by user_id).

    ``event_id`` is the event that triggered it (empty for a request/response call).
    """

    event_id: str
    user_id: Id
    items: list[RecItem]
    model: str
    source_ts: Ts
    generated_at: Ts


class ReplenishmentAlert(msgspec.Struct, kw_only=True, frozen=True):
    """Reorder advice for one SKU (ops.replenishment.v1, keyed by sku)."""

    sku: Id
    warehouse: Id
    on_hand: int
    forecast: list[float]
    reorder_point: float
    suggested_qty: int
    stockout_risk: Annotated[float, msgspec.Meta(ge=0, le=1)]
    ts: Ts


class RoutingDecision(msgspec.Struct, kw_only=True, frozen=True):
    """Where a support message goes (care.routing.v1, keyed by conversation or user)."""

    message_id: Id
    user_id: Id
    queue: Id
    intent: Id
    intent_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)]
    sentiment: Annotated[float, msgspec.Meta(ge=-1, le=1)]
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)]
    escalate: bool
    ts: Ts
    #: ``en`` or ``zh`` (by script).
    lang: str | None = None
    #: The reply sent when the message is answered automatically (or the out-of-scope fallback).
    answer: str | None = None
    faq_id: str | None = None
    #: Why this queue and priority, for the agent who picks it up.
    reason: str | None = None
    conversation_id: str | None = None


class CrmSignal(msgspec.Struct, kw_only=True, frozen=True):
    """A CRM fact about a user (crm.signals.v1, keyed by user_id)."""

    user_id: Id
    kind: Literal["segment", "churn_risk", "clv", "vip", "review_sentiment"]
    value: float
    label: str | None = None
    ts: Ts


class OpsAlert(msgspec.Struct, kw_only=True, frozen=True):
    """An operational alert (ops.alerts.v1, keyed by subject)."""

    alert_id: Id
    ts: Ts
    severity: Literal["info", "warning", "critical"]
    kind: Id
    subject: Annotated[str, msgspec.Meta(max_length=512)]
    message: Annotated[str, msgspec.Meta(max_length=4096)]
    status: Literal["firing", "resolved"] = "firing"


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    """A rejected input message (``<topic>.dlq``, keyed like the source).

    ``original`` holds the exact bytes received (base64 in JSON).
    """

    source_topic: str
    partition: int
    offset: int
    reason: str
    error: str
    field: str | None
    original: bytes
    key: bytes | None
    ts: Ts
    worker: str = ""


CLICK_CODEC: Codec[ClickEvent] = Codec(ClickEvent, DEFAULT_MAX_BYTES)  # type: ignore[arg-type]
ORDER_CODEC: Codec[Order] = Codec(Order, DEFAULT_MAX_BYTES)
AD_EVENT_CODEC: Codec[AdEvent] = Codec(AdEvent, DEFAULT_MAX_BYTES)  # type: ignore[arg-type]
REVIEW_CODEC: Codec[Review] = Codec(Review, DEFAULT_MAX_BYTES)
SUPPORT_CODEC: Codec[SupportMessage] = Codec(SupportMessage, DEFAULT_MAX_BYTES)
INVENTORY_CODEC: Codec[InventoryEvent] = Codec(InventoryEvent, DEFAULT_MAX_BYTES)  # type: ignore[arg-type]
DEMAND_CODEC: Codec[DemandEvent] = Codec(DemandEvent, DEFAULT_MAX_BYTES)
RECOMMENDATION_CODEC: Codec[Recommendation] = Codec(Recommendation)
DEAD_LETTER_CODEC: Codec[DeadLetter] = Codec(DeadLetter, 16 * 1024 * 1024)
REPLENISHMENT_CODEC: Codec[ReplenishmentAlert] = Codec(ReplenishmentAlert)
ROUTING_CODEC: Codec[RoutingDecision] = Codec(RoutingDecision)
CRM_CODEC: Codec[CrmSignal] = Codec(CrmSignal)
OPS_ALERT_CODEC: Codec[OpsAlert] = Codec(OpsAlert)
