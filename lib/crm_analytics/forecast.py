"""Stage 05, forecast: sales series from the store, pmdarima against a seasonal-naive baseline.

The series is built in the store (:func:`crm_analytics.features.sales_series`),
completed here (zero sales for empty periods, partial last period dropped), and
forecast with pmdarima's ``auto_arima``. A long seasonal period (52 weeks) is
modelled with Fourier terms as exogenous regressors rather than a seasonal
ARIMA, which is slow and less accurate at that period length.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

PANDAS_FREQ: dict[str, str] = {"day": "D", "week": "W-MON", "month": "MS"}
"""Series frequency -> pandas period-start frequency (weeks start on Monday)."""

SEASONAL_PERIOD: dict[str, int] = {"day": 7, "week": 52, "month": 12}
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
    for c in (period_col, *value_cols):
        if c not in series.columns:
            raise ValueError(f"missing column {c!r}")
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

    Attributes
    ----------
    model_ : pmdarima estimator
        The fitted model (a pipeline when Fourier terms are used).
    order_ : tuple
        Chosen (p, d, q).
    seasonal_order_ : tuple
        Chosen (P, D, Q, m).
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
    ) -> None:
        self.seasonal_period = seasonal_period
        self.fourier_k = fourier_k
        self.max_seasonal_m = max_seasonal_m
        self.seed = seed

    def fit(self, y: np.ndarray) -> ArimaForecaster:
        """Fit to a history.

        Parameters
        ----------
        y : array-like
            Equally spaced history.

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
        if m > self.max_seasonal_m:
            k = max(1, min(self.fourier_k, m // 2))
            self.model_ = Pipeline(
                [
                    ("fourier", FourierFeaturizer(m=m, k=k)),
                    ("arima", pm.arima.AutoARIMA(seasonal=False, **common)),
                ]
            ).fit(y)
            arima = self.model_.steps_[-1][1].model_
        else:
            seasonal = m > 1 and len(y) >= 2 * m
            self.model_ = pm.auto_arima(y, seasonal=seasonal, m=m if seasonal else 1, **common)
            arima = self.model_
        self.order_ = tuple(arima.order)
        self.seasonal_order_ = tuple(arima.seasonal_order)
        self.aic_ = float(arima.aic())
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict(self, horizon: int, alpha: float = 0.05) -> pd.DataFrame:
        """Forecast ``horizon`` periods with a ``1 - alpha`` interval.

        Parameters
        ----------
        horizon : int
            Periods ahead.
        alpha : float, default 0.05
            1 - interval coverage.

        Returns
        -------
        pandas.DataFrame
            step (1..horizon), point, lower, upper.
        """
        point, conf = self.model_.predict(n_periods=horizon, return_conf_int=True, alpha=alpha)
        return pd.DataFrame(
            {
                "step": np.arange(1, horizon + 1),
                "point": np.asarray(point),
                "lower": conf[:, 0],
                "upper": conf[:, 1],
            }
        )


def holdout_evaluation(
    y: np.ndarray, horizon: int, seasonal_period: int, fourier_k: int = 4, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compare auto-ARIMA with seasonal naive on the last ``horizon`` periods.

    Parameters
    ----------
    y : array-like
        Complete series.
    horizon : int
        Periods held out.
    seasonal_period : int
        Season length.
    fourier_k : int, default 4
        Fourier pairs for long seasons.
    seed : int, default 42
        Random seed.

    Returns
    -------
    metrics : pandas.DataFrame
        model, mase, smape, rmse on the holdout.
    predictions : pandas.DataFrame
        step, actual, arima, seasonal_naive.

    Raises
    ------
    ValueError
        If the series is not longer than ``horizon + 8``.
    """
    y = np.asarray(y, dtype=float)
    if len(y) <= horizon + 8:
        raise ValueError(f"series of {len(y)} periods is too short to hold out {horizon}")
    train, test = y[:-horizon], y[-horizon:]
    arima = ArimaForecaster(seasonal_period, fourier_k, seed=seed).fit(train)
    preds = {
        "arima": arima.predict(horizon)["point"].to_numpy(),
        "seasonal_naive": seasonal_naive(train, horizon, seasonal_period),
    }
    m = seasonal_period if len(train) > seasonal_period else 1
    rows = [
        {
            "model": name,
            "mase": mase(test, p, train, m),
            "smape": smape(test, p),
            "rmse": float(np.sqrt(np.mean((test - p) ** 2))),
        }
        for name, p in preds.items()
    ]
    return pd.DataFrame(rows), pd.DataFrame(
        {"step": np.arange(1, horizon + 1), "actual": test, **preds}
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
