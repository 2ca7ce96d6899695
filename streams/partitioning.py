"""Kafka's default key partitioner, memoised.

aiokafka hashes every keyed message with a pure-Python murmur2 (about 5 µs for
a short key): a worker publishing a recommendation per click pays it on every
message, although its keys (user ids) repeat. :class:`MemoPartitioner` gives
exactly the partition of :class:`aiokafka.partitioner.DefaultPartitioner`
(and so of the Java client), and remembers each key's hash.

Examples
--------
>>> from aiokafka.partitioner import DefaultPartitioner
>>> p = MemoPartitioner()
>>> parts = [0, 1, 2, 3]
>>> keys = [f"user-{n}".encode() for n in range(200)]
>>> [p(k, parts, parts) for k in keys] == [DefaultPartitioner()(k, parts, parts) for k in keys]
True
>>> p(b"user-7", parts, parts) == p(b"user-7", parts, parts)   # the second from the memo
True
>>> p(None, parts, [2])                                          # no key: any available partition
2
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner, murmur2


class MemoPartitioner:
    """``DefaultPartitioner`` with a bounded memo of key hashes (cleared when it fills)."""

    def __init__(self, max_keys: int = 1 << 16) -> None:
        self.max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return DefaultPartitioner()(None, all_partitions, available)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self.max_keys:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]
