"""RequestCoalescer: concurrent HTTP lists share batches, without losing, mixing up or stranding any."""

from __future__ import annotations

import asyncio

import pytest

from ops.metrics import Metrics
from serving.clickstream import recommendation
from serving.recs import Recommender, RecRequest, RequestCoalescer
from shopstream.procs import metric_value


class Gated:
    """A Recommender whose batches each wait for a gate the test opens (their Redis round trip).

    ``recommend_many_or_online`` is the real one: a batch that raises is answered by ``_online_only``.
    """

    recommend_many_or_online = Recommender.recommend_many_or_online

    def __init__(self, open_gates: bool = False) -> None:
        self.metrics = Metrics()
        self.open_gates = open_gates
        self.gates: list[asyncio.Event] = []
        self.batches: list[list[str]] = []
        self.computing = 0
        self.most_at_once = 0
        self.failing: set[str] = set()  # a batch holding one of these raises
        self.online_fails = False

    async def recommend_many(self, reqs):
        users = [r.user_id for r in reqs]
        self.batches.append(users)
        gate = asyncio.Event()
        if self.open_gates:
            gate.set()
        self.gates.append(gate)
        self.computing += 1
        self.most_at_once = max(self.most_at_once, self.computing)
        try:
            await gate.wait()
        finally:
            self.computing -= 1
        if self.failing & set(users):
            raise RuntimeError(f"bad batch {users}")
        return [recommendation(u, [], "trained", "") for u in users]

    def _online_only(self, req):
        if self.online_fails:
            raise RuntimeError("no online fallback either")
        return recommendation(req.user_id, [], "online", "")

    async def until_batches(self, n: int) -> None:
        """Wait until ``n`` batches have started; fail (not hang) if they never do."""
        for _ in range(10_000):
            if len(self.gates) >= n:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{len(self.gates)} batches started, expected {n}: {self.batches}")


def ask(rc: RequestCoalescer, user: str) -> asyncio.Future:
    return asyncio.ensure_future(rc.recommend(RecRequest(user, [])))


def test_requests_queued_while_slots_are_busy_share_batches_of_at_most_max_batch():
    async def main():
        inner = Gated()
        rc = RequestCoalescer(inner, max_batch=4, max_in_flight=1)
        first = ask(rc, "a")
        await inner.until_batches(1)
        rest = [ask(rc, f"u{n}") for n in range(10)]
        await asyncio.sleep(0)
        for n in range(1, 4):
            inner.gates[n - 1].set()
            await inner.until_batches(n + 1)
        inner.gates[3].set()
        got = [r.user_id for r in await asyncio.gather(first, *rest)]
        return inner, rc, got

    inner, rc, got = asyncio.run(main())
    assert got == ["a"] + [f"u{n}" for n in range(10)]
    assert [len(b) for b in inner.batches] == [1, 4, 4, 2]
    assert rc.batches == 4 and rc.requests == 11
    text = inner.metrics.render().decode()
    http = {"path": "http"}
    assert metric_value(text, "shopstream_recs_batch_size_count", http) == 4
    assert metric_value(text, "shopstream_recs_batch_size_sum", http) == 11
    assert rc.running == 0 and not rc.pending  # idle again


def test_up_to_max_in_flight_batches_compute_at_once():
    async def main():
        inner = Gated()
        rc = RequestCoalescer(inner, max_in_flight=2)
        a = ask(rc, "a")
        await inner.until_batches(1)
        b = ask(rc, "b")
        await inner.until_batches(2)
        later = [ask(rc, u) for u in ("c", "d")]
        await asyncio.sleep(0)
        assert inner.batches == [["a"], ["b"]]  # c and d wait: both slots compute
        inner.gates[0].set()
        await inner.until_batches(3)
        inner.gates[1].set()
        inner.gates[2].set()
        return inner, [r.user_id for r in await asyncio.gather(a, b, *later)]

    inner, got = asyncio.run(main())
    assert got == ["a", "b", "c", "d"]
    assert inner.batches == [["a"], ["b"], ["c", "d"]] and inner.most_at_once == 2


def test_a_request_right_after_the_last_batch_ended_is_still_served():
    # The drain that answered "a" ends in the same loop step as its last look at the queue,
    # so "b", asked as soon as "a" is answered, starts a drain of its own instead of waiting forever.
    async def main():
        rc = RequestCoalescer(Gated(open_gates=True), max_in_flight=1)
        out = []
        for user in ("a", "b", "c"):
            out.append((await asyncio.wait_for(rc.recommend(RecRequest(user, [])), 2.0)).user_id)
        return out

    assert asyncio.run(main()) == ["a", "b", "c"]


async def x_then_ok_and_bad(inner: Gated) -> tuple[RequestCoalescer, list]:
    """ "x" computes alone; "ok" and "bad" queue behind it and share the next batch; then "later"."""
    rc = RequestCoalescer(inner, max_in_flight=1)
    blocker = ask(rc, "x")
    await inner.until_batches(1)
    pair = [ask(rc, "ok"), ask(rc, "bad")]
    await asyncio.sleep(0)
    inner.gates[0].set()
    await inner.until_batches(2)
    inner.gates[1].set()
    inner.open_gates = True
    results = await asyncio.gather(blocker, *pair, return_exceptions=True)
    return rc, [*results, await rc.recommend(RecRequest("later", []))]


def test_a_failing_batch_is_answered_by_the_online_model_and_the_next_ones_by_the_trained_one():
    inner = Gated()
    inner.failing = {"bad"}
    _, results = asyncio.run(x_then_ok_and_bad(inner))
    assert [(r.user_id, r.model) for r in results] == [
        ("x", "trained"),
        ("ok", "online"),
        ("bad", "online"),
        ("later", "trained"),
    ]
    assert inner.batches == [["x"], ["ok", "bad"], ["later"]]


def test_when_the_online_model_fails_too_only_that_batch_gets_the_error():
    inner = Gated()
    inner.failing, inner.online_fails = {"bad"}, True
    rc, (x, ok, bad, later) = asyncio.run(x_then_ok_and_bad(inner))
    assert x.user_id == "x" and later.user_id == "later"
    assert isinstance(ok, RuntimeError) and isinstance(bad, RuntimeError)
    assert rc.running == 0


def test_a_request_whose_caller_went_away_is_left_out_of_its_batch():
    async def main():
        inner = Gated()
        rc = RequestCoalescer(inner, max_in_flight=1)
        busy = ask(rc, "busy")
        await inner.until_batches(1)
        gone, kept = ask(rc, "gone"), ask(rc, "kept")
        await asyncio.sleep(0)
        gone.cancel()
        inner.gates[0].set()
        await inner.until_batches(2)
        inner.gates[1].set()
        return inner, (await busy).user_id, (await kept).user_id, gone

    inner, busy, kept, gone = asyncio.run(main())
    assert busy == "busy" and kept == "kept" and gone.cancelled()
    assert inner.batches == [["busy"], ["kept"]]


def test_close_cancels_the_batch_in_flight_and_the_queued_requests():
    async def main():
        inner = Gated()
        rc = RequestCoalescer(inner, max_in_flight=1)
        computing = ask(rc, "a")
        await inner.until_batches(1)
        queued = ask(rc, "b")
        await asyncio.sleep(0)
        await rc.close()
        await asyncio.sleep(0)
        return rc, computing, queued

    rc, computing, queued = asyncio.run(main())
    assert computing.cancelled() and queued.cancelled()
    assert rc.running == 0 and not rc.pending


def test_after_close_a_drain_cancelled_before_it_ran_leaves_no_slot_taken_and_requests_still_answer():
    async def main():
        inner = Gated(open_gates=True)
        rc = RequestCoalescer(inner, max_in_flight=1)
        never_ran = ask(rc, "a")  # its drain task is created, not yet started
        await asyncio.sleep(0)
        await rc.close()
        late = await asyncio.wait_for(rc.recommend(RecRequest("late", [])), 2.0)
        await asyncio.sleep(0)
        return rc, never_ran, late

    rc, never_ran, late = asyncio.run(main())
    assert never_ran.cancelled()  # queued when the worker stopped
    assert rc.running == 0 and not rc._tasks
    assert late.user_id == "late"  # computed directly once closed


def test_max_batch_1_computes_each_request_alone_in_its_callers_task():
    async def main():
        inner = Gated()
        rc = RequestCoalescer(inner, max_batch=1)
        asks = [ask(rc, u) for u in ("a", "b", "c")]
        await inner.until_batches(3)  # all three at once: none waits for another
        for gate in inner.gates:
            gate.set()
        return inner, rc, [r.user_id for r in await asyncio.gather(*asks)]

    inner, rc, got = asyncio.run(main())
    assert got == ["a", "b", "c"]
    assert inner.batches == [["a"], ["b"], ["c"]] and inner.most_at_once == 3
    assert rc.batches == 0 and rc.running == 0  # no queue, no drain task


def test_max_batch_and_max_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        RequestCoalescer(Gated(), max_batch=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        RequestCoalescer(Gated(), max_in_flight=0)
