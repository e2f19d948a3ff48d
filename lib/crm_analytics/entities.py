"""Entity resolution of customer records (part of stage 02, clean).

Two records are the same person when they share a normalised contact key
(exact rules, :func:`exact_pairs`) or when a probabilistic model says so
(:func:`probabilistic_pairs`): splink's Fellegi-Sunter model, trained without
labels on the store's DuckDB, comparing name, e-mail, phone, birth date and city
within blocks of candidate pairs. Linked records form clusters (connected
components); the record created first survives. :func:`resolve_customers`
writes the crosswalk ``customer_crosswalk`` (every original id -> surviving id),
keeps only survivors in ``customers`` and moves the orders, events, tickets and
surveys of merged records to the surviving id.

splink is used rather than hand-written matching because it is the maintained
implementation of the Fellegi-Sunter model with unsupervised training (EM and
random sampling), blocking and term-frequency handling, and the same settings
run on DuckDB here and on Spark at scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from ibis.backends import BaseBackend
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from crm_analytics.store import to_frame

CHILD_TABLES: tuple[str, ...] = ("orders", "events", "tickets", "surveys")
"""Tables whose ``customer_id`` follows a merge."""

MATCH_COLUMNS: tuple[str, ...] = ("name", "email", "phone", "birth_date", "city")


@dataclass(frozen=True)
class MatchSettings:
    """How customer records are matched.

    Attributes
    ----------
    exact_keys : tuple of str
        Columns that identify a person on their own when equal (after standardisation).
    probabilistic : bool
        Also run the probabilistic model.
    threshold : float
        Match probability from which a probabilistic pair is linked.
    blocking : list of list of str
        Candidate pairs are those equal on all columns of at least one block.
    name_thresholds : tuple of float
        Jaro-Winkler similarity levels of the name comparison.
    max_pairs_u : float
        Random pairs sampled to estimate u probabilities.
    em_blocking : list of list of str
        Blocks of the expectation-maximisation passes that estimate the m
        probabilities; each pass estimates the comparisons outside its block, so
        together they must leave none out. Pairs per block grow with the square of
        the records sharing a value: on 1M generated customers the probabilistic
        pass took 13 s blocked on birth date and city, 114 s on birth date alone,
        with the same matches.
    seed : int
        Random seed of the sampling.
    """

    exact_keys: tuple[str, ...] = ("email", "phone")
    probabilistic: bool = True
    threshold: float = 0.95
    blocking: list[list[str]] = field(
        default_factory=lambda: [["phone"], ["email"], ["birth_date", "city"], ["name", "city"]]
    )
    name_thresholds: tuple[float, ...] = (0.95, 0.85)
    max_pairs_u: float = 2e6
    em_blocking: list[list[str]] = field(
        default_factory=lambda: [["birth_date", "city"], ["phone"]]
    )
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"match threshold must be in (0, 1), got {self.threshold}")
        blocked = [c for b in (*self.blocking, *self.em_blocking) for c in b]
        for col in (*self.exact_keys, *blocked):
            if col not in MATCH_COLUMNS:
                raise ValueError(
                    f"unknown match column {col!r}; expected one of {', '.join(MATCH_COLUMNS)}"
                )


def matching_input(customers: ir.Table) -> ir.Table:
    """Return the columns compared, one row per customer record.

    Parameters
    ----------
    customers : ibis Table
        Clean customers (standardised name, e-mail, E.164 phone).

    Returns
    -------
    ibis Table
        unique_id, name, email, phone, birth_date (text), city, signup_date.
    """
    return customers.select(
        unique_id=customers.customer_id,
        name=customers.name,
        email=customers.email,
        phone=customers.phone,
        birth_date=customers.birth_date.cast("string"),
        city=customers.city,
        signup_date=customers.signup_date,
    )


def exact_pairs(records: ir.Table, keys: tuple[str, ...]) -> ir.Table:
    """Return pairs of records that share a value of any key column.

    Parameters
    ----------
    records : ibis Table
        Output of :func:`matching_input`.
    keys : tuple of str
        Key columns.

    Returns
    -------
    ibis Table
        id_l, id_r (id_l < id_r), rule ("exact <key>"), match_probability (1.0).
    """
    parts = []
    for key in keys:
        base = records.filter(records[key].notnull()).select("unique_id", k=records[key])
        first = base.group_by("k").aggregate(id_l=base.unique_id.min())
        pairs = base.join(first, "k").filter(lambda t: t.unique_id != t.id_l)
        parts.append(
            pairs.select(
                id_l=pairs.id_l,
                id_r=pairs.unique_id,
                rule=ibis.literal(f"exact {key}"),
                match_probability=ibis.literal(1.0),
            )
        )
    if not parts:
        return records.limit(0).select(
            id_l=records.unique_id,
            id_r=records.unique_id,
            rule=ibis.literal(""),
            match_probability=ibis.literal(1.0),
        )
    return ibis.union(*parts).distinct()


def probabilistic_pairs(con: BaseBackend, table: str, settings: MatchSettings) -> pd.DataFrame:
    """Score candidate pairs with splink on the store's DuckDB and keep those above the threshold.

    Parameters
    ----------
    con : BaseBackend
        DuckDB store holding ``table`` (output of :func:`matching_input`).
    table : str
        Table of records to de-duplicate.
    settings : MatchSettings
        Blocking, comparison levels, threshold.

    Returns
    -------
    pandas.DataFrame
        id_l, id_r, rule ("probabilistic"), match_probability.
    """
    import splink.comparison_library as cl
    from splink import Linker, SettingsCreator, block_on
    from splink.backends.duckdb import DuckDBAPI

    logging.getLogger("splink").setLevel(logging.ERROR)
    db_api = DuckDBAPI(connection=con.con)
    records = db_api.register(table)
    model = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.JaroWinklerAtThresholds("name", list(settings.name_thresholds)),
            cl.ExactMatch("email"),
            cl.ExactMatch("phone"),
            cl.ExactMatch("birth_date"),
            cl.ExactMatch("city"),
        ],
        blocking_rules_to_generate_predictions=[block_on(*b) for b in settings.blocking],
        retain_matching_columns=False,
    )
    linker = Linker(records, model, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("phone"), block_on("email")], recall=0.8
    )
    linker.training.estimate_u_using_random_sampling(
        max_pairs=settings.max_pairs_u, seed=settings.seed
    )
    for block in settings.em_blocking:
        linker.training.estimate_parameters_using_expectation_maximisation(
            block_on(*block), record_sample_proportion=1.0
        )
    pred = linker.inference.predict(threshold_match_probability=settings.threshold)
    out = pred.as_pandas_dataframe()
    pred.drop_table_from_database_and_remove_from_cache()
    # splink's working tables (blocked pairs, term frequencies) are not part of the store
    leftovers = con.raw_sql(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE starts_with(table_name, '__splink__')"
    ).fetchall()
    for name, kind in leftovers:
        con.raw_sql(f'DROP {"VIEW" if kind == "VIEW" else "TABLE"} IF EXISTS "{name}"')
    if out.empty:
        return pd.DataFrame({"id_l": [], "id_r": [], "rule": [], "match_probability": []})
    lo = np.minimum(out.unique_id_l.astype(str), out.unique_id_r.astype(str))
    hi = np.maximum(out.unique_id_l.astype(str), out.unique_id_r.astype(str))
    return pd.DataFrame(
        {
            "id_l": lo,
            "id_r": hi,
            "rule": "probabilistic",
            "match_probability": out.match_probability,
        }
    )


def cluster_records(ids: pd.Series, pairs: pd.DataFrame) -> pd.Series:
    """Group records into clusters: connected components of the linked pairs.

    Parameters
    ----------
    ids : pandas.Series
        Every record id.
    pairs : pandas.DataFrame
        Linked pairs (``id_l``, ``id_r``).

    Returns
    -------
    pandas.Series
        Cluster number per id (index: the ids).
    """
    index = pd.Index(ids.astype(str).unique())
    left = index.get_indexer(pairs.id_l.astype(str))
    right = index.get_indexer(pairs.id_r.astype(str))
    keep = (left >= 0) & (right >= 0)
    graph = coo_matrix(
        (np.ones(keep.sum()), (left[keep], right[keep])), shape=(len(index), len(index))
    )
    _, labels = connected_components(graph, directed=False)
    return pd.Series(labels, index=index, name="cluster")


def crosswalk(records: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Map every record to the surviving record of its cluster.

    The survivor is the record with the earliest ``signup_date`` (then the
    smallest id).

    Parameters
    ----------
    records : pandas.DataFrame
        unique_id and signup_date of every record.
    pairs : pandas.DataFrame
        Linked pairs with ``rule`` and ``match_probability``.

    Returns
    -------
    pandas.DataFrame
        original_id, customer_id (survivor), merged (bool), rule, match_probability
        (of the strongest link of a merged record; empty for survivors).
    """
    clusters = cluster_records(records.unique_id, pairs)
    frame = records[["unique_id", "signup_date"]].copy()
    frame["unique_id"] = frame.unique_id.astype(str)
    frame["cluster"] = clusters.reindex(frame.unique_id).to_numpy()
    frame = frame.sort_values(["cluster", "signup_date", "unique_id"], kind="stable")
    frame["customer_id"] = frame.groupby("cluster").unique_id.transform("first")
    links = pd.concat(
        [
            pairs.rename(columns={"id_r": "original_id"})[
                ["original_id", "rule", "match_probability"]
            ],
            pairs.rename(columns={"id_l": "original_id"})[
                ["original_id", "rule", "match_probability"]
            ],
        ]
    )
    links = links.sort_values(
        ["original_id", "match_probability", "rule"], ascending=[True, False, True]
    )
    best = links.drop_duplicates("original_id")
    out = frame.rename(columns={"unique_id": "original_id"})[["original_id", "customer_id"]]
    out = out.merge(best, on="original_id", how="left")
    out["merged"] = out.original_id != out.customer_id
    out.loc[~out.merged, ["rule", "match_probability"]] = [None, np.nan]
    return out[["original_id", "customer_id", "merged", "rule", "match_probability"]].sort_values(
        "original_id", ignore_index=True
    )


def resolve_customers(con: BaseBackend, settings: MatchSettings) -> dict[str, Any]:
    """De-duplicate ``customers`` and move child rows to surviving ids, in the store.

    Parameters
    ----------
    con : BaseBackend
        DuckDB store with clean ``customers`` and child tables.
    settings : MatchSettings
        Matching settings.

    Returns
    -------
    dict
        records, clusters, merged, pairs_exact, pairs_probabilistic, moved_rows
        (per child table).
    """
    records = con.create_table("_er_input", matching_input(con.table("customers")), overwrite=True)
    pairs = [exact_pairs(records, settings.exact_keys).to_pandas()]
    if settings.probabilistic and records.count().to_pandas() > 1:
        pairs.append(probabilistic_pairs(con, "_er_input", settings))
    allpairs = pd.concat(pairs, ignore_index=True)
    cw = crosswalk(to_frame(records.select("unique_id", "signup_date")), allpairs)
    con.create_table("customer_crosswalk", cw, overwrite=True)
    con.drop_table("_er_input")
    # only the merged records' rows change: update those in place instead of
    # rewriting every table (at a million customers the rewrite of orders and events
    # took most of the time of the de-duplication)
    merged_ids = "SELECT original_id FROM customer_crosswalk WHERE merged"
    con.raw_sql(f"DELETE FROM customers WHERE customer_id IN ({merged_ids})")
    moved = {}
    for child in CHILD_TABLES:
        result = con.raw_sql(
            f'UPDATE "{child}" SET customer_id = m.customer_id FROM customer_crosswalk AS m '
            f'WHERE m.merged AND "{child}".customer_id = m.original_id'
        )
        moved[child] = int(result.fetchone()[0])
    pr = allpairs.rule == "probabilistic"
    return {
        "records": len(cw),
        "clusters": int(cw.customer_id.nunique()),
        "merged": int(cw.merged.sum()),
        "pairs_exact": int((~pr).sum()),
        "pairs_probabilistic": int(pr.sum()),
        "moved_rows": moved,
    }


def pairwise_scores(predicted: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Precision, recall and F1 of duplicate detection, counted over record pairs.

    Parameters
    ----------
    predicted : pandas.DataFrame
        Crosswalk: original_id, customer_id (cluster representative).
    truth : pandas.DataFrame
        customer_id, duplicate_of (the true original, empty for originals), e.g.
        the generator's ``truth/customers.parquet``.

    Returns
    -------
    dict
        precision, recall, f1, true_pairs, predicted_pairs, correct_pairs.
    """

    def pair_frame(frame: pd.DataFrame, id_col: str, cluster_col: str) -> pd.DataFrame:
        # pairs (a < b) of records in the same cluster; single-record clusters have none,
        # and records without an id or a cluster belong to none
        f = frame[[id_col, cluster_col]].dropna().astype(str).set_axis(["id", "cluster"], axis=1)
        f = f[f.groupby("cluster").id.transform("size") > 1]
        p = f.merge(f, on="cluster")
        return p.loc[p.id_x < p.id_y, ["id_x", "id_y"]].drop_duplicates()

    t = truth[["customer_id", "duplicate_of"]].copy()
    t["cluster"] = t.duplicate_of.fillna(t.customer_id).astype(str)
    t = t[t.customer_id.isin(predicted.original_id)]
    true_pairs = pair_frame(t, "customer_id", "cluster")
    pred_pairs = pair_frame(predicted, "original_id", "customer_id")
    correct = len(true_pairs.merge(pred_pairs, on=["id_x", "id_y"]))
    precision = correct / len(pred_pairs) if len(pred_pairs) else 1.0
    recall = correct / len(true_pairs) if len(true_pairs) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_pairs": len(true_pairs),
        "predicted_pairs": len(pred_pairs),
        "correct_pairs": correct,
    }
