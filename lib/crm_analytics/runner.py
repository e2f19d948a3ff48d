"""Run the stage notebooks in order with papermill and render the reports.

A run writes ``reports/<run_id>/``: the executed notebooks, one HTML per stage
(without code cells), ``index.html``, ``manifest.json`` and ``metrics.json``.
``reports/latest`` points at the newest successful run. A failing stage stops
the run with :class:`StageFailed` naming the notebook and the cell; the
manifest of the failed run records it, and ``latest`` keeps pointing at the
last good run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat
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
from crm_analytics.i18n import check_language, translate_notebook
from crm_analytics.report import (
    pseudonym_salt,
    read_runs,
    read_stage_metrics,
    render_html,
    write_index,
    write_run_list,
)
from crm_analytics.store import checkpoint, connect, duckdb_path, has_table, rebuild_duckdb
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


def previous_run(
    reports: Path, params_file: str, run_id: str, stages: Iterable[str] = STAGES
) -> Path | None:
    """Return the run to compare with: the newest earlier successful run covering the same stages.

    A run made with ``--only`` covers fewer stages, so a full run is compared with
    the last full run, never with a partial one in between.

    Parameters
    ----------
    reports : Path
        Folder of run folders.
    params_file : str
        Parameter file of the current run (as recorded in manifests).
    run_id : str
        The current run (excluded).
    stages : iterable of str, default all stages
        Stages of the current run; the earlier run must have covered each of them.

    Returns
    -------
    Path or None
        Its folder, or None for a first run.
    """
    wanted = frozenset(stages)
    candidates = [
        r
        for r in read_runs(reports)
        if r.name != run_id
        and r.ok
        and r.manifest.get("params_file") == params_file
        and wanted <= r.stages
    ]
    return (
        max(candidates, key=lambda r: str(r.manifest.get("ended_at", ""))).path
        if candidates
        else None
    )


def add_summary_cell(notebook: Path, html_block: str) -> None:
    """Insert an executive-summary markdown cell after the title cell of an executed notebook.

    Parameters
    ----------
    notebook : Path
        Executed ``.ipynb`` (rewritten in place).
    html_block : str
        The summary (:func:`crm_analytics.summary.summary_html`).
    """
    nb = nbformat.read(notebook, as_version=4)
    cell = nbformat.v4.new_markdown_cell(html_block)
    cell.metadata["tags"] = ["executive-summary"]
    nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, cell)
    nbformat.write(nb, notebook)


def snapshot_customer_state(
    store: str, path: Path, encryption_key_env: str = ""
) -> pd.DataFrame | None:
    """Save each customer's segment and churn-risk tier of this run, for the next run's comparison.

    The snapshot holds CRM keys, so it goes under ``data/`` (like exports), never
    under ``reports/``; the comparison page shows counts only.

    Parameters
    ----------
    store : str
        The run's store.
    path : Path
        Parquet file to write.
    encryption_key_env : str, default ""
        Environment variable of the store's key, when encrypted.

    Returns
    -------
    pandas.DataFrame or None
        customer_id, segment, risk_tier (None when the store has neither table).
    """
    import pandas as pd

    db = duckdb_path(store)
    if db is not None and not db.exists():
        return None
    con = connect(store, read_only=db is not None, encryption_key_env=encryption_key_env)
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


def prune_runs(reports: Path, keep: int, current: str, protect: Iterable[str] = ()) -> list[str]:
    """Delete all but the ``keep`` newest run folders of each parameter file (and their snapshots).

    Runs are counted per parameter file (``params_file`` in their manifests), so runs of
    other parameters sharing the folder, such as benchmark sizes or a second schedule,
    do not push out the runs a run is compared with. The current run, the target of
    ``latest`` and the runs in ``protect`` (the run the current one is compared with,
    whose report it links to) are never deleted.

    Parameters
    ----------
    reports : Path
        Folder of run folders.
    keep : int
        Runs to keep per parameter file (at least 1).
    current : str
        The run just finished.
    protect : iterable of str, optional
        More run ids to keep.

    Returns
    -------
    list of str
        Run ids removed, oldest first.
    """
    import shutil

    latest = (reports / "latest").resolve().name if (reports / "latest").is_symlink() else None
    kept = {current, latest, *protect}
    by_params: dict[str, list[tuple[str, str]]] = {}
    for r in read_runs(reports):
        by_params.setdefault(str(r.manifest.get("params_file", "")), []).append(
            (r.started_at, r.name)
        )
    removed = []
    for runs in by_params.values():
        for _, name in sorted(runs, reverse=True)[max(keep, 1) :]:
            if name in kept:
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
        The run's store (a DuckDB path).
    stage : str
        Stage name.
    stage_params : dict, optional
        The stage's parameters: a forecast given its own ``series_source`` needs no
        orders; ``encryption_key_env`` opens an encrypted store.

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
    key_env = str((stage_params or {}).get("encryption_key_env", ""))
    con = connect(store, read_only=path is not None, encryption_key_env=key_env)
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


class StoreBusy(RuntimeError):
    """Another run holds the store's lock."""


@contextlib.contextmanager
def store_lock(store_file: Path, run_id: str) -> Iterator[Path]:
    """Hold an exclusive lock on a DuckDB store for the length of a run.

    The lock is ``<store>.lock`` taken with ``flock``: the operating system
    releases it when the process ends, however it ends, so a killed run never
    leaves a stale lock behind. The file names the run holding it.

    Parameters
    ----------
    store_file : Path
        The store's DuckDB file.
    run_id : str
        The run taking the lock.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    StoreBusy
        If another run holds the lock (its run id and process are in the message).
    """
    store_file.parent.mkdir(parents=True, exist_ok=True)
    lock = store_file.with_name(store_file.name + ".lock")
    with lock.open("a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown run"
            raise StoreBusy(
                f"store {store_file} is in use by another run ({holder}); wait for it to "
                "finish, or give this run its own store"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            f"run {run_id}, pid {os.getpid()}, since {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC\n"
        )
        fh.flush()
        try:
            yield lock
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def working_copy(store_file: Path, run_id: str, encryption_key_env: str = "") -> Path:
    """Copy the store to a run's private working file (call while holding :func:`store_lock`).

    Stages write to the copy; :func:`commit_working_copy` swaps it in when the run
    succeeds. A run that fails or is killed leaves the store exactly as the last
    successful run left it. Working files of killed runs are removed here.

    Parameters
    ----------
    store_file : Path
        The store's DuckDB file (need not exist yet).
    run_id : str
        The run.
    encryption_key_env : str, default ""
        Environment variable of the store's key, when encrypted.

    Returns
    -------
    Path
        The working file (absent when the store does not exist yet).
    """
    for stale in store_file.parent.glob(f".{store_file.name}.*.work"):
        discard_working_copy(stale)
    work = store_file.with_name(f".{store_file.name}.{run_id}.work")
    if store_file.exists():
        if store_file.with_name(store_file.name + ".wal").exists():
            checkpoint(store_file, encryption_key_env)
        shutil.copyfile(store_file, work)
    return work


def commit_working_copy(work: Path, store_file: Path, encryption_key_env: str = "") -> None:
    """Swap a finished run's working file in as the store, atomically.

    Parameters
    ----------
    work : Path
        The working file from :func:`working_copy`.
    store_file : Path
        The store's DuckDB file.
    encryption_key_env : str, default ""
        Environment variable of the store's key, when encrypted.
    """
    checkpoint(work, encryption_key_env)
    os.replace(work, store_file)
    discard_working_copy(work)


def discard_working_copy(work: Path) -> None:
    """Remove a working file and DuckDB's companions (write-ahead log, spill folder).

    Parameters
    ----------
    work : Path
        The working file from :func:`working_copy`.
    """
    for path in (work, work.with_name(work.name + ".wal"), work.with_name(work.name + ".tmp")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _alive(pid: Any) -> bool:
    """Return whether a process with this id is running on this machine."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def mark_interrupted(reports: Path) -> list[str]:
    """Mark runs whose manifest says "running" but whose process is gone as interrupted.

    Their exports are removed (:func:`remove_run_exports`), unless the run was
    killed while committing after its store had been swapped in
    (:func:`store_committed`): then the store and the exports are that run's, and
    the manifest says so (``store_committed``).

    Parameters
    ----------
    reports : Path
        Folder of run folders.

    Returns
    -------
    list of str
        Run ids marked.
    """
    marked = []
    for run in read_runs(reports):
        m = run.manifest
        if m.get("status") not in ("running", "committing") or _alive(m.get("pid")):
            continue
        m["status"] = "interrupted"
        m["store_committed"] = committed = store_committed(m)
        if committed:
            m["error"] = (
                "the run's process ended after its store was swapped in and before its reports "
                "were finished (killed?): the store and the exports hold this run's results"
            )
        else:
            m["error"] = (
                "the run's process ended before the run finished (killed?); the store was left "
                "as before it"
            )
            remove_run_exports(m.get("parameters") or {}, run.name)
        _write_json(run.path / "manifest.json", m)
        marked.append(run.name)
    return marked


def store_committed(manifest: dict[str, Any]) -> bool:
    """Return whether a run that stopped while committing had swapped its store in.

    The runner records the working copy's inode before the swap
    (``manifest["commit"]``); :func:`os.replace` keeps it, so the store's file
    has that inode exactly when the swap happened (and no later run replaced it).

    Parameters
    ----------
    manifest : dict
        The run's manifest.

    Returns
    -------
    bool
        True when the store's file is the run's working copy.
    """
    commit = manifest.get("commit") or {}
    if manifest.get("status") not in ("committing", "interrupted") or not commit:
        return False
    try:
        return os.stat(commit["store"]).st_ino == commit["inode"]
    except (OSError, KeyError, TypeError):
        return False


def remove_run_exports(params: dict[str, Any], run_id: str) -> list[Path]:
    """Remove the exports of a run that did not succeed (campaign and retention lists).

    They hold personal data drawn from a store the run never committed, and no
    report points at them.

    Parameters
    ----------
    params : dict
        The run's parameters (its manifest's ``parameters``).
    run_id : str
        The run.

    Returns
    -------
    list of Path
        Folders removed.
    """
    root = project_root()
    removed = []
    for stage in ("segment", "churn"):
        folder = resolve_path(
            str((params.get(stage) or {}).get("export_dir", "data/exports")), root
        )
        path = folder / run_id
        if run_id and path.is_dir() and path.resolve().parent == folder.resolve():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class MemoryWatch:
    """Sample the peak resident memory of this process and of its children.

    Used around each stage: the children are the notebook kernel and anything
    it starts, so ``kernel_mb`` is what the stage needed and ``runner_mb`` what
    the runner itself held. Sampling every ``interval`` seconds in a thread can
    miss a peak shorter than that.

    Parameters
    ----------
    interval : float, default 0.2
        Seconds between samples.

    Attributes
    ----------
    kernel_mb_, runner_mb_ : float
        Peak resident memory, in MiB, of the children and of this process.
    trace_ : list of (float, float)
        Every sample as (Unix time, children's MiB), for attributing the peak to
        a notebook cell (see :func:`hot_cells`).
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.kernel_mb_ = 0.0
        self.runner_mb_ = 0.0
        self.trace_: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        """Record one sample of this process and its (recursive) children."""
        import psutil

        me = psutil.Process()
        kernel = 0
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kernel += child.memory_info().rss
        self.kernel_mb_ = max(self.kernel_mb_, kernel / 2**20)
        self.trace_.append((time.time(), kernel / 2**20))
        self.runner_mb_ = max(self.runner_mb_, me.memory_info().rss / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemoryWatch:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


def hot_cells(
    notebook: Path, trace: list[tuple[float, float]], top: int = 3
) -> list[dict[str, Any]]:
    """Return the slowest code cells of an executed notebook and the one at peak memory.

    Cell times come from papermill's metadata (start and end of each cell); the
    memory of a cell is the highest kernel sample of ``trace`` taken while it ran.

    Parameters
    ----------
    notebook : Path
        Notebook executed by papermill.
    trace : list of (float, float)
        (Unix time, kernel MiB) samples, e.g. :attr:`MemoryWatch.trace_`.
    top : int, default 3
        Slowest cells listed; the cell at peak memory is added when not among them.

    Returns
    -------
    list of dict
        ``cell`` (index in the executed notebook, where papermill's
        injected-parameters cell follows the parameters cell), ``code`` (its first line), ``seconds`` and
        ``peak_kernel_mb`` (None without a sample inside the cell), slowest first.
    """
    nb = nbformat.read(notebook, as_version=4)
    cells = []
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("papermill", {})
        if cell.cell_type != "code" or not meta.get("start_time") or not meta.get("end_time"):
            continue
        start = dt.datetime.fromisoformat(meta["start_time"]).timestamp()
        end = dt.datetime.fromisoformat(meta["end_time"]).timestamp()
        inside = [mb for t, mb in trace if start <= t <= end]
        cells.append({
            "cell": i, "code": cell.source.strip().splitlines()[0][:80] if cell.source.strip() else "",
            "seconds": round(end - start, 2),
            "peak_kernel_mb": round(max(inside), 1) if inside else None,
        })  # fmt: skip
    chosen = sorted(cells, key=lambda c: -c["seconds"])[:top]
    measured = [c for c in cells if c["peak_kernel_mb"] is not None]
    if measured:
        peak = max(measured, key=lambda c: c["peak_kernel_mb"])
        if peak not in chosen:
            chosen.append(peak)
    return chosen


def failure_hint(ename: str, evalue: str) -> str:
    """Return advice for a failed cell's error, or an empty string.

    Parameters
    ----------
    ename : str
        The exception's class name, as the kernel reported it.
    evalue : str
        Its message.

    Returns
    -------
    str
        A sentence or two, starting with a space; ``""`` when there is no advice.
    """
    if "Out of Memory" in evalue:
        return (
            " The store's memory limit was too small for this step: raise memory_limit "
            "(DuckDB spills to disk up to it) or run on a larger machine. The store is unchanged."
        )
    if "MemoryError" in ename or "Unable to allocate" in evalue:
        return (
            " The notebook's kernel ran out of memory in pandas, NumPy or scikit-learn (not in "
            "the store): lower the sampled sizes (churn.model_customers, churn.max_train_rows, "
            "segment.silhouette_sample), lower memory_limit to leave the kernel more room, or "
            "run on a larger machine. The store is unchanged."
        )
    return ""


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _new_run_folder(reports: Path, run_id: str | None) -> Path:
    """Create and return the run folder; a default (time-stamped) id gets a suffix if taken."""
    reports.mkdir(parents=True, exist_ok=True)
    if run_id:
        run_dir = reports / run_id
        if run_dir.exists():
            raise FileExistsError(f"run folder {run_dir} already exists; pick another --run-id")
        run_dir.mkdir()
        return run_dir
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        try:
            run_dir = reports / (stamp if n == 1 else f"{stamp}-{n}")
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder for {stamp} under {reports}")


def _store_file(store: str, params_file: str | os.PathLike[str]) -> Path:
    """Return the DuckDB file of the ``store`` parameter.

    Raises
    ------
    ValueError
        If it is a database URL or in-memory (:func:`load_params` refuses these, but a
        ``${NAME}`` may have changed since).
    """
    path = duckdb_path(store)
    if path is None:
        raise ValueError(f"{params_file}: 'store' must be a DuckDB file, not a database URL")
    return path


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

    The store (a DuckDB file) is locked for the run (a second run on the same
    store stops with :class:`StoreBusy`), and the stages work on a private copy
    of it that replaces the store only when every stage succeeded: a run that
    fails or is killed leaves the store, ``reports/latest`` and earlier runs as
    they were. With ``engine: postgres`` or ``spark`` only copies of the clean
    tables leave the store, in a schema or folder private to the stage.

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
        If a notebook fails or its kernel dies.
    StoreBusy
        If another run holds the store.
    FileExistsError
        If the run folder already exists.
    """
    root = project_root()
    params = _absolute_paths(load_params(resolve_path(params_file, root)), root)
    check_no_secrets(params)
    pseudonym_salt()  # fail before any stage runs, not in the first report that needs it
    language = check_language(str(params.get("report_language", "en")))
    stages = stages_to_run(from_stage, only)
    reports = resolve_path(reports_dir, root)
    store_file = _store_file(str(params.get("store", "")), params_file)
    lock_id = run_id or f"pid {os.getpid()}"
    with store_lock(store_file, lock_id):
        return _run_stages(params, params_file, stages, reports, run_id, store_file, kernel,
                           progress, keep, language)  # fmt: skip


def _run_stages(
    params: dict[str, Any],
    params_file: str | Path,
    stages: list[str],
    reports: Path,
    run_id: str | None,
    store_file: Path | None,
    kernel: str | None,
    progress: bool,
    keep: int,
    language: str,
) -> Path:
    """Run the stages (the store already locked) and write the reports; see :func:`run_pipeline`."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = project_root()
    if reports.is_dir():
        mark_interrupted(reports)
    run_dir = _new_run_folder(reports, run_id)
    run_id = run_dir.name
    kernel = kernel or kernel_name()
    key_env = str(params.get("encryption_key_env", ""))
    work = working_copy(store_file, run_id, key_env) if store_file is not None else None
    store = str(work) if work is not None else str(params.get("store", ""))
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "params_file": str(params_file),
        "parameters": params,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": "running",
        "pid": os.getpid(),
        "kernel": kernel,
        "packages": package_versions(),
        "command": " ".join(sys.argv),
        "stages": [],
    }
    _write_json(run_dir / "manifest.json", manifest)
    log_file = run_dir / "run.log"

    def say(line: str) -> None:
        """Print a progress line and append it, time-stamped, to the run's log file."""
        if progress:
            print(line, flush=True)
        with log_file.open("a", encoding="utf-8") as fh:
            fh.write(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} {line}\n")

    say(f"run {run_id}: parameters {params_file}, stages {', '.join(stages)}")
    report_settings = params.get("report") or {}
    before = previous_run(reports, str(params_file), run_id, stages)
    previous = read_stage_metrics(before) if before else {}
    manifest["previous_run"] = before.name if before else None
    t_run = time.perf_counter()
    failure: StageFailed | None = None
    for i, stage in enumerate(stages, 1):
        nb_name = NOTEBOOKS[stage]
        out_nb = run_dir / nb_name
        stage_params = {**stage_parameters(params, stage), "run_dir": str(run_dir), "store": store}
        say(f"[{i}/{len(stages)}] {stage}: running {nb_name} ...")
        entry: dict[str, Any] = {
            "stage": stage,
            "notebook": nb_name,
            "status": "running",
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        t0 = time.perf_counter()
        reason = skip_reason(store, stage, stage_params)
        if reason:
            entry.update(status="skipped", reason=reason, seconds=0.0)
            entry["ended_at"] = entry["started_at"]
            manifest["stages"].append(entry)
            say(f"      skipped: {reason}")
            continue
        watch = MemoryWatch().__enter__()  # peak memory of the kernel during the stage
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
            hint = failure_hint(str(exc.ename), str(exc.evalue))
            failure = StageFailed(
                f"stage {stage} failed in notebooks/{nb_name}, cell {exc.cell_index}: "
                f"{exc.ename}: {str(exc.evalue).splitlines()[0] if exc.evalue else ''}{hint} "
                f"(executed notebook: {out_nb})"
            )
        except Exception as exc:  # the kernel died (killed, or out of memory) or could not start
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            failure = StageFailed(
                f"stage {stage}: the notebook kernel stopped ({type(exc).__name__}: {exc}). "
                "It was killed or ran out of memory; set memory_limit to make the store spill "
                f"to disk sooner. The store is unchanged. (partial notebook: {out_nb})"
            )
        finally:
            watch.__exit__()
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["peak_kernel_mb"] = round(watch.kernel_mb_, 1)
        entry["peak_runner_mb"] = round(watch.runner_mb_, 1)
        if out_nb.exists():
            entry["hot_cells"] = hot_cells(out_nb, watch.trace_)
        entry["ended_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        stage_file = run_dir / "stages" / f"{stage}.json"
        if out_nb.exists() and entry["status"] == "ok" and stage_file.is_file():
            this = json.loads(stage_file.read_text(encoding="utf-8"))
            add_summary_cell(out_nb, summary_html(stage, this, previous.get(stage), language))
        if out_nb.exists() and language != "en":
            translated = nbformat.read(out_nb, as_version=4)
            translate_notebook(translated, language)
            nbformat.write(translated, out_nb)
        if out_nb.exists():
            html_name = nb_name.replace(".ipynb", ".html")
            t_html = time.perf_counter()
            render_html(out_nb, run_dir / html_name)
            entry["html"] = html_name
            entry["html_seconds"] = round(time.perf_counter() - t_html, 2)
        manifest["stages"].append(entry)
        _write_json(run_dir / "manifest.json", manifest)
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
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    if not failure:
        snapshots = resolve_path(str(report_settings.get("snapshot_dir", "data/snapshots")), root)
        state = snapshot_customer_state(store, snapshots / f"{run_id}.parquet", key_env)
        if before is not None:
            old_file = snapshots / f"{before.name}.parquet"
            old_state = pd.read_parquet(old_file) if old_file.is_file() else None
            (run_dir / "comparison.html").write_text(
                comparison_html(run_id, before.name, metrics, previous, state, old_state, language),
                encoding="utf-8",
            )
            manifest["comparison"] = "comparison.html"
        if work is not None and store_file is not None and work.exists():
            # a run killed from here on is told apart by the store's file: the working
            # copy's inode is the store's once the swap is done (see mark_interrupted)
            manifest["status"] = "committing"
            manifest["commit"] = {"store": str(store_file), "inode": work.stat().st_ino}
            _write_json(run_dir / "manifest.json", manifest)
            commit_working_copy(work, store_file, key_env)
    elif work is not None:
        discard_working_copy(work)
    if failure:
        for gone in remove_run_exports(params, run_id):
            say(f"removed the exports of this failed run: {gone}")
    manifest["status"] = "failed" if failure else "ok"
    _write_json(run_dir / "manifest.json", manifest)
    write_index(run_dir, manifest, metrics, previous, language)
    write_run_list(reports)
    if failure:
        say(f"failed: {failure}")
        raise failure
    _update_latest(reports, run_id)
    if keep:
        for gone in prune_runs(reports, keep, run_id, [before.name] if before else []):
            say(f"removed old run {gone} (keeping the newest {keep})")
    say(f"report: {run_dir / 'index.html'}")
    return run_dir


def forget_customer(
    params_file: str | Path,
    customer_id: str,
    reason: str = "",
    reports_dir: str | Path = "reports",
    audit_file: str | Path = "data/erasure_audit.jsonl",
) -> dict[str, Any]:
    """Erase a customer from the store, exports, snapshots and reports, and suppress them.

    Wiring of :func:`crm_analytics.erasure.forget` with a parameter file: its
    store (locked for the duration, like a run; a DuckDB file is rebuilt after
    the deletes so that no freed page keeps the person's values), its export
    folders, its snapshot folder and the collect stage's suppression list. The
    audit record is appended last.

    Parameters
    ----------
    params_file : str or Path
        Parameter YAML of the runs to clean up after.
    customer_id : str
        One CRM key of the person.
    reason : str, default ""
        Why (a request or ticket number), for the audit log.
    reports_dir : str or Path, default "reports"
        Folder of run folders.
    audit_file : str or Path, default "data/erasure_audit.jsonl"
        Audit log (appended).

    Returns
    -------
    dict
        The audit record.

    Raises
    ------
    StoreBusy
        If a run holds the store.
    """
    from crm_analytics.erasure import append_audit, forget

    root = project_root()
    params = _absolute_paths(load_params(resolve_path(params_file, root)), root)
    check_no_secrets(params)
    pseudonym_salt()
    store = str(params.get("store", ""))
    key_env = str(params.get("encryption_key_env", ""))
    collect = params.get("collect") or {}
    suppression = resolve_path(
        str(collect.get("suppression_file", "data/suppression-default.csv")), root
    )
    folders = {
        resolve_path(str((params.get(stage) or {}).get("export_dir", "data/exports")), root)
        for stage in ("segment", "churn")
    }
    folders.add(
        resolve_path(str((params.get("report") or {}).get("snapshot_dir", "data/snapshots")), root)
    )
    store_file = _store_file(store, params_file)
    with store_lock(store_file, f"forget {customer_id}"):
        con = connect(store, encryption_key_env=key_env)
        try:
            record = forget(
                con,
                customer_id,
                suppression_file=suppression,
                data_folders=sorted(folders),
                reports=resolve_path(reports_dir, root),
                reason=reason,
            )
        finally:
            con.disconnect()
        # the deleted rows' bytes stay in the file's free pages until it is rebuilt
        rebuild_duckdb(store_file, key_env)
        record["store_file_rebuilt"] = True
    append_audit(resolve_path(str(audit_file), root), record)
    return record
