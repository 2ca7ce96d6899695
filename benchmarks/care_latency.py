"""Customer-care latency: support message → routing decision, at 200 messages/s.

    python -m benchmarks.care_latency [--quick] [--rate 200]

Starts its own Kafka and Redis on free ports and ONE worker, teaches its
online intent model with agent-labelled messages of the synthetic shop, then
offers unlabelled messages (English and Chinese, some out of scope) at the
target rate from a separate process and measures the time from each send to
its routing decision consumed from ``care.routing.v1``. The baseline is a
bare aiokafka echo process (consume, produce back) between the same producer
and consumer, in the same run.

Target (issue 7): p99 <= 50 ms at 200 messages/s.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import parse_args, percentiles, target, write_results
from benchmarks.stack import (
    collect_answers,
    echo,
    echo_process,
    finish_load,
    local_stack,
    producer_and_tail,
    run_module,
)
from shopstream.procs import WorkerProcess
from shopstream.replay import produce
from shopstream.sim import OUT_OF_SCOPE_TEXT, SUPPORT_TEXT
from streams.app import ensure_topics

NAME = "care_latency"
FULL = {"seconds": 30.0, "labelled": 2000}
QUICK = {"seconds": 8.0, "labelled": 600}


def log(msg: str) -> None:
    print(f"[care_latency {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def messages(n: int, seed: int, labelled: bool) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        if rng.random() < 0.1:
            intent, text = "out_of_scope", rng.choice(OUT_OF_SCOPE_TEXT)
        else:
            intent, text = rng.choice(SUPPORT_TEXT)
        doc = {
            "type": "support_message",
            "event_id": f"e{seed}-{k}",
            "ts": time.time(),
            "message_id": f"m{seed}-{k}",
            "user_id": f"user-{rng.randrange(2000):05d}",
            "channel": "chat",
            "text": text.format(o=f"o-{rng.randrange(10**6)}"),
        }
        if labelled:
            doc["intent"] = intent
        out.append(doc)
    return out


async def _load(
    bootstrap: str, out_topic: str, in_topic: str, parts: int, docs: list[dict], rate: float
) -> dict:
    producer, consumer = await producer_and_tail(bootstrap, in_topic, parts)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    task = collect_answers(consumer, got, lambda m, now: (json.loads(m.value).get("message_id"), now))
    t0 = time.perf_counter()
    for n, doc in enumerate(docs):
        delay = t0 + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[doc["message_id"]] = time.perf_counter()
        await producer.send(out_topic, value=json.dumps(doc).encode(), key=doc["user_id"].encode())
    span = time.perf_counter() - t0
    await finish_load(got, len(sent), task, producer, consumer)
    lat = [1e3 * (got[k] - t) for k, t in sent.items() if k in got]
    return {"latencies_ms": lat, "sent": len(sent), "answered": len(lat), "achieved_rate": len(sent) / span}


def _loadgen(*args: str) -> dict[str, Any]:
    return run_module("benchmarks.care_latency", *args)


def run(cfg: dict[str, float], rate: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with local_stack(NAME, log) as stack:
        s = stack.settings
        asyncio.run(ensure_topics(s))
        p = s.topic_prefix
        care_in, care_out = p + "care.messages.v1", p + "care.routing.v1"
        worker = WorkerProcess(s, "bench", stack.home / "worker.log").start()
        try:
            worker.wait_ready(timeout=90, topic=care_in)
            n_lab = int(cfg["labelled"])
            log(f"teaching the online intent model {n_lab:,} agent-labelled messages")
            lab = [
                ("care.messages.v1", d["user_id"].encode(), json.dumps(d).encode())
                for d in messages(n_lab, 1, True)
            ]
            asyncio.run(produce(s, lab, rate=5000, progress=False))
            end = time.monotonic() + 120
            status: dict[str, Any] = {}
            while time.monotonic() < end:
                with urllib.request.urlopen(worker.url + "/care", timeout=5) as r:
                    status = json.loads(r.read())["intent"]
                if status["labels"] >= n_lab:
                    break
                time.sleep(0.5)
            out["intent_after_teaching"] = status
            n = int(rate * cfg["seconds"])
            docs = stack.home / "messages.json"
            docs.write_text(json.dumps(messages(n, 2, labelled=False)))
            echo_in, echo_out = p + "echo.in", p + "echo.out"
            from shopstream.services import create_topics

            asyncio.run(create_topics(s.kafka_bootstrap, {echo_in: s.partitions, echo_out: s.partitions}))
            with echo_process("benchmarks.care_latency", s.kafka_bootstrap, echo_in, echo_out, stack.home):
                log(f"baseline (aiokafka echo): {rate:.0f}/s for {cfg['seconds']:.0f}s")
                base = _loadgen(
                    "--load", s.kafka_bootstrap, echo_in, echo_out, str(s.partitions), str(docs), str(rate)
                )
            lat = base.pop("latencies_ms")
            out["baseline"] = {**base, "latency_ms": percentiles(lat, (50, 90, 99))}
            log(f"  {out['baseline']['latency_ms']}")
            log(f"care: {rate:.0f}/s for {cfg['seconds']:.0f}s")
            care = _loadgen(
                "--load", s.kafka_bootstrap, care_in, care_out, str(s.partitions), str(docs), str(rate)
            )
            lat = care.pop("latencies_ms")
            out["care"] = {**care, "latency_ms": percentiles(lat, (50, 90, 99))}
            log(f"  {out['care']['latency_ms']}, {out['care']['answered']}/{out['care']['sent']} routed")
            out["worker_alive"] = worker.alive()
        finally:
            worker.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("--load", "--echo"):
        import uvloop

        a = sys.argv[2:]
        if sys.argv[1] == "--echo":
            uvloop.run(echo(a[0], a[1], a[2], Path(a[3]), "message_id"))
            return 0
        docs = json.loads(Path(a[4]).read_text())
        print(json.dumps(uvloop.run(_load(a[0], a[1], a[2], int(a[3]), docs, float(a[5])))))
        return 0

    def extra(p: Any) -> None:
        p.add_argument("--rate", type=float, default=200.0, help="messages per second (default 200)")

    args = parse_args(NAME, (__doc__ or NAME).splitlines()[0], extra=extra, argv=argv)
    cfg = QUICK if args.quick else FULL
    t0 = time.monotonic()
    res = run(cfg, args.rate)
    care, base = res["care"], res["baseline"]
    metrics = {
        "p50_ms": care["latency_ms"]["p50"],
        "p99_ms": care["latency_ms"]["p99"],
        "p99_over_baseline": round(care["latency_ms"]["p99"] / base["latency_ms"]["p99"], 2),
        "achieved_rate": round(care["achieved_rate"], 1),
        "unrouted": care["sent"] - care["answered"],
        "intent_recent_accuracy": res["intent_after_teaching"]["recent_accuracy"],
        "seconds": round(time.monotonic() - t0, 1),
        "runs": res,
    }
    baselines = {
        "aiokafka_echo_p50_ms": base["latency_ms"]["p50"],
        "aiokafka_echo_p99_ms": base["latency_ms"]["p99"],
    }
    targets = {
        "p99_ms": target(metrics["p99_ms"], 50.0, "<="),
        "unrouted": target(metrics["unrouted"], 0, "<="),
    }
    write_results(NAME, args.quick, {"rate": args.rate, **cfg}, metrics, baselines, targets, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
