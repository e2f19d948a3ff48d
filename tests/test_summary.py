import re

import pytest

from crm_analytics import summary


def test_key_figures_show_the_change_since_the_previous_run():
    now = {"holdout_roc_auc": 0.91, "churn_rate": 0.30, "risk_tiers": {"high": 1200}}
    before = {"holdout_roc_auc": 0.90, "churn_rate": 0.25, "risk_tiers": {"high": 1000}}
    figs = {k.label: k for k in summary.key_figures("churn", now, before)}
    assert (
        figs["test ROC AUC"].formatted() == "0.910" and figs["test ROC AUC"].change() == "▲ 0.010"
    )
    assert figs["test ROC AUC"].tone() == "good"
    assert figs["churn rate"].change() == "▲ 5.0 pts" and figs["churn rate"].tone() == "bad"
    assert figs["high-risk customers"].change() == "▲ 20.0%"
    assert "expected value of retention" not in figs  # unknown values are left out
    first = summary.key_figures("churn", now, None)
    assert all(k.change() == "" and k.tone() == "neutral" for k in first)


def test_changes_below_the_shown_precision_read_as_about_the_same():
    tiny = summary.KeyFigure("AUC", 0.9101, 0.9100, kind="score", higher_is_better=True)
    assert tiny.change() == "≈"
    share = summary.KeyFigure("churn rate", 0.30001, 0.3, kind="share")
    assert share.change() == "≈"
    assert summary.KeyFigure("AUC", 0.912, 0.910, kind="score").change() == "▲ 0.002"


def test_findings_are_generated_from_the_figures_and_escaped():
    m = {"segments": {"<script>alert(1)</script>": 30, "Champions": 10},
         "nps_by_segment": {"Champions": 40.0, "Lost": -60.0}}  # fmt: skip
    said = summary.findings("segment", m)
    assert (
        said[0]
        == "The largest segment is &lt;script&gt;alert(1)&lt;/script&gt;: 30 customers (75%)."
    )
    assert "highest among Champions (+40) and lowest among Lost (-60)" in said[1]
    zh = summary.findings("segment", m, language="zh")
    assert zh[0].startswith("最大的细分群体是 &lt;script&gt;")
    churn = summary.findings("churn", {"risk_tiers": {"high": 120}}, {"risk_tiers": {"high": 100}})
    assert churn == ["120 customers are at high risk, up from 100."]
    evaluated = summary.findings(
        "churn",
        {"mode": "evaluate", "score_cutoff": "2026-06-30", "risk_tiers": {"high": 120},
         "lapsed_customers": 2322, "active_within_days": 365},
    )  # fmt: skip
    assert evaluated[0].startswith("At the test cutoff 2026-06-30, 120 customers were at high risk")
    assert evaluated[1].startswith("2,322 more had been silent for over 365 days")
    scored = summary.findings("churn", {"mode": "score", "score_cutoff": "2026-10-01",
                                        "risk_tiers": {"high": 120}})  # fmt: skip
    assert scored == ["120 customers are at high risk."]
    with pytest.raises(ValueError, match="report_language"):
        summary.findings("churn", {"risk_tiers": {"high": 1}}, language="fr")


def test_summary_html_has_cards_and_findings():
    block = summary.summary_html("clean", {"input": 100, "kept": 90, "quarantined": 4, "duplicates": 6,
                                           "merged": 0, "all_rows_accounted": True})  # fmt: skip
    assert 'id="executive-summary"' in block and block.count('class="crm-card"') == 4
    assert (
        "90.0%" in block and "Every input row is accounted for." in block and "first run" in block
    )


def test_migration_matrix_counts_moves_new_and_gone():
    import pandas as pd

    before = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "segment": ["Champions", "At Risk", "Lost"]}
    )
    after = pd.DataFrame(
        {"customer_id": ["a", "b", "d"], "segment": ["Champions", "Champions", "New"]}
    )
    m = summary.migration_matrix(before, after, "segment")
    assert m.loc["Champions", "Champions"] == 1 and m.loc["At Risk", "Champions"] == 1
    assert m.loc["Lost", "(gone)"] == 1 and m.loc["(new)", "New"] == 1
    assert int(m.to_numpy().sum()) == 4
    with pytest.raises(ValueError, match="'tier'"):
        summary.migration_matrix(before, after, "tier")


def test_forecast_vs_actual_and_quality_changes():
    prev = {"main_series": "revenue: total", "forecast_next": [
        {"period": "2026-10-05", "point": 100.0, "lower_95": 80.0, "upper_95": 120.0},
        {"period": "2026-10-12", "point": 100.0, "lower_95": 80.0, "upper_95": 120.0}]}  # fmt: skip
    now = {
        "main_series": "revenue: total",
        "recent_actuals": [{"period": "2026-10-05", "value": 130.0}],
    }
    got = summary.forecast_vs_actual(prev, now)
    assert got.to_dict("records") == [{"period": "2026-10-05", "forecast": 100.0, "lower_95": 80.0, "upper_95": 120.0,
                                       "actual": 130.0, "error": 30.0, "inside_95": False}]  # fmt: skip
    assert summary.forecast_vs_actual(prev, {**now, "main_series": "other"}).empty
    dq = summary.quality_changes({"data_quality": {"orders": {"validity": 0.9}}},
                                 {"data_quality": {"orders": {"validity": 0.8, "consistency": None}}})  # fmt: skip
    assert dq.to_dict("records") == [{"table": "orders", "measure": "validity", "previous": 0.9, "current": 0.8,
                                      "change": pytest.approx(-0.1)}]  # fmt: skip
    page = summary.comparison_html("r2", "r1", {"forecast": now}, {"forecast": prev}, None, None)
    assert "0% fell inside the 95% interval" in page and 'href="../r1/index.html"' in page


def test_comparison_shows_missing_previous_values_as_a_dash():
    # the previous run (e.g. a forecast-only run) measured no data quality at all
    now = {"clean": {"data_quality": {"orders": {"validity": 0.8, "completeness": 0.9}}}}
    page = summary.comparison_html("r2", "r1", now, {"clean": {}}, None, None)
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert "None" not in cells and "nan" not in cells
    assert cells.count("-") == 4  # previous and change of both measures
