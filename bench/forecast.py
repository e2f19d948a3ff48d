"""Benchmark: many weekly series, our parallel forecaster against a plain sequential pmdarima loop.

Both fit the same model (auto-ARIMA with Fourier terms for the 52-week season) at
the same rolling-origin backtest cut points and once more on the whole history.
The loop is what one writes by hand: one series after the other, BLAS with its
default threads. Ours (:func:`crm_analytics.forecast.forecast_many`) runs one
process per core with one BLAS thread each, and also computes the naive,
seasonal-naive and mean baselines.

    .venv/bin/python bench/forecast.py --series 50 --weeks 156

Prints the wall time of each, the speed-up, and the mean backtest MASE of ARIMA
in each run and of seasonal naive (on the series with a season to find, all of
them here).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

LOOP = r"""
import sys, time
import numpy as np
import pmdarima as pm
from pmdarima.pipeline import Pipeline
from pmdarima.preprocessing import FourierFeaturizer
sys.path.insert(0, sys.argv[1])
from forecast import make_series, CUTS
from crm_analytics.forecast import mase

n_series, weeks, horizon, k = (int(a) for a in sys.argv[2:6])
t0 = time.perf_counter()
errors = []
for y in make_series(n_series, weeks):
    for cut in [*CUTS(weeks, horizon), weeks]:
        model = Pipeline([("fourier", FourierFeaturizer(m=52, k=k)),
                          ("arima", pm.arima.AutoARIMA(seasonal=False, suppress_warnings=True,
                                                       error_action="ignore", random_state=42))])
        model.fit(y[:cut])
        if cut < weeks:
            errors.append(mase(y[cut:cut + horizon], model.predict(n_periods=horizon), y[:cut], 52))
print(time.perf_counter() - t0, float(np.mean(errors)))
"""


def make_series(n: int, weeks: int, seed: int = 7) -> list[np.ndarray]:
    """Return ``n`` weekly sales-like series: trend, yearly season, festival peaks, noise.

    Parameters
    ----------
    n : int
        Number of series.
    weeks : int
        Length.
    seed : int, default 7
        Random seed.

    Returns
    -------
    list of numpy.ndarray
        The series.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(weeks)
    out = []
    for _ in range(n):
        level = rng.uniform(100, 1000)
        season = level * rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * (t - rng.integers(52)) / 52)
        peaks = np.where(t % 52 == 45, level * rng.uniform(0.3, 1.0), 0.0)
        trend = level * rng.uniform(-0.002, 0.006) * t
        noise = rng.normal(0, level * rng.uniform(0.03, 0.12), weeks)
        out.append(np.maximum(level + trend + season + peaks + noise, 0.0))
    return out


def CUTS(weeks: int, horizon: int) -> list[int]:
    """Return the backtest cut points used by both runs."""
    from crm_analytics.forecast import backtest_cut_points

    return backtest_cut_points(weeks, horizon, 3, 4, horizon + 8)


def main() -> None:
    """Run both and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=50)
    p.add_argument("--weeks", type=int, default=156)
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--fourier-k", type=int, default=4)
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: one per core)")
    a = p.parse_args()

    from crm_analytics import forecast

    series = make_series(a.series, a.weeks)
    tasks = [
        forecast.SeriesTask(
            f"s{i}",
            y,
            None,
            None,
            52,
            a.horizon,
            origins=3,
            step=4,
            models=("arima",),
            fourier_k=a.fourier_k,
            ensemble_size=0,
            time_budget_s=600,
        )
        for i, y in enumerate(series)
    ]
    t0 = time.perf_counter()
    results = forecast.forecast_many(tasks, a.jobs)
    ours = time.perf_counter() - t0
    metrics = [r.metrics.groupby("model").mase.mean() for r in results]
    ours_arima = float(np.mean([m["arima"] for m in metrics if "arima" in m]))
    snaive = float(np.mean([m["seasonal_naive"] for m in metrics]))
    chosen = float(np.mean([m[r.chosen] for m, r in zip(metrics, results, strict=True)]))
    fallbacks = sum(r.info["fallback_reason"] is not None for r in results)

    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", LOOP, os.path.dirname(os.path.abspath(__file__)), str(a.series),
         str(a.weeks), str(a.horizon), str(a.fourier_k)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    loop_s, loop_mase = (float(v) for v in out.stdout.split())

    print(
        f"{a.series} weekly series of {a.weeks} weeks, horizon {a.horizon}, 3 backtest origins + final fit"
    )
    print(f"{'':34}{'wall s':>9}{'ARIMA MASE':>12}")
    print(f"{'sequential pmdarima loop':34}{loop_s:9.1f}{loop_mase:12.3f}")
    print(f"{'crm-analytics forecast_many':34}{ours:9.1f}{ours_arima:12.3f}")
    print(f"speed-up: {loop_s / ours:.2f}x   seasonal-naive MASE: {snaive:.3f}   "
          f"chosen-model MASE: {chosen:.3f}   fallbacks: {fallbacks}")  # fmt: skip


if __name__ == "__main__":
    main()
