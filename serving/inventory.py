"""Inventory per SKU: demand windows, forecasts, reorder points and replenishment alerts.

:class:`InventoryProcessor` is Faust-free. The inventory agent keeps one JSON
state per SKU in a changelogged table (keyed by sku, co-partitioned with the
demand and inventory topics) and calls :meth:`~InventoryProcessor.on_demand`
and :meth:`~InventoryProcessor.on_inventory` with it.

**Windows.** Demand is summed in tumbling windows of ``window_s`` by *event
time*, per SKU and per SKU x warehouse (``by_warehouse``). A window closes
when the SKU's newest event is more than ``lateness_s`` past the window's
end: events up to that late land in their own window; later ones still
move the stock level but no longer change closed demand (counted as
``late_dropped``). Windows without orders close
as zero demand. Faust's own windowed tables expire windows by the wall clock
(``WindowT.stale(ts, time.time())``), which is wrong for event time and for
replays, so the windows live in this state instead.

**Forecasts.** Each closed window feeds an
:class:`~online_models.forecast.AutoForecaster`. The state keeps the last
closed windows, and the forecaster is rebuilt from them after a restart or
rebalance (deterministic, a few ms), so nothing is lost.

**Replenishment.** Lead-time demand = forecast of the next
``lead_time`` windows; safety stock = z(service level) x the forecaster's
one-step error x sqrt(lead time); reorder point = the two summed; order-up-to
= reorder point + one window of forecast demand. When stock on hand falls to
the reorder point, one :class:`~schemas.events.ReplenishmentAlert` goes out,
suggesting the order-up-to level minus stock on hand; no other alert for the
SKU until stock rises above the reorder point again (a receipt or count).
Event ids already applied are remembered (bounded), so a replayed event does
not move stock twice.

Examples
--------
>>> p = InventoryProcessor(window_s=10, lateness_s=5, lead_time=2)
>>> st = p.new_state()
>>> from schemas.events import Receipt, DemandEvent
>>> _ = p.on_inventory(st, Receipt(event_id="r1", ts=0.0, sku="s1", qty=100))
>>> alerts = []
>>> for t in range(40):
...     alerts += p.on_demand(st, DemandEvent(event_id=f"d{t}", ts=float(t), sku="s1", qty=2, order_id="o"))
>>> st["on_hand"], len(st["history"]), len(alerts)
(20, 3, 1)
>>> alerts[0].sku, alerts[0].suggested_qty > 0
('s1', True)
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from online_models.forecast import AutoForecaster
from schemas.events import Adjustment, DemandEvent, InventoryEvent, Receipt, ReplenishmentAlert, StockCount

State = dict[str, Any]

HISTORY = 120
#: Event ids remembered per SKU: enough for the events re-delivered after a crash
#: (at most one commit interval's worth), small enough for every changelog write.
SEEN = 64


class UnknownSku(Exception):
    """Demand for a SKU that no inventory event ever mentioned."""


class InventoryProcessor:
    """Per-SKU inventory logic (see the module docstring)."""

    def __init__(
        self,
        window_s: float = 86_400.0,
        lateness_s: float = 2 * 86_400.0,
        lead_time: int = 3,
        service_level: float = 0.95,
        season: int = 7,
        horizon: int = 14,
    ) -> None:
        self.window_s = window_s
        self.lateness_s = lateness_s
        self.lead_time = lead_time
        self.z = statistics.NormalDist().inv_cdf(service_level)
        self.season = season
        self.horizon = max(horizon, lead_time + 1)
        self._models: dict[str, tuple[int, AutoForecaster]] = {}

    # -- state ----------------------------------------------------------------------
    @staticmethod
    def new_state() -> State:
        return {
            "known": False,
            "on_hand": 0,
            "open": {},
            "open_wh": {},
            "by_warehouse": {},
            "closed_until": None,
            "watermark": 0.0,
            "history": [],
            "alerted": False,
            "seen": [],
            "late_dropped": 0,
        }

    def _seen(self, st: State, event_id: str) -> bool:
        seen: list[str] = st["seen"]
        if event_id in seen:
            return True
        seen.append(event_id)
        del seen[:-SEEN]
        return False

    def window_start(self, ts: float) -> float:
        return math.floor(ts / self.window_s) * self.window_s

    def model(self, sku: str, st: State) -> AutoForecaster:
        """The SKU's forecaster; rebuilt from the closed windows when this process has none or a stale one."""
        hist: list[float] = st["history"]
        cached = self._models.get(sku)
        n_closed = st.get("n_closed", len(hist))
        if cached is not None and cached[0] == n_closed:
            return cached[1]
        f = AutoForecaster(season=self.season)
        for v in hist:
            f.learn_one(v)
        self._models[sku] = (n_closed, f)
        return f

    # -- events ---------------------------------------------------------------------
    def on_inventory(self, st: State, ev: InventoryEvent) -> list[ReplenishmentAlert]:
        """Apply a receipt, adjustment or count; returns alerts (re-arms the alert when stock recovers)."""
        if self._seen(st, ev.event_id):
            return []
        st["known"] = True
        if isinstance(ev, Receipt):
            st["on_hand"] += ev.qty
        elif isinstance(ev, Adjustment):
            st["on_hand"] = max(st["on_hand"] + ev.delta, 0)
        elif isinstance(ev, StockCount):
            st["on_hand"] = ev.on_hand
        return self._check(ev.sku, st, ev.ts)

    def on_demand(self, st: State, ev: DemandEvent) -> list[ReplenishmentAlert]:
        """Apply one order line (signed quantity); close due windows; returns alerts."""
        if not st["known"]:
            raise UnknownSku(ev.sku)
        if self._seen(st, ev.event_id):
            return []
        st["on_hand"] = max(st["on_hand"] - ev.qty, 0)
        start = self.window_start(ev.ts)
        if st["closed_until"] is None:
            st["closed_until"] = start
        if start < st["closed_until"]:
            st["late_dropped"] += 1
        else:
            key = repr(start)
            st["open"][key] = st["open"].get(key, 0) + ev.qty
            wh = st.setdefault("open_wh", {}).setdefault(ev.warehouse, {})
            wh[key] = wh.get(key, 0) + ev.qty
        st["watermark"] = max(st["watermark"], ev.ts)
        self._close_windows(ev.sku, st)
        return self._check(ev.sku, st, ev.ts)

    def _close_windows(self, sku: str, st: State) -> None:
        f = self.model(sku, st)
        while st["closed_until"] + self.window_s + self.lateness_s <= st["watermark"]:
            start = st["closed_until"]
            total = float(st["open"].pop(repr(start), 0))
            st["history"].append(total)
            for wh, windows in st.get("open_wh", {}).items():
                hist_wh = st.setdefault("by_warehouse", {}).setdefault(wh, [])
                hist_wh.append(float(windows.pop(repr(start), 0)))
                del hist_wh[:-HISTORY]
            del st["history"][:-HISTORY]
            st["n_closed"] = st.get("n_closed", 0) + 1
            f.learn_one(total)
            st["closed_until"] = start + self.window_s
        self._models[sku] = (st.get("n_closed", len(st["history"])), f)

    def plan(self, sku: str, st: State) -> dict[str, Any]:
        """Forecast, reorder point, order-up-to level and stock-out risk of a SKU now."""
        f = self.model(sku, st)
        hist = st["history"]
        forecast = f.forecast(self.horizon)
        lead = sum(forecast[: self.lead_time])
        if len(f.residuals) >= 5:
            sigma = f.sigma()
        else:  # too little history: Poisson-like spread of the mean demand
            sigma = math.sqrt(max(statistics.fmean(hist), 1.0)) if hist else 1.0
        sd_lead = sigma * math.sqrt(self.lead_time)
        rop = lead + self.z * sd_lead
        up_to = rop + forecast[self.lead_time]
        on_hand = st["on_hand"]
        risk = 1.0 - statistics.NormalDist(lead, max(sd_lead, 1e-6)).cdf(on_hand)
        lo, hi = f.interval(self.horizon, level=0.9)
        return {
            "forecast": forecast,
            "interval_90": [lo, hi],
            "reorder_point": rop,
            "order_up_to": up_to,
            "stockout_risk": risk,
        }

    def _check(self, sku: str, st: State, ts: float) -> list[ReplenishmentAlert]:
        if not st["history"]:
            return []  # no closed window yet: no forecast to plan with
        p = self.plan(sku, st)
        on_hand = st["on_hand"]
        if on_hand > p["reorder_point"]:
            st["alerted"] = False
            return []
        if st["alerted"]:
            return []
        qty = max(math.ceil(p["order_up_to"] - on_hand), 1)
        st["alerted"] = True
        return [
            ReplenishmentAlert(
                sku=sku,
                warehouse="all",
                on_hand=int(st["on_hand"]),
                forecast=[round(v, 3) for v in p["forecast"][: self.lead_time + 1]],
                reorder_point=round(p["reorder_point"], 3),
                suggested_qty=qty,
                stockout_risk=round(min(max(p["stockout_risk"], 0.0), 1.0), 4),
                ts=ts or time.time(),
            )
        ]
