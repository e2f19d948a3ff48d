import ast
import json
from pathlib import Path

import pytest
import yaml

from crm_analytics import config

ROOT = Path(__file__).resolve().parents[1]


def test_load_params_requires_store(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("cutoff_date: '2020-01-01'\n")
    with pytest.raises(ValueError, match="missing required key 'store'"):
        config.load_params(f)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"store": "postgresql://analyst@db/crm"},
            "'store' must be a DuckDB file, not a database URL",
        ),
        ({"store": ":memory:"}, "'store' must be a DuckDB file, not ':memory:'"),
        ({"store": "s.duckdb", "engine": "dask"}, "'engine' must be store, spark or postgres"),
        ({"store": "s.duckdb", "engine": "postgres"}, "'engine: postgres' needs 'engine_url"),
        ({"store": "s.duckdb", "engine": "postgres", "engine_url": ""}, "needs 'engine_url"),
        (
            {"store": "s.duckdb", "engine": "postgres", "engine_url": "mysql://h/db"},
            "needs 'engine_url",
        ),
        ({"store": "${CRM_TEST_STORE_URL}"}, "'store' must be a DuckDB file, not a database URL"),
    ],
)
def test_load_params_refuses_stores_and_engines_the_stages_cannot_use(
    tmp_path, monkeypatch, settings, message
):
    """A database URL as the store, an unknown engine or a PostgreSQL engine without a URL
    stop before any stage runs, naming the file and what to set instead."""
    monkeypatch.setenv("CRM_TEST_STORE_URL", "postgresql://analyst@db/crm")
    monkeypatch.setenv("CRM_TEST_ENGINE_URL", "postgresql://analyst@db/crm")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(settings))
    with pytest.raises(ValueError, match=message) as err:
        config.load_params(f)
    assert str(f) in str(err.value)
    settings.update(engine="postgres", engine_url="${CRM_TEST_ENGINE_URL}", store="s.duckdb")
    f.write_text(yaml.safe_dump(settings))
    assert config.load_params(f)["engine_url"] == "${CRM_TEST_ENGINE_URL}"  # kept unexpanded


def test_load_params_rejects_non_mapping_section(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("store: x.duckdb\nchurn: [1, 2]\n")
    with pytest.raises(ValueError, match="section 'churn' must be a mapping"):
        config.load_params(f)


def test_load_params_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        config.load_params(tmp_path / "nope.yaml")


def test_stage_parameters_merge_global_and_section():
    params = {
        "store": "s.duckdb",
        "seed": 1,
        "generate": {"customers": 5},
        "churn": {"seed": 2, "churn_window_days": 30},
        "collect": {},
        "clean": {},
        "segment": {},
        "forecast": {},
    }
    got = config.stage_parameters(params, "churn")
    assert got == {"store": "s.duckdb", "seed": 2, "churn_window_days": 30}
    with pytest.raises(ValueError, match="unknown stage"):
        config.stage_parameters(params, "nope")


def test_resolve_path_relative_to_root(tmp_path):
    assert config.resolve_path("a/b", tmp_path) == tmp_path / "a/b"
    assert config.resolve_path("/x/y", tmp_path) == Path("/x/y")


def _parameters_cell(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb_path.name}: expected one parameters cell, found {len(cells)}"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("stage", config.STAGES)
def test_notebook_parameter_cell_is_typed_literals_with_comments(stage):
    src = _parameters_cell(ROOT / "notebooks" / config.NOTEBOOKS[stage])
    tree = ast.parse(src)
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), f"{stage}: parameters must be annotated assignments"
        ast.literal_eval(node.value)  # literals only: raises on any expression
    for line in src.splitlines():
        if line and not line.startswith((" ", "}")):
            assert "#" in line, f"{stage}: parameter line without a comment: {line}"


@pytest.mark.parametrize("stage", config.STAGES)
def test_notebook_defaults_match_default_params(stage):
    """The notebook's defaults are the default parameter set, so interactive runs match `make run`."""
    src = _parameters_cell(ROOT / "notebooks" / config.NOTEBOOKS[stage])
    defaults = {n.target.id: ast.literal_eval(n.value) for n in ast.parse(src).body}
    params = config.stage_parameters(config.load_params(ROOT / "params" / "default.yaml"), stage)
    assert set(params) <= set(defaults), f"{stage}: parameters not declared in the notebook"
    for key, value in params.items():
        assert defaults[key] == value, (
            f"{stage}: notebook default of {key} differs from default.yaml"
        )


@pytest.mark.parametrize("name", ["default.yaml", "cdnow.yaml", "cdnow-full.yaml", "telco.yaml"])
def test_shipped_param_files_load(name):
    params = config.load_params(ROOT / "params" / name)
    assert params["collect"]["sources"]
    assert yaml.safe_load((ROOT / "params" / name).read_text())["cutoff_date"]


def test_committed_notebooks_have_no_outputs():
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [], f"{nb_path.name} has outputs: clear them"
                assert cell.get("execution_count") is None, f"{nb_path.name} has execution counts"


@pytest.mark.parametrize("stage", config.STAGES)
def test_papermill_reads_every_parameter(stage):
    """papermill's own parser must see every parameter (it silently skips lines it cannot parse)."""
    import papermill

    nb_path = ROOT / "notebooks" / config.NOTEBOOKS[stage]
    declared = [n.target.id for n in ast.parse(_parameters_cell(nb_path)).body]
    assert list(papermill.inspect_notebook(str(nb_path))) == declared


SHOWN = ("table", "markdown", "interactive_table")


def test_every_report_table_of_a_notebook_is_displayed():
    # IPython shows only a cell's last top-level expression: a report.table(...) anywhere
    # else (before another statement, inside an if) never reaches the HTML report
    lost = []
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            tree = ast.parse("".join(cell["source"]).replace("%matplotlib inline", ""))
            last = tree.body[-1] if tree.body else None
            for node in ast.walk(tree):
                calls = [node.value] if isinstance(node, ast.Expr) and node is not last else []
                if calls and isinstance(calls[0], ast.IfExp):
                    calls = [calls[0].body, calls[0].orelse]
                for call in calls:
                    func = call.func if isinstance(call, ast.Call) else None
                    if (
                        isinstance(func, ast.Attribute)
                        and isinstance(func.value, ast.Name)
                        and func.value.id == "report"
                        and func.attr in SHOWN
                    ):
                        lost.append(f"{nb_path.name} cell {i} line {node.lineno}")
    assert not lost, f"report output never displayed (wrap it in display()): {lost}"
