import datetime as dt

import ibis
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import clean
from crm_analytics.schemas import TABLES

AS_OF = dt.date(2025, 12, 31)


def _raw(con, table, rows):
    """Create raw_<table> from text rows (missing columns become NULL) with lineage."""
    cols = TABLES[table].columns
    frame = pd.DataFrame(rows).reindex(columns=cols).astype(object)
    frame = frame.where(frame.notna(), None)
    frame["_source"] = f"{table}.csv"
    frame["_source_row"] = range(1, len(frame) + 1)
    schema = ibis.schema(
        {**{c: "string" for c in cols}, "_source": "string", "_source_row": "int64"}
    )
    con.create_table(f"raw_{table}", ibis.memtable(frame, schema=schema), overwrite=True)


def _all_raw(con, **tables):
    for t in TABLES:
        _raw(con, t, tables.get(t, []))


CUSTOMERS = [
    {
        "customer_id": "C1",
        "name": " 王伟\u3000",
        "email": " Wang@QQ.com ",
        "gender": "男",
        "signup_date": "2024-01-05",
        "consent_marketing": "是",
        "country": "cn",
    },
    {
        "customer_id": "C2",
        "signup_date": "2024-02-01",
        "gender": "female",
        "consent_marketing": "no",
    },
    {"customer_id": "C3", "signup_date": "not a date"},
    {"customer_id": "C2", "signup_date": "2024-03-01"},  # key repeats with other content
    {"customer_id": "C4", "signup_date": "2030-01-01"},  # future
]
ORDERS = [
    {
        "order_id": "O1",
        "customer_id": "C1",
        "order_ts": "2025-01-01 10:00:00",
        "amount": "10.5",
        "currency": "cny",
        "status": "PAID",
        "channel": "App",
    },
    {
        "order_id": "O1",
        "customer_id": "C1",
        "order_ts": "2025-01-01 10:00:00",
        "amount": "10.5",
        "currency": "cny",
        "status": "PAID",
        "channel": "App",
    },  # exact duplicate row
    {
        "order_id": "O2",
        "customer_id": "C1",
        "order_ts": "2025-01-02 10:00:00",
        "amount": "-3",
        "currency": "CNY",
        "status": "paid",
    },
    {
        "order_id": "O3",
        "customer_id": "C3",
        "order_ts": "2025-01-03 10:00:00",
        "amount": "7",
        "currency": "CNY",
        "status": "paid",
    },  # customer C3 was quarantined
    {
        "order_id": "O4",
        "customer_id": "C2",
        "order_ts": "2025-01-04 10:00:00",
        "amount": "8",
        "currency": "CNY",
        "status": "shipped",
    },
    {
        "order_id": "O5",
        "customer_id": "C2",
        "order_ts": "2025-01-05 10:00:00",
        "amount": "abc",
        "currency": "CNY",
        "status": "paid",
    },
    {
        "order_id": "O6",
        "customer_id": "C2",
        "order_ts": "2025-01-06 10:00:00",
        "amount": "20",
        "currency": "CNY",
        "status": "refunded",
        "region": " East ",
    },
]
ITEMS = [
    {"order_id": "O1", "sku": "A", "category": " 电子产品", "quantity": "1", "unit_price": "10.5"},
    {"order_id": "O2", "sku": "B", "category": "Fashion", "quantity": "1", "unit_price": "3"},
    {"order_id": "O6", "sku": "C", "category": "gadgets", "quantity": "1.5", "unit_price": "20"},
    {"order_id": "O6", "sku": "D", "category": "HOME", "quantity": "2", "unit_price": "5"},
]


@pytest.fixture()
def cleaned(duck):
    _all_raw(duck, customers=CUSTOMERS, orders=ORDERS, order_items=ITEMS)
    acc = clean.clean_all(duck, as_of=AS_OF)
    return duck, acc


def test_row_accounting_adds_up(cleaned):
    _, acc = cleaned
    got = acc.set_index("table").loc[["customers", "orders", "order_items"]].reset_index()
    expected = pd.DataFrame(
        {
            "table": ["customers", "orders", "order_items"],
            "input": [5, 7, 4],
            "kept": [2, 2, 2],
            "duplicates": [0, 1, 0],
            "quarantined": [3, 4, 2],
        }
    )
    assert_frame_equal(got, expected, check_dtype=False)


def test_quarantine_reasons_name_row_and_column(cleaned):
    con, _ = cleaned
    q = con.table("quarantine").order_by(["table", "_source_row"]).to_pandas()
    expected = pd.DataFrame(
        [
            ("customers", "customers.csv", 3, "signup_date", "signup_date: cannot parse as date"),
            (
                "customers",
                "customers.csv",
                4,
                "customer_id",
                "customer_id: duplicate key, first kept",
            ),
            (
                "customers",
                "customers.csv",
                5,
                "signup_date",
                "signup_date: in the future (after 2025-12-31)",
            ),
            (
                "order_items",
                "order_items.csv",
                2,
                "order_id",
                "order_id: no valid orders row with this order_id",
            ),
            ("order_items", "order_items.csv", 3, "quantity", "quantity: cannot parse as int64"),
            ("orders", "orders.csv", 3, "amount", "amount: below minimum 0"),
            (
                "orders",
                "orders.csv",
                4,
                "customer_id",
                "customer_id: no valid customers row with this customer_id",
            ),
            ("orders", "orders.csv", 5, "status", "status: not one of paid/refunded/cancelled"),
            ("orders", "orders.csv", 6, "amount", "amount: cannot parse as float64"),
        ],
        columns=["table", "_source", "_source_row", "column", "reason"],
    )
    assert_frame_equal(q, expected, check_dtype=False)


def test_standardised_and_typed_values(cleaned):
    con, _ = cleaned
    c = con.table("customers").order_by("customer_id").to_pandas()
    assert c.name.tolist() == ["王伟", None]
    assert c.email.tolist() == ["wang@qq.com", None]
    assert c.gender.tolist() == ["M", "F"]
    assert c.consent_marketing.tolist() == [True, False]
    assert c.country.tolist() == ["CN", None]
    assert list(pd.to_datetime(c.signup_date)) == [
        pd.Timestamp("2024-01-05"),
        pd.Timestamp("2024-02-01"),
    ]
    o = con.table("orders").order_by("order_id").to_pandas()
    assert o.status.tolist() == ["paid", "refunded"]
    assert o.channel.tolist() == ["app", None]
    assert o.currency.tolist() == ["CNY", "CNY"]
    assert o.region.tolist() == [None, "East"]
    items = con.table("order_items").order_by("sku").to_pandas()
    assert items.category.tolist() == ["electronics", "home"]
    assert items.quantity.tolist() == [1, 2]


def test_summaries(cleaned):
    con, _ = cleaned
    s = clean.quarantine_summary(con)
    assert s.rows.sum() == 9
    assert "value" not in s.columns  # counts only, never raw values
    assert clean.unmapped_categories(con).empty
    acc = clean.row_accounting(con)
    assert acc.accounted.all()


def test_unmapped_category_reported(duck):
    _all_raw(
        duck,
        orders=[
            {
                "order_id": "O1",
                "customer_id": "C1",
                "order_ts": "2025-01-01",
                "amount": "1",
                "currency": "CNY",
                "status": "paid",
            }
        ],
        customers=[{"customer_id": "C1", "signup_date": "2024-01-01"}],
        order_items=[
            {
                "order_id": "O1",
                "sku": "S",
                "category": "Gadgets ",
                "quantity": "1",
                "unit_price": "1",
            }
        ],
    )
    clean.clean_all(duck, as_of=AS_OF)
    assert_frame_equal(
        clean.unmapped_categories(duck),
        pd.DataFrame({"category": ["gadgets"], "rows": [1]}),
        check_dtype=False,
    )


def test_amount_outliers_flagged_not_dropped():
    amounts = [100.0, 110.0, 95.0, 105.0, 98.0, 102.0, 120.0, 90.0, 100_000.0]
    t = ibis.memtable({"amount": amounts})
    got = clean.flag_amount_outliers(t).to_pandas()
    assert len(got) == len(amounts)
    assert got.amount_outlier.tolist() == [False] * 8 + [True]
    with pytest.raises(ValueError, match="'amount'"):
        clean.flag_amount_outliers(ibis.memtable({"x": [1.0]}))


def test_pipeline_dataset_is_fully_accounted(tiny_dataset, duck):
    from crm_analytics import collect

    sources = {
        "customers": {
            "kind": "sql",
            "url": f"sqlite:///{tiny_dataset}/crm.sqlite",
            "table": "customers",
        },
        "orders": {"kind": "csv", "path": f"{tiny_dataset}/orders/*.csv"},
        "order_items": {"kind": "csv", "path": f"{tiny_dataset}/order_items/*.csv"},
        "events": {"kind": "jsonl", "path": f"{tiny_dataset}/events/*.jsonl"},
        "tickets": {"kind": "excel", "path": f"{tiny_dataset}/tickets.xlsx"},
        "surveys": {"kind": "csv", "path": f"{tiny_dataset}/surveys.csv", "encoding": "gbk"},
    }
    files = collect.collect_sources(duck, sources)
    acc = clean.clean_all(duck)
    assert (acc.input == acc.kept + acc.duplicates + acc.quarantined).all()
    read = files.groupby("table").rows.sum()
    assert (acc.set_index("table").input.loc[read.index] == read).all()
    # injected exact duplicate rows are exactly the duplicates found
    defects = pd.read_csv(tiny_dataset / "truth" / "defects.csv")
    assert (
        acc.set_index("table").loc["orders", "duplicates"]
        == (defects.defect == "exact_duplicate_row").sum()
    )
    # every injected negative amount is quarantined
    q = duck.table("quarantine").to_pandas()
    assert (q.reason == "amount: below minimum 0").sum() == (
        defects.defect == "negative_amount"
    ).sum()
