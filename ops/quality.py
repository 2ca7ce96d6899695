"""Prequential (test-then-train) quality of the online recommender: HR@10 as events arrive.

Before an event teaches the model, it tests the list the user was last
shown: a hit when the item the user went on to touch was on it. The rolling
hit rate over the last ``window`` tested events is the prequential HR@k.

Examples
--------
>>> q = PrequentialHits(window=4)
>>> q.shown("u1", ["a", "b"])
>>> q.test("u1", "b"), q.test("u1", "z"), q.test("u2", "a")
(1.0, 0.0, None)
>>> q.value
0.5
>>> q2 = PrequentialHits(batch=2)
>>> q2.shown("u", ["a"])
>>> q2.test("u", "a"), q2.batch_error(), q2.test("u", "b"), q2.batch_error()
(1.0, None, 0.0, 0.5)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable


class PrequentialHits:
    """Rolling prequential hit rate of the lists shown to users."""

    def __init__(self, window: int = 1000, max_users: int = 100_000, batch: int = 50) -> None:
        self.last: OrderedDict[str, frozenset[str]] = OrderedDict()
        self.max_users = max_users
        self.hits: deque[float] = deque(maxlen=window)
        self.total = 0
        self.batch = batch
        self._misses = 0.0

    def shown(self, user: str, items: Iterable[str]) -> None:
        """Remember the list ``user`` was just shown."""
        self.last[user] = frozenset(items)
        self.last.move_to_end(user)
        if len(self.last) > self.max_users:
            self.last.popitem(last=False)

    def test(self, user: str, item: str) -> float | None:
        """1.0 if ``item`` was on the user's last list, 0.0 if not, None if no list was shown."""
        lst = self.last.get(user)
        if lst is None:
            return None
        hit = 1.0 if item in lst else 0.0
        self.hits.append(hit)
        self.total += 1
        self._misses += 1.0 - hit
        return hit

    def batch_error(self) -> float | None:
        """The miss rate of the last ``batch`` tests, once every ``batch`` tests (else None).

        A drift detector fed these means costs 1/``batch`` of one fed every test.
        """
        if self.total % self.batch or not self.total:
            return None
        err, self._misses = self._misses / self.batch, 0.0
        return err

    @property
    def value(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0
