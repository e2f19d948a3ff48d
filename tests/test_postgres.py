"""The same ibis feature expressions give the same answers on DuckDB and on a real PostgreSQL;
PostgreSQL sources read by DuckDB equal the ibis read; ``engine: postgres`` works in a
private schema that never outlives its session."""

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


def _engine_schemas(url):
    con = ibis.connect(url)
    try:
        rows = con.sql(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'crm_engine_')"
        ).to_pandas()
        return set(rows.nspname)
    finally:
        con.disconnect()


def test_postgres_engine_copies_tables_into_a_private_schema_dropped_with_its_session(
    postgres_url, tmp_path
):
    """engine: postgres copies the store's tables into a schema of its own; a session
    that ends without dropping it (kill -9) has it dropped by the next one."""
    import signal
    import subprocess
    import sys

    from crm_analytics import store

    duck = ibis.duckdb.connect(str(tmp_path / "s.duckdb"))
    frame = pd.DataFrame({"customer_id": ["C1", "C2", "C3"], "amount": [1.5, 2.0, None],
                          "order_ts": pd.to_datetime(["2026-01-01 00:00", "2026-02-01 10:30", None])})  # fmt: skip
    duck.create_table("orders", frame)
    duck.create_table("customers", pd.DataFrame({
        "customer_id": ["C1"], "name": ["王伟"], "email": ["w@example.cn"], "phone": ["13800138000"],
        "city": ["上海"], "birth_date": [pd.Timestamp("1990-01-01")], "consent_marketing": [True]}))  # fmt: skip
    before = _engine_schemas(postgres_url)
    tables = store.engine_tables(duck, ["orders", "customers", "absent"], engine="postgres",
                                 engine_url=postgres_url)  # fmt: skip
    assert list(tables) == ["orders", "customers"]  # tables the store does not hold are left out
    # raw personal data stays in the store; the birth date goes, for the age feature
    assert tables["customers"].columns == ("customer_id", "birth_date", "consent_marketing")
    assert store.engine_backend(tables) == "postgres"
    mine = _engine_schemas(postgres_url) - before
    assert len(mine) == 1
    back = tables["orders"].to_pandas().sort_values("customer_id").reset_index(drop=True)
    back["order_ts"] = back.order_ts.astype("datetime64[us]")
    assert_frame_equal(back, frame.astype({"order_ts": "datetime64[us]"}), check_dtype=False)
    assert tables["orders"].get_backend().name == "postgres"
    admin = ibis.connect(postgres_url)
    admin.raw_sql("DROP ROLE IF EXISTS crm_other_analyst")
    admin.raw_sql("CREATE ROLE crm_other_analyst LOGIN")
    other_role = ibis.connect(postgres_url.replace("postgres@", "crm_other_analyst@"))
    with pytest.raises(Exception, match="permission denied for schema"):
        other_role.sql(f'SELECT * FROM "{next(iter(mine))}".orders').to_pandas()
    other_role.disconnect()
    admin.raw_sql("DROP ROLE crm_other_analyst")
    admin.disconnect()

    # a second session does not touch a live session's schema, nor schemas of other
    # roles or with names it does not give (one that would inject SQL if pasted unquoted)
    admin = ibis.connect(postgres_url)
    odd = 'crm_engine_"; CREATE ROLE crm_injected; --'
    admin.raw_sql(f'CREATE SCHEMA "{odd.replace(chr(34), chr(34) * 2)}"')
    _, other_schema = store.postgres_engine(postgres_url)
    assert mine <= _engine_schemas(postgres_url) and odd in _engine_schemas(postgres_url)
    roles = admin.sql("SELECT rolname FROM pg_roles WHERE rolname = 'crm_injected'").to_pandas()
    assert roles.empty
    admin.raw_sql(f'DROP SCHEMA "{odd.replace(chr(34), chr(34) * 2)}"')
    admin.disconnect()

    # a process killed while holding its schema: the schema stays until the next session
    hold = (
        "import sys, time\nfrom crm_analytics import store\n"
        "pg, schema = store.postgres_engine(sys.argv[1])\n"
        "pg.raw_sql(f'CREATE TABLE \"{schema}\".orders AS SELECT 1 AS x')\n"
        "print(schema, flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", hold, postgres_url], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        killed = proc.stdout.readline().strip()
        assert killed in _engine_schemas(postgres_url)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 20
    while killed in _engine_schemas(postgres_url):
        _, third = store.postgres_engine(postgres_url)  # drops schemas whose session is gone
        store.close_engine(third)
        assert time.monotonic() < deadline, "the killed session's schema was never dropped"
        time.sleep(0.2)
    assert mine <= _engine_schemas(postgres_url) and other_schema in _engine_schemas(postgres_url)

    # on exit each process drops its own schemas
    exit_script = (
        "import sys\nfrom crm_analytics import store\n"
        "pg, schema = store.postgres_engine(sys.argv[1])\nprint(schema)\n"
    )
    done = subprocess.run([sys.executable, "-c", exit_script, postgres_url],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip().startswith("crm_engine_")
    assert done.stdout.strip() not in _engine_schemas(postgres_url)
    store.close_engine(other_schema)
    store.close_engine(next(iter(mine)))
    assert not _engine_schemas(postgres_url) - before


def test_postgres_engine_errors_never_show_the_password(postgres_url, monkeypatch, tmp_path):
    """A URL from the environment with a password: connection errors name the server, not it."""
    from crm_analytics import store

    secret = "Engine-Pw-5518"
    duck = ibis.duckdb.connect()
    duck.create_table("orders", pd.DataFrame({"x": [1]}))
    host = postgres_url.split("@", 1)[1].rsplit(":", 1)[0]
    monkeypatch.setenv("CRM_TEST_ENGINE_URL", f"postgresql://postgres:{secret}@{host}:1/postgres")
    with pytest.raises(
        store.EngineUnavailable, match="cannot connect to \\$\\{CRM_TEST_ENGINE_URL\\}"
    ) as err:
        store.engine_tables(
            duck, ["orders"], engine="postgres", engine_url="${CRM_TEST_ENGINE_URL}"
        )
    assert secret not in str(err.value) and err.value.__cause__ is None
    # DuckDB's own attach quotes its connection string: the password is masked there too
    good = postgres_url.replace("postgres@", f"postgres:{secret}@")
    monkeypatch.setenv("CRM_TEST_ENGINE_URL", good.rsplit("/", 1)[0] + "/no_such_database")
    with pytest.raises(store.EngineUnavailable) as err:
        store.copy_to_postgres(duck, ["orders"], "${CRM_TEST_ENGINE_URL}", "public")
    assert "no_such_database" in str(err.value) and secret not in str(err.value)
    # a password in the query string, as the URL's own text or in a driver's message
    in_query = good.rsplit("/", 1)[0].replace(f":{secret}", "") + f"/nowhere?password={secret}"
    with pytest.raises(store.EngineUnavailable) as err:
        store.copy_to_postgres(duck, ["orders"], in_query, "public")
    assert "nowhere" in str(err.value) and secret not in str(err.value)
    assert store.redact_secrets(f"at {in_query}", in_query).endswith("?password=***")


def test_postgres_engine_needs_a_postgresql_url():
    from crm_analytics import store

    duck = ibis.duckdb.connect()
    duck.create_table("orders", pd.DataFrame({"x": [1]}))
    for url in ("", "sqlite:///x.db"):
        with pytest.raises(ValueError, match="engine 'postgres' needs engine_url"):
            store.engine_tables(duck, ["orders"], engine="postgres", engine_url=url)


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
