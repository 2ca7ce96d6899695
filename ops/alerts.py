"""Alert rules with hysteresis: status changes, threshold crossings and model-quality drift.

Each rule keeps its own state and returns :class:`~schemas.events.OpsAlert`
records only on transitions, so a flapping signal does not flood the
ops-alerts topic:

* a condition must hold for ``fire_after`` consecutive evaluations before it
  fires, and be clear for ``clear_after`` before it resolves;
* thresholds have separate fire and clear levels (a band), e.g. lag fires
  above 30 s and clears below 20 s;
* drift of an online model's prequential error is detected with River's
  ADWIN; a drift alert resolves after ``drift_cooldown`` quiet evaluations.

Examples
--------
>>> rules = AlertRules(fire_after=2, clear_after=2)
>>> [a.status for a in rules.threshold("lag_seconds", "g1", 50.0, fire_at=30, clear_at=20)]
[]
>>> [a.status for a in rules.threshold("lag_seconds", "g1", 45.0, fire_at=30, clear_at=20)]
['firing']
>>> [a.status for a in rules.threshold("lag_seconds", "g1", 25.0, fire_at=30, clear_at=20)]
[]
>>> rules.threshold("lag_seconds", "g1", 10.0, fire_at=30, clear_at=20)
[]
>>> [a.status for a in rules.threshold("lag_seconds", "g1", 10.0, fire_at=30, clear_at=20)]
['resolved']
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from schemas.events import OpsAlert

#: Group statuses that are alerts, with their severity.
STATUS_SEVERITY = {
    "WARNING": "warning",
    "STALL": "critical",
    "STOP": "critical",
    "REWIND": "warning",
    "ERROR": "critical",
}


@dataclass
class _Cond:
    firing: bool = False
    streak: int = 0  # consecutive evaluations disagreeing with ``firing``
    detail: str = ""


@dataclass
class AlertRules:
    """Hysteresis state for every (kind, subject) the caller evaluates."""

    fire_after: int = 2
    clear_after: int = 3
    drift_cooldown: int = 100
    conds: dict[tuple[str, str], _Cond] = field(default_factory=dict)
    _adwin: dict[str, object] = field(default_factory=dict)
    _drift_quiet: dict[str, int] = field(default_factory=dict)
    history: list[OpsAlert] = field(default_factory=list)

    def _emit(self, kind: str, subject: str, severity: str, message: str, status: str) -> list[OpsAlert]:
        alert = OpsAlert(
            alert_id=uuid.uuid4().hex,
            ts=time.time(),
            severity=severity,  # type: ignore[arg-type]
            kind=kind,
            subject=subject,
            message=message,
            status=status,  # type: ignore[arg-type]
        )
        self.history.append(alert)
        del self.history[:-500]
        return [alert]

    def _step(self, kind: str, subject: str, active: bool, severity: str, message: str) -> list[OpsAlert]:
        c = self.conds.setdefault((kind, subject), _Cond())
        if active == c.firing:
            c.streak = 0
            return []
        c.streak += 1
        if c.streak < (self.fire_after if active else self.clear_after):
            return []
        c.firing, c.streak = active, 0
        return self._emit(
            kind, subject, severity if active else "info", message, "firing" if active else "resolved"
        )

    def group_status(self, group: str, status: str) -> list[OpsAlert]:
        """A consumer group's status: anything but OK is an alert (after ``fire_after`` evaluations)."""
        sev = STATUS_SEVERITY.get(status)
        msg = f"consumer group {group} is {status}" if sev else f"consumer group {group} is OK again"
        return self._step("group_status", group, sev is not None, sev or "info", msg)

    def threshold(
        self,
        kind: str,
        subject: str,
        value: float,
        fire_at: float,
        clear_at: float,
        severity: str = "warning",
    ) -> list[OpsAlert]:
        """Fires when ``value > fire_at``; resolves when ``value < clear_at`` (``clear_at <= fire_at``)."""
        c = self.conds.get((kind, subject))
        firing = c.firing if c else False
        active = value > fire_at if not firing else value >= clear_at
        bound = f"above {fire_at}" if active else f"below {clear_at}"
        msg = f"{kind} of {subject} is {value:.4g} ({bound})"
        return self._step(kind, subject, active, severity, msg)

    def model_error(self, model: str, error: float) -> list[OpsAlert]:
        """Feed a prequential error of an online model (a miss rate in 0..1); ADWIN detects drift."""
        from river import drift

        det = self._adwin.get(model)
        if det is None:
            det = self._adwin[model] = drift.ADWIN(delta=0.001)
        det.update(error)  # type: ignore[attr-defined]
        cond = self.conds.setdefault(("model_drift", model), _Cond())
        if det.drift_detected:  # type: ignore[attr-defined]
            self._drift_quiet[model] = 0
            if cond.firing:
                return []
            cond.firing = True
            est = det.estimation  # type: ignore[attr-defined]
            msg = f"{model}: prequential error drifted (ADWIN), now {est:.3f}"
            return self._emit("model_drift", model, "warning", msg, "firing")
        quiet = self._drift_quiet.get(model, 0) + 1
        self._drift_quiet[model] = quiet
        if cond.firing and quiet >= self.drift_cooldown:
            cond.firing = False
            return self._emit(
                "model_drift", model, "info", f"{model}: no drift for {quiet} updates", "resolved"
            )
        return []

    def active(self) -> list[tuple[str, str]]:
        """(kind, subject) of every firing alert."""
        return [k for k, c in self.conds.items() if c.firing]
