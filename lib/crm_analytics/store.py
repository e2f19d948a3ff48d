"""The analytical store: where every stage reads its inputs and writes its outputs.

The store is an embedded DuckDB file (:func:`connect` also opens database
URLs, for tests and exploration, but the stages need DuckDB's readers and
functions).

A DuckDB store can be encrypted at rest (AES-GCM): the ``encryption_key_env``
parameter names the environment variable holding the key, which is never
written to a file. Writing encrypted files needs DuckDB's httpfs extension
(OpenSSL); it is loaded from the ``duckdb-extension-httpfs`` package, or from
DuckDB's own extension folder. Without it an encrypted store fails with a clear
message: it is never written unencrypted instead.

The heavy feature aggregation can run on another engine through the same ibis
expressions (:func:`engine_tables`): ``engine: spark`` publishes the clean
tables as Parquet and reads them in a Spark session (local mode by default, a
cluster by ``spark_master``); ``engine: postgres`` copies them into a private
schema on a PostgreSQL server (:func:`postgres_engine`). Results come back to
the store and the driver.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
from ibis.backends import BaseBackend

from crm_analytics.config import expand_env, resolve_path


def is_url(store: str) -> bool:
    """Return whether ``store`` is a database URL rather than a file path.

    Parameters
    ----------
    store : str
        Store setting from the parameters.

    Returns
    -------
    bool
        True for ``scheme://...`` strings.
    """
    return "://" in store


class EncryptionUnavailable(RuntimeError):
    """An encrypted store was asked for but DuckDB cannot write encrypted files here."""


def sql_literal(value: str) -> str:
    """Quote a string as a SQL literal (single quotes doubled).

    Parameters
    ----------
    value : str
        Text.

    Returns
    -------
    str
        ``'...'``, safe to put in DuckDB or PostgreSQL SQL.
    """
    return "'" + value.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """Quote an identifier for SQL (double quotes doubled).

    Parameters
    ----------
    name : str
        Table or column name.

    Returns
    -------
    str
        ``"..."``, safe to put in DuckDB or PostgreSQL SQL.
    """
    return '"' + name.replace('"', '""') + '"'


def encryption_key(encryption_key_env: str) -> str | None:
    """Return the store's encryption key from the environment (None when not encrypted).

    Parameters
    ----------
    encryption_key_env : str
        Name of the environment variable holding the key; empty for an unencrypted store.

    Returns
    -------
    str or None
        The key.

    Raises
    ------
    ValueError
        If the variable is named but not set (or empty).
    """
    if not encryption_key_env:
        return None
    key = os.environ.get(encryption_key_env, "")
    if not key:
        raise ValueError(
            f"the store is encrypted with the key in the environment variable "
            f"{encryption_key_env}, which is not set"
        )
    return key


def load_extension(con: Any, name: str) -> str:
    """Load a DuckDB extension from its Python package, or from DuckDB's extension folder.

    DuckDB's extensions are published on PyPI as ``duckdb-extension-<name>`` packages
    (one per DuckDB version), so they install with the other dependencies and load
    without network access at run time.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection or ibis DuckDB backend
        Connection to load it into (anything with ``execute`` or ``raw_sql``).
    name : str
        Extension name, e.g. ``"httpfs"`` or ``"postgres_scanner"``.

    Returns
    -------
    str
        Where it was loaded from.

    Raises
    ------
    RuntimeError
        If neither the package nor an installed extension can be loaded; the message
        says what was tried.
    """
    run = con.raw_sql if hasattr(con, "raw_sql") else con.execute
    tried = []
    try:
        from importlib import resources

        import duckdb

        pkg = resources.files(f"duckdb_extension_{name}")
        ext = pkg / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        run(f"LOAD {sql_literal(str(ext))}")
        return str(ext)
    except Exception as exc:  # package missing, or built for another DuckDB
        tried.append(f"duckdb-extension-{name}: {type(exc).__name__}: {exc}"[:200])
    try:
        run(f"LOAD {name}")
        return name
    except Exception as exc:
        tried.append(f"LOAD {name}: {type(exc).__name__}: {exc}"[:200])
    raise RuntimeError("; ".join(tried))


def load_crypto(con: Any) -> str:
    """Load DuckDB's httpfs extension (OpenSSL), needed to write encrypted files.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection or ibis DuckDB backend
        Connection to load it into (anything with ``execute`` or ``raw_sql``).

    Returns
    -------
    str
        Where it was loaded from.

    Raises
    ------
    EncryptionUnavailable
        If neither the ``duckdb-extension-httpfs`` package nor an installed httpfs
        extension can be loaded.
    """
    try:
        return load_extension(con, "httpfs")
    except RuntimeError as exc:
        raise EncryptionUnavailable(
            "cannot write an encrypted store: DuckDB needs its httpfs extension (OpenSSL). "
            "Install the duckdb-extension-httpfs package matching your DuckDB version, or run "
            f"INSTALL httpfs once with network access. Tried: {exc}"
        ) from exc


def connect(
    store: str,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    encryption_key_env: str = "",
) -> BaseBackend:
    """Open the store.

    Parameters
    ----------
    store : str
        Path of a DuckDB file (relative to the project root, created with its
        folder if absent), ``:memory:``, or a database URL understood by
        :func:`ibis.connect` (``postgresql://...``, ``duckdb://...``, ``sqlite://...``);
        ``${NAME}`` references are read from the environment (keep passwords there).
    read_only : bool, default False
        Open a DuckDB file read-only.
    memory_limit : str, optional
        DuckDB memory limit such as ``"2GB"``; DuckDB spills to disk beyond it.
    encryption_key_env : str, default ""
        Name of the environment variable holding the key of an encrypted DuckDB
        store; empty for an unencrypted one.

    Returns
    -------
    ibis.backends.BaseBackend
        A connected ibis backend.

    Raises
    ------
    ValueError
        If the key variable is not set, or encryption is asked of a database URL.
    EncryptionUnavailable
        If DuckDB cannot write encrypted files here.
    """
    store = expand_env(store)
    key = encryption_key(encryption_key_env)
    if is_url(store):
        if key:
            raise ValueError(
                "encryption_key_env applies to DuckDB stores only, not to database URLs"
            )
        return ibis.connect(store)
    if store == ":memory:":
        con = ibis.duckdb.connect()
    elif key:
        path = resolve_path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = ibis.duckdb.connect()
        load_crypto(con)
        options = f"ENCRYPTION_KEY {sql_literal(key)}" + (", READ_ONLY" if read_only else "")
        con.raw_sql(f"ATTACH {sql_literal(str(path))} AS store ({options})")
        con.raw_sql("USE store")
        con.raw_sql(f"SET temp_directory = {sql_literal(str(path) + '.tmp')}")
        con.raw_sql("SET temp_file_encryption = true")
    else:
        path = resolve_path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = ibis.duckdb.connect(str(path), read_only=read_only)
    if memory_limit:
        con.raw_sql(f"SET memory_limit = '{memory_limit}'")
    # hand memory freed after a query back to the operating system (a background
    # thread of DuckDB's allocator); otherwise the pages a big query used stay with
    # the process and stack up under the frames Python builds afterwards
    con.raw_sql("SET allocator_background_threads = true")
    # in a notebook DuckDB draws a progress widget for every query over two seconds;
    # executed notebooks are the stakeholders' reports, so no bars end up in them
    con.raw_sql("SET enable_progress_bar = false")
    return con


def has_table(con: BaseBackend, name: str) -> bool:
    """Return whether the store holds table ``name``.

    Parameters
    ----------
    con : BaseBackend
        Store connection.
    name : str
        Table name.

    Returns
    -------
    bool
        True if the table exists.
    """
    return name in con.list_tables()


def write_table(con: BaseBackend, name: str, obj: ir.Table | pd.DataFrame | Any) -> None:
    """Create or replace table ``name`` from an ibis expression or a DataFrame.

    An ibis expression on the same backend is materialised inside the store
    (``CREATE OR REPLACE TABLE ... AS SELECT``): no data passes through Python.

    Parameters
    ----------
    con : BaseBackend
        Store connection.
    name : str
        Table name.
    obj : ibis Table, pandas DataFrame or pyarrow Table
        Content of the table.

    Notes
    -----
    Returns nothing (so that a notebook cell ending with it shows nothing);
    read the table back with ``con.table(name)``. An expression on another
    engine (features computed on Spark or PostgreSQL, written to the store)
    arrives as Arrow batches (through :func:`to_frame` from PostgreSQL).
    """
    other = backend_of(obj) if isinstance(obj, ir.Table) else None
    if other not in (None, con):
        obj = to_frame(obj) if other.name == "postgres" else obj.to_pyarrow()
    con.create_table(name, obj, overwrite=True)


def create_temp_table(con: BaseBackend, name: str, obj: ir.Table | pd.DataFrame | Any) -> ir.Table:
    """Create or replace the temporary table ``name`` (this connection only) and return it.

    On DuckDB the rows are written once, under a fresh name that then replaces
    ``name``: ibis's own ``create_table(..., temp=True, overwrite=True)`` copies a
    replaced temporary table a second time (a work-around for a DuckDB 0.9 bug),
    which cost 19.5 of 33.8 s for 25M events in the clean stage. ``obj`` may read
    the table it replaces. Other backends use ibis's ``create_table``.

    Parameters
    ----------
    con : BaseBackend
        Store connection.
    name : str
        Table name.
    obj : ibis Table, pandas DataFrame or pyarrow Table
        Content of the table.

    Returns
    -------
    ibis Table
        The new temporary table.
    """
    if getattr(con, "name", None) != "duckdb":
        return con.create_table(name, obj, temp=True, overwrite=True)
    fresh = ibis.util.gen_name("temp_table")
    con.create_table(fresh, obj, temp=True)
    quoted = name.replace('"', '""')
    con.raw_sql(f'DROP TABLE IF EXISTS "temp"."main"."{quoted}"')
    con.raw_sql(f'ALTER TABLE "temp"."main"."{fresh}" RENAME TO "{quoted}"')
    return con.table(name, database=("temp", "main"))


def backend_of(expr: ir.Table) -> BaseBackend | None:
    """Return the backend an expression reads from.

    Parameters
    ----------
    expr : ibis Table
        Any table expression.

    Returns
    -------
    BaseBackend or None
        The connection the expression runs on, or None for an in-memory table
        (``ibis.memtable``), which runs on any connection.
    """
    try:
        return expr._find_backend()
    except ibis.common.exceptions.IbisError:
        return None


def to_frame(expr: ir.Table) -> pd.DataFrame:
    """Read an expression's result into pandas through Arrow, as ``expr.to_pandas()`` would.

    ibis converts column by column through Python (14.8 s for the 942k x 18
    customer features at 1M customers, against 0.5 s this way). The frame is the
    same: text as Python strings, dates as ``datetime64[s]``, timestamps with
    missing values in nanoseconds (others in microseconds), columns (but text
    and float ones) with only missing values holding None.

    Parameters
    ----------
    expr : ibis Table
        The expression.

    Returns
    -------
    pandas.DataFrame
        Its rows, in the expression's order.

    Notes
    -----
    On PostgreSQL the frame comes from ibis's ``to_pandas``: the server answers
    some floating-point expressions (a mean, a ratio of integers) with its
    ``numeric`` type, which ibis's Arrow reader refuses; those columns are
    converted to ``float64``.
    """
    backend = backend_of(expr)
    if backend is not None and backend.name == "postgres":
        frame = expr.to_pandas()
        for name, dtype in expr.schema().items():
            if dtype.is_floating() and frame[name].dtype == object:
                frame[name] = pd.to_numeric(frame[name]).astype("float64")
        return frame
    return arrow_to_frame(expr.to_pyarrow(), expr.schema())


def arrow_to_frame(table: Any, schema: Any) -> pd.DataFrame:
    """Convert the Arrow result of an expression with ``schema`` as :func:`to_frame` does.

    Parameters
    ----------
    table : pyarrow.Table
        The rows, with the types ibis gives ``schema``.
    schema : ibis Schema
        The expression's schema.

    Returns
    -------
    pandas.DataFrame
        The frame ``to_pandas`` gives.
    """
    frame = table.to_pandas(date_as_object=False)
    for name, dtype in schema.items():
        if dtype.is_date():
            frame[name] = frame[name].astype("datetime64[s]")
        elif dtype.is_timestamp() and table.column(name).null_count:
            # ibis reads a column with missing values through Python objects, which pandas
            # turns into nanoseconds; a complete column keeps Arrow's microseconds
            frame[name] = frame[name].dt.as_unit("ns")
        elif (
            not (dtype.is_string() or dtype.is_floating())
            and len(frame)
            and frame[name].isna().all()
        ):
            frame[name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return frame


def duckdb_path(store: str) -> Path | None:
    """Return the DuckDB file behind ``store``, or None for a URL or in-memory store.

    Parameters
    ----------
    store : str
        Store setting.

    Returns
    -------
    Path or None
        Absolute path of the DuckDB file.
    """
    store = expand_env(store)
    if is_url(store) or store == ":memory:":
        return None
    return resolve_path(store)


def checkpoint(db_file: Path, encryption_key_env: str = "") -> None:
    """Fold a DuckDB file's write-ahead log into the file.

    Parameters
    ----------
    db_file : Path
        The DuckDB file.
    encryption_key_env : str, default ""
        Environment variable of its key, when encrypted.
    """
    import duckdb

    key = encryption_key(encryption_key_env)
    con = duckdb.connect(str(db_file) if key is None else ":memory:")
    try:
        if key is None:
            con.execute("CHECKPOINT")
        else:
            load_crypto(con)
            con.execute(
                f"ATTACH {sql_literal(str(db_file))} AS store (ENCRYPTION_KEY {sql_literal(key)})"
            )
            con.execute("CHECKPOINT store")
    finally:
        con.close()


def rebuild_duckdb(db_file: Path, encryption_key_env: str = "") -> None:
    """Rewrite a DuckDB file from its live rows, then swap it in.

    DuckDB marks the pages a DELETE or a replaced table freed for reuse but does
    not overwrite them, so deleted values stay readable in the file. A copy of
    the database (``COPY FROM DATABASE``) holds only the live rows; it replaces
    the file by a rename. Call it with no other connection to the file open.

    Parameters
    ----------
    db_file : Path
        The DuckDB file.
    encryption_key_env : str, default ""
        Environment variable of its key, when encrypted (the copy is encrypted
        with the same key).
    """
    import duckdb

    checkpoint(db_file, encryption_key_env)  # the write-ahead log, folded in first
    key = encryption_key(encryption_key_env)
    fresh = db_file.with_name(f".{db_file.name}.rebuild")
    fresh.unlink(missing_ok=True)
    secret = "" if key is None else f"ENCRYPTION_KEY {sql_literal(key)}"
    con = duckdb.connect(":memory:")
    try:
        if key is not None:
            load_crypto(con)
            con.execute("SET temp_file_encryption = true")
        con.execute(f"SET temp_directory = {sql_literal(str(fresh) + '.tmp')}")
        con.execute(
            f"ATTACH {sql_literal(str(db_file))} AS old_store "
            f"(READ_ONLY{', ' + secret if secret else ''})"
        )
        con.execute(
            f"ATTACH {sql_literal(str(fresh))} AS new_store{f' ({secret})' if secret else ''}"
        )
        con.execute("COPY FROM DATABASE old_store TO new_store")
        con.execute("DETACH new_store")
        con.execute("DETACH old_store")
    except BaseException:
        con.close()
        fresh.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(str(fresh) + ".tmp", ignore_errors=True)
    con.close()
    checkpoint(fresh, encryption_key_env)  # nothing may stay behind in a write-ahead log
    os.replace(fresh, db_file)


ENGINES: tuple[str, ...] = ("store", "spark", "postgres")
"""Where the feature aggregation runs: in the store itself, on Spark or on a PostgreSQL server."""


def spark_session(
    master: str = "local[2]",
    app_name: str = "crm-analytics",
    config: dict[str, str] | None = None,
) -> Any:
    """Start (or reuse) a Spark session for the feature aggregation.

    In local mode the driver binds to 127.0.0.1, the web UI is off and the
    warehouse goes to a temporary folder, so nothing listens on the network
    and nothing is written to the working directory.

    Parameters
    ----------
    master : str, default "local[2]"
        Spark master: ``local[N]`` (N cores of this machine), ``spark://host:7077``,
        ``yarn`` or ``k8s://...``.
    app_name : str, default "crm-analytics"
        Application name shown by the cluster manager.
    config : dict, optional
        Further Spark settings (``spark.executor.memory`` ...), applied last.

    Returns
    -------
    pyspark.sql.SparkSession
        The session, with time zone UTC (timestamps are compared as stored).

    Raises
    ------
    RuntimeError
        If pyspark (or Java) is not installed.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - pyspark is in requirements.txt
        raise RuntimeError("engine 'spark' needs pyspark: pip install -r requirements.txt") from exc
    warehouse = tempfile.mkdtemp(prefix="crm-spark-warehouse-")
    atexit.register(shutil.rmtree, warehouse, True)
    settings = {
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.warehouse.dir": warehouse,
        "spark.driver.memory": "2g",
    }
    if master.startswith("local"):
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.driver.bindAddress"] = "127.0.0.1"
    settings.update(config or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


EXCHANGE_OWNER = ".owner-pid"
"""File naming the process that owns an exchange folder (see :func:`exchange_folder`)."""


def exchange_folder(exchange_dir: str | Path = "") -> str:
    """Return a new folder, private to this process, for the Parquet copies Spark reads.

    Each call gets its own folder under ``exchange_dir`` (by default under the
    system's temporary folder), so concurrent runs never read or overwrite each
    other's copies. The copies hold customer data in plain Parquet, so a local
    folder is readable by its owner only and removed when the process exits;
    folders of processes that died without exiting (killed runs) are removed by
    the next call. A remote ``exchange_dir`` (``s3a://``, ``hdfs://``) gets a
    unique prefix; clean it with the storage's lifecycle rules.

    Parameters
    ----------
    exchange_dir : str or Path, default ""
        Parent folder; empty means ``<tmp>/crm-analytics-exchange``.

    Returns
    -------
    str
        The folder (or remote prefix).
    """
    import psutil

    base = str(exchange_dir) or str(Path(tempfile.gettempdir()) / "crm-analytics-exchange")
    if "://" in base:
        return f"{base.rstrip('/')}/run-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    parent = Path(base)
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob("run-*"):
        owner = old / EXCHANGE_OWNER
        pid = owner.read_text().strip() if owner.is_file() else ""
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=parent))  # mode 0700
    (folder / EXCHANGE_OWNER).write_text(str(os.getpid()))
    atexit.register(shutil.rmtree, folder, True)
    return str(folder)


class EngineUnavailable(RuntimeError):
    """The engine chosen for the feature aggregation cannot be reached."""


def redact_secrets(text: str, url: str) -> str:
    """Return ``text`` with the secrets of database URL ``url`` replaced by ``***``.

    The password of the user-info part (``user:pw@``) and the values of
    ``password=`` / ``pwd=`` query parameters are masked, wherever they appear.

    Parameters
    ----------
    text : str
        Message that may quote the URL (a driver's error).
    url : str
        The URL, secrets included.

    Returns
    -------
    str
        The message, safe to show and log.
    """
    import re
    from urllib.parse import unquote

    secrets = []
    if "://" in url:
        rest = url.split("://", 1)[1]
        cred = rest.split("/", 1)[0].rsplit("@", 1)[0] if "@" in rest.split("/", 1)[0] else ""
        if ":" in cred:
            secrets.append(cred.split(":", 1)[1])
    secrets += re.findall(r"(?i)[?&;](?:password|pwd)=([^&;#\s]+)", url)
    for secret in sorted({x for s in secrets for x in (s, unquote(s)) if x}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


ENGINE_SCHEMA_PREFIX = "crm_engine_"
"""Prefix of the PostgreSQL schemas that hold a session's copies of the clean tables."""

ENGINE_SCHEMA_PATTERN = "^crm_engine_[0-9a-f]{16}$"
"""Names :func:`postgres_engine` gives its schemas; only these are ever dropped."""

ENGINE_LOCK_NAMESPACE = 0x43524E
"""First key of the advisory lock a session holds on its own engine schema."""

_ENGINE_SESSIONS: dict[str, BaseBackend] = {}
"""Engine schemas of this process and their sessions, dropped by :func:`close_engine`."""


def postgres_engine(url: str) -> tuple[BaseBackend, str]:
    """Open a PostgreSQL session with a schema of its own, for the feature aggregation.

    The schema (``crm_engine_<16 hex digits>``) belongs to the connecting role
    (which needs the ``CREATE`` privilege on the database), so other roles cannot
    read the data copied there. The session holds an advisory lock on it: the
    schema is dropped by :func:`close_engine` or when this process exits, and the
    role's schemas of sessions that ended without dropping theirs (a killed run)
    are dropped by the next call, since their locks went with their sessions.
    Session-level locks need a direct connection or session pooling (not a
    transaction-pooling PgBouncer).

    Parameters
    ----------
    url : str
        ``postgresql://user@host:port/db`` (``${NAME}`` references are expanded;
        the password comes from ``PGPASSWORD`` or ``~/.pgpass``, never the URL).

    Returns
    -------
    tuple of (ibis Backend, str)
        The session and its schema.

    Raises
    ------
    ValueError
        If ``url`` is empty or not a PostgreSQL URL.
    EngineUnavailable
        If the server cannot be reached or the schema not created (the message
        never holds the password).
    """
    from psycopg import sql

    expanded = expand_env(url)
    shown = redact_secrets(url, expanded)
    if not expanded.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            "engine 'postgres' needs engine_url: postgresql://user@host:port/database "
            f"(got {redact_secrets(repr(url), expanded)})"
        )
    try:
        pg = ibis.connect(expanded)
    except Exception as exc:  # the driver's message may quote the URL, password included
        raise EngineUnavailable(
            f"engine 'postgres': cannot connect to {shown}: {redact_secrets(str(exc), expanded)}"
        ) from None
    raw = pg.con
    with raw.cursor() as cur:
        # only this role's schemas, and only names this function gives
        cur.execute(
            "SELECT n.nspname FROM pg_namespace n WHERE n.nspname ~ %s "
            "AND n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
            (ENGINE_SCHEMA_PATTERN,),
        )
        for (stale,) in cur.fetchall():
            cur.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (ENGINE_LOCK_NAMESPACE, stale)
            )
            if not cur.fetchone()[0]:
                continue  # a live session holds it
            try:  # nobody held it: its session has ended
                _drop_schema(cur, stale)
            finally:
                cur.execute(
                    "SELECT pg_advisory_unlock(%s, hashtext(%s))", (ENGINE_LOCK_NAMESPACE, stale)
                )
        while True:  # a name whose lock key no live session holds
            schema = f"{ENGINE_SCHEMA_PREFIX}{uuid.uuid4().hex[:16]}"
            cur.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (ENGINE_LOCK_NAMESPACE, schema)
            )
            if cur.fetchone()[0]:
                break
        try:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        except Exception as exc:
            pg.disconnect()
            raise EngineUnavailable(
                f"engine 'postgres': cannot create a schema on {shown} (the role needs the "
                f"CREATE privilege on the database): {redact_secrets(str(exc), expanded)}"
            ) from None
    _ENGINE_SESSIONS[schema] = pg
    return pg, schema


def _drop_schema(cur: Any, schema: str) -> None:
    """Drop a PostgreSQL schema and its tables, the name quoted by psycopg."""
    from psycopg import sql

    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def close_engine(schema: str) -> None:
    """Drop an engine schema of this process and end its session (idempotent).

    Parameters
    ----------
    schema : str
        A schema from :func:`postgres_engine`.
    """
    pg = _ENGINE_SESSIONS.pop(schema, None)
    if pg is None:
        return
    try:
        with pg.con.cursor() as cur:
            _drop_schema(cur, schema)
    except Exception:  # the session is gone: its lock too, so the next call drops the schema
        pass
    try:
        pg.disconnect()
    except Exception:
        pass


@atexit.register
def _close_engines() -> None:
    """Drop the engine schemas this process still holds (at exit)."""
    for schema in list(_ENGINE_SESSIONS):
        close_engine(schema)


ENGINE_PERSONAL_KEPT = ("birth_date",)
"""Personal columns the feature expressions need (age); the others stay in the store."""


def engine_columns(name: str, columns: list[str]) -> list[str]:
    """Return the columns of store table ``name`` that are copied to another engine.

    Raw personal data (names, e-mails, phones, cities, free-text comments: the
    ``personal`` columns of :data:`crm_analytics.schemas.TABLES`) never leaves the
    store, except the birth date the age feature needs.

    Parameters
    ----------
    name : str
        Table name.
    columns : list of str
        Its columns.

    Returns
    -------
    list of str
        The columns to copy, in order.
    """
    from crm_analytics.schemas import TABLES

    spec = TABLES.get(name)
    personal = set(spec.personal) - set(ENGINE_PERSONAL_KEPT) if spec else set()
    return [c for c in columns if c not in personal]


def copy_to_postgres(con: BaseBackend, names: list[str], url: str, schema: str) -> None:
    """Copy store tables (without their personal columns) into a PostgreSQL schema.

    The rows go through DuckDB's postgres extension (PostgreSQL's binary
    ``COPY``, no rows through Python).

    Parameters
    ----------
    con : BaseBackend
        The DuckDB store.
    names : list of str
        Tables to copy.
    url : str
        The PostgreSQL URL (``${NAME}`` references are expanded).
    schema : str
        Target schema (from :func:`postgres_engine`).

    Raises
    ------
    EngineUnavailable
        If DuckDB cannot attach the server (the message never holds the password).
    """
    expanded = expand_env(url)
    load_extension(con, "postgres_scanner")
    alias = f"engine_{uuid.uuid4().hex[:8]}"
    try:  # read-write even when the store itself is opened read-only
        con.raw_sql(f"ATTACH {sql_literal(expanded)} AS {alias} (TYPE postgres, READ_WRITE)")
    except Exception as exc:  # DuckDB's message quotes the connection string
        raise EngineUnavailable(
            f"engine 'postgres': cannot attach {redact_secrets(url, expanded)}: "
            f"{redact_secrets(str(exc), expanded)}"
        ) from None
    try:
        for n in names:
            cols = ", ".join(f'"{c}"' for c in engine_columns(n, con.table(n).columns))
            con.raw_sql(f'CREATE TABLE {alias}."{schema}"."{n}" AS SELECT {cols} FROM "{n}"')
    finally:
        con.raw_sql(f"DETACH {alias}")


def engine_tables(
    con: BaseBackend,
    names: list[str] | tuple[str, ...],
    engine: str = "store",
    spark_master: str = "local[2]",
    exchange_dir: str | Path = "",
    spark_config: dict[str, str] | None = None,
    engine_url: str = "",
) -> dict[str, ir.Table]:
    """Return the store's tables ``names`` as ibis tables on the chosen engine.

    The feature functions in :mod:`crm_analytics.features` take these tables, so
    the same expressions aggregate in the store (DuckDB), on PostgreSQL or on
    Spark. Tables the store does not hold are left out, and copies for another
    engine leave out raw personal data (:func:`engine_columns`).

    Parameters
    ----------
    con : BaseBackend
        Store connection.
    names : list of str
        Tables wanted.
    engine : {"store", "spark", "postgres"}, default "store"
        ``store`` aggregates where the data is; ``spark`` publishes each table as
        Parquet in a folder of its own under ``exchange_dir`` (see
        :func:`exchange_folder`) and reads it in a Spark session; ``postgres``
        copies each table into a schema of its own on the server at
        ``engine_url`` (see :func:`postgres_engine`).
    spark_master : str, default "local[2]"
        Spark master (see :func:`spark_session`).
    exchange_dir : str or Path, default ""
        Folder for the Parquet copies; on a cluster it must be readable by the
        executors (a shared file system or ``s3a://``/``hdfs://`` path). Empty: a
        temporary folder on this machine (local mode).
    spark_config : dict, optional
        Further Spark settings.
    engine_url : str, default ""
        PostgreSQL URL when ``engine`` is ``postgres``.

    Returns
    -------
    dict of str to ibis Table
        One table per name present in the store.

    Raises
    ------
    ValueError
        If ``engine`` is not one of :data:`ENGINES`, or ``postgres`` lacks a URL.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    present = set(con.list_tables())
    wanted = [n for n in names if n in present]
    if engine == "store":
        return {n: con.table(n) for n in wanted}
    if engine == "postgres":
        pg, schema = postgres_engine(engine_url)
        try:
            copy_to_postgres(con, wanted, engine_url, schema)
        except BaseException:
            close_engine(schema)
            raise
        return {n: pg.table(n, database=schema) for n in wanted}
    folder = exchange_folder(exchange_dir)
    spark = ibis.pyspark.connect(spark_session(spark_master, config=spark_config))
    out = {}
    for n in wanted:
        target = f"{folder.rstrip('/')}/{n}.parquet"
        # written by the store itself (timestamps in microseconds, which Spark reads)
        t = con.table(n)
        t.select(*engine_columns(n, t.columns)).to_parquet(target)
        out[n] = spark.read_parquet(target, table_name=n)
    return out


def engine_backend(tables: dict[str, ir.Table]) -> str:
    """Return the name of the backend the tables of :func:`engine_tables` live on.

    Parameters
    ----------
    tables : dict of str to ibis Table
        From :func:`engine_tables`.

    Returns
    -------
    str
        ``duckdb``, ``postgres`` or ``pyspark``; empty when there are no tables.
    """
    for table in tables.values():
        return str(table.get_backend().name)
    return ""
