"""The recommend agent under Faust's ``agent.test_context()``: no broker, no Redis."""

from __future__ import annotations

import asyncio

import msgspec

from schemas.events import DEAD_LETTER_CODEC, RECOMMENDATION_CODEC
from shopstream.settings import Settings
from streams.app import create_app


class Collector:
    """Stands in for the producer and keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def publish(self, topic, key, value, headers=None):  # type: ignore[no-untyped-def]
        self.sent.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_agent_recommends_and_dead_letters(tmp_path):
    settings = Settings.from_env({}, data_dir=tmp_path / "d", lake_dir=tmp_path / "lake")
    app = create_app(settings, worker_name="unit")
    app.finalize()
    app.conf.store = "memory://"
    rt = app.shopstream  # type: ignore[attr-defined]
    out = Collector()
    rt.publish = out.publish
    agent = rt.extra["recommend_agent"]
    observed: list[int] = []
    rt.extra["producer_linger"].observe = observed.append  # the agent's adaptive linger (streams/linger.py)
    rt.extra["partition_backlog"] = lambda message: 1000 - message.offset
    enc = msgspec.json.Encoder()
    async with agent.test_context() as ctx:
        for n, item in enumerate(["a", "b", "a", "c"]):
            ev = {"type": "click", "event_id": f"e{n}", "ts": 1.0 + n, "user_id": "u1", "item_id": item}
            await ctx.put(enc.encode(ev), key=b"u1")
        await ctx.put(b'{"type":"click"', key=b"u1")
        await ctx.put(enc.encode({"type": "warp", "event_id": "x", "ts": 1}), key=b"u1")
    recs = [(k, v) for t, k, v in out.sent if t == "shop.recommendations.v1"]
    dlq = [(k, v) for t, k, v in out.sent if t == "shop.clicks.v1.dlq"]
    assert len(recs) + len(dlq) == len(out.sent)
    assert [RECOMMENDATION_CODEC.decode(v).event_id for _, v in recs] == ["e0", "e1", "e2", "e3"]
    assert all(k == b"u1" for k, _ in recs)
    last = RECOMMENDATION_CODEC.decode(recs[-1][1])
    assert "c" not in {i.item_id for i in last.items}
    assert rt.extra["recent_items"]["u1"] == ["b", "a", "c"]
    # Every event, bad ones included, reports the records behind it in its partition.
    assert observed == [1000 - n for n in range(6)]
    letters = [DEAD_LETTER_CODEC.decode(v) for _, v in dlq]
    assert [d.reason for d in letters] == ["malformed_json", "unknown_event_type"]
    assert letters[0].original == b'{"type":"click"'
    assert rt.features.pending[("user", "u1")].incr["n_events"] == 4


async def test_consumer_long_poll_bound_reaches_the_consumer_fausts_thread_creates(tmp_path):
    """faust-streaming fixes its consumer's fetch wait at 1.5 s; the worker lowers it where it is built."""
    import inspect

    import pytest
    from aiokafka import AIOKafkaConsumer

    from streams.app import bound_consumer_long_poll

    settings = Settings.from_env({}, data_dir=tmp_path / "d", lake_dir=tmp_path / "lake")
    assert settings.consumer_fetch_wait_ms == 100
    app = create_app(settings, worker_name="unit")
    app.finalize()
    thread = app.consumer._thread  # type: ignore[attr-defined]
    plain = thread._create_worker_consumer(thread.transport)  # what faust-streaming builds
    assert plain._fetch_max_wait_ms == 1500
    await plain.stop()
    bound_consumer_long_poll(app, settings.consumer_fetch_wait_ms)
    # The consumer thread builds every consumer it starts (table recovery too) through this method.
    assert "self._create_worker_consumer(transport)" in inspect.getsource(type(thread)._create_consumer)
    consumer = thread._create_worker_consumer(thread.transport)
    assert isinstance(consumer, AIOKafkaConsumer)
    assert consumer._fetch_max_wait_ms == 100
    await consumer.stop()
    # ... and the pinned aiokafka gives that limit to the fetcher it creates on start().
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    with pytest.raises(ValueError, match="CONSUMER_FETCH_WAIT_MS"):
        bound_consumer_long_poll(app, 0)


def test_worker_blas_thread_limit() -> None:
    # In a child process: the limit is process-wide. Every BLAS loaded (numpy's, scipy's) obeys it.
    import subprocess
    import sys

    code = (
        "import threadpoolctl, numpy\n"
        "from streams.app import limit_blas_threads\n"
        "def n():\n"
        "    info = threadpoolctl.threadpool_info()\n"
        "    return sorted({i['num_threads'] for i in info if i['user_api'] == 'blas'})\n"
        "limit_blas_threads(3); a = n()\n"
        "limit_blas_threads(1); print(a, n())\n"
        "try:\n    limit_blas_threads(0)\nexcept ValueError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, error = out.splitlines()
    assert first == "[3] [1]"
    assert "SHOPSTREAM_BLAS_THREADS=0" in error
    assert Settings.from_env({}).blas_threads == 1
