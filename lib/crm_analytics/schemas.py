"""The canonical data model, defined once.

Each canonical table is a pandera (ibis backend) ``DataFrameModel``: column
names, types, nullability and value checks. :data:`TABLES` adds what pandera
does not express: the primary key, foreign keys and the event-time column.
Everything else (cleaning rules, documentation in ``docs/data-model.md``, the
column lists that collect checks sources against) is derived from here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandera.ibis as pa

ORDER_STATUSES: list[str] = ["paid", "refunded", "cancelled"]
ORDER_CHANNELS: list[str] = ["online", "store", "app"]
GENDERS: list[str] = ["F", "M", "other"]
PRIORITIES: list[str] = ["low", "medium", "high"]


class Customers(pa.DataFrameModel):
    """Customer master data, one row per customer record in the CRM."""

    customer_id: str = pa.Field(unique=True, description="CRM customer key.")
    name: str = pa.Field(nullable=True, description="Full name (personal data).")
    email: str = pa.Field(nullable=True, description="E-mail address (personal data).")
    phone: str = pa.Field(nullable=True, description="Phone number (personal data).")
    gender: str = pa.Field(nullable=True, isin=GENDERS, description="F, M or other.")
    birth_date: dt.date = pa.Field(nullable=True, description="Date of birth.")
    city: str = pa.Field(nullable=True, description="City (personal data with the rest).")
    province: str = pa.Field(nullable=True, description="Province or state.")
    country: str = pa.Field(nullable=True, description="ISO 3166 alpha-2 country code.")
    signup_date: dt.date = pa.Field(description="Date the customer record was created.")
    acquisition_channel: str = pa.Field(
        nullable=True, description="Marketing channel of acquisition."
    )
    consent_marketing: bool = pa.Field(nullable=True, description="Consent to marketing contact.")


class Orders(pa.DataFrameModel):
    """Order headers, one row per order."""

    order_id: str = pa.Field(unique=True, description="Order key.")
    customer_id: str = pa.Field(description="Customer who placed the order.")
    order_ts: dt.datetime = pa.Field(description="Order time (local time of the shop).")
    amount: float = pa.Field(ge=0, description="Order value in `currency`, after discounts.")
    currency: str = pa.Field(description="ISO 4217 currency code.")
    status: str = pa.Field(isin=ORDER_STATUSES, description="paid, refunded or cancelled.")
    channel: str = pa.Field(nullable=True, isin=ORDER_CHANNELS, description="online, store or app.")
    region: str = pa.Field(nullable=True, description="Sales region.")


class OrderItems(pa.DataFrameModel):
    """Order lines: what was bought in each order."""

    order_id: str = pa.Field(description="Order the line belongs to.")
    sku: str = pa.Field(description="Product code.")
    category: str = pa.Field(nullable=True, description="Product category.")
    quantity: int = pa.Field(ge=1, description="Units bought.")
    unit_price: float = pa.Field(ge=0, description="Price per unit.")


class Events(pa.DataFrameModel):
    """Web and app behaviour events."""

    customer_id: str = pa.Field(description="Customer who acted.")
    ts: dt.datetime = pa.Field(description="Event time.")
    event_type: str = pa.Field(description="view, search, add_to_cart, login ...")
    page: str = pa.Field(nullable=True, description="Page or screen.")
    category: str = pa.Field(nullable=True, description="Product category viewed, if any.")


class Tickets(pa.DataFrameModel):
    """Customer-support tickets."""

    ticket_id: str = pa.Field(unique=True, description="Ticket key.")
    customer_id: str = pa.Field(description="Customer who opened the ticket.")
    opened_at: dt.datetime = pa.Field(description="When the ticket was opened.")
    closed_at: dt.datetime = pa.Field(
        nullable=True, description="When it was closed; empty if open."
    )
    topic: str = pa.Field(nullable=True, description="Ticket topic.")
    priority: str = pa.Field(nullable=True, isin=PRIORITIES, description="low, medium or high.")
    satisfaction: int = pa.Field(
        nullable=True,
        in_range={"min_value": 1, "max_value": 5},
        description="Satisfaction rating 1-5 after closing.",
    )


class Surveys(pa.DataFrameModel):
    """Satisfaction survey answers."""

    customer_id: str = pa.Field(description="Customer who answered.")
    answered_at: dt.datetime = pa.Field(description="When the survey was answered.")
    nps: int = pa.Field(
        nullable=True,
        in_range={"min_value": 0, "max_value": 10},
        description="Likelihood to recommend, 0-10.",
    )
    csat: int = pa.Field(
        nullable=True, in_range={"min_value": 1, "max_value": 5}, description="Satisfaction, 1-5."
    )
    comment: str = pa.Field(
        nullable=True, description="Free-text comment (may hold personal data)."
    )


@dataclass(frozen=True)
class TableSpec:
    """What the store needs to know about a canonical table beyond its columns.

    Attributes
    ----------
    name : str
        Table name in the store.
    model : type
        The pandera ``DataFrameModel``.
    key : tuple of str
        Primary key columns (empty when rows have no identity of their own).
    foreign_keys : dict
        Column -> (table, column) references.
    time_column : str or None
        Column that dates the row; checked against the run's as-of date.
    personal : tuple of str
        Columns holding raw personal data, never shown in reports.
    """

    name: str
    model: type[pa.DataFrameModel]
    key: tuple[str, ...] = ()
    foreign_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    time_column: str | None = None
    personal: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        """Return the canonical column names, in order."""
        return list(self.model.to_schema().columns)

    @property
    def required(self) -> list[str]:
        """Return the columns that may not be empty."""
        return [n for n, c in self.model.to_schema().columns.items() if not c.nullable]

    def dtypes(self) -> dict[str, str]:
        """Return column -> ibis type name (``string``, ``float64``, ``timestamp`` ...)."""
        return {n: _type_name(c.dtype) for n, c in self.model.to_schema().columns.items()}

    def column_docs(self) -> list[dict[str, Any]]:
        """Return one record per column for the data-model documentation."""
        rows = []
        for n, c in self.model.to_schema().columns.items():
            checks = ", ".join(_describe_check(ch.name, ch.statistics) for ch in c.checks)
            rows.append(
                {
                    "column": n,
                    "type": _type_name(c.dtype),
                    "nullable": bool(c.nullable),
                    "unique": bool(c.unique),
                    "checks": checks,
                    "description": c.description or "",
                }
            )
        return rows


def _type_name(dtype: Any) -> str:
    """Return the ibis type name of a pandera ibis dtype."""
    name = str(dtype).lower()
    if name.startswith("timestamp"):
        return "timestamp"
    return name


def _describe_check(name: str, stats: dict[str, Any]) -> str:
    """Return a short human description of a pandera built-in check."""
    if name == "isin":
        return "one of " + "/".join(map(str, stats["allowed_values"]))
    if name == "greater_than_or_equal_to":
        return f">= {stats['min_value']}"
    if name == "in_range":
        return f"{stats['min_value']}..{stats['max_value']}"
    return name


TABLES: dict[str, TableSpec] = {
    "customers": TableSpec(
        "customers",
        Customers,
        key=("customer_id",),
        time_column="signup_date",
        personal=("name", "email", "phone", "birth_date", "city"),
    ),
    "orders": TableSpec(
        "orders",
        Orders,
        key=("order_id",),
        time_column="order_ts",
        foreign_keys={"customer_id": ("customers", "customer_id")},
    ),
    "order_items": TableSpec(
        "order_items",
        OrderItems,
        foreign_keys={"order_id": ("orders", "order_id")},
    ),
    "events": TableSpec(
        "events",
        Events,
        time_column="ts",
        foreign_keys={"customer_id": ("customers", "customer_id")},
    ),
    "tickets": TableSpec(
        "tickets",
        Tickets,
        key=("ticket_id",),
        time_column="opened_at",
        foreign_keys={"customer_id": ("customers", "customer_id")},
    ),
    "surveys": TableSpec(
        "surveys",
        Surveys,
        time_column="answered_at",
        foreign_keys={"customer_id": ("customers", "customer_id")},
        personal=("comment",),
    ),
}
"""Every canonical table, in dependency order (referenced tables first)."""


def spec(table: str) -> TableSpec:
    """Return the spec of a canonical table.

    Parameters
    ----------
    table : str
        Canonical table name.

    Returns
    -------
    TableSpec
        Its specification.

    Raises
    ------
    ValueError
        If the table is not canonical.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; canonical tables: {', '.join(TABLES)}")
    return TABLES[table]


def data_model_markdown() -> str:
    """Render the data model as Markdown (the source of ``docs/data-model.md``).

    Returns
    -------
    str
        Markdown text.
    """
    lines = [
        "# Data model",
        "",
        "Generated from `lib/crm_analytics/schemas.py` by `crm-analytics docs`; do not edit by hand.",
        "Every source is mapped onto these canonical tables by the collect stage; the clean stage",
        "types and validates them against these schemas and quarantines rows that fail.",
        "",
    ]
    for t in TABLES.values():
        lines += [f"## `{t.name}`", "", (t.model.__doc__ or "").strip(), ""]
        lines.append(f"- Key: {', '.join(t.key) or '(none)'}")
        fks = ", ".join(f"`{c}` -> `{rt}.{rc}`" for c, (rt, rc) in t.foreign_keys.items())
        lines.append(f"- References: {fks or '(none)'}")
        lines.append(f"- Time column: {t.time_column or '(none)'}")
        lines.append(f"- Personal data (never in reports): {', '.join(t.personal) or '(none)'}")
        lines += [
            "",
            "| column | type | nullable | unique | checks | description |",
            "|---|---|---|---|---|---|",
        ]
        for c in t.column_docs():
            lines.append(
                f"| `{c['column']}` | {c['type']} | {'yes' if c['nullable'] else 'no'} | "
                f"{'yes' if c['unique'] else ''} | {c['checks']} | {c['description']} |"
            )
        lines.append("")
    return "\n".join(lines)


def require_columns(frame: Any, columns: Iterable[str], name: str = "input") -> None:
    """Raise ``ValueError`` naming the first column a frame or table lacks.

    Parameters
    ----------
    frame : pandas.DataFrame or ibis.expr.types.Table
        Anything with a ``columns`` attribute.
    columns : iterable of str
        Required columns.
    name : str, default "input"
        What the frame is, for the message.

    Raises
    ------
    ValueError
        ``"<name> has no column '<c>'"`` for the first missing column.
    """
    present = set(frame.columns)
    for c in columns:
        if c not in present:
            raise ValueError(f"{name} has no column {c!r}")
