"""A throw-away Kafka + Redis for one benchmark run, on free ports, in a temporary folder."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shopstream.services import Kafka, Redis, free_port
from shopstream.settings import Settings


@dataclass
class Stack:
    home: Path
    settings: Settings
    kafka: Kafka
    redis: Redis


@contextlib.contextmanager
def local_stack(prefix: str, log: Callable[[str], None] = print) -> Iterator[Stack]:
    """Start Kafka and Redis; yield a :class:`Stack` with settings for one worker; stop both on exit.

    ``settings`` has its own topic prefix, app id and Redis prefix, four
    partitions, short session timeouts and the archive off; change it with
    ``settings.with_(...)``.
    """
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-") as tmp:
        home = Path(tmp)
        kafka = Kafka(home / "kafka", port=free_port(), controller_port=free_port())
        redis = Redis(home / "redis", port=free_port())
        try:
            log("starting Kafka and Redis")
            kafka.start(quiet=True)
            redis.start(quiet=True)
            settings = Settings.from_env(
                None,
                kafka_bootstrap=kafka.bootstrap,
                redis_url=redis.url,
                topic_prefix=f"bench-{run_id}-",
                app_id=f"bench-{run_id}",
                redis_prefix=f"b{run_id}:",
                partitions=4,
                data_dir=home / "worker",
                lake_dir=home / "lake",
                model_dir=home / "models",
                web_port=free_port(),
                session_timeout_s=6,
                heartbeat_interval_s=0.5,
                archive=False,
            )
            yield Stack(home, settings, kafka, redis)
        finally:
            redis.stop(quiet=True)
            kafka.stop(quiet=True)
