"""Interactive explorers for analysts in JupyterLab (ipywidgets), with static fallbacks for reports.

Each explorer is a pure ``*_view`` function (frames in, a small frame or figure
out: what is shown for one choice) and a thin widget around it. In a scheduled
run widget state does not survive papermill, so with ``interactive=False`` an
explorer shows its view for the default choice as static output instead.
Customers appear under pseudonymous ids only (:func:`crm_analytics.report.pseudonymise`);
a lookup accepts the pseudonymous id, never a name or e-mail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crm_analytics.i18n import translate
from crm_analytics.report import markdown, pseudonymise, safe_columns, table
from crm_analytics.schemas import require_columns


def segment_view(
    customers: pd.DataFrame, segment: str, sort_by: str = "monetary_total", n: int = 20
) -> tuple[pd.Series, pd.DataFrame]:
    """Return a segment's profile (medians of its numeric columns) and its top members.

    Parameters
    ----------
    customers : pandas.DataFrame
        One row per customer with ``customer_id``, ``segment`` and numeric features.
    segment : str
        The segment shown.
    sort_by : str, default "monetary_total"
        Members are listed by this column, largest first.
    n : int, default 20
        Members listed.

    Returns
    -------
    tuple
        (profile: median per numeric column plus ``customers``; members under
        pseudonymous ids, personal columns dropped).
    """
    require_columns(customers, ["customer_id", "segment", sort_by])
    members = customers[customers.segment == segment]
    numeric = members.select_dtypes("number")
    profile = numeric.median().round(2)
    profile["customers"] = len(members)
    top = members.sort_values([sort_by, "customer_id"], ascending=[False, True]).head(n)
    return profile, safe_columns(top)


def customer_view(
    customers: pd.DataFrame, orders: Any, pseudonym: str, salt: str | None = None
) -> tuple[pd.Series | None, pd.DataFrame]:
    """Look a customer up by pseudonymous id: their figures and their order history.

    Parameters
    ----------
    customers : pandas.DataFrame
        One row per customer (``customer_id`` and any of segment, p_churn, risk_tier, clv ...).
    orders : pandas.DataFrame or ibis Table
        customer_id, order_ts, amount, status (and optionally channel); an ibis
        table is filtered in the store.
    pseudonym : str
        The ``cust_...`` id shown in reports.
    salt : str, optional
        Pseudonymisation salt (the environment's by default).

    Returns
    -------
    tuple
        (the customer's row without personal columns, or None when unknown;
        their orders, newest first, without the CRM key).
    """
    require_columns(customers, ["customer_id"])
    ids = pseudonymise(customers.customer_id, salt)
    hit = customers[ids.to_numpy() == pseudonym.strip()]
    if hit.empty:
        return None, pd.DataFrame(columns=["order_ts", "amount", "status"])
    key = hit.customer_id.iloc[0]
    row = safe_columns(hit).iloc[0]
    if orders is None:  # subscriber data without orders
        return row, pd.DataFrame(columns=["order_ts", "amount", "status"])
    if isinstance(orders, pd.DataFrame):
        history = orders[orders.customer_id == key]
    else:  # an ibis table: only this customer's rows leave the store
        history = orders.filter(orders.customer_id == key).to_pandas()
    history = history.drop(columns="customer_id")
    return row, history.sort_values("order_ts", ascending=False).reset_index(drop=True)


def targeting_view(targets: pd.DataFrame, threshold: float, budget: int) -> dict[str, float]:
    """Return what a retention campaign gives at a churn threshold and a contact budget.

    Customers with ``p_churn >= threshold`` are eligible; the ``budget`` with the
    highest expected value among them are contacted.

    Parameters
    ----------
    targets : pandas.DataFrame
        p_churn and expected_value per customer (:func:`crm_analytics.churn.retention_targets`).
    threshold : float
        Smallest churn probability contacted.
    budget : int
        Most contacts.

    Returns
    -------
    dict
        eligible, contacted, expected_value (sum over the contacted), mean_p_churn.
    """
    require_columns(targets, ["p_churn", "expected_value"])
    eligible = targets[targets.p_churn >= threshold].sort_values("expected_value", ascending=False)
    chosen = eligible.head(max(int(budget), 0))
    return {"eligible": len(eligible), "contacted": len(chosen),
            "expected_value": float(chosen.expected_value.sum()),
            "mean_p_churn": float(chosen.p_churn.mean()) if len(chosen) else float("nan")}  # fmt: skip


def forecast_view(
    history: pd.DataFrame, forecasts: pd.DataFrame, series: str, horizon: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return one series' history and its first ``horizon`` forecast periods.

    Parameters
    ----------
    history : pandas.DataFrame
        period, series, value (the ``sales_series`` table).
    forecasts : pandas.DataFrame
        series, period, point and interval columns (the ``forecast`` table).
    series : str
        Series shown.
    horizon : int
        Forecast periods shown.

    Returns
    -------
    tuple
        (history with period and value; forecast rows).
    """
    require_columns(history, ["period", "series", "value"])
    require_columns(forecasts, ["period", "series", "point"])
    h = history[history.series == series][["period", "value"]].sort_values("period")
    f = forecasts[forecasts.series == series].sort_values("period").head(horizon)
    return h.reset_index(drop=True), f.reset_index(drop=True)


def _show(obj: Any) -> None:
    """Display an object in the notebook."""
    from IPython.display import display

    display(obj)


def segment_explorer(
    customers: pd.DataFrame, interactive: bool = True, default: str | None = None
) -> Any:
    """Pick a segment and see its profile and top members.

    Parameters
    ----------
    customers : pandas.DataFrame
        See :func:`segment_view`.
    interactive : bool, default True
        A widget (JupyterLab) or the static view of ``default`` (reports).
    default : str, optional
        Segment first shown (the largest by default).

    Returns
    -------
    ipywidgets.Widget or None
        The widget (None when static).
    """
    names = customers.segment.value_counts().index.tolist()
    first = default if default in names else names[0]
    if not interactive:
        profile, members = segment_view(customers, first)
        _show(table(profile.to_frame("median").reset_index(names="feature"), f"Profile of {first}"))
        _show(
            table(
                members,
                f"Top members of {first} (pseudonymous ids); open the notebook in JupyterLab to explore",
            )
        )
        return None
    import ipywidgets as w

    pick = w.Dropdown(options=names, value=first, description="segment")
    out = w.Output()

    def render(_: Any = None) -> None:
        profile, members = segment_view(customers, pick.value)
        out.clear_output()
        with out:
            _show(
                table(
                    profile.to_frame("median").reset_index(names="feature"),
                    f"Profile of {pick.value}",
                )
            )
            _show(table(members, f"Top members of {pick.value} (pseudonymous ids)"))

    pick.observe(render, names="value")
    render()
    return w.VBox([pick, out])


def customer_lookup(customers: pd.DataFrame, orders: Any, interactive: bool = True) -> Any:
    """Type a pseudonymous id and see the customer's segment, churn risk, value and orders.

    Parameters
    ----------
    customers, orders : pandas.DataFrame
        See :func:`customer_view`.
    interactive : bool, default True
        A widget, or (reports) a note on how to use it.

    Returns
    -------
    ipywidgets.Widget or None
        The widget (None when static).
    """
    if not interactive:
        _show(markdown("*Customer lookup: open this notebook in JupyterLab and type a pseudonymous id "
                       "(`cust_...`) from any table of this report.*"))  # fmt: skip
        return None
    import ipywidgets as w

    box = w.Text(placeholder="cust_...", description="customer")
    out = w.Output()

    def render(_: Any = None) -> None:
        row, history = customer_view(customers, orders, box.value)
        out.clear_output()
        with out:
            if row is None:
                print(translate("no customer with this pseudonymous id"))
                return
            _show(table(row.to_frame("value").reset_index(names="field"), "Customer"))
            _show(table(history.head(50), f"{len(history)} orders, newest first"))

    box.observe(render, names="value")
    return w.VBox([box, out])


def targeting_explorer(targets: pd.DataFrame, interactive: bool = True) -> Any:
    """Move a churn threshold and a contact budget; see who is contacted and the value saved.

    Parameters
    ----------
    targets : pandas.DataFrame
        See :func:`targeting_view`.
    interactive : bool, default True
        A widget, or (reports) the view at threshold 0.5 and the positive-value budget.

    Returns
    -------
    ipywidgets.Widget or None
        The widget (None when static).
    """
    positive = int((targets.expected_value > 0).sum())
    if not interactive:
        v = targeting_view(targets, 0.5, positive)
        _show(table(pd.DataFrame([v]), "Retention campaign at churn threshold 0.5 and a budget of "
                    f"{positive:,} contacts (move both in JupyterLab)"))  # fmt: skip
        return None
    import ipywidgets as w

    thr = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="threshold")
    bud = w.IntSlider(value=positive, min=0, max=max(len(targets), 1), step=max(len(targets) // 100, 1),
                      description="budget")  # fmt: skip
    out = w.Output()

    def render(_: Any = None) -> None:
        import matplotlib.pyplot as plt

        from crm_analytics.plots import plot_budget_curve

        v = targeting_view(targets, thr.value, bud.value)
        out.clear_output(wait=True)
        with out:
            eligible = targets[targets.p_churn >= thr.value].reset_index(drop=True)
            eligible = eligible.assign(contacted=np.arange(1, len(eligible) + 1),
                                       cumulative_value=eligible.expected_value.cumsum())  # fmt: skip
            ax = plot_budget_curve(eligible)
            ax.axvline(v["contacted"], color="C3", lw=1)
            plt.show()
            _show(table(pd.DataFrame([v]), "Campaign at this threshold and budget"))

    thr.observe(render, names="value")
    bud.observe(render, names="value")
    render()
    return w.VBox([w.HBox([thr, bud]), out])


def forecast_explorer(
    history: pd.DataFrame, forecasts: pd.DataFrame, interactive: bool = True
) -> Any:
    """Pick a series and a horizon; see its history and forecast with intervals.

    Parameters
    ----------
    history, forecasts : pandas.DataFrame
        See :func:`forecast_view`.
    interactive : bool, default True
        A widget, or (reports) nothing more than the figures already shown.

    Returns
    -------
    ipywidgets.Widget or None
        The widget (None when static).
    """
    if not interactive:
        _show(
            markdown(
                "*Forecast explorer: open this notebook in JupyterLab to pick any series and horizon.*"
            )
        )
        return None
    import ipywidgets as w

    names = forecasts.series.drop_duplicates().tolist()
    pick = w.Dropdown(options=names, value=names[0], description="series")
    steps = int(forecasts.groupby("series").size().max())
    hor = w.IntSlider(value=steps, min=1, max=steps, description="horizon")
    out = w.Output()

    def render(_: Any = None) -> None:
        import matplotlib.pyplot as plt

        from crm_analytics.plots import plot_forecast

        h, f = forecast_view(history, forecasts, pick.value, hor.value)
        out.clear_output(wait=True)
        with out:
            plot_forecast(h, f, value="value")
            plt.show()

    pick.observe(render, names="value")
    hor.observe(render, names="value")
    render()
    return w.VBox([w.HBox([pick, hor]), out])
