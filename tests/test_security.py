"""Encryption at rest and secrets that stay in the environment."""

import sqlite3
import sys

import duckdb
import pandas as pd
import pytest
import yaml

from crm_analytics import store
from crm_analytics.runner import run_pipeline
from tests.test_pipeline import _params

KEY_ENV = "CRM_TEST_STORE_KEY"


def test_encrypted_store_holds_no_plaintext_and_needs_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k-7f3a9c")
    path = tmp_path / "enc.duckdb"
    con = store.connect(str(path), encryption_key_env=KEY_ENV)
    store.write_table(
        con, "customers", pd.DataFrame({"email": [f"wang.wei{i}@example.cn" for i in range(500)]})
    )
    con.disconnect()
    store.checkpoint(path, KEY_ENV)
    assert b"wang.wei" not in path.read_bytes() and path.stat().st_size > 0
    con = store.connect(str(path), read_only=True, encryption_key_env=KEY_ENV)
    assert con.table("customers").count().to_pyarrow().as_py() == 500
    con.disconnect()
    with pytest.raises(duckdb.Error, match="without a key"):
        store.connect(str(path))
    monkeypatch.setenv(KEY_ENV, "wrong key")
    with pytest.raises(duckdb.Error):
        store.connect(str(path), read_only=True, encryption_key_env=KEY_ENV).table(
            "customers"
        ).count().execute()
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=f"environment variable {KEY_ENV}, which is not set"):
        store.connect(str(path), encryption_key_env=KEY_ENV)


def test_encryption_without_openssl_fails_clearly_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k-7f3a9c")
    monkeypatch.setitem(
        sys.modules, "duckdb_extension_httpfs", None
    )  # the package is not installed
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nor is httpfs in DuckDB's extension folder
    with pytest.raises(store.EncryptionUnavailable, match="duckdb-extension-httpfs"):
        store.connect(str(tmp_path / "enc.duckdb"), encryption_key_env=KEY_ENV)
    assert not (tmp_path / "enc.duckdb").exists()  # never silently unencrypted


@pytest.mark.pipeline
def test_encrypted_pipeline_run_keeps_secrets_out_of_every_output(
    tiny_dataset, tmp_path, monkeypatch
):
    key, salt = "Key-5b1e-never-written", "Salt-93ad-never-written"
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("CRM_PSEUDONYM_SALT", salt)
    params = _params(tiny_dataset, tmp_path)
    params["encryption_key_env"] = KEY_ENV
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    reports = tmp_path / "reports"
    run_pipeline(f, run_id="collect", only="collect", reports_dir=reports, progress=False)
    run_dir = run_pipeline(f, run_id="clean", only="clean", reports_dir=reports, progress=False)
    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        emails = pd.read_sql(
            "select email from customers where email like '%@%'", db
        ).email.str.strip()
    raw = (tmp_path / "store.duckdb").read_bytes()
    assert not [e for e in emails.head(50) if e.encode() in raw], (
        "personal data in plaintext in the store"
    )
    con = store.connect(str(tmp_path / "store.duckdb"), read_only=True, encryption_key_env=KEY_ENV)
    assert con.table("customers").count().to_pyarrow().as_py() > 0
    con.disconnect()
    written = [q for q in tmp_path.rglob("*") if q.is_file() and q.suffix != ".duckdb"]
    assert any(q.name == "manifest.json" for q in written) and any(
        q.name == "run.log" for q in written
    )
    for q in written:
        text = q.read_bytes()
        assert key.encode() not in text and salt.encode() not in text, f"a secret is in {q}"
    assert "clean" in (run_dir / "index.html").read_text()
