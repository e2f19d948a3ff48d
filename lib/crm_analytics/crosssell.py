"""Cross-sell: association rules between products, and personal next-product recommendations.

Rules (support, confidence, lift) are counted in the store from order lines.
Recommendations use item-to-item co-occurrence (the "customers who bought X also
bought Y" method): a customer's candidate products are scored by how often they
were bought by the same customers as the products the customer already has.
:func:`evaluate_recommendations` measures them on purchases after the cutoff,
and :func:`compare_recommendations` several of them (e.g. against a popularity
baseline) in one query.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from ibis.backends import BaseBackend
from scipy import sparse

from crm_analytics.config import worker_count
from crm_analytics.features import _ts, paid_orders
from crm_analytics.schemas import require_columns
from crm_analytics.store import backend_of


def purchased_items(
    orders: ir.Table,
    order_items: ir.Table,
    level: str = "category",
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
) -> ir.Table:
    """Return distinct (order, customer, item) rows of paid orders in ``[start, end)``.

    Parameters
    ----------
    orders, order_items : ibis Table
        Clean orders and order lines.
    level : {"category", "sku"}, default "category"
        What counts as an item.
    start, end : date or ISO string, optional
        Period bounds.

    Returns
    -------
    ibis Table
        order_id, customer_id, item.

    Raises
    ------
    ValueError
        If ``level`` is not a column of the order lines.
    """
    if level not in order_items.columns:
        raise ValueError(f"order_items has no column {level!r}")
    paid = paid_orders(orders)
    if start is not None:
        paid = paid.filter(paid.order_ts >= _ts(start))
    if end is not None:
        paid = paid.filter(paid.order_ts < _ts(end))
    lines = order_items.filter(order_items[level].notnull())
    j = lines.join(paid.select("order_id", "customer_id"), "order_id")
    return j.select("order_id", "customer_id", item=j[level]).distinct()


def _arrow_strings(arrow_type: pa.DataType) -> pd.StringDtype | None:
    """Map Arrow string columns to pandas' Arrow-backed string dtype."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype("pyarrow")
    return None


def customer_item_pairs(items: ir.Table) -> pd.DataFrame:
    """Return the distinct (customer_id, item) pairs of ``items`` as a compact frame.

    The strings stay in Arrow buffers (``string[pyarrow]``) instead of becoming one
    Python object per value.

    Parameters
    ----------
    items : ibis Table
        With customer_id and item, e.g. from :func:`purchased_items`.

    Returns
    -------
    pandas.DataFrame
        customer_id, item (``string[pyarrow]``), one row per distinct pair.

    Raises
    ------
    ValueError
        If a column is missing.
    """
    require_columns(items, ("customer_id", "item"), "items")
    arrow = items.select("customer_id", "item").distinct().to_pyarrow()
    return arrow.to_pandas(types_mapper=_arrow_strings)


def association_rules(
    items: ir.Table, min_support: float = 0.01, min_confidence: float = 0.1, min_lift: float = 1.0
) -> ir.Table:
    """Return rules A -> B between items bought in the same order, computed in the store.

    A rule is kept when it is frequent (``min_support``), reliable (``min_confidence``)
    and a positive association: its lift, P(A and B) / (P(A) P(B)), above ``min_lift``.
    With the default 1, pairs bought together less often than chance never become
    rules, however frequent (two popular items that rarely share a basket have a high
    support and confidence, and a lift below 1).

    Parameters
    ----------
    items : ibis Table
        order_id, item (:func:`purchased_items`).
    min_support : float, default 0.01
        Smallest share of orders holding both items.
    min_confidence : float, default 0.1
        Smallest P(B | A).
    min_lift : float, default 1.0
        Rules need a lift above this.

    Returns
    -------
    ibis Table
        antecedent, consequent, orders (holding both), support, confidence, lift;
        strongest lift first, then most support, then by the items' names.
    """
    # one row per order and item: every count below is then a plain count, not a distinct one
    items = items.select("order_id", "item").distinct()
    # the number of orders, counted once (as a scalar subquery it was counted for each use)
    # by a parallel distinct rather than a count(DISTINCT): 2.3 s of 4.5 at 1M
    orders = items.select("order_id").distinct()
    n_orders = orders.aggregate(_n=orders.count().cast("float64"))
    single = items.group_by("item").aggregate(n_item=items.count())
    a = items.select("order_id", antecedent=items.item)
    b = items.select("order_id", consequent=items.item)
    pairs = a.join(b, "order_id").filter(lambda t: t.antecedent != t.consequent)
    both = pairs.group_by(["antecedent", "consequent"]).aggregate(orders=pairs.count())
    sa = single.select(antecedent=single.item, n_a=single.n_item)
    sb = single.select(consequent=single.item, n_b=single.n_item)
    r = both.join(sa, "antecedent").join(sb, "consequent").cross_join(n_orders)
    r = r.mutate(
        support=r.orders.cast("float64") / r._n,
        confidence=r.orders.cast("float64") / r.n_a,
        lift=r.orders.cast("float64") * r._n / (r.n_a * r.n_b),
    )
    r = r.filter(
        (r.support >= min_support) & (r.confidence >= min_confidence) & (r.lift > min_lift)
    )
    # ties broken by the items, so the same data always gives the same order
    return r.select("antecedent", "consequent", "orders", "support", "confidence", "lift").order_by(
        [ibis.desc("lift"), ibis.desc("support"), "antecedent", "consequent"]
    )


DENSE_SIMILARITY_BYTES = 256 * 2**20
"""Largest item x item similarity (float32) that recommending turns dense: 8,192 items."""


class CooccurrenceRecommender:
    """Item-to-item co-occurrence recommender ("bought X, also bought Y").

    Parameters
    ----------
    k : int, default 5
        Recommendations per customer.

    Attributes
    ----------
    items_ : pandas.Index
        Known items.
    similarity_ : scipy.sparse matrix
        Item x item co-purchase counts, row-normalised (P(bought j | bought i)).
    popularity_ : numpy.ndarray
        Buyers per item.
    buyers_ : scipy.sparse.csr_matrix
        The customer x item 0/1 matrix of the pairs fitted on, kept so that
        :meth:`recommend` and :meth:`popular` can serve those customers without
        building it again.
    customers_ : pandas.Index
        The rows of ``buyers_`` (customers in order of appearance).
    """

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def _matrix(
        self, pairs: pd.DataFrame, sort: bool = False
    ) -> tuple[sparse.csr_matrix, pd.Index]:
        """Return the customer x item 0/1 matrix of ``pairs`` (customer_id, item) and its rows.

        Customers are numbered in order of appearance (or sorted with ``sort``);
        pairs without a customer id, and items not seen in :meth:`fit`, are left out.
        """
        rows, customers = pd.factorize(pairs.customer_id, sort=sort)
        cols = _positions(pairs.item, self.items_)
        keep = (rows >= 0) & (cols >= 0)
        data = np.ones(keep.sum(), dtype=np.float32)
        m = sparse.csr_matrix(
            (data, (rows[keep], cols[keep])), shape=(len(customers), len(self.items_))
        )
        m.data[:] = 1.0
        return m, pd.Index(customers)

    def _popularity_order(self) -> np.ndarray:
        """Return the item positions, most bought first (ties by position)."""
        return np.argsort(-self.popularity_, kind="stable")

    def fit(self, pairs: pd.DataFrame) -> CooccurrenceRecommender:
        """Learn co-occurrence from who bought what.

        Parameters
        ----------
        pairs : pandas.DataFrame
            customer_id, item (distinct pairs).

        Returns
        -------
        CooccurrenceRecommender
            self.
        """
        self.items_ = pd.Index(sorted(pairs.item.unique()))
        x, self.customers_ = self._matrix(pairs)
        self.buyers_ = x
        co = (x.T @ x).tocsr().astype(np.float32)
        co.setdiag(0)
        co.eliminate_zeros()
        self.popularity_ = np.asarray(x.sum(axis=0)).ravel()
        inv = sparse.diags(1.0 / np.maximum(self.popularity_, 1))
        self.similarity_ = (inv @ co).tocsr()
        return self

    def _buyers(
        self, pairs: pd.DataFrame | None, sort: bool = False
    ) -> tuple[sparse.csr_matrix, pd.Index]:
        """Return the customer x item matrix of ``pairs``, or of the fitted pairs when None."""
        if pairs is not None:
            return self._matrix(pairs, sort=sort)
        if not hasattr(self, "buyers_"):
            raise ValueError("fit the recommender first, or pass the pairs to recommend for")
        if not sort:
            return self.buyers_, self.customers_
        order = np.asarray(self.customers_.argsort(), dtype=np.int64)
        return self.buyers_[order], self.customers_[order]

    def recommend(
        self, pairs: pd.DataFrame | None = None, batch: int = 5000, n_jobs: int = 0
    ) -> pd.DataFrame:
        """Recommend ``k`` items each customer has not bought yet.

        Parameters
        ----------
        pairs : pandas.DataFrame, optional
            customer_id, item: what the customers bought. None (the default) serves
            the customers of the pairs given to :meth:`fit`, from the matrix kept
            then: the same recommendations, without building it again.
        batch : int, default 5000
            Customers scored at a time (bounds memory).
        n_jobs : int, default 0
            Threads scoring batches at once; 0 means one per core.

        Returns
        -------
        pandas.DataFrame
            customer_id, rank (1 = best), item, score.
        """
        x, customers = self._buyers(pairs)
        k = min(self.k, len(self.items_))
        ids, ranks, items, values = [], [], [], []
        by_popularity = self._popularity_order()
        sim: sparse.csr_matrix | np.ndarray = self.similarity_
        if sim.shape[0] ** 2 * 4 <= DENSE_SIMILARITY_BYTES:
            # a catalogue of a few thousand items co-occurs almost everywhere: a dense
            # matrix multiplies far faster than a sparse one that is not sparse
            sim = sim.toarray()
        starts = range(0, len(customers) if k else 0, batch)

        def one(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            return self._recommend_batch(x[start : start + batch], start, k, sim, by_popularity)

        # NumPy and SciPy release the GIL in the products, partitions and searches: batches
        # run on threads (same result, in order; n_jobs score matrices in memory at once)
        workers = worker_count(n_jobs)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(starts)))) as pool:
            for row, rank, col, best in pool.map(one, starts):
                ids.append(row)
                ranks.append(rank)
                items.append(col)
                values.append(best)
        frame = pd.DataFrame(
            {
                "customer_id": customers[np.concatenate(ids)] if ids else [],
                "rank": np.concatenate(ranks) if ranks else [],
                "item": self.items_[np.concatenate(items)] if items else [],
                "score": np.concatenate(values) if values else [],
            }
        )
        return frame.astype(
            {
                "customer_id": "string[pyarrow]",
                "rank": "int64",
                "item": "string[pyarrow]",
                "score": "float64",
            }
        )

    def _recommend_batch(
        self,
        xb: sparse.csr_matrix,
        start: int,
        k: int,
        sim: sparse.csr_matrix | np.ndarray,
        by_popularity: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (row, rank, item position, score) of the recommendations of one batch of rows."""
        product = xb @ sim
        scores = product if isinstance(product, np.ndarray) else product.toarray()
        owned_rows = np.repeat(np.arange(xb.shape[0]), np.diff(xb.indptr))
        scores[owned_rows, xb.indices] = -np.inf
        # the k-th best score of each row (a partition, far cheaper than an argpartition);
        # a row takes its cells at or above it, unless more than k are (ties at the k-th
        # score, e.g. a row with few co-bought items ties at 0 almost everywhere): such a
        # row takes the cells above it, then the tied ones most popular first
        m = scores.shape[1]
        kth = np.partition(scores, m - k, axis=1)[:, m - k : m - k + 1]
        candidate = scores >= kth
        crowded = np.flatnonzero(candidate.sum(axis=1) > k)  # few rows (0.01% measured)
        candidate[crowded] = False
        row, col = np.nonzero(candidate)
        if len(crowded):
            part, part_kth = scores[crowded], kth[crowded]
            above = part > part_kth
            above_row, above_col = np.nonzero(above)
            need = k - above.sum(axis=1)
            tied = (part == part_kth)[:, by_popularity]
            taken = tied & (np.cumsum(tied, axis=1) <= need[:, None])
            tie_row, tie_rank = np.nonzero(taken)
            row = np.concatenate([row, crowded[above_row], crowded[tie_row]])
            col = np.concatenate([col, above_col, by_popularity[tie_rank]])
        best = scores[row, col]
        order = np.lexsort((col, -self.popularity_[col], -best, row))
        row, col, best = row[order], col[order], best[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row) + 1
        found = (rank <= k) & np.isfinite(best)  # fewer than k items left to recommend
        return row[found] + start, rank[found], col[found], best[found]

    def popular(self, pairs: pd.DataFrame | None = None, batch: int = 5000) -> pd.DataFrame:
        """Recommend the ``k`` most bought items each customer has not bought (the baseline).

        Parameters
        ----------
        pairs : pandas.DataFrame, optional
            customer_id, item: what the customers bought; None (the default) for the
            customers of the pairs given to :meth:`fit`.
        batch : int, default 5000
            Customers handled at a time (bounds memory).

        Returns
        -------
        pandas.DataFrame
            customer_id, rank, item.
        """
        order = self._popularity_order()
        x, customers = self._buyers(pairs, sort=True)
        x = x[:, order].tocsr()  # columns by popularity
        k = min(self.k, len(self.items_))
        owned_per_row = np.diff(x.indptr)
        ids, ranks, items = [], [], []
        for start in range(0, len(customers), batch):
            # the k best items a customer lacks are among the k + (items owned) most popular
            width = min(k + int(owned_per_row[start : start + batch].max(initial=0)), x.shape[1])
            owned = x[start : start + batch, :width].toarray() > 0
            # stable sort puts the items not owned first, in popularity order
            first = np.argsort(owned, axis=1, kind="stable")[:, :k]
            free = ~np.take_along_axis(owned, first, axis=1)
            rows = np.broadcast_to(np.arange(start, start + len(first))[:, None], first.shape)
            ids.append(rows[free])
            ranks.append(np.broadcast_to(np.arange(1, k + 1), first.shape)[free])
            items.append(order[first][free])
        frame = pd.DataFrame(
            {
                "customer_id": customers[np.concatenate(ids)] if ids else [],
                "rank": np.concatenate(ranks) if ranks else [],
                "item": self.items_[np.concatenate(items)] if items else [],
            }
        )
        return frame.astype(
            {"customer_id": "string[pyarrow]", "rank": "int64", "item": "string[pyarrow]"}
        )


def _pairs_table(
    pairs: pd.DataFrame | ir.Table, name: str, backend: BaseBackend | None = None
) -> ir.Table:
    """Return the distinct (customer_id, item) pairs of a frame or table as an ibis table.

    A table on another connection than ``backend`` (recommendations kept in the
    store while the purchases are on Spark) comes over as Arrow.
    """
    if isinstance(pairs, ir.Table) and backend_of(pairs) not in (None, backend):
        pairs = pairs.to_pyarrow()
    table = pairs if isinstance(pairs, ir.Table) else ibis.memtable(pairs)
    require_columns(table, ("customer_id", "item"), name)
    table = table.filter(table.customer_id.notnull() & table.item.notnull())
    return table.select("customer_id", "item").distinct()


def evaluate_recommendations(
    recs: pd.DataFrame | ir.Table,
    later: pd.DataFrame | ir.Table,
    before: pd.DataFrame | ir.Table,
) -> dict[str, float]:
    """Hit rate and recall of recommendations on items first bought after the cutoff.

    The comparison is one query (anti-join of the repeat purchases, join of the
    recommendations), run where the later purchases live; frames, and tables on
    another connection, are uploaded to it. Rows with a missing customer id or
    item are ignored. To score several recommenders on the same purchases, use
    :func:`compare_recommendations` (the new purchases are then found once).

    Parameters
    ----------
    recs : pandas.DataFrame or ibis Table
        customer_id, item (the recommendations).
    later : pandas.DataFrame or ibis Table
        customer_id, item bought after the cutoff, e.g. :func:`purchased_items`.
    before : pandas.DataFrame or ibis Table
        customer_id, item bought before the cutoff (repeat purchases are not new).

    Returns
    -------
    dict
        hit_rate (share of evaluated customers with at least one recommended new
        item bought), recall (share of new items recommended), customers evaluated.

    Raises
    ------
    ValueError
        If customer_id or item is missing from an input.
    """
    row = compare_recommendations({"recs": recs}, later, before).iloc[0]
    return {
        "hit_rate": float(row.hit_rate),
        "recall": float(row.recall),
        "customers": int(row.customers),
    }


def compare_recommendations(
    methods: Mapping[str, pd.DataFrame | ir.Table],
    later: pd.DataFrame | ir.Table,
    before: pd.DataFrame | ir.Table,
) -> pd.DataFrame:
    """Score several recommenders on the same new purchases, in one query.

    The new purchases (later pairs that are not repeats of earlier ones) are
    found once for all methods; each method is judged on the customers it
    recommends to (see :func:`evaluate_recommendations`).

    Parameters
    ----------
    methods : mapping of str to pandas.DataFrame or ibis Table
        Method name -> its recommendations (customer_id, item).
    later : pandas.DataFrame or ibis Table
        customer_id, item bought after the cutoff, e.g. :func:`purchased_items`.
    before : pandas.DataFrame or ibis Table
        customer_id, item bought before the cutoff (repeat purchases are not new).

    Returns
    -------
    pandas.DataFrame
        method (in the order given), hit_rate, recall, customers; hit rate and
        recall are missing for a method with no customer to judge.

    Raises
    ------
    ValueError
        If ``methods`` is empty, or customer_id or item is missing from an input.
    """
    if not methods:
        raise ValueError("methods is empty: give at least one set of recommendations")
    home = backend_of(later) if isinstance(later, ir.Table) else None
    keys = ["customer_id", "item"]
    recommended = ibis.union(
        *[
            _pairs_table(recs, f"recommendations of {name!r}", home).mutate(
                _method=ibis.literal(name)
            )
            for name, recs in methods.items()
        ]
    )
    new = _pairs_table(later, "later", home).anti_join(_pairs_table(before, "before", home), keys)
    # each new pair once per method that recommends anything to its customer
    judged = new.join(recommended.select("_method", "customer_id").distinct(), "customer_id")
    scored = judged.left_join(recommended.mutate(_hit=ibis.literal(1)), ["_method", *keys]).drop(
        "_method_right", "customer_id_right", "item_right"
    )
    hit = scored._hit.notnull()
    counts = (
        scored.group_by("_method")
        .aggregate(
            customers=scored.customer_id.nunique(),
            new_items=scored.count(),
            hits=hit.sum(),
            hit_customers=scored.customer_id.nunique(where=hit),
        )
        .to_pyarrow()
        .to_pandas()
        .set_index("_method")
        .reindex(list(methods))
    )
    # a method with no customer to judge has no row: its rates stay missing
    return pd.DataFrame(
        {
            "method": list(methods),
            "hit_rate": (counts.hit_customers / counts.customers).to_numpy(dtype=float),
            "recall": (counts.hits / counts.new_items).to_numpy(dtype=float),
            "customers": counts.customers.fillna(0).to_numpy(dtype="int64"),
        }
    )


def _positions(values: pd.Series, universe: pd.Series | pd.Index) -> np.ndarray:
    """Return the position of each value in ``universe`` (-1 when absent or missing).

    Text is looked up in Arrow (no Python string per value); other types by pandas.
    """
    if pd.api.types.is_string_dtype(values) and pd.api.types.is_string_dtype(universe):
        known = pa.array(np.asarray(universe, dtype=object), type=pa.large_string())
        found = pc.index_in(pa.array(values, type=pa.large_string()), value_set=known)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return pd.Index(universe).get_indexer(values)


def next_best_by_segment(
    segments: pd.DataFrame, pairs: pd.DataFrame, rules: pd.DataFrame, top: int = 3
) -> pd.DataFrame:
    """Suggest, per segment, the products most worth offering next.

    For each segment, the rules whose antecedent is among the segment's most bought
    items, weighted by how many of the segment's customers own the antecedent but
    not yet the consequent.

    Parameters
    ----------
    segments : pandas.DataFrame
        customer_id, segment.
    pairs : pandas.DataFrame
        customer_id, item bought before the cutoff.
    rules : pandas.DataFrame
        antecedent, consequent, confidence, lift (:func:`association_rules`).
    top : int, default 3
        Suggestions per segment.

    Returns
    -------
    pandas.DataFrame
        segment, item, customers_without_it, expected_buyers (owners of the
        antecedent without the item times the rule's confidence), lift.
    """
    customers = segments.drop_duplicates("customer_id")
    items = pd.Index(pd.unique(pd.concat([pairs.item, rules.antecedent, rules.consequent])))
    # one customer x item 0/1 matrix, rows in the order of ``customers``
    row = _positions(pairs.customer_id, customers.customer_id)
    col = _positions(pairs.item, items)
    keep = (row >= 0) & (col >= 0)
    owns = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (row[keep], col[keep])), shape=(len(customers), len(items))
    )
    owns.data[:] = 1.0  # a pair listed twice is owned once
    antecedent = items.get_indexer(rules.antecedent)
    consequent = items.get_indexer(rules.consequent)
    confidence = rules.confidence.to_numpy(dtype=float)
    lift = rules.lift.to_numpy()
    seg_codes, seg_names = pd.factorize(customers.segment, sort=True)
    rows = []
    for code, seg in enumerate(seg_names):
        part = owns[np.flatnonzero(seg_codes == code)].tocsc()
        # owners of each rule's antecedent, and those of them who own its consequent too
        owners = np.asarray(part.sum(axis=0)).ravel()
        both = np.asarray(part[:, antecedent].multiply(part[:, consequent]).sum(axis=0)).ravel()
        without = (owners[antecedent] - both).astype(int)
        expected = without * confidence
        # per consequent, the first rule with the largest positive expectation; items in
        # the order they first got one, the strongest first
        scores = pd.DataFrame(
            {
                "item": rules.consequent.to_numpy(),
                "expected": expected,
                "without": without,
                "lift": lift,
            }
        )[(owners[antecedent] > 0) & (expected > 0)]
        if scores.empty:
            continue
        first_seen = scores.groupby("item", sort=False).cumcount() == 0
        order = pd.Series(np.arange(first_seen.sum()), index=scores.item[first_seen])
        best = scores.loc[scores.groupby("item", sort=False).expected.idxmax()]
        best = best.assign(_order=order.reindex(best.item).to_numpy())
        best = best.sort_values(["expected", "_order"], ascending=[False, True]).head(top)
        rows += [
            (seg, r.item, int(r.without), round(r.expected, 1), r.lift) for r in best.itertuples()
        ]
    return pd.DataFrame(
        rows, columns=["segment", "item", "customers_without_it", "expected_buyers", "lift"]
    )


__all__ = [
    "CooccurrenceRecommender",
    "association_rules",
    "compare_recommendations",
    "evaluate_recommendations",
    "next_best_by_segment",
    "purchased_items",
]
