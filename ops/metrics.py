"""Prometheus metrics of one worker, named by Prometheus conventions.

Each app gets its own :class:`prometheus_client.CollectorRegistry`, so several
apps in one process (tests) do not collide.

Examples
--------
>>> m = Metrics()
>>> m.dlq.labels(topic="shop.clicks.v1", reason="malformed_json").inc()
>>> b"shopstream_dlq_events_total" in m.render()
True
>>> import sys
>>> sys.platform != "linux" or b"shopstream_process_cpu_seconds_total" in m.render()
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The worker's metric families."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "shopstream_events_in", "Input messages received, by topic.", ["topic"], registry=r
        )
        self.events_out = Counter(
            "shopstream_events_out", "Output messages sent, by topic.", ["topic"], registry=r
        )
        self.produce_errors = Counter(
            "shopstream_produce_errors", "Output messages whose delivery to Kafka failed.", registry=r
        )
        self.dlq = Counter(
            "shopstream_dlq_events",
            "Messages sent to a dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.processing = Histogram(
            "shopstream_processing_seconds",
            "Time to process one input message, by agent.",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.producer_linger = Gauge(
            "shopstream_producer_linger_seconds",
            "How long new producer batches wait to fill (longer while the clickstream agent is behind).",
            registry=r,
        )
        self.producer_linger_switches = Counter(
            "shopstream_producer_linger_switches",
            "Switches of the producer linger between its normal and its while-behind value.",
            registry=r,
        )
        self.redis_seconds = Histogram(
            "shopstream_redis_seconds",
            "Redis round-trip time, by operation.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "shopstream_redis_errors", "Failed Redis operations, by operation.", ["op"], registry=r
        )
        self.redis_up = Gauge("shopstream_redis_up", "1 when the feature store answers.", registry=r)
        self.lake_rows = Counter(
            "shopstream_lake_rows", "Rows written to the Parquet event lake, by topic.", ["topic"], registry=r
        )
        self.lake_files = Counter(
            "shopstream_lake_files", "Parquet files committed to the event lake.", registry=r
        )

        self.model_seconds = Histogram(
            "shopstream_model_seconds",
            "Time of one batched model call (onnxruntime), by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recs_batch_size = Histogram(
            "shopstream_recs_batch_size",
            "Lists computed together (one Redis round trip and one model call, when the trained"
            " model serves them), by path: topic micro-batches and coalesced HTTP requests.",
            ["path"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.model_version = Gauge(
            "shopstream_model_version", "Registry version of the model being served.", ["model"], registry=r
        )
        self.model_load_errors = Counter(
            "shopstream_model_load_errors",
            "Model versions refused (bad sha256, unreadable file), by model.",
            ["model"],
            registry=r,
        )
        self.recs_served = Counter(
            "shopstream_recommendations",
            "Recommendation lists served, by path (topic, http) and source (model tag or online).",
            ["path", "source"],
            registry=r,
        )

        self.consumer_lag = Gauge(
            "shopstream_consumer_lag",
            "Consumer-group lag in messages (end offset - committed offset).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            "shopstream_consumer_lag_seconds",
            "Estimated consumer-group lag in seconds (age of the oldest unconsumed message).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.consumer_group_status = Gauge(
            "shopstream_consumer_group_status",
            "1 for the group's current status (OK, WARNING, STALL, STOP, REWIND, ERROR), else 0.",
            ["group", "status"],
            registry=r,
        )
        self.lag_sample_seconds = Histogram(
            "shopstream_lag_monitor_sample_seconds",
            "Time of one lag-monitor sample (admin and list-offsets requests).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_quality = Gauge(
            "shopstream_model_quality",
            "Online model quality, prequential (test-then-train), by model and metric.",
            ["model", "metric"],
            registry=r,
        )
        self.alerts = Counter(
            "shopstream_alerts",
            "Alerts sent to the ops-alerts topic, by kind and status.",
            ["kind", "status"],
            registry=r,
        )

        self.bids = Counter(
            "shopstream_bids",
            "Bid decisions, by path (topic, http) and outcome (bid, or no-bid with its reason).",
            ["path", "outcome"],
            registry=r,
        )
        self.bid_seconds = Histogram(
            "shopstream_bid_seconds",
            "Time from a bid request's arrival to its response, by path.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bid_notices = Counter(
            "shopstream_bid_notices",
            "Win, billing and loss notices, by kind and result (charged, duplicate, unknown, ...).",
            ["kind", "result"],
            registry=r,
        )
        self.campaign_spend = Gauge(
            "shopstream_campaign_spend",
            "Today's spend of a campaign, in its currency.",
            ["campaign"],
            registry=r,
        )
        self.campaign_pacing = Gauge(
            "shopstream_campaign_pacing_multiplier",
            "The pacing controller's bid multiplier per campaign (1 = on plan).",
            ["campaign"],
            registry=r,
        )

        self.loop_lag = Histogram(
            "shopstream_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer due every 10 ms: time in which nothing"
            " else on the loop (requests, messages) could run.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.gc_pause = Histogram(
            "shopstream_gc_pause_seconds",
            "Duration of the Python garbage collector's collections, by generation (each one stops"
            " the event loop).",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=r,
        )

        # The process's own CPU seconds, resident memory and open file descriptors (read from
        # /proc at each scrape; nothing on Linux-less hosts), so a dashboard shows what a worker
        # costs beside what it does: CPU per event is the number to size a deployment by.
        ProcessCollector(namespace="shopstream", registry=r)

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
