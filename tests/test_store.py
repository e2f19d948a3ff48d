"""Tests of crm_analytics.store helpers that need no server."""

import datetime as dt
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import ibis
import numpy as np
import pandas as pd

from crm_analytics import store


def test_create_temp_table_replaces_a_temporary_table_even_from_itself(duck):
    duck.create_table("shared", pd.DataFrame({"x": [100]}))  # a stored table of the same name
    first = store.create_temp_table(duck, "shared", pd.DataFrame({"x": [1, 2, 3]}))
    assert sorted(first.x.to_pandas()) == [1, 2, 3]
    # the new content may read the table it replaces
    doubled = store.create_temp_table(duck, "shared", first.mutate(x=first.x * 2))
    assert sorted(doubled.x.to_pandas()) == [2, 4, 6]
    assert sorted(duck.table("shared", database=("temp", "main")).x.to_pandas()) == [2, 4, 6]
    # the stored table is untouched, and no table is left under the fresh name
    stored = duck.table("shared", database=(duck.current_catalog, "main"))
    assert stored.x.to_pandas().tolist() == [100]
    temp = duck.raw_sql(
        "SELECT table_name FROM duckdb_tables() WHERE temporary ORDER BY 1"
    ).fetchall()
    assert temp == [("shared",)]


def test_create_temp_table_writes_the_rows_once(duck):
    # ibis's temp=True, overwrite=True writes the table, then copies it into place
    duck.create_table("src", pd.DataFrame({"x": range(10)}))
    queries = []
    real = duck.con

    class Spy:
        """The DuckDB connection, recording every statement ibis sends it."""

        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args, **kwargs):
            queries.append(str(sql))
            result = real.execute(sql, *args, **kwargs)
            return self if result is real else result

    duck.con = Spy()
    try:
        store.create_temp_table(duck, "_staged", duck.table("src").filter(ibis._.x > 4))
    finally:
        duck.con = real
    writes = [q for q in queries if "src" in q or "SELECT * FROM" in q]
    assert len(writes) == 1, queries
    assert duck.table("_staged").count().to_pandas() == 5


def test_to_frame_gives_the_frame_ibis_gives(duck):
    rows = pd.DataFrame(
        {
            "customer_id": ["a", None, "c"],
            "n": pd.array([1, None, 3], dtype="Int64"),
            "amount": [1.5, np.nan, 2.0],
            "flag": [True, None, False],
            "day": [dt.date(2025, 1, 1), None, dt.date(1999, 12, 31)],
            "ts": pd.to_datetime(
                ["2025-01-01 10:00", None, "2025-03-01 00:00:01.5"], format="ISO8601"
            ),
            "nothing": [None, None, None],
        }
    )
    duck.create_table("rows", rows.astype({"nothing": "float64"}))
    t = duck.table("rows")
    expr = t.mutate(
        price=ibis.literal(Decimal("1.25")).cast("decimal(10, 2)"),
        total=t.n.sum().over(),  # a 128-bit sum in DuckDB
        empty=ibis.null("int64"),
        utc=t.ts.cast("timestamp('UTC')"),
        complete_ts=t.ts.fill_null(dt.datetime(2025, 1, 2)),
    )
    got = store.to_frame(expr)
    pd.testing.assert_frame_equal(got, expr.to_pandas())
    assert str(got.ts.dtype) == "datetime64[ns]" and got.customer_id.iloc[1] is None
    # no rows: the same columns and types
    pd.testing.assert_frame_equal(store.to_frame(expr.limit(0)), expr.limit(0).to_pandas())


def test_exchange_folders_are_private_per_call_and_removed_when_the_process_ends(tmp_path):
    a, b = store.exchange_folder(tmp_path), store.exchange_folder(tmp_path)
    assert a != b and Path(a).parent == Path(b).parent == tmp_path  # concurrent runs never share
    assert stat.S_IMODE(Path(a).stat().st_mode) == 0o700
    code = (
        "import os, sys; from pathlib import Path; from crm_analytics import store\n"
        "f = Path(store.exchange_folder(sys.argv[1])); (f / 'customers.parquet').write_bytes(b'x')\n"
        "print(f, flush=True)\n"
        "if sys.argv[2] == 'killed': os.kill(os.getpid(), 9)\n"
    )

    def child(how):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path), how],
                              capture_output=True, text=True)  # fmt: skip
        return Path(done.stdout.strip())

    assert not child("exits").exists()  # removed when the process exits
    killed = child("killed")
    assert (killed / "customers.parquet").is_file()  # a killed process cannot clean up...
    store.exchange_folder(tmp_path)
    assert not killed.exists()  # ...so the next run does
    assert Path(a).is_dir() and Path(b).is_dir()  # while a live process keeps its folders
