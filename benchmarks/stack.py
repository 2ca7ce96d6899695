"""What the service benchmarks share: a throw-away Kafka + Redis on free ports, load-generator
processes, and the aiokafka echo that is the baseline of every topic path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def run_module(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module *args`` (a load generator) and return the JSON of its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {args[0] if args else ''} failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


async def echo(bootstrap: str, in_topic: str, out_topic: str, ready: Path, field: str) -> None:
    """The baseline of a topic path: consume each message, produce ``{field: its field}`` back at once.

    Writes ``ready`` once it holds its partitions; runs until killed.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        in_topic,
        bootstrap_servers=bootstrap,
        group_id=f"echo-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=5,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.05)
    for tp in consumer.assignment():
        await consumer.position(tp)
    ready.write_text("ok")
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for msgs in batch.values():
                for m in msgs:
                    ident = str(json.loads(m.value)[field])
                    await producer.send(
                        out_topic, value=json.dumps({field: ident}).encode(), key=ident.encode()
                    )
    finally:
        await producer.stop()
        await consumer.stop()


@contextlib.contextmanager
def echo_process(module: str, bootstrap: str, in_topic: str, out_topic: str, home: Path) -> Iterator[None]:
    """Run ``python -m module --echo ...`` while the block runs (waits until it is ready)."""
    ready = home / f"echo-{uuid.uuid4().hex[:6]}.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--echo", bootstrap, in_topic, out_topic, str(ready)]
    )
    try:
        end = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < end:
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


async def producer_and_tail(bootstrap: str, topic: str, partitions: int) -> tuple[Any, Any]:
    """A started no-linger producer, and a consumer of every partition of ``topic`` positioned at its end."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return producer, consumer


def collect_answers(
    consumer: Any, got: dict[str, Any], answer: Callable[[Any, float], tuple[Any, Any]]
) -> Any:
    """Start a task that reads ``consumer`` and records ``got[key] = value`` for each first answer.

    ``answer(message, receive_time)`` gives ``(key, value)``, or ``(None, _)`` for a message to skip.
    """

    async def run() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    key, value = answer(m, now)
                    if key is not None and key not in got:
                        got[key] = value

    return asyncio.create_task(run())


async def finish_load(
    got: dict[str, Any], expected: int, collector: Any, producer: Any, consumer: Any, wait_s: float = 30.0
) -> None:
    """Wait (at most ``wait_s``) until ``expected`` answers are in, then stop the collector and clients."""
    end = time.monotonic() + wait_s
    while len(got) < expected and time.monotonic() < end:
        await asyncio.sleep(0.1)
    collector.cancel()
    await producer.stop()
    await consumer.stop()
