import sqlite3

import ibis
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import collect
from crm_analytics.schemas import TABLES

ORDER_HEADER = "order_id,customer_id,order_ts,amount,currency,status,channel,region\n"


def _orders_csv(path, rows, encoding="utf-8"):
    path.write_text(ORDER_HEADER + "".join(r + "\n" for r in rows), encoding=encoding)
    return path


def test_csv_rows_keep_file_and_row_number(duck, tmp_path):
    _orders_csv(
        tmp_path / "a.csv",
        [
            "O1,C1,2025-01-01 10:00:00,10,CNY,paid,app,East",
            "O2,C2,2025-01-02 10:00:00,oops,CNY,paid,app,East",
        ],
    )
    _orders_csv(tmp_path / "b.csv", ["O3,C1,2025-02-01 10:00:00,5.5,CNY,paid,store,"])
    files = collect.collect_sources(
        duck, {"orders": {"kind": "csv", "path": str(tmp_path / "*.csv")}}
    )
    assert list(files.rows) == [2, 1]
    raw = duck.table("raw_orders").to_pandas().sort_values(["_source", "_source_row"])
    assert list(raw.order_id) == ["O1", "O2", "O3"]
    assert list(raw._source_row) == [1, 2, 1]
    assert raw._source.str.endswith(("a.csv", "a.csv", "b.csv")).all()
    assert raw.loc[raw.order_id == "O2", "amount"].item() == "oops"  # text, typed later
    # every canonical table exists, empty when it has no source
    assert {f"raw_{t}" for t in TABLES} <= set(duck.list_tables())
    assert duck.table("raw_events").count().to_pandas() == 0


def test_each_file_is_fingerprinted_with_its_own_hash(duck, tmp_path, monkeypatch):
    import hashlib
    import time

    real_hash = collect.sha256_file

    def slow_hash(path):  # hashing that lags behind the loading, as for large files
        time.sleep(0.3)
        return real_hash(path)

    monkeypatch.setattr(collect, "sha256_file", slow_hash)
    paths = [_orders_csv(tmp_path / f"{i}.csv", [f"O{i},C1,2025-01-0{i} 10:00:00,1{i},CNY,paid,app,"])
             for i in range(1, 4)]  # fmt: skip
    files = collect.collect_sources(
        duck, {"orders": {"kind": "csv", "path": str(tmp_path / "*.csv")}}
    )
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert list(files.sha256) == expected and len(set(expected)) == 3
    stored = duck.table("source_files").to_pandas()
    assert list(stored.sha256) == expected


def test_missing_required_column_names_file_and_column(duck, tmp_path):
    f = tmp_path / "orders.csv"
    f.write_text("order_id,customer_id,amount\nO1,C1,3\n")
    with pytest.raises(collect.SourceError, match=r"orders\.csv.*order_ts.*currency.*status"):
        collect.collect_sources(duck, {"orders": {"kind": "csv", "path": str(f)}})


def test_column_mapping_and_defaults(duck, tmp_path):
    f = tmp_path / "export.csv"
    f.write_text("OrderNo,Client,When,Total,State\nX1,K9,2025-03-01,12.5,paid\n")
    spec = {
        "kind": "csv",
        "path": str(f),
        "columns": {
            "OrderNo": "order_id",
            "Client": "customer_id",
            "When": "order_ts",
            "Total": "amount",
            "State": "status",
        },
        "defaults": {"currency": "EUR"},
    }
    collect.collect_sources(duck, {"orders": spec})
    got = (
        duck.table("raw_orders")
        .select("order_id", "customer_id", "amount", "currency", "channel")
        .to_pandas()
    )
    expected = pd.DataFrame(
        {
            "order_id": ["X1"],
            "customer_id": ["K9"],
            "amount": ["12.5"],
            "currency": ["EUR"],
            "channel": [None],
        }
    )
    assert_frame_equal(got, expected, check_dtype=False)


@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_chinese_encoded_csv_is_transcoded(duck, tmp_path, encoding):
    f = tmp_path / "surveys.csv"
    f.write_text(
        "customer_id,answered_at,nps,csat,comment\nC1,2025-01-01 09:00:00,9,5,物流很快\n",
        encoding=encoding,
    )
    collect.collect_sources(
        duck, {"surveys": {"kind": "csv", "path": str(f), "encoding": encoding}}
    )
    assert duck.table("raw_surveys").comment.to_pandas().tolist() == ["物流很快"]


def test_undecodable_file_names_byte_offset(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_bytes(b"a,b\n1,\xff\xff\n")
    with pytest.raises(collect.SourceError, match=r"bad\.csv: cannot decode byte \d+ as utf-8"):
        collect.transcode_to_utf8(f, "utf-8", tmp_path / "out.csv")


def test_jsonl_excel_and_sqlite_sources(duck, tmp_path):
    ev = tmp_path / "events.jsonl"
    ev.write_text(
        '{"customer_id": "C1", "ts": "2025-01-01T10:00:00", "event_type": "view"}\n'
        '{"customer_id": "C2", "ts": "2025-01-02T10:00:00", "event_type": "login", "page": "home"}\n'
    )
    tk = tmp_path / "tickets.xlsx"
    pd.DataFrame(
        {
            "ticket_id": ["T1"],
            "customer_id": ["C1"],
            "opened_at": ["2025-01-03 08:00:00"],
            "satisfaction": [4],
        }
    ).to_excel(tk, index=False)
    db = tmp_path / "crm.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("create table people (customer_id text, signup_date text, name text)")
        c.executemany(
            "insert into people values (?,?,?)",
            [("C1", "2024-12-01", "王伟"), ("C2", "2024-12-02", None)],
        )
    files = collect.collect_sources(
        duck,
        {
            "events": {"kind": "jsonl", "path": str(ev)},
            "tickets": {"kind": "excel", "path": str(tk)},
            "customers": {"kind": "sql", "url": f"sqlite:///{db}", "table": "people"},
        },
    )
    assert dict(zip(files.table, files.rows, strict=True)) == {
        "events": 2,
        "tickets": 1,
        "customers": 2,
    }
    cust = duck.table("raw_customers").order_by("customer_id").to_pandas()
    assert list(cust.name) == ["王伟", None]
    assert cust._source.iloc[0].endswith("crm.sqlite#people")
    assert duck.table("raw_tickets").satisfaction.to_pandas().tolist() == ["4"]
    assert duck.table("raw_events").page.to_pandas().tolist() == [None, "home"]


def _collect_raw(sources, through_ibis, monkeypatch):
    """Collect ``sources`` into a fresh store, natively or forced through ibis; the raw tables and
    the readers used."""
    import ibis

    used = []
    native, via_ibis = collect._native_source, collect._load_sql_through_ibis
    with monkeypatch.context() as m:
        m.setattr(collect, "_native_source",
                  (lambda *a: None) if through_ibis else
                  (lambda *a: used.append("native") or native(*a)))  # fmt: skip
        m.setattr(collect, "_load_sql_through_ibis",
                  lambda *a: used.append("ibis") or via_ibis(*a))  # fmt: skip
        con = ibis.duckdb.connect()
        collect.collect_sources(con, sources)
    raw = {t: con.table(f"raw_{t}").to_pandas().sort_values("_source_row", ignore_index=True)
           for t in sources}  # fmt: skip
    attached = con.raw_sql("SELECT database_name FROM duckdb_databases()").fetchall()
    assert not [a for (a,) in attached if a.startswith(collect.SOURCE_ALIAS)]  # detached after
    con.disconnect()
    return raw, used


def test_sqlite_read_by_duckdb_equals_the_ibis_read(tmp_path, monkeypatch):
    db = tmp_path / "crm.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("create table people (customer_id text, signup_date text, name text, "
                  "score real, visits integer)")  # fmt: skip
        c.executemany("insert into people values (?,?,?,?,?)", [
            ("C2", "2024-12-02", None, 1e20, 7), ("C1", "2024-12-01", "王伟", 0.1, None),
            ("C1", "2024-12-01", "Wang Wei", 1.5, 3), ("C3", None, "x", None, -2)])  # fmt: skip
    sources = {"customers": {"kind": "sql", "url": f"sqlite:///{db}", "table": "people",
                             "columns": {"score": "gender", "visits": "city"}}}  # fmt: skip
    native, used = _collect_raw(sources, False, monkeypatch)
    assert used == ["native"]
    through_ibis, used = _collect_raw(sources, True, monkeypatch)
    assert used == ["ibis"]
    assert_frame_equal(native["customers"], through_ibis["customers"])
    c = native["customers"]
    # numbered by key, ties by the other columns; every value as SQLite writes it
    assert list(c.customer_id) == ["C1", "C1", "C2", "C3"] and list(c._source_row) == [1, 2, 3, 4]
    assert list(c.name) == ["Wang Wei", "王伟", None, "x"]
    assert list(c.gender) == ["1.5", "0.1", "1.0e+20", None] and list(c.city) == [
        "3",
        None,
        "7",
        "-2",
    ]


def test_database_sources_fail_with_the_source_named(duck, tmp_path):
    with pytest.raises(
        collect.SourceError, match=r"missing\.sqlite#people: cannot read: no database"
    ):
        collect.collect_sources(duck, {"customers": {
            "kind": "sql", "url": f"sqlite:///{tmp_path / 'missing.sqlite'}", "table": "people"}})  # fmt: skip
    db = tmp_path / "crm.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("create table people (customer_id text)")
    with pytest.raises(collect.SourceError, match=r"crm\.sqlite#staff: cannot read: .*staff"):
        collect.collect_sources(duck, {"customers": {
            "kind": "sql", "url": f"sqlite:///{db}", "table": "staff"}})  # fmt: skip
    # nothing stays attached after a failure
    attached = duck.raw_sql("SELECT database_name FROM duckdb_databases()").fetchall()
    assert not [a for (a,) in attached if a.startswith(collect.SOURCE_ALIAS)]


def test_unknown_table_or_kind(duck):
    with pytest.raises(collect.SourceError, match="unknown table 'sales'"):
        collect.collect_sources(duck, {"sales": {"kind": "csv", "path": "x"}})
    with pytest.raises(collect.SourceError, match="unknown kind 'xml'"):
        collect.collect_sources(duck, {"orders": {"kind": "xml"}})


def test_missing_path_is_an_error(duck, tmp_path):
    with pytest.raises(collect.SourceError, match="matches no file"):
        collect.collect_sources(
            duck, {"orders": {"kind": "csv", "path": str(tmp_path / "none*.csv")}}
        )


def test_cdnow_sample_is_the_real_dataset(duck):
    files = collect.collect_sources(duck, {"orders": {"kind": "cdnow", "variant": "sample"}})
    rows = dict(zip(files.table, files.rows, strict=True))
    # the CDNOW 1/10 sample: 2,357 customers, all first buying in Q1 1997
    assert rows["customers"] == 2357
    assert rows["orders"] == rows["order_items"] > rows["customers"]
    o = duck.table("raw_orders").to_pandas()
    assert o.order_ts.min().startswith("1997-01-01") and o.order_ts.max() < "1998-07-01"
    assert (o.currency == "USD").all()


def test_redact_url_hides_password():
    assert (
        collect.redact_url("postgresql://bob:s3cret@db:5432/crm")
        == "postgresql://bob:***@db:5432/crm"
    )
    assert collect.redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_input_fingerprint_is_order_independent():
    a = pd.DataFrame(
        {"table": ["t", "u"], "source": ["a", "b"], "sha256": ["1", "2"], "rows": [1, 2]}
    )
    assert collect.input_fingerprint(a) == collect.input_fingerprint(a.iloc[::-1])
    b = a.assign(rows=[1, 3])
    assert collect.input_fingerprint(a) != collect.input_fingerprint(b)


def test_telco_is_the_real_ibm_dataset(duck):
    files = collect.collect_sources(duck, {"customers": {"kind": "telco", "as_of": "2020-01-01"}})
    assert files.rows.tolist() == [7043]  # the IBM Telco customer-churn data: 7,043 subscribers
    contracts = duck.table("telco_contracts").to_pandas()
    assert len(contracts) == 7043 and set(contracts.churn) == {"Yes", "No"}
    raw = duck.table("raw_customers").to_pandas().set_index("customer_id")
    first = contracts.iloc[0]
    # signup is the snapshot date minus the tenure in months
    expected = (pd.Timestamp("2020-01-01") - pd.DateOffset(months=int(first.tenure))).strftime(
        "%Y-%m-%d"
    )
    assert raw.loc[first.customer_id, "signup_date"] == expected


def test_telco_withholds_a_suppressed_subscriber_from_customers_and_contracts(duck):
    from crm_analytics import erasure

    first = collect.telco_frames()["telco_contracts"].customer_id.iloc[0]
    suppression = erasure.Suppression(salted=frozenset({erasure.key_hash(first)}))
    files = collect.collect_sources(
        duck, {"customers": {"kind": "telco", "as_of": "2020-01-01"}}, suppression
    )
    assert files.rows.tolist() == [7043] and files.withheld.tolist() == [1]
    contracts = duck.table("telco_contracts").to_pandas()
    customers = duck.table("raw_customers").to_pandas()
    assert len(contracts) == len(customers) == 7042
    assert first not in set(contracts.customer_id) | set(customers.customer_id)


def test_parquet_and_tsv_sources(duck, tmp_path):
    frame = pd.DataFrame({"order_id": ["P1"], "customer_id": ["C1"], "order_ts": ["2025-01-01 10:00:00"],
                          "amount": [12.5], "currency": ["CNY"], "status": ["paid"]})  # fmt: skip
    frame.to_parquet(tmp_path / "o.parquet")
    (tmp_path / "o.tsv").write_text(
        "order_id\tcustomer_id\torder_ts\tamount\tcurrency\tstatus\nT1\tC1\t2025-01-02\t3\tCNY\tpaid\n"
    )
    files = collect.collect_sources(
        duck,
        {"orders": [{"kind": "parquet", "path": str(tmp_path / "o.parquet")},
                    {"kind": "csv", "path": str(tmp_path / "o.tsv")}]},
    )  # fmt: skip
    assert files.rows.tolist() == [1, 1]
    got = duck.table("raw_orders").order_by("order_id").select("order_id", "amount").to_pandas()
    assert got.values.tolist() == [["P1", "12.5"], ["T1", "3"]]


def test_jsonl_values_arrive_as_written_and_late_keys_become_columns(duck, tmp_path):
    ev = tmp_path / "events.jsonl"
    lines = [
        '{"customer_id": "C1", "ts": "2025-01-01T10:00:00", "event_type": "view"}',
        '{"customer_id": "C2", "ts": "2025-01-02", "event_type": "login", "extra": 1}',
        # a key first seen on the last line is still read
        '{"customer_id": "C3", "ts": "2025-01-03T08:00:00+08:00", "event_type": "view",'
        ' "page": "home"}',
    ]
    ev.write_text("\n".join(lines) + "\n")
    collect.collect_sources(duck, {"events": {"kind": "jsonl", "path": str(ev)}})
    raw = duck.table("raw_events").order_by("_source_row").to_pandas()
    # timestamps keep their text: no type inference rewrites them
    assert raw.ts.tolist() == ["2025-01-01T10:00:00", "2025-01-02", "2025-01-03T08:00:00+08:00"]
    assert raw.page.tolist() == [None, None, "home"]
    assert raw._source_row.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("lines", "listed"),
    [
        # every key on the first line: its order, whatever the later lines hold
        (['{"b": 1, "a": 2}', '{"a": 3}', '{"a": 4, "b": 5}'], "b, a"),
        # keys that first appear later follow in order of appearance
        (['{"b": 1, "a": 2}', '{"z": 3, "a": 4}', '{"c": 5, "z": 6}'], "b, a, z, c"),
    ],
)
def test_jsonl_columns_follow_the_order_keys_first_appear(duck, tmp_path, lines, listed):
    ev = tmp_path / "events.jsonl"
    ev.write_text("\n".join(lines) + "\n")
    with pytest.raises(collect.SourceError, match=rf"\(has: {listed}\)"):
        collect.collect_sources(duck, {"events": {"kind": "jsonl", "path": str(ev)}})


def test_failed_collect_leaves_the_raw_tables_as_they_were(duck, tmp_path):
    good = tmp_path / "orders.csv"
    good.write_text(
        "order_id,customer_id,order_ts,amount,currency,status\nO1,C1,2025-01-01,10,CNY,paid\n"
    )
    collect.collect_sources(duck, {"orders": {"kind": "csv", "path": str(good)}})
    with pytest.raises(collect.SourceError):
        collect.collect_sources(
            duck,
            {
                "orders": {"kind": "csv", "path": str(good)},
                "customers": {"kind": "csv", "path": str(tmp_path / "absent.csv")},
            },
        )
    # the second call failed part-way: nothing of it is visible, the store still works
    assert duck.table("raw_orders").count().to_pandas() == 1
    assert duck.table("source_files").count().to_pandas() == 1


@pytest.mark.parametrize("native", [True, False])
def test_a_database_error_never_shows_the_password(duck, monkeypatch, native):
    monkeypatch.setenv("CRM_TEST_DB_PASSWORD", "s3cret-pw")
    if not native:
        monkeypatch.setattr(collect, "_native_source", lambda *a: None)
    url = "postgresql://bob:${CRM_TEST_DB_PASSWORD}@127.0.0.1:1/crm"  # nothing listens on port 1
    with pytest.raises(collect.SourceError) as info:
        collect.collect_sources(duck, {"customers": {"kind": "sql", "url": url, "table": "people"}})
    message = str(info.value)
    assert message.startswith("postgresql://bob:***@127.0.0.1:1/crm#people: cannot read: ")
    assert "s3cret-pw" not in message and "127.0.0.1" in message


def test_numbered_stream_numbers_rows_in_file_order_across_batches(duck, tmp_path):
    ev = tmp_path / "events.jsonl"
    ids = [f"C{i:03d}" for i in range(250, 0, -1)]  # not in sorted order
    ev.write_text("".join(f'{{"customer_id": "{c}", "n": "{i}"}}\n' for i, c in enumerate(ids, 1)))
    stream = collect.numbered_stream(
        duck.con,
        f"SELECT * FROM read_json('{ev}', format='newline_delimited', "
        "columns={'customer_id': 'VARCHAR', 'n': 'VARCHAR'})",
        batch_rows=7,
    )
    table = stream.reader.read_all()
    stream.cursor.close()
    assert stream.rows == 250 and table.num_rows == 250
    assert table.column("customer_id").to_pylist() == ids
    assert table.column("_source_row").to_pylist() == list(range(1, 251))
    assert table.column("n").to_pylist() == [str(i) for i in range(1, 251)]


def test_large_files_are_written_in_full_row_groups(tmp_path):
    # part-filled row groups are merged by later checkpoints, a few per checkpoint:
    # at a million customers that cost 13 s per checkpoint in the next stage
    duck = ibis.duckdb.connect(tmp_path / "store.duckdb")
    n = 2 * collect.STREAM_BATCH_ROWS + 1000
    rows = [f"O{i},C{i % 977},2025-01-01 10:00:00,{i % 50},CNY,paid,app,East" for i in range(n)]
    _orders_csv(tmp_path / "a.csv", rows)
    files = collect.collect_sources(
        duck, {"orders": {"kind": "csv", "path": str(tmp_path / "a.csv")}}
    )
    assert files.rows.tolist() == [n]
    groups = duck.con.execute(
        "SELECT row_group_id, max(count) FROM pragma_storage_info('raw_orders') "
        "WHERE segment_type <> 'VALIDITY' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert [c for _, c in groups] == [collect.STREAM_BATCH_ROWS] * 2 + [1000]
    numbers = duck.con.execute(
        "SELECT min(_source_row), max(_source_row), count(DISTINCT _source_row) FROM raw_orders"
    ).fetchone()
    assert numbers == (1, n, n)
    duck.disconnect()


def test_raw_text_is_written_without_fsst_and_the_setting_restored(tmp_path):
    # the raw tables are read once, by stage 02: their long, unique strings are not
    # FSST-compressed (the costliest part of writing them); later tables are
    duck = ibis.duckdb.connect(tmp_path / "store.duckdb")
    n = 150_000
    rows = [f"O{i:09d},C{i * 7919 % 999_983:07d},2025-01-01 10:{i % 60:02d}:00,{i % 50},CNY,paid,app,East"
            for i in range(n)]  # fmt: skip
    _orders_csv(tmp_path / "a.csv", rows)
    collect.collect_sources(duck, {"orders": {"kind": "csv", "path": str(tmp_path / "a.csv")}})
    duck.con.execute("CREATE TABLE later AS SELECT * FROM raw_orders")
    duck.con.execute("CHECKPOINT")

    def methods(table):
        return {
            r[0]
            for r in duck.con.execute(
                f"SELECT DISTINCT compression FROM pragma_storage_info('{table}') "
                "WHERE segment_type = 'VARCHAR'"
            ).fetchall()
        }

    assert "FSST" not in methods("raw_orders")
    assert "FSST" in methods("later")
    setting = "SELECT current_setting('disabled_compression_methods')"
    assert duck.con.execute(setting).fetchone()[0] == ""
    duck.disconnect()
