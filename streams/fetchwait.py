"""A consumer's broker long poll, short while records flow and long when idle.

aiokafka keeps one fetch in flight per broker, and leaves out of a fetch
request every partition whose records are still buffered, not yet handed to
the application. A request built just then covers only the other partitions,
and when those are idle the broker holds it for the whole ``fetch_max_wait_ms``,
while the busy partitions' new records wait behind it. faust-streaming fixes
that limit at 1.5 s, and a worker can settle into this cycle for good: in
``benchmarks/recs_latency.py`` the topic path then answered every click
1.4-1.8 s late (p50 1,475 ms, tightly spread), where it normally takes ~15 ms.

aiokafka reads the limit from its fetcher each time it builds a request, so
it can be changed on a running consumer: :func:`set_fetch_wait` does that,
and :class:`FetchWait` picks the limit: ``busy_ms`` while records arrived in the
last ``busy_for_s``, ``idle_ms`` otherwise (no records: every partition is in
the fetch, and the first record ends it, so a long limit costs no latency and
saves the round trips of empty fetches).

Examples
--------
>>> from types import SimpleNamespace
>>> consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=1500))
>>> w = FetchWait(busy_ms=10, idle_ms=1500, busy_for_s=1.0)
>>> w.update(consumer, records=5, now=100.0), consumer._fetcher._fetch_max_wait_ms
(10, 10)
>>> w.update(consumer, records=0, now=100.5)       # still within a second of the last records
10
>>> w.update(consumer, records=0, now=101.5), consumer._fetcher._fetch_max_wait_ms
(1500, 1500)
>>> set_fetch_wait(None, 5)                        # not started yet: nothing to set
False
"""

from __future__ import annotations

from typing import Any


def set_fetch_wait(consumer: Any, ms: int) -> bool:
    """Set a running aiokafka consumer's long-poll limit; False if it has no fetcher (yet)."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    if fetcher._fetch_max_wait_ms != ms:
        fetcher._fetch_max_wait_ms = ms
    return True


class FetchWait:
    """Chooses and applies the long-poll limit from how recently records arrived."""

    def __init__(self, busy_ms: int, idle_ms: int, busy_for_s: float = 1.0) -> None:
        self.busy_ms = busy_ms
        self.idle_ms = idle_ms
        self.busy_for_s = busy_for_s
        self._last_records = float("-inf")

    def update(self, consumer: Any, records: int, now: float) -> int:
        """Note ``records`` new records at ``now`` (monotonic seconds); apply and return the limit."""
        if records:
            self._last_records = now
        ms = self.busy_ms if now - self._last_records < self.busy_for_s else self.idle_ms
        set_fetch_wait(consumer, ms)
        return ms
