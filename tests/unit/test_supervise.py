"""The worker supervisor restarts only on a stalled recovery, and gives up eventually."""

from __future__ import annotations

import sys

from shopstream.supervise import EXIT_RECOVERY_STALLED, supervise


def test_restarts_after_a_stall_and_passes_other_codes_through(tmp_path):
    counter = tmp_path / "n"
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        f"sys.exit({EXIT_RECOVERY_STALLED} if n < 2 else 0)\n"
    )
    said: list[str] = []
    assert supervise([sys.executable, "-c", script], say=said.append) == 0
    assert counter.read_text() == "3"
    assert len(said) == 2 and "restarting" in said[0]


def test_gives_up_after_too_many_stalls():
    said: list[str] = []
    rc = supervise(
        [sys.executable, "-c", f"raise SystemExit({EXIT_RECOVERY_STALLED})"], max_restarts=2, say=said.append
    )
    assert rc == EXIT_RECOVERY_STALLED
    assert "giving up" in said[-1] and len(said) == 3


def test_watchdog_flags_recovery_without_progress():
    from streams.app import RecoveryWatchdog

    class FakeApp:
        pass

    w = RecoveryWatchdog(FakeApp(), stall_s=10, on_stall=lambda: None)  # type: ignore[arg-type]
    assert not w.check(False, 0, 0.0)
    assert not w.check(True, 500, 1.0)
    assert not w.check(True, 400, 5.0)  # progress resets the clock
    assert not w.check(True, 400, 14.0)
    assert w.check(True, 400, 15.0)
    assert not w.check(False, 0, 16.0)  # recovery done
    assert not w.check(True, 400, 30.0)
