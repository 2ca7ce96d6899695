"""Topic names, versioned and defined in one place.

A breaking schema change gets a new ``.vN`` topic. Tests and parallel
deployments isolate themselves with a prefix (``SHOPSTREAM_TOPIC_PREFIX``).

Examples
--------
>>> Topics("t1-").clicks
't1-shop.clicks.v1'
>>> dlq_name("shop.clicks.v1")
'shop.clicks.v1.dlq'
"""

from __future__ import annotations

import dataclasses

CLICKS = "shop.clicks.v1"
ORDERS = "shop.orders.v1"
AD_EVENTS = "ads.events.v1"
BID_REQUESTS = "ads.bid-requests.v1"
REVIEWS = "shop.reviews.v1"
CARE_MESSAGES = "care.messages.v1"
INVENTORY = "shop.inventory.v1"

RECOMMENDATIONS = "shop.recommendations.v1"
BID_RESPONSES = "ads.bid-responses.v1"
REPLENISHMENT = "ops.replenishment.v1"
CARE_ROUTING = "care.routing.v1"
CRM_SIGNALS = "crm.signals.v1"
OPS_ALERTS = "ops.alerts.v1"

#: Internal: order lines re-keyed by sku for the inventory agent.
DEMAND = "shop.demand.v1"

INPUTS = (CLICKS, ORDERS, AD_EVENTS, BID_REQUESTS, REVIEWS, CARE_MESSAGES, INVENTORY)
OUTPUTS = (RECOMMENDATIONS, BID_RESPONSES, REPLENISHMENT, CARE_ROUTING, CRM_SIGNALS, OPS_ALERTS)


def dlq_name(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


@dataclasses.dataclass(frozen=True)
class Topics:
    """Topic names with a deployment prefix applied."""

    prefix: str = ""

    def name(self, base: str) -> str:
        """``base`` with the prefix."""
        return self.prefix + base

    def __getattr__(self, attr: str) -> str:
        base = globals().get(attr.upper())
        if not isinstance(base, str) or attr.startswith("_"):
            raise AttributeError(attr)
        return self.prefix + base

    def inputs(self) -> list[str]:
        """Every input topic."""
        return [self.prefix + t for t in INPUTS]

    def outputs(self) -> list[str]:
        """Every output topic."""
        return [self.prefix + t for t in OUTPUTS]

    def internal(self) -> list[str]:
        """Topics the app writes and reads itself (re-keying)."""
        return [self.prefix + DEMAND]
