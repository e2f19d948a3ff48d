"""Privacy and safety of what a run writes: no raw personal data, no live markup from the data, no secrets."""

import json
import shutil
import sqlite3

import ibis
import pandas as pd
import pytest
import yaml

from crm_analytics import config
from crm_analytics.generate import source_specs
from crm_analytics.runner import run_pipeline
from tests.leaks import personal_values_in

SCRIPT = "<script>alert('pwned')</script>"
IMG = "<img src=x onerror=alert(1)>"


def test_expand_env_and_refusing_literal_passwords(monkeypatch):
    monkeypatch.setenv("CRM_TEST_URL", "postgresql://u:pw@h/db")
    assert config.expand_env("${CRM_TEST_URL}") == "postgresql://u:pw@h/db"
    assert config.expand_env("plain/path.duckdb") == "plain/path.duckdb"
    with pytest.raises(ValueError, match="CRM_TEST_MISSING is not set"):
        config.expand_env("${CRM_TEST_MISSING}")
    config.check_no_secrets(
        {"store": "postgresql://u@h/db", "collect": {"sources": {"c": {"url": "${DB}"}}}}
    )
    config.check_no_secrets(
        {"url": "postgresql://u:${PGPASS}@h/db"}
    )  # the password itself from the environment
    with pytest.raises(
        ValueError, match=r"collect\.sources\.customers\.url holds a database password"
    ):
        config.check_no_secrets(
            {"collect": {"sources": {"customers": {"url": "postgresql://u:hunter2@h/db"}}}}
        )


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"store": "mysql://:hunter2@h/db"}, "store holds a database password"),
        ({"url": "postgresql://h/db?sslmode=require&password=hunter2"}, "url holds a password"),
        ({"url": "postgresql://h/db?PWD=hunter2"}, "url holds a password"),
        ({"dsn": "host=h dbname=d password=hunter2"}, "dsn holds a password"),
        ({"src": {"api_key": "k-123"}}, r"src\.api_key holds a secret"),
        ({"encryption_key": "k-123"}, "encryption_key holds a secret"),
        ({"s": [{"password": 1234}]}, r"s\[0\]\.password holds a secret"),
    ],
)
def test_secrets_in_any_form_are_refused(params, where):
    with pytest.raises(ValueError, match=where):
        config.check_no_secrets(params)


def test_references_to_the_environment_and_ordinary_settings_pass():
    config.check_no_secrets(
        {
            "url": "postgresql://h/db?sslmode=require&password=${PGPASSWORD}",
            "dsn": "host=h password=${PGPASSWORD}",
            "encryption_key_env": "CRM_STORE_KEY",  # names a variable, holds no key
            "api_key": "${API_KEY}",
            "password": "",
            "first_pass": True,
            "path": "data/token=7/part.parquet",
        }
    )


@pytest.fixture(scope="module")
def poisoned_run(tiny_dataset, tmp_path_factory):
    """The whole pipeline on a copy of the tiny dataset whose text fields carry markup payloads."""
    tmp = tmp_path_factory.mktemp("poison")
    data = tmp / "data"
    shutil.copytree(tiny_dataset, data)
    surveys = pd.read_csv(data / "surveys.csv", encoding="gbk", dtype=str)
    surveys.loc[surveys.index[::3], "comment"] = f"{SCRIPT} 物流很快"
    surveys.loc[surveys.index[1::3], "comment"] = f"{IMG} 客服态度好"
    surveys.to_csv(data / "surveys.csv", index=False, encoding="gbk")
    for f in sorted((data / "order_items").glob("*.csv")):
        items = pd.read_csv(f, dtype=str)
        items.loc[items.index[::7], "category"] = IMG
        items.to_csv(f, index=False)
    for f in sorted((data / "orders").glob("*.csv")):
        orders = pd.read_csv(f, dtype=str)
        orders.loc[orders.index[::5], "region"] = SCRIPT
        orders.to_csv(f, index=False)
    with sqlite3.connect(data / "crm.sqlite") as db:
        db.execute("update customers set name = ? where rowid % 4 = 0", (SCRIPT,))
        db.execute("update customers set city = ? where rowid % 4 = 1", (IMG,))
    p = config.load_params(config.project_root() / "params" / "default.yaml")
    p.pop("generate")
    p["store"] = str(tmp / "store.duckdb")
    p["collect"]["sources"] = source_specs(data)
    for stage in ("clean", "segment", "churn"):
        p[stage]["truth_dir"] = str(data / "truth")
    p["segment"]["silhouette_sample"] = 300
    p["segment"]["export_dir"] = p["churn"]["export_dir"] = str(tmp / "exports")
    p["forecast"].update(horizon=8, max_groups=3, promotions_file=str(data / "promotions.csv"))
    f = tmp / "poison.yaml"
    f.write_text(yaml.safe_dump(p, allow_unicode=True))
    run_dir = run_pipeline(f, run_id="poison", reports_dir=tmp / "reports", progress=False)
    return tmp, run_dir


def _html_files(tmp, run_dir):
    return [*run_dir.glob("*.html"), tmp / "reports" / "index.html"]


def test_the_leak_check_finds_short_names_and_reformatted_phones():
    people = pd.DataFrame(
        {
            "name": ["王伟", "欧阳娜娜"],
            "email": ["U1@X.cn", None],
            "phone": ["0086-138-1105-1125", "5"],
        }
    )
    for text, column in (
        ("<td>王伟</td>", "name"),
        ("top customer 欧阳娜娜, 3 orders", "name"),
        ("<td>+86 13811051125</td>", "phone"),
        ("138 1105 1125", "phone"),
        ("mail u1@x.cn", "email"),
    ):
        assert column in personal_values_in(text, people), text
    assert personal_values_in("王伟家电 in 北京; cust_13811051120; 1381105112", people) == {}


def test_markup_from_the_data_never_becomes_live_html(poisoned_run):
    tmp, run_dir = poisoned_run
    files = _html_files(tmp, run_dir)
    assert len(files) >= 7
    shown = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert "<script>alert" not in text, f"{f.name}: a script from the data is live"
        assert "<img src=x" not in text and "onerror=alert" not in text.replace(
            "onerror=alert(1)&gt;", ""
        ), f"{f.name}: an event handler from the data is live"
        shown += text.count("&lt;script&gt;alert") + text.count("&lt;img src=x")
    assert shown > 0  # the payloads do reach the reports, as text


def test_reports_hold_no_raw_personal_data(poisoned_run, tiny_dataset):
    tmp, run_dir = poisoned_run
    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        people = pd.read_sql(
            "select customer_id, name, email, phone, birth_date from customers", db
        )
    shown = [*_html_files(tmp, run_dir), *run_dir.glob("*.ipynb"), *run_dir.glob("*.json")]
    assert len([f for f in shown if f.suffix == ".ipynb"]) == 5
    text = "".join(f.read_text(encoding="utf-8") for f in shown)
    leaked = personal_values_in(text, people.drop(columns="customer_id"))
    assert not leaked, (
        f"personal values appear in the reports: { {c: v[:3] for c, v in leaked.items()} }"
    )
    assert not [c for c in people.customer_id if c in text]  # only pseudonymous ids
    # the personal data is where it belongs: in the store, and in consented exports outside reports/
    assert list((tmp / "exports").rglob("*.csv")) and not list(run_dir.rglob("*.csv"))


@pytest.mark.postgres
def test_database_password_from_the_environment_never_reaches_outputs(postgres_url, tiny_dataset, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    secret = "S3cret-Pw-9431"
    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        customers = pd.read_sql("select * from customers", db)
    pg = ibis.connect(postgres_url)
    pg.create_table("privacy_customers", customers, overwrite=True)
    pg.disconnect()
    # the test server trusts local connections, so any password is accepted, and the URL carries one
    with_password = postgres_url.replace("postgres@", f"postgres:{secret}@")
    monkeypatch.setenv("CRM_TEST_CRM_URL", with_password)
    p = config.load_params(config.project_root() / "params" / "default.yaml")
    p.pop("generate")
    p["store"] = str(tmp_path / "store.duckdb")
    p["collect"]["sources"] = {**source_specs(tiny_dataset),
                               "customers": {"kind": "sql", "url": "${CRM_TEST_CRM_URL}", "table": "privacy_customers"}}  # fmt: skip
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(p, allow_unicode=True))
    run_dir = run_pipeline(
        f, run_id="secret", only="collect", reports_dir=tmp_path / "reports", progress=False
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["collect"]["rows_per_table"]["customers"] == len(customers)  # it did connect
    written = [q for q in run_dir.rglob("*") if q.is_file()] + [tmp_path / "reports" / "index.html"]
    for q in written:
        assert secret not in q.read_text(encoding="utf-8", errors="ignore"), (
            f"the password is in {q.name}"
        )
    con = ibis.duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True)
    assert not con.table("source_files").to_pandas().source.str.contains(secret).any()
    con.disconnect()
    # the same URL written into the parameter file is refused before anything runs
    p["collect"]["sources"]["customers"]["url"] = with_password
    f.write_text(yaml.safe_dump(p, allow_unicode=True))
    with pytest.raises(ValueError, match="holds a database password"):
        run_pipeline(
            f, run_id="secret2", only="collect", reports_dir=tmp_path / "reports", progress=False
        )
