import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from crm_analytics import plots


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_chinese_labels_render_with_the_theme(recwarn):
    """`make test` installs a Chinese font (scripts/ensure-fonts.sh); the theme must use it."""
    fonts = plots.set_theme()
    assert fonts[0] in plots.CJK_FONTS, f"no Chinese font found, theme fonts: {fonts}"
    fig, ax = plt.subplots()
    ax.set_title("客户分群：高价值客户")
    ax.bar(["电子产品", "服装"], [1, 2])
    fig.canvas.draw()
    missing = [w for w in recwarn if "missing from font" in str(w.message)]
    assert not missing, missing[0].message


def test_plots_draw_on_given_axes_and_return_them():
    _, ax = plt.subplots()
    acc = pd.DataFrame({"table": ["orders"], "kept": [8], "duplicates": [1], "quarantined": [1]})
    assert plots.plot_row_accounting(acc, ax=ax) is ax
    assert [p.get_width() for p in ax.patches] == [1, 1]  # duplicates, quarantined
    assert ax.get_yticklabels()[0].get_text() == "orders (80.0% kept)"


def test_plot_forecast_and_holdout_return_axes():
    hist = pd.DataFrame(
        {
            "period": pd.date_range("2025-01-06", periods=20, freq="W-MON"),
            "revenue": np.arange(20.0),
        }
    )
    fut = pd.DataFrame(
        {
            "period": pd.date_range("2025-05-26", periods=3, freq="W-MON"),
            "point": [20.0, 21, 22],
            "lower_80": [18.0, 18, 18],
            "upper_80": [22.0, 24, 26],
            "lower_95": [16.0, 16, 16],
            "upper_95": [24.0, 26, 28],
        }
    )
    ax = plots.plot_forecast(hist, fut)
    assert [line.get_label() for line in ax.get_lines()] == ["actual", "forecast"]
    rfm = pd.DataFrame(
        {"customer_id": list("abcd"), "r_score": [1, 1, 2, 5], "f_score": [1, 1, 3, 5]}
    )
    ax2 = plots.plot_rf_heatmap(rfm)
    assert ax2.get_xlabel().startswith("recency score")


def test_churn_and_forecast_plots_draw_what_they_are_given():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    scores = {
        "model": np.clip(y * 0.6 + rng.uniform(0, 0.4, 200), 0, 1),
        "noise": rng.uniform(size=200),
    }
    _, ax = plt.subplots()
    assert plots.plot_gains(y, scores, ax=ax) is ax
    assert [line.get_label() for line in ax.get_lines()] == ["model", "noise", "random"]
    ax = plots.plot_calibration(y, scores)
    assert len(ax.get_lines()) == 3
    imp = pd.DataFrame(
        {"label": ["a", "b", "c"], "importance": [0.3, 0.1, 0.0], "importance_std": [0.01] * 3}
    )
    ax = plots.plot_importance(imp, top=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a"]  # largest on top
    bt = pd.DataFrame({"origin": ["2025-01-01", "2025-02-01"] * 2, "model": ["m1", "m1", "m2", "m2"],
                       "roc_auc": [0.8, 0.82, 0.7, 0.71]})  # fmt: skip
    assert len(plots.plot_backtest(bt).get_lines()) == 2
    ranking = pd.DataFrame({"model": ["arima", "seasonal_naive"], "mase": [0.5, 1.0]})
    ax = plots.plot_model_errors(ranking)
    assert [round(p.get_width(), 2) for p in ax.patches] == [0.5, 1.0]
    relative = ranking.assign(relative_mase=[1.2, 1.0])  # drawn instead of the MASE, best on top
    ax = plots.plot_model_errors(relative)
    assert [round(p.get_width(), 2) for p in ax.patches] == [1.0, 1.2]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["seasonal_naive", "arima"]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [1.0]  # the seasonal-naive level
    periods = pd.Series(pd.date_range("2025-01-06", periods=10, freq="W-MON"))
    parts = pd.DataFrame({"observed": np.arange(10.0), "trend": np.arange(10.0), "seasonality": np.zeros(10),
                          "effect_double_11": np.zeros(10), "residual": np.zeros(10)})  # fmt: skip
    axes = plots.plot_decomposition(periods, parts, {"effect_double_11": "Double 11"})
    assert len(axes) == 3 and axes[2].get_legend().get_texts()[0].get_text() == "Double 11"
