from pathlib import Path

from crm_analytics import cli
from crm_analytics.schemas import data_model_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_generate_command(tmp_path, capsys):
    assert (
        cli.main(["generate", "--customers", "60", "--seed", "2", "--out", str(tmp_path / "g")])
        == 0
    )
    assert "generated" in capsys.readouterr().out
    assert (tmp_path / "g" / "_SUCCESS").is_file()


def test_run_command_reports_errors(tmp_path, capsys):
    assert cli.main(["run", "--params", str(tmp_path / "missing.yaml")]) == cli.EXIT_BAD_SETUP == 2
    assert "parameter file not found" in capsys.readouterr().err
    p = tmp_path / "p.yaml"
    p.write_text("store: x.duckdb\n")
    assert (
        cli.main(["run", "--params", str(p), "--only", "nonsense", "--reports-dir", str(tmp_path)])
        == 2
    )
    assert "unknown stage 'nonsense'" in capsys.readouterr().err


def test_run_and_forget_without_a_pseudonym_salt_stop_before_touching_anything(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("CRM_PSEUDONYM_SALT")
    p = tmp_path / "p.yaml"
    p.write_text(f"store: {tmp_path / 'store.duckdb'}\n")
    reports = tmp_path / "reports"
    for command in (["run", "--reports-dir", str(reports)],
                    ["forget", "--customer-id", "C1", "--reports-dir", str(reports)]):  # fmt: skip
        assert cli.main([*command, "--params", str(p)]) == cli.EXIT_BAD_SETUP
        assert "CRM_PSEUDONYM_SALT is not set" in capsys.readouterr().err
    assert not reports.exists() and not (tmp_path / "store.duckdb").exists()


def test_docs_command_and_committed_data_model_is_current(tmp_path):
    out = tmp_path / "dm.md"
    assert cli.main(["docs", "--out", str(out)]) == 0
    assert out.read_text() == data_model_markdown() + "\n"
    committed = (ROOT / "docs" / "data-model.md").read_text()
    assert committed == out.read_text(), "docs/data-model.md is stale: run `make docs`"


def test_prune_runs_keeps_the_newest_and_latest(tmp_path):
    import json

    from crm_analytics.runner import prune_runs

    for i, name in enumerate(["a", "b", "c", "d"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(
            json.dumps({"started_at": f"2026-01-0{i + 1}"})
        )
    (tmp_path / "latest").symlink_to("a", target_is_directory=True)  # the last good run is old
    assert prune_runs(tmp_path, 2, current="d") == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c", "d", "latest"]


def test_prune_runs_counts_each_parameter_file_and_keeps_the_compared_run(tmp_path):
    import json

    from crm_analytics.runner import prune_runs

    runs = [("s1", "small.yaml"), ("b1", "big.yaml"), ("s2", "small.yaml"), ("b2", "big.yaml"),
            ("s3", "small.yaml"), ("b3", "big.yaml"), ("s4", "small.yaml")]  # fmt: skip
    for i, (name, params) in enumerate(runs):
        (tmp_path / name).mkdir()
        manifest = {"started_at": f"2026-01-0{i + 1}", "params_file": params}
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
    # two per parameter file: the big runs do not push out the small ones, and the run
    # the current one is compared with (s2, say) stays although it is older
    assert prune_runs(tmp_path, 2, current="s4", protect=["s2"]) == ["b1", "s1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2", "b3", "s2", "s3", "s4"]


def _run_folder(reports, name, day, stages, status="ok", params="params/default.yaml"):
    import json

    (reports / name).mkdir()
    (reports / name / "manifest.json").write_text(json.dumps({
        "started_at": f"2026-01-0{day}T00:00:00", "ended_at": f"2026-01-0{day}T00:05:00",
        "status": status, "params_file": params, "stages": [{"stage": s} for s in stages],
    }))  # fmt: skip


def test_previous_run_is_the_last_run_covering_the_same_stages(tmp_path):
    from crm_analytics.config import STAGES
    from crm_analytics.runner import previous_run

    _run_folder(tmp_path, "full-1", 1, STAGES)
    _run_folder(tmp_path, "only-forecast", 2, ["forecast"])
    _run_folder(tmp_path, "full-failed", 3, STAGES, status="failed")
    _run_folder(tmp_path, "other-params", 4, STAGES, params="params/cdnow.yaml")
    _run_folder(tmp_path, "broken", 5, STAGES)
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    # a full run skips the partial, failed, other-parameter and unreadable runs
    assert previous_run(tmp_path, "params/default.yaml", "now").name == "full-1"
    # a forecast-only run compares with the newest run that made a forecast
    assert (
        previous_run(tmp_path, "params/default.yaml", "now", ["forecast"]).name == "only-forecast"
    )
    assert previous_run(tmp_path, "params/cdnow.yaml", "other-params") is None
