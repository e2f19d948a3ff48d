"""The same ibis feature expressions give the same answers on DuckDB and on a real PostgreSQL;
runs on a PostgreSQL store are locked against each other."""

import time

import ibis
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import features
from crm_analytics.generate import generate

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def orders_frame(tmp_path_factory):
    out = tmp_path_factory.mktemp("pg") / "d"
    generate(out, n_customers=300, seed=11)
    frame = pd.concat(pd.read_csv(f, dtype=str) for f in sorted((out / "orders").glob("*.csv")))
    frame = frame.drop_duplicates("order_id")
    frame["amount"] = pd.to_numeric(frame.amount, errors="coerce")
    frame = frame[frame.amount.notna() & (frame.amount >= 0)]
    frame["order_ts"] = pd.to_datetime(frame.order_ts)
    frame = frame[frame.order_ts < "2027-01-01"]
    frame["amount_outlier"] = frame.amount > 5000
    return frame.reset_index(drop=True)


def _both(postgres_url, orders_frame):
    duck = ibis.duckdb.connect()
    pg = ibis.connect(postgres_url)
    d = duck.create_table("orders", orders_frame, overwrite=True)
    p = pg.create_table("orders_feature_test", orders_frame, overwrite=True)
    return duck, pg, d, p


def _norm(frame, keys):
    out = frame.sort_values(keys).reset_index(drop=True)
    for c in out.columns:
        if out[c].dtype == object and c not in keys:
            out[c] = pd.to_numeric(out[c], errors="ignore")  # PostgreSQL numeric arrives as Decimal
    return out


def test_customer_features_same_on_duckdb_and_postgres(postgres_url, orders_frame):
    _, pg, d, p = _both(postgres_url, orders_frame)
    a = features.customer_features(d, "2026-03-31").to_pandas()
    b = features.customer_features(p, "2026-03-31").to_pandas()
    assert len(a) > 100
    a, b = _norm(a, ["customer_id"]), _norm(b, ["customer_id"])
    assert_frame_equal(a, b[a.columns], check_dtype=False, check_exact=False, rtol=1e-9)
    pg.drop_table("orders_feature_test")


def test_sales_series_and_labels_same_on_duckdb_and_postgres(postgres_url, orders_frame):
    _, pg, d, p = _both(postgres_url, orders_frame)
    for freq in ("day", "week", "month"):
        a = features.sales_series(d, freq).to_pandas()
        b = features.sales_series(p, freq).to_pandas()
        a["period"] = pd.to_datetime(a.period)
        b["period"] = pd.to_datetime(b.period)
        assert_frame_equal(_norm(a, ["period"]), _norm(b, ["period"]), check_dtype=False)
    la = features.churn_labels(d, "2026-03-31", 90).to_pandas()
    lb = features.churn_labels(p, "2026-03-31", 90).to_pandas()
    assert_frame_equal(_norm(la, ["customer_id"]), _norm(lb, ["customer_id"]), check_dtype=False)
    pg.drop_table("orders_feature_test")


def test_postgres_and_duckdb_sources_give_identical_clean_tables(
    postgres_url, tiny_dataset, tmp_path
):
    """The same CRM and orders, served by PostgreSQL and by a DuckDB file, clean to the same tables."""
    import sqlite3

    from crm_analytics import clean, collect, entities

    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        customers = pd.read_sql("select * from customers", db)
    orders = pd.concat(
        pd.read_csv(f, dtype=str) for f in sorted((tiny_dataset / "orders").glob("*.csv"))
    )
    orders = orders.astype(object).where(orders.notna(), None)
    pg = ibis.connect(postgres_url)
    src_duck = ibis.duckdb.connect(str(tmp_path / "source.duckdb"))
    for con in (pg, src_duck):
        con.create_table("crm_customers", customers, overwrite=True)
        con.create_table("shop_orders", orders, overwrite=True)
    src_duck.disconnect()
    cleaned = {}
    for name, url in (
        ("postgres", postgres_url),
        ("duckdb", f"duckdb:///{tmp_path / 'source.duckdb'}"),
    ):
        store = ibis.duckdb.connect()
        collect.collect_sources(
            store,
            {
                "customers": {"kind": "sql", "url": url, "table": "crm_customers"},
                "orders": {"kind": "sql", "url": url, "table": "shop_orders"},
            },
        )
        clean.clean_all(
            store, clean.CleanSettings.build(as_of="2026-11-01"), entities.MatchSettings(seed=3)
        )
        frames = {}
        for t, key in (
            ("customers", "customer_id"),
            ("orders", "order_id"),
            ("customer_crosswalk", "original_id"),
            ("quarantine", ["table", "_source_row"]),
        ):
            frame = store.table(t).to_pandas().drop(columns="_source", errors="ignore")
            frames[t] = frame.sort_values(key).reset_index(drop=True)
        cleaned[name] = frames  # fmt: skip
    for t in cleaned["postgres"]:
        assert len(cleaned["postgres"][t]) > 0 or t == "quarantine"
        assert_frame_equal(cleaned["postgres"][t], cleaned["duckdb"][t], check_dtype=False)
    pg.drop_table("crm_customers")
    pg.drop_table("shop_orders")


def test_runs_on_a_database_store_are_locked_until_the_holder_ends(postgres_url, tmp_path):
    """A second run on the same PostgreSQL store stops, naming the first; a killed holder frees it."""
    import signal
    import subprocess
    import sys

    import yaml

    from crm_analytics import config
    from crm_analytics.runner import StoreBusy, database_lock, run_pipeline

    with database_lock(postgres_url, "first"):
        with pytest.raises(StoreBusy, match=r"crm-analytics first, server process \d+"):
            with database_lock(postgres_url, "second"):
                pass
        params = config.load_params(config.project_root() / "params" / "default.yaml")
        params["store"] = postgres_url
        f = tmp_path / "p.yaml"
        f.write_text(yaml.safe_dump(params, allow_unicode=True))
        with pytest.raises(StoreBusy, match="in use by another run"):
            run_pipeline(
                f, run_id="late", only="forecast", reports_dir=tmp_path / "r", progress=False
            )
        assert not (tmp_path / "r" / "late").exists()  # stopped before anything ran
    with database_lock(postgres_url, "after"):  # released when the holder finished
        pass

    hold = (
        "import sys, time\nfrom crm_analytics.runner import database_lock\n"
        "with database_lock(sys.argv[1], 'killed'):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", hold, postgres_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match="crm-analytics killed"):
            with database_lock(postgres_url, "while-held"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 20
    while True:  # the server ends the dead session's lock as soon as it sees the socket close
        try:
            with database_lock(postgres_url, "next"):
                break
        except StoreBusy:
            assert time.monotonic() < deadline, "the killed run's lock was never released"
            time.sleep(0.2)


def test_postgres_read_by_duckdb_equals_the_ibis_read(postgres_url, monkeypatch):
    """DuckDB's postgres scanner gives the raw rows ibis gives: PostgreSQL's own text of each
    value (numeric, timestamps, booleans, NULLs), numbered by key then the other columns."""
    from tests.test_collect import _collect_raw

    pg = ibis.connect(postgres_url)
    pg.raw_sql("DROP TABLE IF EXISTS scanner_people")
    pg.raw_sql(
        "CREATE TABLE scanner_people (customer_id text, name text, signup_date date, "
        "score numeric(10, 3), visits integer, seen timestamp, vip boolean)"
    )
    pg.raw_sql(
        "INSERT INTO scanner_people VALUES "
        "('C2', NULL, '2024-12-02', 1.5, 7, '2025-01-01 10:00:00.25', true), "
        "('C1', '王伟', '2024-12-01', -0.125, NULL, NULL, false), "
        "('C1', 'Wang Wei', NULL, 100, 3, '2025-03-01 00:00:00', NULL)"
    )
    table = {"kind": "sql", "url": postgres_url, "table": "scanner_people",
             "columns": {"score": "gender", "visits": "city", "seen": "province", "vip": "country"}}  # fmt: skip
    query = {**table, "query": "SELECT * FROM scanner_people WHERE customer_id <> 'C2'"}
    for spec in (table, query):
        native, used = _collect_raw({"customers": spec}, False, monkeypatch)
        assert used == ["native"]
        through_ibis, used = _collect_raw({"customers": spec}, True, monkeypatch)
        assert used == ["ibis"]
        assert_frame_equal(native["customers"], through_ibis["customers"])
    c = _collect_raw({"customers": table}, False, monkeypatch)[0]["customers"]
    assert list(c.customer_id) == ["C1", "C1", "C2"] and list(c.name) == ["Wang Wei", "王伟", None]
    assert list(c.gender) == ["100.000", "-0.125", "1.500"]
    assert list(c.province) == ["2025-03-01 00:00:00", None, "2025-01-01 10:00:00.25"]
    assert list(c.country) == [None, "false", "true"] and list(c.signup_date)[1] == "2024-12-01"
    pg.raw_sql("DROP TABLE scanner_people")


def test_forget_on_a_database_store_is_locked_deletes_and_rewrites_the_tables(
    postgres_url, tmp_path
):
    """On PostgreSQL the deleted row versions leave the table files (VACUUM FULL), under the run lock."""
    import yaml

    from crm_analytics import config, erasure
    from crm_analytics.runner import StoreBusy, database_lock, forget_customer

    admin = ibis.connect(postgres_url)
    admin.raw_sql("DROP DATABASE IF EXISTS forget_store")
    admin.raw_sql("CREATE DATABASE forget_store")
    admin.disconnect()
    url = postgres_url.rsplit("/", 1)[0] + "/forget_store"
    con = ibis.connect(url)
    con.create_table("customers", pd.DataFrame({"customer_id": ["C1", "C2"],
                                                "email": ["c1@example.cn", "c2@example.cn"]}))  # fmt: skip
    con.create_table(
        "orders", pd.DataFrame({"order_id": ["O1", "O2"], "customer_id": ["C1", "C2"]})
    )
    con.create_table("products", pd.DataFrame({"sku": ["A"]}))

    def files():
        rows = con.sql(
            "SELECT relname, relfilenode FROM pg_class WHERE relname IN "
            "('customers', 'orders', 'products')"
        ).to_pandas()
        return dict(zip(rows.relname, rows.relfilenode, strict=True))

    before = files()
    con.disconnect()
    params = config.load_params(config.project_root() / "params" / "default.yaml")
    params["store"] = url
    params["collect"]["suppression_file"] = str(tmp_path / "suppression.csv")
    params["report"]["snapshot_dir"] = str(tmp_path / "snapshots")
    for stage in ("segment", "churn"):
        params[stage]["export_dir"] = str(tmp_path / "exports")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    audit = tmp_path / "audit.jsonl"
    with database_lock(url, "a run"), pytest.raises(StoreBusy):
        forget_customer(f, "C1", reports_dir=tmp_path / "r", audit_file=audit)
    assert not audit.exists()
    record = forget_customer(f, "C1", reports_dir=tmp_path / "r", audit_file=audit)
    assert record["store_rows_deleted"] == {"customers": 1, "orders": 1}
    assert "store_file_rebuilt" not in record  # no file here: the server rewrote the tables
    con = ibis.connect(url)
    after = files()
    assert con.table("customers").customer_id.to_pyarrow().to_pylist() == ["C2"]
    con.disconnect()
    assert after["customers"] != before["customers"] and after["orders"] != before["orders"]
    assert after["products"] == before["products"]  # tables without the person are left alone
    assert erasure.read_suppression(tmp_path / "suppression.csv").salted == {erasure.key_hash("C1")}
