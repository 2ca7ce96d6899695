"""Feature store: one Redis hash per entity, written in pipelined batches.

Keys are ``{prefix}user:{id}`` and ``{prefix}item:{id}`` (the Feast layout:
one entity's features in one hash, read in one round trip). Every write
refreshes the entity's TTL.

:class:`FeatureWriter` buffers updates from the hot path and flushes them in
one pipelined round trip (``HSET`` + ``HINCRBY`` + ``EXPIRE`` per entity), so
per-event cost is a dict update, not a network call.

Examples
--------
>>> import asyncio
>>> store = InMemoryFeatureStore()
>>> w = FeatureWriter(store, ttl_s=60)
>>> w.update("user", "u1", set_={"last_item": "i1"}, incr={"n_events": 1})
>>> w.update("user", "u1", incr={"n_events": 1})
>>> asyncio.run(w.flush())
1
>>> asyncio.run(store.get("user", "u1"))
{'last_item': 'i1', 'n_events': '2'}
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

Features = dict[str, str]

_CHUNK = 256
# KEYS: entity keys. ARGV: ttl, then per key: n_set, n_incr, n_set field/value
# pairs, n_incr field/delta pairs. HSET + HINCRBY + EXPIRE per key.
_WRITE_LUA = """
local ttl = tonumber(ARGV[1])
local i = 2
for k = 1, #KEYS do
  local key = KEYS[k]
  local nset = tonumber(ARGV[i])
  local nincr = tonumber(ARGV[i + 1])
  i = i + 2
  if nset > 0 then
    redis.call('HSET', key, unpack(ARGV, i, i + 2 * nset - 1))
    i = i + 2 * nset
  end
  for _ = 1, nincr do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""


class FeatureStore(Protocol):
    """Where entity features live."""

    async def write(self, updates: Mapping[tuple[str, str], EntityUpdate], ttl_s: int) -> None:
        """Apply a batch of updates, refreshing each entity's TTL."""

    async def get(self, kind: str, entity_id: str) -> Features:
        """All features of one entity (empty if unknown)."""

    async def get_many(self, kind: str, ids: list[str]) -> list[Features]:
        """Features of many entities in one round trip."""

    async def close(self) -> None:
        """Release connections."""


class EntityUpdate:
    """Pending changes to one entity's hash."""

    __slots__ = ("incr", "set_")

    def __init__(self) -> None:
        self.set_: dict[str, str] = {}
        self.incr: dict[str, int] = {}


class RedisFeatureStore:
    """A :class:`FeatureStore` on Redis (redis-py asyncio with hiredis)."""

    def __init__(self, url: str, prefix: str = "ss:") -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.url = url
        self.client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self._write_script = self.client.register_script(_WRITE_LUA)

    def key(self, kind: str, entity_id: str) -> str:
        """The Redis key of an entity."""
        return f"{self.prefix}{kind}:{entity_id}"

    async def write(self, updates: Mapping[tuple[str, str], EntityUpdate], ttl_s: int) -> None:
        # One server-side script call per chunk of entities instead of an
        # HSET + HINCRBY... + EXPIRE command each: encoding commands is most of
        # the client's cost, and the whole batch stays one round trip.
        pipe = self.client.pipeline(transaction=False)
        items = list(updates.items())
        for start in range(0, len(items), _CHUNK):
            keys: list[str] = []
            args: list[str | int] = [ttl_s]
            for (kind, eid), up in items[start : start + _CHUNK]:
                keys.append(self.key(kind, eid))
                args += [len(up.set_), len(up.incr)]
                for pair in up.set_.items():
                    args += pair
                for f, n in up.incr.items():
                    args += [f, n]
            await self._write_script(keys=keys, args=args, client=pipe)
        await pipe.execute()

    async def get(self, kind: str, entity_id: str) -> Features:
        res = await self.client.hgetall(self.key(kind, entity_id))
        return dict(res)  # type: ignore[arg-type]

    async def get_many(self, kind: str, ids: list[str]) -> list[Features]:
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.key(kind, i))
        res: list[Features] = await pipe.execute()
        return res

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


class InMemoryFeatureStore:
    """An in-process twin of :class:`RedisFeatureStore` for unit tests (no TTL expiry)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], Features] = {}
        self.ttls: dict[tuple[str, str], int] = {}

    async def write(self, updates: Mapping[tuple[str, str], EntityUpdate], ttl_s: int) -> None:
        for ent, up in updates.items():
            h = self.data.setdefault(ent, {})
            h.update(up.set_)
            for f, n in up.incr.items():
                h[f] = str(int(h.get(f, "0")) + n)
            self.ttls[ent] = ttl_s

    async def get(self, kind: str, entity_id: str) -> Features:
        return dict(self.data.get((kind, entity_id), {}))

    async def get_many(self, kind: str, ids: list[str]) -> list[Features]:
        return [dict(self.data.get((kind, i), {})) for i in ids]

    async def close(self) -> None:
        return None


class FeatureWriter:
    """Buffers entity updates and writes them to a store in one batch."""

    def __init__(self, store: FeatureStore, ttl_s: int, max_pending: int = 5000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.pending: dict[tuple[str, str], EntityUpdate] = {}
        self.flushed_entities = 0
        self.errors = 0
        self.last_flush_s = 0.0

    def update(
        self,
        kind: str,
        entity_id: str,
        set_: Mapping[str, str] | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> None:
        """Record changes to one entity; they reach the store on the next :meth:`flush`."""
        up = self.pending.get((kind, entity_id))
        if up is None:
            up = self.pending[(kind, entity_id)] = EntityUpdate()
        if set_:
            up.set_.update(set_)
        if incr:
            for f, n in incr.items():
                up.incr[f] = up.incr.get(f, 0) + n

    @property
    def full(self) -> bool:
        """Whether the buffer should be flushed now."""
        return len(self.pending) >= self.max_pending

    async def flush(self) -> int:
        """Write the buffered updates; return how many entities were written.

        On a store error the updates are kept and retried on the next flush.
        """
        if not self.pending:
            return 0
        batch, self.pending = self.pending, {}
        t0 = time.perf_counter()
        try:
            await self.store.write(batch, self.ttl_s)
        except Exception:
            self.errors += 1
            # Keep the newest values: merge the failed batch under newer updates.
            for ent, up in batch.items():
                newer = self.pending.get(ent)
                if newer is None:
                    self.pending[ent] = up
                else:
                    merged = EntityUpdate()
                    merged.set_ = {**up.set_, **newer.set_}
                    merged.incr = {
                        f: up.incr.get(f, 0) + newer.incr.get(f, 0) for f in {*up.incr, *newer.incr}
                    }
                    self.pending[ent] = merged
            raise
        self.last_flush_s = time.perf_counter() - t0
        self.flushed_entities += len(batch)
        return len(batch)


class CachedReader:
    """One entity's features read through an in-process cache (LRU, ``ttl_s`` seconds).

    For read paths with a deadline (the bidder) where features change slowly
    (CRM segments): a repeat user costs no round trip. At most
    ``max_entries`` entities are kept; the least recently used go first.

    >>> import asyncio
    >>> calls = []
    >>> async def fetch(uid):
    ...     calls.append(uid)
    ...     return {"segment": "vip"}
    >>> r = CachedReader(fetch, ttl_s=60)
    >>> asyncio.run(r.get("u1")), asyncio.run(r.get("u1")), calls
    ({'segment': 'vip'}, {'segment': 'vip'}, ['u1'])
    """

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[Mapping[str, str]]],
        ttl_s: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, Features]] = OrderedDict()
        self.hits = self.misses = 0

    async def get(self, entity_id: str) -> Features:
        now = self.clock()
        hit = self._data.get(entity_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            self._data.move_to_end(entity_id)
            self.hits += 1
            return hit[1]
        self.misses += 1
        value = dict(await self.fetch(entity_id))
        self._data[entity_id] = (now, value)
        self._data.move_to_end(entity_id)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        return value
