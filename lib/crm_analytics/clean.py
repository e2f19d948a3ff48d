"""Stage 02, clean: standardise, type, validate and de-duplicate the raw tables.

For each canonical table, in dependency order, :func:`clean_table` turns
``raw_<table>`` (text, with lineage) into the typed table ``<table>``:

1. standardise text (trim, empty to missing, case of e-mails, gender and
   boolean spellings, category labels through a mapping);
2. type every column with ``TRY_CAST``; a value that does not parse becomes a
   quarantine reason naming the column;
3. apply the schema's rules (required columns, allowed values, ranges) and the
   as-of rule (no event dated after the run's as-of date);
4. drop exact duplicate rows (identical in every canonical column), keeping the
   first by source and row;
5. quarantine rows whose key repeats, and rows that reference a missing or
   quarantined parent (an order of an unknown customer, a line of a
   quarantined order);
6. validate the result with the table's pandera schema, in the store.

Every input row ends in exactly one place: the clean table, the duplicate
count, or the ``quarantine`` table with table, source, row, column and reason.
:func:`row_accounting` proves it. Order amounts are flagged as outliers with a
robust rule (median and MAD of log amount) but kept.

All of it is ibis expressions executed in the store.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
from ibis.backends import BaseBackend

from crm_analytics.schemas import TABLES, spec

DEFAULT_CATEGORY_MAP: dict[str, str] = {
    "电子产品": "electronics",
    "服装": "fashion",
    "apparel": "fashion",
    "美妆": "beauty",
    "家居": "home",
    "home & living": "home",
    "食品": "grocery",
    "groceries": "grocery",
}
"""Lower-cased label -> canonical category. Labels already canonical need no entry."""

GENDER_MAP: dict[str, str] = {
    "f": "F",
    "female": "F",
    "女": "F",
    "w": "F",
    "m": "M",
    "male": "M",
    "男": "M",
    "other": "other",
    "o": "other",
    "其他": "other",
}
TRUE_WORDS: tuple[str, ...] = ("true", "t", "1", "yes", "y", "是")
FALSE_WORDS: tuple[str, ...] = ("false", "f", "0", "no", "n", "否")

QUARANTINE_COLUMNS: tuple[str, ...] = ("table", "_source", "_source_row", "column", "reason")


def _text(col: ir.StringValue) -> ir.StringValue:
    """Trim text (including full-width spaces); empty becomes missing."""
    return col.replace("\u3000", " ").strip().nullif("")


def standardise(raw: ir.Table, table: str, category_map: dict[str, str] | None = None) -> ir.Table:
    """Return ``raw`` with text standardised per column (still text).

    Parameters
    ----------
    raw : ibis Table
        A raw table (all canonical columns as text).
    table : str
        Canonical table name.
    category_map : dict, optional
        Lower-cased label -> canonical category; :data:`DEFAULT_CATEGORY_MAP` by default.

    Returns
    -------
    ibis Table
        Same columns, standardised text.
    """
    cmap = {k.lower(): v for k, v in (category_map or DEFAULT_CATEGORY_MAP).items()}
    out = {}
    for col in spec(table).columns:
        v = _text(raw[col])
        if col == "email":
            v = v.lower()
        elif col == "gender":
            v = v.lower().substitute(GENDER_MAP, else_=v)
        elif col == "category":
            v = v.lower().substitute(cmap, else_=v.lower())
        elif col in ("currency", "country"):
            v = v.upper()
        elif col in ("status", "channel", "priority", "event_type"):
            v = v.lower()
        out[col] = v
    return raw.mutate(**out)


def _typed(col: ir.StringValue, dtype: str) -> ir.Value:
    """Cast standardised text to ``dtype``; unparseable values become missing."""
    if dtype == "string":
        return col
    if dtype == "boolean":
        low = col.lower()
        return ibis.cases(
            (low.isin(TRUE_WORDS), ibis.literal(True)),
            (low.isin(FALSE_WORDS), ibis.literal(False)),
            else_=ibis.null("boolean"),
        )
    if dtype == "int64":
        f = col.try_cast("float64")
        return ibis.cases((f == f.round(), f.cast("int64")), else_=ibis.null("int64"))
    return col.try_cast(dtype)


def _check_failures(
    name: str, typed: ir.Value, checks: list[Any]
) -> list[tuple[ir.BooleanValue, str]]:
    """Return (failing condition, reason) pairs for the pandera checks of a column."""
    out = []
    for ch in checks:
        s = ch.statistics
        if ch.name == "isin":
            allowed = list(s["allowed_values"])
            out.append(
                (
                    typed.notnull() & ~typed.isin(allowed),
                    f"{name}: not one of {'/'.join(map(str, allowed))}",
                )
            )
        elif ch.name == "greater_than_or_equal_to":
            out.append((typed < s["min_value"], f"{name}: below minimum {s['min_value']}"))
        elif ch.name == "in_range":
            lo, hi = s["min_value"], s["max_value"]
            out.append(((typed < lo) | (typed > hi), f"{name}: outside {lo}..{hi}"))
        else:  # a check we cannot express row-wise is still enforced by pandera afterwards
            continue
    return out


def row_rules(
    std: ir.Table, table: str, as_of: dt.date
) -> tuple[dict[str, ir.Value], ir.Value, ir.Value]:
    """Build typed columns and the first failing rule of each row.

    Parameters
    ----------
    std : ibis Table
        Standardised raw table.
    table : str
        Canonical table name.
    as_of : datetime.date
        Rows dated after this day are quarantined as "in the future".

    Returns
    -------
    typed : dict
        Column -> typed ibis expression.
    column : ibis expression
        Name of the column that failed first (null if none).
    reason : ibis expression
        Reason of the first failure (null if none).
    """
    t = spec(table)
    schema = t.model.to_schema()
    typed: dict[str, ir.Value] = {}
    branches: list[tuple[ir.BooleanValue, str, str]] = []
    for name, col in schema.columns.items():
        dtype = t.dtypes()[name]
        v = _typed(std[name], dtype)
        typed[name] = v
        if dtype != "string":
            branches.append(
                (std[name].notnull() & v.isnull(), name, f"{name}: cannot parse as {dtype}")
            )
        if not col.nullable:
            branches.append((std[name].isnull(), name, f"{name}: missing required value"))
        for cond, reason in _check_failures(name, v, col.checks):
            branches.append((cond, name, reason))
    if t.time_column:
        limit = ibis.literal(as_of + dt.timedelta(days=1)).cast("timestamp")
        tc = typed[t.time_column].cast("timestamp")
        branches.append(
            (tc >= limit, t.time_column, f"{t.time_column}: in the future (after {as_of})")
        )
    column = ibis.cases(*[(c, ibis.literal(n)) for c, n, _ in branches], else_=ibis.null("string"))
    reason = ibis.cases(*[(c, ibis.literal(r)) for c, _, r in branches], else_=ibis.null("string"))
    return typed, column, reason


def clean_table(
    con: BaseBackend,
    table: str,
    as_of: dt.date,
    category_map: dict[str, str] | None = None,
    outlier_mad_threshold: float = 5.0,
) -> dict[str, int]:
    """Clean ``raw_<table>`` into ``<table>``, appending rejects to ``quarantine``.

    Parent tables (see ``TableSpec.foreign_keys``) must be cleaned first.

    Parameters
    ----------
    con : BaseBackend
        The store, holding ``raw_<table>`` and an existing ``quarantine`` table.
    table : str
        Canonical table name.
    as_of : datetime.date
        The run's as-of date (see :func:`row_rules`).
    category_map : dict, optional
        Category label mapping (see :func:`standardise`).
    outlier_mad_threshold : float, default 5.0
        Threshold of :func:`flag_amount_outliers` (orders only).

    Returns
    -------
    dict
        ``input``, ``kept``, ``duplicates``, ``quarantined`` row counts.

    Raises
    ------
    RuntimeError
        If the counts do not add up (a row was lost).
    """
    t = spec(table)
    raw = con.table(f"raw_{table}")
    std = standardise(raw, table, category_map)
    typed, column, reason = row_rules(std, table, as_of)
    cols = t.columns
    dup_rank = ibis.row_number().over(
        group_by=[std[c] for c in cols], order_by=[std._source, std._source_row]
    )
    staged = std.mutate(
        **{f"_t_{c}": typed[c] for c in cols},
        _column=column,
        _reason=reason,
        _dup_rank=dup_rank,
    )
    staged = con.create_table(f"_staged_{table}", staged, overwrite=True)
    # key duplicates among otherwise valid, non-duplicate rows
    if t.key:
        ok = (staged._reason.isnull()) & (staged._dup_rank == 0)
        key_rank = ibis.row_number().over(
            group_by=[ok, *[staged[f"_t_{k}"] for k in t.key]],
            order_by=[staged._source, staged._source_row],
        )
        staged = staged.mutate(
            _column=ibis.cases(
                (ok & (key_rank > 0), ibis.literal(",".join(t.key))), else_=staged._column
            ),
            _reason=ibis.cases(
                (
                    ok & (key_rank > 0),
                    ibis.literal(f"{','.join(t.key)}: duplicate key, first kept"),
                ),
                else_=staged._reason,
            ),
        )
    # references to missing or quarantined parents
    for col, (ptable, pcol) in t.foreign_keys.items():
        parent = con.table(ptable).select(**{"_pk": pcol}).distinct()
        staged = staged.left_join(parent, staged[f"_t_{col}"] == parent._pk)
        ok = staged._reason.isnull() & (staged._dup_rank == 0)
        bad = ok & staged._pk.isnull()
        staged = staged.mutate(
            _column=ibis.cases((bad, ibis.literal(col)), else_=staged._column),
            _reason=ibis.cases(
                (bad, ibis.literal(f"{col}: no valid {ptable} row with this {pcol}")),
                else_=staged._reason,
            ),
        ).drop("_pk")
    staged = con.create_table(f"_staged_{table}", staged, overwrite=True)

    kept = staged.filter(staged._reason.isnull() & (staged._dup_rank == 0))
    clean = kept.select(
        **{c: kept[f"_t_{c}"] for c in cols}, _source=kept._source, _source_row=kept._source_row
    )
    if table == "orders":
        clean = flag_amount_outliers(clean, outlier_mad_threshold)
    con.create_table(table, clean, overwrite=True)
    bad = staged.filter(staged._reason.notnull() & (staged._dup_rank == 0))
    quarantined = bad.select(
        table=ibis.literal(table),
        _source=bad._source,
        _source_row=bad._source_row,
        column=bad._column,
        reason=bad._reason,
    )
    con.insert("quarantine", quarantined)
    counts = (
        staged.aggregate(
            input=staged.count(),
            kept=(staged._reason.isnull() & (staged._dup_rank == 0)).sum(),
            duplicates=(staged._dup_rank > 0).sum(),
            quarantined=(staged._reason.notnull() & (staged._dup_rank == 0)).sum(),
        )
        .to_pandas()
        .iloc[0]
    )
    con.drop_table(f"_staged_{table}")
    # sums over an empty table are NULL
    out = {
        k: 0 if pd.isna(counts[k]) else int(counts[k])
        for k in ("input", "kept", "duplicates", "quarantined")
    }
    if out["input"] != out["kept"] + out["duplicates"] + out["quarantined"]:
        raise RuntimeError(f"row accounting does not add up for {table}: {out}")
    return out


def flag_amount_outliers(orders: ir.Table, threshold: float = 5.0) -> ir.Table:
    """Add ``amount_outlier``: robust z-score of log amount above ``threshold``.

    The z-score is ``|log1p(amount) - median| / (1.4826 * MAD)`` over all orders,
    computed in the store. Flagged orders are kept; analyses exclude them by default.

    Parameters
    ----------
    orders : ibis Table
        Typed orders with an ``amount`` column.
    threshold : float, default 5.0
        Robust z-score above which an amount is an outlier.

    Returns
    -------
    ibis Table
        ``orders`` plus boolean ``amount_outlier``.

    Raises
    ------
    ValueError
        If ``amount`` is missing.
    """
    if "amount" not in orders.columns:
        raise ValueError("orders has no column 'amount'")
    la = (orders.amount + 1).ln()
    med = la.median().as_scalar()
    mad = (la - med).abs().median().as_scalar()
    scale = ibis.greatest(mad * 1.4826, ibis.literal(1e-9))
    return orders.mutate(amount_outlier=((la - med).abs() / scale > threshold).fill_null(False))


def empty_quarantine(con: BaseBackend) -> None:
    """Create (replace) the empty ``quarantine`` table.

    Parameters
    ----------
    con : BaseBackend
        The store.
    """
    schema = ibis.schema(
        {
            "table": "string",
            "_source": "string",
            "_source_row": "int64",
            "column": "string",
            "reason": "string",
        }
    )
    con.create_table("quarantine", schema=schema, overwrite=True)


def clean_all(
    con: BaseBackend,
    as_of: dt.date | str | None = None,
    category_map: dict[str, str] | None = None,
    outlier_mad_threshold: float = 5.0,
) -> pd.DataFrame:
    """Clean every canonical table and validate the results with pandera.

    Parameters
    ----------
    con : BaseBackend
        The store after stage 01.
    as_of : date or str, optional
        The run's as-of date; today (UTC) when omitted.
    category_map : dict, optional
        Category label mapping (see :func:`standardise`).
    outlier_mad_threshold : float, default 5.0
        Threshold of :func:`flag_amount_outliers`.

    Returns
    -------
    pandas.DataFrame
        The row accounting (also written to the store as ``row_accounting``).
    """
    as_of_date = _as_date(as_of)
    empty_quarantine(con)
    rows = []
    for table in TABLES:
        counts = clean_table(con, table, as_of_date, category_map, outlier_mad_threshold)
        rows.append({"table": table, **counts})
    validate_clean(con)
    acc = pd.DataFrame(rows)
    con.create_table("row_accounting", acc, overwrite=True)
    return acc


def _as_date(value: dt.date | str | None) -> dt.date:
    """Return a date from a date, an ISO string, or None/empty (today, UTC)."""
    if value is None or value == "":
        return dt.datetime.now(dt.UTC).date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def validate_clean(con: BaseBackend) -> None:
    """Validate every clean table against its pandera schema, in the store.

    Parameters
    ----------
    con : BaseBackend
        The store after cleaning.

    Raises
    ------
    pandera.errors.SchemaErrors
        If a clean table breaks its schema (a bug in the cleaning rules).
    """
    for table, t in TABLES.items():
        expr = con.table(table).select(*t.columns)
        if int(expr.count().to_pandas()) == 0:
            continue  # nothing to validate (pandera's ibis backend misreads empty tables)
        # stores report timestamps with a precision (timestamp(6)); the schema has none
        ts_cols = {c: "timestamp" for c, d in t.dtypes().items() if d == "timestamp"}
        t.model.validate(expr.cast(ts_cols) if ts_cols else expr, lazy=True)


def row_accounting(con: BaseBackend) -> pd.DataFrame:
    """Return the row accounting written by :func:`clean_all`, with a check column.

    Parameters
    ----------
    con : BaseBackend
        The store after cleaning.

    Returns
    -------
    pandas.DataFrame
        table, input, kept, duplicates, quarantined, accounted (bool).
    """
    acc = con.table("row_accounting").to_pandas()
    acc["accounted"] = acc["input"] == acc["kept"] + acc["duplicates"] + acc["quarantined"]
    return acc


def quarantine_summary(con: BaseBackend) -> pd.DataFrame:
    """Return quarantined row counts by table, column and reason (no values).

    Parameters
    ----------
    con : BaseBackend
        The store after cleaning.

    Returns
    -------
    pandas.DataFrame
        table, column, reason, rows; most frequent first.
    """
    q = con.table("quarantine")
    return (
        q.group_by(["table", "column", "reason"])
        .aggregate(rows=q.count())
        .order_by([ibis.desc("rows"), "table", "reason"])
        .to_pandas()
    )


def unmapped_categories(con: BaseBackend, known: list[str] | None = None) -> pd.DataFrame:
    """Return category labels of clean order lines outside the known set.

    Parameters
    ----------
    con : BaseBackend
        The store after cleaning.
    known : list of str, optional
        Canonical categories; defaults to the values of :data:`DEFAULT_CATEGORY_MAP`
        plus ``music``.

    Returns
    -------
    pandas.DataFrame
        category, rows.
    """
    known = known or sorted({*DEFAULT_CATEGORY_MAP.values(), "music"})
    it = con.table("order_items")
    other = it.filter(it.category.notnull() & ~it.category.isin(known))
    return (
        other.group_by("category")
        .aggregate(rows=other.count())
        .order_by(ibis.desc("rows"))
        .to_pandas()
    )
