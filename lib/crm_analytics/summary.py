"""Executive summaries: key figures with their change since the previous run, and findings in words.

Everything here is generated from a run's ``metrics.json`` (and the previous
run's), never typed by hand: the runner puts the summary at the top of each
stage report and the run index. Text from the data (segment names, feature
names) is HTML-escaped; no personal data is read.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from crm_analytics.i18n import check_language, translate
from crm_analytics.schemas import require_columns

INDEX_CSS = """
body { font-family: system-ui, 'Noto Sans CJK SC', 'WenQuanYi Micro Hei', sans-serif; margin: 2rem auto; max-width: 64rem; color: #222; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1.2rem; }
td, th { border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f5f8; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #4c72b0; height: .8rem; display: inline-block; }
.ok { color: #1a7f37; } .failed { color: #b42318; } .skipped { color: #8a6d00; }
@media print { a { color: inherit; text-decoration: none; } }
"""
"""Style of the run index, run list and comparison pages."""


def _t(language: str, en: str, zh: str) -> str:
    """Return the text in the report language."""
    return zh if check_language(language) == "zh" else en


def get(metrics: dict[str, Any] | None, path: str) -> Any:
    """Return a nested metric by dotted path (None when absent).

    Parameters
    ----------
    metrics : dict or None
        A stage's metrics.
    path : str
        Keys joined by dots, e.g. ``"models.gradient boosting.roc_auc"`` (a key may
        hold spaces but not dots).

    Returns
    -------
    Any
        The value or None.
    """
    value: Any = metrics
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


@dataclass(frozen=True)
class KeyFigure:
    """One headline number of a stage.

    Attributes
    ----------
    label : str
        What it is, in the report language.
    value : float or int or str
        This run's value.
    previous : float or int or str or None
        The previous run's value (None for a first run).
    kind : str
        "count", "share" (0-1), "score" (unitless, 3 decimals) or "money".
    higher_is_better : bool or None
        Direction of a good change (None when neither).
    """

    label: str
    value: Any
    previous: Any
    kind: str = "count"
    higher_is_better: bool | None = None

    def formatted(self) -> str:
        """Return the value as shown."""
        return format_value(self.value, self.kind)

    def change(self) -> str:
        """Return the change since the previous run as shown ("" when not comparable)."""
        a, b = self.value, self.previous
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return ""
        if (isinstance(a, float) and not math.isfinite(a)) or (
            isinstance(b, float) and not math.isfinite(b)
        ):
            return ""
        diff = a - b
        if diff == 0:
            return "="
        arrow = "▲" if diff > 0 else "▼"
        # a change too small to show at the figure's precision reads as "about the same"
        if self.kind == "share":
            return "≈" if abs(diff) < 0.0005 else f"{arrow} {abs(diff) * 100:.1f} pts"
        if self.kind == "score":
            return "≈" if abs(diff) < 0.0005 else f"{arrow} {abs(diff):.3f}"
        if b:
            rel = abs(diff) / abs(b)
            return "≈" if rel < 0.0005 else f"{arrow} {rel:.1%}"
        return f"{arrow} {format_value(abs(diff), self.kind)}"

    def tone(self) -> str:
        """Return "good", "bad" or "neutral" for the change."""
        a, b = self.value, self.previous
        if (
            self.higher_is_better is None
            or not isinstance(a, int | float)
            or not isinstance(b, int | float)
        ):
            return "neutral"
        if a == b:
            return "neutral"
        return "good" if (a > b) == self.higher_is_better else "bad"


def format_value(value: Any, kind: str = "auto") -> str:
    """Format a figure for a summary, index or comparison page.

    Parameters
    ----------
    value : Any
        The value; None and non-finite numbers show as ``-``.
    kind : str, default "auto"
        "count", "share", "score", "money", or "auto" (three decimals below 10,
        none from 10, thousands separators for integers).

    Returns
    -------
    str
        Text (HTML-escaped for text values).
    """
    if value is None:
        return "-"
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if kind == "share":
        return f"{value:.1%}"
    if kind == "score":
        return f"{value:.3f}"
    if kind == "money":
        return f"{value:,.0f}"
    if kind == "auto":
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.2f}"


def _largest(d: dict[str, Any] | None) -> tuple[str, float] | None:
    """Return the key with the largest numeric value."""
    if not d:
        return None
    items = [(k, v) for k, v in d.items() if isinstance(v, int | float)]
    return max(items, key=lambda kv: kv[1]) if items else None


def key_figures(
    stage: str, m: dict[str, Any], prev: dict[str, Any] | None = None, language: str = "en"
) -> list[KeyFigure]:
    """Return the three to six headline numbers of a stage.

    Parameters
    ----------
    stage : str
        Stage name.
    m : dict
        This run's metrics of the stage.
    prev : dict, optional
        The previous run's metrics of the stage.
    language : {"en", "zh"}, default "en"
        Label language.

    Returns
    -------
    list of KeyFigure
        Figures whose value is known.
    """
    L = language
    specs: dict[str, list[tuple[str, str, str, bool | None]]] = {
        "collect": [
            ("rows_read", _t(L, "rows read", "读取行数"), "count", None),
            ("sources", _t(L, "source files and tables", "数据源"), "count", None),
            ("customer_records", _t(L, "customer records", "客户记录"), "count", True),
        ],
        "clean": [
            ("kept", _t(L, "rows kept", "保留行数"), "count", True),
            ("_kept_share", _t(L, "share of rows kept", "保留比例"), "share", True),
            ("quarantined", _t(L, "rows quarantined", "隔离行数"), "count", False),
            ("merged", _t(L, "customer records merged", "合并的客户记录"), "count", None),
            (
                "duplicate_detection.f1",
                _t(L, "duplicate detection F1", "重复识别 F1"),
                "score",
                True,
            ),
        ],
        "segment": [
            ("customers_scored", _t(L, "customers with purchases", "有购买的客户"), "count", True),
            ("segments.Champions", _t(L, "Champions", "冠军客户"), "count", True),
            ("clusters", _t(L, "behaviour clusters", "行为聚类数"), "count", None),
            ("clv_total", _t(L, "12-month customer value", "12个月客户价值"), "money", True),
            (
                "recommendations.hit_rate",
                _t(L, "recommendation hit rate", "推荐命中率"),
                "share",
                True,
            ),
        ],
        "churn": [
            ("holdout_roc_auc", _t(L, "test ROC AUC", "测试集 ROC AUC"), "score", True),
            ("churn_rate", _t(L, "churn rate", "流失率"), "share", False),
            ("risk_tiers.high", _t(L, "high-risk customers", "高风险客户"), "count", False),
            (
                "retention_expected_value",
                _t(L, "expected value of retention", "挽留预期价值"),
                "money",
                True,
            ),
        ],
        "forecast": [
            (
                "forecast_total",
                _t(L, "forecast, next periods", "预测（未来各期合计）"),
                "money",
                None,
            ),
            (
                "chosen_mase",
                _t(L, "backtest MASE (chosen model)", "回测 MASE（所选模型）"),
                "score",
                False,
            ),
            (
                "seasonal_naive_mase",
                _t(L, "backtest MASE (seasonal naive)", "回测 MASE（季节朴素）"),
                "score",
                False,
            ),
            ("series", _t(L, "series forecast", "预测序列数"), "count", None),
        ],
    }
    out = []
    for path, label, kind, better in specs.get(stage, []):
        if path == "_kept_share":
            value = m.get("kept") / m["input"] if m.get("input") else None
            before = prev.get("kept") / prev["input"] if prev and prev.get("input") else None
        else:
            value, before = get(m, path), get(prev, path)
        if value is not None:
            out.append(KeyFigure(label, value, before, kind, better))
    return out


def findings(
    stage: str, m: dict[str, Any], prev: dict[str, Any] | None = None, language: str = "en"
) -> list[str]:
    """Return plain-language findings of a stage, generated from its metrics.

    Parameters
    ----------
    stage : str
        Stage name.
    m : dict
        This run's metrics of the stage.
    prev : dict, optional
        The previous run's metrics.
    language : {"en", "zh"}, default "en"
        Sentence language.

    Returns
    -------
    list of str
        Sentences (HTML-escaped).
    """
    L = language
    e = html.escape
    out: list[str] = []
    if stage == "collect":
        big = _largest(m.get("rows_per_table"))
        if big:
            out.append(_t(L, f"{m.get('rows_read', 0):,} rows came in from {m.get('sources', 0)} sources; the largest "
                             f"table is {e(big[0])} with {big[1]:,.0f} rows.",
                          f"共从 {m.get('sources', 0)} 个数据源读取 {m.get('rows_read', 0):,} 行；最大的表是 {e(big[0])}，"
                          f"{big[1]:,.0f} 行。"))  # fmt: skip
        if prev and prev.get("input_fingerprint") == m.get("input_fingerprint"):
            out.append(
                _t(
                    L,
                    "The input is identical to the previous run's.",
                    "输入数据与上次运行完全相同。",
                )
            )
    elif stage == "clean" and m.get("input"):
        out.append(_t(L, f"{m['kept'] / m['input']:.1%} of the {m['input']:,} input rows were kept; "
                         f"{m.get('duplicates', 0):,} exact duplicates dropped, {m.get('merged', 0):,} customer records "
                         f"merged and {m.get('quarantined', 0):,} rows quarantined with a reason.",
                      f"{m['input']:,} 行输入中保留 {m['kept'] / m['input']:.1%}；删除完全重复 {m.get('duplicates', 0):,} 行，"
                      f"合并客户记录 {m.get('merged', 0):,} 条，隔离 {m.get('quarantined', 0):,} 行并注明原因。"))  # fmt: skip
        if m.get("all_rows_accounted"):
            out.append(_t(L, "Every input row is accounted for.", "每一行输入都有去向。"))
        if m.get("data_quality_worse"):
            out.append(_t(L, f"{m['data_quality_worse']} data-quality measures got worse since the previous run.",
                          f"有 {m['data_quality_worse']} 项数据质量指标比上次运行变差。"))  # fmt: skip
    elif stage == "segment":
        seg = m.get("segments") or {}
        big = _largest(seg)
        if big:
            total = sum(v for v in seg.values() if isinstance(v, int | float)) or 1
            out.append(_t(L, f"The largest segment is {e(big[0])}: {big[1]:,.0f} customers ({big[1] / total:.0%}).",
                          f"最大的细分群体是 {e(big[0])}：{big[1]:,.0f} 位客户（{big[1] / total:.0%}）。"))  # fmt: skip
        stake = _largest(m.get("value_at_stake"))
        if stake:
            out.append(_t(L, f"Most customer value sits with {e(stake[0])} ({stake[1]:,.0f}).",
                          f"客户价值最集中在 {e(stake[0])}（{stake[1]:,.0f}）。"))  # fmt: skip
        nps = m.get("nps_by_segment") or {}
        if len(nps) >= 2:
            hi, lo = max(nps, key=nps.get), min(nps, key=nps.get)
            out.append(_t(L, f"NPS is highest among {e(hi)} ({nps[hi]:+.0f}) and lowest among {e(lo)} ({nps[lo]:+.0f}).",
                          f"NPS 最高的是 {e(hi)}（{nps[hi]:+.0f}），最低的是 {e(lo)}（{nps[lo]:+.0f}）。"))  # fmt: skip
        rec, pop = get(m, "recommendations.hit_rate"), get(m, "recommendations_popularity.hit_rate")
        if rec is not None and pop is not None:
            out.append(_t(L, f"Of the customers who bought something new after the cutoff, {rec:.0%} bought at least one "
                             f"of their personal recommendations, against {pop:.0%} with the most popular items.",
                          f"截止日之后购买了新商品的客户中，{rec:.0%} 至少买了一件个性化推荐的商品，"
                          f"推荐热门商品时为 {pop:.0%}。"))  # fmt: skip
    elif stage == "churn":
        best = m.get("best_model")
        auc = m.get("holdout_roc_auc")
        if best and auc is not None:
            base = [k for k in (m.get("models") or {}) if k.endswith(" only")]
            base_auc = get(m, f"models.{base[0]}.roc_auc") if base else None
            out.append(_t(L, f"The {e(best)} model ranks customers by churn risk with ROC AUC {auc:.3f}"
                             + (f" ({e(base[0])}: {base_auc:.3f})" if base_auc is not None else "") + ".",
                          f"{e(best)} 模型对流失风险排序的 ROC AUC 为 {auc:.3f}"
                          + (f"（{e(base[0])}：{base_auc:.3f}）" if base_auc is not None else "") + "。"))  # fmt: skip
        high, high_before = get(m, "risk_tiers.high"), get(prev, "risk_tiers.high")
        if high is not None:
            change = ""
            if high_before is not None and high_before != high:
                change = _t(L, f", {'up' if high > high_before else 'down'} from {high_before:,}",
                            f"（上次为 {high_before:,}）")  # fmt: skip
            at = m.get("score_cutoff")
            if m.get("mode") == "evaluate" and at:  # a past cutoff, not today
                out.append(_t(L, f"At the test cutoff {e(str(at))}, {high:,} customers were at high risk{change} "
                                 "(mode score lists who is at risk at the end of the data).",
                              f"测试截止日 {e(str(at))} 时有高风险客户 {high:,} 位{change}"
                              "（mode 设为 score 可列出数据末尾时的风险客户）。"))  # fmt: skip
            else:
                out.append(_t(L, f"{high:,} customers are at high risk{change}.",
                              f"高风险客户 {high:,} 位{change}。"))  # fmt: skip
        lapsed, days = m.get("lapsed_customers"), m.get("active_within_days")
        if lapsed and days:
            out.append(_t(L, f"{lapsed:,} more had been silent for over {days} days: lapsed, a win-back audience, "
                             "not scored for churn.",
                          f"另有 {lapsed:,} 位客户已沉默超过 {days} 天：已流失，属于召回对象，不做流失评分。"))  # fmt: skip
        top = m.get("top_features") or []
        if top:
            out.append(_t(L, "What predicts churn most: " + ", ".join(e(t) for t in top[:3]) + ".",
                          "最能预测流失的因素：" + "、".join(e(translate(t, "zh")) for t in top[:3]) + "。"))  # fmt: skip
        if m.get("retention_consenting_targets"):
            out.append(_t(L, f"Contacting the {m['retention_consenting_targets']:,} consenting customers worth it is "
                             f"expected to save {m.get('retention_expected_value', 0):,.0f}.",
                          f"联系值得挽留且同意营销的 {m['retention_consenting_targets']:,} 位客户，预计可挽回 "
                          f"{m.get('retention_expected_value', 0):,.0f}。"))  # fmt: skip
    elif stage == "forecast":
        chosen, cm, sn = m.get("chosen_model"), m.get("chosen_mase"), m.get("seasonal_naive_mase")
        if chosen and cm is not None and sn:
            out.append(_t(L, f"For {e(str(m.get('main_series')))}, the {e(chosen)} model's backtest error is "
                             f"{abs(1 - cm / sn):.0%} {'below' if cm < sn else 'above'} seasonal naive's.",
                          f"{e(str(m.get('main_series')))} 所选的 {e(chosen)} 模型回测误差比季节朴素法"
                          f"{'低' if cm < sn else '高'} {abs(1 - cm / sn):.0%}。"))  # fmt: skip
        if m.get("forecast_total") is not None:
            out.append(_t(L, f"The next {m.get('horizon')} {m.get('freq')}s are forecast at {m['forecast_total']:,.0f}.",
                          f"未来 {m.get('horizon')} 期预测合计 {m['forecast_total']:,.0f}。"))  # fmt: skip
        effects = m.get("calendar_effects") or {}
        if effects:
            top = max(effects, key=lambda k: abs(effects[k]))
            out.append(_t(L, f"The strongest calendar effect is {e(top.replace('_', ' '))}: {effects[top]:+,.0f} per day.",
                          f"最强的日历效应是 {e(top.replace('_', ' '))}：每天 {effects[top]:+,.0f}。"))  # fmt: skip
        if m.get("fallbacks"):
            out.append(
                _t(
                    L,
                    f"{m['fallbacks']} series fell back to a baseline.",
                    f"{m['fallbacks']} 条序列退回到基准模型。",
                )
            )
    return out


SUMMARY_CSS = """
<style>
.crm-summary { border: 1px solid #d8dde6; border-radius: 8px; padding: .8rem 1rem; margin: .5rem 0 1.2rem; background: #f8fafc; }
.crm-cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: .4rem 0 .8rem; }
.crm-card { flex: 1 1 9rem; background: #fff; border: 1px solid #e3e7ee; border-radius: 6px; padding: .5rem .7rem; }
.crm-card .v { font-size: 1.35rem; font-weight: 600; }
.crm-card .l { font-size: .8rem; color: #555; }
.crm-card .c { font-size: .8rem; color: #777; }
.crm-card .good { color: #1a7f37; } .crm-card .bad { color: #b42318; }
@media print { .crm-summary { break-inside: avoid; } }
</style>
"""


def summary_html(
    stage: str, m: dict[str, Any], prev: dict[str, Any] | None = None, language: str = "en"
) -> str:
    """Return the executive summary block of a stage: key-figure cards and findings.

    Parameters
    ----------
    stage : str
        Stage name.
    m : dict
        This run's metrics of the stage.
    prev : dict, optional
        The previous run's metrics (changes are shown when given).
    language : {"en", "zh"}, default "en"
        Report language.

    Returns
    -------
    str
        Self-contained HTML (inline CSS), safe to put in a markdown cell.
    """
    cards = []
    for k in key_figures(stage, m, prev, language):
        change = k.change()
        since = (
            _t(language, "since the previous run", "较上次")
            if change
            else _t(language, "first run", "首次运行")
        )
        if change and prev is not None:
            since = f'<span class="{k.tone()}">{html.escape(change)}</span> {since}'
        elif prev is not None and not change:
            since = ""
        cards.append(f'<div class="crm-card"><div class="v">{k.formatted()}</div>'
                     f'<div class="l">{html.escape(k.label)}</div><div class="c">{since}</div></div>')  # fmt: skip
    items = "".join(f"<li>{s}</li>" for s in findings(stage, m, prev, language))
    title = _t(language, "Executive summary", "摘要")
    return (f'{SUMMARY_CSS}<div class="crm-summary" id="executive-summary"><h2>{title}</h2>'
            f'<div class="crm-cards">{"".join(cards)}</div><ul>{items}</ul></div>')  # fmt: skip


def migration_matrix(before: pd.DataFrame, after: pd.DataFrame, column: str) -> pd.DataFrame:
    """Return how many customers moved from each value of ``column`` to each other between two runs.

    Parameters
    ----------
    before, after : pandas.DataFrame
        customer_id and ``column`` in the previous and the current run.
    column : str
        E.g. "segment" or "risk_tier".

    Returns
    -------
    pandas.DataFrame
        Counts, previous value in rows, current in columns; customers present in
        only one run appear as "(new)" or "(gone)".

    Raises
    ------
    ValueError
        If a column is missing.
    """
    for frame, name in ((before, "before"), (after, "after")):
        require_columns(frame, ["customer_id", column], name)
    j = before[["customer_id", column]].merge(
        after[["customer_id", column]],
        on="customer_id",
        how="outer",
        suffixes=("_before", "_after"),
    )
    j[f"{column}_before"] = j[f"{column}_before"].fillna("(new)")
    j[f"{column}_after"] = j[f"{column}_after"].fillna("(gone)")
    out = pd.crosstab(j[f"{column}_before"], j[f"{column}_after"])
    out.index.name, out.columns.name = "previous run", "this run"
    return out


def forecast_vs_actual(
    previous: dict[str, Any] | None, current: dict[str, Any] | None
) -> pd.DataFrame:
    """Return the previous run's forecast next to what happened, for the periods now observed.

    Parameters
    ----------
    previous, current : dict or None
        The forecast-stage metrics of the previous and the current run
        (``forecast_next`` and ``recent_actuals``, same main series).

    Returns
    -------
    pandas.DataFrame
        period, forecast, lower_95, upper_95, actual, error (actual - forecast),
        inside_95; empty when nothing overlaps.
    """
    cols = ["period", "forecast", "lower_95", "upper_95", "actual", "error", "inside_95"]
    if not previous or not current or previous.get("main_series") != current.get("main_series"):
        return pd.DataFrame(columns=cols)
    f = pd.DataFrame(previous.get("forecast_next") or [])
    a = pd.DataFrame(current.get("recent_actuals") or [])
    if f.empty or a.empty:
        return pd.DataFrame(columns=cols)
    j = f.rename(columns={"point": "forecast"}).merge(
        a.rename(columns={"value": "actual"}), on="period"
    )
    j["error"] = j.actual - j.forecast
    j["inside_95"] = (j.actual >= j.lower_95) & (j.actual <= j.upper_95)
    return j[cols]


def quality_changes(
    previous: dict[str, Any] | None, current: dict[str, Any] | None
) -> pd.DataFrame:
    """Return each table's data-quality measures in the previous and the current run.

    Parameters
    ----------
    previous, current : dict or None
        The clean-stage metrics (``data_quality``: table -> measure -> share).

    Returns
    -------
    pandas.DataFrame
        table, measure, previous, current, change.
    """
    rows = []
    now = (current or {}).get("data_quality") or {}
    before = (previous or {}).get("data_quality") or {}
    for table, measures in now.items():
        for measure, value in measures.items():
            if value is None:
                continue
            old = (before.get(table) or {}).get(measure)
            rows.append({"table": table, "measure": measure, "previous": old, "current": value,
                         "change": None if old is None else value - old})  # fmt: skip
    return pd.DataFrame(rows, columns=["table", "measure", "previous", "current", "change"])


def _frame_html(frame: pd.DataFrame, index: bool = False) -> str:
    """Return an escaped HTML table; missing values (None or NaN, in any column) show as ``-``."""
    text = frame.select_dtypes(exclude="number").columns
    frame = frame.assign(**{c: frame[c].astype(object).where(frame[c].notna(), "-") for c in text})
    return frame.to_html(index=index, escape=True, border=0, na_rep="-", float_format=lambda v: f"{v:,.3f}"
                         if abs(v) < 10 else f"{v:,.0f}")  # fmt: skip


def comparison_html(
    run_id: str,
    previous_id: str,
    metrics: dict[str, Any],
    previous: dict[str, Any],
    state: pd.DataFrame | None,
    previous_state: pd.DataFrame | None,
    language: str = "en",
) -> str:
    """Return the run-comparison page: segment migration, churn-tier changes, forecast vs actual, data quality.

    Parameters
    ----------
    run_id, previous_id : str
        The two runs.
    metrics, previous : dict
        Their metrics (stage -> figures).
    state, previous_state : pandas.DataFrame or None
        Per-customer snapshots (customer_id, segment, risk_tier); only counts are shown.
    language : {"en", "zh"}, default "en"
        Report language.

    Returns
    -------
    str
        A self-contained HTML page (inline CSS, no scripts, no images).
    """
    e = html.escape
    L = language
    parts = [f"<h1>{_t(L, 'What changed since the previous run', '与上次运行相比的变化')}</h1>",
             f'<p><a href="index.html">{e(run_id)}</a> {_t(L, "against", "对比")} '
             f'<a href="../{e(previous_id)}/index.html">{e(previous_id)}</a>.</p>']  # fmt: skip
    for column, title in (("segment", _t(L, "Segment migration", "细分迁移")),
                          ("risk_tier", _t(L, "Churn-risk tier changes", "流失风险层级变化"))):  # fmt: skip
        if (
            state is not None
            and previous_state is not None
            and column in state
            and column in previous_state
        ):
            m = migration_matrix(
                previous_state.dropna(subset=[column]), state.dropna(subset=[column]), column
            )
            stayed = int(sum(m.loc[i, i] for i in m.index if i in m.columns))
            parts.append(f"<h2>{title}</h2><p>{_t(L, f'{stayed:,} customers kept their {column.replace(chr(95), chr(32))}.', f'{stayed:,} 位客户保持不变。')}</p>"
                         + _frame_html(m, index=True))  # fmt: skip
    fva = forecast_vs_actual(previous.get("forecast"), metrics.get("forecast"))
    parts.append(f"<h2>{_t(L, 'Forecast against what happened', '预测与实际')}</h2>")
    if fva.empty:
        parts.append(
            f"<p>{_t(L, 'No period of the previous forecast has been observed yet.', '上次预测的期间尚无实际数据。')}</p>"
        )
    else:
        inside = fva.inside_95.mean()
        parts.append(f"<p>{_t(L, f'{len(fva)} forecast periods are now observed; {inside:.0%} fell inside the 95% interval.', f'已有 {len(fva)} 期实际数据；{inside:.0%} 落在 95% 区间内。')}</p>"
                     + _frame_html(fva))  # fmt: skip
    dq = quality_changes(previous.get("clean"), metrics.get("clean"))
    if not dq.empty:
        parts.append(f"<h2>{_t(L, 'Data quality', '数据质量')}</h2>" + _frame_html(dq))
    return (f'<!DOCTYPE html><html lang="{L}"><head><meta charset="utf-8"><title>crm-analytics: {e(run_id)} vs '
            f"{e(previous_id)}</title><style>{INDEX_CSS}</style></head><body>{''.join(parts)}</body></html>")  # fmt: skip
