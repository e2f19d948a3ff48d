"""Right to erasure: forget a customer everywhere, and keep them forgotten.

``crm-analytics forget --customer-id ID`` (personal-information laws such as
China's PIPL and the EU's GDPR give people this right):

1. finds every record of the person: the id given, and the other CRM records
   entity resolution merged with it (``customer_crosswalk``);
2. adds them to a suppression list first, so that the next run's collect stage
   never writes their rows to the store again when the same sources are read
   (a failure in a later step cannot bring them back);
3. deletes their rows from every table in the store that has a ``customer_id``
   (raw, clean and derived) and the lines of their orders, in one transaction;
   a DELETE leaves the bytes in the database's free pages, so the store's
   DuckDB file is then rebuilt from its live rows;
4. removes their rows from exports and per-run snapshots under ``data/``;
5. replaces their pseudonymous id in earlier reports with ``cust_erased``; and
6. appends an audit line (when, by whom, why, how many rows where).

The suppression list and the audit log hold a salted hash of the CRM key (the
secret of the pseudonymous ids), never the key itself or any personal data.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ibis.backends import BaseBackend

from crm_analytics.report import PSEUDONYM_SALT_ENV, pseudonym_salt, pseudonymise
from crm_analytics.store import sql_literal

ERASED_ID = "cust_erased"
"""What an erased customer's pseudonymous id becomes in earlier reports."""

_HASH_PREFIX = "crm-analytics-erasure|"
SUPPRESSION_COLUMNS: tuple[str, ...] = ("customer_key_sha256", "salt_id", "requested_at")
SUPPRESSION_TABLES: tuple[str, ...] = ("_suppressed_salt", "_suppressed_keys", "_suppressed_legacy")
"""Temporary tables of :func:`register_suppression`."""


@dataclass(frozen=True)
class Suppression:
    """The suppression list as read: the key hashes whose rows the collect stage withholds.

    Attributes
    ----------
    salted : frozenset of str
        Hashes of :func:`key_hash` under the current salt.
    legacy : frozenset of str
        Unsalted hashes of lists written before hashes were salted (still honoured).
    """

    salted: frozenset[str] = frozenset()
    legacy: frozenset[str] = frozenset()

    def __len__(self) -> int:
        """Return the number of suppressed keys."""
        return len(self.salted) + len(self.legacy)


def salt_id(salt: str | None = None) -> str:
    """Return a short fingerprint of the salt (recorded with each suppressed hash).

    Parameters
    ----------
    salt : str, optional
        The salt; :func:`crm_analytics.report.pseudonym_salt` when omitted.

    Returns
    -------
    str
        16 hex digits; the salt cannot be recovered from them.
    """
    s = salt if salt is not None else pseudonym_salt()
    return hashlib.sha256(f"crm-analytics-salt-id|{s}".encode()).hexdigest()[:16]


def key_hash(customer_id: str, salt: str | None = None) -> str:
    """Return the hash under which a CRM key is suppressed and audited.

    Salted with the secret of the pseudonymous ids, so that the hash of a guessable
    key (``C000123``) cannot be found by hashing candidates.

    Parameters
    ----------
    customer_id : str
        CRM key (surrounding white space ignored, as the clean stage does).
    salt : str, optional
        The salt; :func:`crm_analytics.report.pseudonym_salt` when omitted.

    Returns
    -------
    str
        Hex SHA-256 of salt, a fixed prefix and the key (the same hash DuckDB
        computes in :func:`suppressed_sql`).
    """
    s = salt if salt is not None else pseudonym_salt()
    return hashlib.sha256(f"{s}|{_HASH_PREFIX}{str(customer_id).strip()}".encode()).hexdigest()


def read_suppression(path: Path, salt: str | None = None) -> Suppression:
    """Read the suppression list (empty when it does not exist).

    Parameters
    ----------
    path : Path
        The suppression list (CSV with ``customer_key_sha256`` and ``salt_id``).
    salt : str, optional
        The salt; :func:`crm_analytics.report.pseudonym_salt` when omitted.

    Returns
    -------
    Suppression
        Salted hashes, and unsalted ones of rows written before salting.

    Raises
    ------
    ValueError
        If a row was hashed under another salt: its customer could not be
        recognised, so the run stops instead of bringing them back.
    """
    if not path.is_file():
        return Suppression()
    current = salt_id(salt)
    salted: set[str] = set()
    legacy: set[str] = set()
    with path.open(encoding="utf-8", newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            written = (row.get("salt_id") or "").strip()
            if not written:
                legacy.add(row["customer_key_sha256"])
            elif written == current:
                salted.add(row["customer_key_sha256"])
            else:
                raise ValueError(
                    f"{path}, line {line}, column salt_id: hashed under another salt "
                    f"({written}, this run's is {current}); set {PSEUDONYM_SALT_ENV} to the salt "
                    "that wrote the list, or the customers erased under it would come back"
                )
    return Suppression(frozenset(salted), frozenset(legacy))


def add_to_suppression(path: Path, hashes: Iterable[str], salt: str | None = None) -> int:
    """Add key hashes to the suppression list (created with its header if absent).

    The list is rewritten through a temporary file and a rename, so a crash
    leaves the old list or the new one, never half of it.

    Parameters
    ----------
    path : Path
        The suppression list.
    hashes : iterable of str
        Key hashes from :func:`key_hash` under ``salt``.
    salt : str, optional
        The salt; :func:`crm_analytics.report.pseudonym_salt` when omitted.

    Returns
    -------
    int
        Hashes added (those already listed are skipped).
    """
    known = read_suppression(path, salt)
    new = sorted(set(hashes) - known.salted)
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    sid = salt_id(salt)
    rows += [{"customer_key_sha256": h, "salt_id": sid, "requested_at": now} for h in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.writing")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, SUPPRESSION_COLUMNS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
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


def _base_tables(con: BaseBackend) -> list[str]:
    """Return the store's tables, views left out (they hold no rows of their own)."""
    found = con.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_schema = current_schema() AND table_catalog = current_database()"
    ).to_pyarrow()
    return sorted(str(n) for n in found.column(0).to_pylist())


def erase_from_store(con: BaseBackend, ids: list[str]) -> dict[str, int]:
    """Delete the person's rows from every table of the store, in one transaction.

    Tables with a ``customer_id`` column lose the person's rows (raw keys are
    compared trimmed); ``order_items`` and ``raw_order_items`` lose the lines of
    the person's orders; ``customer_crosswalk`` loses the person's records. The
    deleted bytes stay in the file's free pages until the caller rebuilds it
    (:func:`crm_analytics.store.rebuild_duckdb`).

    Parameters
    ----------
    con : BaseBackend
        The store.
    ids : list of str
        The person's CRM keys (:func:`person_ids`).

    Returns
    -------
    dict
        Table -> rows deleted (tables with none left out).
    """
    keys = _sql_list(ids)
    tables = {name: con.table(name).columns for name in _base_tables(con)}
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
    suffixes = (".csv", ".xlsx", ".parquet")
    out: dict[str, int] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix in suffixes and p.is_file()):
            # text files are read as text, so the rows kept are written back as they were
            # (a phone "+8613812345678" or an id "007" is not turned into a number)
            sheet = None
            if path.suffix == ".csv":
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            elif path.suffix == ".xlsx":
                with pd.ExcelFile(path) as book:
                    sheet = book.sheet_names[0]
                    frame = book.parse(sheet, dtype=str)
            else:
                frame = pd.read_parquet(path)
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
                kept.to_excel(tmp, index=False, sheet_name=sheet or "Sheet1")
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


def register_suppression(duck: Any, suppression: Suppression, salt: str | None = None) -> bool:
    """Give a DuckDB connection the suppression list, for :func:`suppressed_sql`.

    The hashes and the salt go to temporary tables, which live in memory (or
    DuckDB's temporary files) and never in the store's file.

    Parameters
    ----------
    duck : duckdb.DuckDBPyConnection
        The connection that loads the raw tables.
    suppression : Suppression
        From :func:`read_suppression`.
    salt : str, optional
        The salt; :func:`crm_analytics.report.pseudonym_salt` when omitted.

    Returns
    -------
    bool
        Whether anything is suppressed (nothing is registered otherwise).
    """
    if not suppression:
        return False
    duck.execute("CREATE OR REPLACE TEMP TABLE _suppressed_salt (prefix VARCHAR)")
    prefix = f"{salt if salt is not None else pseudonym_salt()}|{_HASH_PREFIX}"
    duck.execute("INSERT INTO _suppressed_salt VALUES (?)", [prefix])
    for name, hashes in (("_suppressed_keys", suppression.salted),
                         ("_suppressed_legacy", suppression.legacy)):  # fmt: skip
        duck.register("_hashes", pd.DataFrame({"h": sorted(hashes)}, dtype=object))
        try:
            duck.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT CAST(h AS VARCHAR) AS h "
                         "FROM _hashes")  # fmt: skip
        finally:
            duck.unregister("_hashes")
    return True


def suppressed_sql(column: str) -> str:
    """Return a DuckDB condition, true when a row's key is on the suppression list.

    Needs :func:`register_suppression` on the connection. A NULL key is never
    suppressed.

    Parameters
    ----------
    column : str
        SQL of the key column (quoted as needed).

    Returns
    -------
    str
        Boolean SQL expression.
    """
    key = f"trim(CAST({column} AS VARCHAR))"
    salted = f"sha256((SELECT prefix FROM _suppressed_salt) || {key})"
    legacy = f"sha256({sql_literal(_HASH_PREFIX)} || {key})"
    return (
        f"coalesce({salted} IN (SELECT h FROM _suppressed_keys) "
        f"OR {legacy} IN (SELECT h FROM _suppressed_legacy), false)"
    )


def forget(
    con: BaseBackend,
    customer_id: str,
    *,
    suppression_file: Path,
    data_folders: Iterable[Path] = (),
    reports: Path | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """Erase a customer everywhere and keep them suppressed (see the module docstring).

    The caller then rebuilds a DuckDB store's file (:func:`crm_analytics.store.rebuild_duckdb`)
    and appends the returned record to the audit log (:func:`append_audit`).

    Parameters
    ----------
    con : BaseBackend
        The store (hold the run lock while calling this).
    customer_id : str
        One CRM key of the person.
    suppression_file : Path
        The suppression list read by the collect stage.
    data_folders : iterable of Path, default ()
        Export and snapshot folders to clean.
    reports : Path, optional
        Folder of run folders whose pseudonymous ids are replaced.
    reason : str, default ""
        Why (e.g. the request's ticket number); goes to the audit log.

    Returns
    -------
    dict
        The audit record.
    """
    ids = person_ids(con, customer_id)
    # suppressed first: should anything below fail, the next run still leaves them out
    add_to_suppression(suppression_file, [key_hash(i) for i in ids])
    store_rows = erase_from_store(con, ids)
    files = erase_from_files(data_folders, ids)
    scrubbed = scrub_reports(reports, ids) if reports is not None else 0
    return {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "by": getpass.getuser(),
        "reason": reason,
        "customer_key_sha256": [key_hash(i) for i in ids],
        "salt_id": salt_id(),
        "records": len(ids),
        "store_rows_deleted": store_rows,
        "file_rows_deleted": {Path(k).name: v for k, v in files.items()},
        "report_files_scrubbed": scrubbed,
    }


def append_audit(audit_file: Path, record: dict[str, Any]) -> None:
    """Append an erasure record to the JSON-lines audit log.

    Parameters
    ----------
    audit_file : Path
        The audit log (created with its folder if absent).
    record : dict
        From :func:`forget`.
    """
    audit_file.parent.mkdir(parents=True, exist_ok=True)
    with audit_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
