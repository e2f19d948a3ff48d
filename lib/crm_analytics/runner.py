"""Run the stage notebooks in order with papermill and render the reports.

A run writes ``reports/<run_id>/``: the executed notebooks, one HTML per stage
(without code cells), ``index.html``, ``manifest.json`` and ``metrics.json``.
``reports/latest`` points at the newest successful run. A failing stage stops
the run with :class:`StageFailed` naming the notebook and the cell; the
manifest of the failed run records it, and ``latest`` keeps pointing at the
last good run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from crm_analytics.config import (
    NOTEBOOKS,
    STAGE_NEEDS,
    STAGES,
    check_no_secrets,
    load_params,
    project_root,
    resolve_path,
    stage_parameters,
)
from crm_analytics.report import read_stage_metrics, render_html, write_index, write_run_list
from crm_analytics.store import connect, duckdb_path, has_table
from crm_analytics.summary import comparison_html, summary_html

KERNEL_NAME = "crm-analytics"
"""Jupyter kernel registered by ``make`` for the project's virtual environment."""

PACKAGES: tuple[str, ...] = (
    "crm-analytics",
    "ibis-framework",
    "duckdb",
    "sqlglot",
    "pandas",
    "numpy",
    "pyarrow",
    "pandera",
    "scikit-learn",
    "pmdarima",
    "lifetimes",
    "papermill",
    "nbconvert",
    "seaborn",
    "matplotlib",
)


class StageFailed(RuntimeError):
    """A stage notebook raised; the message names the notebook, the cell and the error."""


def package_versions() -> dict[str, str]:
    """Return the installed versions of the packages that shape results.

    Returns
    -------
    dict
        Package -> version ("not installed" when absent).
    """
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def kernel_name() -> str:
    """Return the project kernel if registered, else the kernel of this interpreter.

    Returns
    -------
    str
        A Jupyter kernel name.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return KERNEL_NAME if KERNEL_NAME in specs else "python3"


def stages_to_run(from_stage: str | None = None, only: str | None = None) -> list[str]:
    """Return the stages selected by ``--from`` / ``--only``.

    Parameters
    ----------
    from_stage : str, optional
        First stage to run (later ones follow).
    only : str, optional
        The single stage to run.

    Returns
    -------
    list of str
        Stage names in run order.

    Raises
    ------
    ValueError
        If a stage name is unknown or both options are given.
    """
    for s in (from_stage, only):
        if s is not None and s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; expected one of {', '.join(STAGES)}")
    if from_stage and only:
        raise ValueError("give --from or --only, not both")
    if only:
        return [only]
    if from_stage:
        return list(STAGES[STAGES.index(from_stage) :])
    return list(STAGES)


def _absolute_paths(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make the store path absolute, so notebooks find it from any working directory."""
    out = dict(params)
    store = str(out.get("store", ""))
    if store and "://" not in store and store != ":memory:" and "${" not in store:
        out["store"] = str(resolve_path(store, root))
    return out


def _update_latest(reports: Path, run_id: str) -> None:
    """Point ``reports/latest`` at ``run_id`` atomically."""
    tmp = reports / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_id, target_is_directory=True)
    os.replace(tmp, reports / "latest")


def previous_run(reports: Path, params_file: str, run_id: str) -> Path | None:
    """Return the newest earlier successful run with the same parameter file.

    Parameters
    ----------
    reports : Path
        Folder of run folders.
    params_file : str
        Parameter file of the current run (as recorded in manifests).
    run_id : str
        The current run (excluded).

    Returns
    -------
    Path or None
        Its folder, or None for a first run.
    """
    best: tuple[str, Path] | None = None
    for manifest in reports.glob("*/manifest.json"):
        run = manifest.parent
        if run.name == run_id or run.is_symlink():
            continue
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if m.get("status") != "ok" or m.get("params_file") != params_file:
            continue
        key = str(m.get("ended_at", ""))
        if best is None or key > best[0]:
            best = (key, run)
    return best[1] if best else None


def add_summary_cell(notebook: Path, html_block: str) -> None:
    """Insert an executive-summary markdown cell after the title cell of an executed notebook.

    Parameters
    ----------
    notebook : Path
        Executed ``.ipynb`` (rewritten in place).
    html_block : str
        The summary (:func:`crm_analytics.summary.summary_html`).
    """
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cell = nbformat.v4.new_markdown_cell(html_block)
    cell.metadata["tags"] = ["executive-summary"]
    nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, cell)
    nbformat.write(nb, notebook)


def snapshot_customer_state(store: str, path: Path) -> pd.DataFrame | None:
    """Save each customer's segment and churn-risk tier of this run, for the next run's comparison.

    The snapshot holds CRM keys, so it goes under ``data/`` (like exports), never
    under ``reports/``; the comparison page shows counts only.

    Parameters
    ----------
    store : str
        The run's store.
    path : Path
        Parquet file to write.

    Returns
    -------
    pandas.DataFrame or None
        customer_id, segment, risk_tier (None when the store has neither table).
    """
    import pandas as pd

    db = duckdb_path(store)
    if db is not None and not db.exists():
        return None
    con = connect(store, read_only=db is not None)
    try:
        parts = []
        for table, column in (("customer_segments", "segment"), ("churn_scores", "risk_tier")):
            if has_table(con, table) and column in con.table(table).columns:
                parts.append(
                    con.table(table)
                    .select("customer_id", column)
                    .to_pandas()
                    .set_index("customer_id")
                )
    finally:
        con.disconnect()
    if not parts:
        return None
    state = pd.concat(parts, axis=1).reset_index()
    for column in ("segment", "risk_tier"):
        if column not in state:
            state[column] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    state.to_parquet(path, index=False)
    return state


def prune_runs(reports: Path, keep: int, current: str) -> list[str]:
    """Delete all but the ``keep`` newest run folders (and their customer snapshots).

    The current run and the target of ``latest`` are never deleted.

    Parameters
    ----------
    reports : Path
        Folder of run folders.
    keep : int
        Runs to keep (at least 1).
    current : str
        The run just finished.

    Returns
    -------
    list of str
        Run ids removed, oldest first.
    """
    import shutil

    latest = (reports / "latest").resolve().name if (reports / "latest").is_symlink() else None
    runs = []
    for manifest in reports.glob("*/manifest.json"):
        if manifest.parent.is_symlink():
            continue
        try:
            started = str(json.loads(manifest.read_text(encoding="utf-8")).get("started_at", ""))
        except (OSError, json.JSONDecodeError):
            started = ""
        runs.append((started, manifest.parent.name))
    runs.sort(reverse=True)
    removed = []
    for _, name in runs[max(keep, 1) :]:
        if name in (current, latest):
            continue
        shutil.rmtree(reports / name)
        removed.append(name)
    return sorted(removed)


def skip_reason(store: str, stage: str, stage_params: dict[str, Any] | None = None) -> str | None:
    """Return why a stage cannot run on this store's data, or None when it can.

    A stage listed in :data:`crm_analytics.config.STAGE_NEEDS` needs those clean
    tables with at least one row (e.g. segmentation and forecasting need orders,
    which a subscriber table such as the IBM Telco data does not have).

    Parameters
    ----------
    store : str
        The run's store (DuckDB path or database URL).
    stage : str
        Stage name.
    stage_params : dict, optional
        The stage's parameters: a forecast given its own ``series_source`` needs no orders.

    Returns
    -------
    str or None
        A sentence for the report, or None.
    """
    needs = STAGE_NEEDS.get(stage, ())
    if stage == "forecast" and (stage_params or {}).get("series_source"):
        return None
    if not needs or not store:
        return None
    path = duckdb_path(store)
    if path is not None and not path.exists():
        return None  # nothing collected yet: let the stage report its own error
    con = connect(store, read_only=path is not None)
    try:
        missing = [
            t
            for t in needs
            if not has_table(con, t) or con.table(t).count().to_pyarrow().as_py() == 0
        ]
    finally:
        con.disconnect()
    if not missing:
        return None
    return f"skipped: this data has no {', '.join(missing)} (transactions), which the {stage} stage needs"


def run_pipeline(
    params_file: str | Path,
    run_id: str | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    reports_dir: str | Path = "reports",
    kernel: str | None = None,
    progress: bool = True,
    keep: int = 0,
) -> Path:
    """Run the selected stages and write the run's reports.

    Parameters
    ----------
    params_file : str or Path
        Parameter YAML.
    run_id : str, optional
        Name of the run folder; a UTC timestamp by default.
    from_stage, only : str, optional
        Stage selection (see :func:`stages_to_run`).
    reports_dir : str or Path, default "reports"
        Parent folder of run folders (relative to the project root).
    kernel : str, optional
        Jupyter kernel; :func:`kernel_name` by default.
    progress : bool, default True
        Print progress lines (they also go to ``run.log`` in the run folder).
    keep : int, default 0
        After a successful run, keep only this many newest run folders (0 keeps all).

    Returns
    -------
    Path
        The run folder.

    Raises
    ------
    StageFailed
        If a notebook fails.
    FileExistsError
        If the run folder already exists.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = project_root()
    params = _absolute_paths(load_params(resolve_path(params_file, root)), root)
    check_no_secrets(params)
    stages = stages_to_run(from_stage, only)
    run_id = run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    reports = resolve_path(reports_dir, root)
    run_dir = reports / run_id
    if run_dir.exists():
        raise FileExistsError(f"run folder {run_dir} already exists; pick another --run-id")
    run_dir.mkdir(parents=True)
    kernel = kernel or kernel_name()
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "params_file": str(params_file),
        "parameters": params,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": "running",
        "kernel": kernel,
        "packages": package_versions(),
        "command": " ".join(sys.argv),
        "stages": [],
    }
    log_file = run_dir / "run.log"

    def say(line: str) -> None:
        """Print a progress line and append it, time-stamped, to the run's log file."""
        if progress:
            print(line, flush=True)
        with log_file.open("a", encoding="utf-8") as fh:
            fh.write(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} {line}\n")

    say(f"run {run_id}: parameters {params_file}, stages {', '.join(stages)}")
    report_settings = params.get("report") or {}
    language = str(report_settings.get("language", "en"))
    before = previous_run(reports, str(params_file), run_id)
    previous = read_stage_metrics(before) if before else {}
    manifest["previous_run"] = before.name if before else None
    t_run = time.perf_counter()
    failure: StageFailed | None = None
    for i, stage in enumerate(stages, 1):
        nb_name = NOTEBOOKS[stage]
        out_nb = run_dir / nb_name
        stage_params = {**stage_parameters(params, stage), "run_dir": str(run_dir)}
        say(f"[{i}/{len(stages)}] {stage}: running {nb_name} ...")
        entry: dict[str, Any] = {
            "stage": stage,
            "notebook": nb_name,
            "status": "running",
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        t0 = time.perf_counter()
        reason = skip_reason(str(params.get("store", "")), stage, stage_params)
        if reason:
            entry.update(status="skipped", reason=reason, seconds=0.0)
            entry["ended_at"] = entry["started_at"]
            manifest["stages"].append(entry)
            say(f"      skipped: {reason}")
            continue
        try:
            pm.execute_notebook(
                str(root / "notebooks" / nb_name),
                str(out_nb),
                parameters=stage_params,
                kernel_name=kernel,
                cwd=str(root / "notebooks"),
                progress_bar=False,
                log_output=False,
            )
            entry["status"] = "ok"
        except PapermillExecutionError as exc:
            entry["status"] = "failed"
            entry["error"] = (
                f"cell {exc.cell_index} (execution {exc.exec_count}): {exc.ename}: {exc.evalue}"
            )
            failure = StageFailed(
                f"stage {stage} failed in notebooks/{nb_name}, cell {exc.cell_index}: "
                f"{exc.ename}: {exc.evalue} (executed notebook: {out_nb})"
            )
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["ended_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        stage_file = run_dir / "stages" / f"{stage}.json"
        if out_nb.exists() and entry["status"] == "ok" and stage_file.is_file():
            this = json.loads(stage_file.read_text(encoding="utf-8"))
            add_summary_cell(out_nb, summary_html(stage, this, previous.get(stage), language))
        if out_nb.exists():
            html_name = nb_name.replace(".ipynb", ".html")
            render_html(out_nb, run_dir / html_name)
            entry["html"] = html_name
        manifest["stages"].append(entry)
        say(
            f"      {entry['status']} in {entry['seconds']:.1f} s"
            + (f": {entry['error']}" if "error" in entry else "")
        )
        if failure:
            break
    metrics = read_stage_metrics(run_dir)
    manifest["input_fingerprint"] = metrics.get("collect", {}).get("input_fingerprint")
    # what this run read (file, size, hash, rows, time): each run keeps its own snapshot
    manifest["source_files"] = metrics.get("collect", {}).pop("source_files", None)
    manifest["seconds"] = round(time.perf_counter() - t_run, 2)
    manifest["ended_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    manifest["status"] = "failed" if failure else "ok"
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    (run_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, default=str)
    )
    if not failure:
        snapshots = resolve_path(str(report_settings.get("snapshot_dir", "data/snapshots")), root)
        state = snapshot_customer_state(
            str(params.get("store", "")), snapshots / f"{run_id}.parquet"
        )
        if before is not None:
            old_file = snapshots / f"{before.name}.parquet"
            old_state = pd.read_parquet(old_file) if old_file.is_file() else None
            (run_dir / "comparison.html").write_text(
                comparison_html(run_id, before.name, metrics, previous, state, old_state, language),
                encoding="utf-8",
            )
            manifest["comparison"] = "comparison.html"
            (run_dir / "manifest.json").write_text(
                json.dumps(manifest, indent=2, ensure_ascii=False, default=str)
            )
    write_index(run_dir, manifest, metrics, previous, language)
    write_run_list(reports)
    if failure:
        say(f"failed: {failure}")
        raise failure
    _update_latest(reports, run_id)
    if keep:
        for gone in prune_runs(reports, keep, run_id):
            say(f"removed old run {gone} (keeping the newest {keep})")
    say(f"report: {run_dir / 'index.html'}")
    return run_dir
