"""Event-loop lag and garbage-collector pauses of a worker, as Prometheus histograms.

A worker answers bid requests within their ``tmax`` and recommendations within
milliseconds only while its event loop is free. Two things can hold the loop: a
callback that runs too long, and a full collection of the Python garbage collector.
:class:`LoopWatch` measures both, so that a latency outlier can be attributed from
the metrics alone:

* a timer due every ``interval_s`` records how late it ran
  (``shopstream_event_loop_lag_seconds``);
* ``gc.callbacks`` time every collection, by generation
  (``shopstream_gc_pause_seconds``).

Examples
--------
>>> import asyncio
>>> from ops.metrics import Metrics
>>> m = Metrics()
>>> async def main():
...     w = LoopWatch(m, interval_s=0.001)
...     w.install_gc_hook()
...     task = asyncio.ensure_future(w.run())
...     await asyncio.sleep(0.02)
...     gc.collect()
...     task.cancel()
...     w.remove_gc_hook()
>>> asyncio.run(main())
>>> from shopstream.procs import metric_value
>>> text = m.render().decode()
>>> metric_value(text, "shopstream_gc_pause_seconds_count", {"generation": "2"}) >= 1
True
>>> metric_value(text, "shopstream_event_loop_lag_seconds_count") >= 5   # ~20 ticks of 1 ms
True
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from ops.metrics import Metrics


class LoopWatch:
    """Measures the loop's lag with a periodic timer, and GC pauses with ``gc.callbacks``."""

    def __init__(self, metrics: Metrics, interval_s: float = 0.01) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_lag_s = 0.0
        self._gc_start = 0.0
        self._gc_hist = [metrics.gc_pause.labels(generation=str(g)) for g in range(3)]

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            generation = min(int(info.get("generation", 2)), 2)
            self._gc_hist[generation].observe(time.perf_counter() - self._gc_start)

    def install_gc_hook(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def remove_gc_hook(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    async def run(self) -> None:
        """Sample the loop's lag forever (cancel to stop)."""
        observe = self.metrics.loop_lag.observe
        interval = self.interval_s
        clock = time.perf_counter
        while True:
            due = clock() + interval
            await asyncio.sleep(interval)
            lag = max(0.0, clock() - due)
            observe(lag)
            if lag > self.max_lag_s:
                self.max_lag_s = lag
