"""Inventory logic without services: windows, lateness, dedupe, alerts and re-arming."""

from __future__ import annotations

import pytest

from schemas.events import Adjustment, DemandEvent, Receipt, StockCount
from serving.inventory import InventoryProcessor, UnknownSku


def demand(n: int, ts: float, qty: int, wh: str = "main") -> DemandEvent:
    return DemandEvent(event_id=f"d{n}", ts=ts, sku="s", warehouse=wh, qty=qty, order_id=f"o{n}")


def test_windows_close_by_event_time_with_zero_fill_and_lateness():
    p = InventoryProcessor(window_s=10, lateness_s=10, lead_time=2)
    st = p.new_state()
    p.on_inventory(st, Receipt(event_id="r", ts=0, sku="s", qty=1000))
    p.on_demand(st, demand(0, 1, 3))
    p.on_demand(st, demand(1, 45, 2, wh="east"))  # closes [0,10), [10,20), [20,30)
    assert st["history"] == [3.0, 0.0, 0.0]
    p.on_demand(st, demand(2, 33, 4))  # late but within 10 s of lateness: window [30,40)
    p.on_demand(st, demand(3, 5, 100))  # too late: stock moves, closed demand does not
    p.on_demand(st, demand(4, 70, 1))  # closes [30,40), [40,50), [50,60)
    assert st["history"] == [3.0, 0.0, 0.0, 4.0, 2.0, 0.0]
    assert st["by_warehouse"]["east"][-2] == 2.0 and st["by_warehouse"]["main"][-3] == 4.0
    assert st["late_dropped"] == 1
    assert st["on_hand"] == 1000 - 110


def test_replayed_events_apply_once_and_unknown_skus_are_refused():
    p = InventoryProcessor(window_s=10, lateness_s=0)
    st = p.new_state()
    with pytest.raises(UnknownSku):
        p.on_demand(st, demand(0, 1, 1))
    p.on_inventory(st, Receipt(event_id="r", ts=0, sku="s", qty=50))
    p.on_inventory(st, Receipt(event_id="r", ts=0, sku="s", qty=50))
    p.on_demand(st, demand(1, 1, 5))
    p.on_demand(st, demand(1, 1, 5))
    assert st["on_hand"] == 45
    p.on_inventory(st, Adjustment(event_id="a", ts=2, sku="s", delta=-100))
    assert st["on_hand"] == 0
    p.on_inventory(st, StockCount(event_id="c", ts=3, sku="s", on_hand=7))
    assert st["on_hand"] == 7


def test_one_alert_per_dip_and_a_receipt_re_arms_it():
    p = InventoryProcessor(window_s=1, lateness_s=0, lead_time=3)
    st = p.new_state()
    p.on_inventory(st, Receipt(event_id="r0", ts=0, sku="s", qty=200))
    alerts = []
    for t in range(66):  # 200 - 66 x 3 = 2 on hand; reorder point ~ 3 windows x 3
        alerts += p.on_demand(st, demand(t, t + 0.5, 3))
    assert len(alerts) == 1
    a = alerts[0]
    assert a.on_hand <= a.reorder_point < 200 and a.suggested_qty >= 1
    assert p.on_inventory(st, Receipt(event_id="r1", ts=66, sku="s", qty=300)) == []
    again = []
    for t in range(66, 200):
        again += p.on_demand(st, demand(t, t + 0.5, 3))
    assert len(again) == 1
    plan = p.plan("s", st)
    lo, hi = plan["interval_90"]
    assert all(a <= f <= b for a, f, b in zip(lo, plan["forecast"], hi, strict=True))


def test_forecaster_is_rebuilt_identically_after_a_restart():
    p1 = InventoryProcessor(window_s=1, lateness_s=0)
    st = p1.new_state()
    p1.on_inventory(st, Receipt(event_id="r", ts=0, sku="s", qty=10_000))
    for t in range(50):
        p1.on_demand(st, demand(t, t + 0.5, 1 + t % 7))
    import json

    restored = json.loads(json.dumps(st))  # what the changelog gives a new worker
    p2 = InventoryProcessor(window_s=1, lateness_s=0)
    assert p2.plan("s", restored)["forecast"] == p1.plan("s", st)["forecast"]
