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

import contextlib
import datetime as dt
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import phonenumbers
import pyarrow as pa
from ibis.backends import BaseBackend

from crm_analytics.entities import MatchSettings, resolve_customers
from crm_analytics.schemas import TABLES, require_columns, spec
from crm_analytics.store import create_temp_table, sql_ident, sql_literal

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

DEFAULT_DATE_FORMATS: tuple[str, ...] = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
    "%Y年%m月%d日",
    "%d.%m.%Y",
    "%Y%m%d",
)
"""Date formats tried after ISO 8601 (which always works, with or without a UTC offset)."""

DEFAULT_OUTLIERS: dict[str, dict[str, Any]] = {
    "orders.amount": {"method": "mad", "threshold": 5.0, "log": True, "action": "flag"},
}
"""Outlier rules: ``table.column`` -> method (mad or iqr), threshold (robust z or IQR
multiple), log (judge log1p of the value: right for money), action (flag, cap or quarantine)."""

DEFAULT_MISSING: dict[str, str] = {
    "customers.gender": "flag",
    "customers.birth_date": "flag",
    "orders.channel": "impute_mode",
    "orders.region": "flag",
}
"""Missing-value strategies: ``table.column`` -> keep, flag, impute_median, impute_mode or
drop. Unlisted nullable columns are kept as missing (and counted); required columns are
always quarantined when missing."""

MISSING_STRATEGIES: tuple[str, ...] = ("keep", "flag", "impute_median", "impute_mode", "drop")
OUTLIER_ACTIONS: tuple[str, ...] = ("flag", "cap", "quarantine")

CLEAR_INVALID: frozenset[tuple[str, str]] = frozenset(
    {
        ("customers", "email"),
        ("customers", "phone"),
        ("customers", "gender"),
        ("customers", "birth_date"),
        ("customers", "consent_marketing"),
    }
)
"""Contact and profile values that are cleared (and counted) when invalid, instead of
quarantining the whole customer record and, with it, the customer's orders."""

EMAIL_PATTERN = r"^[a-z0-9._%+\-]+@[a-z0-9\-]+(\.[a-z0-9\-]+)*\.[a-z]{2,}$"
CN_MOBILE = r"^(\+?86|0086)?1[3-9][0-9]{9}$"
OFFSET_SUFFIX = r"([+-][0-9]{2}(:?[0-9]{2})?|Z)$"


@dataclass(frozen=True)
class CleanSettings:
    """Settings of the clean stage (every field is a notebook parameter).

    Attributes
    ----------
    as_of : datetime.date
        Rows dated after this day are quarantined as future-dated.
    category_map : dict
        Lower-cased category label -> canonical category.
    phone_region : str
        Region assumed for phone numbers without a country code (ISO 3166, e.g. "CN").
    base_currency : str
        Currency that amounts are converted to.
    currency_rates : dict
        Currency -> units of base currency per unit; an order in a currency without a
        rate is quarantined.
    timezone : str
        Local time zone: timestamps with a UTC offset are converted to it.
    date_formats : tuple of str
        strptime formats tried after ISO 8601.
    negative_amounts : {"refund", "quarantine"}
        A negative order amount is a refund (kept, status refunded, amount made
        positive) or a data error (quarantined).
    outliers : dict
        Outlier rules (see :data:`DEFAULT_OUTLIERS`).
    missing : dict
        Missing-value strategies (see :data:`DEFAULT_MISSING`).
    amount_line_ratio : float
        An order whose amount is more than this many times the total of its lines, or
        less than its inverse, is flagged as an amount outlier: a unit error (an amount
        typed in cents, three zeros too many) that the outlier rule misses when the
        wrong amount is still plausible for some order. 0 turns the check off.
    """

    as_of: dt.date
    category_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CATEGORY_MAP))
    phone_region: str = "CN"
    base_currency: str = "CNY"
    currency_rates: dict[str, float] = field(default_factory=lambda: {"CNY": 1.0})
    timezone: str = "Asia/Shanghai"
    date_formats: tuple[str, ...] = DEFAULT_DATE_FORMATS
    negative_amounts: str = "refund"
    outliers: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_OUTLIERS))
    missing: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MISSING))
    amount_line_ratio: float = 20.0

    def __post_init__(self) -> None:
        if self.amount_line_ratio != 0 and not self.amount_line_ratio > 1:
            raise ValueError(
                f"amount_line_ratio must be 0 (off) or above 1, got {self.amount_line_ratio}"
            )
        if self.negative_amounts not in ("refund", "quarantine"):
            raise ValueError(
                f"negative_amounts must be 'refund' or 'quarantine', got {self.negative_amounts!r}"
            )
        if self.base_currency not in self.currency_rates:
            raise ValueError(
                f"currency_rates has no rate for the base currency {self.base_currency!r}"
            )
        for key, strategy in self.missing.items():
            _split_key(key, "missing")
            if strategy not in MISSING_STRATEGIES:
                raise ValueError(
                    f"missing.{key}: unknown strategy {strategy!r}; "
                    f"expected one of {', '.join(MISSING_STRATEGIES)}"
                )
        for key, rule in self.outliers.items():
            _split_key(key, "outliers")
            if rule.get("method", "mad") not in ("mad", "iqr"):
                raise ValueError(f"outliers.{key}: method must be 'mad' or 'iqr'")
            if rule.get("action", "flag") not in OUTLIER_ACTIONS:
                raise ValueError(
                    f"outliers.{key}: action must be one of {', '.join(OUTLIER_ACTIONS)}"
                )

    @classmethod
    def build(cls, as_of: dt.date | str | None = None, **kwargs: Any) -> CleanSettings:
        """Build settings from notebook parameters; empty values take the defaults.

        Parameters
        ----------
        as_of : date or str, optional
            As-of date; today (UTC) when empty.
        **kwargs
            Other fields; ``category_map`` entries are added to the built-in map.

        Returns
        -------
        CleanSettings
            Validated settings.
        """
        given = {k: v for k, v in kwargs.items() if v not in (None, "", {}, [])}
        if "category_map" in given:
            given["category_map"] = {**DEFAULT_CATEGORY_MAP, **given["category_map"]}
        if "date_formats" in given:
            given["date_formats"] = tuple(given["date_formats"])
        if "currency_rates" in given:
            given["currency_rates"] = {
                k.upper(): float(v) for k, v in given["currency_rates"].items()
            }
        if "base_currency" in given:
            given["base_currency"] = given["base_currency"].upper()
        return cls(as_of=_as_date(as_of), **given)


def _split_key(key: str, what: str) -> tuple[str, str]:
    """Split ``table.column`` and check both exist in the data model."""
    if "." not in key:
        raise ValueError(f"{what}: key {key!r} must be 'table.column'")
    table, column = key.split(".", 1)
    if column not in spec(table).columns:
        raise ValueError(f"{what}: table {table!r} has no column {column!r}")
    return table, column


# --- functions evaluated inside DuckDB -------------------------------------------------


def _e164_one(value: str, region: str) -> str | None:
    """Return ``value`` as an E.164 phone number, or None if it is not a valid number."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _e164_arrow(values: pa.Array, regions: pa.Array) -> pa.Array:
    """Arrow batch version of :func:`_e164_one` for DuckDB."""
    return pa.array(
        [
            None if v is None else _e164_one(v, r or "ZZ")
            for v, r in zip(values.to_pylist(), regions.to_pylist(), strict=True)
        ],
        type=pa.string(),
    )


def _nfkc_arrow(values: pa.Array) -> pa.Array:
    """Unicode NFKC normalisation (full-width to half-width and the like) for DuckDB."""
    return pa.array(
        [None if v is None else unicodedata.normalize("NFKC", v) for v in values.to_pylist()],
        type=pa.string(),
    )


def register_functions(con: BaseBackend) -> None:
    """Register the Python functions the cleaning rules call inside DuckDB.

    ``crm_e164(text, region)`` formats phone numbers with ``phonenumbers``;
    ``crm_nfkc(text)`` applies Unicode NFKC normalisation. Idempotent.

    Parameters
    ----------
    con : BaseBackend
        A DuckDB store.
    """
    duck = con.con
    for name, fn, args in (
        ("crm_e164", _e164_arrow, ["VARCHAR", "VARCHAR"]),
        ("crm_nfkc", _nfkc_arrow, ["VARCHAR"]),
    ):
        with contextlib.suppress(Exception):
            duck.remove_function(name)
        duck.create_function(
            name, fn, args, "VARCHAR", type="arrow", null_handling="special", side_effects=False
        )


@ibis.udf.scalar.builtin(name="crm_e164")
def _e164(value: str, region: str) -> str:  # type: ignore[empty-body]
    """Declare DuckDB's registered ``crm_e164`` to ibis."""


@ibis.udf.scalar.builtin(name="crm_nfkc")
def _nfkc(value: str) -> str:  # type: ignore[empty-body]
    """Declare DuckDB's registered ``crm_nfkc`` to ibis."""


@ibis.udf.scalar.builtin(name="try_strptime")
def _try_strptime(value: str, fmt: str) -> dt.datetime:  # type: ignore[empty-body]
    """Declare DuckDB's ``try_strptime`` to ibis."""


@ibis.udf.scalar.builtin(name="timezone")
def _to_local(zone: str, value: dt.datetime) -> dt.datetime:  # type: ignore[empty-body]
    """Declare DuckDB's ``timezone(zone, timestamptz)`` (local wall time) to ibis."""


# --- standardisation --------------------------------------------------------------------


def _text(col: ir.StringValue) -> ir.StringValue:
    """Trim text (including full-width spaces); empty becomes missing.

    Only values with a space at an end, a tab, a line break or a full-width space are
    rewritten; these plain string tests are cheaper than a regular expression or
    DuckDB's trim with a character list, which most values (already clean) would
    otherwise go through.
    """
    untidy = (
        col.startswith(" ")
        | col.endswith(" ")
        | col.contains("\t")
        | col.contains("\n")
        | col.contains("\u3000")
    )
    return ibis.cases((untidy, col.replace("\u3000", " ").strip()), else_=col).nullif("")


def standardise_phone(col: ir.StringValue, region: str) -> ir.StringValue:
    """Return phone numbers in E.164, or missing when not a valid number.

    Chinese mobile numbers (the bulk of a Chinese CRM) are recognised by pattern in
    SQL; anything else goes through ``phonenumbers`` (registered by
    :func:`register_functions`).

    Parameters
    ----------
    col : ibis string expression
        Phone numbers as typed by people.
    region : str
        Region of numbers written without a country code.

    Returns
    -------
    ibis string expression
        E.164 numbers.
    """
    digits = col.re_replace(r"[^0-9+]", "")
    cn_fast = digits.re_search(CN_MOBILE) & (
        (region == "CN") | digits.re_search(r"^(\+86|0086|86)")
    )
    return ibis.cases(
        (col.isnull(), ibis.null("string")),
        (cn_fast, ibis.literal("+86") + digits.right(11)),
        else_=_e164(col, ibis.literal(region)),
    )


def standardise_name(col: ir.StringValue) -> ir.StringValue:
    """Normalise names: NFKC (full-width to half-width), collapsed spaces, no spaces inside Chinese names.

    Parameters
    ----------
    col : ibis string expression
        Names.

    Returns
    -------
    ibis string expression
        Normalised names.
    """
    v = _nfkc(col).re_replace(r"\s+", " ").strip()
    v = v.re_replace(r"(\p{Han})\s+(\p{Han})", r"\1\2").re_replace(
        r"(\p{Han})\s+(\p{Han})", r"\1\2"
    )
    return v.nullif("")


def standardise_email(col: ir.StringValue) -> ir.StringValue:
    """Lower-case and trim e-mail addresses; invalid addresses become missing.

    Parameters
    ----------
    col : ibis string expression
        E-mail addresses.

    Returns
    -------
    ibis string expression
        Valid, normalised addresses.
    """
    v = _nfkc(col).strip().lower()
    return ibis.cases((v.re_search(EMAIL_PATTERN), v), else_=ibis.null("string"))


def standardise(raw: ir.Table, table: str, settings: CleanSettings) -> ir.Table:
    """Return ``raw`` with text standardised per column (still text, except as noted).

    Parameters
    ----------
    raw : ibis Table
        A raw table (all canonical columns as text).
    table : str
        Canonical table name.
    settings : CleanSettings
        Category map and phone region.

    Returns
    -------
    ibis Table
        Same columns, standardised text.
    """
    cmap = {k.lower(): v for k, v in settings.category_map.items()}
    out = {}
    for col in spec(table).columns:
        v = _text(raw[col])
        if col == "email":
            v = standardise_email(v)
        elif col == "phone":
            v = standardise_phone(v, settings.phone_region)
        elif col == "name":
            v = standardise_name(v)
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


def parse_timestamp(col: ir.StringValue, settings: CleanSettings) -> ir.TimestampValue:
    """Parse text to a local timestamp: ISO 8601 (with or without offset) or a listed format.

    Parameters
    ----------
    col : ibis string expression
        Text timestamps.
    settings : CleanSettings
        Time zone and extra formats.

    Returns
    -------
    ibis timestamp expression
        Local wall time (offsets converted to ``settings.timezone``); missing if unparseable.
    """
    with_offset = _to_local(
        ibis.literal(settings.timezone), col.try_cast(ibis.dtype("timestamp('UTC')"))
    )
    plain = ibis.coalesce(
        col.try_cast("timestamp"),
        *[_try_strptime(col, ibis.literal(f)) for f in settings.date_formats],
    )
    return ibis.cases(
        (col.re_search(OFFSET_SUFFIX), with_offset.cast("timestamp")), else_=plain.cast("timestamp")
    )


def parse_number(col: ir.StringValue) -> ir.FloatingValue:
    """Parse text to float, accepting currency signs and thousands separators (1,234.50).

    Parameters
    ----------
    col : ibis string expression
        Text numbers.

    Returns
    -------
    ibis float expression
        Numbers; missing if unparseable.
    """
    v = col.re_replace(r"^[¥￥$€£]\s*", "")
    v = ibis.cases(
        (v.re_search(r"^-?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?$"), v.replace(",", "")), else_=v
    )
    return v.try_cast("float64")


def _typed(col: ir.StringValue, dtype: str, settings: CleanSettings) -> ir.Value:
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
        f = parse_number(col)
        # whole numbers only, and only those a float holds exactly (|x| < 2**53): larger is garbage
        whole = (f.abs() < 2.0**53) & (f == f.round(0))
        return ibis.cases((whole, f.try_cast("int64")), else_=ibis.null("int64"))
    if dtype == "float64":
        return parse_number(col)
    if dtype == "timestamp":
        return parse_timestamp(col, settings)
    if dtype == "date":
        return parse_timestamp(col, settings).date()
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


def _valid(name: str, typed: ir.Value, checks: list[Any]) -> ir.BooleanValue:
    """Return whether a typed value passes its column's checks (missing passes)."""
    ok = ibis.literal(True)
    for cond, _ in _check_failures(name, typed, checks):
        ok = ok & ~cond.fill_null(False)
    return ok


@dataclass
class RowRules:
    """Typed columns, the first failing rule of each row, and value-level fixes."""

    typed: dict[str, ir.Value]
    column: ir.Value
    reason: ir.Value
    fixes: dict[str, ir.BooleanValue]


def row_rules(std: ir.Table, table: str, settings: CleanSettings) -> RowRules:
    """Build typed columns, the first failing rule of each row, and value fixes.

    Parameters
    ----------
    std : ibis Table
        Standardised raw table.
    table : str
        Canonical table name.
    settings : CleanSettings
        Stage settings (as-of date, currencies, negative amounts ...).

    Returns
    -------
    RowRules
        ``typed`` (column -> expression), ``column`` and ``reason`` of the first
        failure (null if none), ``fixes`` (name -> condition of a value-level fix
        that keeps the row, e.g. an invalid e-mail cleared).
    """
    t = spec(table)
    schema = t.model.to_schema()
    dtypes = t.dtypes()
    typed: dict[str, ir.Value] = {}
    fixes: dict[str, ir.BooleanValue] = {}
    branches: list[tuple[ir.BooleanValue, str, str]] = []
    raw_present = {
        c: (std[f"_raw_{c}"] if f"_raw_{c}" in std.columns else std[c]).notnull() for c in t.columns
    }
    for name, col in schema.columns.items():
        dtype = dtypes[name]
        v = _typed(std[name], dtype, settings)
        if (table, name) in CLEAR_INVALID:
            if name == "birth_date":
                v = ibis.cases(
                    ((v < dt.date(1900, 1, 1)) | (v > settings.as_of), ibis.null("date")),
                    else_=v,
                )
            v = ibis.cases((_valid(name, v, col.checks), v), else_=ibis.null(dtype))
            fixes[f"{name}: invalid, cleared"] = raw_present[name] & v.isnull()
            typed[name] = v
            continue
        typed[name] = v
        if dtype != "string":
            branches.append(
                (std[name].notnull() & v.isnull(), name, f"{name}: cannot parse as {dtype}")
            )
        if not col.nullable:
            branches.append((std[name].isnull(), name, f"{name}: missing required value"))
    if table == "orders":
        typed, extra = _money_rules(std, typed, settings, fixes)
        branches += extra
    for name, col in schema.columns.items():
        if (table, name) in CLEAR_INVALID:
            continue
        for cond, reason in _check_failures(name, typed[name], col.checks):
            branches.append((cond, name, reason))
    for key, strategy in settings.missing.items():
        mt, mc = key.split(".", 1)
        if mt == table and strategy == "drop":
            branches.append((typed[mc].isnull(), mc, f"{mc}: missing (strategy drop)"))
    if t.time_column:
        limit = ibis.literal(settings.as_of + dt.timedelta(days=1)).cast("timestamp")
        tc = typed[t.time_column].cast("timestamp")
        branches.append(
            (tc >= limit, t.time_column, f"{t.time_column}: in the future (after {settings.as_of})")
        )
    column = ibis.cases(*[(c, ibis.literal(n)) for c, n, _ in branches], else_=ibis.null("string"))
    reason = ibis.cases(*[(c, ibis.literal(r)) for c, _, r in branches], else_=ibis.null("string"))
    return RowRules(typed, column, reason, fixes)


def _money_rules(
    std: ir.Table, typed: dict[str, ir.Value], settings: CleanSettings, fixes: dict[str, Any]
) -> tuple[dict[str, ir.Value], list[tuple[ir.BooleanValue, str, str]]]:
    """Negative amounts as refunds, and conversion to the base currency."""
    out = dict(typed)
    branches: list[tuple[ir.BooleanValue, str, str]] = []
    amount = typed["amount"]
    if settings.negative_amounts == "refund":
        negative = amount < 0
        fixes["amount: negative, booked as a refund"] = negative.fill_null(False)
        out["status"] = ibis.cases((negative, ibis.literal("refunded")), else_=typed["status"])
        amount = amount.abs()
    rates = {k.upper(): float(v) for k, v in settings.currency_rates.items()}
    currency = typed["currency"]
    rate = currency.substitute(rates, else_=ibis.null("float64"))
    branches.append(
        (
            currency.notnull() & rate.isnull(),
            "currency",
            "currency: no exchange rate (add it to currency_rates)",
        )
    )
    converted = currency != settings.base_currency
    fixes[f"amount: converted to {settings.base_currency}"] = converted.fill_null(False)
    out["amount_source"] = amount
    out["currency_source"] = currency
    out["amount"] = (amount * rate).round(4)
    out["currency"] = ibis.literal(settings.base_currency)
    return out, branches


def _scalar(expr: ir.Scalar) -> float | None:
    """Evaluate a numeric reduction in the store; None when it is NULL or NaN."""
    value = expr.execute()
    return None if value is None or pd.isna(value) else float(value)


def _round_half_away(value: float) -> int:
    """Round half away from zero, as SQL's ``round`` does (Python's rounds half to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def outlier_bounds(
    table: ir.Table, column: str, method: str = "mad", threshold: float = 5.0, log: bool = False
) -> tuple[float | None, float | None]:
    """Compute the bounds outside which a value is an outlier, in the store.

    Each statistic is one aggregate query over ``table`` (the median, then the
    median absolute deviation; or both quartiles), and the rows are judged against
    the two numbers afterwards (:func:`outside`). Statistics written into the
    judging query as scalar subqueries were evaluated once per use there: six
    medians of 10M amounts.

    Parameters
    ----------
    table : ibis Table
        The rows the statistics are computed over.
    column : str
        Numeric column.
    method : {"mad", "iqr"}, default "mad"
        Robust z-score ``|x - median| / (1.4826 MAD)`` above ``threshold``, or outside
        ``[Q1 - threshold IQR, Q3 + threshold IQR]``.
    threshold : float, default 5.0
        Robust z (mad) or IQR multiple (iqr).
    log : bool, default False
        Judge ``log1p(x)`` (for money and counts, which are right-skewed).

    Returns
    -------
    tuple
        (lower, upper) on the original scale; (None, None) when the column has no value.

    Raises
    ------
    ValueError
        If the column is missing or the method unknown.
    """
    if column not in table.columns:
        raise ValueError(f"table has no column {column!r}")
    x = table[column].cast("float64")
    v = (x.clip(lower=0) + 1).ln() if log else x
    if method == "mad":
        med = _scalar(v.median())
        if med is None:
            return None, None
        mad = _scalar((v - med).abs().median())
        half = max((mad or 0.0) * 1.4826, 1e-9) * threshold
        lo, hi = med - half, med + half
    elif method == "iqr":
        q1, q3 = _scalar(v.quantile(0.25)), _scalar(v.quantile(0.75))
        if q1 is None or q3 is None:
            return None, None
        lo, hi = q1 - (q3 - q1) * threshold, q3 + (q3 - q1) * threshold
    else:
        raise ValueError(f"method must be 'mad' or 'iqr', got {method!r}")
    if log:
        lo, hi = math.exp(lo) - 1, math.exp(hi) - 1
    return lo, hi


def outside(col: ir.NumericValue, lo: float | None, hi: float | None) -> ir.BooleanValue:
    """Return whether each value lies outside ``[lo, hi]`` (False for NULL or no bounds).

    Parameters
    ----------
    col : ibis numeric column
        Values judged.
    lo, hi : float or None
        Bounds from :func:`outlier_bounds`.

    Returns
    -------
    ibis boolean column
    """
    if lo is None or hi is None:
        return ibis.literal(False)
    x = col.cast("float64")
    return ((x < lo) | (x > hi)).fill_null(False)


def later_repeats(
    table: ir.Table, columns: Sequence[str], where: ir.BooleanValue | None = None
) -> ir.Table:
    """Return the lineage of every row but the first among rows equal in ``columns``.

    "First" is by ``_source`` then ``_source_row``; missing values are equal to each
    other. Only rows whose hash of ``columns`` occurs more than once are ranked, so the
    window runs over the few repeating rows instead of the whole table (ranking every
    row was the costliest step of the stage at scale). A hash collision only adds a
    row to the ranking, never a wrong result.

    Parameters
    ----------
    table : ibis Table
        Rows with ``_source`` and ``_source_row`` (unique together).
    columns : sequence of str
        Columns whose equal values make rows repeats of each other.
    where : ibis boolean expression, optional
        Only rows meeting it are compared (and returned).

    Returns
    -------
    ibis Table
        ``_source`` and ``_source_row`` of the later repeats.

    Raises
    ------
    ValueError
        If a column is missing.
    """
    missing = [c for c in [*columns, "_source", "_source_row"] if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column {', '.join(map(repr, missing))}")
    rows = table if where is None else table.filter(where)
    hashed = ibis.struct({c: table[c] for c in columns}).hash()
    # the two reads of ``rows`` differ in name so they stay two scans, not one shared
    # (and fully materialised) subquery
    counts = rows.select(_h=hashed).group_by("_h").aggregate(_n=ibis._.count())
    repeated = counts.filter(counts._n > 1).select(_hash="_h")
    shared = rows.select("_source", "_source_row", *columns, _hash=hashed).semi_join(
        repeated, "_hash"
    )
    ranked = shared.mutate(
        _rank=ibis.row_number().over(
            group_by=[shared[c] for c in columns], order_by=[shared._source, shared._source_row]
        )
    )
    return ranked.filter(ranked._rank > 0).select("_source", "_source_row")


def flag_later_repeats(table: ir.Table, columns: Sequence[str], name: str) -> ir.Table:
    """Add a boolean column ``name``: whether the row repeats an earlier one (see :func:`later_repeats`).

    Parameters
    ----------
    table : ibis Table
        Rows with ``_source`` and ``_source_row``.
    columns : sequence of str
        Columns whose equal values make rows repeats of each other.
    name : str
        Name of the new column.

    Returns
    -------
    ibis Table
        ``table`` with ``name`` (True for every repeat but the first, else False).
    """
    repeats = later_repeats(table, columns).mutate(**{name: ibis.literal(True)})
    joined = table.left_join(repeats, ["_source", "_source_row"]).drop(
        "_source_right", "_source_row_right"
    )
    return joined.mutate(**{name: joined[name].fill_null(False)})


def clean_table(con: BaseBackend, table: str, settings: CleanSettings) -> dict[str, int]:
    """Clean ``raw_<table>`` into ``<table>``, appending rejects to ``quarantine``.

    Parent tables (see ``TableSpec.foreign_keys``) must be cleaned first. Also
    appends value-level fixes to ``value_fixes`` and missing-value counts to
    ``missing_values``.

    Every row is typed and judged by the row-level rules once, its judgement kept
    in helper columns. The rules that need the judged rows then update the few rows
    they reject, in this order: outliers to quarantine (statistics of the valid
    rows), key repeats, references to missing or quarantined parents (each among
    the rows still valid; without a key or quarantined outliers the references are
    judged with the row-level rules). A table with none of these rules and no
    statistic of its kept rows is judged in place: its rows are written to the clean
    table once, and the rejected ones deleted after. The others are staged in a
    temporary table, and their kept rows copied to the clean table with outlier
    flags (or caps) and imputed values, statistics of the kept rows computed once.

    Parameters
    ----------
    con : BaseBackend
        The store, holding ``raw_<table>`` and the stage's bookkeeping tables
        (see :func:`reset_bookkeeping`).
    table : str
        Canonical table name.
    settings : CleanSettings
        Stage settings.

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
    cols = t.columns
    # exact duplicates: identical source values in every canonical column; all but the
    # first (by source and row) are counted and dropped
    raw = flag_later_repeats(raw, cols, "_duplicate")
    # keep the source text of values that may be cleared, to count the fixes
    raw = raw.mutate(**{f"_raw_{c}": _text(raw[c]) for c in cols if (table, c) in CLEAR_INVALID})
    std = standardise(raw, table, settings)
    rules = row_rules(std, table, settings)
    extra = [c for c in rules.typed if c not in cols]
    outlier_rules = [
        (key.split(".", 1)[1], rule)
        for key, rule in settings.outliers.items()
        if key.split(".", 1)[0] == table
    ]
    quarantined_outliers = [
        (c, r) for c, r in outlier_rules if r.get("action", "flag") == "quarantine"
    ]
    flagged_outliers = [(c, r) for c, r in outlier_rules if r.get("action", "flag") != "quarantine"]
    fixes = [f"_fix_{i}" for i in range(len(rules.fixes))]
    helpers = ["_duplicate", "_column", "_reason", *fixes]
    # only what the checks below and the outputs need: the text columns are not kept
    judged = std.select(
        **{c: rules.typed[c] for c in [*cols, *extra]},
        _source=std._source,
        _source_row=std._source_row,
        _duplicate=std._duplicate,
        **{f: cond for f, cond in zip(fixes, rules.fixes.values(), strict=True)},
        _column=rules.column,
        _reason=rules.reason,
    )
    late_references = bool(quarantined_outliers or t.key)
    if not late_references:
        # references are the only rule left: judged as the rows are written
        for col, (ptable, pcol) in t.foreign_keys.items():
            parent = con.table(ptable).select(_pk=pcol).distinct()
            judged = judged.left_join(parent, judged[col] == parent._pk)
            bad = judged._reason.isnull() & ~judged._duplicate & judged._pk.isnull()
            judged = judged.mutate(
                _column=ibis.cases((bad, ibis.literal(col)), else_=judged._column),
                _reason=ibis.cases(
                    (bad, ibis.literal(f"{col}: no valid {ptable} row with this {pcol}")),
                    else_=judged._reason,
                ),
            ).drop("_pk")
    strategies = missing_strategies(table, settings)
    flagged_missing = [
        c for c, s in strategies.items() if s in ("flag", "impute_median", "impute_mode")
    ]
    imputed = {c: s for c, s in strategies.items() if s in ("impute_median", "impute_mode")}
    # with no later rule and no statistic of the kept rows, the rows are written to the
    # clean table once and the rejected ones deleted after; otherwise they are staged
    # and the kept ones copied. Scattered deleted rows stay in a DuckDB table's row
    # groups, and a join building its hash table from such a table needed more than
    # 1 GB at a million customers (orders, joined to every order line)
    in_place = not late_references and not flagged_outliers and not imputed
    if in_place:
        written = judged.select(
            *cols,
            *extra,
            "_source",
            "_source_row",
            **{f"{c}_missing": judged[c].isnull() for c in flagged_missing},
            **{h: judged[h] for h in helpers},
        )
        con.create_table(table, written, overwrite=True)
        stage_name, stage_db = table, None
    else:
        stage_name, stage_db = f"_staged_{table}", ("temp", "main")
        create_temp_table(con, stage_name, judged)
    target = ".".join(sql_ident(part) for part in (*(stage_db or ()), stage_name))

    def valid() -> ir.Table:
        """Return the judged rows still kept."""
        rows = con.table(stage_name, database=stage_db)
        return rows.filter(rows._reason.isnull() & ~rows._duplicate)

    def reject(rows: ir.Table, column: str, reason: str) -> None:
        """Give the rows found (by lineage) a column and a reason."""
        create_temp_table(con, "_rejected", rows.select("_source", "_source_row"))
        con.raw_sql(
            f"UPDATE {target} AS s SET _column = {sql_literal(column)}, _reason = "
            f'{sql_literal(reason)} FROM "temp"."main"."_rejected" AS f '
            "WHERE s._source = f._source AND s._source_row = f._source_row"
        )
        con.raw_sql('DROP TABLE "temp"."main"."_rejected"')

    for oc, rule in quarantined_outliers:  # errors, judged before keys and references
        rows = valid()
        lo, hi = outlier_bounds(rows, oc, **_outlier_args(rule))
        method = rule.get("method", "mad")
        reject(rows.filter(outside(rows[oc], lo, hi)), oc, f"{oc}: outlier ({method} rule)")
    if t.key:
        reject(
            later_repeats(valid(), list(t.key)),
            ",".join(t.key),
            f"{','.join(t.key)}: duplicate key, first kept",
        )
    if late_references:
        for col, (ptable, pcol) in t.foreign_keys.items():
            rows = valid()
            parent = con.table(ptable).select(_pk=pcol).distinct()
            reject(
                rows.anti_join(parent, rows[col] == parent._pk),
                col,
                f"{col}: no valid {ptable} row with this {pcol}",
            )
    if not in_place:
        # outlier flags or caps and imputed values: statistics of the kept rows, computed
        # once each and written into the copy as numbers
        kept = valid()
        values: dict[str, ir.Value] = {c: kept[c] for c in [*cols, *extra]}
        flags: dict[str, ir.Value] = {}
        for oc, rule in flagged_outliers:
            lo, hi = outlier_bounds(kept, oc, **_outlier_args(rule))
            flags[f"{oc}_outlier"] = outside(kept[oc], lo, hi)
            if rule.get("action") == "cap" and lo is not None and hi is not None:
                values[oc] = kept[oc].clip(lower=lo, upper=hi)
        for col, strategy in imputed.items():
            fill = _fill_value(kept, col, strategy)
            if fill is not None:
                values[col] = values[col].fill_null(ibis.literal(fill).cast(kept[col].type()))
        con.create_table(
            table,
            kept.select(
                **values,
                _source=kept._source,
                _source_row=kept._source_row,
                **flags,
                **{f"{c}_missing": kept[c].isnull() for c in flagged_missing},
            ),
            overwrite=True,
        )
    judged_rows = con.table(stage_name, database=stage_db)
    keep = judged_rows._reason.isnull() & ~judged_rows._duplicate
    bad = judged_rows.filter(judged_rows._reason.notnull() & ~judged_rows._duplicate)
    con.insert(
        "quarantine",
        bad.select(
            table=ibis.literal(table),
            _source=bad._source,
            _source_row=bad._source_row,
            column=bad._column,
            reason=bad._reason,
        ),
    )
    aggs = {
        "input": judged_rows.count(),
        "kept": keep.sum(),
        "duplicates": judged_rows._duplicate.sum(),
        "quarantined": (judged_rows._reason.notnull() & ~judged_rows._duplicate).sum(),
    }
    aggs.update({f: (keep & judged_rows[f]).sum() for f in fixes})
    counts = judged_rows.aggregate(**aggs).to_pandas().iloc[0]
    if in_place:
        con.raw_sql(f"DELETE FROM {target} WHERE _reason IS NOT NULL OR _duplicate")
        for h in helpers:
            con.raw_sql(f"ALTER TABLE {target} DROP COLUMN {sql_ident(h)}")
    else:
        con.raw_sql(f"DROP TABLE {target}")
    if strategies:
        con.insert("missing_values", _missing_counts(con, table, strategies))
    # sums over an empty table are NULL
    n = {k: 0 if pd.isna(v) else int(v) for k, v in counts.items()}
    fixed = pd.DataFrame({"table": table, "fix": list(rules.fixes), "rows": [n[f] for f in fixes]})
    if len(fixed):
        con.insert("value_fixes", fixed)
    out = {k: n[k] for k in ("input", "kept", "duplicates", "quarantined")}
    if out["input"] != out["kept"] + out["duplicates"] + out["quarantined"]:
        raise RuntimeError(f"row accounting does not add up for {table}: {out}")
    return out


def _outlier_args(rule: dict[str, Any]) -> dict[str, Any]:
    """Return the :func:`outlier_bounds` arguments of an ``outliers`` rule."""
    return {
        "method": rule.get("method", "mad"),
        "threshold": float(rule.get("threshold", 5.0)),
        "log": bool(rule.get("log", False)),
    }


def _fill_value(kept: ir.Table, column: str, strategy: str) -> Any:
    """Return the value that fills a column's missing values (None when it has none).

    ``impute_median`` rounds half away from zero for an integer column, as SQL's
    ``round`` does; ``impute_mode`` takes DuckDB's ``mode``.
    """
    if strategy == "impute_median":
        median = _scalar(kept[column].median())
        if median is None:
            return None
        return _round_half_away(median) if kept[column].type().is_integer() else median
    value = kept[column].mode().execute()
    return None if value is None or pd.isna(value) else value


def missing_strategies(table: str, settings: CleanSettings) -> dict[str, str]:
    """Return the missing-value strategy of every nullable column of a table.

    Parameters
    ----------
    table : str
        Canonical table name.
    settings : CleanSettings
        Missing-value strategies (``missing``); unnamed nullable columns ``keep``.

    Returns
    -------
    dict
        Column -> strategy, in the table's column order.
    """
    t = spec(table)
    strategies = {c: "keep" for c in t.columns if c not in t.required}
    for key, strategy in settings.missing.items():
        mt, mc = key.split(".", 1)
        if mt == table:
            strategies[mc] = strategy
    return strategies


def _missing_counts(con: BaseBackend, table: str, strategies: dict[str, str]) -> pd.DataFrame:
    """Count missing values before and after the strategies, per column."""
    t = con.table(table)
    aggs: dict[str, Any] = {}
    for i, col in enumerate(strategies):
        before = t[f"{col}_missing"] if f"{col}_missing" in t.columns else t[col].isnull()
        aggs[f"b{i}"] = before.cast("int64").sum()
        aggs[f"a{i}"] = t[col].isnull().cast("int64").sum()
    row = t.aggregate(**aggs).to_pandas().iloc[0]
    return pd.DataFrame(
        {
            "table": table,
            "column": list(strategies),
            "strategy": list(strategies.values()),
            "missing_before": [
                0 if pd.isna(row[f"b{i}"]) else int(row[f"b{i}"]) for i in range(len(strategies))
            ],
            "missing_after": [
                0 if pd.isna(row[f"a{i}"]) else int(row[f"a{i}"]) for i in range(len(strategies))
            ],
        }
    )


def reset_bookkeeping(con: BaseBackend) -> None:
    """Create (replace) the empty ``quarantine``, ``value_fixes`` and ``missing_values`` tables.

    Parameters
    ----------
    con : BaseBackend
        The store.
    """
    schemas = {
        "quarantine": {
            "table": "string",
            "_source": "string",
            "_source_row": "int64",
            "column": "string",
            "reason": "string",
        },
        "value_fixes": {"table": "string", "fix": "string", "rows": "int64"},
        "missing_values": {
            "table": "string",
            "column": "string",
            "strategy": "string",
            "missing_before": "int64",
            "missing_after": "int64",
        },
    }
    for name, schema in schemas.items():
        con.create_table(name, schema=ibis.schema(schema), overwrite=True)


def clean_all(
    con: BaseBackend, settings: CleanSettings, match: MatchSettings | None = None
) -> pd.DataFrame:
    """Clean every canonical table, resolve duplicate customers, validate with pandera.

    Parameters
    ----------
    con : BaseBackend
        The DuckDB store after stage 01.
    settings : CleanSettings
        Stage settings.
    match : MatchSettings, optional
        Entity-resolution settings; customers are not de-duplicated when None.

    Returns
    -------
    pandas.DataFrame
        The row accounting (also written to the store as ``row_accounting``):
        table, input, kept, duplicates (exact rows), merged (customer records
        merged into another), quarantined.

    Raises
    ------
    RuntimeError
        If a table's rows do not add up.
    """
    register_functions(con)
    reset_bookkeeping(con)
    rejects = pd.Series(dtype="int64")
    if "raw_rejects" in con.list_tables():  # lines the CSV reader could not parse
        con.insert("quarantine", con.table("raw_rejects"))
        rejects = con.table("raw_rejects").to_pandas().groupby("table").size()
    rows = []
    for table in TABLES:
        counts = clean_table(con, table, settings)
        unparsed = int(rejects.get(table, 0))
        counts["input"] += unparsed
        counts["quarantined"] += unparsed
        rows.append({"table": table, **counts, "merged": 0})
    flag_amount_unit_errors(con, settings.amount_line_ratio)
    acc = pd.DataFrame(rows)[["table", "input", "kept", "duplicates", "merged", "quarantined"]]
    if match is not None:
        result = resolve_customers(con, match)
        is_cust = acc.table == "customers"
        acc.loc[is_cust, "merged"] = result["merged"]
        acc.loc[is_cust, "kept"] -= result["merged"]
    validate_clean(con)
    total = acc[["kept", "duplicates", "merged", "quarantined"]].sum(axis=1)
    if not (acc.input == total).all():
        raise RuntimeError(f"row accounting does not add up:\n{acc}")
    con.create_table("row_accounting", acc, overwrite=True)
    return acc


def amount_unit_errors(orders: ir.Table, order_items: ir.Table, max_ratio: float) -> ir.Table:
    """Return the orders whose amount is out of scale with the total of their lines.

    An amount more than ``max_ratio`` times its lines' total (quantity x unit price
    summed), or less than its inverse, is a unit error rather than a discount or a
    delivery charge. The amount as written (``amount_source``, before conversion to
    the base currency, when the table has it) is compared, in absolute value, since
    lines are priced in the order's own currency. Orders without lines, or with a zero
    amount or total, are not judged.

    Parameters
    ----------
    orders : ibis Table
        Clean orders (order_id, amount, optionally amount_source).
    order_items : ibis Table
        Clean order lines (order_id, quantity, unit_price).
    max_ratio : float
        Largest ratio either way (above 1).

    Returns
    -------
    ibis Table
        order_id, stated (the amount compared), lines_total, ratio (stated / lines_total).

    Raises
    ------
    ValueError
        If a column is missing or ``max_ratio`` is not above 1.
    """
    if not max_ratio > 1:
        raise ValueError(f"max_ratio must be above 1, got {max_ratio}")
    require_columns(orders, ["order_id", "amount"], "orders")
    require_columns(order_items, ["order_id", "quantity", "unit_price"], "order_items")
    value = order_items.quantity.cast("float64") * order_items.unit_price.cast("float64")
    lines = order_items.select("order_id", _value=value)
    totals = lines.group_by("order_id").aggregate(lines_total=lines._value.sum())
    amount = orders.amount_source if "amount_source" in orders.columns else orders.amount
    stated = orders.select("order_id", stated=amount.cast("float64").abs())
    j = stated.join(totals, "order_id")
    out = j.filter((j.stated > 0) & (j.lines_total > 0))
    ratio = out.stated / out.lines_total
    return out.filter((ratio > max_ratio) | (ratio < 1 / max_ratio)).select(
        "order_id", "stated", "lines_total", ratio=ratio
    )


def flag_amount_unit_errors(con: BaseBackend, max_ratio: float) -> int:
    """Flag orders out of scale with their lines as amount outliers, in the store.

    The orders of :func:`amount_unit_errors` get ``amount_outlier`` set (the column is
    added when no outlier rule made it): they stay, and analyses leave them out like
    the other flagged amounts. The count goes to ``value_fixes``.

    Parameters
    ----------
    con : BaseBackend
        The store, with clean ``orders`` and ``order_items``.
    max_ratio : float
        See :func:`amount_unit_errors`; 0 does nothing.

    Returns
    -------
    int
        Orders newly flagged.
    """
    if not max_ratio or not {"orders", "order_items"} <= set(con.list_tables()):
        return 0
    create_temp_table(
        con,
        "_unit_errors",
        amount_unit_errors(con.table("orders"), con.table("order_items"), max_ratio).select(
            "order_id"
        ),
    )
    con.raw_sql("ALTER TABLE orders ADD COLUMN IF NOT EXISTS amount_outlier BOOLEAN DEFAULT false")
    result = con.raw_sql(
        'UPDATE orders SET amount_outlier = true FROM "temp"."main"."_unit_errors" AS u '
        "WHERE orders.order_id = u.order_id AND NOT coalesce(orders.amount_outlier, false)"
    )
    n = int(result.fetchone()[0])
    con.raw_sql('DROP TABLE "temp"."main"."_unit_errors"')
    fix = unit_error_fix(max_ratio)
    con.insert("value_fixes", pd.DataFrame({"table": ["orders"], "fix": [fix], "rows": [n]}))
    return n


def unit_error_fix(max_ratio: float) -> str:
    """Return the ``value_fixes`` label of :func:`flag_amount_unit_errors`."""
    ratio = f"{max_ratio:g}"
    return f"amount: over {ratio}x or under 1/{ratio} of its lines' total (unit error), flagged as outlier"


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
        table, input, kept, duplicates (exact), merged (entity resolution),
        quarantined, accounted (bool).
    """
    acc = con.table("row_accounting").to_pandas()
    acc["accounted"] = acc["input"] == acc[["kept", "duplicates", "merged", "quarantined"]].sum(
        axis=1
    )
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


def known_categories(settings: CleanSettings | None = None) -> list[str]:
    """Return the canonical product categories: the targets of the category map, plus ``music``.

    Parameters
    ----------
    settings : CleanSettings, optional
        Stage settings; the built-in map when omitted.

    Returns
    -------
    list of str
        Sorted category names.
    """
    cmap = settings.category_map if settings else DEFAULT_CATEGORY_MAP
    return sorted({*cmap.values(), *DEFAULT_CATEGORY_MAP.values(), "music"})


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
    known = known or known_categories()
    it = con.table("order_items")
    other = it.filter(it.category.notnull() & ~it.category.isin(known))
    return (
        other.group_by("category")
        .aggregate(rows=other.count())
        .order_by(ibis.desc("rows"))
        .to_pandas()
    )
