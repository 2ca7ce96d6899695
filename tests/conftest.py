"""Shared fixtures: one real Kafka broker and one Redis per test session, on free ports.

Each test gets its own topic prefix, consumer group (app id), Redis key prefix
and directories, so tests never see each other's data (house rule 9).
Integration tests FAIL under CI (``CI`` set) when a service cannot start, and
skip with the reason elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shopstream.procs import WorkerProcess
from shopstream.services import Kafka, Redis, ServiceError, free_port
from shopstream.settings import Settings


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kafka, Redis]]:
    home = tmp_path_factory.mktemp("services")
    kafka = Kafka(home / "kafka", port=free_port(), controller_port=free_port())
    redis = Redis(home / "redis", port=free_port(), persistent=False)
    try:
        redis.start(quiet=True)
        kafka.start(quiet=True)
    except ServiceError as exc:
        kafka.stop(quiet=True, kill=True)
        redis.stop(quiet=True)
        msg = f"Kafka/Redis could not start: {exc}. Run `make bootstrap`."
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    yield kafka, redis
    kafka.stop(quiet=True)
    redis.stop(quiet=True)


@pytest.fixture
def settings_factory(services: tuple[Kafka, Redis], tmp_path: Path) -> Callable[..., Settings]:
    kafka, redis = services

    def make(**overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:10]
        base: dict[str, object] = dict(
            kafka_bootstrap=kafka.bootstrap,
            redis_url=redis.url,
            app_id=f"test-{tag}",
            topic_prefix=f"t{tag}-",
            redis_prefix=f"t{tag}:",
            partitions=4,
            web_port=free_port(),
            data_dir=tmp_path / f"data-{tag}",
            model_dir=tmp_path / f"models-{tag}",
            lake_dir=tmp_path / "lake",
            lake_max_age_s=2.0,
            session_timeout_s=6.0,
            heartbeat_interval_s=0.5,
            commit_interval_s=0.5,
            recovery_stall_s=15.0,
            log_level="INFO",
        )
        base.update(overrides)
        return Settings.from_env({}, **base)

    return make


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(settings: Settings, name: str = "w1") -> WorkerProcess:
        w = WorkerProcess(settings, name, tmp_path / f"{name}-{settings.web_port}.log").start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop(timeout=20)
