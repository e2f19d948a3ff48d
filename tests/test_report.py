import json

import numpy as np
import pandas as pd

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
