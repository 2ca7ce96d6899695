"""Campaign budgets and frequency caps: one ledger in Redis, changed only by atomic Lua scripts.

Where the budget lives, and why
-------------------------------
A campaign's daily budget is **owned by one keyed table**: the Redis hash
``{prefix}bud:{campaign}:{day}`` (``spent`` and ``reserved``, in micros of
the campaign's currency). It is not split across partitions: bid requests are
keyed by user, so every partition (and, over HTTP, every worker) bids for
every campaign, and a per-partition slice would strand budget on quiet
partitions while busy ones run dry. A Faust table keyed by campaign would
need a hop through Kafka per bid, which a 10 ms deadline cannot afford. One
Redis hash, mutated by scripts that Redis runs one at a time, gives a hard
guarantee for one round trip (~0.2 ms):

* **Reserve at bid time.** A bid reserves its full price (the most a
  second- or first-price auction can charge) if ``spent + reserved + price <=
  budget``; otherwise the next candidate campaign is tried. So the sum of
  win prices never exceeds the budget, however many workers bid at once.
* **Settle exactly once.** Each bid has a record ``{prefix}bid:{bid_id}``
  with a state: ``r`` reserved, ``w`` won, ``l`` lost, ``x`` expired. A win
  or billing notice moves ``r`` to ``w`` once: the reservation is released
  and the price charged. A second delivery of the same notice (or a billing
  notice after its win notice) finds ``w`` and changes nothing.
* **Release.** A loss notice, or no notice within ``reservation_ttl_s``
  (reservations sit in a sorted set by expiry and are released by the next
  reserve call), returns the reservation. A win notice that arrives after
  its reservation expired is still charged (the impression was bought), and
  counted as late.

Frequency caps use a counter per campaign and user, ``{prefix}fc:{campaign}:{user}``,
that counts reserved and won bids within the cap's period; a loss or expiry
decrements it. A cap therefore holds even under concurrent requests for the
same user.

Bid ids are deterministic (request id and imp id), so a redelivered request
finds its own record and reserves nothing twice.

The scripts build some keys from the prefix inside Lua, so the ledger needs a
single Redis (or Redis Cluster with every key in one hash slot).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

MICROS = 1_000_000

# ARGV: prefix, now, day, record_ttl, resv_ttl, n_slots, then per slot: n_cand and per
# candidate: bid_id, campaign, amount, budget, user, fcap_max, fcap_period, context.
# Returns per slot: the 1-based index of the candidate reserved (0: none), and a reason
# code per slot: "ok", "dup" (already reserved: same answer), "budget", "fcap".
_RESERVE_LUA = """
local p = ARGV[1]
local now = tonumber(ARGV[2])
local day = ARGV[3]
local rec_ttl = tonumber(ARGV[4])
local resv_ttl = tonumber(ARGV[5])
local resv = p .. 'resv'
-- release expired reservations first (bounded work per call)
local expired = redis.call('ZRANGEBYSCORE', resv, '-inf', now, 'LIMIT', 0, 64)
for _, bid in ipairs(expired) do
  local bk = p .. 'bid:' .. bid
  local r = redis.call('HMGET', bk, 's', 'c', 'd', 'a', 'f')
  if r[1] == 'r' then
    redis.call('HINCRBY', p .. 'bud:' .. r[2] .. ':' .. r[3], 'reserved', -tonumber(r[4]))
    if r[5] and r[5] ~= '' then redis.call('DECR', r[5]) end
    redis.call('HSET', bk, 's', 'x')
  end
  redis.call('ZREM', resv, bid)
end
local n_slots = tonumber(ARGV[6])
local i = 7
local out = {}
for s = 1, n_slots do
  local n = tonumber(ARGV[i])
  i = i + 1
  local chosen = 0
  local reason = 'budget'
  for c = 1, n do
    local bid, camp, amt, budget = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3])
    local user, fmax, fper, ctx = ARGV[i+4], tonumber(ARGV[i+5]), tonumber(ARGV[i+6]), ARGV[i+7]
    i = i + 8
    if chosen == 0 then
      local bk = p .. 'bid:' .. bid
      local prev = redis.call('HGET', bk, 'c')
      if prev then
        if prev == camp then chosen = c; reason = 'dup' end
      else
        local ok = true
        local fk = ''
        if fmax > 0 and user ~= '' then
          fk = p .. 'fc:' .. camp .. ':' .. user
          local used = tonumber(redis.call('GET', fk) or '0')
          if used >= fmax then ok = false; reason = 'fcap' end
        end
        local bud = p .. 'bud:' .. camp .. ':' .. day
        if ok then
          local h = redis.call('HMGET', bud, 'spent', 'reserved')
          local committed = tonumber(h[1] or '0') + tonumber(h[2] or '0')
          if committed + amt > budget then ok = false; reason = 'budget' end
        end
        if ok then
          redis.call('HINCRBY', bud, 'reserved', amt)
          redis.call('HINCRBY', bud, 'bids', 1)
          redis.call('EXPIRE', bud, rec_ttl)
          if fk ~= '' then
            redis.call('INCR', fk)
            if redis.call('TTL', fk) < 0 then redis.call('EXPIRE', fk, fper) end
          end
          redis.call('HSET', bk, 's', 'r', 'c', camp, 'd', day, 'a', amt, 'f', fk, 't', now, 'x', ctx)
          redis.call('EXPIRE', bk, rec_ttl)
          redis.call('ZADD', resv, now + resv_ttl, bid)
          chosen = c
          reason = 'ok'
        end
      end
    end
  end
  out[#out + 1] = chosen
  out[#out + 1] = reason
end
return out
"""

# ARGV: prefix, bid_id, kind ('win' | 'bill' | 'loss'), price (micros).
# Returns {result, campaign}: result one of charged, charged_capped, charged_late, released, duplicate,
# unknown.
_SETTLE_LUA = """
local p = ARGV[1]
local bid = ARGV[2]
local kind = ARGV[3]
local price = tonumber(ARGV[4])
local bk = p .. 'bid:' .. bid
local r = redis.call('HMGET', bk, 's', 'c', 'd', 'a', 'f')
local st, camp, day, amt, fk = r[1], r[2], r[3], tonumber(r[4] or '0'), r[5]
if not st then return {'unknown', ''} end
local bud = p .. 'bud:' .. camp .. ':' .. day
if kind == 'loss' then
  if st ~= 'r' then return {'duplicate', camp} end
  redis.call('HINCRBY', bud, 'reserved', -amt)
  if fk and fk ~= '' then redis.call('DECR', fk) end
  redis.call('HSET', bk, 's', 'l')
  redis.call('ZREM', p .. 'resv', bid)
  return {'released', camp}
end
if st == 'w' then return {'duplicate', camp} end
local result = 'charged'
if amt > 0 and price > amt then
  -- a clearing price above the bid cannot happen in a first- or second-price auction:
  -- charge what was bid (and reserved), so a bad notice cannot overrun the budget
  price = amt
  result = 'charged_capped'
end
if st == 'r' then
  redis.call('HINCRBY', bud, 'reserved', -amt)
  redis.call('ZREM', p .. 'resv', bid)
else
  -- lost or expired, then won after all: the impression was bought
  if result == 'charged' then result = 'charged_late' end
  if fk and fk ~= '' then redis.call('INCR', fk) end
end
redis.call('HINCRBY', bud, 'spent', price)
redis.call('HINCRBY', bud, 'wins', 1)
redis.call('HSET', bk, 's', 'w', 'p', price)
return {result, camp}
"""


def day_of(ts: float) -> str:
    """The UTC day of ``ts`` that budgets are counted in (``YYYYMMDD``)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y%m%d")


def to_micros(amount: float) -> int:
    return round(amount * MICROS)


@dataclass(frozen=True)
class Candidate:
    """One campaign's offer for one impression slot, in order of preference."""

    bid_id: str
    campaign: str
    amount: float  # what a win can cost at most, in currency units (CPM / 1000)
    budget: float  # the campaign's daily budget
    user: str = ""
    fcap_max: int = 0
    fcap_period_s: int = 86_400
    context: str = ""  # stored with the bid record (features for the CTR label join)


@dataclass(frozen=True)
class Reservation:
    """The outcome of one slot: the index of the candidate reserved (or None) and why."""

    index: int | None
    reason: str


@dataclass(frozen=True)
class CampaignSpend:
    spent: float
    reserved: float
    wins: int
    bids: int


class BudgetLedger:
    """Reserve, settle and release against the Redis budget table (see the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "ss:",
        reservation_ttl_s: float = 300.0,
        record_ttl_s: int = 3 * 86_400,
        timeout_s: float = 0.5,
        max_connections: int = 32,
        client: Any = None,
    ) -> None:
        self.prefix = prefix
        self.reservation_ttl_s = reservation_ttl_s
        self.record_ttl_s = record_ttl_s
        # Callers bound each call by their own deadline; these timeouts only stop a hung socket.
        # A blocking pool: a burst of concurrent bids waits for one of ``max_connections``
        # connections rather than failing (redis-py raises MaxConnectionsError otherwise).
        self.redis = client or aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                decode_responses=True,
            )
        )
        self._reserve = self.redis.register_script(_RESERVE_LUA)
        self._settle = self.redis.register_script(_SETTLE_LUA)
        self.max_batch = 64
        self._queue: list[tuple[list[Sequence[Candidate]], float | None, asyncio.Future]] = []
        self._kick_scheduled = False
        self._inflight: set[asyncio.Future] = set()

    async def reserve(
        self, slots: Sequence[Sequence[Candidate]], now: float | None = None
    ) -> list[Reservation]:
        """For each slot, reserve the first candidate whose budget and frequency cap allow it.

        Calls made while the event loop is busy are batched: every request
        queued by the time the loop gets round to it shares one script call
        (one round trip, one pass of redis-py's per-command overhead), in
        the order they were made. A lone request waits for nothing.
        """
        fut: asyncio.Future[list[Reservation]] = asyncio.get_running_loop().create_future()
        self._queue.append((list(slots), now, fut))
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)
        return await fut

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            task = asyncio.ensure_future(self._flush(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _flush(
        self, batch: list[tuple[list[Sequence[Candidate]], float | None, asyncio.Future]]
    ) -> None:
        now = max((n for _, n, _ in batch if n is not None), default=None)
        now = time.time() if now is None else now
        slots = [s for slots, _, _ in batch for s in slots]
        try:
            out = await self._reserve_now(slots, now)
        except BaseException as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            return
        i = 0
        for slots_, _, fut in batch:
            if not fut.done():
                fut.set_result(out[i : i + len(slots_)])
            i += len(slots_)

    async def _reserve_now(self, slots: Sequence[Sequence[Candidate]], now: float) -> list[Reservation]:
        argv: list[Any] = [
            self.prefix,
            f"{now:.3f}",
            day_of(now),
            self.record_ttl_s,
            self.reservation_ttl_s,
            len(slots),
        ]
        for cands in slots:
            argv.append(len(cands))
            for c in cands:
                argv += [
                    c.bid_id,
                    c.campaign,
                    to_micros(c.amount),
                    to_micros(c.budget),
                    c.user,
                    c.fcap_max,
                    c.fcap_period_s,
                    c.context,
                ]
        raw = await self._reserve(keys=[], args=argv)
        return [
            Reservation(int(raw[j]) - 1 if int(raw[j]) else None, str(raw[j + 1]))
            for j in range(0, len(raw), 2)
        ]

    async def settle(self, bid_id: str, kind: str, price: float = 0.0) -> tuple[str, str]:
        """Apply a ``win``, ``bill`` or ``loss`` notice; returns ``(result, campaign)``.

        ``price`` is the amount charged for the impression (CPM / 1000).
        Results: ``charged``, ``charged_capped`` (a price above the bid, charged at the bid),
        ``charged_late``, ``released``, ``duplicate``, ``unknown``.
        """
        if kind not in ("win", "bill", "loss"):
            raise ValueError(f"notice kind must be win, bill or loss, not {kind!r}")
        res, camp = await self._settle(keys=[], args=[self.prefix, bid_id, kind, to_micros(price)])
        return str(res), str(camp)

    async def bid_context(self, bid_id: str) -> str | None:
        """The context stored with a bid at reservation (None if unknown or expired)."""
        out = await self.redis.hget(f"{self.prefix}bid:{bid_id}", "x")
        return None if out is None else str(out)

    async def spend(self, campaigns: Sequence[str], day: str | None = None) -> dict[str, CampaignSpend]:
        """Spent and reserved money per campaign for ``day`` (today by default), in one round trip."""
        day = day or day_of(time.time())
        pipe = self.redis.pipeline(transaction=False)
        for c in campaigns:
            pipe.hmget(f"{self.prefix}bud:{c}:{day}", "spent", "reserved", "wins", "bids")
        rows = await pipe.execute()
        return {
            c: CampaignSpend(int(r[0] or 0) / MICROS, int(r[1] or 0) / MICROS, int(r[2] or 0), int(r[3] or 0))
            for c, r in zip(campaigns, rows, strict=True)
        }

    async def frequency(self, campaign: str, user: str) -> int:
        """Reserved plus won bids of ``campaign`` for ``user`` in the cap's current period."""
        return int(await self.redis.get(f"{self.prefix}fc:{campaign}:{user}") or 0)

    async def warm(self, connections: int = 8) -> None:
        """Open ``connections`` pooled connections now, so the first burst of bids does not pay for them."""
        await asyncio.gather(*(self.redis.ping() for _ in range(connections)))

    async def close(self) -> None:
        await self.redis.aclose()
