"""Which JSON codec for shopstream's events: stdlib json vs orjson vs msgspec.

Run ``python -m benchmarks.codec [--quick] [--out PATH]``.

Input is a deterministic mix of clickstream events (``shop.clicks.v1``: views, clicks,
cart adds/removes, searches) and orders (``shop.orders.v1``, 1-5 lines each), serialised as
compact JSON bytes the way a producer would send them. Per message, each decoder is timed
over the whole set, several rounds, variants interleaved within a round; the reported
figure is the median over rounds. Clicks and orders are timed as separate loops (no
per-message dispatch in the timed code) and combined as total time / total messages.

Decode variants:

- ``json_stdlib``: ``json.loads`` parse only (the baseline);
- ``orjson``: ``orjson.loads`` parse only;
- ``orjson_validate``: ``orjson.loads`` then ``msgspec.convert(obj, T)`` into the same typed,
  constrained records as ``schemas.events`` ("orjson + separate validation"); for the click
  union, ``T`` is looked up from the ``type`` tag in Python (the fast way; the target uses it);
- ``orjson_validate_union``: the same, converting straight into the ``ClickEvent`` union
  (orders as above); much slower because ``msgspec.convert`` re-plans a bare Union per call;
- ``msgspec_typed``: ``CLICK_CODEC.decode`` / ``ORDER_CODEC.decode`` (parse + validate in one
  pass; includes the codec's empty/size checks and error wrapper, which the orjson path skips);
- ``msgspec_typed_raw``: the bare ``msgspec.json.Decoder(T).decode`` (shows the wrapper's cost);
- ``msgspec_untyped``: ``msgspec.json.decode`` parse only.

Encode variants (``schemas.events.Recommendation`` records with 10 items):
``json_stdlib`` (``json.dumps(msgspec.to_builtins(rec)).encode()``, the baseline),
``orjson`` (``orjson.dumps(msgspec.to_builtins(rec))``), ``msgspec``
(``msgspec.json.encode(rec)``) and ``msgspec_encoder`` (``schemas.codec.encode``, the shared
``Encoder`` instance the services use).

Ratios ``*_vs_stdlib`` are speedups: stdlib ns/msg divided by the variant's ns/msg.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

import msgspec
import numpy as np

from benchmarks.common import parse_args, target, write_results
from schemas.codec import encode as shared_encode
from schemas.events import (
    CLICK_CODEC,
    ORDER_CODEC,
    ClickEvent,
    Order,
    RecItem,
    Recommendation,
)

try:
    import orjson
except ImportError as exc:  # pragma: no cover - orjson is a dev extra
    raise SystemExit("benchmarks.codec needs orjson: pip install -e '.[dev]'") from exc

NAME = "codec"
SEED = 20240611

FULL = {"messages": 40_000, "recommendations": 10_000, "rounds": 25, "budget_s": 90.0}
QUICK = {"messages": 5_000, "recommendations": 1_500, "rounds": 7, "budget_s": 15.0}
MIN_ROUNDS = 3
WARMUP_ROUNDS = 1
ORDER_FRACTION = 0.08
ITEMS_PER_RECOMMENDATION = 10

# Share of each clickstream event type (sums to 1).
CLICK_MIX = {"view": 0.60, "click": 0.20, "add_to_cart": 0.08, "remove_from_cart": 0.02, "search": 0.10}
CATEGORIES = [
    "shoes",
    "shirts",
    "trousers",
    "jackets",
    "accessories",
    "electronics",
    "phones",
    "laptops",
    "kitchen",
    "garden",
    "toys",
    "books",
    "beauty",
    "sports",
    "grocery",
]
QUERIES = [
    "running shoes",
    "wireless headphones",
    "usb-c charger 65w",
    "rain jacket men",
    "coffee grinder",
    "kids lego",
    "yoga mat",
    "4k monitor 27 inch",
    "garden hose",
    "summer dress",
]
REFERRERS = ["home", "search", "category", "recs", "email", "ads"]
REASONS = ["co_visit", "similar_item", "trending_in_category", "bought_together", "personal_mf"]


# --- data ----------------------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def make_messages(
    n: int, seed: int = SEED, order_fraction: float = ORDER_FRACTION
) -> tuple[list[bytes], list[bytes]]:
    """Return ``(clicks, orders)``: ``n`` JSON messages in all, about ``order_fraction`` of them orders.

    Deterministic for a given seed. Optional fields are present with realistic frequencies;
    ~15% of clicks carry an unknown ``referrer`` field (allowed: unknown fields are ignored).
    """
    rng = random.Random(seed)
    n_orders = round(n * order_fraction)
    n_clicks = n - n_orders
    types = list(CLICK_MIX)
    weights = list(CLICK_MIX.values())
    ts0 = 1_718_000_000.0
    clicks: list[bytes] = []
    for i in range(n_clicks):
        kind = rng.choices(types, weights)[0]
        ev: dict[str, Any] = {
            "type": kind,
            "event_id": f"evt-{seed:x}-{i:08d}",
            "ts": round(ts0 + i * 0.013 + rng.random(), 6),
            "user_id": f"u{rng.randrange(1, 2_000_000)}",
        }
        if rng.random() < 0.9:
            ev["session_id"] = f"s-{rng.getrandbits(64):016x}"
        if kind == "search":
            ev["query"] = rng.choice(QUERIES)
            if rng.random() < 0.3:
                ev["category"] = rng.choice(CATEGORIES)
        else:
            ev["item_id"] = f"sku-{rng.randrange(1, 500_000):07d}"
            if rng.random() < 0.85:
                ev["category"] = rng.choice(CATEGORIES)
            if rng.random() < 0.7:
                ev["price"] = round(rng.lognormvariate(3.2, 1.0), 2)
            if kind in ("add_to_cart", "remove_from_cart") and rng.random() < 0.5:
                ev["qty"] = rng.randint(1, 4)
        if rng.random() < 0.15:
            ev["referrer"] = rng.choice(REFERRERS)
        clicks.append(_dumps(ev))
    orders: list[bytes] = []
    for i in range(n_orders):
        lines = [
            {
                "sku": f"sku-{rng.randrange(1, 500_000):07d}",
                "qty": rng.choice((1, 1, 1, 1, 2, 2, 3, 5)),
                "unit_price": round(rng.lognormvariate(3.0, 1.0), 2),
                "currency": "EUR",
                **({"category": rng.choice(CATEGORIES)} if rng.random() < 0.8 else {}),
            }
            for _ in range(rng.randint(1, 5))
        ]
        order: dict[str, Any] = {
            "type": "order",
            "event_id": f"ord-evt-{seed:x}-{i:08d}",
            "ts": round(ts0 + i * 0.16 + rng.random(), 6),
            "order_id": f"o-{rng.getrandbits(48):012x}",
            "user_id": f"u{rng.randrange(1, 2_000_000)}",
            "lines": lines,
        }
        r = rng.random()
        if r < 0.04:
            order["status"] = "returned"
        elif r < 0.07:
            order["status"] = "cancelled"
        elif r < 0.5:
            order["status"] = "placed"
        if rng.random() < 0.6:
            order["warehouse"] = rng.choice(("main", "berlin-1", "lyon-2", "madrid-1"))
        orders.append(_dumps(order))
    return clicks, orders


def make_recommendations(n: int, seed: int = SEED) -> list[Recommendation]:
    """``n`` deterministic :class:`Recommendation` records of ``ITEMS_PER_RECOMMENDATION`` items."""
    rng = random.Random(seed + 1)
    out = []
    for i in range(n):
        items = [
            RecItem(
                item_id=f"sku-{rng.randrange(1, 500_000):07d}",
                score=rng.random(),
                reason=rng.choice(REASONS),
            )
            for _ in range(ITEMS_PER_RECOMMENDATION)
        ]
        ts = 1_718_000_000.0 + i * 0.05 + rng.random()
        out.append(
            Recommendation(
                event_id=f"evt-{seed:x}-{i:08d}",
                user_id=f"u{rng.randrange(1, 2_000_000)}",
                items=items,
                model="hybrid-mf-v3",
                source_ts=ts,
                generated_at=ts + rng.uniform(0.002, 0.040),
            )
        )
    return out


def _by_tag(union: Any) -> dict[str, Any]:
    """Map each member's ``type`` tag to its Struct class, for a tagged union of Structs."""
    return {t.__struct_config__.tag: t for t in get_args(union)}


CLICK_TYPES = _by_tag(ClickEvent)

# --- variants ------------------------------------------------------------------------------------------

Loop = Callable[[list[bytes]], None]


def _loop_json(msgs: list[bytes]) -> None:
    loads = json.loads
    for m in msgs:
        loads(m)


def _loop_orjson(msgs: list[bytes]) -> None:
    loads = orjson.loads
    for m in msgs:
        loads(m)


def _loop_orjson_validate(type_: Any) -> Loop:
    """``convert(orjson.loads(m), type_)``; for a tagged union, dispatch on ``type`` in Python first.

    ``msgspec.convert`` caches its type plan on Struct classes but rebuilds it on every call
    for a bare ``Union``, so converting straight into ``ClickEvent`` costs ~3 us per message;
    looking the Struct up by its tag is what a careful orjson-based decoder would do.
    """
    if get_origin(type_) is Union:
        by_tag = _by_tag(type_)

        def run(msgs: list[bytes]) -> None:
            loads, convert, types = orjson.loads, msgspec.convert, by_tag
            for m in msgs:
                obj = loads(m)
                convert(obj, types[obj["type"]])

        return run
    return _loop_orjson_validate_direct(type_)


def _loop_orjson_validate_direct(type_: Any) -> Loop:
    def run(msgs: list[bytes]) -> None:
        loads, convert, t = orjson.loads, msgspec.convert, type_
        for m in msgs:
            convert(loads(m), t)

    return run


def _loop_decode(decode: Callable[[bytes], Any]) -> Loop:
    def run(msgs: list[bytes]) -> None:
        d = decode
        for m in msgs:
            d(m)

    return run


def _loop_msgspec_untyped(msgs: list[bytes]) -> None:
    decode = msgspec.json.decode
    for m in msgs:
        decode(m)


# name -> (loop over clicks, loop over orders)
DECODERS: dict[str, tuple[Loop, Loop]] = {
    "json_stdlib": (_loop_json, _loop_json),
    "orjson": (_loop_orjson, _loop_orjson),
    "orjson_validate": (_loop_orjson_validate(ClickEvent), _loop_orjson_validate(Order)),
    "orjson_validate_union": (_loop_orjson_validate_direct(ClickEvent), _loop_orjson_validate(Order)),
    "msgspec_typed": (_loop_decode(CLICK_CODEC.decode), _loop_decode(ORDER_CODEC.decode)),
    "msgspec_typed_raw": (
        _loop_decode(msgspec.json.Decoder(ClickEvent).decode),
        _loop_decode(msgspec.json.Decoder(Order).decode),
    ),
    "msgspec_untyped": (_loop_msgspec_untyped, _loop_msgspec_untyped),
}

RecLoop = Callable[[list[Recommendation]], None]


def _enc_json(recs: list[Recommendation]) -> None:
    dumps, to_builtins = json.dumps, msgspec.to_builtins
    for r in recs:
        dumps(to_builtins(r), separators=(",", ":")).encode()


def _enc_orjson(recs: list[Recommendation]) -> None:
    dumps, to_builtins = orjson.dumps, msgspec.to_builtins
    for r in recs:
        dumps(to_builtins(r))


def _enc_msgspec(recs: list[Recommendation]) -> None:
    enc = msgspec.json.encode
    for r in recs:
        enc(r)


def _enc_shared(recs: list[Recommendation]) -> None:
    enc = shared_encode
    for r in recs:
        enc(r)


ENCODERS: dict[str, RecLoop] = {
    "json_stdlib": _enc_json,
    "orjson": _enc_orjson,
    "msgspec": _enc_msgspec,
    "msgspec_encoder": _enc_shared,
}


def check_equivalence(clicks: list[bytes], orders: list[bytes], recs: list[Recommendation]) -> None:
    """Fail loudly unless every variant decodes/encodes the same data to the same result."""
    for msgs, codec, type_ in ((clicks, CLICK_CODEC, ClickEvent), (orders, ORDER_CODEC, Order)):
        raw = msgspec.json.Decoder(type_)
        for m in msgs:
            typed = codec.decode(m)
            obj = orjson.loads(m)
            via_tag = msgspec.convert(obj, CLICK_TYPES.get(obj["type"], type_))
            if msgspec.convert(obj, type_) != typed or via_tag != typed or raw.decode(m) != typed:
                raise AssertionError(f"typed decoders disagree on {m!r}")
            parsed = json.loads(m)
            if orjson.loads(m) != parsed or msgspec.json.decode(m) != parsed:
                raise AssertionError(f"untyped decoders disagree on {m!r}")
    for r in recs:
        builtins = msgspec.to_builtins(r)
        for blob in (orjson.dumps(builtins), msgspec.json.encode(r), shared_encode(r)):
            if json.loads(blob) != builtins:
                raise AssertionError(f"encoders disagree on {r!r}")


# --- timing --------------------------------------------------------------------------------------------


def _time_ns(fn: Callable[[Any], None], arg: Any) -> int:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn(arg)
        return time.perf_counter_ns() - t0
    finally:
        gc.enable()


def run(messages: int, recommendations: int, rounds: int, budget_s: float) -> dict[str, Any]:
    """Time every variant; return per-round ns/msg samples and the parameters actually used."""
    clicks, orders = make_messages(messages)
    recs = make_recommendations(recommendations)
    check_equivalence(clicks, orders, recs)

    dec_names, enc_names = list(DECODERS), list(ENCODERS)
    dec_samples: dict[str, list[float]] = {k: [] for k in dec_names}
    click_samples: dict[str, list[float]] = {k: [] for k in dec_names}
    order_samples: dict[str, list[float]] = {k: [] for k in dec_names}
    enc_samples: dict[str, list[float]] = {k: [] for k in enc_names}
    n_total = len(clicks) + len(orders)

    start = time.perf_counter()
    done = 0
    for rnd in range(WARMUP_ROUNDS + rounds):
        # Rotate the order each round so no variant always runs first/last.
        shift = rnd % len(dec_names)
        for name in dec_names[shift:] + dec_names[:shift]:
            loop_clicks, loop_orders = DECODERS[name]
            t_c = _time_ns(loop_clicks, clicks)
            t_o = _time_ns(loop_orders, orders)
            if rnd >= WARMUP_ROUNDS:
                dec_samples[name].append((t_c + t_o) / n_total)
                click_samples[name].append(t_c / len(clicks))
                order_samples[name].append(t_o / len(orders))
        shift = rnd % len(enc_names)
        for name in enc_names[shift:] + enc_names[:shift]:
            t_e = _time_ns(ENCODERS[name], recs)
            if rnd >= WARMUP_ROUNDS:
                enc_samples[name].append(t_e / len(recs))
        if rnd >= WARMUP_ROUNDS:
            done += 1
            if done >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
                break
    elapsed = time.perf_counter() - start

    kinds: dict[str, int] = {}
    for m in clicks:
        kind = json.loads(m)["type"]
        kinds[kind] = kinds.get(kind, 0) + 1
    kinds["order"] = len(orders)
    order_lines = [len(json.loads(m)["lines"]) for m in orders]
    return {
        "decode": dec_samples,
        "decode_click": click_samples,
        "decode_order": order_samples,
        "encode": enc_samples,
        "params": {
            "seed": SEED,
            "messages": n_total,
            "clicks": len(clicks),
            "orders": len(orders),
            "mix": kinds,
            "order_lines_mean": round(statistics.fmean(order_lines), 3),
            "click_bytes_mean": round(statistics.fmean(len(m) for m in clicks), 1),
            "order_bytes_mean": round(statistics.fmean(len(m) for m in orders), 1),
            "recommendations": len(recs),
            "items_per_recommendation": ITEMS_PER_RECOMMENDATION,
            "recommendation_bytes_mean": round(statistics.fmean(len(shared_encode(r)) for r in recs), 1),
            "rounds_requested": rounds,
            "rounds": done,
            "warmup_rounds": WARMUP_ROUNDS,
            "budget_s": budget_s,
            "elapsed_s": round(elapsed, 2),
            "statistic": "median over rounds of ns per message",
            "gc": "collected before, disabled during each timed loop",
            "timer": "time.perf_counter_ns",
        },
    }


def _rel_iqr(samples: list[float]) -> float:
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return float((q3 - q1) / med)


def summarise(res: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Turn samples into (metrics, baselines, targets)."""
    med = {sec: {k: statistics.median(v) for k, v in res[sec].items()} for sec in res if sec != "params"}
    metrics: dict[str, Any] = {}
    base_dec = med["decode"]["json_stdlib"]
    for name, ns in med["decode"].items():
        metrics[f"decode_{name}_ns_per_msg"] = round(ns, 1)
        metrics[f"decode_{name}_msgs_per_s"] = round(1e9 / ns)
        metrics[f"decode_{name}_vs_stdlib"] = round(base_dec / ns, 3)
        metrics[f"decode_{name}_click_ns_per_msg"] = round(med["decode_click"][name], 1)
        metrics[f"decode_{name}_order_ns_per_msg"] = round(med["decode_order"][name], 1)
    base_enc = med["encode"]["json_stdlib"]
    for name, ns in med["encode"].items():
        metrics[f"encode_{name}_ns_per_msg"] = round(ns, 1)
        metrics[f"encode_{name}_msgs_per_s"] = round(1e9 / ns)
        metrics[f"encode_{name}_vs_stdlib"] = round(base_enc / ns, 3)

    typed = med["decode"]["msgspec_typed"]
    orjson_validate = med["decode"]["orjson_validate"]
    speedup = orjson_validate / typed
    metrics["msgspec_typed_decode_vs_orjson_plus_validate"] = round(speedup, 3)
    metrics["msgspec_typed_decode_msgs_per_s"] = round(1e9 / typed)
    metrics["msgspec_encode_vs_orjson"] = round(med["encode"]["orjson"] / med["encode"]["msgspec"], 3)
    metrics["noise_max_rel_iqr"] = round(
        max(_rel_iqr(v) for sec in ("decode", "encode") for v in res[sec].values()), 4
    )

    baselines = {
        "decode_json_stdlib_ns_per_msg": round(base_dec, 1),
        "decode_json_stdlib_msgs_per_s": round(1e9 / base_dec),
        "decode_orjson_validate_ns_per_msg": round(orjson_validate, 1),
        "decode_orjson_validate_msgs_per_s": round(1e9 / orjson_validate),
        "encode_json_stdlib_ns_per_msg": round(base_enc, 1),
        "encode_json_stdlib_msgs_per_s": round(1e9 / base_enc),
    }
    targets = {
        "msgspec_typed_decode_vs_orjson_plus_validate": target(speedup, 1.0, ">="),
        "msgspec_typed_decode_msgs_per_s": target(1e9 / typed, 200_000, ">="),
    }
    return metrics, baselines, targets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(NAME, __doc__.splitlines()[0] if __doc__ else NAME, argv=argv)
    cfg = QUICK if args.quick else FULL
    res = run(int(cfg["messages"]), int(cfg["recommendations"]), int(cfg["rounds"]), float(cfg["budget_s"]))
    metrics, baselines, targets = summarise(res)
    write_results(NAME, args.quick, res["params"], metrics, baselines, targets, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
