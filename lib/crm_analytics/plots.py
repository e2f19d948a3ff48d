"""Figures, in one theme. Every ``plot_*`` draws on ``ax`` (a new one if None) and returns it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import font_manager
from matplotlib.axes import Axes

from crm_analytics import i18n

_Plot = TypeVar("_Plot", bound=Callable[..., Any])

CJK_FONTS: tuple[str, ...] = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)
"""Fonts able to show Chinese text, in order of preference."""

PALETTE = "deep"


def set_theme() -> list[str]:
    """Apply the project's plot theme; use a CJK-capable font when one is installed.

    Returns
    -------
    list of str
        The sans-serif font list now in effect.
    """
    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not any(f in installed for f in CJK_FONTS):
        # a font installed after matplotlib built its cache is not listed yet: add it
        for path in font_manager.findSystemFonts():
            if any(k in path.lower() for k in ("wqy", "notosanscjk", "noto-cjk", "sourcehansans")):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError):
                    continue
        installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [f for f in CJK_FONTS if f in installed]
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    fonts = [*cjk, "DejaVu Sans"]
    plt.rcParams.update(
        {
            "font.sans-serif": fonts,
            "axes.unicode_minus": False,
            "figure.figsize": (8, 4.2),
            "figure.dpi": 100,
            "axes.titleweight": "normal",  # the CJK font (WenQuanYi Micro Hei) has no bold face
            "axes.titlesize": "large",
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return fonts


def _ax(ax: Axes | None) -> Axes:
    """Return ``ax`` or a new Axes."""
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _date_axis(ax: Axes) -> None:
    """Use compact, non-overlapping date labels on the x axis."""
    locator = mdates.AutoDateLocator(maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def localise_figure(fig: Any, language: str | None = None) -> None:
    """Translate the titles, axis labels, annotations and legends of a figure in place.

    Tick labels are left alone: they are data values (segments, tiers, dates).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    language : str, optional
        Target language; the report language set by ``report.set_language`` when omitted.
    """
    language = i18n.check_language(language or i18n.current_language())
    if language == "en":
        return
    for ax in fig.axes:
        ax.set_title(i18n.translate(ax.get_title(), language))
        ax.set_xlabel(i18n.translate(ax.get_xlabel(), language))
        ax.set_ylabel(i18n.translate(ax.get_ylabel(), language))
        legend = ax.get_legend()
        texts = list(ax.texts)
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
        for text in texts:
            text.set_text(i18n.translate(text.get_text(), language))
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.set_text(i18n.translate(fig._suptitle.get_text(), language))


def _localised(plot: _Plot) -> _Plot:
    """Wrap a ``plot_*`` function so its labels come out in the report language."""

    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = plot(*args, **kwargs)
        first = result.flat[0] if isinstance(result, np.ndarray) else result
        localise_figure(first.figure)
        return result

    return wrapper  # type: ignore[return-value]


@_localised
def plot_source_rows(counts: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Bar chart of raw rows per table.

    Parameters
    ----------
    counts : pandas.DataFrame
        Columns ``table`` and ``rows``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    sns.barplot(data=counts, y="table", x="rows", ax=ax, color=sns.color_palette(PALETTE)[0])
    ax.set(title="Rows read per table", xlabel="rows", ylabel="")
    return ax


@_localised
def plot_row_accounting(acc: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Rows not kept per table (exact duplicates, merged records, quarantined), with the kept share.

    Parameters
    ----------
    acc : pandas.DataFrame
        Columns ``table``, ``kept``, ``duplicates``, ``quarantined`` and optionally ``merged``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    lost = [c for c in ("duplicates", "merged", "quarantined") if c in acc.columns]
    d = acc.set_index("table")[["kept", *lost]]
    total = d.sum(axis=1).replace(0, 1)
    colours = {"duplicates": "C1", "merged": "C4", "quarantined": "C3"}
    d[lost].plot.barh(stacked=True, ax=ax, width=0.7, color=[colours[c] for c in lost])
    labels = [f"{t} ({k / n:.1%} kept)" for t, k, n in zip(d.index, d.kept, total, strict=True)]
    ax.set_yticks(range(len(d)), labels)
    ax.set(title="Rows not kept, per table", xlabel="rows", ylabel="")
    ax.legend(loc="lower right", frameon=True)
    return ax


@_localised
def plot_segment_sizes(summary: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Horizontal bars of customers and revenue share per segment.

    Parameters
    ----------
    summary : pandas.DataFrame
        Output of :func:`crm_analytics.segment.segment_summary`.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    d = summary.sort_values("customers")
    y = np.arange(len(d))
    ax.barh(y - 0.2, d.share_customers * 100, height=0.4, label="% of customers")
    ax.barh(y + 0.2, d.share_revenue * 100, height=0.4, label="% of revenue")
    ax.set_yticks(y, d.segment)
    ax.set(title="RFM segments: size and revenue", xlabel="%")
    ax.legend(loc="lower right")
    return ax


@_localised
def plot_rf_heatmap(rfm: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Heatmap of customer counts by recency and frequency score.

    Parameters
    ----------
    rfm : pandas.DataFrame
        Columns ``r_score`` and ``f_score``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    grid = rfm.pivot_table(
        index="f_score", columns="r_score", values="customer_id", aggfunc="count", fill_value=0
    ).sort_index(ascending=False)
    sns.heatmap(grid, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set(
        title="Customers by R and F score",
        xlabel="recency score (5 = most recent)",
        ylabel="frequency score",
    )
    return ax


@_localised
def plot_k_selection(
    silhouette: dict[int, float], inertia: dict[int, float], chosen: int, ax: Axes | None = None
) -> Axes:
    """Silhouette (left axis) and inertia (right axis) per number of clusters.

    Parameters
    ----------
    silhouette, inertia : dict
        k -> score.
    chosen : int
        Selected k, marked.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The silhouette axes.
    """
    ax = _ax(ax)
    ks = sorted(silhouette)
    ax.plot(ks, [silhouette[k] for k in ks], marker="o", label="silhouette")
    ax.axvline(chosen, color="grey", ls="--", lw=1)
    ax.set(title=f"Choosing k (chosen: {chosen})", xlabel="clusters k", ylabel="silhouette")
    ax2 = ax.twinx()
    ax2.plot(ks, [inertia[k] for k in ks], marker="s", color="C1", label="inertia")
    ax2.set_ylabel("inertia")
    ax2.grid(False)
    return ax


@_localised
def plot_roc(y_true: np.ndarray, scores: dict[str, np.ndarray], ax: Axes | None = None) -> Axes:
    """ROC curves of several models on the same labels.

    Parameters
    ----------
    y_true : array-like
        Labels.
    scores : dict
        Model name -> predicted probabilities.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    ax = _ax(ax)
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y_true, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y_true, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(
        title="ROC on the test customers", xlabel="false positive rate", ylabel="true positive rate"
    )
    ax.legend(loc="lower right")
    return ax


@_localised
def plot_risk_tiers(tiers: pd.Series, ax: Axes | None = None) -> Axes:
    """Bar chart of customers per churn-risk tier.

    Parameters
    ----------
    tiers : pandas.Series
        Tier of each customer (low/medium/high).
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    counts = tiers.value_counts().reindex(["low", "medium", "high"], fill_value=0)
    ax.bar(counts.index, counts.to_numpy(), color=["C2", "C1", "C3"])
    ax.set(title="Customers per churn-risk tier", ylabel="customers")
    return ax


@_localised
def plot_forecast(
    history: pd.DataFrame, forecast: pd.DataFrame, value: str = "revenue", ax: Axes | None = None
) -> Axes:
    """History with the point forecast and its 80% and 95% intervals.

    Parameters
    ----------
    history : pandas.DataFrame
        Columns ``period`` and ``value``.
    forecast : pandas.DataFrame
        Columns ``period``, ``point``, ``lower_80``, ``upper_80``, ``lower_95``, ``upper_95``.
    value : str, default "revenue"
        History column.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    ax.plot(history.period, history[value], color="C0", label="actual")
    ax.fill_between(
        forecast.period,
        forecast.lower_95,
        forecast.upper_95,
        color="C1",
        alpha=0.15,
        label="95% interval",
    )
    ax.fill_between(
        forecast.period,
        forecast.lower_80,
        forecast.upper_80,
        color="C1",
        alpha=0.3,
        label="80% interval",
    )
    ax.plot(forecast.period, forecast.point, color="C1", label="forecast")
    ax.set(
        title=f"{value[:1].upper()}{value[1:].replace('_', ' ')}: history and forecast",
        xlabel="",
        ylabel=value,
    )
    ax.legend(loc="upper left")
    _date_axis(ax)
    return ax


@_localised
def plot_quality_trend(history: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Each data-quality measure (lowest over all columns) across runs.

    Parameters
    ----------
    history : pandas.DataFrame
        Columns ``run_id``, ``measured_at``, ``metric``, ``value``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    order = history.drop_duplicates("run_id").sort_values("measured_at").run_id.tolist()
    low = history.groupby(["run_id", "metric"]).value.min().unstack()
    low = low.reindex(order)
    for metric in low.columns:
        ax.plot(range(len(low)), low[metric], marker="o", label=metric)
    ax.set_xticks(range(len(low)), [r[-16:] for r in low.index], rotation=30, ha="right")
    ax.set(title="Data quality across runs (worst column)", ylabel="share", ylim=(None, 1.01))
    ax.legend(loc="lower left")
    return ax


@_localised
def plot_lifecycle(counts: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Plot customers per lifecycle stage at each snapshot, stacked.

    Parameters
    ----------
    counts : pandas.DataFrame
        Columns ``snapshot``, ``stage``, ``customers``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    from crm_analytics.features import LIFECYCLE_STAGES

    ax = _ax(ax)
    wide = counts.pivot_table(index="snapshot", columns="stage", values="customers", fill_value=0)
    wide = wide.reindex(columns=[s for s in LIFECYCLE_STAGES if s in wide.columns])
    ax.stackplot(
        wide.index, *[wide[c] for c in wide.columns], labels=list(wide.columns), alpha=0.85
    )
    ax.set(title="Customers by lifecycle stage", ylabel="customers")
    ax.legend(loc="upper left", fontsize="small")
    _date_axis(ax)
    return ax


@_localised
def plot_calibration_holdout(
    frame: pd.DataFrame, max_frequency: int = 7, ax: Axes | None = None
) -> Axes:
    """Plot mean holdout purchases, actual and predicted, by calibration-period frequency.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``frequency``, ``frequency_holdout`` and ``predicted_holdout``.
    max_frequency : int, default 7
        Frequencies above this are pooled.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    f = frame.assign(bucket=frame.frequency.clip(upper=max_frequency))
    means = f.groupby("bucket")[["frequency_holdout", "predicted_holdout"]].mean()
    ax.plot(means.index, means.frequency_holdout, marker="o", label="actual")
    ax.plot(means.index, means.predicted_holdout, marker="s", ls="--", label="model")
    ax.set(title="Calibration vs holdout purchases", xlabel=f"repeat purchases in calibration ({max_frequency}+ pooled)",
           ylabel="mean purchases in holdout")  # fmt: skip
    ax.legend()
    return ax


@_localised
def plot_cohort_heatmap(
    matrix: pd.DataFrame, title: str, fmt: str = ".0%", ax: Axes | None = None
) -> Axes:
    """Heatmap of a cohort matrix (rows: acquisition month, columns: months since).

    Parameters
    ----------
    matrix : pandas.DataFrame
        Cohort x period values.
    title : str
        Figure title.
    fmt : str, default ".0%"
        Number format of the annotations.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    m = matrix.copy()
    m.index = [pd.Timestamp(i).strftime("%Y-%m") for i in m.index]
    sns.heatmap(m, annot=len(m.columns) <= 14, fmt=fmt, cmap="Blues", cbar=False, ax=ax,
                annot_kws={"fontsize": 7})  # fmt: skip
    ax.set(title=title, xlabel="months since first purchase", ylabel="cohort")
    return ax


@_localised
def plot_satisfaction_trend(months: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Plot NPS (left axis) and mean CSAT (right axis) per month.

    Parameters
    ----------
    months : pandas.DataFrame
        Columns ``month``, ``nps``, ``csat``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The NPS axes.
    """
    ax = _ax(ax)
    ax.plot(months.month, months.nps, marker="o", label="NPS")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(title="Satisfaction over time", ylabel="NPS")
    ax2 = ax.twinx()
    ax2.plot(months.month, months.csat, marker="s", color="C1", label="CSAT")
    ax2.set_ylabel("mean CSAT (1-5)")
    ax2.grid(False)
    _date_axis(ax)
    return ax


@_localised
def plot_model_matrix(matrix: pd.DataFrame, title: str, ax: Axes | None = None) -> Axes:
    """Plot a frequency x recency matrix of a purchase model as a heatmap.

    Parameters
    ----------
    matrix : pandas.DataFrame
        Output of :func:`crm_analytics.clv.model_matrix`.
    title : str
        Figure title.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    sns.heatmap(matrix.sort_index(ascending=False), cmap="viridis", ax=ax, cbar=True)
    ax.set(title=title, xlabel="recency (time of the last purchase)", ylabel="repeat purchases")
    return ax


@_localised
def plot_repeat_curve(
    periods: np.ndarray, actual: np.ndarray, expected: np.ndarray, ax: Axes | None = None
) -> Axes:
    """Plot cumulative repeat purchases, actual and expected by the model, over time.

    Parameters
    ----------
    periods : numpy.ndarray
        Period numbers.
    actual, expected : numpy.ndarray
        Cumulative repeat purchases.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    ax.plot(periods, actual, label="actual")
    ax.plot(periods, expected, ls="--", label="model")
    ax.set(
        title="Cumulative repeat purchases: actual vs model",
        xlabel="period",
        ylabel="repeat purchases",
    )
    ax.legend()
    return ax


@_localised
def plot_projection(points: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Scatter customers on two principal components, coloured by cluster.

    Parameters
    ----------
    points : pandas.DataFrame
        Columns ``pc1``, ``pc2``, ``cluster`` (``attrs["explained"]`` optional).
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    sns.scatterplot(
        data=points, x="pc1", y="pc2", hue="cluster", palette=PALETTE, s=12, alpha=0.6, ax=ax
    )
    ev = points.attrs.get("explained", [float("nan"), float("nan")])
    ax.set(title="Clusters on two principal components", xlabel=f"PC1 ({ev[0]:.0%} of variance)",
           ylabel=f"PC2 ({ev[1]:.0%} of variance)")  # fmt: skip
    return ax


@_localised
def plot_budget_curve(targets: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Plot the expected value saved against the number of customers contacted.

    Parameters
    ----------
    targets : pandas.DataFrame
        Columns ``contacted`` and ``cumulative_value`` (:func:`crm_analytics.churn.retention_targets`).
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    ax.plot(targets.contacted, targets.cumulative_value)
    if len(targets):
        best = targets.cumulative_value.idxmax()
        ax.axvline(targets.contacted[best], color="grey", ls="--", lw=1)
        ax.annotate(f"best: {targets.contacted[best]:,} contacts", (targets.contacted[best], targets.cumulative_value[best]),
                    textcoords="offset points", xytext=(5, -15))  # fmt: skip
    ax.set(
        title="Retention budget curve",
        xlabel="customers contacted (best first)",
        ylabel="expected value saved",
    )
    return ax


@_localised
def plot_gains(y_true: np.ndarray, scores: dict[str, np.ndarray], ax: Axes | None = None) -> Axes:
    """Cumulative gains: share of churners found when contacting the riskiest customers first.

    Parameters
    ----------
    y_true : array-like
        Labels (1 = churned).
    scores : dict
        Model name -> churn scores.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    from crm_analytics.churn import gains_curve

    ax = _ax(ax)
    for name, p in scores.items():
        g = gains_curve(y_true, p)
        ax.plot(g.share_contacted, g.share_of_churners_found, label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="random")
    ax.set(title="Cumulative gains on the test customers", xlabel="share of customers contacted",
           ylabel="share of churners found")  # fmt: skip
    ax.legend(loc="lower right")
    return ax


@_localised
def plot_calibration(
    y_true: np.ndarray, scores: dict[str, np.ndarray], bins: int = 10, ax: Axes | None = None
) -> Axes:
    """Calibration curves: observed churn rate against mean predicted probability per bin.

    Parameters
    ----------
    y_true : array-like
        Labels.
    scores : dict
        Model name -> churn probabilities.
    bins : int, default 10
        Quantile bins.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    from sklearn.calibration import calibration_curve

    ax = _ax(ax)
    for name, p in scores.items():
        observed, predicted = calibration_curve(y_true, p, n_bins=bins, strategy="quantile")
        ax.plot(predicted, observed, marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect")
    ax.set(title="Calibration on the test customers", xlabel="predicted churn probability",
           ylabel="observed churn rate")  # fmt: skip
    ax.legend(loc="upper left")
    return ax


@_localised
def plot_importance(importance: pd.DataFrame, top: int = 15, ax: Axes | None = None) -> Axes:
    """Horizontal bars of permutation importance (drop in ROC AUC), largest on top.

    Parameters
    ----------
    importance : pandas.DataFrame
        label, importance, importance_std (:func:`crm_analytics.churn.permutation_importance_table`).
    top : int, default 15
        Features shown.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    d = importance.head(top).iloc[::-1]
    ax.barh(
        [i18n.translate(str(v)) for v in d.label], d.importance, xerr=d.importance_std, color="C0"
    )
    ax.set(title="What the model relies on (permutation importance)",
           xlabel="drop in ROC AUC when the feature is shuffled")  # fmt: skip
    return ax


@_localised
def plot_backtest(backtest: pd.DataFrame, metric: str = "roc_auc", ax: Axes | None = None) -> Axes:
    """Plot a metric per model across backtest origins (one line per model).

    Parameters
    ----------
    backtest : pandas.DataFrame
        origin, model and ``metric`` (:func:`crm_analytics.churn.rolling_backtest`).
    metric : str, default "roc_auc"
        Column plotted.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    for name, g in backtest.groupby("model", sort=False):
        ax.plot(g.origin.astype(str), g[metric], marker="o", label=str(name))
    ax.set(title=f"{metric.replace('_', ' ')} by backtest origin", xlabel="cutoff",
           ylabel=metric.replace("_", " "))  # fmt: skip
    ax.legend(loc="best", fontsize="small")
    return ax


@_localised
def plot_model_errors(ranking: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Bars of each forecasting model's backtest error, with seasonal naive marked.

    Parameters
    ----------
    ranking : pandas.DataFrame
        model and ``relative_mase`` (:func:`crm_analytics.forecast.rank_models`: MASE
        relative to seasonal naive, geometric mean over series), drawn with a line at
        1; or model and ``mase``.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    relative = "relative_mase" in ranking.columns
    col = "relative_mase" if relative else "mase"
    d = ranking.sort_values(col)
    colors = ["C3" if m == "seasonal_naive" else "C0" for m in d.model]
    ax.barh(d.model, d[col], color=colors)
    ax.invert_yaxis()
    if relative:
        ax.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
        ax.set(title="Backtest error by model, relative to seasonal naive (lower is better)",
               xlabel="MASE / seasonal-naive MASE (geometric mean over series)")  # fmt: skip
    else:
        ax.set(title="Backtest error by model (mean MASE, lower is better)", xlabel="MASE")
    return ax


@_localised
def plot_decomposition(
    periods: pd.Series, parts: pd.DataFrame, labels: dict[str, str] | None = None,
    axes: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Three panels: observed with trend, seasonality, and each calendar effect.

    Parameters
    ----------
    periods : pandas.Series
        Period starts.
    parts : pandas.DataFrame
        :func:`crm_analytics.forecast.decompose` output.
    labels : dict, optional
        Effect column -> legend label.
    axes : numpy.ndarray of Axes, optional
        Three axes to draw on; a new figure otherwise.

    Returns
    -------
    numpy.ndarray
        The three axes.
    """
    if axes is None:
        _, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    labels = labels or {}
    axes[0].plot(periods, parts.observed, color="C0", label="observed")
    axes[0].plot(periods, parts.trend, color="C1", label="trend")
    axes[0].set(title="Observed and trend")
    axes[0].legend(loc="upper left")
    axes[1].plot(periods, parts.seasonality, color="C2")
    axes[1].set(title="Yearly seasonality")
    for i, col in enumerate(c for c in parts.columns if c.startswith("effect_")):
        axes[2].plot(
            periods,
            parts[col],
            color=f"C{(i + 3) % 10}",
            label=labels.get(col, col.removeprefix("effect_")),
        )
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set(title="Calendar effects (holidays, festivals, promotions)")
    axes[2].legend(loc="upper left", fontsize="small", ncols=2)
    _date_axis(axes[2])
    return axes


@_localised
def plot_gap_distribution(
    gaps: pd.DataFrame, window_days: int, max_days: int = 365, ax: Axes | None = None
) -> Axes:
    """Histogram of days between a customer's purchases, with the churn window marked.

    Parameters
    ----------
    gaps : pandas.DataFrame
        gap_days and n (:func:`crm_analytics.features.gap_distribution`).
    window_days : int
        The churn window.
    max_days : int, default 365
        Longer gaps are shown in the last bar.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    ax = _ax(ax)
    d = gaps.assign(gap_days=gaps.gap_days.clip(upper=max_days)).groupby("gap_days").n.sum()
    ax.bar(d.index, d.to_numpy(), width=1.0, color="C0")
    covered = gaps.n[gaps.gap_days <= window_days].sum() / max(gaps.n.sum(), 1)
    ax.axvline(window_days, color="C3", ls="--", lw=1.5,
               label=f"churn window {window_days} days ({covered:.0%} of gaps are shorter)")  # fmt: skip
    ax.set(title="Days between a customer's purchases", xlabel=f"days (longer than {max_days} in the last bar)",
           ylabel="gaps")  # fmt: skip
    ax.legend(loc="upper right")
    return ax
