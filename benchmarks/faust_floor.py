"""The framework's own ceiling: one faust-streaming worker whose agent does next to nothing.

``benchmarks/pipeline.py`` runs it after its worker has stopped, on the clicks that worker
processed, as its second baseline. The worker's rate can then be read against what
faust-streaming itself sustains on the same machine, in a process set up the same way: the
same App settings (:func:`streams.app.faust_app`, with the coalescing tables' producer
flush) and the same worker start (:func:`streams.app.run_faust`: uvloop, bounded fetch
wait, no spinner, frozen GC). Two modes:

* ``consume``: the agent iterates over the events (Faust acks each) and does nothing else;
* ``forward``: the agent also hands each event's key and value to the producer, one output
  per input, as the recommendation agent hands over its list.

The agent reads the clicks topic in a consumer group of its own, from the offsets committed
for that group (``pipeline.py`` commits its throughput phase's start), else from the start. At its
``--events``-th event it writes a JSON result: the events, the seconds from its first to
that event, and the process's CPU seconds over the same span (every thread). The caller
then stops it. With ``--events 0`` it times nothing and forwards until stopped (the
pipeline benchmark measures the forwarded copies' latency itself).

Run (settings come from ``SHOPSTREAM_*`` environment variables, as a worker's do)::

    python -m benchmarks.faust_floor --mode consume|forward --events N --result PATH [--sink TOPIC]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faust

from schemas.topics import Topics
from serving.registry import atomic_write
from shopstream.settings import Settings
from streams.app import faust_app, run_faust

MODES = ("consume", "forward")


def floor_app(settings: Settings, mode: str, events: int, result: Path, sink: str | None) -> faust.App:
    """A worker's App whose one agent reads the clicks topic and consumes or forwards each event."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "forward" and not sink:
        raise ValueError("mode 'forward' needs a sink topic")
    if events < 2 and events != 0:
        raise ValueError(f"events={events}: expected 0 (time nothing) or at least 2")
    app = faust_app(settings)
    topic = app.topic(
        Topics(settings.topic_prefix).clicks, partitions=settings.partitions, value_serializer="raw"
    )
    forward = mode == "forward"
    out = sink or ""

    @app.agent(topic, name="floor")
    async def floor(stream: faust.StreamT) -> None:
        send = app.producer.send
        n = 0
        t0 = c0 = 0.0
        async for event in stream.events():
            if forward:
                message = event.message
                await send(out, message.key, message.value, None, None, None)
            n += 1
            if n == 1:
                t0, c0 = time.perf_counter(), time.process_time()
            elif n == events:
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                doc = {
                    "mode": mode,
                    "events": n,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    # n - 1 events came after the clock started at the first one
                    "events_per_s": (n - 1) / wall,
                    "cpu_us_per_event": 1e6 * cpu / (n - 1),
                    "producer_linger_s": settings.producer_linger_s,
                }
                atomic_write(result, json.dumps(doc).encode())

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "faust floor")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--events", type=int, required=True, help="events to time, from the first (0: none)")
    p.add_argument("--result", type=Path, required=True, help="where the JSON result goes")
    p.add_argument("--sink", default=None, help="topic the forward mode produces to")
    args = p.parse_args(argv)
    settings = Settings.from_env(None)
    run_faust(settings, lambda s: floor_app(s, args.mode, args.events, args.result, args.sink))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
