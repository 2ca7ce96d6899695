"""Run workers as child processes (demo, tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shopstream.settings import Settings


def spawn(module: str, args: list[str], settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m module *args`` with ``settings`` as its only ``SHOPSTREAM_*`` environment.

    Its output is appended to ``log``; it gets its own session (a signal to this
    process group does not reach it) and no stdin.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSTREAM_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child holds its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def tail_file(path: Path, n: int = 4000) -> str:
    """The last ``n`` characters of the text file ``path`` ('' if it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class WorkerProcess:
    """A ``shopstream worker`` child process with its own log file."""

    def __init__(self, settings: Settings, name: str, log: Path) -> None:
        self.settings = settings
        self.name = name
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the worker (returns at once; see :meth:`wait_ready`)."""
        self.proc = spawn("shopstream.cli", ["worker", "--name", self.name], self.settings, self.log)
        return self

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict | None:
        """The worker's ``/healthz`` document, or None if it does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1.0) as r:
                doc: dict = json.loads(r.read())
                return doc
        except Exception:
            return None

    def metrics_text(self) -> str:
        """The worker's Prometheus exposition text ('' if it does not answer)."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=2.0) as r:
                return str(r.read().decode())
        except Exception:
            return ""

    def wait_ready(self, timeout: float = 60.0, topic: str | None = None) -> dict:
        """Wait until the worker answers and (optionally) owns a partition of ``topic``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited; log:\n{self.tail_log()}")
            h = self.health()
            owns = h is not None and any(a.startswith(f"{topic}:") for a in h.get("assigned", []))
            if h and (topic is None or (owns and h.get("ready", True))):
                return h
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s; log:\n{self.tail_log()}")

    def tail_log(self, n: int = 4000) -> str:
        return tail_file(self.log, n)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """``kill -9`` of the worker (its supervisor and the Faust process under it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a metric's samples in Prometheus text whose labels include ``labels``.

    >>> metric_value('a_total{topic="x"} 2.0\\na_total{topic="y"} 3.0\\n', "a_total", {"topic": "y"})
    3.0
    """
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, val = line.rpartition(" ")
        metric, _, lab = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in lab for k, v in labels.items()):
            continue
        total += float(val)
    return total
