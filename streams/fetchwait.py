"""Changing a running aiokafka consumer's broker long poll (``fetch_max_wait_ms``).

aiokafka keeps one fetch in flight per broker, and leaves out of a fetch
request every partition whose records are still buffered, not yet handed to
the application. A request built just then covers only the other partitions;
when those are idle the broker holds it for the whole ``fetch_max_wait_ms``,
and the busy partitions' new records wait behind it. A latency-bound consumer
therefore wants a short limit while records flow, and a long one when idle (no
records: every partition is in the fetch and the first record ends it, so a
long limit costs no latency and saves the round trips of empty fetches).

aiokafka reads the limit from its fetcher each time it builds a request, so it
can be changed while the consumer runs; the bid consumer does so
(:meth:`streams.bid_consumer.BidRequestConsumer._fetch_wait`). The Faust
agents' consumer keeps faust-streaming's 1.5 s: a 10 or 50 ms limit while
records flow was tried, and neither improved ``benchmarks/recs_latency.py``'s
topic path nor kept ``benchmarks/pipeline.py``'s throughput above the runs
without it (2,493 and 2,661 clicks/s, against 2,683-3,008 without, on a
noisy machine); each extra fetch covers every partition of every input topic.

Examples
--------
>>> from types import SimpleNamespace
>>> consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=1500))
>>> set_fetch_wait(consumer, 2), consumer._fetcher._fetch_max_wait_ms
(True, 2)
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
