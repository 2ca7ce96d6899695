"""Workers that run some agent groups only (``SHOPSTREAM_AGENTS``): no broker, no Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.events import DEAD_LETTER_CODEC
from shopstream.settings import Settings, SettingsError
from streams.app import create_app

CLICKS = "shop.clicks.v1"
ALL_INPUTS = {
    CLICKS,
    "shop.orders.v1",
    "shop.demand.v1",
    "shop.inventory.v1",
    "ads.events.v1",
    "shop.reviews.v1",
    "care.messages.v1",
}
ALL_AGENTS = {
    "recommend",
    "recommend_orders",
    "inventory_demand",
    "inventory",
    "ad_events",
    "crm",
    "reviews",
    "care",
}


def worker(tmp_path: Path, agents: str, **overrides: Any) -> Any:
    settings = Settings.from_env(
        {},
        data_dir=tmp_path / "d",
        lake_dir=tmp_path / "lake",
        agents=agents,
        app_id="shopstream" if agents == "all" else "shopstream-pool",
        **overrides,
    )
    app = create_app(settings, worker_name="unit")
    app.finalize()
    app.conf.store = "memory://"
    return app


def inputs(app: Any) -> set[str]:
    return {t for agent in app.agents.values() for t in agent.channel.topics}


@pytest.mark.parametrize(
    ("agents", "names", "topics", "lead", "orders_dlq"),
    [
        ("all", ALL_AGENTS, ALL_INPUTS, CLICKS, "recs"),
        ("recs", {"recommend", "recommend_orders"}, {CLICKS, "shop.orders.v1"}, CLICKS, "recs"),
        ("bidding", {"ad_events"}, {"ads.events.v1"}, "ads.events.v1", None),
        (
            "care_crm, inventory",
            {"inventory_demand", "inventory", "crm", "reviews", "care"},
            {"shop.orders.v1", "shop.demand.v1", "shop.inventory.v1", "shop.reviews.v1", "care.messages.v1"},
            "care.messages.v1",
            "inventory",
        ),
    ],
)
def test_a_worker_runs_the_agent_groups_it_is_given_and_reads_only_their_topics(
    tmp_path: Path, agents: str, names: set[str], topics: set[str], lead: str, orders_dlq: str | None
) -> None:
    app = worker(tmp_path, agents)
    rt = app.shopstream
    assert {a.name for a in app.agents.values()} == names
    assert inputs(app) == topics
    assert rt.extra["lead_topic"] == lead  # the partition-0 owner of this topic publishes ops alerts
    assert rt.extra["orders_dead_lettered_by"] == orders_dlq
    # The bid-request consumer (not a Faust agent) runs with the bidding group only.
    assert ("bid_consumer" in rt.extra) == ("bidding" in rt.settings.agent_groups())


def test_bad_groups_and_a_shared_app_id_are_refused_where_the_settings_are_read() -> None:
    env = {"SHOPSTREAM_APP_ID": "shop-recs"}
    with pytest.raises(SettingsError, match=r"unknown group 'ads'; expected all, or a comma list of recs, "):
        Settings.from_env({**env, "SHOPSTREAM_AGENTS": "recs,ads"})
    with pytest.raises(SettingsError, match="all stands alone"):
        Settings.from_env({**env, "SHOPSTREAM_AGENTS": "all,recs"})
    with pytest.raises(SettingsError, match="expected all, or a comma list"):
        Settings.from_env({**env, "SHOPSTREAM_AGENTS": " , "})
    with pytest.raises(SettingsError, match="needs its own SHOPSTREAM_APP_ID"):
        Settings.from_env({"SHOPSTREAM_AGENTS": "recs"})
    assert Settings.from_env({**env, "SHOPSTREAM_AGENTS": "recs"}).agent_groups() == {"recs"}


@pytest.mark.parametrize(
    ("agents", "dead_letter_orders", "by"),
    [
        ("care_crm", True, "care_crm"),
        ("recs,care_crm", True, "recs"),
        ("inventory,care_crm", True, "inventory"),
        ("inventory,care_crm", False, None),  # another application's pool dead-letters them
        ("bidding", True, None),
    ],
)
def test_one_group_of_an_application_dead_letters_bad_orders(
    tmp_path: Path, agents: str, dead_letter_orders: bool, by: str | None
) -> None:
    rt = worker(tmp_path, agents, dead_letter_orders=dead_letter_orders).shopstream
    assert rt.extra["orders_dead_lettered_by"] == by


async def test_pages_of_groups_not_run_answer_404_and_name_the_group(tmp_path: Path) -> None:
    app = worker(tmp_path, "recs")
    app.web.init_server()
    async with TestClient(TestServer(app.web.web_app)) as client:
        for method, path, group in [
            ("post", "/openrtb2/bid", "bidding"),
            ("get", "/openrtb2/win?bid=b1&price=1.0", "bidding"),
            ("get", "/campaigns", "bidding"),
            ("get", "/inventory/sku-1", "inventory"),
            ("get", "/crm/u1", "care_crm"),
            ("get", "/care", "care_crm"),
        ]:
            resp = await getattr(client, method)(path)
            doc = await resp.json()
            assert resp.status == 404, path
            assert doc["error"] == "not_served" and doc["group"] == group, path
            assert "SHOPSTREAM_AGENTS=recs" in doc["detail"]
        for path in ("/healthz", "/livez"):
            resp = await client.get(path)
            assert resp.status == 200 and (await resp.json())["status"] == "ok", path
        resp = await client.get("/models")
        assert resp.status == 200 and (await resp.json())["ctr"] is None  # no bidding, no CTR model


def routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route of the app's web server."""
    app.web.init_server()
    return {(r.method, r.resource.canonical) for r in app.web.web_app.router.routes() if r.resource}


@pytest.mark.parametrize("group", ["recs", "inventory", "bidding", "care_crm"])
def test_every_pool_has_every_page_of_the_whole_worker_served_or_answering_not_served(
    tmp_path: Path, group: str
) -> None:
    """A page added to a group's views but not to its 404 list would be missing from the other pools."""
    whole = {path for _, path in routes(worker(tmp_path / "all", "all"))}
    pool = {path for _, path in routes(worker(tmp_path / group, group))}
    assert pool == whole
    assert {"/recommendations/{user_id}", "/openrtb2/bid", "/inventory/{sku}", "/care", "/healthz"} <= whole


async def test_a_bad_order_is_dead_lettered_once_by_the_first_group_that_reads_orders(tmp_path: Path) -> None:
    """Without the recs group, inventory dead-letters bad orders and crm skips them."""
    app = worker(tmp_path, "care_crm,inventory")
    rt = app.shopstream
    sent: list[tuple[str, bytes]] = []

    async def publish(topic: str, key: bytes | None, value: bytes, headers: Any = None) -> Any:
        sent.append((topic, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    rt.publish = publish
    bad = b'{"type":"order","event_id":"o1"'
    good = msgspec.json.encode(
        {
            "type": "order",
            "event_id": "o2",
            "ts": 1.0,
            "user_id": "u1",
            "order_id": "A1",
            "lines": [{"sku": "s1", "qty": 2, "unit_price": 3.0, "currency": "EUR"}],
        }
    )
    async with app.agents["inventory_demand"].test_context() as ctx:
        await ctx.put(bad, key=b"u1")
    async with app.agents["crm"].test_context() as ctx:
        await ctx.put(bad, key=b"u1")
        await ctx.put(good, key=b"u1")
    letters = [DEAD_LETTER_CODEC.decode(v) for t, v in sent if t == "shop.orders.v1.dlq"]
    assert [(d.reason, d.original) for d in letters] == [("malformed_json", bad)]
    # crm skipped the bad order (no second dead letter) and went on with the good one.
    assert rt.extra["crm_state"]["u1"]["c"]["n_orders"] == 1
