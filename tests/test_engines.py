"""The same feature expressions give the same answers on DuckDB, PostgreSQL and Spark.

The clean tables come from collecting and cleaning a small generated dataset;
the store (DuckDB) then serves them as they are, a real PostgreSQL gets copies
in a schema of its own (``engine: postgres``), and a local Spark session (master local[2], bound to 127.0.0.1, UI off) reads
them as Parquet through :func:`crm_analytics.store.engine_tables`.
"""

import ibis
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import features, store

pytestmark = [pytest.mark.postgres, pytest.mark.spark]

TABLES = ("orders", "customers", "order_items", "events", "tickets", "surveys")
CUTOFF = "2026-06-30"


@pytest.fixture(scope="module")
def engines(clean_store, postgres_url, tmp_path_factory):
    """The clean tables on each engine: store (DuckDB), PostgreSQL and Spark."""
    on_pg = store.engine_tables(clean_store, TABLES, engine="postgres", engine_url=postgres_url)
    on_spark = store.engine_tables(
        clean_store, TABLES, engine="spark", exchange_dir=tmp_path_factory.mktemp("parquet")
    )
    yield {
        "duckdb": store.engine_tables(clean_store, TABLES),
        "postgres": on_pg,
        "spark": on_spark,
    }
    store.spark_session().stop()


def _frame(expr: ibis.Table, keys: list[str]) -> pd.DataFrame:
    """Materialise ``expr`` with a stable row order and plain numeric columns."""
    out = expr.to_pandas().sort_values(keys).reset_index(drop=True)
    for col in out.columns:
        if col in keys and col == "period":
            out[col] = pd.to_datetime(out[col])
        elif out[col].dtype == object and col not in keys:
            out[col] = pd.to_numeric(out[col])  # PostgreSQL numeric arrives as Decimal
        elif pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = pd.to_datetime(out[col]).astype("datetime64[us]")
    return out


def _same_everywhere(build, engines, keys):
    """Assert the expression ``build(tables)`` gives one answer on all engines."""
    frames = {name: _frame(build(tables), keys) for name, tables in engines.items()}
    reference = frames["duckdb"]
    assert len(reference) > 0
    for name in ("postgres", "spark"):
        other = frames[name]
        assert list(other.columns) == list(reference.columns), name
        assert_frame_equal(
            reference, other, check_dtype=False, check_exact=False, rtol=1e-9, obj=name
        )
    return reference


def test_spark_session_is_local_and_private():
    """Local mode binds the driver to 127.0.0.1 with the web UI off."""
    conf = store.spark_session().sparkContext.getConf()
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert conf.get("spark.ui.enabled") == "false"
    assert conf.get("spark.master") == "local[2]"


def test_unknown_engine_is_rejected(clean_store):
    with pytest.raises(ValueError, match="engine must be one of"):
        store.engine_tables(clean_store, TABLES, engine="dask")


def test_customer_features_same_on_all_engines(engines):
    frame = _same_everywhere(
        lambda t: features.customer_features(
            t["orders"], CUTOFF, t["customers"], t["events"], t["tickets"], t["surveys"]
        ),
        engines,
        ["customer_id"],
    )
    assert frame.frequency.sum() > 0 and frame.share_app.between(0, 1).all()


def test_churn_features_same_on_all_engines(engines):
    cats = features.top_categories(
        engines["duckdb"]["orders"], engines["duckdb"]["order_items"], CUTOFF, 5
    )
    frame = _same_everywhere(
        lambda t: features.churn_features(t, CUTOFF, categories=cats), engines, ["customer_id"]
    )
    assert {f"cat_{c}" for c in cats} <= set(frame.columns) or len(cats) == 0


def test_daily_series_and_clv_summary_same_on_all_engines(engines):
    for dimension in ("total", "category"):
        _same_everywhere(
            lambda t, dim=dimension: features.sales_series_by(t, "day", dim),
            engines,
            ["period", "group"],
        )
    _same_everywhere(lambda t: features.clv_summary(t["orders"], CUTOFF), engines, ["customer_id"])
    _same_everywhere(
        lambda t: features.churn_labels(t["orders"], CUTOFF, 90), engines, ["customer_id"]
    )


def test_features_computed_on_spark_write_back_to_the_store(engines, clean_store):
    """A Spark result is written into the DuckDB store as a table (Arrow batches)."""
    expr = features.clv_summary(engines["spark"]["orders"], CUTOFF)
    store.write_table(clean_store, "clv_from_spark", expr)
    back = _frame(clean_store.table("clv_from_spark"), ["customer_id"])
    here = _frame(features.clv_summary(engines["duckdb"]["orders"], CUTOFF), ["customer_id"])
    assert_frame_equal(back, here, check_dtype=False)
