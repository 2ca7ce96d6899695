"""Shared helpers for the benchmark modules (see ARCHITECTURE.md, "Benchmark convention").

Every benchmark is a runnable module, ``python -m benchmarks.<name> [--quick] [--out PATH]``,
that ends with :func:`write_results`. The results file holds::

    {"name", "when", "git", "machine", "quick", "params", "metrics", "baselines", "targets"}

``targets`` maps a metric name to the output of :func:`target`, whose ``met`` is computed
from the value, never typed by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import operator
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent

#: Distributions whose versions are recorded in ``machine["packages"]``.
PACKAGES = (
    "msgspec",
    "orjson",
    "faust-streaming",
    "aiokafka",
    "river",
    "onnxruntime",
    "numpy",
    "pyarrow",
    "redis",
)

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def parse_args(
    name: str,
    description: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """Parse a benchmark's command line: ``--quick``, ``--out PATH`` and whatever ``extra`` adds.

    ``extra`` receives the parser to add benchmark-specific options; ``argv`` defaults to
    ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (small sizes, a few rounds); results go to results/<name>.quick.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"write the results JSON here instead of benchmarks/results/{name}[.quick].json",
    )
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    parts = line.split()
                    unit = parts[2].lower() if len(parts) > 2 else "kb"
                    return int(parts[1]) * (1024 if unit == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Describe the machine and software the benchmark ran on.

    Keys: ``cpus`` (``os.cpu_count()``), ``cpus_usable`` (the CPU affinity mask),
    ``mem_total_bytes`` (from ``/proc/meminfo``; ``None`` where unavailable), ``platform``,
    ``machine``, ``processor``, ``python``, ``python_impl``, and ``packages``
    (distribution -> version, ``None`` when not installed).
    """
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    mem = _mem_total_bytes()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "mem_total_bytes": mem,
        "mem_total_gib": round(mem / 2**30, 2) if mem is not None else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "packages": {dist: _package_version(dist) for dist in PACKAGES},
    }


def _git(*args: str) -> str | None:
    """Output of ``git ARGS`` in the repository, or None when git fails."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return str(out)


def git_commit() -> str:
    """Return ``git rev-parse HEAD`` for the repository, with ``+dirty`` if the tree has changes.

    Returns ``"unknown"`` when git is missing or this is not a checkout.
    """
    head = (_git("rev-parse", "HEAD") or "").strip()
    if not head:
        return "unknown"
    status = _git("status", "--porcelain")
    return f"{head}+dirty" if status and status.strip() else head


def target(value: float, target: float, op: str) -> dict[str, Any]:
    """Build one entry of the ``targets`` block; ``met`` is computed as ``value <op> target``.

    ``op`` is one of ``">="``, ``"<="``, ``">"``, ``"<"``. A NaN value never meets a target.

    >>> target(1.3, 1.0, ">=")
    {'value': 1.3, 'target': 1.0, 'op': '>=', 'met': True}
    >>> target(250.0, 200, "<")["met"]
    False
    >>> target(float("nan"), 1.0, "<=")["met"]
    False
    >>> target(1.0, 1.0, "==")
    Traceback (most recent call last):
    ...
    ValueError: unknown op '==' (expected one of >=, <=, >, <)
    """
    try:
        compare = _OPS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r} (expected one of {', '.join(_OPS)})") from None
    v, t = float(value), float(target)
    met = (not math.isnan(v)) and bool(compare(v, t))
    return {"value": v, "target": t, "op": op, "met": met}


def percentiles(samples: Iterable[float], ps: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Percentiles of ``samples`` as ``{"p50": ..., "p90": ..., "p99": ...}`` (linear interpolation).

    >>> percentiles([1, 2, 3, 4, 5], ps=(50, 99.9))
    {'p50': 3.0, 'p99.9': 4.996}
    """
    arr = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=float)
    if arr.size == 0:
        raise ValueError("percentiles of an empty sample")
    values = np.percentile(arr, list(ps))
    return {f"p{p:g}": round(float(v), 12) for p, v in zip(ps, values, strict=True)}


def cpu_seconds(pid: int | None) -> float:
    """user+system CPU seconds of ``pid`` and its live descendants (0.0 if unreadable).

    ``shopstream worker`` is a supervisor whose child does the work, so the tree is summed.
    """
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        children = []
    return own + sum(cpu_seconds(c) for c in children)


async def settle_past_first_commits(commit_interval_s: float) -> None:
    """Wait two commit intervals after a warm-up, so the worker's first commits are behind us.

    The first appends to a fresh topic's partitions (the worker's changelogs,
    written at its commits) cost the broker ~100 ms, which a long-running
    worker never pays.
    """
    await asyncio.sleep(2 * commit_interval_s + 0.5)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def default_out(name: str, quick: bool) -> Path:
    """Where results go without ``--out``: ``results/<name>.json``, or ``<name>.quick.json`` if quick."""
    return RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")


def _fmt(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return str(value)
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if isinstance(value, (int, np.integer)) or (abs(v) >= 1000 and v.is_integer()):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.3f}"
    return f"{v:.4g}"


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) with ``None``, recursively."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_results(
    name: str,
    quick: bool,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    baselines: Mapping[str, Any],
    targets: Mapping[str, Mapping[str, Any]],
    out: Path | str | None = None,
) -> Path:
    """Write the results JSON (the benchmark convention) and print a short summary.

    The file goes to ``out`` when given, else to :func:`default_out`. ``targets`` values should
    come from :func:`target`. Non-finite floats are written as ``null``. Returns the path written.
    """
    path = Path(out) if out is not None else default_out(name, quick)
    doc = {
        "name": name,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "git": git_commit(),
        "machine": machine_info(),
        "quick": bool(quick),
        "params": dict(params),
        "metrics": dict(metrics),
        "baselines": dict(baselines),
        "targets": {k: dict(v) for k, v in targets.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(doc), indent=2, default=_json_default, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

    out_lines = [f"== {name}{' (quick)' if quick else ''} @ {doc['git']}"]
    width = max((len(k) for k in (*metrics, *baselines, *targets)), default=0)
    for k, v in metrics.items():
        out_lines.append(f"  {k:<{width}}  {_fmt(v)}")
    if baselines:
        out_lines.append("  baselines:")
        for k, v in baselines.items():
            out_lines.append(f"  {k:<{width}}  {_fmt(v)}")
    if targets:
        out_lines.append("  targets:")
        for k, t in targets.items():
            verdict = "MET" if t.get("met") else "MISSED"
            out_lines.append(
                f"  {k:<{width}}  {_fmt(t.get('value'))} {t.get('op')} {_fmt(t.get('target'))}  {verdict}"
            )
    out_lines.append(f"  -> {path}")
    print("\n".join(out_lines), file=sys.stdout, flush=True)
    return path
