"""The analytical store: where every stage reads its inputs and writes its outputs.

The default store is an embedded DuckDB file. A database URL
(``postgresql://user@host:port/db``) selects another ibis backend; the stage
code is the same ibis expressions either way.
"""

from __future__ import annotations

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


def connect(store: str, *, read_only: bool = False, memory_limit: str | None = None) -> BaseBackend:
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

    Returns
    -------
    ibis.backends.BaseBackend
        A connected ibis backend.
    """
    store = expand_env(store)
    if is_url(store):
        return ibis.connect(store)
    if store == ":memory:":
        con = ibis.duckdb.connect()
    else:
        path = resolve_path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = ibis.duckdb.connect(str(path), read_only=read_only)
    if memory_limit:
        con.raw_sql(f"SET memory_limit = '{memory_limit}'")
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
    read the table back with ``con.table(name)``.
    """
    con.create_table(name, obj, overwrite=True)


def read_frame(con: BaseBackend, name: str) -> pd.DataFrame:
    """Read a (small) table into pandas.

    Parameters
    ----------
    con : BaseBackend
        Store connection.
    name : str
        Table name.

    Returns
    -------
    pandas.DataFrame
        The table's rows.
    """
    return con.table(name).to_pandas()


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
