"""Property-based tests: cleaning random input never crashes and always accounts for every row."""

import datetime as dt

import ibis
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_analytics import clean
from crm_analytics.schemas import TABLES

SETTINGS = clean.CleanSettings.build(as_of=dt.date(2025, 12, 31))

# text as it arrives from files: any Unicode (CJK, emoji, control characters, full-width digits), empty
# strings, and values that look almost right
noise = st.text(max_size=12)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(10**12), 10**12).map(str),
    st.decimals(allow_nan=False, places=2).map(lambda d: f"¥{d:,}"),
    st.sampled_from(["1,020.00", "-3", "1e400", "0x10", "١٢٣", "１２３", " 7 ", "NaN", ""]),
)
dates = st.one_of(
    st.datetimes(dt.datetime(1800, 1, 1), dt.datetime(2100, 1, 1)).map(str),
    st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(lambda d: d.strftime("%Y/%m/%d")),
    st.sampled_from(
        ["2025-02-30", "2025年1月2日", "31.12.2024", "20250101", "2025-01-01T10:00:00+08:00"]
    ),
)
ids = st.sampled_from(["C1", "C2", "C3", "O1", "O2", "", " C1 ", "c1"]) | noise
value = st.none() | noise | numbers | dates


def _rows(table, columns):
    special = {"customer_id": ids, "order_id": ids, "amount": numbers, "unit_price": numbers,
               "quantity": numbers, "order_ts": dates, "signup_date": dates, "birth_date": dates}  # fmt: skip
    return st.lists(st.fixed_dictionaries({c: st.none() | special.get(c, value) for c in columns}),
                    max_size=8)  # fmt: skip


def _load(con, table, rows):
    cols = TABLES[table].columns
    frame = pd.DataFrame(rows, columns=cols).astype(object)
    frame = frame.where(frame.notna(), None)
    frame["_source"] = f"{table}.csv"
    frame["_source_row"] = range(1, len(frame) + 1)
    schema = ibis.schema(
        {**{c: "string" for c in cols}, "_source": "string", "_source_row": "int64"}
    )
    con.create_table(f"raw_{table}", ibis.memtable(frame, schema=schema), overwrite=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    customers=_rows("customers", TABLES["customers"].columns),
    orders=_rows("orders", TABLES["orders"].columns),
    items=_rows("order_items", TABLES["order_items"].columns),
)
def test_cleaning_random_values_accounts_for_every_row(customers, orders, items):
    con = ibis.duckdb.connect()
    given_rows = {"customers": customers, "orders": orders, "order_items": items}
    for table in TABLES:
        _load(con, table, given_rows.get(table, []))
    acc = clean.clean_all(con, SETTINGS).set_index("table")  # no unhandled exception
    quarantine = con.table("quarantine").to_pandas()
    for table in TABLES:
        a = acc.loc[table]
        assert a.input == len(given_rows.get(table, []))
        assert a.input == a.kept + a.duplicates + a.merged + a.quarantined
        assert a.kept == con.table(table).count().to_pyarrow().as_py()
        assert a.quarantined == (quarantine.table == table).sum()
        # every quarantined row says where it came from and why
        q = quarantine[quarantine.table == table]
        assert q._source_row.between(1, max(a.input, 1)).all() and q.reason.str.len().gt(0).all()
    con.disconnect()
