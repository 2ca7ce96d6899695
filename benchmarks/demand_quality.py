"""Demand forecasting backtests and an inventory simulation.

    python -m benchmarks.demand_quality [--data ../shared/datasets/demand] [--quick]

1. **Daily retail** (``example_online_retail_multivariate.csv``, 30 items): each
   item's series is its rows in date order, as the file gives them (days
   without a row are not filled in; the calendar-filled variant is reported
   too, under ``calendar_filled``). The last 28 values are held out; every
   model learns the rest one value at a time and forecasts horizons 1..28.
   MAE, sMAPE and MASE (seasonality 7, scaled by the in-sample seasonal-naive
   error) are averaged over items, for: naive, seasonal naive, statsmodels
   ETS (damped additive trend, with and without weekly seasonality), River
   HoltWinters and SNARIMAX, our damped trend and seasonal median, and the
   served :class:`~online_models.forecast.AutoForecaster`.
2. **Monthly retail sales** (``example_retail_sales.csv``): the same with
   seasonality 12 and horizon 12.
3. **Cost of an online update**: microseconds per ``AutoForecaster.learn_one``.
4. **Inventory simulation** on the daily items with calendar-filled demand
   (a day without orders is zero demand): lead time 3 days, daily review,
   95% service target. Ours: order up to the forecast of the next
   lead-time-plus-one days plus a safety stock equal to the 95th percentile
   of past errors of that forecast. Baseline: a fixed (s, Q) policy, s = mean
   lead-time demand + z * sd, Q = one week of mean demand, both from the
   warm-up period. Stock-out rate = share of days with demand on which
   demand exceeded stock on hand.

Targets (issue 6): daily MASE <= 1.00 and below every baseline; update cost
<= 1 ms; stock-out rate within 2 points of 5% with less average inventory
than (s, Q).
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT, parse_args, target, write_results

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "demand"
LEAD_TIME = 3
SERVICE = 0.95


def read_daily(path: Path) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["item"], []).append((row["ds"], float(row["y"])))
    for rows in out.values():
        rows.sort()
    return out


def calendar_fill(rows: list[tuple[str, float]]) -> np.ndarray:
    import datetime as dt

    days = {dt.date.fromisoformat(d): y for d, y in rows}
    start, end = min(days), max(days)
    n = (end - start).days + 1
    return np.array([days.get(start + dt.timedelta(k), 0.0) for k in range(n)])


def scores(train: np.ndarray, test: np.ndarray, pred: np.ndarray, m: int) -> dict[str, float]:
    pred = np.maximum(np.nan_to_num(pred, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    err = np.abs(test - pred)
    den = np.abs(test) + np.abs(pred)
    smape = float(np.mean(np.where(den > 0, 2 * err / np.where(den > 0, den, 1), 0.0))) * 100
    scale = float(np.mean(np.abs(train[m:] - train[:-m]))) or 1.0
    return {"mae": float(np.mean(err)), "smape": smape, "mase": float(np.mean(err)) / scale}


def models(m: int) -> dict[str, Any]:
    """name -> function(train, horizon) -> forecast."""
    from online_models.forecast import AutoForecaster, DampedTrend, RiverForecaster, SeasonalMedian

    def online(make: Any) -> Any:
        def run(train: np.ndarray, h: int) -> np.ndarray:
            f = make()
            for v in train:
                f.learn_one(float(v))
            return np.array(f.forecast(h))

        return run

    def ets(seasonal: bool) -> Any:
        def run(train: np.ndarray, h: int) -> np.ndarray:
            from statsmodels.tsa.holtwinters import ExponentialSmoothing

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = ExponentialSmoothing(
                    train,
                    trend="add",
                    damped_trend=True,
                    seasonal="add" if seasonal else None,
                    seasonal_periods=m if seasonal else None,
                    initialization_method="estimated",
                ).fit()
            return np.asarray(fit.forecast(h))

        return run

    return {
        "naive": lambda tr, h: np.repeat(tr[-1], h),
        "seasonal_naive": lambda tr, h: np.array([tr[len(tr) - m + (k % m)] for k in range(h)]),
        "statsmodels_ets_damped": ets(False),
        "statsmodels_ets_damped_seasonal": ets(True),
        "river_holtwinters": online(lambda: RiverForecaster("holtwinters", m)),
        "river_snarimax": online(lambda: RiverForecaster("snarimax", m)),
        "damped_trend": online(DampedTrend),
        "seasonal_median": online(lambda: SeasonalMedian(m)),
        "auto (served)": online(lambda: AutoForecaster(season=m)),
    }


BASELINES = ("naive", "seasonal_naive", "statsmodels_ets_damped", "statsmodels_ets_damped_seasonal")


def backtest(series: list[np.ndarray], m: int, h: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, run in models(m).items():
        rows = [scores(y[:-h], y[-h:], run(y[:-h], h), m) for y in series if len(y) > h + 2 * m]
        out[name] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("mae", "smape", "mase")}
    return out


def update_cost(series: list[np.ndarray]) -> dict[str, float]:
    from online_models.forecast import AutoForecaster

    samples = []
    for y in series:
        f = AutoForecaster(season=7)
        for v in y:
            t0 = time.perf_counter()
            f.learn_one(float(v))
            samples.append(time.perf_counter() - t0)
    arr = np.array(samples) * 1e6
    return {"p50_us": float(np.percentile(arr, 50)), "p99_us": float(np.percentile(arr, 99)), "n": len(arr)}


def simulate(demand: np.ndarray, warmup: int, policy: str) -> dict[str, float]:
    """Daily-review inventory with lead time; returns stock-out days, demand days and mean on-hand."""
    from online_models.forecast import AutoForecaster

    z = statistics.NormalDist().inv_cdf(SERVICE)
    cover = LEAD_TIME + 1
    hist = demand[:warmup]
    mu, sd = float(np.mean(hist)), float(np.std(hist))
    s_level = mu * cover + z * sd * math.sqrt(cover)
    q_fixed = max(round(mu * 7), 1)
    f = AutoForecaster(season=7)
    for v in hist:
        f.learn_one(float(v))
    pending_fc: deque[tuple[int, float]] = deque()  # (day made, forecast of the next `cover` days)
    errors: deque[float] = deque(maxlen=90)
    on_hand = s_level + q_fixed / 2 if policy == "sQ" else sum(f.forecast(cover)) * 1.5
    pipeline: deque[tuple[int, float]] = deque()  # (arrival day, qty)
    stockouts = demand_days = 0
    inv_sum = 0.0
    days = 0
    for t in range(warmup, len(demand)):
        while pipeline and pipeline[0][0] <= t:
            on_hand += pipeline.popleft()[1]
        d = float(demand[t])
        if d > 0:
            demand_days += 1
            if d > on_hand:
                stockouts += 1
        on_hand = max(on_hand - d, 0.0)
        inv_sum += on_hand
        days += 1
        f.learn_one(d)
        while pending_fc and pending_fc[0][0] + cover <= t:
            made, fc = pending_fc.popleft()
            errors.append(float(demand[made + 1 : made + 1 + cover].sum()) - fc)
        position = on_hand + sum(q for _, q in pipeline)
        if policy == "sQ":
            if position <= s_level:
                pipeline.append((t + LEAD_TIME, float(q_fixed)))
        else:
            fc = float(sum(f.forecast(cover)))
            pending_fc.append((t, fc))
            if len(errors) >= 20:
                safety = float(np.quantile(np.array(errors), SERVICE))
            else:
                safety = z * f.sigma() * math.sqrt(cover)
            up_to = fc + max(safety, 0.0)
            if position < up_to:
                pipeline.append((t + LEAD_TIME, up_to - position))
    return {"stockouts": stockouts, "demand_days": demand_days, "inventory_sum": inv_sum, "days": days}


def main(argv: list[str] | None = None) -> int:
    def extra(p: Any) -> None:
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the two demand CSVs")

    args = parse_args("demand_quality", (__doc__ or "").splitlines()[0], extra, argv)
    daily_csv = args.data / "example_online_retail_multivariate.csv"
    monthly_csv = args.data / "example_retail_sales.csv"
    for p in (daily_csv, monthly_csv):
        if not p.exists():
            print(f"error: {p} not found (pass --data)", file=sys.stderr)
            return 2
    try:
        import statsmodels  # noqa: F401
    except ImportError:
        print(
            "error: statsmodels missing; install the extras: .venv/bin/pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    t_start = time.monotonic()
    daily = read_daily(daily_csv)
    items = sorted(daily)[: 8 if args.quick else None]
    rows_series = [np.array([y for _, y in daily[i]]) for i in items]
    cal_series = [calendar_fill(daily[i]) for i in items]
    print(f"daily: {len(items)} items; backtesting (horizon 28, seasonality 7)...", flush=True)
    daily_res = backtest(rows_series, 7, 28)
    daily_cal = backtest(cal_series, 7, 28)
    with open(monthly_csv, newline="") as fh:
        monthly = np.array([float(r["y"]) for r in csv.DictReader(fh)])
    print("monthly: backtesting (horizon 12, seasonality 12)...", flush=True)
    monthly_res = backtest([monthly], 12, 12)
    cost = update_cost(rows_series)
    print("inventory simulation (lead time 3 days, 95% service)...", flush=True)
    sims: dict[str, dict[str, float]] = {}
    for policy in ("ours", "sQ"):
        acc = {"stockouts": 0.0, "demand_days": 0.0, "inventory_sum": 0.0, "days": 0.0}
        for y in cal_series:
            r = simulate(y, warmup=min(200, len(y) // 2), policy=policy)
            for k in acc:
                acc[k] += r[k]
        sims[policy] = {
            "stockout_rate": acc["stockouts"] / max(acc["demand_days"], 1),
            "avg_inventory": acc["inventory_sum"] / max(acc["days"], 1),
        }

    print(f"\n{'model':34s} {'MASE':>7s} {'sMAPE':>7s} {'MAE':>8s}   (daily)   monthly MASE")
    for name, r in daily_res.items():
        mm = monthly_res[name]["mase"]
        print(f"{name:34s} {r['mase']:7.3f} {r['smape']:7.1f} {r['mae']:8.2f}   {mm:12.3f}")
    served = daily_res["auto (served)"]["mase"]
    best_base = min(daily_res[b]["mase"] for b in BASELINES)
    ours, sq = sims["ours"], sims["sQ"]
    print(
        f"\ninventory: ours stock-out {ours['stockout_rate']:.3f}, "
        f"avg inventory {ours['avg_inventory']:.1f}; "
        f"(s, Q) stock-out {sq['stockout_rate']:.3f}, avg inventory {sq['avg_inventory']:.1f}"
    )
    metrics = {
        "daily_mase_served": served,
        "daily_mase_margin_below_best_baseline": round(best_base - served, 4),
        "daily": daily_res,
        "daily_calendar_filled": daily_cal,
        "monthly": monthly_res,
        "update_cost_us": cost,
        "inventory": sims,
        "items": len(items),
    }
    baselines = {f"daily_mase_{b}": daily_res[b]["mase"] for b in BASELINES}
    targets = {
        "daily_mase_served": target(served, 1.0, "<="),
        "daily_mase_margin_below_best_baseline": target(best_base - served, 0.0, ">"),
        "update_cost_p50_ms": target(cost["p50_us"] / 1000, 1.0, "<="),
        "stockout_rate_error_points": target(abs(ours["stockout_rate"] - (1 - SERVICE)) * 100, 2.0, "<="),
        "inventory_below_sQ": target(sq["avg_inventory"] - ours["avg_inventory"], 0.0, ">"),
    }
    params = {
        "data": str(args.data),
        "daily_series": "each item's rows in date order (missing dates not filled)",
        "lead_time_days": LEAD_TIME,
        "service_level": SERVICE,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    write_results("demand_quality", args.quick, params, metrics, baselines, targets, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
