import hashlib
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from crm_analytics import generate as gen


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".csv", ".jsonl"}):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_data(tmp_path):
    a = gen.generate(tmp_path / "a", 120, seed=3)
    b = gen.generate(tmp_path / "b", 120, seed=3)
    gen.generate(tmp_path / "c", 120, seed=4)
    assert a.rows == b.rows
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_chunking_keeps_ids_unique(tmp_path):
    res = gen.generate(tmp_path / "d", 250, seed=1, chunk_size=60)
    ids = pd.read_sql(
        "select customer_id from customers", sqlite3.connect(tmp_path / "d" / "crm.sqlite")
    )
    assert ids.customer_id.is_unique
    assert len(ids) == res.rows["customers"]
    orders = pd.concat(pd.read_csv(f, dtype=str) for f in (tmp_path / "d" / "orders").glob("*.csv"))
    # every order id repeats only as an injected exact duplicate row
    dup = orders[orders.order_id.duplicated(keep=False)]
    assert (dup.groupby("order_id").nunique(dropna=False) == 1).all().all()


def test_sources_and_truth_written(tiny_dataset):
    d = tiny_dataset
    assert (d / "crm.sqlite").is_file() and (d / "tickets.xlsx").is_file()
    assert list((d / "orders").glob("orders_*.csv")) and list((d / "events").glob("*.jsonl"))
    surveys = pd.read_csv(d / "surveys.csv", encoding="gbk")
    assert {"customer_id", "nps", "csat", "comment"} <= set(surveys.columns)
    raw = (d / "surveys.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # GBK, as Chinese survey tools export
    assert any(c in raw.decode("gbk") for c in gen.COMMENTS_GOOD + gen.COMMENTS_BAD)
    truth = pd.read_parquet(d / "truth" / "customers.parquet")
    assert set(truth.persona) <= set(gen.PERSONAS)
    assert truth.duplicate_of.notna().any()
    defects = pd.read_csv(d / "truth" / "defects.csv")
    assert {"negative_amount", "exact_duplicate_row", "duplicate_record"} <= set(defects.defect)
    # the code that made the data is recorded, so stale generated data can be recognised
    meta = json.loads((d / "truth" / "generation.json").read_text())
    assert meta["generator"] == gen.generator_version() and len(meta["generator"]) == 16


def test_orders_stop_at_true_dropout(tiny_dataset):
    d = tiny_dataset
    truth = pd.read_parquet(d / "truth" / "customers.parquet").set_index("customer_id")
    orders = pd.concat(pd.read_csv(f, dtype=str) for f in (d / "orders").glob("*.csv"))
    defects = pd.read_csv(d / "truth" / "defects.csv")
    orders = orders[~orders.order_id.isin(defects.loc[defects.defect == "future_date", "key"])]
    orders["ts"] = pd.to_datetime(orders.order_ts)
    last = orders.groupby("customer_id").ts.max()
    drop = pd.to_datetime(truth.loc[last.index, "dropout_date"])
    assert (last.dt.normalize() <= drop).all()


def test_calendar_intensity_peaks():
    days = pd.date_range("2025-01-01", "2025-12-31")
    m = pd.Series(gen.calendar_intensity(days), index=days)
    assert np.isclose(m.mean(), 1.0)
    assert m["2025-11-11"] > 3 * m.median()
    assert m["2025-06-18"] > 2 * m.median()
    assert m["2025-01-30"] < m.median()  # Spring Festival holiday dip


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 10"):
        gen.generate(tmp_path / "x", 5)
    with pytest.raises(ValueError, match="must be after"):
        gen.generate(tmp_path / "x", 50, start="2025-01-01", end="2024-01-01")


def test_rate_scale_multiplies_orders(tmp_path):
    base = gen.generate(tmp_path / "base", 400, seed=5)
    scaled = gen.generate(tmp_path / "scaled", 400, seed=5, rate_scale=1.75)
    ratio = scaled.rows["orders"] / base.rows["orders"]
    assert 1.5 < ratio < 2.0
    truth = pd.read_parquet(tmp_path / "scaled" / "truth" / "customers.parquet")
    base_truth = pd.read_parquet(tmp_path / "base" / "truth" / "customers.parquet")
    # the 400 people come first (their duplicate records after) and get the same draws
    assert np.allclose(
        truth.purchase_rate_per_day.iloc[:400], 1.75 * base_truth.purchase_rate_per_day.iloc[:400]
    )
    with pytest.raises(ValueError, match="rate_scale"):
        gen.generate(tmp_path / "bad", 400, rate_scale=0)


def test_the_planted_complements_are_the_only_association_rules(tiny_dataset):
    import ibis

    from crm_analytics import crosssell

    orders = pd.concat(
        pd.read_csv(f, dtype=str) for f in sorted((tiny_dataset / "orders").glob("*.csv"))
    )
    lines = pd.concat(
        pd.read_csv(f, dtype=str) for f in sorted((tiny_dataset / "order_items").glob("*.csv"))
    )
    # the generator writes some category labels inconsistently (clean maps them back)
    canonical = {v.strip().lower(): c for c, vs in gen.CATEGORY_VARIANTS.items() for v in vs}
    label = lines.category.str.strip().str.lower()
    lines = lines.assign(item=label.map(canonical).fillna(label))
    paid = set(orders.order_id[orders.status.str.strip().str.lower() == "paid"])
    items = lines[lines.order_id.isin(paid)][["order_id", "item"]]
    rules = crosssell.association_rules(ibis.memtable(items), 0.01, 0.05).to_pandas()
    planted = set(gen.COMPLEMENTS.items())
    assert set(zip(rules.antecedent, rules.consequent, strict=True)) == planted
    # every other pair is bought together less often than chance
    every = crosssell.association_rules(ibis.memtable(items), 0.0, 0.0, min_lift=0.0).to_pandas()
    others = every[
        [(a, c) not in planted for a, c in zip(every.antecedent, every.consequent, strict=True)]
    ]
    assert len(others) > 0 and (others.lift < 1).all()
