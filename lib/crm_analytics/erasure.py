"""Right to erasure: forget a customer everywhere, and keep them forgotten.

``crm-analytics forget --customer-id ID`` (personal-information laws such as
China's PIPL and the EU's GDPR give people this right):

1. finds every record of the person: the id given, and the other CRM records
   entity resolution merged with it (``customer_crosswalk``);
2. deletes their rows from every table in the store that has a ``customer_id``
   (raw, clean and derived) and the lines of their orders, in one transaction;
3. removes their rows from exports and per-run snapshots under ``data/``;
4. replaces their pseudonymous id in earlier reports with ``cust_erased``;
5. adds them to a suppression list, so that the next run's collect stage
   withholds their rows when the same source files are read again; and
6. appends an audit line (when, by whom, why, how many rows where).

The suppression list and the audit log hold a hash of the CRM key, never the key
itself or any personal data.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from ibis.backends import BaseBackend

from crm_analytics.report import pseudonymise
from crm_analytics.store import sql_literal

ERASED_ID = "cust_erased"
"""What an erased customer's pseudonymous id becomes in earlier reports."""

_HASH_PREFIX = "crm-analytics-erasure|"
SUPPRESSION_COLUMNS: tuple[str, ...] = ("customer_key_sha256", "requested_at")


def key_hash(customer_id: str) -> str:
    """Return the hash under which a CRM key is suppressed and audited.

    Parameters
    ----------
    customer_id : str
        CRM key (surrounding white space ignored, as the clean stage does).

    Returns
    -------
    str
        Hex SHA-256 of the key with a fixed prefix (the same hash DuckDB computes
        in :func:`suppress_raw`).
    """
    return hashlib.sha256(f"{_HASH_PREFIX}{str(customer_id).strip()}".encode()).hexdigest()


def read_suppression(path: Path) -> set[str]:
    """Return the suppressed key hashes (empty when the list does not exist).

    Parameters
    ----------
    path : Path
        The suppression list (CSV with ``customer_key_sha256``).

    Returns
    -------
    set of str
        Key hashes.
    """
    if not path.is_file():
        return set()
    with path.open(encoding="utf-8", newline="") as fh:
        return {row["customer_key_sha256"] for row in csv.DictReader(fh)}


def add_to_suppression(path: Path, hashes: Iterable[str]) -> int:
    """Append key hashes to the suppression list (created with its header if absent).

    Parameters
    ----------
    path : Path
        The suppression list.
    hashes : iterable of str
        Key hashes from :func:`key_hash`.

    Returns
    -------
    int
        Hashes added (those already listed are skipped).
    """
    known = read_suppression(path)
    new = sorted(set(hashes) - known)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.is_file()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with path.open("a", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        if fresh:
            w.writerow(SUPPRESSION_COLUMNS)
        for h in new:
            w.writerow([h, now])
    return len(new)


def _sql_list(values: Iterable[str]) -> str:
    """Return a SQL list of string literals."""
    return ", ".join(sql_literal(str(v)) for v in values)


def person_ids(con: BaseBackend, customer_id: str) -> list[str]:
    """Return every CRM key of the person: the key given and the records merged with it.

    Parameters
    ----------
    con : BaseBackend
        The store.
    customer_id : str
        A CRM key of the person (a surviving or a merged record).

    Returns
    -------
    list of str
        Sorted keys, the given one included.
    """
    key = str(customer_id).strip()
    ids = {key}
    if "customer_crosswalk" in con.list_tables():
        cw = con.table("customer_crosswalk")
        survivors = cw.filter((cw.original_id == key) | (cw.customer_id == key)).customer_id
        group = cw.filter(cw.customer_id.isin(survivors)).select("original_id", "customer_id")
        for row in group.to_pyarrow().to_pylist():
            ids.update({str(row["original_id"]), str(row["customer_id"])})
    return sorted(ids)


def erase_from_store(con: BaseBackend, ids: list[str]) -> dict[str, int]:
    """Delete the person's rows from every table of the store, in one transaction.

    Tables with a ``customer_id`` column lose the person's rows (raw keys are
    compared trimmed); ``order_items`` and ``raw_order_items`` lose the lines of
    the person's orders; ``customer_crosswalk`` loses the person's records.

    Parameters
    ----------
    con : BaseBackend
        The store (DuckDB or PostgreSQL).
    ids : list of str
        The person's CRM keys (:func:`person_ids`).

    Returns
    -------
    dict
        Table -> rows deleted (tables with none left out).
    """
    keys = _sql_list(ids)
    tables = {name: con.table(name).columns for name in con.list_tables()}
    orders: set[str] = set()
    for name in ("orders", "raw_orders"):
        if name in tables:
            t = con.table(name)
            found = t.filter(t.customer_id.strip().isin(ids)).order_id.to_pyarrow().to_pylist()
            orders.update(str(o).strip() for o in found if o is not None)
    where: dict[str, str] = {}
    for name, cols in tables.items():
        if name == "customer_crosswalk":
            where[name] = f"original_id IN ({keys}) OR customer_id IN ({keys})"
        elif "customer_id" in cols:
            where[name] = f"trim(CAST(customer_id AS VARCHAR)) IN ({keys})"
        elif name in ("order_items", "raw_order_items") and orders:
            where[name] = f"trim(CAST(order_id AS VARCHAR)) IN ({_sql_list(sorted(orders))})"
    counts: dict[str, int] = {}
    for name, cond in where.items():
        counts[name] = int(
            con.sql(f'SELECT count(*) AS n FROM "{name}" WHERE {cond}').to_pyarrow()[0][0].as_py()
        )
    con.raw_sql("BEGIN TRANSACTION")
    try:
        for name, cond in where.items():
            if counts[name]:
                con.raw_sql(f'DELETE FROM "{name}" WHERE {cond}')
        con.raw_sql("COMMIT")
    except Exception:
        con.raw_sql("ROLLBACK")
        raise
    return {k: v for k, v in counts.items() if v}


def erase_from_files(folders: Iterable[Path], ids: list[str]) -> dict[str, int]:
    """Remove the person's rows from the CSV, Excel and Parquet files under some folders.

    Only files with a ``customer_id`` column are touched; each is rewritten
    through a temporary file and a rename.

    Parameters
    ----------
    folders : iterable of Path
        Export and snapshot folders.
    ids : list of str
        The person's CRM keys.

    Returns
    -------
    dict
        File -> rows removed (files with none left out).
    """
    readers = {".csv": pd.read_csv, ".xlsx": pd.read_excel, ".parquet": pd.read_parquet}
    out: dict[str, int] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix in readers and p.is_file()):
            frame = (
                readers[path.suffix](path, dtype={"customer_id": str})
                if path.suffix != ".parquet"
                else readers[path.suffix](path)
            )
            if "customer_id" not in frame.columns:
                continue
            hit = frame.customer_id.astype(str).str.strip().isin(ids)
            if not hit.any():
                continue
            kept = frame[~hit]
            tmp = path.with_name(f".{path.name}.erasing{path.suffix}")
            if path.suffix == ".csv":
                kept.to_csv(tmp, index=False, encoding="utf-8-sig")
            elif path.suffix == ".xlsx":
                kept.to_excel(tmp, index=False)
            else:
                kept.to_parquet(tmp, index=False)
            os.replace(tmp, path)
            out[str(path)] = int(hit.sum())
    return out


def scrub_reports(reports: Path, ids: list[str]) -> int:
    """Replace the person's pseudonymous ids in earlier reports with :data:`ERASED_ID`.

    Parameters
    ----------
    reports : Path
        Folder of run folders.
    ids : list of str
        The person's CRM keys.

    Returns
    -------
    int
        Files changed.
    """
    if not reports.is_dir():
        return 0
    pseudonyms = set(pseudonymise(pd.Series(ids)))
    changed = 0
    for path in reports.rglob("*"):
        if (
            path.is_symlink()
            or not path.is_file()
            or path.suffix not in (".html", ".ipynb", ".json")
        ):
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = text
        for p in pseudonyms:
            new = new.replace(p, ERASED_ID)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


def suppress_raw(con: BaseBackend, suppressed: set[str]) -> dict[str, int]:
    """Withhold suppressed customers' rows from the raw tables (collect stage).

    Parameters
    ----------
    con : BaseBackend
        DuckDB store after the sources were read into ``raw_*`` tables.
    suppressed : set of str
        Key hashes from the suppression list.

    Returns
    -------
    dict
        Raw table -> rows withheld (every raw table listed).
    """
    raw = [t for t in con.list_tables() if t.startswith("raw_") and t != "raw_rejects"]
    if not suppressed:
        return {t: 0 for t in raw}
    con.create_table("_suppressed", pd.DataFrame({"h": sorted(suppressed)}), overwrite=True)
    key = f"sha256('{_HASH_PREFIX}' || trim(CAST(customer_id AS VARCHAR)))"
    out: dict[str, int] = {}
    with_orders = "raw_orders" in raw and "raw_order_items" in raw
    if with_orders:
        con.raw_sql(
            "CREATE OR REPLACE TEMP TABLE _suppressed_orders AS SELECT DISTINCT trim(order_id) AS o "
            f"FROM raw_orders WHERE {key} IN (SELECT h FROM _suppressed)"
        )
    for t in raw:
        cols = con.table(t).columns
        if "customer_id" in cols:
            cond = f"{key} IN (SELECT h FROM _suppressed)"
        elif t == "raw_order_items" and with_orders:
            cond = "trim(order_id) IN (SELECT o FROM _suppressed_orders)"
        else:
            out[t] = 0
            continue
        n = con.sql(f"SELECT count(*) AS n FROM {t} WHERE {cond}").to_pyarrow()[0][0].as_py()
        if n:
            con.raw_sql(f"DELETE FROM {t} WHERE {cond}")
        out[t] = int(n)
    con.drop_table("_suppressed")
    return out


def forget(
    con: BaseBackend,
    customer_id: str,
    *,
    suppression_file: Path,
    audit_file: Path,
    data_folders: Iterable[Path] = (),
    reports: Path | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """Erase a customer everywhere and keep them suppressed (see the module docstring).

    Parameters
    ----------
    con : BaseBackend
        The store (hold the run lock while calling this).
    customer_id : str
        One CRM key of the person.
    suppression_file : Path
        The suppression list read by the collect stage.
    audit_file : Path
        JSON-lines audit log (appended).
    data_folders : iterable of Path, default ()
        Export and snapshot folders to clean.
    reports : Path, optional
        Folder of run folders whose pseudonymous ids are replaced.
    reason : str, default ""
        Why (e.g. the request's ticket number); goes to the audit log.

    Returns
    -------
    dict
        The audit record written.
    """
    ids = person_ids(con, customer_id)
    store_rows = erase_from_store(con, ids)
    files = erase_from_files(data_folders, ids)
    scrubbed = scrub_reports(reports, ids) if reports is not None else 0
    add_to_suppression(suppression_file, [key_hash(i) for i in ids])
    record = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "by": getpass.getuser(),
        "reason": reason,
        "customer_key_sha256": [key_hash(i) for i in ids],
        "records": len(ids),
        "store_rows_deleted": store_rows,
        "file_rows_deleted": {Path(k).name: v for k, v in files.items()},
        "report_files_scrubbed": scrubbed,
    }
    audit_file.parent.mkdir(parents=True, exist_ok=True)
    with audit_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record
