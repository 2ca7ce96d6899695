"""The CTR label join: impressions joined to their clicks within an attribution window.

Ad events are keyed by request id, so an impression and its click land on the
same partition and in the same worker. The join state is a Faust table keyed
by request id (changelogged, so a restarted or reassigned worker recovers
it), one entry per request: ``{imp_id: {"t": impression ts, "x": bid context,
"k": clicked}, "_p": partition}``.

* A **click** within the window labels its impression positive at once.
* An impression with **no click** by the end of the window is a negative.
  Windows close on event time: each partition's watermark is the newest
  event time seen on it, and entries whose window ends before the watermark
  are closed when the partition's next event is processed (in that event's
  context, so the table's changelog writes go to the right partition).

Why not a Faust windowed table with ``on_window_close``: in faust-streaming
0.15.3 the callback is skipped for every partition but the first to close a
given window (``Table._del_old_keys`` compares each key's window with one
``last_closed_window`` shared by all partitions), and windows expire against
the wall clock (``time.time()``) rather than event time, so a replay or a
lagging consumer would label every impression negative before its click is
read.

The bid context (features, and the online and deep predictions made at bid
time) comes from the budget ledger's bid record; an impression of a bid this
bidder did not make has none, and is counted but not learned from.

Examples
--------
>>> j = AttributionJoin(window_s=60)
>>> table: dict = {}
>>> j.impression(table, 0, "r1", "1", ts=100.0, context='{"f": {"size": "300x250"}}')
[]
>>> j.click(table, 0, "r1", "1", ts=110.0)
[(Label(request_id='r1', imp_id='1', clicked=True, context='{"f": {"size": "300x250"}}'), 10.0)]
>>> j.impression(table, 0, "r2", "1", ts=120.0, context='{"f": {"size": "728x90"}}')
[]
>>> j.advance(table, 0, ts=200.0)
[(Label(request_id='r2', imp_id='1', clicked=False, context='{"f": {"size": "728x90"}}'), 60.0)]
>>> sorted(table)
[]
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Label:
    """One labelled impression."""

    request_id: str
    imp_id: str
    clicked: bool
    context: str | None


#: A label and its delay (seconds from the impression to the label).
Labelled = tuple[Label, float]


class AttributionJoin:
    """Event-time impression → click join over a keyed table (see the module docstring)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = float(window_s)
        self.watermarks: dict[int, float] = {}
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self.unjoined = 0  # impressions with no bid context (not our bids)
        self.duplicates = 0

    def _heap(self, table: MutableMapping[str, Any], partition: int) -> list[tuple[float, str]]:
        heap = self._heaps.get(partition)
        if heap is None:
            # First event of this partition in this process: index what the table recovered.
            heap = []
            for rid, st in list(table.items()):
                if st.get("_p") == partition:
                    first = min((e.get("t") or e.get("kt") or 0.0) for k, e in st.items() if k != "_p")
                    heap.append((first + self.window_s, rid))
            heapq.heapify(heap)
            self._heaps[partition] = heap
        return heap

    def _entry(
        self, table: MutableMapping[str, Any], partition: int, rid: str, ts: float
    ) -> tuple[dict[str, Any], bool]:
        st = table.get(rid)
        new = st is None
        if new:
            st = {"_p": partition}
            heapq.heappush(self._heap(table, partition), (ts + self.window_s, rid))
        return dict(st or {}), new

    def impression(
        self,
        table: MutableMapping[str, Any],
        partition: int,
        rid: str,
        imp_id: str,
        ts: float,
        context: str | None,
    ) -> list[Labelled]:
        """Record an impression; returns labels (a click that came first, and closed windows)."""
        self._heap(table, partition)
        st, _ = self._entry(table, partition, rid, ts)
        e = dict(st.get(imp_id) or {})
        out: list[Labelled] = []
        if "t" in e:
            self.duplicates += 1
        else:
            e["t"] = ts
            e["x"] = context
            if context is None:
                self.unjoined += 1
            if e.get("k") and context is not None:  # the click was read first
                out.append((Label(rid, imp_id, True, context), max(e.get("kt", ts) - ts, 0.0)))
            st[imp_id] = e
            table[rid] = st
        return out + self.advance(table, partition, ts)

    def click(
        self, table: MutableMapping[str, Any], partition: int, rid: str, imp_id: str, ts: float
    ) -> list[Labelled]:
        """Record a click; labels its impression positive if the window is still open."""
        self._heap(table, partition)
        st, _ = self._entry(table, partition, rid, ts)
        e = dict(st.get(imp_id) or {})
        out: list[Labelled] = []
        if e.get("k"):
            self.duplicates += 1
        else:
            e["k"] = True
            e["kt"] = ts
            if "t" in e and e.get("x") is not None and ts - e["t"] <= self.window_s:
                out.append((Label(rid, imp_id, True, e["x"]), ts - e["t"]))
            st[imp_id] = e
            table[rid] = st
        return out + self.advance(table, partition, ts)

    def advance(self, table: MutableMapping[str, Any], partition: int, ts: float) -> list[Labelled]:
        """Move the partition's watermark to ``ts``; close the windows that ended before it."""
        wm = max(self.watermarks.get(partition, ts), ts)
        self.watermarks[partition] = wm
        heap = self._heap(table, partition)
        out: list[Labelled] = []
        while heap and heap[0][0] < wm:
            _, rid = heapq.heappop(heap)
            st = table.get(rid)
            if st is None:
                continue
            for imp_id, e in st.items():
                if imp_id == "_p" or "t" not in e or e.get("x") is None:
                    continue
                if not e.get("k") or e.get("kt", 0.0) - e["t"] > self.window_s:
                    out.append((Label(rid, imp_id, False, e["x"]), self.window_s))
            del table[rid]
        return out
