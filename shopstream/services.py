"""Local Apache Kafka (KRaft, single node) and Redis, for dev, tests, CI and the demo.

Kafka's jars come from Maven Central through ``infra/kafka/pom.xml`` (``mvn
dependency:copy-dependencies``) into the git-ignored ``.cache/kafka/libs`` and
run on the machine's Java 17. Redis is Debian's ``redis-server``. Both bind to
127.0.0.1 only. Every operation is idempotent: starting a running service
reports it and returns.

The same classes serve the ``shopstream services`` command and the test
fixtures (which pass free ports and a temporary directory).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "infra" / "kafka" / "pom.xml"
LOG4J = ROOT / "infra" / "kafka" / "log4j2.yaml"
JARS = ROOT / ".cache" / "kafka" / "libs"

# Largest message the broker accepts. Oversized events must reach the worker
# (and its dead-letter topic) rather than be refused by the broker.
MESSAGE_MAX_BYTES = 16 * 1024 * 1024

#: The broker's heap: the default of Kafka's own ``kafka-server-start.sh``.
#: Overridden by ``KAFKA_HEAP_OPTS``, as Kafka's scripts are.
KAFKA_HEAP_OPTS = "-Xms1g -Xmx1g"
#: The broker's G1 settings, as Kafka's operations guide gives them ("Java
#: Version": LinkedIn's tuning). Overridden by ``KAFKA_JVM_PERFORMANCE_OPTS``,
#: as Kafka's scripts are. Measured by
#: five alternated ``benchmarks/bid_latency.py`` runs per setting against the
#: previous settings (-Xms256m -Xmx768m, G1's defaults, 1 MB regions): the
#: broker paused for young collections about 50 times a run (median 5.4 ms, at
#: most 12) against 16 times here (median 8.1 ms, at most 22), and the median
#: topic p99 went from 10.3 to 7.3 ms, the aiokafka echo baseline's from 6.4 to 4.9 ms.
#: ``docker-compose.yml`` sets the same string.
KAFKA_GC_OPTS = (
    "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:G1HeapRegionSize=16M "
    "-XX:MetaspaceSize=96m -XX:MinMetaspaceFreeRatio=50 -XX:MaxMetaspaceFreeRatio=80 "
    "-XX:+ExplicitGCInvokesConcurrent"
)
#: :data:`KAFKA_GC_OPTS` plus ``-XX:TieredStopAtLevel=1``: the JIT compiles with C1 only. This
#: broker lives for minutes (a test session, the demo, a benchmark) on the
#: cores that run the workers, and HotSpot's C2 compiler thread took up to a
#: third of a core in its first minutes (1.9 s of CPU in 6 s of a
#: ``benchmarks/pipeline.py --quick`` run, more than all request handlers together).
#: Three alternated ``pipeline.py --quick`` pairs (README, Performance): the
#: broker's CPU over those two-minute runs about halved, and the worker's
#: throughput rose 17% (median). C2's code is faster once compiled, so a
#: long-lived production broker earns it back: ``docker-compose.yml`` keeps it.
#: Kafka's command-line tools get the same options (they run for seconds). Setting
#: ``KAFKA_JVM_PERFORMANCE_OPTS`` replaces the whole string, this flag included.
KAFKA_JVM_PERFORMANCE_OPTS = f"{KAFKA_GC_OPTS} -XX:TieredStopAtLevel=1"
#: Kafka's command-line tools (storage format, consumer groups) are clients, not the broker.
TOOL_HEAP_OPTS = "-Xms32m -Xmx256m"


class ServiceError(RuntimeError):
    """A service could not be installed or started; the message says what to do."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _require(tool: str, fix: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise ServiceError(f"`{tool}` was not found on PATH. {fix}")
    return path


def ensure_kafka_jars(quiet: bool = False) -> Path:
    """Fetch the Kafka jars with Maven unless they are already cached."""
    stamp = JARS / ".pom.stamp"
    pom = POM.read_bytes()
    if stamp.exists() and stamp.read_bytes() == pom:
        return JARS
    java = _require("java", "Install Java 17: `apt-get install -y openjdk-17-jre-headless`.")
    del java
    mvn = _require("mvn", "Install Maven: `apt-get install -y maven`.")
    if not quiet:
        print("kafka: fetching broker jars from Maven Central (mvn, first run only)...", flush=True)
    if JARS.exists():
        shutil.rmtree(JARS)
    t0 = time.monotonic()
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={JARS}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ServiceError(
            "mvn could not fetch the Kafka jars (is Maven Central reachable?):\n"
            + (proc.stdout + proc.stderr)[-3000:]
        )
    stamp.write_bytes(pom)
    if not quiet:
        n = len(list(JARS.glob("*.jar")))
        print(f"kafka: {n} jars in {JARS} ({time.monotonic() - t0:.1f}s)", flush=True)
    return JARS


class _Local(abc.ABC):
    """What the local services share: a pid file, a port, idempotent start/stop, status."""

    name: str
    home: Path
    port: int
    host: str
    #: The variable that moves the service to another port (named in errors).
    setting: str
    stop_grace_s: float = 20.0

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """How clients reach the service (a bootstrap address or a URL)."""

    @property
    def pidfile(self) -> Path:
        return self.home / f"{self.name}.pid"

    def running(self) -> bool:
        """Whether the process is alive and its port answers."""
        return _pid_alive(self.pidfile) is not None and port_open(self.port, self.host)

    def _already_up(self, quiet: bool) -> bool:
        """True if it already runs (said so); an error if a stranger holds the port."""
        if self.running():
            if not quiet:
                print(f"{self.name}: already running at {self.address} (pid {_pid_alive(self.pidfile)})")
            return True
        if port_open(self.port, self.host):
            raise ServiceError(
                f"port {self.port} is in use by another process; set {self.setting} "
                "to a free port or stop that process."
            )
        return False

    def stop(self, quiet: bool = False, kill: bool = False) -> None:
        """Stop it (SIGTERM, then SIGKILL after a grace period; at once with ``kill``)."""
        pid = _pid_alive(self.pidfile)
        if pid is None:
            if not quiet:
                print(f"{self.name}: not running")
            return
        _terminate(pid, 0.0 if kill else self.stop_grace_s)
        self.pidfile.unlink(missing_ok=True)
        if not quiet:
            print(f"{self.name}: stopped (pid {pid})")

    def status(self) -> str:
        """One line describing the service."""
        pid = _pid_alive(self.pidfile)
        if pid and port_open(self.port, self.host):
            return f"{self.name}: running at {self.address} (pid {pid})"
        if pid:
            return f"{self.name}: process {pid} alive but port {self.port} not answering"
        return f"{self.name}: stopped"


@dataclasses.dataclass
class Kafka(_Local):
    """A single-node KRaft broker whose files live under ``home``."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    name = "kafka"
    setting = "SHOPSTREAM_KAFKA_BOOTSTRAP"

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the broker listener."""
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.bootstrap

    @property
    def logfile(self) -> Path:
        return self.home / "logs" / "server.log"

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        """The command line of one of Kafka's Java mains; ``heap`` replaces the broker's heap options."""
        java = _require("java", "Install Java 17: `apt-get install -y openjdk-17-jre-headless`.")
        # An unset, empty or blank variable means the default.
        env = os.environ
        heap_opts = (heap or env.get("KAFKA_HEAP_OPTS", "").strip() or KAFKA_HEAP_OPTS).split()
        perf = (env.get("KAFKA_JVM_PERFORMANCE_OPTS", "").strip() or KAFKA_JVM_PERFORMANCE_OPTS).split()
        return [
            java,
            *heap_opts,
            *perf,
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            f"{JARS}/*",
            main,
            *args,
        ]

    def run_tool(self, main: str, *args: str, timeout: float = 60.0) -> str:
        """Run one of Kafka's own command-line tools (a Java main class from the same jars); its stdout."""
        cmd = self._java(main, *args, heap=TOOL_HEAP_OPTS)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise ServiceError(f"{main} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        return out.stdout

    def describe_group(self, group: str) -> list[dict[str, str]]:
        """``kafka-consumer-groups --describe`` for ``group``: one dict per row (TOPIC, PARTITION, LAG...)."""
        text = self.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            self.bootstrap,
            "--describe",
            "--group",
            group,
        )
        lines = [ln.split() for ln in text.splitlines() if ln.strip()]
        header = next((ln for ln in lines if ln and ln[0] == "GROUP"), None)
        if header is None:
            return []
        rows = [ln for ln in lines if ln and ln[0] == group]
        return [dict(zip(header, row, strict=False)) for row in rows]

    def write_config(self) -> Path:
        """Write ``server.properties`` for this node."""
        cfg = self.home / "server.properties"
        cfg.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.home / 'data'}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    f"message.max.bytes={MESSAGE_MAX_BYTES}",
                    f"replica.fetch.max.bytes={MESSAGE_MAX_BYTES}",
                    "log.retention.hours=24",
                    "log.segment.bytes=67108864",
                    "",
                ]
            )
        )
        return cfg

    def start(self, timeout: float = 90.0, quiet: bool = False) -> float:
        """Start the broker (formatting storage on first start); return seconds to ready."""
        t0 = time.monotonic()
        if self._already_up(quiet):
            return 0.0
        ensure_kafka_jars(quiet=quiet)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        cfg = self.write_config()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = _uuid_b64()
            proc = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(cfg),
                    heap=TOOL_HEAP_OPTS,
                ),
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise ServiceError("kafka storage format failed:\n" + (proc.stdout + proc.stderr)[-3000:])
            if not quiet:
                print(f"kafka: formatted storage in {self.home / 'data'} (cluster {cluster_id})")
        out = open(self.home / "logs" / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
        proc2 = subprocess.Popen(
            self._java("kafka.Kafka", str(cfg)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pidfile.write_text(str(proc2.pid))
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if proc2.poll() is not None:
                tail = self.logfile.read_text()[-3000:] if self.logfile.exists() else ""
                raise ServiceError(f"kafka exited with code {proc2.returncode}; log {self.logfile}:\n{tail}")
            if port_open(self.port, self.host) and _broker_ready(self.bootstrap):
                took = time.monotonic() - t0
                if not quiet:
                    print(f"kafka: ready at {self.bootstrap} in {took:.1f}s (logs: {self.logfile})")
                return took
            time.sleep(0.25)
        self.stop(quiet=True)
        raise ServiceError(f"kafka did not become ready within {timeout:.0f}s; see {self.logfile}")

    def status(self) -> str:
        """One line describing the broker, with its log file."""
        return f"{super().status()} (logs {self.logfile})"


@dataclasses.dataclass
class Redis(_Local):
    """A ``redis-server`` on 127.0.0.1 with its files under ``home``."""

    home: Path
    port: int = 6379
    persistent: bool = False
    host: str = "127.0.0.1"
    name = "redis"
    setting = "SHOPSTREAM_REDIS_URL"
    stop_grace_s = 10.0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return self.url

    def start(self, timeout: float = 20.0, quiet: bool = False) -> float:
        """Start redis-server; return seconds to ready."""
        t0 = time.monotonic()
        if self._already_up(quiet):
            return 0.0
        server = _require(
            "redis-server", "Install it: `apt-get install -y redis-server` (or run `make bootstrap`)."
        )
        self.home.mkdir(parents=True, exist_ok=True)
        persist = (
            ["--save", "60 1000", "--appendonly", "yes"]
            if self.persistent
            else ["--save", "", "--appendonly", "no"]
        )
        proc = subprocess.run(
            [
                server,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--protected-mode",
                "yes",
                "--daemonize",
                "yes",
                "--dir",
                str(self.home),
                "--pidfile",
                str(self.pidfile),
                "--logfile",
                str(self.home / "redis.log"),
                *persist,
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServiceError("redis-server failed to start: " + proc.stderr[-2000:])
        while time.monotonic() < t0 + timeout:
            if port_open(self.port, self.host) and _pid_alive(self.pidfile):
                took = time.monotonic() - t0
                if not quiet:
                    mode = "persistence on" if self.persistent else "persistence off"
                    print(f"redis: ready at {self.url} in {took:.1f}s ({mode})")
                return took
            time.sleep(0.05)
        raise ServiceError(f"redis did not become ready; see {self.home / 'redis.log'}")


def _terminate(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _uuid_b64() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, never starting with ``-``.

    An id with a leading ``-`` (1 in 64) is read as an option by ``kafka-storage format -t``
    ("expected one argument"); Kafka's own ``Uuid.randomUuid`` skips those too.

    >>> all(not _uuid_b64().startswith("-") and len(_uuid_b64()) == 22 for _ in range(500))
    True
    """
    import base64

    while True:
        out = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not out.startswith("-"):
            return out


def _broker_ready(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            try:
                await admin.close()
            except Exception:
                pass

    return asyncio.run(probe())


async def create_topics(bootstrap: str, partitions: dict[str, int], replication: int = 1) -> list[str]:
    """Create topics with explicit partition counts; return those that were new.

    An existing topic with a different partition count is an error, since
    tables co-partitioned with it would crash later with ``PartitionsMismatch``.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=t,
                num_partitions=n,
                replication_factor=replication,
                topic_configs={"max.message.bytes": str(MESSAGE_MAX_BYTES)},
            )
            for t, n in partitions.items()
            if t not in existing
        ]
        if new:
            resp = await admin.create_topics(new)
            for item in getattr(resp, "topic_errors", []) or getattr(resp, "topic_error_codes", []):
                name, code = item[0], item[1]
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
                    raise ServiceError(f"could not create topic {name}: error code {code}")
        have = [t for t in partitions if t in existing]
        if have:
            meta = await admin.describe_topics(have)
            for m in meta:
                n = len(m["partitions"])
                if n != partitions[m["topic"]]:
                    raise ServiceError(
                        f"topic {m['topic']} has {n} partitions, expected {partitions[m['topic']]}; "
                        "delete it or change SHOPSTREAM_PARTITIONS"
                    )
        return [t.name for t in new]
    finally:
        await admin.close()


def main_check_python() -> None:
    """Exit with a clear message on an unsupported interpreter."""
    if sys.version_info[:2] != (3, 11):
        raise ServiceError(f"shopstream needs Python 3.11, this is {sys.version.split()[0]}")
