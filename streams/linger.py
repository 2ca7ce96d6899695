"""A producer linger that grows while the worker is behind its input.

Each produce request costs the worker and the broker a fixed amount of work
(building it, the socket write that wakes the broker, the response), whatever
it carries. aiokafka sends one when a partition's oldest batch has lingered
``linger_ms``, and one at a time per broker, so a saturated worker sends about
one request per linger and round trip, each with few records. A long linger
would cut those requests, but it is added to every output's latency while the
worker keeps up.

:class:`BacklogLinger` keeps both: the agent reports how many fetched events
wait in its stream's buffer, and while that backlog is at least ``high`` events
(the worker is behind, and each event already waits for the ones before it),
new batches linger ``behind_s``; once it falls to ``low`` or fewer, they
linger ``linger_s`` again. The thresholds are apart so that the linger does not
flip with every fetch. A worker that keeps up switches only on a burst of
fetched records (at start-up with a lag, after a rebalance).

Measured on this project's 2-core machine (``benchmarks/pipeline.py --quick``,
a fixed 20 ms linger against the default 5 ms, two alternated runs each):
1,138-1,194 against 1,327-1,391 µs of worker CPU per click at saturation,
726-762 against 580-622 clicks/s, and the broker's CPU 13.5-14.1 against
18.3-20.4 s over the phase.

Examples
--------
>>> class Accumulator:
...     _linger_time = 0.005
>>> acc = Accumulator()
>>> linger = BacklogLinger(lambda: acc, linger_s=0.005, behind_s=0.02, high=256, low=32)
>>> [(linger.observe(depth), acc._linger_time) for depth in (10, 300, 100, 32, 300)]
[(False, 0.005), (True, 0.02), (True, 0.02), (False, 0.005), (True, 0.02)]
>>> linger.switches
3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class BacklogLinger:
    """Switches the linger of new producer batches between ``linger_s`` and ``behind_s``.

    ``accumulator`` returns aiokafka's ``MessageAccumulator``, or None while
    the producer is not started (nothing switches then); its ``_linger_time``
    (seconds) is what each new batch copies. The linger is the producer's, so
    it applies to everything the worker produces while it is behind (lists,
    changelogs, dead letters, other agents' outputs). Give both lingers in
    whole milliseconds: aiokafka keeps ``linger_ms``, and switching back
    writes ``linger_s`` as given.
    """

    def __init__(
        self,
        accumulator: Callable[[], Any],
        linger_s: float,
        behind_s: float,
        high: int = 256,
        low: int = 32,
    ) -> None:
        if behind_s < linger_s:
            raise ValueError(f"linger while behind ({behind_s}s) is shorter than the linger ({linger_s}s)")
        if not 0 <= low < high:
            raise ValueError(f"backlog thresholds: expected 0 <= low < high, got low={low}, high={high}")
        self._accumulator = accumulator
        self.linger_s = linger_s
        self.behind_s = behind_s
        self.high = high
        self.low = low
        self.behind = False
        self.switches = 0

    def observe(self, backlog: int) -> bool:
        """Note the number of events waiting; return whether batches now linger ``behind_s``."""
        if self.behind:
            if backlog <= self.low:
                self._set(False)
        elif backlog >= self.high:
            self._set(True)
        return self.behind

    def _set(self, behind: bool) -> None:
        # Looked up on every switch (rare): a restarted producer has a new accumulator.
        acc = self._accumulator()
        if acc is None:
            return
        if not isinstance(getattr(acc, "_linger_time", None), float):
            raise RuntimeError("aiokafka's MessageAccumulator has no _linger_time: update BacklogLinger")
        acc._linger_time = self.behind_s if behind else self.linger_s
        self.behind = behind
        self.switches += 1


def backlog_linger(app: Any, settings: Any) -> BacklogLinger | None:
    """The worker's :class:`BacklogLinger` from ``settings`` (None when turned off).

    Off when ``producer_linger_behind_s`` equals ``producer_linger_s``; a
    shorter linger while behind is refused.
    """
    linger_s, behind_s = settings.producer_linger_s, settings.producer_linger_behind_s
    if behind_s == linger_s:
        return None
    if behind_s < linger_s:
        raise ValueError(
            f"SHOPSTREAM_PRODUCER_LINGER_BEHIND_S={behind_s} is shorter than "
            f"SHOPSTREAM_PRODUCER_LINGER_S={linger_s}: set it equal to turn it off"
        )
    return BacklogLinger(lambda: producer_accumulator(app), linger_s, behind_s)


def producer_accumulator(app: Any) -> Any:
    """aiokafka's ``MessageAccumulator`` behind ``app``'s Faust producer (None until it starts)."""
    producer = app.producer._producer
    return None if producer is None else producer._message_accumulator
