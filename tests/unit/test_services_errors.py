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
