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
from pathlib import Path
from typing import Any

import pandas as pd

from crm_analytics.schemas import TABLES

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


def pseudonymise(ids: pd.Series, salt: str | None = None) -> pd.Series:
    """Map customer keys to stable pseudonymous ids (``cust_`` + 10 hex digits).

    Parameters
    ----------
    ids : pandas.Series
        Customer keys.
    salt : str, optional
        Secret salt; ``$CRM_PSEUDONYM_SALT`` or a fixed default when omitted. Set
        your own secret so that ids cannot be reversed by hashing known keys.

    Returns
    -------
    pandas.Series
        Pseudonymous ids, same index.
    """
    s = salt if salt is not None else os.environ.get(PSEUDONYM_SALT_ENV, "crm-analytics")
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

    Parameters
    ----------
    frame : pandas.DataFrame
        Table to show.
    caption : str
        Caption shown above the table.
    precision : int, default 2
        Decimals of floats.

    Returns
    -------
    pandas.io.formats.style.Styler
        The styled table.
    """
    return (
        frame.style.hide(axis="index")
        .format(precision=precision, thousands=",")
        .set_caption(caption)
    )


def _json_default(value: Any) -> Any:
    """Convert numpy and pandas scalars for JSON."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def _clean_json(value: Any) -> Any:
    """Replace NaN and infinities (invalid JSON) by None, recursively."""
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


def render_html(notebook: Path, html_path: Path) -> Path:
    """Render an executed notebook to HTML without code cells or prompts.

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
    exporter = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")
    return html_path


HEADLINES: dict[str, list[tuple[str, str]]] = {
    "collect": [("rows_read", "rows read"), ("sources", "sources")],
    "clean": [
        ("kept", "rows kept"),
        ("duplicates", "exact duplicates"),
        ("quarantined", "rows quarantined"),
    ],
    "segment": [
        ("customers_scored", "customers scored"),
        ("clusters", "clusters"),
        ("silhouette", "silhouette"),
    ],
    "churn": [
        ("customers_labelled", "customers labelled"),
        ("churn_rate", "churn rate"),
        ("best_model", "best model"),
        ("holdout_roc_auc", "test ROC AUC"),
    ],
    "forecast": [
        ("series", "series"),
        ("chosen_model", "total: chosen model"),
        ("chosen_mase", "its backtest MASE"),
        ("seasonal_naive_mase", "seasonal-naive MASE"),
    ],
}
"""Key figures shown on the report index, per stage."""


def _fmt(value: Any) -> str:
    """Format a figure for the index page."""
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def write_index(run_dir: Path, manifest: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """Write ``index.html`` linking the stage reports with the run's key figures.

    Parameters
    ----------
    run_dir : Path
        The run's report folder.
    manifest : dict
        The run manifest (stages with status and duration).
    metrics : dict
        Stage -> metrics.

    Returns
    -------
    Path
        The index file.
    """
    rows = []
    for st in manifest.get("stages", []):
        name = st["stage"]
        figures = metrics.get(name, {})
        key = "; ".join(
            f"{label}: {_fmt(figures[k])}"
            for k, label in HEADLINES.get(name, [])
            if figures.get(k) is not None
        )
        if st.get("reason"):
            key = html.escape(st["reason"])
        link = (
            f'<a href="{html.escape(st["html"])}">{html.escape(st["notebook"])}</a>'
            if st.get("html")
            else html.escape(st["notebook"])
        )
        rows.append(
            f"<tr><td>{link}</td><td>{html.escape(st['status'])}</td>"
            f"<td>{st.get('seconds', 0):.1f} s</td><td>{key}</td></tr>"
        )
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>crm-analytics run {html.escape(manifest["run_id"])}</title>
<style>
body {{ font-family: system-ui, 'Noto Sans CJK SC', sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f5f8; }}
</style></head><body>
<h1>crm-analytics report</h1>
<p>Run <b>{html.escape(manifest["run_id"])}</b>, parameters <code>{html.escape(manifest["params_file"])}</code>,
status <b>{html.escape(manifest["status"])}</b>, {manifest.get("seconds", 0):.0f} s in total.
Input fingerprint <code>{html.escape(str(manifest.get("input_fingerprint", ""))[:16])}</code>.</p>
<table><tr><th>stage report</th><th>status</th><th>time</th><th>key figures</th></tr>
{"".join(rows)}
</table>
<p>Machine-readable: <a href="metrics.json">metrics.json</a>, <a href="manifest.json">manifest.json</a>.
Customers appear under pseudonymous ids only.</p>
</body></html>
"""
    path = run_dir / "index.html"
    path.write_text(body, encoding="utf-8")
    return path
