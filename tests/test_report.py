import json

import numpy as np
import pandas as pd
import pytest

from crm_analytics import report


def test_pseudonymise_is_stable_salted_and_not_the_id():
    ids = pd.Series(["C1", "C2", "C1"])
    a = report.pseudonymise(ids, salt="s1")
    assert a[0] == a[2] and a[0] != a[1]
    assert a.str.match(r"^cust_[0-9a-f]{10}$").all()
    assert not a.str.contains("C1").any()
    assert (report.pseudonymise(ids, salt="s2") != a).all()


def test_pseudonymise_reads_salt_from_environment(monkeypatch):
    ids = pd.Series(["C1"])
    monkeypatch.setenv(report.PSEUDONYM_SALT_ENV, "secret")
    assert report.pseudonymise(ids)[0] == report.pseudonymise(ids, salt="secret")[0]


def test_pseudonymise_without_a_salt_fails_and_says_how_to_set_one(monkeypatch):
    # a built-in default salt would let anyone reverse the ids by hashing known keys
    for unset in (None, ""):
        if unset is None:
            monkeypatch.delenv(report.PSEUDONYM_SALT_ENV, raising=False)
        else:
            monkeypatch.setenv(report.PSEUDONYM_SALT_ENV, unset)
        with pytest.raises(report.MissingSecret, match=r"CRM_PSEUDONYM_SALT is not set.*openssl"):
            report.pseudonymise(pd.Series(["C1"]))


def test_safe_columns_drops_personal_data():
    frame = pd.DataFrame(
        {
            "customer_id": ["C1"],
            "name": ["王伟"],
            "email": ["a@b.c"],
            "phone": ["1"],
            "spend": [3.0],
        }
    )
    got = report.safe_columns(frame)
    assert list(got.columns) == ["customer", "spend"]
    assert got.customer[0].startswith("cust_")


def test_stage_metrics_round_trip_with_numpy_and_nan(tmp_path):
    path = report.write_stage_metrics(
        str(tmp_path),
        "churn",
        {"auc": np.float64(0.8), "n": np.int64(3), "x": float("nan"), "d": {"k": np.nan}},
    )
    assert json.loads(path.read_text()) == {"auc": 0.8, "n": 3, "x": None, "d": {"k": None}}
    assert report.read_stage_metrics(tmp_path) == {
        "churn": {"auc": 0.8, "n": 3, "x": None, "d": {"k": None}}
    }
    assert report.write_stage_metrics("", "churn", {"a": 1}) is None
    # a nullable column's missing value (a database source has no file size) is null, not "<NA>"
    files = pd.DataFrame({"size_bytes": pd.array([None, 12], dtype="Int64")})
    path = report.write_stage_metrics(str(tmp_path), "collect", {"files": files.to_dict("records")})
    assert json.loads(path.read_text()) == {"files": [{"size_bytes": None}, {"size_bytes": 12}]}


def test_index_lists_stages_and_key_figures(tmp_path):
    manifest = {
        "run_id": "r1",
        "params_file": "params/x.yaml",
        "status": "ok",
        "seconds": 12.0,
        "stages": [
            {
                "stage": "churn",
                "notebook": "04_churn.ipynb",
                "html": "04_churn.html",
                "status": "ok",
                "seconds": 3.0,
            }
        ],
    }
    html = report.write_index(
        tmp_path, manifest, {"churn": {"holdout_roc_auc": 0.8123}}
    ).read_text()
    assert 'href="04_churn.html"' in html and "test ROC AUC: 0.812" in html


def test_index_shows_the_run_at_a_glance_and_the_run_list(tmp_path):
    metrics = {
        "clean": {"input": 10, "kept": 8, "duplicates": 1, "merged": 0, "quarantined": 1,
                  "per_table": {"orders": {"input": 10, "kept": 8, "duplicates": 1, "merged": 0, "quarantined": 1}}},
        "segment": {"segments": {"Champions": 5, "Lost <b>": 3}},
        "churn": {"risk_tiers": {"high": 2, "medium": 1, "low": 7}},
        "forecast": {"main_series": "revenue: total",
                     "forecast_next": [{"period": "2026-10-05", "point": 100.0, "lower_95": 80.0, "upper_95": 120.0}]},
    }  # fmt: skip
    stages = [{"stage": "segment", "notebook": "03_segment.ipynb", "status": "skipped", "seconds": 0.0,
               "reason": "this data has no orders"}]  # fmt: skip
    run = tmp_path / "r2"
    run.mkdir()
    manifest = {"run_id": "r2", "params_file": "p.yaml", "status": "ok", "seconds": 5.0, "stages": stages,
                "previous_run": "r1", "started_at": "2026-01-02T00:00:00"}  # fmt: skip
    html = report.write_index(
        run, manifest, metrics, {"clean": {"input": 10, "kept": 9}}
    ).read_text()
    assert "this data has no orders" in html and 'href="../r1/index.html"' in html
    assert "Lost &lt;b&gt;" in html and "Lost <b>" not in html  # data text is escaped
    assert "2026-10-05" in html and "80 - 120" in html
    assert 'id="executive-summary"' in html
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "metrics.json").write_text(json.dumps(metrics))
    listing = report.write_run_list(tmp_path).read_text()
    assert 'href="r2/index.html"' in listing and "high risk: 2" in listing


def test_interactive_table_is_offline_and_escapes_text():
    from IPython.display import HTML

    got = report.interactive_table(
        pd.DataFrame({"seg": ["<script>alert(1)</script>"], "v": [1.23456]}), "cap"
    )
    assert isinstance(got, HTML)
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;" in got.data and "<script>alert(1)" not in got.data
    )
    assert "1.23" in got.data and "cdn" not in got.data.lower()


def test_sanitize_markdown_removes_live_markup_and_keeps_markdown():
    md = "**12** customers in <script>alert(1)</script> segment <img src=x onerror=alert(1)>; MASE < 1"
    out = report.sanitize_markdown(md)
    assert out.startswith("**12** customers in ") and "<script" not in out and "onerror" not in out
    assert "MASE &lt; 1" in out


def test_text_columns_read_from_the_left_and_phrases_get_room():
    frame = pd.DataFrame(
        {
            "cluster": [0, 1],
            "segment": ["At Risk", "Champions"],
            "description": ["high cat fashion, low cat beauty, low cat electronics", "close"],
            "share": [0.25, 0.75],
        }
    )
    page = report.table(frame, "Cluster profiles").to_html()
    styles = page.split("</style>")[0]
    # segment and description (cells and headings), not the numbers
    assert styles.count("text-align: left") == 4
    assert styles.count("min-width: 16em") == 1
    wide = styles.split("min-width: 16em")[0].rsplit("}", 1)[-1]
    assert ".col2" in wide and ".col1" not in wide and ".col3" not in wide


def test_missing_values_show_as_a_dash():
    frame = pd.DataFrame(
        {
            "model": ["arima", None],
            "c": [float("nan"), 0.1],
            "n": pd.array([None, 3], dtype="Int64"),
        }
    )
    cells = report.table(frame, "Hyper-parameters tried").to_html().split("</style>")[1]
    assert "nan" not in cells and "&lt;NA&gt;" not in cells and "None" not in cells
    assert cells.count(">–<") == 3 and ">0.10<" in cells and ">arima<" in cells
