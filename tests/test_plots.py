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
