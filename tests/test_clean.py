import datetime as dt

import ibis
import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import clean, collect
from crm_analytics.generate import source_specs
from crm_analytics.schemas import TABLES

AS_OF = dt.date(2025, 12, 31)
SETTINGS = clean.CleanSettings.build(as_of=AS_OF)


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
    {"customer_id": "C1", "name": " 王 伟\u3000", "email": " Wang@QQ.com ", "gender": "男",
     "signup_date": "2024-01-05", "consent_marketing": "是", "country": "cn", "phone": "138-1234-5678"},
    {"customer_id": "C2", "signup_date": "2024/02/01", "gender": "female", "consent_marketing": "no",
     "phone": "12345", "email": "not-an-email", "birth_date": "1850-01-01"},
    {"customer_id": "C3", "signup_date": "not a date"},
    {"customer_id": "C2", "signup_date": "2024-03-01"},  # key repeats with other content
    {"customer_id": "C4", "signup_date": "2030-01-01"},  # future
]  # fmt: skip
ORDERS = [
    {"order_id": "O1", "customer_id": "C1", "order_ts": "2025-01-01 10:00:00", "amount": "10.5",
     "currency": "cny", "status": "PAID", "channel": "App"},
    {"order_id": "O1", "customer_id": "C1", "order_ts": "2025-01-01 10:00:00", "amount": "10.5",
     "currency": "cny", "status": "PAID", "channel": "App"},  # exact duplicate row
    {"order_id": "O2", "customer_id": "C1", "order_ts": "2025-01-02T02:00:00Z", "amount": "-3",
     "currency": "CNY", "status": "paid"},  # a refund; UTC time
    {"order_id": "O3", "customer_id": "C3", "order_ts": "2025-01-03 10:00:00", "amount": "7",
     "currency": "CNY", "status": "paid"},  # customer C3 was quarantined
    {"order_id": "O4", "customer_id": "C2", "order_ts": "2025-01-04 10:00:00", "amount": "8",
     "currency": "CNY", "status": "shipped"},
    {"order_id": "O5", "customer_id": "C2", "order_ts": "2025-01-05 10:00:00", "amount": "abc",
     "currency": "CNY", "status": "paid"},
    {"order_id": "O6", "customer_id": "C2", "order_ts": "2025/01/06 10:00:00", "amount": "¥1,020.00",
     "currency": "CNY", "status": "refunded", "region": " East "},
]  # fmt: skip
ITEMS = [
    {"order_id": "O1", "sku": "A", "category": " 电子产品", "quantity": "1", "unit_price": "10.5"},
    {"order_id": "O3", "sku": "B", "category": "Fashion", "quantity": "1", "unit_price": "3"},
    {"order_id": "O6", "sku": "C", "category": "gadgets", "quantity": "1.5", "unit_price": "20"},
    {"order_id": "O6", "sku": "D", "category": "HOME", "quantity": "2", "unit_price": "5"},
]  # fmt: skip


@pytest.fixture()
def cleaned(duck):
    _all_raw(duck, customers=CUSTOMERS, orders=ORDERS, order_items=ITEMS)
    acc = clean.clean_all(duck, SETTINGS)
    return duck, acc


def test_row_accounting_adds_up(cleaned):
    _, acc = cleaned
    got = acc.set_index("table").loc[["customers", "orders", "order_items"]].reset_index()
    expected = pd.DataFrame(
        {
            "table": ["customers", "orders", "order_items"],
            "input": [5, 7, 4],
            "kept": [2, 3, 2],
            "duplicates": [0, 1, 0],
            "merged": [0, 0, 0],
            "quarantined": [3, 3, 2],
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
    assert c.email.tolist() == ["wang@qq.com", None]  # the invalid address is cleared
    assert c.phone.tolist() == ["+8613812345678", None]
    assert c.gender.tolist() == ["M", "F"]
    assert c.consent_marketing.tolist() == [True, False]
    assert c.country.tolist() == ["CN", None]
    assert c.birth_date.isna().all()  # 1850 is implausible: cleared
    assert list(pd.to_datetime(c.signup_date)) == [
        pd.Timestamp("2024-01-05"),
        pd.Timestamp("2024-02-01"),
    ]
    o = con.table("orders").order_by("order_id").to_pandas()
    assert o.order_id.tolist() == ["O1", "O2", "O6"]
    assert o.status.tolist() == ["paid", "refunded", "refunded"]  # the negative amount is a refund
    assert o.amount.tolist() == [10.5, 3.0, 1020.0]
    assert o.currency.tolist() == ["CNY"] * 3
    assert list(o.order_ts) == [
        pd.Timestamp("2025-01-01 10:00"),
        pd.Timestamp("2025-01-02 10:00"),  # 02:00 UTC is 10:00 in Asia/Shanghai
        pd.Timestamp("2025-01-06 10:00"),
    ]
    assert o.channel.tolist() == ["app", "app", "app"]  # imputed with the mode, and flagged
    assert o.channel_missing.tolist() == [False, True, True]
    assert o.region.tolist() == [None, None, "East"]
    assert "amount_outlier" in o.columns
    items = con.table("order_items").order_by("sku").to_pandas()
    assert items.category.tolist() == ["electronics", "home"]
    assert items.quantity.tolist() == [1, 2]


def test_value_fixes_and_missing_counts(cleaned):
    con, _ = cleaned
    fixes = con.table("value_fixes").to_pandas().set_index(["table", "fix"]).rows
    assert fixes["customers", "email: invalid, cleared"] == 1
    assert fixes["customers", "phone: invalid, cleared"] == 1
    assert fixes["customers", "birth_date: invalid, cleared"] == 1
    assert fixes["orders", "amount: negative, booked as a refund"] == 1
    missing = con.table("missing_values").to_pandas().set_index(["table", "column"])
    assert missing.loc[
        ("orders", "channel"), ["strategy", "missing_before", "missing_after"]
    ].tolist() == [
        "impute_mode",
        2,
        0,
    ]
    assert missing.loc[
        ("orders", "region"), ["strategy", "missing_before", "missing_after"]
    ].tolist() == [
        "flag",
        2,
        2,
    ]


def test_summaries(cleaned):
    con, _ = cleaned
    s = clean.quarantine_summary(con)
    assert s.rows.sum() == 8
    assert "value" not in s.columns  # counts only, never raw values
    assert clean.unmapped_categories(con).empty
    assert clean.row_accounting(con).accounted.all()


def test_negative_amounts_can_be_quarantined(duck):
    _all_raw(duck, customers=CUSTOMERS, orders=ORDERS, order_items=ITEMS)
    clean.clean_all(duck, clean.CleanSettings.build(as_of=AS_OF, negative_amounts="quarantine"))
    q = duck.table("quarantine").filter(lambda t: t.table == "orders").to_pandas()
    assert "amount: below minimum 0" in set(q.reason)


def test_currency_conversion_and_unknown_currency(duck):
    orders = [
        {"order_id": "A", "customer_id": "C1", "order_ts": "2025-01-01", "amount": "10", "currency": "usd",
         "status": "paid"},
        {"order_id": "B", "customer_id": "C1", "order_ts": "2025-01-01", "amount": "10", "currency": "EUR",
         "status": "paid"},
    ]  # fmt: skip
    _all_raw(duck, customers=CUSTOMERS[:1], orders=orders)
    settings = clean.CleanSettings.build(as_of=AS_OF, currency_rates={"CNY": 1, "USD": 7.1})
    clean.clean_all(duck, settings)
    o = duck.table("orders").to_pandas()
    assert o[
        ["order_id", "amount", "currency", "amount_source", "currency_source"]
    ].values.tolist() == [["A", 71.0, "CNY", 10.0, "USD"]]
    q = duck.table("quarantine").to_pandas()
    assert q.reason.tolist() == ["currency: no exchange rate (add it to currency_rates)"]


def test_unmapped_category_reported(duck):
    _all_raw(
        duck,
        orders=[{"order_id": "O1", "customer_id": "C1", "order_ts": "2025-01-01", "amount": "1", "currency": "CNY",
                 "status": "paid"}],
        customers=[{"customer_id": "C1", "signup_date": "2024-01-01"}],
        order_items=[{"order_id": "O1", "sku": "S", "category": "Gadgets ", "quantity": "1", "unit_price": "1"}],
    )  # fmt: skip
    clean.clean_all(duck, SETTINGS)
    assert_frame_equal(
        clean.unmapped_categories(duck),
        pd.DataFrame({"category": ["gadgets"], "rows": [1]}),
        check_dtype=False,
    )


AMOUNTS = [100.0, 110.0, 95.0, 105.0, 98.0, 102.0, 120.0, 90.0, 100_000.0]


@pytest.mark.parametrize("method", ["mad", "iqr"])
def test_outlier_bounds(method):
    t = ibis.memtable({"amount": AMOUNTS})
    lo, hi = clean.outlier_bounds(t, "amount", method, 3.0, log=True)
    assert lo < 90 and 120 < hi < 100_000
    got = t.mutate(out=clean.outside(t.amount, lo, hi)).to_pandas()
    assert got.out.tolist() == [False] * 8 + [True]
    with pytest.raises(ValueError, match="'x'"):
        clean.outlier_bounds(t, "x")
    with pytest.raises(ValueError, match="'mad' or 'iqr'"):
        clean.outlier_bounds(t, "amount", "zscore")


def test_outlier_bounds_are_the_robust_statistics():
    values = np.log1p(np.array(AMOUNTS))
    median = np.median(values)
    half = np.median(np.abs(values - median)) * 1.4826 * 3.0
    lo, hi = clean.outlier_bounds(
        ibis.memtable({"amount": AMOUNTS}), "amount", "mad", 3.0, log=True
    )
    assert lo == pytest.approx(np.expm1(median - half)) and hi == pytest.approx(
        np.expm1(median + half)
    )
    q1, q3 = np.quantile(AMOUNTS, [0.25, 0.75])
    lo, hi = clean.outlier_bounds(ibis.memtable({"amount": AMOUNTS}), "amount", "iqr", 1.5)
    assert (lo, hi) == pytest.approx((q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)))


def test_no_value_gives_no_bounds_and_no_outlier():
    t = ibis.memtable({"amount": [None, None]}, schema={"amount": "float64"})
    assert clean.outlier_bounds(t, "amount") == (None, None)
    assert t.mutate(out=clean.outside(t.amount, None, None)).to_pandas().out.tolist() == [
        False,
        False,
    ]


def _orders(amounts):
    return [
        {"order_id": f"O{i}", "customer_id": "C1", "order_ts": "2025-01-01", "amount": str(a), "currency": "CNY",
         "status": "paid"}
        for i, a in enumerate(amounts)
    ]  # fmt: skip


def test_outlier_actions_cap_and_quarantine(duck):
    _all_raw(duck, customers=CUSTOMERS[:1], orders=_orders(AMOUNTS))
    cap = {"orders.amount": {"method": "mad", "threshold": 3.0, "log": True, "action": "cap"}}
    clean.clean_all(duck, clean.CleanSettings.build(as_of=AS_OF, outliers=cap))
    o = duck.table("orders").order_by("order_id").to_pandas()
    assert len(o) == 9 and o.amount_outlier.sum() == 1
    assert 120 < o.amount.max() < 1000  # capped at the upper bound
    quarantine = {
        "orders.amount": {"method": "mad", "threshold": 3.0, "log": True, "action": "quarantine"}
    }
    acc = clean.clean_all(duck, clean.CleanSettings.build(as_of=AS_OF, outliers=quarantine))
    assert acc.set_index("table").loc["orders", ["kept", "quarantined"]].tolist() == [8, 1]
    assert duck.table("quarantine").reason.to_pandas().tolist() == ["amount: outlier (mad rule)"]


def test_missing_strategies_impute_median_and_drop(duck):
    surveys = [
        {"customer_id": "C1", "answered_at": "2025-01-01", "nps": n, "csat": c}
        for n, c in [("2", "1"), ("6", None), ("10", "5"), (None, "4")]
    ]
    _all_raw(duck, customers=CUSTOMERS[:1], surveys=surveys)
    settings = clean.CleanSettings.build(
        as_of=AS_OF, missing={"surveys.nps": "impute_median", "surveys.csat": "drop"}
    )
    acc = clean.clean_all(duck, settings)
    assert acc.set_index("table").loc["surveys", ["kept", "quarantined"]].tolist() == [3, 1]
    s = duck.table("surveys").order_by("answered_at").to_pandas()
    assert sorted(s.nps.tolist()) == [
        2,
        6,
        10,
    ]  # the missing nps gets the median of the kept 2 and 10
    assert s.nps_missing.sum() == 1
    q = duck.table("quarantine").to_pandas()
    assert q.reason.tolist() == ["csat: missing (strategy drop)"]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="negative_amounts"):
        clean.CleanSettings.build(negative_amounts="ignore")
    with pytest.raises(ValueError, match="unknown strategy 'guess'"):
        clean.CleanSettings.build(missing={"orders.region": "guess"})
    with pytest.raises(ValueError, match="has no column 'nope'"):
        clean.CleanSettings.build(missing={"orders.nope": "flag"})
    with pytest.raises(ValueError, match="base currency 'EUR'"):
        clean.CleanSettings.build(base_currency="EUR")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13812345678", "+8613812345678"),
        ("+86 138 1234 5678", "+8613812345678"),
        ("0086-138-1234-5678", "+8613812345678"),
        ("010 6552 9988", "+861065529988"),  # Beijing landline, through phonenumbers
        ("+44 20 7946 0958", "+442079460958"),
        ("12345", None),
        (None, None),
    ],
)
def test_standardise_phone(duck, raw, expected):
    clean.register_functions(duck)
    t = ibis.memtable({"p": [raw]}, schema={"p": "string"})
    assert duck.to_pandas(t.select(v=clean.standardise_phone(t.p, "CN"))).v.tolist() == [expected]


def test_standardise_names_and_emails(duck):
    clean.register_functions(duck)
    t = ibis.memtable(
        {"n": ["  张 三丰 ", "ＡＢＣ　Ｄｅｆ", "Li  Wei"], "e": ["A.B@QQ.COM ", "x@y", "李@qq.com"]}
    )
    got = duck.to_pandas(t.select(n=clean.standardise_name(t.n), e=clean.standardise_email(t.e)))
    assert got.n.tolist() == ["张三丰", "ABC Def", "Li Wei"]
    assert got.e.tolist() == ["a.b@qq.com", None, None]


def test_parse_numbers_and_timestamps(duck):
    t = ibis.memtable(
        {
            "x": ["1,234.50", "¥12", "abc", "1,2"],
            "ts": ["2025-01-01T00:00:00+08:00", "2025年03月04日", "2025-02-30", "04.03.2025"],
        }
    )
    got = duck.to_pandas(
        t.select(x=clean.parse_number(t.x), ts=clean.parse_timestamp(t.ts, SETTINGS))
    )
    assert got.x.tolist()[:2] == [1234.5, 12.0] and got.x.isna().tolist()[2:] == [True, True]
    assert got.ts.tolist()[0] == pd.Timestamp("2025-01-01 00:00")
    assert got.ts.tolist()[1] == pd.Timestamp("2025-03-04")
    assert pd.isna(got.ts.tolist()[2])  # impossible date
    assert got.ts.tolist()[3] == pd.Timestamp("2025-03-04")


def test_generated_dataset_is_fully_accounted(tiny_dataset, duck):
    sources = source_specs(tiny_dataset)
    files = collect.collect_sources(duck, sources)
    acc = clean.clean_all(duck, clean.CleanSettings.build())
    assert (acc.input == acc.kept + acc.duplicates + acc.merged + acc.quarantined).all()
    read = files.groupby("table").rows.sum()
    assert (acc.set_index("table").input.loc[read.index] == read).all()
    # injected exact duplicate rows are exactly the duplicates found
    defects = pd.read_csv(tiny_dataset / "truth" / "defects.csv")
    assert (
        acc.set_index("table").loc["orders", "duplicates"]
        == (defects.defect == "exact_duplicate_row").sum()
    )
    # every injected negative amount that survived the other rules is booked as a refund
    kept = set(duck.table("orders").order_id.to_pandas())
    negative = defects[(defects.defect == "negative_amount") & defects.key.isin(kept)]
    fixes = duck.table("value_fixes").to_pandas().set_index("fix").rows
    assert fixes["amount: negative, booked as a refund"] == len(negative) > 0
    # amounts multiplied by 1000 are flagged, whether or not they look extreme for an order
    absurd = set(defects.key[defects.defect == "absurd_amount"]) & kept
    orders = duck.table("orders").to_pandas()
    flagged = set(orders.order_id[orders.amount_outlier])
    assert absurd and absurd <= flagged
    unit = fixes[
        "amount: over 20x or under 1/20 of its lines' total (unit error), flagged as outlier"
    ]
    assert 0 < unit <= len(absurd)  # the rest were already outliers by the MAD rule


def test_amount_unit_errors_compare_the_amount_as_written_with_the_lines():
    orders = pd.DataFrame(
        {
            "order_id": ["ok", "cents", "zeros", "discount", "no_lines", "free", "usd"],
            "amount": [100.0, 1.0, 100_000.0, 60.0, 5.0, 0.0, 710.0],
            # the usd order's amount was converted (x7.1); its lines are in dollars
            "amount_source": [100.0, 1.0, 100_000.0, 60.0, 5.0, 0.0, 100.0],
        }
    )
    lines = pd.DataFrame(
        {
            "order_id": ["ok", "ok", "cents", "zeros", "discount", "free", "usd"],
            "quantity": [1, 2, 1, 1, 1, 1, 1],
            "unit_price": [40.0, 30.0, 100.0, 100.0, 100.0, 0.0, 100.0],
        }
    )
    got = clean.amount_unit_errors(ibis.memtable(orders), ibis.memtable(lines), 20.0).to_pandas()
    got = got.sort_values("order_id", ignore_index=True)
    expected = pd.DataFrame(
        {
            "order_id": ["cents", "zeros"],
            "stated": [1.0, 100_000.0],
            "lines_total": [100.0, 100.0],
            "ratio": [0.01, 1000.0],
        }
    )
    assert_frame_equal(got, expected, check_dtype=False)
    with pytest.raises(ValueError, match="unit_price"):
        clean.amount_unit_errors(
            ibis.memtable(orders), ibis.memtable(lines.drop(columns="unit_price")), 20
        )
    with pytest.raises(ValueError, match="above 1"):
        clean.CleanSettings.build(amount_line_ratio=0.5)


def test_unit_errors_are_flagged_in_the_store_and_counted(duck):
    _all_raw(
        duck,
        customers=[{"customer_id": "C1", "signup_date": "2024-01-05"}],
        orders=[
            {
                "order_id": f"O{i}",
                "customer_id": "C1",
                "order_ts": "2025-03-01",
                "amount": amount,
                "currency": "CNY",
                "status": "paid",
            }
            for i, amount in enumerate(["100", "100000", "90", "110"])
        ],
        order_items=[
            {
                "order_id": f"O{i}",
                "sku": "S",
                "category": "home",
                "quantity": "1",
                "unit_price": "100",
            }
            for i in range(4)
        ],
    )
    no_rule = clean.CleanSettings.build(
        as_of=AS_OF, outliers={"orders.amount": {"action": "quarantine", "threshold": 1e9}}
    )
    clean.clean_all(duck, no_rule)  # no flag column from an outlier rule: the check adds it
    orders = duck.table("orders").to_pandas().set_index("order_id")
    assert orders.amount_outlier.to_dict() == {"O0": False, "O1": True, "O2": False, "O3": False}
    fixes = duck.table("value_fixes").to_pandas()
    assert fixes[fixes.fix.str.contains("unit error")].rows.tolist() == [1]
    off = clean.CleanSettings.build(
        as_of=AS_OF,
        outliers={"orders.amount": {"action": "quarantine", "threshold": 1e9}},
        amount_line_ratio=0,
    )
    clean.clean_all(duck, off)  # the check is off: no flag, not even the column
    assert "amount_outlier" not in duck.table("orders").columns


def test_later_repeats_are_all_but_the_first_by_source_and_row(duck):
    rows = pd.DataFrame(
        {
            "_source": ["b.csv", "a.csv", "a.csv", "a.csv", "a.csv", "a.csv", "a.csv"],
            "_source_row": [1, 9, 2, 3, 4, 5, 6],
            "k": ["x", "x", "x", "y", None, None, "z"],
            "v": [1, 1, 1, 1, None, None, 2],
        }
    )
    t = duck.create_table("rows", rows)
    got = clean.later_repeats(t, ["k", "v"]).to_pandas()
    got = got.sort_values(["_source", "_source_row"], ignore_index=True)
    # x/1 first at a.csv row 2; missing values are equal to each other
    expected = pd.DataFrame({"_source": ["a.csv", "a.csv", "b.csv"], "_source_row": [5, 9, 1]})
    assert_frame_equal(got, expected, check_dtype=False)
    # compared only among the rows a condition keeps
    got = clean.later_repeats(t, ["k"], where=t._source_row != 2).to_pandas()
    got = got.sort_values(["_source", "_source_row"], ignore_index=True)
    expected = pd.DataFrame({"_source": ["a.csv", "b.csv"], "_source_row": [5, 1]})
    assert_frame_equal(got, expected, check_dtype=False)
    flagged = clean.flag_later_repeats(t, ["k", "v"], "_dup").to_pandas()
    flagged = flagged.sort_values(["_source", "_source_row"], ignore_index=True)
    assert flagged._dup.tolist() == [False, False, False, True, False, True, True]
    with pytest.raises(ValueError, match="'nope'"):
        clean.later_repeats(t, ["nope"])


def test_text_trims_white_space_at_the_ends_and_full_width_spaces(duck):
    values = [" a", "b\t", "\nc", "d e", "f\tg", "h\u3000", "   ", "", None, "i"]
    t = duck.create_table("texts", pd.DataFrame({"v": values}))
    got = t.select(v=clean._text(t.v)).to_pandas().v.tolist()
    assert got == ["a", "b", "c", "d e", "f\tg", "h", None, None, None, "i"]


def test_key_repeats_and_missing_parents_judge_only_rows_still_valid(duck):
    customers = [{"customer_id": "C1", "signup_date": "2024-01-05"}]
    paid = {"order_ts": "2025-01-01 10:00:00", "currency": "CNY", "status": "paid"}
    orders = [
        {"order_id": "O7", "customer_id": "C1", "amount": "1", **paid},
        {"order_id": "O7", "customer_id": "C9", "amount": "2", **paid},  # repeat and orphan
        {"order_id": "O8", "customer_id": "C1", "amount": "abc", **paid},  # invalid first
        {"order_id": "O8", "customer_id": "C1", "amount": "3", **paid},  # so this one is kept
        {"order_id": "O9", "customer_id": "C9", "amount": "4", **paid},  # orphan only
        {"order_id": " O7 ", "customer_id": "C1", "amount": "5", **paid},  # repeat once trimmed
    ]
    _all_raw(duck, customers=customers, orders=orders)
    clean.clean_all(duck, SETTINGS)
    kept = duck.table("orders").order_by("_source_row").to_pandas()
    assert kept[["order_id", "amount"]].values.tolist() == [["O7", 1.0], ["O8", 3.0]]
    q = duck.table("quarantine").filter(ibis._.table == "orders").order_by("_source_row")
    assert q.select("_source_row", "reason").to_pandas().values.tolist() == [
        [2, "order_id: duplicate key, first kept"],
        [3, "amount: cannot parse as float64"],
        [5, "customer_id: no valid customers row with this customer_id"],
        [6, "order_id: duplicate key, first kept"],
    ]


EVENTS = [
    {"customer_id": "C1", "ts": "2025-01-01 10:00:00", "event_type": "VIEW", "page": "/p/1", "category": "fashion"},
    {"customer_id": "C1", "ts": "2025-01-01 10:00:00", "event_type": "VIEW", "page": "/p/1", "category": "fashion"},
    {"customer_id": "C9", "ts": "2025-01-02 10:00:00", "event_type": "view"},  # no such customer
    {"customer_id": "C2", "ts": "yesterday", "event_type": "cart_add"},  # no time
    {"customer_id": "C2", "ts": "2025-01-03", "event_type": "Cart_Add", "page": " /cart "},
]  # fmt: skip


def test_kept_row_statistics_ignore_rejected_rows(duck):
    """Outlier bounds and imputed values are statistics of the kept rows only: a repeated
    key and orders of an unknown customer, written and then rejected, do not count."""
    paid = {
        "customer_id": "C1",
        "order_ts": "2025-01-01 10:00:00",
        "currency": "CNY",
        "status": "paid",
    }
    orders = [{**o, "channel": "app"} for o in _orders(AMOUNTS[:8])]  # O0..O7: normal amounts
    orders[0]["channel"] = ""  # missing: imputed with the kept rows' mode, app
    orders += [
        {**paid, "order_id": "O0", "amount": "100000", "channel": "online"},  # repeated key
        *[{**paid, "order_id": f"X{i}", "customer_id": "C9", "amount": "100000", "channel": "online"}
          for i in range(9)],  # no such customer
        {**paid, "order_id": "O8", "amount": "100000", "channel": "store"},  # kept, the outlier
    ]  # fmt: skip
    _all_raw(duck, customers=CUSTOMERS[:1], orders=orders)
    settings = clean.CleanSettings.build(
        as_of=AS_OF,
        outliers={"orders.amount": {"method": "mad", "threshold": 3.0, "log": True}},
        missing={"orders.channel": "impute_mode"},
    )
    acc = clean.clean_all(duck, settings).set_index("table")
    assert acc.loc["orders", ["input", "kept", "quarantined"]].tolist() == [19, 9, 10]
    o = duck.table("orders").order_by("_source_row").to_pandas()
    # with the ten rejected rows of 100,000 counted, the median would be 100,000 itself
    assert o.order_id[o.amount_outlier].tolist() == ["O8"]
    assert o.channel.tolist() == ["app"] * 8 + ["store"] and o.channel_missing.sum() == 1
    assert list(o.columns) == [
        *TABLES["orders"].columns, "amount_source", "currency_source", "_source", "_source_row",
        "amount_outlier", "channel_missing",
    ]  # fmt: skip


def test_rows_judged_as_written_keep_only_the_table_columns(duck):
    """Events (no key, no statistic) are judged as they are written; the rejected rows
    are deleted and the judgement columns dropped after."""
    _all_raw(duck, customers=CUSTOMERS, events=EVENTS)
    acc = clean.clean_all(duck, SETTINGS).set_index("table")
    assert acc.loc["events", ["kept", "duplicates", "quarantined"]].tolist() == [2, 1, 2]
    events = duck.table("events").order_by("_source_row").to_pandas()
    assert list(events.columns) == [*TABLES["events"].columns, "_source", "_source_row"]
    assert events._source_row.tolist() == [1, 5]
    q = duck.table("quarantine").filter(ibis._.table == "events").order_by("_source_row")
    assert q.select("_source_row", "column").to_pandas().values.tolist() == [
        [3, "customer_id"],
        [4, "ts"],
    ]
