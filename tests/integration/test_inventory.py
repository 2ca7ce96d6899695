"""Inventory against real Kafka and Redis in a worker process: alerts, windows, dead letters, restart."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import redis

from schemas.events import DEAD_LETTER_CODEC, REPLENISHMENT_CODEC
from streams.app import ensure_topics
from tests.kafka_util import consume_until, produce_all

pytestmark = pytest.mark.integration

enc = msgspec.json.Encoder()
DAY = 86_400.0
T0 = 1_750_000_000.0 - (1_750_000_000.0 % DAY)  # a midnight


def order(n: int, ts: float, sku: str, qty: int, user: str = "u1", status: str = "placed") -> dict:
    return {
        "type": "order",
        "event_id": f"o{n}-{sku}-{status}",
        "ts": ts,
        "order_id": f"order-{n}",
        "user_id": user,
        "status": status,
        "lines": [{"sku": sku, "qty": qty, "unit_price": 5.0, "currency": "EUR"}],
    }


def receipt(n: int, ts: float, sku: str, qty: int) -> dict:
    return {"type": "receipt", "event_id": f"r{n}-{sku}", "ts": ts, "sku": sku, "qty": qty}


def send(settings, orders=(), inventory=()) -> None:
    o, i = settings.topic_prefix + "shop.orders.v1", settings.topic_prefix + "shop.inventory.v1"
    msgs = [(i, e["sku"].encode(), enc.encode(e)) for e in inventory]
    msgs += [(o, e["user_id"].encode(), enc.encode(e)) for e in orders]
    asyncio.run(produce_all(settings.kafka_bootstrap, msgs))


def wait_redis(client, key: str, field: str, want: str, timeout: float = 20) -> str | None:
    end = time.monotonic() + timeout
    value = None
    while time.monotonic() < end:
        value = client.hget(key, field)
        if value == want:
            return value
        time.sleep(0.2)
    return value


def test_one_alert_per_dip_survives_restart_and_bad_lines_are_dead_lettered(settings_factory, worker_factory):
    settings = settings_factory(demand_window_s=DAY, demand_lateness_s=DAY, lead_time_windows=2)
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")
    sku = "sku-A"
    # 300 in stock; 10 sold per day for 20 days (windows close a day after they end).
    rc = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    send(settings, inventory=[receipt(0, T0, sku, 300)])
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "on_hand", "300") == "300"
    send(settings, orders=[order(d, T0 + d * DAY + 3600, sku, 10) for d in range(20)])
    # stock 100 after 20 days; ROP ~ 2 days x 10 + safety: no alert yet.
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "on_hand", "100") == "100"
    alerts_topic = settings.topic_prefix + "ops.replenishment.v1"
    none = asyncio.run(consume_until(settings.kafka_bootstrap, alerts_topic, lambda m: len(m) > 0, 3))
    assert none == []
    # Big orders take it below the reorder point: exactly one alert, even as more orders come.
    dip = [20, 20, 20, 25]  # 100 -> 15 on hand, well below a reorder point of about 20
    send(settings, orders=[order(100 + k, T0 + 20 * DAY + 3600 * (k + 1), sku, q) for k, q in enumerate(dip)])
    msgs = asyncio.run(consume_until(settings.kafka_bootstrap, alerts_topic, lambda m: len(m) >= 1, 30))
    alerts = [REPLENISHMENT_CODEC.decode(m.value) for m in msgs]
    assert len(alerts) == 1 and alerts[0].sku == sku and msgs[0].key == sku.encode()
    a = alerts[0]
    assert a.on_hand <= a.reorder_point and a.suggested_qty > 0 and 0 <= a.stockout_risk <= 1
    assert len(a.forecast) == 3 and all(v > 0 for v in a.forecast)

    # Restart the worker; more orders for the same dip must not repeat the alert.
    worker.stop(timeout=30)
    worker = worker_factory(settings, name="w1b")
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")
    send(settings, orders=[order(200, T0 + 21 * DAY, sku, 1)])
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "on_hand", "14") == "14"
    msgs = asyncio.run(consume_until(settings.kafka_bootstrap, alerts_topic, lambda m: len(m) > 1, 4))
    assert len(msgs) == 1, [REPLENISHMENT_CODEC.decode(m.value) for m in msgs]
    # Selling out marks the item out of stock in Redis (recommendations skip it).
    send(settings, orders=[order(201, T0 + 21 * DAY + 60, sku, 14)])
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "oos", "1") == "1"
    # A receipt re-arms the alert: the next dip alerts again.
    send(settings, inventory=[receipt(2, T0 + 21 * DAY + 120, sku, 300)])
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "oos", "0") == "0"
    send(settings, orders=[order(300, T0 + 21 * DAY + 200, sku, 290)])
    msgs = asyncio.run(consume_until(settings.kafka_bootstrap, alerts_topic, lambda m: len(m) >= 2, 30))
    assert len(msgs) == 2
    assert rc.hget(f"{settings.redis_prefix}item:{sku}", "oos") == "0"

    # Unknown SKUs and negative quantities go to dead-letter topics.
    bad_qty = order(400, T0 + 22 * DAY, sku, 1)
    bad_qty["lines"][0]["qty"] = -5
    send(settings, orders=[order(401, T0 + 22 * DAY, "sku-never-received", 3), bad_qty])
    demand_dlq = settings.topic_prefix + "shop.demand.v1.dlq"
    orders_dlq = settings.topic_prefix + "shop.orders.v1.dlq"
    d1 = asyncio.run(consume_until(settings.kafka_bootstrap, demand_dlq, lambda m: len(m) >= 1, 30))
    d2 = asyncio.run(consume_until(settings.kafka_bootstrap, orders_dlq, lambda m: len(m) >= 1, 30))
    unknown = [DEAD_LETTER_CODEC.decode(m.value) for m in d1]
    negative = [DEAD_LETTER_CODEC.decode(m.value) for m in d2]
    assert [d.reason for d in unknown] == ["unknown_sku"] and b"sku-never-received" in unknown[0].original
    assert [d.reason for d in negative] == ["constraint"] and negative[0].field == "$.lines[0].qty"
    assert worker.alive()


def test_late_events_land_in_their_window(settings_factory, worker_factory):
    settings = settings_factory(demand_window_s=DAY, demand_lateness_s=2 * DAY, lead_time_windows=2)
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")
    sku = "sku-L"
    rc = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    send(settings, inventory=[receipt(0, T0, sku, 10_000)])
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "on_hand", "10000") == "10000"
    # Day 0: 5; day 1: 7; day 2: 9 ... but the day-1 event arrives after day-3's (late, within lateness)
    # and a day-0 event arrives after day 5 (later than the lateness: stock moves, demand does not).
    events = [
        order(0, T0 + 100, sku, 5),
        order(2, T0 + 2 * DAY + 100, sku, 9),
        order(3, T0 + 3 * DAY + 100, sku, 4),
        order(1, T0 + 1 * DAY + 100, sku, 7),  # late, within 2 days
        order(5, T0 + 5 * DAY + 100, sku, 6),
        order(6, T0 + 0 * DAY + 200, sku, 100),  # too late for day 0 (5 days)
        order(7, T0 + 9 * DAY + 100, sku, 1),  # closes windows up to day 6
    ]
    send(settings, orders=events)
    assert wait_redis(rc, f"{settings.redis_prefix}item:{sku}", "on_hand", str(10_000 - 132)) == str(
        10_000 - 132
    )
    end = time.monotonic() + 20
    state = None
    while time.monotonic() < end:
        state = worker_state(worker, sku)
        if state and len(state["history"]) >= 7:
            break
        time.sleep(0.3)
    assert state is not None, "the worker does not expose the SKU's state"
    assert state["history"][:7] == [5.0, 7.0, 9.0, 4.0, 0.0, 6.0, 0.0], state
    assert state["late_dropped"] == 1


def worker_state(worker, sku: str) -> dict | None:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{worker.url}/inventory/{sku}", timeout=2) as r:
            return json.loads(r.read())
    except Exception:
        return None
