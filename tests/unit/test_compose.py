"""The Docker stack (Dockerfile, docker-compose.yml, infra/) validated without a Docker engine.

``docker-compose config`` parses, interpolates and schema-checks the compose
file offline; the Grafana dashboard is checked as plain JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "shopstream.json"

SERVICES = {"kafka", "kafka-init", "redis", "worker", "prometheus", "grafana"}
DASHBOARD_METRICS = {
    "shopstream_events_in_total",
    "shopstream_events_out_total",
    "shopstream_dlq_events_total",
    "shopstream_processing_seconds_bucket",
    "shopstream_consumer_lag",
    "shopstream_consumer_lag_seconds",
    "shopstream_consumer_group_status",
    "shopstream_model_quality",
    "shopstream_process_cpu_seconds_total",
    "shopstream_process_resident_memory_bytes",
}
MISSING_COMPOSE = (
    "docker-compose is not on PATH; run `make bootstrap` (it installs Debian's docker-compose with apt)."
)

# Words of PromQL that look like identifiers but are not metric names.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def _compose() -> str:
    """Path of docker-compose; when it is missing, fail under CI and skip elsewhere."""
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING_COMPOSE)
        pytest.skip(MISSING_COMPOSE)
    return exe


def _run_compose(compose: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_is_valid() -> None:
    res = _run_compose(_compose(), "config", "-q")
    assert res.returncode == 0, f"docker-compose config -q failed:\n{res.stdout}{res.stderr}"


def test_compose_services() -> None:
    res = _run_compose(_compose(), "config", "--services")
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == SERVICES


def test_mounted_config_files_exist() -> None:
    """``config`` does not check bind-mount sources; a missing one would become an empty directory."""
    for rel in (
        "Dockerfile",
        "infra/prometheus/prometheus.yml",
        "infra/prometheus/alerts.yml",
        "infra/grafana/provisioning/datasources",
        "infra/grafana/provisioning/dashboards",
        "infra/grafana/dashboards/shopstream.json",
    ):
        assert (ROOT / rel).exists(), rel


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    >>> sorted(metric_names('histogram_quantile(0.99, sum(rate(a_b{x="y"}[1m])) by (le, agent)) + c'))
    ['a_b', 'c']
    """
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        if e[m.end() :].lstrip().startswith("("):  # a function call
            continue
        if word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def _panels(panels: list[dict]) -> list[dict]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out = []
    for p in panels:
        if p.get("type") == "row":
            out.extend(_panels(p.get("panels", [])))
        else:
            out.append(p)
    return out


def test_metric_names_parser() -> None:
    assert metric_names("shopstream_consumer_lag_messages") == {"shopstream_consumer_lag_messages"}
    assert metric_names('sum by (reason) (rate(x_total{reason=~"a|b"}[$__rate_interval]))') == {"x_total"}
    assert metric_names("rate(a[5m] offset 1h) > bool 1e3") == {"a"}


def test_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = _panels(dashboard["panels"])
    assert len(panels) >= 5
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    assert exprs, "no PromQL targets in the dashboard"
    names = set().union(*(metric_names(e) for e in exprs))
    assert names >= DASHBOARD_METRICS, f"missing: {DASHBOARD_METRICS - names}"
    stray = sorted(n for n in names if not n.startswith("shopstream_"))
    assert not stray, f"dashboard references non-shopstream metrics: {stray}"
    unknown = names - exported_names()
    assert not unknown, f"the dashboard uses metrics no worker exports: {sorted(unknown)}"


def exported_names() -> set[str]:
    """Every sample name the workers' metrics can produce."""
    from ops.metrics import Metrics

    out: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        out.update(family.name + s for s in suffixes)
    return out


def test_prometheus_alert_rules_use_exported_metrics() -> None:
    text = (ROOT / "infra" / "prometheus" / "alerts.yml").read_text()
    exprs = [ln.split("expr:", 1)[1] for ln in text.splitlines() if ln.strip().startswith("expr:")]
    names = set().union(*(metric_names(e) for e in exprs)) - {"up"}
    assert names and names <= exported_names(), sorted(names - exported_names())


def test_compose_broker_gc_settings_match_the_dev_broker() -> None:
    """The Docker broker runs with the G1 settings the benchmarks measured on the dev broker.

    It leaves out the dev broker's C1-only JIT: a long-lived broker earns C2 back.
    """
    from shopstream.services import KAFKA_GC_OPTS, KAFKA_JVM_PERFORMANCE_OPTS

    res = _run_compose(_compose(), "config")
    assert res.returncode == 0, res.stderr
    # The rendered YAML folds a long plain scalar onto more-indented continuation lines.
    found = re.findall(r"^( *)KAFKA_JVM_PERFORMANCE_OPTS: (.*(?:\n\1 +\S.*)*)", res.stdout, re.M)
    assert [" ".join(value.split()).strip("'\"") for _, value in found] == [KAFKA_GC_OPTS]
    assert f"{KAFKA_GC_OPTS} -XX:TieredStopAtLevel=1" == KAFKA_JVM_PERFORMANCE_OPTS
