"""The lag dashboard in headless Chromium (Debian's chromium + chromedriver, driven by selenium).

A worker runs while the synthetic shop is replayed into it; the page must
load, draw charts with non-zero data, and keep updating. A screenshot is
saved to ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from schemas.events import OPS_ALERT_CODEC
from shopstream.replay import produce
from shopstream.sim import SyntheticShop
from streams.app import ensure_topics
from tests.kafka_util import consume_until

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        msg = "chromium or chromedriver missing: run `make bootstrap` (apt: chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


def test_dashboard_draws_live_lag_and_throughput(settings_factory, worker_factory):
    # A tiny lag threshold, so that the live replay fires an alert.
    settings = settings_factory(lag_interval_s=1.0, alert_lag_s=0.05)
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_ready(timeout=90, topic=settings.topic_prefix + "shop.clicks.v1")

    stop = threading.Event()

    def replay() -> None:
        events = SyntheticShop(seed=3).events()
        asyncio.run(produce(settings, itertools.islice(events, 12_000), rate=400, progress=False))

    feeder = threading.Thread(target=replay, daemon=True)
    feeder.start()
    driver = _driver()
    try:
        driver.get(worker.url + "/dashboard")
        deadline = time.monotonic() + 45

        def doc():
            return driver.execute_script("return window.dashboard && window.dashboard.lastDoc")

        def tput_total(d) -> float:
            return sum(sum(p.get("events_in_per_s", {}).values()) for p in d["points"])

        while time.monotonic() < deadline:
            d = doc()
            if d and len(d["points"]) >= 4 and tput_total(d) > 0 and d["lag"]["groups"]:
                break
            time.sleep(0.5)
        d = doc()
        assert d and len(d["points"]) >= 4, d
        assert tput_total(d) > 0, "throughput chart has only zeros"
        assert any(p["latency"] for p in d["points"]), "no latency data"
        groups = {g["group"]: g for g in d["lag"]["groups"]}
        assert settings.app_id in groups and groups[settings.app_id]["partitions"]
        # The charts are drawn (uPlot canvases) with as many x values as points.
        n_before = driver.execute_script("return window.dashboard.charts['c-tput'].plot.data[0].length")
        assert n_before >= 4
        assert len(driver.find_elements("css selector", "#c-lag canvas")) == 1
        assert driver.find_elements("css selector", "#groups .badge")
        # ... and they update.
        deadline = time.monotonic() + 15
        n_after = n_before
        while time.monotonic() < deadline and n_after <= n_before + 1:
            time.sleep(0.5)
            n_after = driver.execute_script("return window.dashboard.charts['c-tput'].plot.data[0].length")
        assert n_after > n_before + 1, (n_before, n_after)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
        assert not driver.execute_script("return document.getElementById('notice').textContent")
        # The alert reached the ops-alerts topic (from the one worker) and the page.
        msgs = asyncio.run(
            consume_until(
                settings.kafka_bootstrap, settings.topic_prefix + "ops.alerts.v1", lambda m: len(m) >= 1, 30
            )
        )
        alerts = [OPS_ALERT_CODEC.decode(m.value) for m in msgs]
        assert any(a.kind == "lag_seconds" and a.status == "firing" for a in alerts), alerts
        assert driver.find_elements("css selector", "#t-alerts tbody tr")
    finally:
        driver.quit()
        stop.set()
        feeder.join(timeout=60)
    assert worker.alive()
