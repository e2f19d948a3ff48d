"""Report helpers: stage metrics, pseudonymous ids, captioned tables, HTML rendering.

Stakeholder reports never show raw personal data: customer-level tables carry a
pseudonymous id from :func:`pseudonymise` instead of the CRM key, and personal
columns (see ``TableSpec.personal``) are dropped by :func:`safe_columns`.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crm_analytics import i18n
from crm_analytics.schemas import TABLES
from crm_analytics.summary import INDEX_CSS, SUMMARY_CSS, _t, findings, format_value, key_figures

PSEUDONYM_SALT_ENV = "CRM_PSEUDONYM_SALT"
"""Environment variable holding the secret salt of pseudonymous ids."""

PERSONAL_COLUMNS: frozenset[str] = frozenset(c for t in TABLES.values() for c in t.personal) | {
    "name",
    "email",
    "phone",
    "address",
    "birth_date",
    "comment",
}
"""Columns never shown in a report."""


class MissingSecret(ValueError):
    """A secret the run needs is not set in the environment."""


def pseudonym_salt() -> str:
    """Return the secret salt of pseudonymous ids and erasure hashes.

    There is no built-in default: with a salt anyone could know, a report's ids
    could be reversed by hashing candidate CRM keys. ``make run``, ``make lab`` and
    ``make test`` set ``$CRM_PSEUDONYM_SALT`` from ``.secrets/pseudonym-salt``
    (created once, readable only by its owner) unless it is already set; a
    scheduler sets it from its own secret store.

    Returns
    -------
    str
        The value of ``$CRM_PSEUDONYM_SALT``.

    Raises
    ------
    MissingSecret
        If the variable is unset or empty.
    """
    salt = os.environ.get(PSEUDONYM_SALT_ENV, "")
    if not salt:
        raise MissingSecret(
            f"{PSEUDONYM_SALT_ENV} is not set: pseudonymous ids need a secret salt of your "
            f"own, e.g. `export {PSEUDONYM_SALT_ENV}=$(openssl rand -hex 32)` (keep it: "
            "ids and the erasure suppression list depend on it); the Makefile's targets "
            "use .secrets/pseudonym-salt"
        )
    return salt


def pseudonymise(ids: pd.Series, salt: str | None = None) -> pd.Series:
    """Map customer keys to stable pseudonymous ids (``cust_`` + 10 hex digits).

    Parameters
    ----------
    ids : pandas.Series
        Customer keys.
    salt : str, optional
        Secret salt; :func:`pseudonym_salt` (``$CRM_PSEUDONYM_SALT``) when omitted.

    Returns
    -------
    pandas.Series
        Pseudonymous ids, same index.

    Raises
    ------
    MissingSecret
        If no salt is given and ``$CRM_PSEUDONYM_SALT`` is not set.
    """
    s = salt if salt is not None else pseudonym_salt()
    return ids.astype(str).map(
        lambda v: "cust_" + hashlib.sha256(f"{s}|{v}".encode()).hexdigest()[:10]
    )


def safe_columns(frame: pd.DataFrame, id_col: str = "customer_id") -> pd.DataFrame:
    """Return a copy fit for a report: personal columns dropped, ids pseudonymised.

    Parameters
    ----------
    frame : pandas.DataFrame
        A customer-level table.
    id_col : str, default "customer_id"
        Column with the CRM key, replaced by ``customer`` (pseudonymous).

    Returns
    -------
    pandas.DataFrame
        New frame.
    """
    out = frame.drop(columns=[c for c in frame.columns if c in PERSONAL_COLUMNS])
    if id_col in out.columns:
        out.insert(0, "customer", pseudonymise(out[id_col]))
        out = out.drop(columns=id_col)
    return out


def table(frame: pd.DataFrame, caption: str, precision: int = 2) -> Any:
    """Return a captioned, index-free Styler for display in a notebook report.

    Cell values, column names and the caption are HTML-escaped: text from the
    data (a category called ``<script>...``) shows as text, never as markup.
    Missing values show as a dash, not as "nan" or "<NA>".
    Text columns are left-aligned, and those holding phrases (over 24
    characters) at least 16em wide, so that they do not wrap a word per line.

    Parameters
    ----------
    frame : pandas.DataFrame
        Table to show.
    caption : str
        Caption shown above the table, translated into the report language.
    precision : int, default 2
        Decimals of floats.

    Returns
    -------
    pandas.io.formats.style.Styler
        The styled table.
    """
    styler = frame.style.hide(axis="index").format(
        precision=precision, thousands=",", escape="html", na_rep="–"
    )
    styler = styler.format_index(escape="html", axis=1)
    # text reads from the left; a column of phrases gets room instead of a word per line
    text = {}
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
            longest = frame[col].dropna().astype(str).str.len().max() if len(frame) else 0
            wide = "; min-width: 16em" if longest and longest > 24 else ""
            text[col] = [
                {"selector": "td", "props": f"text-align: left{wide}"},
                {"selector": "th", "props": "text-align: left"},
            ]
    if text:
        styler = styler.set_table_styles(text, overwrite=False)
    return styler.set_caption(html.escape(i18n.translate(caption)))


def set_language(language: str) -> str:
    """Set the report language of captions, plot labels and :func:`markdown` text.

    Parameters
    ----------
    language : {"en", "zh"}
        The ``report_language`` parameter.

    Returns
    -------
    str
        The language now in effect.

    Raises
    ------
    ValueError
        If the language is not supported.
    """
    return i18n.set_language(language)


AUDIENCES: tuple[str, ...] = ("stakeholder", "analyst")
"""Report audiences: aggregates and a few pseudonymous examples, or drill-down tables as well."""


def check_audience(audience: str) -> str:
    """Return ``audience`` if it is a report audience.

    Either way reports never hold raw personal data; ``analyst`` adds tables of
    every customer under pseudonymous ids.

    Parameters
    ----------
    audience : str
        The ``audience`` parameter.

    Returns
    -------
    str
        The same value.

    Raises
    ------
    ValueError
        If it is not one of :data:`AUDIENCES`.
    """
    if audience not in AUDIENCES:
        raise ValueError(f"audience must be one of {', '.join(AUDIENCES)}, got {audience!r}")
    return audience


def markdown(text: str) -> Any:
    """Return generated markdown text in the report language, for display.

    Parameters
    ----------
    text : str
        English markdown (numbers and names already filled in).

    Returns
    -------
    IPython.display.Markdown
        The translated text.
    """
    from IPython.display import Markdown

    return Markdown(i18n.translate(text))


_ITABLES_READY = False


def interactive_table(
    frame: pd.DataFrame, caption: str, precision: int = 2, page_length: int = 15
) -> Any:
    """Return a paged, sortable, searchable table that works in a static HTML report (itables).

    The DataTables library is embedded in the notebook the first time (offline
    mode), so the report needs no server and no network. Cell text is escaped.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table (pass :func:`safe_columns` output for customer rows).
    caption : str
        Caption.
    precision : int, default 2
        Decimals of floats.
    page_length : int, default 15
        Rows per page.

    Returns
    -------
    IPython.display.HTML
        The table, ready to display.
    """
    global _ITABLES_READY
    from IPython.display import HTML, display
    from itables import init_notebook_mode, to_html_datatable

    if not _ITABLES_READY:
        init_notebook_mode(all_interactive=False, connected=False)
        _ITABLES_READY = True
    shown = frame.copy()
    for c in shown.select_dtypes("float").columns:
        shown[c] = shown[c].round(precision)
    display(HTML(f"<p><b>{html.escape(i18n.translate(caption))}</b></p>"))
    return HTML(to_html_datatable(shown, connected=False, pageLength=page_length, showIndex=False,
                                  allow_html=False, display_logo_when_loading=False))  # fmt: skip


def _json_default(value: Any) -> Any:
    """Convert numpy and pandas scalars for JSON."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def _clean_json(value: Any) -> Any:
    """Replace NaN, infinities and pandas' missing values (invalid JSON) by None, recursively."""
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_stage_metrics(run_dir: str, stage: str, metrics: dict[str, Any]) -> Path | None:
    """Write a stage's headline figures to ``<run_dir>/stages/<stage>.json``.

    Parameters
    ----------
    run_dir : str
        The run's report folder; empty when a notebook runs interactively (nothing is written).
    stage : str
        Stage name.
    metrics : dict
        JSON-serialisable figures (NumPy scalars are converted, NaN becomes null).

    Returns
    -------
    Path or None
        The file written, or None without a run folder.
    """
    if not run_dir:
        return None
    path = Path(run_dir) / "stages" / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(_clean_json(metrics), indent=2, default=_json_default, ensure_ascii=False),
        encoding="utf-8",
    )
    return path


def read_stage_metrics(run_dir: Path) -> dict[str, Any]:
    """Read every stage's metrics of a run.

    Parameters
    ----------
    run_dir : Path
        The run's report folder.

    Returns
    -------
    dict
        Stage -> metrics.
    """
    out = {}
    for f in sorted((run_dir / "stages").glob("*.json")):
        out[f.stem] = json.loads(f.read_text(encoding="utf-8"))
    return out


MARKDOWN_TAGS: frozenset[str] = frozenset(
    {"b", "strong", "i", "em", "code", "br", "p", "ul", "ol", "li", "a", "span", "sub", "sup"}
)
"""HTML tags kept in generated markdown outputs; everything else is escaped or removed."""


def sanitize_markdown(text: str | list[str]) -> str:
    """Make a generated markdown output safe: markup from the data cannot become live HTML.

    Sentences such as ``f"The largest segment is {name}"`` are built from data;
    ``nh3`` (the ammonia HTML sanitiser) removes scripts and event-handler
    attributes and escapes every tag outside :data:`MARKDOWN_TAGS`. Markdown
    syntax itself is plain text and passes through.

    Parameters
    ----------
    text : str or list of str
        The markdown (a list of lines as stored in notebooks).

    Returns
    -------
    str
        Safe markdown.
    """
    import nh3

    if isinstance(text, list):
        text = "".join(text)
    return nh3.clean(text, tags=set(MARKDOWN_TAGS), attributes={"a": {"href"}, "span": {"class"}},
                     clean_content_tags={"script", "style"}, link_rel=None)  # fmt: skip


def render_html(notebook: Path, html_path: Path) -> Path:
    """Render an executed notebook to one self-contained HTML file without code cells or prompts.

    The ``crm_report`` template (``templates/crm_report``) is JupyterLab's
    without the scripts it would fetch from the network (require.js, MathJax,
    Mermaid, widget managers): images are embedded, so the file opens offline
    and can be e-mailed. Generated markdown outputs are sanitised first
    (:func:`sanitize_markdown`).

    Parameters
    ----------
    notebook : Path
        Executed ``.ipynb``.
    html_path : Path
        Destination.

    Returns
    -------
    Path
        ``html_path``.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:
                data["text/markdown"] = sanitize_markdown(data["text/markdown"])
    exporter = HTMLExporter(
        template_name="crm_report",
        extra_template_basedirs=[str(Path(__file__).parent / "templates")],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def _glance_tables(metrics: dict[str, Any], language: str) -> str:
    """Return the "pipeline at a glance" sections of the run index."""
    e = html.escape
    parts = []
    per_table = (metrics.get("clean") or {}).get("per_table") or {}
    if per_table:
        cols = ["input", "kept", "duplicates", "merged", "quarantined"]
        rows = "".join(
            f"<tr><td>{e(t)}</td>"
            + "".join(f'<td class="n">{format_value(v.get(c, 0))}</td>' for c in cols)
            + "</tr>"
            for t, v in per_table.items()
        )
        head = "".join(f'<th class="n">{i18n.translate(c, language)}</th>' for c in cols)
        parts.append(
            f"<h2>{_t(language, 'Row accounting', '行数核对')}</h2><table><tr><th>{_t(language, 'table', '表')}</th>{head}</tr>{rows}</table>"
        )
    dq = (metrics.get("clean") or {}).get("data_quality") or {}
    if dq:
        measures = ["completeness", "uniqueness", "validity", "consistency"]
        rows = "".join(
            f"<tr><td>{e(t)}</td>"
            + "".join(f'<td class="n">{format_value(v.get(c))}</td>' for c in measures)
            + "</tr>"
            for t, v in dq.items()
        )
        head = "".join(f'<th class="n">{i18n.translate(c, language)}</th>' for c in measures)
        parts.append(
            f"<h2>{_t(language, 'Data quality (worst column per table)', '数据质量（各表最差列）')}</h2>"
            f"<table><tr><th>{_t(language, 'table', '表')}</th>{head}</tr>{rows}</table>"
        )
    segments = (metrics.get("segment") or {}).get("segments") or {}
    if segments:
        top = max(segments.values()) or 1
        rows = "".join(
            f'<tr><td>{e(k)}</td><td class="n">{format_value(v)}</td><td><span class="bar" style="width:{200 * v / top:.0f}px"></span></td></tr>'
            for k, v in sorted(segments.items(), key=lambda kv: -kv[1])
        )
        parts.append(
            f'<h2>{_t(language, "Segment mix", "客户细分构成")}</h2><table><tr><th>{_t(language, "segment", "细分")}</th><th class="n">{_t(language, "customers", "客户数")}</th><th></th></tr>{rows}</table>'
        )
    tiers = (metrics.get("churn") or {}).get("risk_tiers") or {}
    if tiers:
        rows = "".join(
            f'<tr><td>{e(k)}</td><td class="n">{format_value(tiers.get(k, 0))}</td></tr>'
            for k in ("high", "medium", "low")
        )
        parts.append(
            f'<h2>{_t(language, "Churn risk", "流失风险")}</h2><table><tr><th>{_t(language, "tier", "风险层级")}</th><th class="n">{_t(language, "customers", "客户数")}</th></tr>{rows}</table>'
        )
    nxt = (metrics.get("forecast") or {}).get("forecast_next") or []
    if nxt:
        rows = "".join(
            f'<tr><td>{e(str(r.get("period", ""))[:10])}</td><td class="n">{format_value(r.get("point"))}</td>'
            f'<td class="n">{format_value(r.get("lower_95"))} - {format_value(r.get("upper_95"))}</td></tr>'
            for r in nxt
        )
        series = e(str((metrics.get("forecast") or {}).get("main_series", "")))
        parts.append(
            f"<h2>{_t(language, 'Forecast', '预测')}: {series}</h2><table><tr><th>{_t(language, 'period', '期间')}</th>"
            f'<th class="n">{_t(language, "forecast", "预测")}</th><th class="n">{_t(language, "95% interval", "95% 区间")}</th></tr>{rows}</table>'
        )
    return "".join(parts)


def write_index(
    run_dir: Path,
    manifest: dict[str, Any],
    metrics: dict[str, Any],
    previous: dict[str, Any] | None = None,
    language: str = "en",
) -> Path:
    """Write ``index.html``: the run at a glance, linking the stage reports.

    Parameters
    ----------
    run_dir : Path
        The run's report folder.
    manifest : dict
        The run manifest (stages with status, duration and skip reasons).
    metrics : dict
        Stage -> metrics.
    previous : dict, optional
        The previous run's metrics, for the changes shown.
    language : {"en", "zh"}, default "en"
        Report language.

    Returns
    -------
    Path
        The index file (self-contained: inline CSS, no images, no scripts).
    """
    e = html.escape
    previous = previous or {}
    rows = []
    for st in manifest.get("stages", []):
        name = st["stage"]
        figures = metrics.get(name, {})
        key = "; ".join(
            f"{e(k.label)}: {k.formatted()}"
            + (f" ({e(k.change())})" if previous.get(name) and k.change() else "")
            for k in key_figures(name, figures, previous.get(name), language)
        )
        if st.get("reason"):
            key = e(st["reason"])
        link = (
            f'<a href="{e(st["html"])}">{e(st["notebook"])}</a>'
            if st.get("html")
            else e(st["notebook"])
        )
        rows.append(
            f'<tr><td>{link}</td><td class="{e(st["status"])}">{e(i18n.translate(st["status"], language))}</td>'
            f'<td class="n">{st.get("seconds", 0):.1f} s</td><td>{key}</td></tr>'
        )
    said = "".join(
        f"<li>{s}</li>"
        for st in manifest.get("stages", [])
        for s in findings(
            st["stage"], metrics.get(st["stage"], {}), previous.get(st["stage"]), language
        )
    )
    prev_run = manifest.get("previous_run")
    prev_link = ""
    if prev_run:
        prev_link = f' {_t(language, "Compared with", "对比")} <a href="../{e(prev_run)}/index.html">{e(prev_run)}</a>'
        if manifest.get("comparison"):
            prev_link += f' (<a href="comparison.html">{_t(language, "what changed", "变化")}</a>)'
        prev_link += "."
    body = f"""<!DOCTYPE html>
<html lang="{"zh" if language == "zh" else "en"}"><head><meta charset="utf-8"><title>crm-analytics run {e(manifest["run_id"])}</title>
<style>{INDEX_CSS}</style>{SUMMARY_CSS}</head><body>
<h1>{_t(language, "crm-analytics report", "crm-analytics 报告")}</h1>
<p>{_t(language, "Run", "运行")} <b>{e(manifest["run_id"])}</b>, {_t(language, "parameters", "参数")} <code>{e(manifest["params_file"])}</code>,
{_t(language, "status", "状态")} <b class="{e(manifest["status"])}">{e(i18n.translate(manifest["status"], language))}</b>, {_t(language, f"{manifest.get('seconds', 0):.0f} s in total", f"共 {manifest.get('seconds', 0):.0f} 秒")}.
{_t(language, "Input fingerprint", "输入指纹")} <code>{e(str(manifest.get("input_fingerprint", ""))[:16])}</code>.{prev_link}
<a href="../index.html">{_t(language, "All runs", "全部运行")}</a>.</p>
<div class="crm-summary" id="executive-summary"><h2>{_t(language, "Executive summary", "摘要")}</h2><ul>{said}</ul></div>
<h2>{_t(language, "Stages", "各阶段")}</h2>
<table><tr><th>{_t(language, "stage report", "阶段报告")}</th><th>{_t(language, "status", "状态")}</th><th class="n">{_t(language, "time", "耗时")}</th><th>{_t(language, "key figures", "关键数字")}</th></tr>
{"".join(rows)}
</table>
{_glance_tables(metrics, language)}
<p>{_t(language, "Machine-readable", "机器可读")}: <a href="metrics.json">metrics.json</a>, <a href="manifest.json">manifest.json</a>.
{_t(language, "Customers appear under pseudonymous ids only.", "客户仅以假名 ID 出现。")}</p>
</body></html>
"""
    path = run_dir / "index.html"
    path.write_text(body, encoding="utf-8")
    return path


@dataclass(frozen=True)
class RunRecord:
    """One run folder under ``reports/`` as its manifest describes it.

    Attributes
    ----------
    path : Path
        The run folder.
    manifest : dict
        Its ``manifest.json``.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        """Run id (the folder name)."""
        return self.path.name

    @property
    def started_at(self) -> str:
        """ISO start time ("" when unknown)."""
        return str(self.manifest.get("started_at", ""))

    @property
    def ok(self) -> bool:
        """Whether the run finished without a failed stage."""
        return self.manifest.get("status") == "ok"

    @property
    def stages(self) -> frozenset[str]:
        """Stages the run executed or skipped for lack of data (not those left out by ``--only``)."""
        return frozenset(s["stage"] for s in self.manifest.get("stages", []) if "stage" in s)


def read_runs(reports: Path) -> list[RunRecord]:
    """Return every run folder with a readable manifest, oldest first.

    The ``latest`` link and folders whose manifest cannot be read are left out.

    Parameters
    ----------
    reports : Path
        Folder of run folders.

    Returns
    -------
    list of RunRecord
        Sorted by start time, then run id.
    """
    runs = []
    for manifest in reports.glob("*/manifest.json"):
        if manifest.parent.is_symlink():
            continue
        try:
            runs.append(
                RunRecord(manifest.parent, json.loads(manifest.read_text(encoding="utf-8")))
            )
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(runs, key=lambda r: (r.started_at, r.name))


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so it is never seen half-written.

    Parameters
    ----------
    path : Path
        The file.
    text : str
        Its content (UTF-8).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_run_list(reports: Path) -> Path:
    """Write ``reports/index.html``: every run, newest first, with its headline figures.

    Parameters
    ----------
    reports : Path
        Folder of run folders.

    Returns
    -------
    Path
        The file written.
    """
    e = html.escape
    rows = []
    for run in reversed(read_runs(reports)):
        started, name, m = run.started_at, run.name, run.manifest
        try:
            metrics = json.loads((run.path / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            metrics = {}
        figures = [
            ("rows kept", (metrics.get("clean") or {}).get("kept")),
            ("customers scored", (metrics.get("segment") or {}).get("customers_scored")),
            ("churn AUC", (metrics.get("churn") or {}).get("holdout_roc_auc")),
            ("high risk", ((metrics.get("churn") or {}).get("risk_tiers") or {}).get("high")),
            ("forecast", (metrics.get("forecast") or {}).get("forecast_total")),
        ]
        shown = "; ".join(f"{label}: {format_value(v)}" for label, v in figures if v is not None)
        stages = ", ".join(s["stage"] for s in m.get("stages", []))
        rows.append(
            f'<tr><td><a href="{e(name)}/index.html">{e(name)}</a></td><td>{e(started[:19])}</td>'
            f"<td><code>{e(str(m.get('params_file', '')))}</code></td><td>{e(stages)}</td>"
            f'<td class="{e(str(m.get("status")))}">{e(str(m.get("status")))}</td>'
            f'<td class="n">{float(m.get("seconds") or 0):.0f} s</td><td>{shown}</td></tr>'
        )
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>crm-analytics runs</title><style>{INDEX_CSS}</style></head><body>
<h1>crm-analytics runs</h1>
<p>{len(rows)} runs, newest first. <a href="latest/index.html">Latest successful run</a>.</p>
<table><tr><th>run</th><th>started (UTC)</th><th>parameters</th><th>stages</th><th>status</th><th class="n">time</th><th>headline figures</th></tr>
{"".join(rows)}
</table></body></html>
"""
    path = reports / "index.html"
    write_atomic(path, body)  # a reader (or a concurrent run) never sees half a page
    return path
