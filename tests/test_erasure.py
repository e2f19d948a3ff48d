"""Right to erasure: a forgotten customer leaves the store, exports, snapshots and reports, and stays out."""

import hashlib
import json

import duckdb
import ibis
import pandas as pd
import pytest
import yaml
from pandas.testing import assert_frame_equal

from crm_analytics import cli, collect, erasure, segment
from crm_analytics import store as store_mod
from crm_analytics.report import pseudonymise
from crm_analytics.runner import run_pipeline
from crm_analytics.schemas import TABLES
from tests.test_pipeline import _params


@pytest.fixture()
def store():
    con = ibis.duckdb.connect()
    con.create_table(
        "customers", pd.DataFrame({"customer_id": ["C1", "C2", "C3"], "name": ["a", "b", "c"]})
    )
    con.create_table(
        "orders", pd.DataFrame({"order_id": ["O1", "O2", "O3"], "customer_id": ["C1", "C2", "C1"]})
    )
    con.create_table(
        "order_items", pd.DataFrame({"order_id": ["O1", "O1", "O2", "O3"], "sku": list("wxyz")})
    )
    con.create_table("raw_orders", pd.DataFrame({"order_id": [" O1", "O2"], "customer_id": [" C1 ", "C2"],
                                                 "_source_row": [1, 2]}))  # fmt: skip
    con.create_table(
        "raw_order_items", pd.DataFrame({"order_id": ["O1 ", "O2"], "sku": ["w", "y"]})
    )
    # C3 was merged into C1 by entity resolution: the same person
    con.create_table("customer_crosswalk", pd.DataFrame({"original_id": ["C1", "C2", "C3"],
                                                         "customer_id": ["C1", "C2", "C1"]}))  # fmt: skip
    con.create_table(
        "churn_scores", pd.DataFrame({"customer_id": ["C1", "C2"], "p_churn": [0.1, 0.9]})
    )
    yield con
    con.disconnect()


def test_person_ids_follow_the_crosswalk_both_ways(store):
    assert erasure.person_ids(store, "C3") == ["C1", "C3"]
    assert erasure.person_ids(store, " C1") == ["C1", "C3"]
    assert erasure.person_ids(store, "C9") == ["C9"]


def test_erase_from_store_removes_every_row_of_the_person(store):
    deleted = erasure.erase_from_store(store, ["C1", "C3"])
    assert deleted == {"customers": 2, "orders": 2, "order_items": 3, "raw_orders": 1, "raw_order_items": 1,
                       "customer_crosswalk": 2, "churn_scores": 1}  # fmt: skip
    assert store.table("customers").customer_id.to_pyarrow().to_pylist() == ["C2"]
    assert store.table("order_items").sku.to_pyarrow().to_pylist() == ["y"]
    assert store.table("raw_order_items").sku.to_pyarrow().to_pylist() == ["y"]


def _crm_sources(folder):
    """Customers, orders and order lines of two customers (C1 the one to forget), as CSV."""
    (folder / "customers.csv").write_text(
        "customer_id,name,email,phone,signup_date\n"
        "C1,Zhang Weiqiang,zhang.weiqiang@example.cn,13812345678,2024-01-01\n"
        "C2,Li Na,li.na@example.cn,13987654321,2024-01-02\n"
        ",Nobody,,,2024-01-03\n",
        encoding="utf-8",
    )
    (folder / "orders.csv").write_text(
        "order_id,customer_id,order_ts,amount,currency,status\n"
        "O1,C1,2025-01-01 10:00:00,10,CNY,paid\nO2,C2,2025-01-02 10:00:00,20,CNY,paid\n"
        "O3, C1 ,2025-01-03 10:00:00,30,CNY,paid\nO4,,2025-01-04 10:00:00,40,CNY,paid\n",
        encoding="utf-8",
    )
    (folder / "items.csv").write_text(
        "order_id,sku,quantity,unit_price\nO1,A,1,5\nO1,B,1,5\nO2,A,2,10\nO3,C,3,10\nO4,D,4,10\n",
        encoding="utf-8",
    )
    # the order lines come first in the parameters: they are still withheld by their order
    return {
        "customers": {"kind": "csv", "path": str(folder / "customers.csv")},
        "order_items": {"kind": "csv", "path": str(folder / "items.csv")},
        "orders": {"kind": "csv", "path": str(folder / "orders.csv")},
    }


C1_PERSONAL = (b"Zhang Weiqiang", b"zhang.weiqiang@example.cn", b"13812345678")


def test_collect_withholds_suppressed_customers_before_anything_reaches_the_file(tmp_path):
    sources = _crm_sources(tmp_path)
    plain = ibis.duckdb.connect(str(tmp_path / "plain.duckdb"))
    read = collect.collect_sources(plain, sources)
    plain.disconnect()
    # the byte check below can see these values when they are written
    assert all(v in (tmp_path / "plain.duckdb").read_bytes() for v in C1_PERSONAL)

    con = ibis.duckdb.connect(str(tmp_path / "store.duckdb"))
    suppression = erasure.Suppression(salted=frozenset({erasure.key_hash("C1")}))
    files = collect.collect_sources(con, sources, suppression)
    raw = {t: con.table(f"raw_{t}").to_pandas() for t in ("customers", "orders", "order_items")}
    assert raw["customers"].customer_id.tolist() == ["C2", None]  # a missing key stays
    assert sorted(raw["orders"].order_id) == ["O2", "O4"]
    assert sorted(raw["order_items"].order_id) == ["O2", "O4"]
    assert raw["orders"]._source_row.tolist() == [2, 4]  # rows keep their numbers in the file
    # every record is accounted for: read = kept + withheld, per source, in the parameters' order
    assert files.table.tolist() == ["customers", "order_items", "orders"]
    assert files.withheld.tolist() == [1, 3, 2]
    assert files.rows.tolist() == read.rows.tolist() == [3, 5, 4]
    assert collect.withheld_per_table(files) == {
        f"raw_{t}": {"customers": 1, "orders": 2, "order_items": 3}.get(t, 0) for t in TABLES
    }
    assert not [t for t in con.list_tables() if t.startswith(("_withheld", "_suppressed"))]
    con.disconnect()
    data = (tmp_path / "store.duckdb").read_bytes()
    assert not [v for v in C1_PERSONAL if v in data]
    assert b"li.na@example.cn" in data


@pytest.mark.parametrize("through_ibis", [False, True])
def test_a_database_source_withholds_suppressed_customers(tmp_path, monkeypatch, through_ibis):
    """DuckDB's scanner reads the table twice (keys, then rows); an Arrow stream once."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "crm.sqlite")
    db.execute("CREATE TABLE customers (customer_id TEXT, name TEXT, signup_date TEXT)")
    db.executemany("INSERT INTO customers VALUES (?, ?, ?)",
                   [("C1", "Zhang Weiqiang", "2024-01-01"), ("C2", "Li Na", "2024-01-02"),
                    (" C1", "Zhang W.", "2024-01-05"), (None, "Nobody", "2024-01-03")])  # fmt: skip
    db.commit()
    db.close()
    if through_ibis:
        monkeypatch.setattr(collect, "_native_source", lambda *a: None)
    con = ibis.duckdb.connect()
    suppression = erasure.Suppression(salted=frozenset({erasure.key_hash("C1")}))
    sources = {
        "customers": {
            "kind": "sql",
            "url": f"sqlite:///{tmp_path}/crm.sqlite",
            "table": "customers",
        }
    }
    files = collect.collect_sources(con, sources, suppression)
    raw = con.table("raw_customers").to_pandas().sort_values("_source_row")
    assert files.rows.tolist() == [4] and files.withheld.tolist() == [2]
    # numbered in key order (" C1", "C1", "C2", NULL) before the two rows of C1 are withheld
    assert raw.customer_id.tolist() == ["C2", None] and raw._source_row.tolist() == [3, 4]


def test_suppression_list_is_salted_and_refuses_a_list_of_another_salt(tmp_path):
    f = tmp_path / "suppression.csv"
    h = erasure.key_hash(" C1 ", salt="salt-one")
    assert h == erasure.key_hash("C1", salt="salt-one") != erasure.key_hash("C1", salt="salt-two")
    assert h != hashlib.sha256(b"crm-analytics-erasure|C1").hexdigest()  # not the unsalted hash
    assert erasure.add_to_suppression(f, [h], salt="salt-one") == 1
    assert erasure.add_to_suppression(f, [h], salt="salt-one") == 0
    assert erasure.read_suppression(f, salt="salt-one") == erasure.Suppression(frozenset({h}))
    rows = pd.read_csv(f, dtype=str)
    assert list(rows.columns) == list(erasure.SUPPRESSION_COLUMNS) and len(rows) == 1
    assert "salt-one" not in f.read_text() and rows.salt_id[0] == erasure.salt_id("salt-one")
    # read under another salt, the list would let its customers back in: it stops instead
    with pytest.raises(
        ValueError, match=r"suppression\.csv, line 2, column salt_id: .*another salt"
    ):
        erasure.read_suppression(f, salt="salt-two")


def test_unsalted_rows_of_an_older_list_are_still_honoured(tmp_path):
    f = tmp_path / "suppression.csv"
    old = hashlib.sha256(b"crm-analytics-erasure|C1").hexdigest()  # as lists were once written
    f.write_text(f"customer_key_sha256,requested_at\n{old},2026-01-01T00:00:00+00:00\n")
    assert erasure.read_suppression(f) == erasure.Suppression(legacy=frozenset({old}))
    new = erasure.key_hash("C2")
    assert erasure.add_to_suppression(f, [new]) == 1  # the header gains salt_id, the old row stays
    both = erasure.read_suppression(f)
    assert both == erasure.Suppression(frozenset({new}), frozenset({old}))
    con = ibis.duckdb.connect()
    files = collect.collect_sources(con, _crm_sources(tmp_path), both)
    assert con.table("raw_customers").customer_id.to_pyarrow().to_pylist() == [None]
    assert files.withheld.tolist() == [2, 4, 3]  # both customers, their orders and order lines
    con.disconnect()


def test_rebuilt_store_keeps_every_table_and_loses_the_deleted_bytes(tmp_path, monkeypatch):
    sources = _crm_sources(tmp_path)
    for key_env in ("", "CRM_TEST_REBUILD_KEY"):
        path = tmp_path / f"store{key_env}.duckdb"
        if key_env:
            monkeypatch.setenv(key_env, "rebuild-key-1")
        con = store_mod.connect(str(path), encryption_key_env=key_env)
        collect.collect_sources(con, sources)
        con.raw_sql("CREATE VIEW paid AS SELECT * FROM raw_orders WHERE status = 'paid'")
        erasure.erase_from_store(con, ["C1"])
        con.disconnect()
        con = store_mod.connect(str(path), read_only=True, encryption_key_env=key_env)
        before = {t: con.table(t).to_pandas() for t in con.list_tables()}
        con.disconnect()
        assert "paid" in before and len(before["raw_customers"]) == 2
        if not key_env:  # deleted, yet still in the file's free pages
            assert all(v in path.read_bytes() for v in C1_PERSONAL)
        store_mod.rebuild_duckdb(path, key_env)
        assert not [v for v in C1_PERSONAL if v in path.read_bytes()]
        assert not list(tmp_path.glob(f".{path.name}.rebuild*"))
        con = store_mod.connect(str(path), read_only=True, encryption_key_env=key_env)
        assert sorted(con.list_tables()) == sorted(before)
        for t, frame in before.items():
            assert_frame_equal(con.table(t).to_pandas(), frame, check_dtype=True)
        con.disconnect()
    with pytest.raises(duckdb.Error):  # the rebuilt encrypted file still needs its key
        duckdb.connect(str(tmp_path / "storeCRM_TEST_REBUILD_KEY.duckdb")).execute("SHOW TABLES")


def test_exports_snapshots_and_reports_are_cleaned(tmp_path):
    exports, reports = tmp_path / "exports" / "run1", tmp_path / "reports" / "run1"
    exports.mkdir(parents=True)
    reports.mkdir(parents=True)
    pd.DataFrame({"customer_id": ["C1", "C2"], "email": ["a@x.cn", "b@x.cn"]}).to_csv(
        exports / "c.csv", index=False
    )
    pd.DataFrame({"customer_id": ["C1", "C2"], "segment": ["x", "y"]}).to_parquet(
        tmp_path / "snap.parquet"
    )
    (tmp_path / "snaps").mkdir()
    (tmp_path / "snap.parquet").rename(tmp_path / "snaps" / "run1.parquet")
    pid = pseudonymise(pd.Series(["C1"]))[0]
    (reports / "04_churn.html").write_text(
        f"<td>{pid}</td><td>{pseudonymise(pd.Series(['C2']))[0]}</td>"
    )
    removed = erasure.erase_from_files([tmp_path / "exports", tmp_path / "snaps"], ["C1"])
    assert sorted(removed.values()) == [1, 1]
    assert pd.read_csv(exports / "c.csv").email.tolist() == ["b@x.cn"]
    assert pd.read_parquet(tmp_path / "snaps" / "run1.parquet").customer_id.tolist() == ["C2"]
    assert erasure.scrub_reports(tmp_path / "reports", ["C1"]) == 1
    html = (reports / "04_churn.html").read_text()
    assert (
        pid not in html
        and erasure.ERASED_ID in html
        and "cust_" in html.replace(erasure.ERASED_ID, "")
    )


@pytest.mark.pipeline
def test_forget_end_to_end_and_the_next_run_does_not_bring_them_back(
    tiny_dataset, tmp_path, capsys
):
    params = _params(tiny_dataset, tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    reports = tmp_path / "reports"
    run_pipeline(f, run_id="before-collect", only="collect", reports_dir=reports, progress=False)
    run_pipeline(f, run_id="before-clean", only="clean", reports_dir=reports, progress=False)
    con = ibis.duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True)
    orders = con.table("orders")
    who = (
        orders.group_by("customer_id")
        .aggregate(n=orders.count())
        .order_by([ibis.desc("n"), "customer_id"])
    )
    cid = who.limit(1).to_pyarrow().to_pylist()[0]["customer_id"]
    raw = con.table("raw_customers")
    mine = raw.filter(raw.customer_id.strip() == cid).to_pyarrow().to_pylist()
    con.disconnect()
    personal = {r[c].encode() for r in mine for c in ("name", "email", "phone") if r[c]}
    assert len(personal) >= 3

    def in_store():
        data = (tmp_path / "store.duckdb").read_bytes()
        return {v.decode() for v in personal if v in data}

    assert in_store() == {v.decode() for v in personal}  # readable before: the check can fail

    audit = tmp_path / "audit.jsonl"
    assert cli.main(["forget", "--customer-id", cid, "--params", str(f), "--reason", "ticket 42",
                     "--reports-dir", str(reports), "--audit-file", str(audit)]) == 0  # fmt: skip
    assert "suppressed from the next run on" in capsys.readouterr().out
    record = json.loads(audit.read_text().splitlines()[-1])
    assert record["reason"] == "ticket 42" and record["store_rows_deleted"]["orders"] > 0
    assert cid not in audit.read_text()  # the audit log holds a hash, not the key

    def rows_of(ids):
        con = ibis.duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True)
        found = {}
        for name in con.list_tables():
            t = con.table(name)
            if "customer_id" in t.columns:
                n = (
                    t.filter(t.customer_id.cast("string").strip().isin(ids))
                    .count()
                    .to_pyarrow()
                    .as_py()
                )
                if n:
                    found[name] = n
        con.disconnect()
        return found

    assert rows_of([cid]) == {}
    assert record["store_file_rebuilt"] is True and in_store() == set()
    # the next run reads the same files again: the person stays out, and the report says why rows are missing
    run_pipeline(f, run_id="after-collect", only="collect", reports_dir=reports, progress=False)
    run_dir = run_pipeline(
        f, run_id="after-clean", only="clean", reports_dir=reports, progress=False
    )
    assert rows_of([cid]) == {} and in_store() == set()
    metrics = json.loads((reports / "after-collect" / "metrics.json").read_text())["collect"]
    # exactly the raw rows that were erased are withheld when the same files are read again
    erased_raw = {t: n for t, n in record["store_rows_deleted"].items() if t.startswith("raw_")}
    assert {t: n for t, n in metrics["withheld_per_table"].items() if n} == erased_raw
    assert metrics["rows_withheld"] == sum(erased_raw.values()) > 0
    clean_metrics = json.loads((run_dir / "metrics.json").read_text())["clean"]
    assert clean_metrics["all_rows_accounted"] is True
    assert (
        "erased on request were withheld"
        in (reports / "after-collect" / "01_collect.html").read_text()
    )


def test_erasing_from_an_export_keeps_the_other_rows_values_as_written(tmp_path):
    contacts = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "name": ["王芳", "李雷", ""],
            "phone": ["+8613812345678", "+8613900000001", "007"],
            "segment": ["At Risk", "At Risk", "Need Attention"],
        }
    )
    written = segment.export_contacts(
        ibis.duckdb.connect(), contacts, tmp_path / "exports" / "run1"
    )
    removed = erasure.erase_from_files([tmp_path / "exports"], ["C2"])
    assert sorted(removed) == sorted(str(p) for p in written) and set(removed.values()) == {1}
    kept = contacts[contacts.customer_id != "C2"].reset_index(drop=True)
    csv = pd.read_csv(written[0], dtype=str, keep_default_na=False)
    assert_frame_equal(csv, kept)
    with pd.ExcelFile(written[1]) as book:
        assert book.sheet_names == ["contacts"]
        xlsx = book.parse("contacts", dtype=str).fillna("")
    assert_frame_equal(xlsx, kept)
