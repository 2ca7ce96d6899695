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
    letters = [DEAD_LETTER_CODEC.decode(v) for _, v in dlq]
    assert [d.reason for d in letters] == ["malformed_json", "unknown_event_type"]
    assert letters[0].original == b'{"type":"click"'
    assert rt.features.pending[("user", "u1")].incr["n_events"] == 4


async def test_consumer_long_poll_bound_reaches_the_fetcher_of_fausts_aiokafka_consumer(tmp_path):
    """faust-streaming fixes its consumer's fetch wait at 1.5 s; the worker lowers it on the fetcher."""
    import inspect
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.app import bound_consumer_long_poll

    settings = Settings.from_env({}, data_dir=tmp_path / "d", lake_dir=tmp_path / "lake")
    assert settings.consumer_fetch_wait_ms == 100
    app = create_app(settings, worker_name="unit")
    app.finalize()
    # The path it follows exists in the pinned faust-streaming: the consumer's thread ...
    thread = app.consumer._thread  # type: ignore[attr-defined]
    assert isinstance(thread, AIOKafkaConsumerThread)
    assert not bound_consumer_long_poll(app, 100)  # not started: no aiokafka consumer yet
    # ... and the pinned aiokafka builds every fetch request from the attribute it sets.
    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher._get_actions_per_node)
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500)
    thread._consumer = SimpleNamespace(_fetcher=fetcher)
    assert bound_consumer_long_poll(app, 100)
    assert fetcher._fetch_max_wait_ms == 100
