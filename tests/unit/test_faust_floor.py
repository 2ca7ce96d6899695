"""The framework-floor agent of ``benchmarks/pipeline.py`` under Faust's ``agent.test_context()``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from benchmarks.faust_floor import floor_app
from shopstream.settings import Settings


def _settings(tmp_path: Any) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "d", lake_dir=tmp_path / "lake", topic_prefix="t-")


async def _run(app: Any, n: int) -> list[tuple[str, bytes, bytes]]:
    """Feed ``n`` events to the app's one agent; what it handed to the producer."""
    app.finalize()
    app.conf.store = "memory://"
    sent: list[tuple[str, bytes, bytes]] = []

    async def send(topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        sent.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    app.producer.send = send
    [agent] = app.agents.values()
    assert set(agent.channel.topics) == {"t-shop.clicks.v1"}
    async with agent.test_context() as ctx:
        for i in range(n):
            await ctx.put(b"v%d" % i, key=b"k%d" % i)
    return sent


@pytest.mark.parametrize("mode", ["consume", "forward"])
async def test_the_floor_agent_times_its_first_n_events_and_forwards_each_in_forward_mode(tmp_path, mode):
    result = tmp_path / "floor.json"
    sent = await _run(floor_app(_settings(tmp_path), mode, 3, result, "sink"), 5)
    if mode == "forward":
        assert sent == [("sink", b"k%d" % i, b"v%d" % i) for i in range(5)]
    else:
        assert sent == []
    doc = json.loads(result.read_text())
    assert doc["mode"] == mode
    assert doc["events"] == 3  # written once, at the third event; the later two leave it alone
    assert doc["wall_s"] > 0
    assert doc["events_per_s"] == pytest.approx(2 / doc["wall_s"])
    assert doc["cpu_us_per_event"] == pytest.approx(1e6 * doc["cpu_s"] / 2)


def test_the_floor_refuses_what_it_cannot_measure(tmp_path):
    s = _settings(tmp_path)
    with pytest.raises(ValueError, match="expected one of consume, forward"):
        floor_app(s, "echo", 10, tmp_path / "r.json", "sink")
    with pytest.raises(ValueError, match="needs a sink topic"):
        floor_app(s, "forward", 10, tmp_path / "r.json", None)
    with pytest.raises(ValueError, match="at least 2"):
        floor_app(s, "consume", 1, tmp_path / "r.json", None)


async def test_a_floor_that_times_nothing_forwards_every_event_and_writes_no_result(tmp_path):
    result = tmp_path / "floor.json"
    sent = await _run(floor_app(_settings(tmp_path), "forward", 0, result, "sink"), 4)
    assert [k for _, k, _ in sent] == [b"k0", b"k1", b"k2", b"k3"]
    assert not result.exists()
