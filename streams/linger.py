"""A producer linger that grows while the worker is behind its input.

Each produce request costs the worker and the broker a fixed amount of work
(building it, the socket write that wakes the broker, the response), whatever
it carries. aiokafka sends one when a partition's oldest batch has lingered
``linger_ms``, and one at a time per broker, so a saturated worker sends about
one request per linger and round trip, each with few records. A long linger
would cut those requests, but it is added to every output's latency while the
worker keeps up.

:class:`BacklogLinger` keeps both: the agent reports, for each event, how many
records of its partition wait behind it (:func:`partition_backlog`: the
partition's highwater from the last fetch, less the event's offset and one),
and while that backlog is at least ``high`` records (the worker is behind, and
each event already waits for the ones before it), new batches linger
``behind_s``. They linger ``linger_s`` again once the backlog is ``low`` or
fewer for ``calm`` events in a row, or once no event at all has come for a
whole :meth:`~BacklogLinger.tick` interval (the worker caught up and its
input went quiet, or the partitions that were behind were revoked). The
thresholds are apart so that the linger does not flip with every fetch, and
the streak keeps one drained partition from switching it back while others
are behind (Faust hands over the partitions' records in turn). It also
switches on a burst of fetched records while the worker keeps up (at start-up
with a lag, after a rebalance).

The agent's own stream buffer is not the signal: measured in the throughput
phase of ``benchmarks/pipeline.py``, it never held more than 0 events while
the worker was thousands of records behind. Faust's conductor puts each
record into it without waiting unless it is full, but the consumer's drain
loop spends several loop iterations on each record (``Service.wait_first``),
and the CPU-bound agent takes each event as soon as it is put; the records
wait in the consumer's fetched batches.

Measured on this project's 2-core machine (``benchmarks/pipeline.py --quick``,
three alternated pairs, on against off): 696 against 561 clicks/s (medians),
1,227 against 1,475 µs of worker CPU per click at saturation, and the
broker's CPU 16.0 against 19.3 s over the phase (README, Performance).

Examples
--------
>>> class Accumulator:
...     _linger_time = 0.005
>>> acc = Accumulator()
>>> linger = BacklogLinger(lambda: acc, linger_s=0.005, behind_s=0.02, high=256, low=32, calm=2)
>>> [(linger.observe(depth), acc._linger_time) for depth in (10, 300, 30, 100, 30, 20, 300)]
[(False, 0.005), (True, 0.02), (True, 0.02), (True, 0.02), (True, 0.02), (False, 0.005), (True, 0.02)]
>>> linger.switches
3
>>> linger.tick(), linger.tick(), acc._linger_time  # no event between two ticks: back to the linger
(True, False, 0.005)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from faust.exceptions import ConsumerNotStarted

log = logging.getLogger(__name__)


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
        on_switch: Callable[[float], None] | None = None,
        calm: int = 64,
    ) -> None:
        if behind_s < linger_s:
            raise ValueError(f"linger while behind ({behind_s}s) is shorter than the linger ({linger_s}s)")
        if not 0 <= low < high:
            raise ValueError(f"backlog thresholds: expected 0 <= low < high, got low={low}, high={high}")
        if calm < 1:
            raise ValueError(f"calm streak: expected at least 1 event, got {calm}")
        self._accumulator = accumulator
        self.linger_s = linger_s
        self.behind_s = behind_s
        self.high = high
        self.low = low
        self.behind = False
        self.switches = 0
        #: Times :meth:`tick` gave a restarted producer the long linger.
        self.reapplied = 0
        self.on_switch = on_switch
        self.calm = calm
        self._calm_streak = 0
        self._observed = 0
        self._observed_at_tick = 0

    def observe(self, backlog: int) -> bool:
        """Note the number of records waiting; return whether batches now linger ``behind_s``."""
        self._observed += 1
        if self.behind:
            if backlog > self.low:
                self._calm_streak = 0
            else:
                self._calm_streak += 1
                if self._calm_streak >= self.calm:
                    self._set(False)
        elif backlog >= self.high:
            self._calm_streak = 0
            self._set(True)
        return self.behind

    def tick(self) -> bool:
        """Back to ``linger_s`` if no event came since the last call (the worker calls it every 0.5 s).

        Events drive :meth:`observe`, so without this a linger switched on by a
        burst would outlast it when the input goes quiet before ``calm`` events
        have shown the backlog gone. While events come and the linger is long,
        a producer that restarted since the switch (a new accumulator, at
        ``linger_s``) gets ``behind_s`` too, so that the linger and what the
        gauge says agree again within one tick. Returns whether batches now
        linger ``behind_s``.
        """
        if self.behind and self._observed == self._observed_at_tick:
            self._set(False)
        elif self.behind:
            self._reapply()
        self._observed_at_tick = self._observed
        return self.behind

    def _reapply(self) -> None:
        # A producer restarted while behind has a new accumulator at the configured linger:
        # give it the long one too, so that the linger and its gauge agree again.
        acc = self._accumulator()
        if acc is not None and getattr(acc, "_linger_time", self.behind_s) != self.behind_s:
            acc._linger_time = self.behind_s
            self.reapplied += 1
            log.info("producer restarted while behind: its batches linger %.0f ms too", 1e3 * self.behind_s)

    def _set(self, behind: bool) -> None:
        # Looked up on every switch (rare): a restarted producer has a new accumulator.
        acc = self._accumulator()
        if acc is None:
            return
        if not isinstance(getattr(acc, "_linger_time", None), float):
            raise RuntimeError("aiokafka's MessageAccumulator has no _linger_time: update BacklogLinger")
        acc._linger_time = linger = self.behind_s if behind else self.linger_s
        self.behind = behind
        self.switches += 1
        if self.on_switch is not None:
            self.on_switch(linger)


def partition_backlog(consumer: Any) -> Callable[[Any], int]:
    """``backlog(message)``: records of the message's partition after it, as far as ``consumer`` knows.

    The count is the partition's highwater (the next offset, as of the last
    fetch that included the partition) minus the message's offset, less one; so
    it never counts records the broker has not yet reported, and it is 0 while
    the highwater is unknown (no fetch yet, the partition being revoked, no
    consumer running), when the signal is not needed.

    >>> from types import SimpleNamespace as NS
    >>> backlog = partition_backlog(NS(highwater=lambda tp: {"p0": 1000}[tp]))
    >>> backlog(NS(tp="p0", offset=199)), backlog(NS(tp="p0", offset=999)), backlog(NS(tp="p1", offset=5))
    (800, 0, 0)
    """
    highwater = consumer.highwater
    warned: set[type] = set()

    def backlog(message: Any) -> int:
        try:
            hw = highwater(message.tp)
        except (ConsumerNotStarted, AssertionError, AttributeError):
            # Not started; not assigned (aiokafka asserts it); assignment changing in a rebalance.
            return 0
        except Exception as exc:  # the signal must never stop the agent; say so once per kind
            if type(exc) not in warned:
                warned.add(type(exc))
                log.warning("partition backlog unavailable (linger stays as it is): %r", exc)
            return 0
        return hw - message.offset - 1 if hw is not None and hw > message.offset else 0

    return backlog


def backlog_linger(
    app: Any, settings: Any, on_switch: Callable[[float], None] | None = None
) -> BacklogLinger | None:
    """The worker's :class:`BacklogLinger` from ``settings`` (None when turned off).

    Off when ``producer_linger_behind_s`` equals ``producer_linger_s``; a
    shorter linger while behind is refused. ``on_switch`` gets the new linger
    (seconds) on every switch.
    """
    linger_s, behind_s = settings.producer_linger_s, settings.producer_linger_behind_s
    if behind_s == linger_s:
        return None
    if behind_s < linger_s:
        raise ValueError(
            f"SHOPSTREAM_PRODUCER_LINGER_BEHIND_S={behind_s} is shorter than "
            f"SHOPSTREAM_PRODUCER_LINGER_S={linger_s}: set it equal to turn it off"
        )
    return BacklogLinger(lambda: producer_accumulator(app), linger_s, behind_s, on_switch=on_switch)


def producer_accumulator(app: Any) -> Any:
    """aiokafka's ``MessageAccumulator`` behind ``app``'s Faust producer (None until it starts)."""
    producer = app.producer._producer
    return None if producer is None else producer._message_accumulator
