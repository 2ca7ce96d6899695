"""Run a worker in a child process and restart it when its table recovery stalls.

faust-streaming 0.15.3 can hang in table recovery after a rebalance in a
running worker ("No event received for active tp ... since recovery start"),
an issue its tracker knows in several forms. The worker's watchdog
(:class:`streams.app.RecoveryWatchdog`) then exits with
:data:`EXIT_RECOVERY_STALLED`; this supervisor starts it again, which joins
the group afresh and recovers the tables from their changelogs (the path the
restart test shows to work). Any other exit code is passed through.

The child dies with its supervisor (``PR_SET_PDEATHSIG``), so ``kill -9`` of
the ``shopstream worker`` process stops the whole worker.
"""

from __future__ import annotations

import collections
import ctypes
import signal
import subprocess
import time
from collections.abc import Sequence

#: Exit code of a worker whose table recovery made no progress for too long.
EXIT_RECOVERY_STALLED = 75

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def supervise(
    argv: Sequence[str],
    max_restarts: int = 5,
    window_s: float = 600.0,
    say=print,  # type: ignore[no-untyped-def]
) -> int:
    """Run ``argv`` until it exits with anything but :data:`EXIT_RECOVERY_STALLED`.

    More than ``max_restarts`` restarts within ``window_s`` seconds give up
    and return the child's code.

    Examples
    --------
    >>> import sys
    >>> supervise([sys.executable, "-c", "raise SystemExit(3)"])
    3
    """
    restarts: collections.deque[float] = collections.deque()
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            child = subprocess.Popen(list(argv), preexec_fn=_die_with_parent)
            while True:
                try:
                    rc = child.wait()
                    break
                except KeyboardInterrupt:  # the child got the same SIGINT; wait for it
                    continue
            if rc != EXIT_RECOVERY_STALLED:
                return rc
            now = time.monotonic()
            restarts.append(now)
            while restarts and now - restarts[0] > window_s:
                restarts.popleft()
            if len(restarts) > max_restarts:
                say(f"worker: table recovery stalled {len(restarts)} times in {window_s:.0f}s; giving up")
                return rc
            say(f"worker: table recovery stalled; restarting the worker ({len(restarts)}/{max_restarts})")
    finally:
        signal.signal(signal.SIGTERM, old_term)
