"""RequestCoalescer: concurrent HTTP lists share batches, without losing or mixing up any."""

from __future__ import annotations

import asyncio

import pytest

from serving.recs import RecRequest, RequestCoalescer


class Slow:
    """recommend_many that takes ``delay_s`` and records each batch's users."""

    def __init__(self, delay_s: float = 0.01, fail_on: str | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[list[str]] = []

    async def recommend_many(self, reqs):
        users = [r.user_id for r in reqs]
        self.batches.append(users)
        await asyncio.sleep(self.delay_s)
        if self.fail_on in users:
            raise RuntimeError(f"bad batch {users}")
        return [f"list-for-{u}" for u in users]


def test_every_request_gets_its_own_list_and_batches_hold_at_most_max_batch():
    async def main():
        inner = Slow()
        rc = RequestCoalescer(inner, max_batch=4, max_in_flight=1)
        first = asyncio.ensure_future(rc.recommend(RecRequest("a", [])))
        await asyncio.sleep(0.001)
        users = [f"u{n}" for n in range(10)]
        got = await asyncio.gather(*(rc.recommend(RecRequest(u, [])) for u in users))
        return inner, rc, await first, got, users

    inner, rc, first, got, users = asyncio.run(main())
    assert first == "list-for-a"
    assert got == [f"list-for-{u}" for u in users]
    assert [len(b) for b in inner.batches] == [1, 4, 4, 2]
    assert rc.batches == 4 and rc.requests == 11
    assert not rc._drains and not rc.pending  # idle again


def test_up_to_max_in_flight_batches_compute_at_once():
    async def main():
        inner = Slow(delay_s=0.05)
        rc = RequestCoalescer(inner, max_in_flight=2)
        tasks = []
        for user in ("a", "b", "c", "d"):
            tasks.append(asyncio.ensure_future(rc.recommend(RecRequest(user, []))))
            await asyncio.sleep(0.001)
        t0 = asyncio.get_running_loop().time()
        got = await asyncio.gather(*tasks)
        return inner, got, asyncio.get_running_loop().time() - t0

    inner, got, waited = asyncio.run(main())
    assert got == ["list-for-a", "list-for-b", "list-for-c", "list-for-d"]
    # a and b overlap; c and d arrive while both compute and share the next batch
    assert inner.batches == [["a"], ["b"], ["c", "d"]]
    assert waited < 0.14  # two rounds of 50 ms, not three


def test_max_batch_1_computes_each_request_alone_in_its_callers_task():
    async def main():
        inner = Slow()
        rc = RequestCoalescer(inner, max_batch=1)
        got = await asyncio.gather(*(rc.recommend(RecRequest(u, [])) for u in ("a", "b", "c")))
        return inner, rc, got

    inner, rc, got = asyncio.run(main())
    assert got == ["list-for-a", "list-for-b", "list-for-c"]
    assert sorted(inner.batches) == [["a"], ["b"], ["c"]]
    assert rc.batches == 0 and not rc._drains  # no queue, no drain task


def test_a_failed_batch_is_retried_one_by_one_so_only_the_bad_request_fails():
    async def main():
        inner = Slow(fail_on="bad")
        rc = RequestCoalescer(inner, max_in_flight=1)
        blocker = asyncio.ensure_future(rc.recommend(RecRequest("x", [])))
        await asyncio.sleep(0.001)
        mixed = await asyncio.gather(
            rc.recommend(RecRequest("ok", [])), rc.recommend(RecRequest("bad", [])), return_exceptions=True
        )
        after = await rc.recommend(RecRequest("later", []))
        return inner, await blocker, mixed, after

    inner, blocker, mixed, after = asyncio.run(main())
    assert blocker == "list-for-x"
    assert mixed[0] == "list-for-ok"
    assert isinstance(mixed[1], RuntimeError) and "bad" in str(mixed[1])
    assert inner.batches == [["x"], ["ok", "bad"], ["ok"], ["bad"], ["later"]]
    assert after == "list-for-later"


def test_a_request_whose_caller_went_away_is_left_out_of_its_batch():
    async def main():
        inner = Slow()
        rc = RequestCoalescer(inner, max_in_flight=1)
        busy = asyncio.ensure_future(rc.recommend(RecRequest("busy", [])))
        await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(rc.recommend(RecRequest("gone", [])))
        kept = asyncio.ensure_future(rc.recommend(RecRequest("kept", [])))
        await asyncio.sleep(0)
        gone.cancel()
        return inner, await busy, await kept, gone

    inner, busy, kept, gone = asyncio.run(main())
    assert busy == "list-for-busy" and kept == "list-for-kept" and gone.cancelled()
    assert inner.batches == [["busy"], ["kept"]]


def test_max_batch_and_max_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        RequestCoalescer(Slow(), max_batch=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        RequestCoalescer(Slow(), max_in_flight=0)
