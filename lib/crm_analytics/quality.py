"""Data-quality metrics per table and column, kept per run to show trends (stage 02).

Four measures, each a share between 0 and 1, computed in the store after cleaning:

- completeness: non-missing values among the kept rows;
- uniqueness: distinct values among the non-missing ones (reported for key columns);
- validity: input rows not quarantined because of this column;
- consistency: for a reference (foreign key), input rows whose reference resolves;
  for ``category``, kept rows whose label maps to a known category.

:func:`record_quality` appends a run's metrics to ``dq_history`` in the store;
:func:`quality_changes` compares a run with the previous one and flags every
metric that got worse by more than a tolerance.
"""

from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd
from ibis.backends import BaseBackend

from crm_analytics.schemas import TABLES

HISTORY_TABLE = "dq_history"
METRICS: tuple[str, ...] = ("completeness", "uniqueness", "validity", "consistency")


def quality_metrics(con: BaseBackend, known_categories: list[str] | None = None) -> pd.DataFrame:
    """Measure completeness, uniqueness, validity and consistency of every canonical column.

    Parameters
    ----------
    con : BaseBackend
        Store after cleaning (clean tables, ``quarantine``, ``row_accounting``).
    known_categories : list of str, optional
        Canonical product categories, for the consistency of ``category``.

    Returns
    -------
    pandas.DataFrame
        table, column, metric, value (NaN where a metric does not apply, e.g. an empty table).
    """
    acc = con.table("row_accounting").to_pandas().set_index("table")
    q = con.table("quarantine")
    by_col = q.group_by(["table", "column"]).aggregate(n=q.count()).to_pandas()
    by_col = by_col.set_index(["table", "column"]).n
    refs = q.filter(q.reason.contains(": no valid "))
    fk = refs.group_by(["table", "column"]).aggregate(n=refs.count())
    fk = fk.to_pandas().set_index(["table", "column"]).n
    rows = []
    for name, spec in TABLES.items():
        t = con.table(name)
        cols = spec.columns
        aggs = {"_n": t.count()}
        for i, c in enumerate(cols):
            aggs[f"nn{i}"] = t[c].count()
            if c in spec.key:
                aggs[f"d{i}"] = t[c].nunique()
        if name == "order_items" and known_categories:
            aggs["_known"] = t.category.isin(known_categories).sum()
        got = t.aggregate(**aggs).to_pandas().iloc[0]
        n_kept = int(got["_n"])
        n_input = int(acc.loc[name, "input"]) if name in acc.index else n_kept
        for i, c in enumerate(cols):
            nn = int(got[f"nn{i}"])
            values = {
                "completeness": nn / n_kept if n_kept else float("nan"),
                "uniqueness": (int(got[f"d{i}"]) / nn if nn else float("nan"))
                if c in spec.key
                else float("nan"),
                "validity": 1 - int(by_col.get((name, c), 0)) / n_input
                if n_input
                else float("nan"),
                "consistency": float("nan"),
            }
            if c in spec.foreign_keys and n_input:
                values["consistency"] = 1 - int(fk.get((name, c), 0)) / n_input
            if name == "order_items" and c == "category" and known_categories and nn:
                values["consistency"] = int(got["_known"] or 0) / nn
            rows += [
                {"table": name, "column": c, "metric": m, "value": v} for m, v in values.items()
            ]
    return pd.DataFrame(rows)


def record_quality(con: BaseBackend, metrics: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Append a run's metrics to ``dq_history`` (replacing an earlier record of the same run).

    Parameters
    ----------
    con : BaseBackend
        The store.
    metrics : pandas.DataFrame
        Output of :func:`quality_metrics`.
    run_id : str
        The run's id.

    Returns
    -------
    pandas.DataFrame
        The whole history: run_id, measured_at, table, column, metric, value.
    """
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    new = metrics.assign(run_id=run_id, measured_at=now)[
        ["run_id", "measured_at", "table", "column", "metric", "value"]
    ]
    if HISTORY_TABLE in con.list_tables():
        old = con.table(HISTORY_TABLE)
        old = old.filter(old.run_id != run_id).to_pandas()
        history = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        history = new
    history = history.sort_values(["measured_at", "table", "column", "metric"], ignore_index=True)
    con.create_table(HISTORY_TABLE, ibis.memtable(history), overwrite=True)
    return history


def quality_changes(history: pd.DataFrame, tolerance: float = 0.005) -> pd.DataFrame:
    """Compare the latest run with the one before it, metric by metric.

    Parameters
    ----------
    history : pandas.DataFrame
        Output of :func:`record_quality`.
    tolerance : float, default 0.005
        A drop larger than this (in share points) is flagged as worse.

    Returns
    -------
    pandas.DataFrame
        table, column, metric, previous, current, change, worse (bool); empty
        ``previous`` when there is no earlier run.
    """
    runs = history.drop_duplicates("run_id").sort_values("measured_at").run_id.tolist()
    current = history[history.run_id == runs[-1]].set_index(["table", "column", "metric"]).value
    if len(runs) > 1:
        previous = (
            history[history.run_id == runs[-2]].set_index(["table", "column", "metric"]).value
        )
    else:
        previous = pd.Series(float("nan"), index=current.index)
    out = pd.DataFrame({"previous": previous.reindex(current.index), "current": current})
    out["change"] = out.current - out.previous
    out["worse"] = (out.change < -tolerance).fillna(False)
    return out.reset_index()


def quality_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Return one row per table: the lowest value of each metric over its columns.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Output of :func:`quality_metrics` (or one run of the history).

    Returns
    -------
    pandas.DataFrame
        table plus one column per metric.
    """
    wide = metrics.pivot_table(index="table", columns="metric", values="value", aggfunc="min")
    return wide.reindex(columns=list(METRICS)).reindex(list(TABLES)).reset_index()
