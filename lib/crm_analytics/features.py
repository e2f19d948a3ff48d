"""Heavy aggregation, written once as ibis expressions.

These functions take ibis tables and return ibis expressions: nothing runs
until the caller materialises the result, and then it runs in the store
(DuckDB by default, PostgreSQL or another ibis backend by URL). Only the
per-customer features and the sales series, which are small, become pandas
frames.

Every feature obeys the cutoff rule: it reads rows strictly before ``cutoff``.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.datatypes as dt_
import ibis.expr.types as ir

from crm_analytics.schemas import require_columns

FREQUENCIES: dict[str, str] = {"day": "D", "week": "W", "month": "M"}
"""Series frequency name -> ibis truncation unit."""


def _ts(value: dt.date | dt.datetime | str) -> ir.TimestampScalar:
    """Return a timestamp literal for a date, datetime or ISO string."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return ibis.literal(value, type="timestamp")


def money_sum(values: ir.NumericValue, scale: int = 2) -> ir.FloatingScalar:
    """Sum money exactly, whatever the order of the rows, and return it as a float.

    A float sum depends on the order in which a parallel engine adds the rows,
    so two runs on the same data could differ in the last bits (and a model fed
    those features could then choose differently). Summing as a fixed-point
    decimal (cents by default) is exact, so every run gets the same number.

    Parameters
    ----------
    values : ibis numeric column
        Amounts.
    scale : int, default 2
        Decimal places kept (2: cents; more for shares of an amount).

    Returns
    -------
    ibis float scalar
        The exact sum, as float64.
    """
    return values.cast(dt_.Decimal(38, scale)).sum().cast("float64")


def money_mean(values: ir.NumericValue) -> ir.FloatingScalar:
    """Mean of money amounts from an exact sum (see :func:`money_sum`).

    Parameters
    ----------
    values : ibis numeric column
        Amounts.

    Returns
    -------
    ibis float scalar
        Sum over count of non-missing amounts (missing when there are none).
    """
    n = values.count()
    return ibis.cases((n > 0, money_sum(values) / n.cast("float64")), else_=ibis.null("float64"))


def paid_orders(orders: ir.Table, exclude_outliers: bool = True) -> ir.Table:
    """Return the orders that count as purchases: status paid, amount not an outlier.

    Parameters
    ----------
    orders : ibis Table
        Clean orders (``status``, ``amount``, optionally ``amount_outlier``).
    exclude_outliers : bool, default True
        Drop orders flagged ``amount_outlier`` by the clean stage.

    Returns
    -------
    ibis Table
        Filtered orders.

    Raises
    ------
    ValueError
        If ``status`` or ``amount`` is missing.
    """
    require_columns(orders, ["status", "amount"], "orders")
    out = orders.filter(orders.status == "paid")
    if exclude_outliers and "amount_outlier" in orders.columns:
        out = out.filter(~out.amount_outlier)
    return out


def customer_features(
    orders: ir.Table,
    cutoff: dt.date | str,
    customers: ir.Table | None = None,
    events: ir.Table | None = None,
    tickets: ir.Table | None = None,
    surveys: ir.Table | None = None,
    activity_window_days: int = 90,
    sort: bool = True,
) -> ir.Table:
    """Return one row of behavioural features per customer, from data before ``cutoff``.

    Parameters
    ----------
    orders : ibis Table
        Clean orders (customer_id, order_id, order_ts, amount, status[, channel]).
    cutoff : date or ISO string
        Features read rows with time strictly before this instant (midnight).
    customers : ibis Table, optional
        Clean customers; when given, every customer who signed up before the
        cutoff gets a row (zeros for those who never bought) and tenure counts
        from signup.
    events, tickets, surveys : ibis Table, optional
        Clean behaviour, support and survey tables; add their features when given.
    activity_window_days : int, default 90
        Window before the cutoff for the recent-activity counts.
    sort : bool, default True
        Sort by customer_id; False for a part of a larger query (DuckDB keeps the
        sort of this left side of the churn frame's joins: 0.7 of 11.5 s at 1M).

    Returns
    -------
    ibis Table
        customer_id, frequency, monetary_total, monetary_mean, first_order_ts,
        last_order_ts, recency_days, tenure_days, n_refunds, orders_recent,
        share_app, share_online, share_store, and when given events_recent,
        n_tickets, mean_satisfaction, mean_nps, mean_csat.

    Raises
    ------
    ValueError
        If a required column is missing.
    """
    require_columns(orders, ["customer_id", "order_id", "order_ts", "amount", "status"], "orders")
    c = _ts(cutoff)
    recent = c - ibis.interval(days=activity_window_days)
    before = orders.filter(orders.order_ts < c)
    paid = paid_orders(before)
    has_channel = "channel" in orders.columns
    aggs = {
        "frequency": paid.count(),
        "monetary_total": money_sum(paid.amount),
        "monetary_mean": money_mean(paid.amount),
        "first_order_ts": paid.order_ts.min(),
        "last_order_ts": paid.order_ts.max(),
        "orders_recent": (paid.order_ts >= recent).sum().cast("int64"),
    }
    if has_channel:
        for ch in ("app", "online", "store"):
            # integer count over the row count: exact, and a DOUBLE on every engine (a bare
            # 1.0 literal is a DECIMAL on Spark, whose mean would be rounded)
            aggs[f"share_{ch}"] = (paid.channel == ch).ifelse(1, 0).sum().cast(
                "float64"
            ) / paid.count().cast("float64")
    buy = paid.group_by("customer_id").aggregate(**aggs)
    refunds = before.filter(before.status == "refunded")
    ref = refunds.group_by("customer_id").aggregate(n_refunds=refunds.count())

    if customers is not None:
        require_columns(customers, ["customer_id", "signup_date"], "customers")
        base = customers.filter(customers.signup_date.cast("timestamp") < c).select(
            "customer_id", signup_ts=customers.signup_date.cast("timestamp")
        )
        out = base.left_join(buy, "customer_id").drop("customer_id_right")
        start = ibis.least(out.signup_ts, out.first_order_ts.fill_null(out.signup_ts))
    else:
        out = buy
        start = out.first_order_ts
    out = out.left_join(ref, "customer_id").drop("customer_id_right")
    out = out.mutate(
        frequency=out.frequency.fill_null(0).cast("int64"),
        monetary_total=out.monetary_total.fill_null(0.0),
        monetary_mean=out.monetary_mean.fill_null(0.0),
        orders_recent=out.orders_recent.fill_null(0).cast("int64"),
        n_refunds=out.n_refunds.fill_null(0).cast("int64"),
        recency_days=c.date().delta(out.last_order_ts.date(), unit="day").cast("int64"),
        tenure_days=c.date().delta(start.date(), unit="day").cast("int64"),
    )
    if has_channel:
        out = out.mutate(
            **{
                f"share_{ch}": out[f"share_{ch}"].fill_null(0.0)
                for ch in ("app", "online", "store")
            }
        )
    if customers is not None:
        out = out.drop("signup_ts")
    if events is not None:
        require_columns(events, ["customer_id", "ts"], "events")
        ev = events.filter((events.ts < c) & (events.ts >= recent))
        agg = ev.group_by("customer_id").aggregate(events_recent=ev.count())
        out = out.left_join(agg, "customer_id").drop("customer_id_right")
        out = out.mutate(events_recent=out.events_recent.fill_null(0).cast("int64"))
    if tickets is not None:
        require_columns(tickets, ["customer_id", "opened_at", "satisfaction"], "tickets")
        tk = tickets.filter(tickets.opened_at < c)
        agg = tk.group_by("customer_id").aggregate(
            n_tickets=tk.count(), mean_satisfaction=tk.satisfaction.mean().cast("float64")
        )
        out = out.left_join(agg, "customer_id").drop("customer_id_right")
        out = out.mutate(n_tickets=out.n_tickets.fill_null(0).cast("int64"))
    if surveys is not None:
        require_columns(surveys, ["customer_id", "answered_at", "nps", "csat"], "surveys")
        sv = surveys.filter(surveys.answered_at < c)
        agg = sv.group_by("customer_id").aggregate(
            mean_nps=sv.nps.mean().cast("float64"), mean_csat=sv.csat.mean().cast("float64")
        )
        out = out.left_join(agg, "customer_id").drop("customer_id_right")
    return out.order_by("customer_id") if sort else out


def sales_series(
    orders: ir.Table,
    freq: str = "week",
    by: str | None = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
) -> ir.Table:
    """Return revenue and order counts per calendar period (and group).

    Parameters
    ----------
    orders : ibis Table
        Clean orders; only paid, non-outlier orders count (see :func:`paid_orders`).
    freq : {"day", "week", "month"}, default "week"
        Period length; weeks start on Monday.
    by : str, optional
        Column to split the series by (e.g. ``region``).
    start, end : date or ISO string, optional
        Keep orders with ``start <= order_ts < end``.

    Returns
    -------
    ibis Table
        period (timestamp), [by], revenue (float64), n_orders (int64); periods
        without sales are absent (fill them with :func:`crm_analytics.forecast.complete_series`).

    Raises
    ------
    ValueError
        If ``freq`` is unknown or a column is missing.
    """
    if freq not in FREQUENCIES:
        raise ValueError(f"freq must be one of {', '.join(FREQUENCIES)}, got {freq!r}")
    require_columns(orders, ["order_ts", "amount", "status"], "orders")
    if by is not None:
        require_columns(orders, [by], "orders")
    paid = paid_orders(orders)
    if start is not None:
        paid = paid.filter(paid.order_ts >= _ts(start))
    if end is not None:
        paid = paid.filter(paid.order_ts < _ts(end))
    keys = {"period": paid.order_ts.truncate(FREQUENCIES[freq]).cast("timestamp")}
    if by is not None:
        keys[by] = paid[by]
    out = paid.group_by(**keys).aggregate(
        revenue=money_sum(paid.amount), n_orders=paid.count().cast("int64")
    )
    return out.order_by(["period", by] if by else ["period"])


def churn_labels(
    orders: ir.Table,
    cutoff: dt.date | str,
    window_days: int,
    sort: bool = True,
    active_within_days: int = 0,
) -> ir.Table:
    """Return the churn label of every customer active at ``cutoff``.

    A customer is *active at the cutoff* if they have a paid order before it
    (within ``active_within_days`` days before it, when that is positive: a
    customer silent for longer has already lapsed, and predicting that they stay
    silent is no forecast); they are labelled churned (1) when they have no paid
    order in ``[cutoff, cutoff + window_days)``. Only the label reads data at or
    after the cutoff.

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    cutoff : date or ISO string
        Start of the label window.
    window_days : int
        Length of the label window.
    sort : bool, default True
        Order the rows by ``customer_id`` (False when the result is joined).
    active_within_days : int, default 0
        Keep only customers whose last paid order before the cutoff is at most
        this many days old (their ``recency_days`` in :func:`churn_features`);
        0 keeps everyone who ever bought.

    Returns
    -------
    ibis Table
        customer_id, churned (int8).
    """
    c = _ts(cutoff)
    paid = paid_orders(orders)
    seen = paid.order_ts < c
    if active_within_days > 0:  # an order on the day N days before the cutoff counts
        seen = seen & (paid.order_ts >= c - ibis.interval(days=active_within_days))
    active = paid.filter(seen).select("customer_id").distinct()
    after = paid.filter(
        (paid.order_ts >= c) & (paid.order_ts < c + ibis.interval(days=window_days))
    )
    bought = after.select("customer_id").distinct().mutate(bought=ibis.literal(1))
    out = active.left_join(bought, "customer_id").drop("customer_id_right")
    out = out.select(
        "customer_id", churned=ibis.cases((out.bought.isnull(), 1), else_=0).cast("int8")
    )
    return out.order_by("customer_id") if sort else out


def lapsed_count(orders: ir.Table, cutoff: dt.date | str, active_within_days: int) -> int:
    """Return how many buyers had lapsed before ``cutoff``: outside the churn population.

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    cutoff : date or ISO string
        The cutoff.
    active_within_days : int
        The population's bound (see :func:`churn_labels`); 0 means nobody lapses.

    Returns
    -------
    int
        Customers with a paid order before the cutoff whose last one is more than
        ``active_within_days`` days before it.
    """
    if active_within_days <= 0:
        return 0
    c = _ts(cutoff)
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < c)
    last = paid.group_by("customer_id").aggregate(last_ts=paid.order_ts.max())
    lapsed = last.filter(last.last_ts < c - ibis.interval(days=active_within_days))
    return int(lapsed.count().execute())


def clv_summary(orders: ir.Table, cutoff: dt.date | str, time_unit_days: int = 1) -> ir.Table:
    """Return the RFM summary used by BG/NBD-type models, from paid orders before ``cutoff``.

    The same quantities as ``lifetimes.utils.summary_data_from_transaction_data``
    with the observation period ending the day before the cutoff: purchases are
    counted per day (several orders on one day are one purchase occasion).

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    cutoff : date or ISO string
        First day not observed.
    time_unit_days : int, default 1
        Unit of ``recency`` and ``T`` in days (7 for weeks).

    Returns
    -------
    ibis Table
        customer_id, frequency (repeat purchase days), recency (first to last
        purchase), T (first purchase to the end of observation), monetary_value
        (mean spend of the repeat purchase days; 0 without repeats).
    """
    c = _ts(cutoff)
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < c)
    daily = paid.group_by(["customer_id", paid.order_ts.date().name("day")]).aggregate(
        spend=money_sum(paid.amount)
    )
    first = ibis.row_number().over(group_by=daily.customer_id, order_by=daily.day)
    daily = daily.mutate(_i=first)
    end = (c - ibis.interval(days=1)).date()
    agg = daily.group_by("customer_id").aggregate(
        n_days=daily.count(),
        first_day=daily.day.min(),
        last_day=daily.day.max(),
        repeat_spend=money_sum(daily._i.isin([0]).ifelse(0.0, daily.spend)),
    )
    unit = float(time_unit_days)
    return agg.select(
        "customer_id",
        frequency=(agg.n_days - 1).cast("int64"),
        recency=agg.last_day.delta(agg.first_day, unit="day").cast("float64") / unit,
        T=end.delta(agg.first_day, unit="day").cast("float64") / unit,
        monetary_value=ibis.cases(
            (agg.n_days > 1, agg.repeat_spend / (agg.n_days - 1)), else_=ibis.literal(0.0)
        ).cast("float64"),
    ).order_by("customer_id")


def holdout_purchases(orders: ir.Table, cutoff: dt.date | str, holdout_days: int) -> ir.Table:
    """Count purchase days per customer in ``[cutoff, cutoff + holdout_days)``.

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    cutoff : date or ISO string
        First holdout day.
    holdout_days : int
        Holdout length.

    Returns
    -------
    ibis Table
        customer_id, frequency_holdout (distinct purchase days), monetary_holdout
        (spend in the holdout).
    """
    c = _ts(cutoff)
    paid = paid_orders(orders)
    paid = paid.filter(
        (paid.order_ts >= c) & (paid.order_ts < c + ibis.interval(days=holdout_days))
    )
    return (
        paid.group_by("customer_id")
        .aggregate(
            frequency_holdout=paid.order_ts.date().nunique().cast("int64"),
            monetary_holdout=money_sum(paid.amount),
        )
        .order_by("customer_id")
    )


LIFECYCLE_STAGES: tuple[str, ...] = ("prospect", "new", "active", "dormant", "churned")
"""Lifecycle stages, from no purchase yet to long silent."""


def lifecycle_stages(
    orders: ir.Table,
    customers: ir.Table,
    snapshots: list[dt.date],
    new_days: int = 90,
    active_days: int = 90,
    churn_days: int = 365,
) -> ir.Table:
    """Return each customer's lifecycle stage at each snapshot date (data strictly before it).

    Stages, first match wins: *prospect* (signed up, no purchase yet), *new* (first
    purchase within ``new_days``), *active* (last purchase within ``active_days``),
    *dormant* (last purchase within ``churn_days``), *churned* (silent longer).
    The last purchase before each snapshot is found with an ASOF join, which
    DuckDB runs in one pass and Spark SQL does not offer: on ``engine: spark``
    this one runs in the store.

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    customers : ibis Table
        Clean customers (customer_id, signup_date).
    snapshots : list of date
        Dates the stages are taken at.
    new_days, active_days, churn_days : int, default 90, 90, 365
        Thresholds in days.

    Returns
    -------
    ibis Table
        snapshot (timestamp), customer_id, stage, in no particular order; customers
        who signed up on or after a snapshot are not in it.

    Raises
    ------
    ValueError
        If the thresholds are not ordered (active_days <= churn_days) or no snapshot is given.
    """
    if not snapshots:
        raise ValueError("give at least one snapshot date")
    if not 0 < active_days <= churn_days:
        raise ValueError(f"need 0 < active_days <= churn_days, got {active_days}, {churn_days}")
    paid = paid_orders(orders)
    paid = paid.select("customer_id", ts=paid.order_ts)
    first = paid.group_by("customer_id").aggregate(first_ts=paid.ts.min())
    snaps = ibis.memtable(
        {"snapshot": [dt.datetime.combine(_as_date(s), dt.time()) for s in snapshots]},
        schema={"snapshot": "timestamp"},
    )
    cust = customers.select("customer_id", signup_ts=customers.signup_date.cast("timestamp"))
    grid = cust.cross_join(snaps)
    grid = grid.filter(grid.signup_ts < grid.snapshot).mutate(
        _asof=grid.snapshot - ibis.interval(microseconds=1)
    )
    last = grid.asof_join(paid, on=grid._asof >= paid.ts, predicates="customer_id").drop(
        "customer_id_right"
    )
    last = last.left_join(first, "customer_id").drop("customer_id_right")
    days_since_last = last.snapshot.delta(last.ts, unit="day")
    days_since_first = last.snapshot.delta(last.first_ts, unit="day")
    stage = ibis.cases(
        (last.ts.isnull(), "prospect"),
        (days_since_first <= new_days, "new"),
        (days_since_last <= active_days, "active"),
        (days_since_last <= churn_days, "dormant"),
        else_="churned",
    )
    # unordered: sorting the customer x snapshot grid cost 1.4 of 6.2 s at 1M customers,
    # and the callers count or join it
    return last.select("snapshot", "customer_id", stage=stage)


def _as_date(value: dt.date | str) -> dt.date:
    """Return a date from a date or an ISO string."""
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def cohort_activity(orders: ir.Table, cutoff: dt.date | str | None = None) -> ir.Table:
    """Return activity of monthly acquisition cohorts: who bought, and for how much, each month after.

    Parameters
    ----------
    orders : ibis Table
        Clean orders (paid, non-outlier orders count).
    cutoff : date or ISO string, optional
        Only orders strictly before it.

    Returns
    -------
    ibis Table
        cohort (month of the first purchase), period (months since it, 0 = first
        month), customers (distinct buyers), revenue.
    """
    paid = paid_orders(orders)
    if cutoff is not None:
        paid = paid.filter(paid.order_ts < _ts(cutoff))
    m = paid.mutate(month=paid.order_ts.truncate("M").cast("timestamp"))
    first = m.group_by("customer_id").aggregate(cohort=m.month.min())
    j = m.join(first, "customer_id")
    period = (j.month.year() - j.cohort.year()) * 12 + (j.month.month() - j.cohort.month())
    j = j.mutate(period=period.cast("int64"))
    out = j.group_by(["cohort", "period"]).aggregate(
        customers=j.customer_id.nunique().cast("int64"), revenue=money_sum(j.amount)
    )
    return out.order_by(["cohort", "period"])


def category_mix(
    orders: ir.Table, order_items: ir.Table, cutoff: dt.date | str, categories: list[str]
) -> ir.Table:
    """Return each customer's share of order lines per category, before ``cutoff``.

    Parameters
    ----------
    orders, order_items : ibis Table
        Clean orders and order lines.
    cutoff : date or ISO string
        Lines of orders strictly before it.
    categories : list of str
        Categories to report (one column ``cat_<name>`` each).

    Returns
    -------
    ibis Table
        customer_id and one share column per category.
    """
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < _ts(cutoff)).select("order_id", "customer_id")
    lines = order_items.join(paid, "order_id")
    n = lines.count()
    aggs = {f"cat_{c}": (lines.category == c).ifelse(1.0, 0.0).sum() / n for c in categories}
    return lines.group_by("customer_id").aggregate(**aggs).order_by("customer_id")


def event_signals(
    events: ir.Table,
    orders: ir.Table,
    order_items: ir.Table,
    cutoff: dt.date | str,
    window_days: int = 90,
) -> ir.Table:
    """Return behavioural signals from web/app events in the window before ``cutoff``.

    Parameters
    ----------
    events : ibis Table
        Clean events (customer_id, ts, event_type, category).
    orders, order_items : ibis Table
        Clean orders and lines (to tell browsing from buying).
    cutoff : date or ISO string
        End of the window (exclusive).
    window_days : int, default 90
        Window length.

    Returns
    -------
    ibis Table
        customer_id, views, cart_adds, abandoned_cart_days (days with an add-to-cart
        and no paid order that day or the next before the cutoff), browsed_not_bought (categories
        viewed three times or more but not bought in the window), top_browsed_category.
    """
    c = _ts(cutoff)
    start = c - ibis.interval(days=window_days)
    ev = events.filter((events.ts >= start) & (events.ts < c))
    paid = paid_orders(orders)
    paid = paid.filter((paid.order_ts >= start) & (paid.order_ts < c))
    base = ev.group_by("customer_id").aggregate(
        views=(ev.event_type == "view").sum().cast("int64"),
        cart_adds=(ev.event_type == "add_to_cart").sum().cast("int64"),
    )
    cart_days = (
        ev.filter(ev.event_type == "add_to_cart").select("customer_id", day=ev.ts.date()).distinct()
    )
    order_days = paid.select("customer_id", oday=paid.order_ts.date()).distinct()
    cj = cart_days.left_join(
        order_days,
        (cart_days.customer_id == order_days.customer_id)
        & (order_days.oday >= cart_days.day)
        & (order_days.oday <= cart_days.day + ibis.interval(days=1)),
    )
    abandoned = (
        cj.group_by([cj.customer_id, cj.day])
        .aggregate(bought=cj.oday.count())
        .filter(lambda t: t.bought == 0)
        .group_by("customer_id")
        .aggregate(abandoned_cart_days=ibis._.count())
    )
    views = ev.filter((ev.event_type == "view") & ev.category.notnull())
    per_cat = views.group_by(["customer_id", "category"]).aggregate(n=views.count())
    top = per_cat.mutate(
        _r=ibis.row_number().over(
            group_by=per_cat.customer_id, order_by=[ibis.desc(per_cat.n), per_cat.category]
        )
    )
    top = top.filter(top._r == 0).select("customer_id", top_browsed_category=top.category)
    bought = (
        order_items.join(
            paid.filter(paid.order_ts < c).select("order_id", "customer_id"), "order_id"
        )
        .select("customer_id", "category")
        .distinct()
        .mutate(_b=ibis.literal(1))
    )
    often = per_cat.filter(per_cat.n >= 3)
    nb = often.left_join(bought, ["customer_id", "category"])
    nb = (
        nb.filter(nb._b.isnull())
        .group_by("customer_id")
        .aggregate(browsed_not_bought=ibis._.count())
    )
    out = base.left_join(abandoned, "customer_id").drop("customer_id_right")
    out = out.left_join(nb, "customer_id").drop("customer_id_right")
    out = out.left_join(top, "customer_id").drop("customer_id_right")
    return out.mutate(
        abandoned_cart_days=out.abandoned_cart_days.fill_null(0).cast("int64"),
        browsed_not_bought=out.browsed_not_bought.fill_null(0).cast("int64"),
    ).order_by("customer_id")


def repeat_purchases_by_period(
    orders: ir.Table, cutoff: dt.date | str, time_unit_days: int = 7
) -> ir.Table:
    """Return repeat purchase days per period since the first purchase date in the data.

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    cutoff : date or ISO string
        Orders strictly before it.
    time_unit_days : int, default 7
        Period length in days.

    Returns
    -------
    ibis Table
        period (0 = the period of the earliest purchase), repeat_purchases (purchase
        days that are not a customer's first).
    """
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < _ts(cutoff))
    days = paid.select("customer_id", day=paid.order_ts.date()).distinct()
    first = days.group_by("customer_id").aggregate(first_day=days.day.min())
    origin = days.day.min().as_scalar()
    j = days.join(first, "customer_id")
    j = j.filter(j.day > j.first_day)
    period = (j.day.delta(origin, unit="day") / time_unit_days).floor().cast("int64")
    j = j.mutate(period=period)
    return j.group_by("period").aggregate(repeat_purchases=j.count()).order_by("period")


def customer_features_of(tables: dict[str, ir.Table], cutoff: dt.date | str) -> ir.Table:
    """Return :func:`customer_features` from a dict of clean tables.

    Parameters
    ----------
    tables : dict
        ``orders`` (required) and, when present, ``customers``, ``events``, ``tickets``, ``surveys``.
    cutoff : date or ISO string
        The cutoff.

    Returns
    -------
    ibis Table
        The per-customer features.
    """
    return customer_features(
        tables["orders"], cutoff, tables.get("customers"), tables.get("events"),
        tables.get("tickets"), tables.get("surveys"),
    )  # fmt: skip


def purchase_dynamics(
    orders: ir.Table,
    cutoff: dt.date | str,
    windows: tuple[int, ...] = (30, 90, 180),
    sort: bool = True,
) -> ir.Table:
    """Return recent-activity trends and inter-purchase gaps per customer, before ``cutoff``.

    Parameters
    ----------
    orders : ibis Table
        Clean orders (paid, non-outlier orders count; see :func:`paid_orders`).
    cutoff : date or ISO string
        Rows strictly before it.
    windows : tuple of int, default (30, 90, 180)
        Recent windows in days.
    sort : bool, default True
        Order the rows by ``customer_id`` (False when the result is joined).

    Returns
    -------
    ibis Table
        customer_id; per window ``w``: ``orders_{w}d``, ``spend_{w}d`` and
        ``orders_trend_{w}d`` (orders per year in the window minus orders per
        year before it; null when the customer has no history before the window);
        ``gap_mean_days``, ``gap_std_days`` and ``gap_last_days`` between
        distinct purchase days (null with fewer than two or three purchase days).
    """
    require_columns(orders, ["customer_id", "order_ts", "amount", "status"], "orders")
    c = _ts(cutoff)
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < c)
    aggs: dict[str, ir.Value] = {"_n": paid.count(), "_first": paid.order_ts.min()}
    for w in windows:
        inside = paid.order_ts >= c - ibis.interval(days=w)
        aggs[f"orders_{w}d"] = inside.sum().cast("int64")
        aggs[f"spend_{w}d"] = money_sum(inside.ifelse(paid.amount, 0.0))
    out = paid.group_by("customer_id").aggregate(**aggs)
    trends = {}
    for w in windows:
        before_days = (c - ibis.interval(days=w)).date().delta(out._first.date(), unit="day")
        rate_in = out[f"orders_{w}d"].cast("float64") * 365.0 / w
        rate_before = (out._n - out[f"orders_{w}d"]).cast("float64") * 365.0 / before_days
        trends[f"orders_trend_{w}d"] = (before_days > 0).ifelse(rate_in - rate_before, ibis.null())
    out = out.mutate(**trends).drop("_n", "_first")

    days = paid.select("customer_id", day=paid.order_ts.date()).distinct()
    prev = days.day.lag().over(group_by=days.customer_id, order_by=days.day)
    days = days.mutate(gap=days.day.delta(prev, unit="day").cast("float64"))
    days = days.filter(days.gap.notnull())
    # gaps are whole days: exact integer sums give the same mean and spread on every run
    whole = days.gap.cast("int64")
    gaps = days.group_by("customer_id").aggregate(
        _n=whole.count(), _s=whole.sum(), _ss=(whole * whole).sum(),
        gap_last_days=days.gap.argmax(days.day),
    )  # fmt: skip
    n, mean = gaps._n.cast("float64"), gaps._s.cast("float64") / gaps._n.cast("float64")
    var = (gaps._ss.cast("float64") - gaps._s.cast("float64") * mean) / (n - 1.0)
    gaps = gaps.mutate(
        gap_mean_days=mean,
        gap_std_days=(gaps._n > 1).ifelse(var.clip(lower=0.0).sqrt(), ibis.null()),
    ).select("customer_id", "gap_mean_days", "gap_std_days", "gap_last_days")
    out = out.left_join(gaps, "customer_id").drop("customer_id_right")
    return out.order_by("customer_id") if sort else out


def top_categories(
    orders: ir.Table, order_items: ir.Table, cutoff: dt.date | str, n: int = 12
) -> list[str]:
    """Return the ``n`` categories with most paid order lines before ``cutoff``.

    Parameters
    ----------
    orders, order_items : ibis Table
        Clean orders and lines.
    cutoff : date or ISO string
        Lines of orders strictly before it.
    n : int, default 12
        How many.

    Returns
    -------
    list of str
        Category names, most frequent first (ties by name).
    """
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < _ts(cutoff)).select("order_id")
    lines = order_items.join(paid, "order_id").filter(order_items.category.notnull())
    counts = lines.group_by("category").aggregate(n=lines.count())
    top = counts.order_by([ibis.desc("n"), "category"]).limit(n).to_pandas()
    return [str(c) for c in top.category]


def churn_features(
    tables: dict[str, ir.Table],
    cutoff: dt.date | str,
    categories: list[str] | None = None,
    windows: tuple[int, ...] = (30, 90, 180),
    activity_window_days: int = 90,
    sort: bool = True,
) -> ir.Table:
    """Return every churn-model input per customer, from data strictly before ``cutoff``.

    :func:`customer_features` (RFM, tenure, channel mix, refunds, events,
    tickets, survey scores) plus :func:`purchase_dynamics` (trends over the
    ``windows`` and inter-purchase gaps), the refund share, recent tickets, web/app
    signals (:func:`event_signals`), the category mix (:func:`category_mix`) and
    demographics (age, gender, consent). Tables that are absent are skipped.

    Parameters
    ----------
    tables : dict
        Clean tables: ``orders`` required; ``customers``, ``order_items``,
        ``events``, ``tickets`` and ``surveys`` used when present.
    cutoff : date or ISO string
        The cutoff.
    categories : list of str, optional
        Categories of the mix columns (``cat_<name>``); none when omitted. Pass
        a fixed list (e.g. :func:`top_categories` at the cutoff) so that the
        columns do not depend on later data.
    windows : tuple of int, default (30, 90, 180)
        Trend windows in days.
    activity_window_days : int, default 90
        Window of the recent event, ticket and web/app counts.
    sort : bool, default True
        Order the rows by ``customer_id``; a query that joins or sorts the result
        itself passes False (DuckDB sorts a subquery's rows when it is told to).

    Returns
    -------
    ibis Table
        One row per customer who signed up (or bought) before the cutoff.
    """
    orders = tables["orders"]
    customers = tables.get("customers")
    events, tickets = tables.get("events"), tables.get("tickets")
    c = _ts(cutoff)
    out = customer_features(
        orders, cutoff, customers, events, tickets, tables.get("surveys"),
        activity_window_days=activity_window_days, sort=False,
    )  # fmt: skip
    dynamics = purchase_dynamics(orders, cutoff, windows, sort=False)
    out = out.left_join(dynamics, "customer_id").drop("customer_id_right")
    fills = {f"orders_{w}d": 0 for w in windows} | {f"spend_{w}d": 0.0 for w in windows}
    out = out.mutate(
        **{k: out[k].fill_null(v) for k, v in fills.items()},
        refund_share=out.n_refunds.cast("float64")
        / ibis.greatest(out.frequency + out.n_refunds, 1).cast("float64"),
    )
    if tickets is not None:
        tk = tickets.filter(
            (tickets.opened_at < c)
            & (tickets.opened_at >= c - ibis.interval(days=activity_window_days))
        )
        recent = tk.group_by("customer_id").aggregate(tickets_recent=tk.count())
        out = out.left_join(recent, "customer_id").drop("customer_id_right")
        out = out.mutate(tickets_recent=out.tickets_recent.fill_null(0).cast("int64"))
    items = tables.get("order_items")
    if events is not None and items is not None:
        sig = event_signals(events, orders, items, cutoff, activity_window_days).drop(
            "top_browsed_category"
        )
        out = out.left_join(sig, "customer_id").drop("customer_id_right")
        out = out.mutate(
            **{
                k: out[k].fill_null(0)
                for k in ("views", "cart_adds", "abandoned_cart_days", "browsed_not_bought")
            }
        )
    if items is not None and categories:
        mix = category_mix(orders, items, cutoff, categories)
        out = out.left_join(mix, "customer_id").drop("customer_id_right")
        out = out.mutate(**{f"cat_{k}": out[f"cat_{k}"].fill_null(0.0) for k in categories})
    if customers is not None:
        demo = customers.select(
            "customer_id",
            age_years=(c.date().delta(customers.birth_date.cast("date"), unit="day") / 365.25)
            .floor()
            .cast("float64"),
            gender_f=(customers.gender == "F").ifelse(1, 0).fill_null(0).cast("int8"),
            gender_m=(customers.gender == "M").ifelse(1, 0).fill_null(0).cast("int8"),
            consent=customers.consent_marketing.ifelse(1, 0).fill_null(0).cast("int8"),
        )
        out = out.left_join(demo, "customer_id").drop("customer_id_right")
    return out.order_by("customer_id") if sort else out


def churn_frame(
    tables: dict[str, ir.Table],
    cutoff: dt.date | str,
    window_days: int,
    categories: list[str] | None = None,
    labelled: bool = True,
    windows: tuple[int, ...] = (30, 90, 180),
    activity_window_days: int = 90,
    active_within_days: int = 0,
) -> ir.Table:
    """Return the churn features of the customers active at ``cutoff``, with their label.

    Parameters
    ----------
    tables : dict
        Clean tables (see :func:`churn_features`).
    cutoff : date or ISO string
        The cutoff.
    window_days : int
        Label window (see :func:`churn_labels`).
    categories : list of str, optional
        Category-mix columns.
    labelled : bool, default True
        Join the label; when False (scoring now, the window is in the future)
        ``churned`` is null.
    windows, activity_window_days
        See :func:`churn_features`.
    active_within_days : int, default 0
        The churn population: customers whose last paid order before the cutoff
        is at most this many days old (see :func:`churn_labels`); 0 means every
        customer who ever bought.

    Returns
    -------
    ibis Table
        One row per customer active at the cutoff: features, ``cutoff`` (date)
        and ``churned`` (int8, null when unlabelled).
    """
    feats = churn_features(tables, cutoff, categories, windows, activity_window_days, sort=False)
    if labelled:
        labels = churn_labels(
            tables["orders"], cutoff, window_days, sort=False, active_within_days=active_within_days
        )
        out = feats.join(labels, "customer_id")
    else:
        active = feats.frequency > 0
        if active_within_days > 0:  # the same customers as the labels' population
            active = active & (feats.recency_days <= active_within_days)
        out = feats.filter(active).mutate(churned=ibis.null("int8"))
    return out.mutate(cutoff=ibis.literal(_as_date(cutoff))).order_by("customer_id")


def customer_sample(
    tables: dict[str, ir.Table],
    max_customers: int,
    seed: int = 42,
    key: str = "customer_id",
    materialize: bool = False,
    copy_share: float = 0.5,
) -> dict[str, ir.Table]:
    """Restrict every table to a seeded random sample of customers, when there are more.

    The sample is drawn once from the customer ids (the ``customers`` table, or
    the ids in ``orders`` when there is none) and applied to each table with a
    ``key`` column as a semi-join, so the aggregation still runs in the store
    but on fewer customers. Tables without the key but with an ``order_id``
    (order lines) keep the lines of the sampled orders; others are returned as
    they are.

    Parameters
    ----------
    tables : dict
        Clean tables by name.
    max_customers : int
        Most customers kept; 0 or a number at least the number of customers
        returns ``tables`` itself.
    seed : int, default 42
        Seed of the sample: the same seed and data give the same customers.
    key : str, default "customer_id"
        Customer key column.
    materialize : bool, default False
        Copy each restricted table once into a temporary table of its backend
        (ibis ``cache``: a DuckDB or PostgreSQL temporary table, a cached Spark
        frame), so that building frames at many cutoffs scans the sample, not
        the whole history, each time. Free the copies with :func:`release_tables`.
    copy_share : float, default 0.5
        With ``materialize``, copy only when the sample holds at most this share
        of the customers: a copy of nearly everyone costs the store's memory and
        saves little scanning.

    Returns
    -------
    dict
        The same names mapped to the restricted tables (the input dict itself
        when nothing is sampled).

    Raises
    ------
    ValueError
        If neither a ``customers`` nor an ``orders`` table is given, or it lacks ``key``.
    """
    import numpy as np

    source = tables.get("customers", tables.get("orders"))
    if source is None:
        raise ValueError("customer_sample needs a 'customers' or 'orders' table")
    require_columns(source, [key], "customers" if "customers" in tables else "orders")
    if not max_customers:
        return tables
    ids = source.select(key).distinct().to_pyarrow()[key].to_numpy(zero_copy_only=False)
    if len(ids) <= max_customers:
        return tables
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(np.sort(ids), size=max_customers, replace=False))
    sample = ibis.memtable({key: chosen}, schema={key: source.schema()[key]})
    out = {name: t.semi_join(sample, key) for name, t in tables.items() if key in t.columns}
    orders = out.get("orders")
    for name, t in tables.items():
        if name in out:
            continue
        if orders is not None and "order_id" in t.columns and "order_id" in orders.columns:
            out[name] = t.semi_join(orders.select("order_id"), "order_id")
        else:
            out[name] = t
    if materialize and max_customers <= copy_share * len(ids):
        out = {name: t.cache() if t is not tables[name] else t for name, t in out.items()}
    return {name: out[name] for name in tables}


def release_tables(tables: dict[str, ir.Table]) -> None:
    """Drop the temporary copies of :func:`customer_sample` (``materialize=True``).

    Tables that are not such copies are left alone, so the result of any
    :func:`customer_sample` call can be passed.

    Parameters
    ----------
    tables : dict
        Tables by name.
    """
    for t in tables.values():
        if isinstance(t, ir.CachedTable):
            t.release()


def contract_features(
    contracts: ir.Table, label: str = "churn", key: str = "customer_id"
) -> ir.Table:
    """Return a contractual churn frame: numeric columns as they are, text columns one-hot.

    For subscription data with an explicit churn label (e.g. the IBM Telco
    data), one row per subscriber. Each text column other than the key and the
    label becomes one 0/1 column per value (``<column>_<value>``).

    Parameters
    ----------
    contracts : ibis Table
        One row per subscriber.
    label : str, default "churn"
        Label column: "Yes"/"No", true/false or 1/0.
    key : str, default "customer_id"
        Subscriber key.

    Returns
    -------
    ibis Table
        key, the encoded features and ``churned`` (int8).

    Raises
    ------
    ValueError
        If the key or label column is missing.
    """
    require_columns(contracts, [key, label], "contracts")
    schema = contracts.schema()
    lab = contracts[label]
    if schema[label].is_string():
        churned = lab.lower().isin(["yes", "true", "1", "churned"]).ifelse(1, 0)
    else:
        churned = lab.cast("int8")
    cols: dict[str, ir.Value] = {}
    for name, dtype in schema.items():
        if name in (key, label):
            continue
        if dtype.is_numeric() or dtype.is_boolean():
            cols[name] = contracts[name].cast("float64")
        elif dtype.is_string():
            values = contracts.select(name).distinct().order_by(name).to_pandas()[name]
            for v in values.dropna():
                safe = "".join(ch if ch.isalnum() else "_" for ch in str(v).lower()).strip("_")
                cols[f"{name}_{safe}"] = (contracts[name] == v).ifelse(1, 0).cast("int8")
    return contracts.select(key, **cols, churned=churned.cast("int8")).order_by(key)


SERIES_DIMENSIONS: tuple[str, ...] = ("segment", "category", "region")
"""Groupings of the sales series below the total."""


def sales_series_by(
    tables: dict[str, ir.Table], freq: str = "week", dimension: str = "total"
) -> ir.Table:
    """Return revenue and orders per calendar period for the total or one group per value.

    Groups add up to the total: an order's amount is shared among its lines in
    proportion to their value for the category split, and a missing region,
    segment or category is the group "unknown". The segment split gives every
    order its customer's segment in ``customer_segments`` (held at one cutoff),
    whatever the order's date: the series of today's members of each segment.

    Parameters
    ----------
    tables : dict
        Clean tables: ``orders``; ``customer_segments`` for the segment split,
        ``order_items`` for the category split.
    freq : {"day", "week", "month", "quarter"}, default "week"
        Period length; weeks start on Monday.
    dimension : {"total", "segment", "category", "region"}, default "total"
        Split.

    Returns
    -------
    ibis Table
        period (timestamp), group (str: "total" or the group value), revenue
        (float64), n_orders (int64, orders with a line in the group for the
        category split); periods without sales are absent.

    Raises
    ------
    ValueError
        If ``freq`` or ``dimension`` is unknown, or a table it needs is missing.
    """
    units = {**FREQUENCIES, "quarter": "Q"}
    if freq not in units:
        raise ValueError(f"freq must be one of {', '.join(units)}, got {freq!r}")
    if dimension not in ("total", *SERIES_DIMENSIONS):
        raise ValueError(
            f"dimension must be total or one of {', '.join(SERIES_DIMENSIONS)}, got {dimension!r}"
        )
    paid = paid_orders(tables["orders"])
    paid = paid.mutate(period=paid.order_ts.truncate(units[freq]).cast("timestamp"))
    if dimension == "category":
        if "order_items" not in tables:
            raise ValueError("the category split needs the order_items table")
        items = tables["order_items"]
        value = (items.quantity * items.unit_price).cast(dt_.Decimal(38, 2))
        # exact (decimal) line values per order and per category: the same shares on every run.
        # Both sums read the lines themselves (the per-order one is not a sum of the other: that
        # made the store keep the 14.5M per-category rows to read twice, 7.9 s of 9.9 at 1M)
        group_lines = items.select("order_id", group=items.category.fill_null("unknown"), _v=value)
        per_group = group_lines.group_by(["order_id", "group"]).aggregate(
            _group_value=group_lines._v.sum()
        )
        order_lines = items.select("order_id", _value=value)
        per_order = order_lines.group_by("order_id").aggregate(
            _order_value=order_lines._value.sum()
        )
        j = paid.left_join(per_order, "order_id").drop("order_id_right")
        j = j.left_join(per_group, "order_id").drop("order_id_right")
        share = ibis.cases(
            (j._order_value.isnull(), ibis.literal(1.0)),  # no lines: all "unknown"
            (j._order_value > 0, j._group_value.cast("float64") / j._order_value.cast("float64")),
            else_=ibis.literal(0.0),
        )
        j = j.mutate(group=j.group.fill_null("unknown"), _amount=(j.amount * share).cast("float64"))
    else:
        if dimension == "total":
            j = paid.mutate(group=ibis.literal("total"))
        elif dimension == "region":
            j = paid.mutate(group=paid.region.fill_null("unknown"))
        else:
            if "customer_segments" not in tables:
                raise ValueError("the segment split needs the customer_segments table")
            seg = tables["customer_segments"].select("customer_id", _segment="segment")
            j = paid.left_join(seg, "customer_id")
            j = j.mutate(group=j._segment.fill_null("unknown"))
        j = j.mutate(_amount=j.amount.cast("float64"))
    # every row is one order (in one group): order_id is the orders' key, and the order
    # lines are summed per order and group above, so counting rows counts orders (a
    # distinct count cost 3 of 15 s for the category split of 10M orders)
    out = j.group_by(["period", "group"]).aggregate(
        revenue=money_sum(j._amount, scale=6), n_orders=j.count().cast("int64")
    )
    return out.order_by(["group", "period"])


def gap_distribution(orders: ir.Table, cutoff: dt.date | str) -> ir.Table:
    """Return how often each number of days between a customer's purchase days occurs.

    Parameters
    ----------
    orders : ibis Table
        Clean orders (paid, non-outlier orders count).
    cutoff : date or ISO string
        Purchases strictly before it.

    Returns
    -------
    ibis Table
        gap_days (int64, at least 1), n (int64), sorted by gap_days.
    """
    paid = paid_orders(orders)
    paid = paid.filter(paid.order_ts < _ts(cutoff))
    days = paid.select("customer_id", day=paid.order_ts.date()).distinct()
    prev = days.day.lag().over(group_by=days.customer_id, order_by=days.day)
    gaps = days.mutate(gap_days=days.day.delta(prev, unit="day").cast("int64"))
    gaps = gaps.filter(gaps.gap_days.notnull())
    return gaps.group_by("gap_days").aggregate(n=gaps.count().cast("int64")).order_by("gap_days")
