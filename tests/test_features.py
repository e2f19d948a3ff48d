import datetime as dt

import ibis
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import features

ORDERS = pd.DataFrame(
    {
        "order_id": ["o1", "o2", "o3", "o4", "o5", "o6", "o7"],
        "customer_id": ["a", "a", "a", "b", "b", "c", "a"],
        "order_ts": pd.to_datetime(
            [
                "2025-01-01 10:00",
                "2025-02-01 09:00",
                "2025-02-20 12:00",
                "2025-01-15 08:00",
                "2025-03-01 00:00",  # exactly at the cutoff: not a feature, part of the label window
                "2025-02-27 23:00",
                "2025-03-10 11:00",
            ]
        ),
        "amount": [10.0, 20.0, 30.0, 5.0, 50.0, 7.0, 40.0],
        "status": ["paid", "paid", "refunded", "paid", "paid", "paid", "paid"],
        "channel": ["app", "online", "app", "store", "store", "app", "app"],
        "amount_outlier": [False, False, False, False, False, True, False],
    }
)
CUTOFF = "2025-03-01"


def test_customer_features_known_values():
    got = (
        features.customer_features(ibis.memtable(ORDERS), CUTOFF)
        .to_pandas()
        .sort_values("customer_id")
        .reset_index(drop=True)
    )
    expected = pd.DataFrame(
        {
            "customer_id": ["a", "b"],  # c's only order is an outlier: no purchase
            "frequency": [2, 1],
            "monetary_total": [30.0, 5.0],
            "monetary_mean": [15.0, 5.0],
            "recency_days": [28, 45],  # days from the last paid order to the cutoff
            "tenure_days": [59, 45],
            "n_refunds": [1, 0],
            "share_app": [0.5, 0.0],
            "share_store": [0.0, 1.0],
        }
    )
    assert_frame_equal(got[expected.columns], expected, check_dtype=False)


def test_features_ignore_rows_at_or_after_cutoff():
    base = features.customer_features(ibis.memtable(ORDERS), CUTOFF).to_pandas()
    later = ORDERS.assign(
        order_ts=ORDERS.order_ts.where(ORDERS.order_ts < CUTOFF, pd.Timestamp("2030-01-01"))
    )
    moved = features.customer_features(ibis.memtable(later), CUTOFF).to_pandas()
    assert_frame_equal(
        base.sort_values("customer_id").reset_index(drop=True),
        moved.sort_values("customer_id").reset_index(drop=True),
    )


def test_customers_without_orders_get_zero_rows():
    cust = ibis.memtable(
        pd.DataFrame(
            {
                "customer_id": ["a", "b", "z", "late"],
                "signup_date": [
                    dt.date(2024, 12, 1),
                    dt.date(2025, 1, 1),
                    dt.date(2025, 2, 1),
                    dt.date(2025, 4, 1),
                ],
            }
        )
    )
    got = features.customer_features(ibis.memtable(ORDERS), CUTOFF, customers=cust).to_pandas()
    got = got.set_index("customer_id")
    assert sorted(got.index) == ["a", "b", "z"]  # signed up after the cutoff: not a customer yet
    assert got.loc["z", "frequency"] == 0 and pd.isna(got.loc["z", "recency_days"])
    assert got.loc["z", "tenure_days"] == 28
    assert got.loc["a", "tenure_days"] == 90  # counted from signup


def test_churn_labels():
    got = (
        features.churn_labels(ibis.memtable(ORDERS), CUTOFF, 30)
        .to_pandas()
        .sort_values("customer_id")
    )
    # a buys on 03-10, b exactly at the cutoff: both retained
    assert got.to_dict("list") == {"customer_id": ["a", "b"], "churned": [0, 0]}
    got9 = (
        features.churn_labels(ibis.memtable(ORDERS), "2025-03-02", 5)
        .to_pandas()
        .sort_values("customer_id")
    )
    assert got9.to_dict("list") == {"customer_id": ["a", "b"], "churned": [1, 1]}


def test_sales_series_week():
    got = features.sales_series(ibis.memtable(ORDERS), "week").to_pandas()
    expected = pd.DataFrame(
        {
            "period": pd.to_datetime(
                ["2024-12-30", "2025-01-13", "2025-01-27", "2025-02-24", "2025-03-10"]
            ),
            "revenue": [10.0, 5.0, 20.0, 50.0, 40.0],
            "n_orders": [1, 1, 1, 1, 1],
        }
    )
    assert_frame_equal(got, expected, check_dtype=False)


def test_sales_series_by_group_and_errors():
    got = features.sales_series(ibis.memtable(ORDERS), "month", by="channel").to_pandas()
    assert got.groupby("channel").revenue.sum().to_dict() == {
        "app": 50.0,
        "online": 20.0,
        "store": 55.0,
    }
    with pytest.raises(ValueError, match="freq"):
        features.sales_series(ibis.memtable(ORDERS), "hour")
    with pytest.raises(ValueError, match="'region'"):
        features.sales_series(ibis.memtable(ORDERS), "week", by="region")


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="'order_ts'"):
        features.customer_features(ibis.memtable(ORDERS.drop(columns="order_ts")), CUTOFF)
