import datetime as dt

import ibis
import numpy as np
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


@pytest.mark.parametrize(
    ("days", "kept"), [(0, ["a", "b"]), (27, []), (28, ["a"]), (45, ["a", "b"])]
)
def test_churn_population_leaves_out_customers_silent_too_long(days, kept):
    # last paid orders before the cutoff: a on 02-01 (28 days), b on 01-15 (45 days)
    labels = features.churn_labels(ibis.memtable(ORDERS), CUTOFF, 30, active_within_days=days)
    assert sorted(labels.to_pandas().customer_id) == kept
    tables = {"orders": ibis.memtable(ORDERS)}
    for labelled in (True, False):
        frame = features.churn_frame(tables, CUTOFF, 30, labelled=labelled, active_within_days=days)
        got = frame.to_pandas()
        assert got.customer_id.tolist() == kept  # the same population, labelled or not
        assert (got.recency_days <= (days or 10**6)).all()
    buyers = 2  # c's only order is an outlier
    assert features.lapsed_count(ibis.memtable(ORDERS), CUTOFF, days) == buyers - len(kept)


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


def test_purchase_dynamics_trends_and_gaps_by_hand():
    orders = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(7)],
            "customer_id": ["a", "a", "a", "a", "b", "a", "b"],
            "order_ts": pd.to_datetime(
                [
                    "2024-09-01",
                    "2024-11-30",
                    "2025-02-08",
                    "2025-02-08 18:00",
                    "2025-02-20",
                    "2025-02-25",
                    "2025-03-01",
                ],
                format="mixed",  # the last is at the cutoff: ignored
            ),
            "amount": [10.0, 20.0, 30.0, 5.0, 8.0, 40.0, 99.0],
            "status": ["paid"] * 7,
        }
    )
    got = (
        features.purchase_dynamics(ibis.memtable(orders), CUTOFF, windows=(30, 180))
        .to_pandas()
        .sort_values("customer_id", ignore_index=True)
    )
    # a buys on 2024-09-01, 2024-11-30, 2025-02-08 (twice), 2025-02-25; cutoff 2025-03-01.
    # last 30 days (from 2025-01-30): 3 orders, 75.0; last 180 days (from 2024-09-02): 4 orders, 95.0.
    # trend 30d: 3 orders in 30 days vs 2 orders in the 151 days 2024-09-01..2025-01-30, per year.
    # gaps between purchase days: 90, 70, 17 days.
    gaps = np.array([90.0, 70.0, 17.0])
    expected = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "orders_30d": [3, 1],
            "spend_30d": [75.0, 8.0],
            "orders_180d": [4, 1],
            "spend_180d": [95.0, 8.0],
            "orders_trend_30d": [3 * 365 / 30 - 2 * 365 / 151, np.nan],
            "orders_trend_180d": [4 * 365 / 180 - 1 * 365 / 1, np.nan],
            "gap_mean_days": [gaps.mean(), np.nan],
            "gap_std_days": [gaps.std(ddof=1), np.nan],
            "gap_last_days": [17.0, np.nan],
        }
    )
    assert_frame_equal(got[expected.columns], expected, check_dtype=False)


def test_churn_features_and_frame_read_only_the_past():
    tables = {"orders": ibis.memtable(ORDERS)}
    frame = features.churn_frame(tables, CUTOFF, 30).to_pandas().set_index("customer_id")
    # b's only later order (at the cutoff) is in the label window, not in any feature
    assert frame.loc["b", "frequency"] == 1 and frame.loc["b", "churned"] == 0
    assert frame.loc["a", "refund_share"] == pytest.approx(1 / 3)
    assert pd.Timestamp(frame.loc["a", "cutoff"]) == pd.Timestamp(CUTOFF)
    scoring = features.churn_frame(tables, CUTOFF, 30, labelled=False).to_pandas()
    assert scoring.churned.isna().all() and sorted(scoring.customer_id) == ["a", "b"]


def test_churn_frame_is_sorted_once():
    # the features' own sort, under the frame's join and sort, cost 0.8 s a frame at 1M
    con = ibis.duckdb.connect()
    tables = {"orders": con.create_table("orders", ORDERS)}
    expr = features.churn_frame(tables, CUTOFF, 30)
    plan = con.con.execute(f"EXPLAIN {ibis.to_sql(expr, dialect='duckdb')}").fetchall()
    assert "\n".join(row[1] for row in plan).count("ORDER_BY") == 1
    frame = expr.to_pandas()
    assert frame.customer_id.tolist() == sorted(frame.customer_id)
    sorted_alone = features.churn_features(tables, CUTOFF).to_pandas().customer_id.tolist()
    assert sorted_alone == sorted(sorted_alone)


def test_top_categories_counts_paid_lines_before_the_cutoff():
    items = pd.DataFrame(
        {"order_id": ["o1", "o1", "o2", "o4", "o5", "o5", "o5"],
         "sku": list("abcdefg"),
         "category": ["home", "toys", "home", "toys", "beauty", "beauty", "beauty"]}
    )  # fmt: skip
    # o5 is at the cutoff and o3 refunded: beauty never counts
    got = features.top_categories(ibis.memtable(ORDERS), ibis.memtable(items), CUTOFF, n=5)
    assert got == ["home", "toys"]


def test_contract_features_one_hot_and_label():
    contracts = pd.DataFrame(
        {
            "customer_id": ["t1", "t2", "t3"],
            "tenure": [1, 24, 60],
            "contract": ["Month-to-month", "One year", "Month-to-month"],
            "monthly_charges": [70.5, 20.0, None],
            "churn": ["Yes", "No", "No"],
        }
    )
    got = features.contract_features(ibis.memtable(contracts), "churn").to_pandas()
    expected = pd.DataFrame(
        {
            "customer_id": ["t1", "t2", "t3"],
            "tenure": [1.0, 24.0, 60.0],
            "contract_month_to_month": [1, 0, 1],
            "contract_one_year": [0, 1, 0],
            "monthly_charges": [70.5, 20.0, np.nan],
            "churned": [1, 0, 0],
        }
    )
    assert_frame_equal(
        got.sort_values("customer_id", ignore_index=True), expected, check_dtype=False
    )
    with pytest.raises(ValueError, match="'label'"):
        features.contract_features(ibis.memtable(contracts), "label")


def test_sales_series_by_splits_add_up_to_the_total():
    orders = pd.DataFrame(
        {
            "order_id": ["o1", "o2", "o3", "o4"],
            "customer_id": ["a", "b", "a", "c"],
            "order_ts": pd.to_datetime(["2025-01-06", "2025-01-07", "2025-01-14", "2025-01-15"]),
            "amount": [90.0, 50.0, 30.0, 10.0],
            "status": ["paid", "paid", "paid", "refunded"],
            "region": ["East", None, "East", "West"],
        }
    )
    items = pd.DataFrame(
        {"order_id": ["o1", "o1", "o2", "o1"], "sku": ["x", "y", "z", "w"],
         "category": ["home", "toys", "home", "home"],
         "quantity": [1, 2, 1, 1], "unit_price": [20.0, 20.0, 99.0, 20.0]}
    )  # fmt: skip
    segments = pd.DataFrame({"customer_id": ["a"], "segment": ["Champions"]})
    tables = {"orders": ibis.memtable(orders), "order_items": ibis.memtable(items),
              "customer_segments": ibis.memtable(segments)}  # fmt: skip

    def series(dim):
        out = features.sales_series_by(tables, "week", dim).to_pandas()
        return {(str(r.period.date()), r.group): (r.revenue, r.n_orders) for r in out.itertuples()}

    assert series("total") == {
        ("2025-01-06", "total"): (140.0, 2),
        ("2025-01-13", "total"): (30.0, 1),
    }
    # o1's 90.0 is shared 40:40 between home (two lines, one order) and toys; o3 has no
    # lines: "unknown"
    assert series("category") == {
        ("2025-01-06", "home"): (45.0 + 50.0, 2), ("2025-01-06", "toys"): (45.0, 1),
        ("2025-01-13", "unknown"): (30.0, 1),
    }  # fmt: skip
    assert series("region") == {("2025-01-06", "East"): (90.0, 1), ("2025-01-06", "unknown"): (50.0, 1),
                                ("2025-01-13", "East"): (30.0, 1)}  # fmt: skip
    assert series("segment")[("2025-01-06", "unknown")] == (50.0, 1)
    with pytest.raises(ValueError, match="dimension"):
        features.sales_series_by(tables, "week", "city")


def test_gap_distribution_counts_days_between_purchase_days():
    got = features.gap_distribution(ibis.memtable(ORDERS), CUTOFF).to_pandas()
    # a buys on 01-01 and 02-01 (the 02-20 order is refunded): one gap of 31 days; b and c buy once
    assert got.to_dict("list") == {"gap_days": [31], "n": [1]}


def test_money_sum_is_exact_whatever_the_row_order():
    from decimal import Decimal

    import numpy as np

    values = [0.1, 0.2, 0.3, 1_000_000.01, 7.1 * 10.5, 19.99] * 40
    exact = float(sum(Decimal(f"{v:.2f}") for v in values))
    rng = np.random.default_rng(0)
    sums, float_sums = set(), set()
    for _ in range(6):
        t = ibis.memtable(pd.DataFrame({"a": rng.permutation(values)}))
        got = t.aggregate(s=features.money_sum(t.a), m=features.money_mean(t.a)).to_pandas().iloc[0]
        sums.add(got.s)
        float_sums.add(float(np.cumsum(rng.permutation(values))[-1]))
        assert got.m == pytest.approx(exact / len(values))
    assert sums == {exact}
    assert len(float_sums) > 1  # a plain float sum does depend on the order


def test_customer_sample_restricts_every_keyed_table_to_the_same_seeded_customers():
    con = ibis.duckdb.connect()
    ids = [f"c{i:03d}" for i in range(100)]
    customers = con.create_table("customers", pd.DataFrame({"customer_id": ids}))
    orders = con.create_table("orders", pd.DataFrame({
        "order_id": [f"o{i}" for i in range(300)], "customer_id": [ids[i % 100] for i in range(300)]}))  # fmt: skip
    items = con.create_table(
        "order_items", pd.DataFrame({"order_id": ["o1", "o2"], "sku": ["x", "y"]})
    )
    tables = {"customers": customers, "orders": orders, "order_items": items}
    assert features.customer_sample(tables, 100) is tables  # no more customers than the cap
    assert features.customer_sample(tables, 0) is tables
    sampled = features.customer_sample(tables, 30, seed=7)
    kept = set(sampled["customers"].to_pandas().customer_id)
    assert len(kept) == 30 and kept <= set(ids)
    got_orders = sampled["orders"].to_pandas()
    assert (
        set(got_orders.customer_id) == kept and len(got_orders) == 90
    )  # every order of a kept customer
    # no customer key: the lines of the kept customers' orders
    got_items = sampled["order_items"].to_pandas()
    assert set(got_items.order_id) == {"o1", "o2"} & set(got_orders.order_id)
    copies = features.customer_sample(tables, 30, seed=7, materialize=True)
    for name in tables:
        assert_frame_equal(
            copies[name].to_pandas().sort_values(list(tables[name].columns), ignore_index=True),
            sampled[name].to_pandas().sort_values(list(tables[name].columns), ignore_index=True),
        )
    temporary = {t for t in con.list_tables() if t.startswith("ibis_cached")}
    assert len(temporary) == 3  # the copies are temporary tables of the store's session
    features.release_tables(copies)
    assert set(con.list_tables()) & temporary == set()
    # a sample of most customers is not worth a copy: the same rows, read from the tables
    most = features.customer_sample(tables, 80, seed=7, materialize=True)
    assert not any(isinstance(t, ibis.expr.types.CachedTable) for t in most.values())
    assert most["customers"].count().to_pandas() == 80
    assert not {t for t in con.list_tables() if t.startswith("ibis_cached")}
    again = set(features.customer_sample(tables, 30, seed=7)["customers"].to_pandas().customer_id)
    other = set(features.customer_sample(tables, 30, seed=8)["customers"].to_pandas().customer_id)
    assert again == kept and other != kept
    with pytest.raises(ValueError, match="customer_id"):
        features.customer_sample({"orders": items}, 1)
    with pytest.raises(ValueError, match="'customers' or 'orders'"):
        features.customer_sample({"order_items": items}, 1)
