"""Tests of crm_analytics.store helpers that need no server."""

import ibis
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
