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
    special = {"customer_id": ids, "order_id": ids, "ticket_id": ids, "amount": numbers,
               "unit_price": numbers, "quantity": numbers, "nps": numbers, "csat": numbers,
               "satisfaction": numbers, "order_ts": dates, "signup_date": dates,
               "birth_date": dates, "ts": dates, "opened_at": dates, "closed_at": dates,
               "answered_at": dates}  # fmt: skip
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
@given(given_rows=st.fixed_dictionaries({t: _rows(t, TABLES[t].columns) for t in TABLES}))
def test_cleaning_random_values_accounts_for_every_row(given_rows):
    con = ibis.duckdb.connect()
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


# text a CRM export may hold: any character the Chinese encodings can carry, quotes, delimiters and
# line breaks inside values, empty values
cell = st.text(st.characters(codec="gb18030", exclude_categories=("Cs", "Cc")) | st.sampled_from(
    ['"', ",", ";", "\t", "\n", "\r", " "]), max_size=10)  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    records=st.lists(st.lists(cell, min_size=3, max_size=3), max_size=12),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16"]),
    delimiter=st.sampled_from([",", ";", "\t"]),
    # Windows line ends (a CR in a value is then quoted), or Unix ones with every value quoted (a
    # lone CR left unquoted would end the line, as it does in a file with Windows line ends)
    line_end=st.sampled_from(["\r\n", "\n"]),
)
def test_random_text_files_in_any_encoding_are_read_back_exactly(
    tmp_path, records, encoding, delimiter, line_end
):
    """CSV files of random text: each record is read back as written, or rejected with its row number."""
    import csv
    import uuid

    from crm_analytics import collect

    columns = ["customer_id", "answered_at", "comment"]
    records = [[v.encode(encoding, "ignore").decode(encoding) for v in r] for r in records]
    path = tmp_path / f"surveys-{uuid.uuid4().hex[:8]}.csv"
    with path.open("w", encoding=encoding, newline="") as fh:
        quoting = csv.QUOTE_MINIMAL if line_end == "\r\n" else csv.QUOTE_ALL
        w = csv.writer(fh, delimiter=delimiter, lineterminator=line_end, quoting=quoting)
        w.writerow(columns)
        w.writerows(records)
    con = ibis.duckdb.connect()
    spec = {"kind": "csv", "path": str(path), "encoding": "auto", "delimiter": delimiter}
    files = collect.collect_sources(con, {"surveys": spec})
    raw = con.table("raw_surveys").to_pandas().sort_values("_source_row")
    rejects = con.table("raw_rejects").to_pandas()
    assert files.rows.tolist() == [len(records)]  # every record counted once
    assert len(raw) + len(rejects) == len(records)  # kept or rejected, nothing lost
    assert rejects.reason.str.len().gt(0).all()
    kept = set(raw._source_row)
    assert kept.isdisjoint(rejects._source_row) and kept | set(rejects._source_row) == set(
        range(1, len(records) + 1)
    )
    for row in raw.to_dict("records"):
        # an empty field is NULL, as DuckDB reads it; every other value exactly as written
        written = [v if v != "" else None for v in records[row["_source_row"] - 1]]
        assert [row[c] for c in columns] == written, (encoding, row)
    con.disconnect()
