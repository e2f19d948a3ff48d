"""Right to erasure: a forgotten customer leaves the store, exports, snapshots and reports, and stays out."""

import json

import ibis
import pandas as pd
import pytest
import yaml

from crm_analytics import cli, erasure
from crm_analytics.report import pseudonymise
from crm_analytics.runner import run_pipeline
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


def test_suppress_raw_withholds_the_persons_raw_rows_and_their_order_lines(store):
    held = erasure.suppress_raw(store, {erasure.key_hash("C1")})
    assert held == {"raw_orders": 1, "raw_order_items": 1}
    assert store.table("raw_orders").customer_id.to_pyarrow().to_pylist() == ["C2"]
    assert erasure.suppress_raw(store, set()) == {"raw_orders": 0, "raw_order_items": 0}


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
    con.disconnect()

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
    # the next run reads the same files again: the person stays out, and the report says why rows are missing
    run_pipeline(f, run_id="after-collect", only="collect", reports_dir=reports, progress=False)
    run_dir = run_pipeline(
        f, run_id="after-clean", only="clean", reports_dir=reports, progress=False
    )
    assert rows_of([cid]) == {}
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
