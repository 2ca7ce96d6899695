"""CRM in the stream: per-customer RFM, segment, lifetime value and churn risk, and the signals.

:class:`CrmProcessor` keeps one small state per customer (a
:class:`online_models.crm.CustomerState` plus what was last signalled) in a
changelogged Faust table keyed by user id, co-partitioned with orders,
reviews and support messages. Each order updates it in O(1):

* **RFM** scores and the **segment** (:func:`online_models.crm.rfm_segment`);
* **CLV**: BG/NBD's expected purchases over ``horizon_weeks`` times the
  customer's mean order value;
* **churn risk**: ``1 - P(alive)`` under BG/NBD.

The population parameters come from ``online_models.crm.BGNBD`` (fitted
offline: ``benchmarks/care_quality.py`` fits them on CDNOW; the defaults are
that fit). The features go to the customer's Redis profile
(``{prefix}user:{id}``: ``segment``, ``clv``, ``churn_risk``, ``p_alive``,
``rfm``, ``n_orders``), where the bidder's segment targeting and the care
router read them.

Signals (``crm.signals.v1``, keyed by user) are sent on change only: a new
segment, churn risk crossing ``churn_thresholds`` (either way), a customer
becoming a VIP (CLV at least ``vip_clv``), and a negative review from a
recent buyer. Churn risk also rises while a customer does nothing, so each
partition's customers are re-scored once per ``sweep_s`` of event time
(:meth:`CrmProcessor.due_sweep`), in the context of that partition's events.

Examples
--------
>>> p = CrmProcessor()
>>> st = p.new_state(partition=0)
>>> feats, sigs = p.on_order(st, 0.0, 120.0, now=0.0, user="u1")
>>> feats["segment"], [s.kind for s in sigs]
('new', ['segment'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from online_models.crm import BGNBD, DAY, WEEK, CustomerState, RFMScorer, crm_signals
from schemas.events import CrmSignal

#: BG/NBD fitted on CDNOW's calibration period (weeks): Fader, Hardie & Lee (2005) report
#: r=0.243, alpha=4.414, a=0.793, b=2.426; ``benchmarks/care_quality.py`` refits them each run.
CDNOW_PARAMS = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def _bucket(value: float, thresholds: tuple[float, ...]) -> int:
    return sum(value >= t for t in thresholds)


class CrmProcessor:
    """Per-customer CRM state → Redis features and CRM signals (see the module docstring)."""

    def __init__(
        self,
        model: BGNBD | None = None,
        scorer: RFMScorer | None = None,
        horizon_weeks: float = 52.0,
        churn_thresholds: tuple[float, ...] = (0.5, 0.8),
        vip_clv: float = 500.0,
        recent_buyer_days: float = 30.0,
        negative_below: float = -0.3,
        sweep_s: float = DAY,
    ) -> None:
        self.model = model or BGNBD(**CDNOW_PARAMS)
        self.scorer = scorer or RFMScorer()
        self.horizon_weeks = horizon_weeks
        self.churn_thresholds = churn_thresholds
        self.vip_clv = vip_clv
        self.recent_buyer_days = recent_buyer_days
        self.negative_below = negative_below
        self.sweep_s = sweep_s
        self._last_sweep: dict[int, float] = {}

    def new_state(self, partition: int) -> dict[str, Any]:
        return {"c": dataclasses.asdict(CustomerState()), "seg": "", "churn": 0, "vip": False, "p": partition}

    @staticmethod
    def customer(st: Mapping[str, Any]) -> CustomerState:
        return CustomerState(**st["c"])

    def score(self, st: dict[str, Any], now: float, user: str) -> tuple[dict[str, str], list[CrmSignal]]:
        """Re-score one customer at ``now``; signals for what changed since the last ones."""
        c = self.customer(st)
        if c.first_ts is None:
            return {}, []
        sig = crm_signals(c, self.model, self.scorer, now, horizon=self.horizon_weeks, unit=WEEK)
        clv = sig.expected_purchases * c.mean_value
        out: list[CrmSignal] = []
        if sig.segment != st.get("seg"):
            out.append(
                CrmSignal(user_id=user, kind="segment", value=float(sum(sig.rfm)), label=sig.segment, ts=now)
            )
            st["seg"] = sig.segment
        churn = _bucket(sig.churn_risk, self.churn_thresholds)
        if churn != st.get("churn", 0):
            label = "rising" if churn > st.get("churn", 0) else "falling"
            out.append(
                CrmSignal(
                    user_id=user, kind="churn_risk", value=round(sig.churn_risk, 4), label=label, ts=now
                )
            )
            st["churn"] = churn
        vip = clv >= self.vip_clv
        if vip and not st.get("vip"):
            out.append(CrmSignal(user_id=user, kind="vip", value=round(clv, 2), label="vip", ts=now))
        st["vip"] = vip
        features = {
            "segment": sig.segment,
            "clv": f"{clv:.2f}",
            "churn_risk": f"{sig.churn_risk:.4f}",
            "p_alive": f"{sig.p_alive:.4f}",
            "rfm": "".join(str(v) for v in sig.rfm),
            "n_orders": str(c.n_orders),
            "vip": "1" if vip else "0",
        }
        return features, out

    def on_order(
        self, st: dict[str, Any], order_ts: float, value: float, now: float, user: str
    ) -> tuple[dict[str, str], list[CrmSignal]]:
        c = self.customer(st)
        c.update(order_ts, value)
        st["c"] = dataclasses.asdict(c)
        return self.score(st, now, user)

    def recent_buyer(self, st: Mapping[str, Any], now: float) -> bool:
        last = st["c"].get("last_ts")
        return last is not None and now - last <= self.recent_buyer_days * DAY

    def on_review(
        self, st: Mapping[str, Any], sentiment: float, now: float, user: str, sku: str
    ) -> list[CrmSignal]:
        """A negative review from a recent buyer is a signal."""
        if sentiment < self.negative_below and self.recent_buyer(st, now):
            return [
                CrmSignal(
                    user_id=user,
                    kind="review_sentiment",
                    value=round(sentiment, 4),
                    label=f"negative_recent_buyer:{sku}",
                    ts=now,
                )
            ]
        return []

    def due_sweep(self, partition: int, now: float) -> bool:
        """Whether this partition's customers are due for re-scoring at event time ``now``."""
        last = self._last_sweep.get(partition)
        if last is None:
            self._last_sweep[partition] = now
            return False
        if now - last >= self.sweep_s:
            self._last_sweep[partition] = now
            return True
        return False
