import numpy as np
import pandas as pd
import pytest

from crm_analytics import explore, report

CUSTOMERS = pd.DataFrame(
    {
        "customer_id": ["a", "b", "c", "d"],
        "name": ["Ann", "Bob", "Cy", "Di"],
        "segment": ["Champions", "Champions", "Lost", "Lost"],
        "monetary_total": [500.0, 300.0, 20.0, 10.0],
        "frequency": [10, 6, 1, 1],
        "p_churn": [0.1, 0.2, 0.9, 0.8],
    }
)
ORDERS = pd.DataFrame(
    {
        "customer_id": ["a", "a", "c"],
        "order_ts": pd.to_datetime(["2025-01-01", "2025-03-01", "2025-02-01"]),
        "amount": [100.0, 400.0, 20.0],
        "status": ["paid"] * 3,
    }
)


def test_segment_view_profiles_and_lists_members_pseudonymously():
    profile, members = explore.segment_view(CUSTOMERS, "Champions", n=1)
    assert profile["monetary_total"] == 400.0 and profile["customers"] == 2
    assert members.customer.tolist() == report.pseudonymise(pd.Series(["a"])).tolist()
    assert "name" not in members.columns and "customer_id" not in members.columns
    with pytest.raises(ValueError, match="'monetary_mean'"):
        explore.segment_view(CUSTOMERS, "Lost", sort_by="monetary_mean")


def test_customer_view_finds_by_pseudonym_only():
    pid = report.pseudonymise(pd.Series(["a"])).iloc[0]
    row, history = explore.customer_view(CUSTOMERS, ORDERS, pid)
    assert row["segment"] == "Champions" and "name" not in row.index
    assert history.amount.tolist() == [400.0, 100.0] and "customer_id" not in history.columns
    assert explore.customer_view(CUSTOMERS, ORDERS, "a")[0] is None  # the raw key is not a lookup
    assert explore.customer_view(CUSTOMERS, ORDERS, "Ann")[0] is None


def test_targeting_view_applies_threshold_then_budget():
    targets = pd.DataFrame(
        {"p_churn": [0.9, 0.8, 0.6, 0.3], "expected_value": [5.0, 50.0, 20.0, 100.0]}
    )
    v = explore.targeting_view(targets, 0.5, 2)
    assert v == {
        "eligible": 3,
        "contacted": 2,
        "expected_value": 70.0,
        "mean_p_churn": pytest.approx(0.7),
    }
    assert np.isnan(explore.targeting_view(targets, 0.95, 5)["mean_p_churn"])


def test_forecast_view_and_widgets_update_on_change():
    history = pd.DataFrame({"period": pd.date_range("2025-01-06", periods=6, freq="W-MON"), "series": "s",
                            "value": np.arange(6.0)})  # fmt: skip
    fc = pd.DataFrame({"series": "s", "period": pd.date_range("2025-02-17", periods=4, freq="W-MON"),
                       "point": 6.0, "lower_80": 5.0, "upper_80": 7.0, "lower_95": 4.0, "upper_95": 8.0})  # fmt: skip
    h, f = explore.forecast_view(history, fc, "s", 2)
    assert len(h) == 6 and len(f) == 2
    widget = explore.segment_explorer(CUSTOMERS)
    pick = widget.children[0]
    assert pick.value == "Champions" and set(pick.options) == {"Champions", "Lost"}
    pick.value = "Lost"  # the observer re-renders without error
    assert explore.segment_explorer(CUSTOMERS, interactive=False) is None
    sliders = explore.targeting_explorer(
        pd.DataFrame({"p_churn": [0.9, 0.2], "expected_value": [3.0, -1.0]})
    )
    sliders.children[0].children[0].value = 0.1
