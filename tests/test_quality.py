import pandas as pd
import pytest

from crm_analytics import clean, quality
from tests.test_clean import CUSTOMERS, ITEMS, ORDERS, SETTINGS, _all_raw


@pytest.fixture()
def measured(duck):
    _all_raw(duck, customers=CUSTOMERS, orders=ORDERS, order_items=ITEMS)
    clean.clean_all(duck, SETTINGS)
    return duck, quality.quality_metrics(
        duck, ["electronics", "fashion", "beauty", "home", "grocery"]
    )


def _value(metrics, table, column, metric):
    m = metrics.set_index(["table", "column", "metric"]).value
    return m[(table, column, metric)]


def test_metrics_known_values(measured):
    _, m = measured
    # customers: 5 input rows, 2 kept; signup_date caused 2 quarantines, customer_id 1
    assert _value(m, "customers", "signup_date", "validity") == pytest.approx(1 - 2 / 5)
    assert _value(m, "customers", "customer_id", "validity") == pytest.approx(1 - 1 / 5)
    assert _value(m, "customers", "customer_id", "uniqueness") == 1.0
    assert _value(m, "customers", "email", "completeness") == pytest.approx(1 / 2)
    # orders: 7 input rows, one refers to a quarantined customer
    assert _value(m, "orders", "customer_id", "consistency") == pytest.approx(1 - 1 / 7)
    assert _value(m, "orders", "region", "completeness") == pytest.approx(1 / 3)
    # order lines: both kept labels map to known categories
    assert _value(m, "order_items", "category", "consistency") == 1.0
    assert pd.isna(_value(m, "orders", "amount", "uniqueness"))  # only for keys


def test_history_flags_a_metric_that_got_worse(measured):
    con, m = measured
    quality.record_quality(con, m, "run-1")
    worse = m.copy()
    sel = (worse.table == "orders") & (worse.column == "region") & (worse.metric == "completeness")
    worse.loc[sel, "value"] -= 0.2
    history = quality.record_quality(con, worse, "run-2")
    assert history.run_id.drop_duplicates().tolist() == ["run-1", "run-2"]
    changes = quality.quality_changes(history)
    flagged = changes[changes.worse]
    assert flagged[["table", "column", "metric"]].values.tolist() == [
        ["orders", "region", "completeness"]
    ]
    assert flagged.change.iloc[0] == pytest.approx(-0.2)
    # recording the same run again replaces it
    again = quality.record_quality(con, m, "run-2")
    assert len(again) == 2 * len(m)
    assert not quality.quality_changes(again).worse.any()


def test_first_run_has_no_previous(measured):
    con, m = measured
    changes = quality.quality_changes(quality.record_quality(con, m, "only"))
    assert changes.previous.isna().all() and not changes.worse.any()
    summary = quality.quality_summary(m)
    assert list(summary.columns) == ["table", *quality.METRICS]
    assert summary.set_index("table").loc["customers", "validity"] == pytest.approx(0.6)
