"""Shared fixtures: a tiny generated dataset, DuckDB stores, and a real PostgreSQL server."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import ibis
import pytest
import yaml

from crm_analytics import clean, collect, entities
from crm_analytics.generate import generate

ROOT = Path(__file__).resolve().parents[1]

# pseudonymous ids and erasure hashes need a secret salt (there is no default); the
# tests use one of their own unless the caller set it (make test sets it from
# .secrets/pseudonym-salt)
os.environ.setdefault("CRM_PSEUDONYM_SALT", "test-salt-" + os.urandom(8).hex())


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (400 customers), generated once per test session."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    generate(out, n_customers=400, seed=7)
    return out


@pytest.fixture()
def duck() -> ibis.BaseBackend:
    """An empty in-memory DuckDB store."""
    con = ibis.duckdb.connect()
    yield con
    con.disconnect()


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("pg_ctl")
    if exe:
        return Path(exe).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs them "
        "(scripts/ensure-postgres.sh), or install Debian's `postgresql` package"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a real PostgreSQL server started on 127.0.0.1 for this session and stopped after.

    ``CRM_TEST_POSTGRES_URL`` points the tests at an existing server instead.
    """
    if os.environ.get("CRM_TEST_POSTGRES_URL"):
        yield os.environ["CRM_TEST_POSTGRES_URL"]
        return
    bindir = _pg_bin()
    base = Path(tempfile.mkdtemp(prefix="crm-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as `postgres`
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.time() + 30
        while True:
            try:
                ibis.connect(url).disconnect()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def clean_store(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """A DuckDB store holding the clean tables of the tiny dataset."""
    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params" / "default.yaml").read_text(encoding="utf-8"))
    sources = yaml.safe_dump(params["collect"]["sources"]).replace(
        "data/raw/default", str(tiny_dataset)
    )
    con = ibis.duckdb.connect(str(tmp_path_factory.mktemp("engines") / "store.duckdb"))
    collect.collect_sources(con, yaml.safe_load(sources))
    clean.clean_all(con, clean.CleanSettings.build(as_of="2026-11-01"), entities.MatchSettings())
    yield con
    con.disconnect()
