"""Runs that fail, are killed or collide leave the store and earlier reports as they were."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import psutil
import pytest
import yaml

from crm_analytics import cli
from crm_analytics.runner import (
    MemoryWatch,
    StoreBusy,
    commit_working_copy,
    discard_working_copy,
    failure_hint,
    hot_cells,
    mark_interrupted,
    run_pipeline,
    store_lock,
    working_copy,
)
from tests.test_pipeline import _params


def _value(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT x FROM t").fetchone()[0]
    finally:
        con.close()


def _set(db, x):
    con = duckdb.connect(str(db))
    con.execute(f"CREATE OR REPLACE TABLE t AS SELECT {x} AS x")
    con.close()


def test_working_copy_changes_the_store_only_when_committed(tmp_path):
    store = tmp_path / "s.duckdb"
    _set(store, 1)
    (tmp_path / ".s.duckdb.killed-run.work").write_bytes(b"left by a killed run")
    work = working_copy(store, "r1")
    assert not (tmp_path / ".s.duckdb.killed-run.work").exists()
    _set(work, 2)
    discard_working_copy(work)
    assert _value(store) == 1 and not work.exists()
    work = working_copy(store, "r2")
    _set(work, 3)
    assert _value(store) == 1  # nothing visible before the commit
    commit_working_copy(work, store)
    assert _value(store) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb"]


def test_second_run_on_a_locked_store_stops_with_exit_3_and_names_the_holder(tmp_path, capsys):
    params = {"store": str(tmp_path / "s.duckdb"), "report_language": "en"}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params))
    with store_lock(tmp_path / "s.duckdb", "weekly-1"):
        with pytest.raises(StoreBusy, match=r"in use by another run \(run weekly-1, pid \d+"):
            run_pipeline(f, run_id="r2", reports_dir=tmp_path / "reports", progress=False)
        status = cli.main(["run", "--params", str(f), "--run-id", "r3",
                           "--reports-dir", str(tmp_path / "reports")])  # fmt: skip
        assert status == cli.EXIT_STORE_BUSY == 3
        assert "weekly-1" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())
    with store_lock(tmp_path / "s.duckdb", "r4"):  # released: the next run gets it
        pass


def test_runs_whose_process_is_gone_are_marked_interrupted(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    exports = tmp_path / "exports"
    for name in ("dead", "alive", "good"):  # campaign lists, personal data
        (exports / name).mkdir(parents=True)
        (exports / name / "campaign_contacts.csv").write_text("customer_id,email\nC1,a@b.cn\n")
    params = {"segment": {"export_dir": str(exports)}, "churn": {"export_dir": str(exports)}}
    for name, pid in (("dead", gone.pid), ("alive", os.getpid())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(
            {"status": "running", "pid": pid, "started_at": "2026-01-01", "parameters": params}))  # fmt: skip
    assert mark_interrupted(tmp_path) == ["dead"]
    assert json.loads((tmp_path / "dead" / "manifest.json").read_text())["status"] == "interrupted"
    assert json.loads((tmp_path / "alive" / "manifest.json").read_text())["status"] == "running"
    # the killed run's lists go; a running run's and a finished run's stay
    assert sorted(p.name for p in exports.iterdir()) == ["alive", "good"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(params_file, reports, run_id):
    cmd = [sys.executable, "-m", "crm_analytics", "run", "--params", str(params_file),
           "--run-id", run_id, "--only", "clean", "--reports-dir", str(reports)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _command_line(process):
    """Return a process's command line, or "" when it has just exited (a zombie or gone)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _kernel_writing(proc, work, timeout=180):
    """Wait until the run's kernel is writing the working copy; return the kernel process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        # the runner's short-lived helpers may exit between the listing and the reading
        kernels = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "ipykernel" in _command_line(p)]  # fmt: skip
        if kernels and work.with_name(work.name + ".wal").exists():
            return kernels[0]
        time.sleep(0.02)
    raise AssertionError("the clean stage never started writing")


@pytest.mark.pipeline
def test_kill_9_mid_stage_leaves_the_store_and_reports_intact(tiny_dataset, tmp_path):
    params = _params(tiny_dataset, tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    reports, store = tmp_path / "reports", tmp_path / "store.duckdb"
    run_pipeline(f, run_id="good", only="collect", reports_dir=reports, progress=False)
    before = _sha(store)

    # 1. kill -9 of the notebook kernel in the middle of the clean stage
    proc = _start(f, reports, "kernel-killed")
    _kernel_writing(proc, tmp_path / ".store.duckdb.kernel-killed.work").send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "kernel stopped" in err and "store is unchanged" in err
    assert _sha(store) == before
    manifest = json.loads((reports / "kernel-killed" / "manifest.json").read_text())
    assert manifest["status"] == "failed"

    # 2. kill -9 of the runner itself (and its kernel) in the middle of the stage
    proc = _start(f, reports, "runner-killed")
    kernel = _kernel_writing(proc, tmp_path / ".store.duckdb.runner-killed.work")
    proc.send_signal(signal.SIGKILL)
    kernel.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _sha(store) == before
    assert (reports / "latest").resolve().name == "good"
    assert json.loads((reports / "good" / "manifest.json").read_text())["status"] == "ok"

    # the next run succeeds, cleans up and says what happened to the killed one
    run_pipeline(f, run_id="after", only="clean", reports_dir=reports, progress=False)
    assert _sha(store) != before and (reports / "latest").resolve().name == "after"
    killed = json.loads((reports / "runner-killed" / "manifest.json").read_text())
    assert killed["status"] == "interrupted"
    assert not list(tmp_path.glob(".store.duckdb.*"))
    listing = (reports / "index.html").read_text()
    assert "interrupted" in listing and "failed" in listing


_STOP_AT_COMMIT = """
import os, sys
from crm_analytics import runner
when, params, run_id, reports = sys.argv[1:]
real = runner.commit_working_copy
def stop(work, store, key=""):
    if when == "after":
        real(work, store, key)
    # an export written by the run, as the segment and churn stages write theirs
    exports = os.path.join(os.path.dirname(params), "exports", run_id)
    os.makedirs(exports)
    open(os.path.join(exports, "campaign_contacts.csv"), "w").write("customer_id\\nC1\\n")
    os._exit(9)  # killed before or after the swap, before the manifest says ok
runner.commit_working_copy = stop
runner.run_pipeline(params, run_id=run_id, only="collect", reports_dir=reports, progress=False)
"""


@pytest.mark.pipeline
def test_a_run_killed_while_committing_is_told_apart_by_the_store_file(tiny_dataset, tmp_path):
    """Killed just before the swap: store and exports as before. Just after: the run's."""
    params = _params(tiny_dataset, tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    reports, store = tmp_path / "reports", tmp_path / "store.duckdb"
    run_pipeline(f, run_id="good", only="collect", reports_dir=reports, progress=False)
    before = _sha(store)
    for when in ("before", "after"):
        proc = subprocess.run([sys.executable, "-c", _STOP_AT_COMMIT, when, str(f), when, str(reports)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 9, proc.stderr
        manifest = json.loads((reports / when / "manifest.json").read_text())
        assert manifest["status"] == "committing" and manifest["commit"]["store"] == str(store)
        if when == "before":  # never swapped in (the next run removes the working copy)
            assert (tmp_path / ".store.duckdb.before.work").exists() and _sha(store) == before
    after = _sha(store)
    assert after != before  # the "after" run's working copy is the store now

    assert mark_interrupted(reports) == ["after"]  # "before" was marked by the "after" run
    killed_before = json.loads((reports / "before" / "manifest.json").read_text())
    killed_after = json.loads((reports / "after" / "manifest.json").read_text())
    assert killed_before["status"] == killed_after["status"] == "interrupted"
    assert killed_before["store_committed"] is False and "left as before" in killed_before["error"]
    assert (
        killed_after["store_committed"] is True
        and "hold this run's results" in killed_after["error"]
    )
    # the exports of the uncommitted run go; those matching the store stay
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["after"]
    assert _sha(store) == after

    # a later run replaces the store: the killed run no longer matches it
    run_pipeline(f, run_id="later", only="collect", reports_dir=reports, progress=False)
    assert not list(tmp_path.glob(".store.duckdb.*"))
    from crm_analytics.runner import store_committed

    assert store_committed(killed_after) is False


@pytest.mark.pipeline
def test_data_larger_than_the_memory_limit_fails_with_a_clear_message(tiny_dataset, tmp_path):
    """memory_limit far below the data: DuckDB's own out-of-memory error, named, and the store untouched."""
    from crm_analytics.runner import StageFailed

    params = _params(tiny_dataset, tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    reports = tmp_path / "reports"
    run_pipeline(f, run_id="good", only="collect", reports_dir=reports, progress=False)
    before = _sha(tmp_path / "store.duckdb")
    params["memory_limit"] = "1MB"
    f.write_text(yaml.safe_dump(params, allow_unicode=True))
    with pytest.raises(StageFailed) as failed:
        run_pipeline(f, run_id="starved", only="clean", reports_dir=reports, progress=False)
    message = str(failed.value)
    assert "notebooks/02_clean.ipynb" in message and "Out of Memory Error" in message
    assert "raise memory_limit" in message and "The store is unchanged" in message
    assert _sha(tmp_path / "store.duckdb") == before
    manifest = json.loads((reports / "starved" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "Out of Memory" in manifest["stages"][0]["error"]


def test_store_connection_caps_memory_and_returns_freed_memory(tmp_path):
    """The memory limit is set, DuckDB's allocator gives freed pages back between queries,
    and no progress bar is drawn into the executed notebooks."""
    from crm_analytics import store

    con = store.connect(str(tmp_path / "s.duckdb"), memory_limit="300MB")
    settings = dict(
        con.raw_sql(
            "select name, value from duckdb_settings() "
            "where name in ('memory_limit', 'allocator_background_threads', 'enable_progress_bar')"
        ).fetchall()
    )
    con.disconnect()
    assert settings["allocator_background_threads"] == "true"
    assert settings["enable_progress_bar"] == "false"
    assert settings["memory_limit"].startswith("286")  # 300 MB in MiB


def test_memory_watch_sees_the_peak_of_a_child_process():
    """A child holding about 300 MB for a second shows up as the stage's kernel peak."""
    with MemoryWatch(interval=0.05) as idle:  # children this test process already has
        time.sleep(0.2)
    hold = "b = bytearray(300 * 2**20); import time; time.sleep(1.0)"
    with MemoryWatch(interval=0.05) as watch:
        subprocess.run([sys.executable, "-c", hold], check=True)
    assert watch.kernel_mb_ >= idle.kernel_mb_ + 280
    assert watch.runner_mb_ > 0


def test_hot_cells_names_the_slowest_cells_and_the_one_at_peak_memory(tmp_path):
    """Cell times from papermill's metadata; each cell's memory from the samples taken while it ran."""
    import nbformat

    def cell(src, start, end):
        c = nbformat.v4.new_code_cell(src)
        c.metadata["papermill"] = {"start_time": f"2026-01-01T00:00:{start:02d}+00:00",
                                   "end_time": f"2026-01-01T00:00:{end:02d}+00:00"}  # fmt: skip
        return c

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), cell("a = 1", 0, 10),
                cell("b = big()\nmore", 10, 12), cell("c = 3", 12, 30), cell("d = 4", 30, 31),
                cell("e = 5", 31, 40)]  # fmt: skip
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    t0 = 1767225600.0  # 2026-01-01T00:00:00Z
    trace = [(t0 + 5, 100.0), (t0 + 11, 900.0), (t0 + 20, 300.0), (t0 + 35, 200.0)]
    got = hot_cells(path, trace, top=2)
    assert [(c["cell"], c["seconds"], c["peak_kernel_mb"]) for c in got] == [
        (3, 18.0, 300.0), (1, 10.0, 100.0), (2, 2.0, 900.0)]  # fmt: skip
    assert got[2]["code"] == "b = big()"
    assert hot_cells(path, [], top=1) == [
        {"cell": 3, "code": "c = 3", "seconds": 18.0, "peak_kernel_mb": None}]  # fmt: skip


def test_an_aggregation_larger_than_the_memory_limit_completes_by_spilling_to_disk(tmp_path):
    """The per-customer CLV summary of 3M orders under a 60MB limit: it needs the disk, and gets it right."""
    from pandas.testing import assert_frame_equal

    from crm_analytics import features, store

    def summary(memory_limit, temp_files=True):
        con = store.connect(str(tmp_path / f"s-{memory_limit}-{temp_files}.duckdb"),
                            memory_limit=memory_limit)  # fmt: skip
        if not temp_files:
            con.raw_sql("SET max_temp_directory_size = '0KB'")
        con.raw_sql(
            "CREATE TABLE orders AS SELECT 'C' || (i % 400000) AS customer_id, "
            "TIMESTAMP '2024-01-01' + INTERVAL (i % 700) DAY + INTERVAL (i % 86400) SECOND "
            "AS order_ts, CAST(i % 977 AS DECIMAL(18, 2)) AS amount, 'paid' AS status "
            "FROM range(3000000) t(i)"
        )
        try:
            out = features.clv_summary(con.table("orders"), "2026-01-01").to_pandas()
            return out.sort_values("customer_id", ignore_index=True)
        finally:
            con.disconnect()

    with pytest.raises(duckdb.OutOfMemoryException):  # without its temporary files it cannot
        summary("60MB", temp_files=False)
    spilled = summary("60MB")
    assert len(spilled) == 400_000
    assert_frame_equal(spilled, summary(None))  # the same answer as with memory to spare


def test_a_kernel_out_of_memory_gets_different_advice_from_the_store_out_of_memory():
    import numpy as np

    with pytest.raises(MemoryError) as raised:  # what NumPy raises for a frame too big for RAM
        np.empty((10**7, 10**7))
    kernel = failure_hint(type(raised.value).__name__, str(raised.value))
    assert "kernel ran out of memory" in kernel and "churn.model_customers" in kernel
    store = failure_hint("OutOfMemoryException", "Out of Memory Error: could not allocate block")
    assert "raise memory_limit" in store and "kernel" not in store
    assert failure_hint("ValueError", "cutoff runs past the data") == ""
