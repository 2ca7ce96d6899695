"""The local services: idempotent, loopback-only, explicit partition counts, clear errors."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
import redis as redis_py
from aiokafka.admin import AIOKafkaAdminClient

from shopstream.services import Kafka, Redis, ServiceError, create_topics, free_port

pytestmark = pytest.mark.integration


def test_start_is_idempotent_and_status_says_running(services, capsys):
    kafka, redis = services
    assert kafka.start() == 0.0 and redis.start() == 0.0
    out = capsys.readouterr().out
    assert f"kafka: already running at {kafka.bootstrap}" in out
    assert f"redis: already running at {redis.url}" in out
    assert kafka.status().startswith(f"kafka: running at {kafka.bootstrap}")
    assert redis.status().startswith(f"redis: running at {redis.url}")


def test_services_listen_on_loopback_only(services):
    kafka, redis = services
    client = redis_py.Redis.from_url(redis.url, decode_responses=True)
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("appendonly")["appendonly"] == "no"  # persistence off for tests
    config = (kafka.home / "server.properties").read_text()
    assert f"listeners=PLAINTEXT://127.0.0.1:{kafka.port}," in config


def test_broker_compiles_as_its_jvm_options_say(services):
    """The session's broker runs the options services.py builds, and its JIT follows them.

    By default (KAFKA_JVM_PERFORMANCE_OPTS unset, as in CI) that is C1 only: no C2
    compiler thread. An override without -XX:TieredStopAtLevel=1 brings C2 back.
    """
    kafka, _ = services
    pid = int(kafka.pidfile.read_text().strip())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    built = kafka._java("kafka.Kafka")
    options = built[1 : built.index("-cp")]  # heap, performance and logging options
    assert cmdline[1 : cmdline.index("-cp")] == options, cmdline
    override = os.environ.get("KAFKA_JVM_PERFORMANCE_OPTS", "").strip()
    threads = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # the JVM starts and ends threads as it runs
            threads.add((task / "comm").read_text().strip())
        except OSError:
            continue
    assert any(name.startswith("C1 CompilerThre") for name in threads), sorted(threads)
    c1_only = "-XX:TieredStopAtLevel=1" in options
    if not override:
        assert c1_only
    assert any(name.startswith("C2 CompilerThre") for name in threads) != c1_only, sorted(threads)


def test_a_port_taken_by_a_stranger_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServiceError, match="SHOPSTREAM_REDIS_URL"):
            Redis(tmp_path / "r", port=port).start(quiet=True)
        with pytest.raises(ServiceError, match="SHOPSTREAM_KAFKA_BOOTSTRAP"):
            Kafka(tmp_path / "k", port=port, controller_port=free_port()).start(quiet=True)


def test_topics_get_explicit_partition_counts(services):
    kafka, _ = services
    names = {f"svc-{free_port()}-a": 3, f"svc-{free_port()}-b": 6}
    assert sorted(asyncio.run(create_topics(kafka.bootstrap, names))) == sorted(names)
    assert asyncio.run(create_topics(kafka.bootstrap, names)) == []

    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            return {m["topic"]: len(m["partitions"]) for m in await admin.describe_topics(list(names))}
        finally:
            await admin.close()

    assert asyncio.run(describe()) == names
    wrong = {next(iter(names)): 5}
    with pytest.raises(ServiceError, match="has 3 partitions, expected 5"):
        asyncio.run(create_topics(kafka.bootstrap, wrong))
