"""The one settings object, read from ``SHOPSTREAM_*`` environment variables.

This is the only module that reads the environment (house rule 3). Every
default port and path lives here and nowhere else.

Examples
--------
>>> s = Settings.from_env({"SHOPSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092"})
>>> s.kafka_bootstrap
'127.0.0.1:19092'
>>> s.kafka_url
'kafka://127.0.0.1:19092'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIX = "SHOPSTREAM_"
DEFAULT_APP_ID = "shopstream"


#: Agent groups a worker can run (``SHOPSTREAM_AGENTS``), with the input topics they read:
#: ``recs`` clicks and orders (recommendations), ``inventory`` orders, inventory and demand,
#: ``bidding`` bid requests and ad events, ``care_crm`` orders, reviews and support messages.
AGENT_GROUPS = ("recs", "inventory", "bidding", "care_crm")
#: The groups that read orders, in the order in which one of them is chosen to dead-letter them.
ORDERS_READERS = ("recs", "inventory", "care_crm")


class SettingsError(ValueError):
    """A ``SHOPSTREAM_*`` variable could not be parsed."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Frozen configuration of one shopstream process.

    Each field ``name`` is read from ``SHOPSTREAM_<NAME>``.
    """

    #: Kafka bootstrap servers, ``host:port[,host:port]``.
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: KRaft controller port of the local broker started by ``shopstream services``.
    kafka_controller_port: int = 9093
    #: Where ``shopstream services`` keeps the local broker's and Redis's files.
    services_dir: Path = Path(".var/services")
    #: Redis URL for the feature store.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Faust application id; also the consumer-group id.
    app_id: str = DEFAULT_APP_ID
    #: Prefix of every topic name (tests use a unique one per run).
    topic_prefix: str = ""
    #: Partitions of the input topics and of the tables co-partitioned with them.
    partitions: int = 4
    #: Replication factor of created topics (1 for a single broker).
    replication: int = 1
    #: Prefix of every Redis key this process writes.
    redis_prefix: str = "ss:"
    #: TTL of user and item feature hashes, seconds.
    feature_ttl_s: int = 7 * 24 * 3600
    #: Largest event accepted, bytes; larger ones go to the dead-letter topic.
    max_event_bytes: int = 64 * 1024
    #: Length of a recommendation list.
    recs_k: int = 10
    #: Items kept per user in the recent-items table.
    recent_items: int = 20
    #: Faust web server port of this worker.
    web_port: int = 6066
    #: Faust web server bind address.
    web_host: str = "127.0.0.1"
    #: Directory for Faust's data (table stores).
    data_dir: Path = Path(".var/worker")
    #: Whether this worker archives the input topics to the lake (run the
    #: archive in some workers only by setting it false in the others).
    archive: bool = True
    #: The agent groups this worker runs: ``all``, or a comma list of
    #: :data:`AGENT_GROUPS`. Workers that run different groups are different
    #: applications: give each set its own ``app_id`` (README, Scaling out).
    agents: str = "all"
    #: Whether this application dead-letters orders that fail their schema. Where several
    #: applications read the orders topic (worker pools), set it false in all but one.
    dead_letter_orders: bool = True
    #: Root of the Parquet event lake.
    lake_dir: Path = Path(".var/lake")
    #: Roll a lake file after this many rows...
    lake_max_rows: int = 50_000
    #: ... or after this many seconds.
    lake_max_age_s: float = 60.0
    #: Kafka consumer-group session timeout and heartbeat, seconds.
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    #: Producer linger, seconds: batches outputs into fewer requests
    #: (benchmarks/pipeline.py: 5 ms gave +16% throughput at a p99 of ~33 ms).
    producer_linger_s: float = 0.005
    #: Producer linger while the clickstream agent is behind (256 or more records wait behind an
    #: event in its partition; back to ``producer_linger_s`` after 64 events in a row with 32 or
    #: fewer), seconds (streams/linger.py).
    #: Fewer, fuller produce requests when latency is already queueing; equal to
    #: ``producer_linger_s`` to turn it off (shorter is refused).
    producer_linger_behind_s: float = 0.02
    #: Longest a fetch of the Faust consumer (every agent's input) waits on the broker, ms
    #: (1-1500). faust-streaming builds its aiokafka consumer with 1,500 ms. aiokafka keeps one
    #: fetch in flight per broker and leaves out of it partitions whose records are not yet
    #: consumed, so a busy partition can be left waiting on a long poll over quiet ones.
    consumer_fetch_wait_ms: int = 100
    #: BLAS threads of the worker (numpy's OpenBLAS). A worker is sized to one core, as its
    #: onnxruntime sessions are: OpenBLAS's default of one thread per core put half of each
    #: retrieval product of the recommender on another core (the broker's, on a small machine).
    blas_threads: int = 1
    #: A worker whose table recovery makes no progress for this long exits and is
    #: restarted by its supervisor (works around a faust-streaming recovery hang).
    recovery_stall_s: float = 60.0
    #: Model registry root (versioned ONNX files, metadata, sha256).
    model_dir: Path = Path(".var/models")
    #: Registry name of the recommendation model the workers serve.
    recs_model: str = "recs"
    #: How often workers check the registry's production alias, seconds.
    model_poll_s: float = 1.0
    #: Business boosts, ``category:<name>=<factor>,item:<id>=<factor>``.
    recs_boosts: str = ""
    #: At most this many items of one category in a list (relaxed if it cannot be filled).
    recs_max_per_category: int = 3
    #: Redis timeout of the recommendation read, seconds; slower answers fall back to the online model.
    recs_redis_timeout_s: float = 0.05
    #: After 3 failed recommendation reads with no success between them, Redis is left alone this
    #: long, seconds (lists come from the online model meanwhile); one failure costs only its batch.
    recs_redis_retry_after_s: float = 1.0
    #: Topic path: lists are computed in micro-batches of at most this many events
    #: (benchmarks/recs_latency.py at 1,000 events/s: 32 gave p50 19 ms, 16 gave 16-21 ms, 8 16 ms;
    #: 4 could not keep up: each batch has a fixed cost; then the agent still waited for each batch's
    #: Redis round trip, and two batches may now be in flight)...
    recs_batch_max: int = 16
    #: ... or after the oldest has waited this long, seconds.
    recs_batch_wait_s: float = 0.002
    #: Request/response: lists asked for while a batch is computing share the next one, at most
    #: this many (serving.recs.RequestCoalescer); 1 computes every request alone.
    recs_http_batch_max: int = 16
    #: Run the consumer-lag monitor (and the dashboard's time series) in this worker.
    lag_monitor: bool = True
    #: Consumer groups to watch besides the app's own (comma-separated).
    lag_groups: str = ""
    #: Lag sampling interval, seconds.
    lag_interval_s: float = 2.0
    #: A group with lag and no commit for this long (and longer than its commit window) is STOP.
    lag_stop_after_s: float = 30.0
    #: Alert when a group's lag exceeds this many seconds (clears below two thirds of it).
    alert_lag_s: float = 30.0
    #: Alert when dead letters arrive faster than this, per second (clears below half of it).
    alert_dlq_per_s: float = 1.0
    #: Demand windows (tumbling), seconds; daily by default.
    demand_window_s: float = 86_400.0
    #: Events up to this much older than the newest one still land in their window, seconds.
    demand_lateness_s: float = 2 * 86_400.0
    #: Replenishment lead time, in demand windows.
    lead_time_windows: int = 3
    #: Target service level (probability of no stock-out over the lead time).
    service_level: float = 0.95
    #: Campaign file (JSON) of the bidder; empty: no campaigns, every bid request gets a no-bid.
    #: The file is re-read when it changes (checked every ``campaigns_poll_s``).
    campaigns: str = ""
    campaigns_poll_s: float = 1.0
    #: Base URL the bidder's win/billing/loss notice URLs point at; empty: this worker's web server.
    bid_notice_url: str = ""
    #: ``tmax`` assumed for requests that give none, and the part of it kept for the network, ms.
    bid_default_tmax_ms: int = 100
    bid_safety_ms: float = 5.0
    #: Longest a bid-request fetch waits on the broker while requests flow, ms. aiokafka keeps one
    #: fetch in flight per broker, so a request for a partition just drained waits until that fetch
    #: returns: this bounds the topic path's tail latency (idle, the limit is 20 ms).
    bid_fetch_wait_ms: int = 2
    #: First-price auctions: bid this share of the value.
    bid_shade: float = 0.8
    #: Pacing: the daily budget is spread evenly over this many seconds from the start of the UTC day.
    bid_plan_s: float = 86_400.0
    #: The bidder caches user profiles (CRM segment) this long, seconds.
    bid_profile_ttl_s: float = 5.0
    #: Registry name of the deep CTR model (served when registered).
    ctr_model: str = "ctr"
    #: Attribution window of the CTR label join: an impression with no click within it is a negative.
    attribution_window_s: float = 1_800.0
    #: A bid reservation with no win, billing or loss notice is released after this long, seconds.
    bid_reservation_ttl_s: float = 300.0
    #: Registry names of the offline text models (ONNX; served when registered).
    intent_model: str = "intent"
    sentiment_model: str = "sentiment"
    #: FAQ knowledge base of the care router (JSON); empty: the one in infra/care/faq.json.
    care_faq: str = ""
    #: Each partition's customers are re-scored (churn risk) once per this much event time, seconds.
    crm_sweep_s: float = 86_400.0
    #: Offsets commit interval, seconds.
    commit_interval_s: float = 1.0
    #: Worker log level.
    log_level: str = "WARNING"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) plus overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = PREFIX + f.name.upper()
            if key in env:
                values[f.name] = _parse(key, env[key], f.default)
        values.update(overrides)
        return cls(**values)

    def agent_groups(self) -> frozenset[str]:
        """The agent groups named by ``agents``, checked.

        A worker that runs some groups only is refused the default ``app_id``: workers
        with different subscriptions in one consumer group would be assigned
        partitions that they do not read.

        >>> sorted(Settings(agents="recs, bidding", app_id="shop-recs").agent_groups())
        ['bidding', 'recs']
        >>> Settings().agent_groups() == frozenset(AGENT_GROUPS)
        True
        >>> Settings(agents="recs,ads", app_id="shop-recs")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        shopstream.settings.SettingsError: SHOPSTREAM_AGENTS='recs,ads': unknown group 'ads'; expected ...
        """
        names = [n.strip() for n in self.agents.split(",") if n.strip()]
        if names == ["all"]:
            return frozenset(AGENT_GROUPS)
        expected = f"expected all, or a comma list of {', '.join(AGENT_GROUPS)}"
        for n in names:
            if n not in AGENT_GROUPS:
                why = "all stands alone" if n == "all" else f"unknown group {n!r}"
                raise SettingsError(f"{PREFIX}AGENTS={self.agents!r}: {why}; {expected}")
        if not names:
            raise SettingsError(f"{PREFIX}AGENTS={self.agents!r}: {expected}")
        if self.app_id == DEFAULT_APP_ID:
            raise SettingsError(
                f"{PREFIX}AGENTS={self.agents!r} needs its own {PREFIX}APP_ID (not the default "
                f"{DEFAULT_APP_ID!r}): workers that run different agent groups are different applications"
            )
        return frozenset(names)

    def __post_init__(self) -> None:
        self.agent_groups()  # refuse a bad SHOPSTREAM_AGENTS where the settings are read

    @property
    def kafka_url(self) -> str:
        """The broker list as a Faust URL."""
        return ",".join(f"kafka://{b.strip()}" for b in self.kafka_bootstrap.split(","))

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """These settings as ``SHOPSTREAM_*`` variables, for child processes."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _parse(key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{key}={raw!r}: {exc}") from None
