"""Missing tools give errors that name the fix (no services are started here)."""

from __future__ import annotations

import pytest

from shopstream.services import JARS, Kafka, Redis, ServiceError, free_port


def test_missing_redis_server_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match=r"apt-get install -y redis-server"):
        Redis(tmp_path / "r", port=free_port()).start(quiet=True)


def test_missing_java_or_maven_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    fix = r"openjdk-17" if (JARS / ".pom.stamp").exists() else r"apt-get install -y (openjdk-17|maven)"
    with pytest.raises(ServiceError, match=fix):
        Kafka(tmp_path / "k", port=free_port(), controller_port=free_port()).start(quiet=True)


def test_broker_jvm_options_default_and_override(tmp_path, monkeypatch):
    """Kafka's G1 settings by default; KAFKA_HEAP_OPTS and KAFKA_JVM_PERFORMANCE_OPTS override them."""
    from shopstream import services
    from shopstream.services import KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS

    monkeypatch.setattr(services, "_require", lambda tool, fix: f"/usr/bin/{tool}")
    monkeypatch.delenv("KAFKA_HEAP_OPTS", raising=False)
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", "  ")  # blank: the default
    kafka = Kafka(tmp_path / "k", port=free_port(), controller_port=free_port())
    cmd = kafka._java("kafka.Kafka", "server.properties")
    opts = cmd[1 : cmd.index("-cp")]
    assert opts[:2] == KAFKA_HEAP_OPTS.split() == ["-Xms1g", "-Xmx1g"]
    assert "-XX:G1HeapRegionSize=16M" in opts and set(KAFKA_JVM_PERFORMANCE_OPTS.split()) <= set(opts)
    assert "-XX:TieredStopAtLevel=1" in opts  # C1 only: a short-lived broker beside the workers
    assert cmd[-2:] == ["kafka.Kafka", "server.properties"]

    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xms512m -Xmx512m")
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", "-XX:+UseParallelGC")
    opts = kafka._java("kafka.Kafka")[1:]
    assert opts[:3] == ["-Xms512m", "-Xmx512m", "-XX:+UseParallelGC"]
    assert "-XX:+UseG1GC" not in opts
    # Kafka's tools keep their small heap whatever the broker's.
    tool = kafka._java("kafka.tools.StorageTool", heap=services.TOOL_HEAP_OPTS)
    assert tool[1:3] == ["-Xms32m", "-Xmx256m"]
