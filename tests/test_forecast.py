import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import forecast


def test_complete_series_fills_gaps_and_drops_partial_last_week():
    raw = pd.DataFrame(
        {
            "period": pd.to_datetime(["2025-01-06", "2025-01-20", "2025-01-27"]),
            "revenue": [10.0, 30.0, 5.0],
            "n_orders": [1, 3, 1],
        }
    )
    # data ends on Wednesday 2025-01-29: the week of 01-27 is incomplete
    got = forecast.complete_series(raw, "week", "2025-01-29 18:00")
    expected = pd.DataFrame(
        {
            "period": pd.to_datetime(["2025-01-06", "2025-01-13", "2025-01-20"]),
            "revenue": [10.0, 0.0, 30.0],
            "n_orders": [1, 0, 3],
        }
    )
    assert_frame_equal(got, expected, check_dtype=False)
    # a week ending on the last day of data is complete
    assert len(forecast.complete_series(raw, "week", "2025-02-02")) == 4
    with pytest.raises(ValueError, match="freq"):
        forecast.complete_series(raw, "year", "2025-02-02")


def test_seasonal_naive_and_metrics():
    y = np.arange(1, 9, dtype=float)  # 1..8
    assert forecast.seasonal_naive(y, 6, 4).tolist() == [5, 6, 7, 8, 5, 6]
    assert forecast.seasonal_naive(y, 2, 20).tolist() == [8, 8]  # too short: last value
    assert forecast.mase([9, 10], [9, 10], y) == 0.0
    assert forecast.mase([9, 10], [10, 12], y, m=1) == pytest.approx(1.5)
    assert forecast.smape([0, 100], [0, 100]) == 0.0
    assert forecast.smape([100], [300]) == pytest.approx(100.0)


def test_arima_beats_seasonal_naive_on_seasonal_noisy_series():
    rng = np.random.default_rng(3)
    t = np.arange(160)
    y = 100 + 0.3 * t + 20 * np.sin(2 * np.pi * t / 52) + rng.normal(0, 4, len(t))
    metrics, pred = forecast.holdout_evaluation(y, horizon=12, seasonal_period=52, fourier_k=2)
    m = metrics.set_index("model")
    assert m.loc["arima", "mase"] < m.loc["seasonal_naive", "mase"]
    assert len(pred) == 12 and list(pred.columns) == ["step", "actual", "arima", "seasonal_naive"]


def test_forecaster_intervals_nest():
    rng = np.random.default_rng(4)
    y = 50 + rng.normal(0, 2, 80).cumsum()
    model = forecast.ArimaForecaster(seasonal_period=12, seed=1).fit(y)
    p95, p80 = model.predict(6, 0.05), model.predict(6, 0.2)
    assert (p95.lower <= p80.lower).all() and (p80.upper <= p95.upper).all()
    assert (p80.lower <= p80.point).all() and (p80.point <= p80.upper).all()
    assert model.aic_ > 0 or model.aic_ < 0  # a finite number
    assert len(model.order_) == 3


def test_holdout_needs_enough_history():
    with pytest.raises(ValueError, match="too short"):
        forecast.holdout_evaluation(np.ones(15), horizon=12, seasonal_period=52)


def test_future_periods():
    got = forecast.future_periods(pd.Timestamp("2025-01-27"), 2, "week")
    assert list(got) == [pd.Timestamp("2025-02-03"), pd.Timestamp("2025-02-10")]
