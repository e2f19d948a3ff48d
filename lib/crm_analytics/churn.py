"""Stage 04, churn: labels from one cutoff date, a model, an honest holdout score.

Features read data strictly before ``cutoff_date``
(:func:`crm_analytics.features.customer_features`); the label reads only the
window ``[cutoff_date, cutoff_date + churn_window_days)``
(:func:`crm_analytics.features.churn_labels`). :func:`check_label_window`
refuses a window that runs past the end of the data, where labels would be
silently wrong.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ibis.expr.types as ir
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from crm_analytics.config import worker_count
from crm_analytics.schemas import require_columns
from crm_analytics.store import arrow_to_frame, backend_of, to_frame

NON_FEATURES: frozenset[str] = frozenset(
    {
        "customer_id",
        "churned",
        "first_order_ts",
        "last_order_ts",
        "cutoff",
    }
)
"""Columns of the churn frame that are not model inputs."""


def check_label_window(cutoff: dt.date | str, window_days: int, data_end: dt.date | str) -> None:
    """Raise if the label window is not fully observed.

    Parameters
    ----------
    cutoff : date or ISO string
        Start of the label window.
    window_days : int
        Its length in days.
    data_end : date or ISO string
        Last day with data.

    Raises
    ------
    ValueError
        If ``cutoff + window_days - 1`` is after ``data_end``, or ``window_days`` < 1.
    """
    if window_days < 1:
        raise ValueError(f"churn_window_days must be positive, got {window_days}")
    c = dt.date.fromisoformat(str(cutoff)[:10])
    end = dt.date.fromisoformat(str(data_end)[:10])
    last = c + dt.timedelta(days=window_days - 1)
    if last > end:
        raise ValueError(
            f"the churn label window {c}..{last} runs past the last day of data ({end}); "
            f"move cutoff_date to {end - dt.timedelta(days=window_days - 1)} or earlier"
        )


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Return the numeric model-input columns of a churn frame.

    Parameters
    ----------
    frame : pandas.DataFrame
        Per-customer features and label.

    Returns
    -------
    list of str
        Numeric columns other than ids, timestamps and the label.
    """
    return [
        c
        for c in frame.columns
        if c not in NON_FEATURES
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def holdout_split(
    frame: pd.DataFrame, test_size: float = 0.25, seed: int = 42, label_col: str = "churned"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split customers into train and holdout, stratified by the label.

    Parameters
    ----------
    frame : pandas.DataFrame
        Churn frame.
    test_size : float, default 0.25
        Share of customers held out.
    seed : int, default 42
        Random seed.
    label_col : str, default "churned"
        Label column.

    Returns
    -------
    tuple of pandas.DataFrame
        (train, holdout).

    Raises
    ------
    ValueError
        If the label column is missing or has a single class.
    """
    require_columns(frame, [label_col])
    if frame[label_col].nunique() < 2:
        raise ValueError(f"{label_col!r} has a single class; cannot train a churn model")
    train, test = train_test_split(
        frame, test_size=test_size, random_state=seed, stratify=frame[label_col]
    )
    return train.reset_index(drop=True), test.reset_index(drop=True)


class ChurnModel:
    """A churn classifier: gradient boosting or a logistic-regression baseline.

    Parameters
    ----------
    kind : {"gbm", "logistic"}, default "gbm"
        HistGradientBoosting (handles missing values itself) or logistic
        regression (median imputation, standardised inputs).
    seed : int, default 42
        Random seed.
    max_iter : int, default 200
        Boosting iterations or solver iterations.
    learning_rate : float, default 0.06
        Boosting learning rate.
    max_leaf_nodes : int, default 31
        Leaves per boosting tree.
    c : float, default 1.0
        Inverse L2 strength of the logistic regression.

    Attributes
    ----------
    features_ : list of str
        Input columns.
    estimator_ : sklearn estimator
        The fitted model.
    """

    def __init__(
        self,
        kind: str = "gbm",
        seed: int = 42,
        max_iter: int = 200,
        learning_rate: float = 0.06,
        max_leaf_nodes: int = 31,
        c: float = 1.0,
    ) -> None:
        self.kind = kind
        self.seed = seed
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.c = c

    def _estimator(self) -> HistGradientBoostingClassifier | Pipeline:
        """Return an unfitted estimator of the chosen kind."""
        if self.kind == "gbm":
            return HistGradientBoostingClassifier(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                early_stopping=False,
                random_state=self.seed,
            )
        if self.kind == "logistic":
            return make_pipeline(
                SimpleImputer(strategy="median"),
                StandardScaler(),
                LogisticRegression(C=self.c, max_iter=max(self.max_iter, 1000)),
            )
        raise ValueError(f"kind must be 'gbm' or 'logistic', got {self.kind!r}")

    def fit(
        self, frame: pd.DataFrame, label_col: str = "churned", features: list[str] | None = None
    ) -> ChurnModel:
        """Fit on a churn frame.

        Parameters
        ----------
        frame : pandas.DataFrame
            Features and label.
        label_col : str, default "churned"
            Label column.
        features : list of str, optional
            Input columns; :func:`feature_columns` by default.

        Returns
        -------
        ChurnModel
            self.
        """
        self.features_ = features or feature_columns(frame)
        self.estimator_ = self._estimator().fit(
            frame[self.features_].astype(float), frame[label_col].astype(int)
        )
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the churn probability of each row.

        Parameters
        ----------
        frame : pandas.DataFrame
            Rows with the fitted feature columns.

        Returns
        -------
        numpy.ndarray
            Probabilities in [0, 1].
        """
        return self.estimator_.predict_proba(frame[self.features_].astype(float))[:, 1]


def evaluate(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Return ranking and probability metrics of churn predictions.

    Parameters
    ----------
    y_true : array-like of int
        Observed labels (1 = churned).
    p : array-like of float
        Predicted churn probabilities.

    Returns
    -------
    dict
        roc_auc, pr_auc, brier, calibration_error (see :func:`calibration_error`),
        base_rate, top_decile_lift.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p, dtype=float)
    order = np.argsort(-p, kind="stable")
    top = order[: max(1, len(p) // 10)]
    base = float(y.mean())
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "calibration_error": calibration_error(y, p),
        "base_rate": base,
        "top_decile_lift": float(y[top].mean() / base) if base > 0 else float("nan"),
    }


def risk_tiers(p: np.ndarray, edges: tuple[float, float] = (0.4, 0.7)) -> np.ndarray:
    """Return "low", "medium" or "high" per churn probability.

    Parameters
    ----------
    p : array-like of float
        Churn probabilities.
    edges : tuple of float, default (0.4, 0.7)
        Lower bounds of medium and high.

    Returns
    -------
    numpy.ndarray
        Tier names.
    """
    p = np.asarray(p, dtype=float)
    return np.where(p >= edges[1], "high", np.where(p >= edges[0], "medium", "low"))


class LeakageError(RuntimeError):
    """A feature read data at or after the cutoff."""


def check_no_leakage(
    build: Callable[[dict[str, ir.Table]], ir.Table],
    tables: dict[str, ir.Table],
    time_columns: dict[str, str],
    cutoff: dt.date | str,
    key: str = "customer_id",
) -> None:
    """Fail loudly if a feature changes when every row at or after the cutoff is removed.

    The features are built twice: from the tables as they are, and from the tables
    cut at the cutoff. A feature that only reads the past is the same both times.

    Parameters
    ----------
    build : callable
        Takes the tables and returns the feature table (an ibis expression).
    tables : dict
        Table name -> ibis table, as the features see them.
    time_columns : dict
        Table name -> its time column; tables without one are not cut.
    cutoff : date or ISO string
        The cutoff.
    key : str, default "customer_id"
        Row identity of the feature table.

    Raises
    ------
    LeakageError
        Naming the features that read data at or after the cutoff.
    """
    c = dt.datetime.combine(dt.date.fromisoformat(str(cutoff)[:10]), dt.time())
    cut = {
        name: (t.filter(t[time_columns[name]].cast("timestamp") < c) if name in time_columns else t)
        for name, t in tables.items()
    }
    full = build(tables).to_pandas().sort_values(key).reset_index(drop=True)
    past = build(cut).to_pandas().sort_values(key).reset_index(drop=True)
    if list(full[key]) != list(past[key]):
        raise LeakageError(f"the set of customers depends on data at or after {c.date()}")
    leaking = []
    for col in full.columns:
        a, b = full[col], past[col]
        same = (a == b) | (a.isna() & b.isna())
        if pd.api.types.is_float_dtype(a) and pd.api.types.is_float_dtype(b):
            # parallel float sums may differ in the last bits between two builds
            same = same | np.isclose(a, b, rtol=1e-9, atol=1e-12)
        if not bool(same.all()):
            leaking.append(col)
    if leaking:
        raise LeakageError(
            f"features read data at or after the cutoff {c.date()}: {', '.join(leaking)}"
        )


class CalibratedChurnModel:
    """A churn model whose probabilities are calibrated on a validation set.

    Sigmoid (Platt) and isotonic calibration are both fitted on one half of the
    validation customers and compared by Brier score on the other half; the
    better one (or none, if neither helps) is kept.

    Parameters
    ----------
    base : ChurnModel
        The model to calibrate (fitted by :meth:`fit`).
    seed : int, default 42
        Seed of the validation split.

    Attributes
    ----------
    method_ : str
        "sigmoid", "isotonic" or "none".
    brier_ : dict
        Validation Brier score of each option.
    calibrator_ : sklearn estimator or None
        The fitted calibrator.
    """

    def __init__(self, base: ChurnModel, seed: int = 42) -> None:
        self.base = base
        self.seed = seed

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        label_col: str = "churned",
        features: list[str] | None = None,
        refit: bool = True,
    ) -> CalibratedChurnModel:
        """Fit the base model on ``train`` and choose a calibration on ``valid``.

        Parameters
        ----------
        train, valid : pandas.DataFrame
            Churn frames of distinct customers (or of different cutoffs).
        label_col : str, default "churned"
            Label column.
        features : list of str, optional
            Input columns of the base model (all features by default).
        refit : bool, default True
            False keeps a base model already fitted on ``train`` (e.g. the one
            tuning chose) instead of fitting it again; ``features`` is then ignored.

        Returns
        -------
        CalibratedChurnModel
            self.
        """
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        if refit or not hasattr(self.base, "estimator_"):
            self.base.fit(train, label_col, features)
        a, b = train_test_split(
            valid, test_size=0.5, random_state=self.seed, stratify=valid[label_col]
        )
        xa, ya = a[self.base.features_].astype(float), a[label_col].astype(int)
        xb, yb = b[self.base.features_].astype(float), b[label_col].astype(int)
        options: dict[str, Any] = {"none": None}
        self.brier_ = {
            "none": float(brier_score_loss(yb, self.base.estimator_.predict_proba(xb)[:, 1]))
        }
        for method in ("sigmoid", "isotonic"):
            cal = CalibratedClassifierCV(FrozenEstimator(self.base.estimator_), method=method).fit(
                xa, ya
            )
            options[method] = cal
            self.brier_[method] = float(brier_score_loss(yb, cal.predict_proba(xb)[:, 1]))
        self.method_ = min(self.brier_, key=lambda m: self.brier_[m])
        self.calibrator_ = options[self.method_]
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Return calibrated churn probabilities.

        Parameters
        ----------
        frame : pandas.DataFrame
            Rows with the base model's features.

        Returns
        -------
        numpy.ndarray
            Probabilities.
        """
        if self.calibrator_ is None:
            return self.base.predict_proba(frame)
        return self.calibrator_.predict_proba(frame[self.base.features_].astype(float))[:, 1]


def retention_targets(
    scores: pd.DataFrame, save_rate: float = 0.2, contact_cost: float = 5.0, value_col: str = "clv"
) -> pd.DataFrame:
    """Rank customers by the expected value of a retention contact.

    ``expected_value = p_churn x value x save_rate - contact_cost``; the cumulative
    columns give the budget curve (customers contacted vs value saved).

    Parameters
    ----------
    scores : pandas.DataFrame
        customer_id, p_churn and ``value_col``.
    save_rate : float, default 0.2
        Share of contacted would-be churners the contact keeps.
    contact_cost : float, default 5.0
        Cost of one contact, in the value's currency.
    value_col : str, default "clv"
        Value of keeping the customer (e.g. CLV); missing counts as 0.

    Returns
    -------
    pandas.DataFrame
        The input columns plus expected_value, contacted (1..n) and cumulative_value,
        best first; a new frame.

    Raises
    ------
    ValueError
        If a column is missing or ``save_rate`` is outside [0, 1].
    """
    require_columns(scores, ["customer_id", "p_churn", value_col], "scores")
    if not 0 <= save_rate <= 1:
        raise ValueError(f"save_rate must be in [0, 1], got {save_rate}")
    out = scores.copy()
    out["expected_value"] = out.p_churn * out[value_col].fillna(0.0) * save_rate - contact_cost
    out = out.sort_values(
        ["expected_value", "customer_id"], ascending=[False, True], ignore_index=True
    )
    out["contacted"] = np.arange(1, len(out) + 1)
    out["cumulative_value"] = out.expected_value.cumsum()
    return out


def oracle_scores(
    customers: pd.DataFrame, truth: pd.DataFrame, cutoff: dt.date | str, window_days: int
) -> np.ndarray:
    """Return the churn probability known to the data generator (the attainable limit).

    Evaluation only, for generated data: with the true drop-out date and purchase
    rate of each customer, the probability of no purchase in the label window is
    1 for a customer who already dropped out, else ``exp(-rate x days alive in the window)``.

    Parameters
    ----------
    customers : pandas.DataFrame
        customer_id of the customers scored.
    truth : pandas.DataFrame
        The generator's ``truth/customers.parquet`` (customer_id, dropout_date,
        purchase_rate_per_day).
    cutoff : date or ISO string
        Start of the label window.
    window_days : int
        Its length.

    Returns
    -------
    numpy.ndarray
        Probabilities aligned with ``customers`` (NaN where the truth has no row).
    """
    c = pd.Timestamp(str(cutoff)[:10])
    t = customers[["customer_id"]].merge(truth, on="customer_id", how="left")
    drop = pd.to_datetime(t.dropout_date)
    alive_days = (drop.clip(upper=c + pd.Timedelta(days=window_days)) - c).dt.days.clip(lower=0)
    p = np.exp(-t.purchase_rate_per_day.to_numpy(dtype=float) * alive_days.to_numpy(dtype=float))
    return np.where(drop.to_numpy() < c.to_datetime64(), 1.0, p)


def calibration_error(y_true: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Return the expected calibration error: mean |observed rate - mean probability| over bins.

    Parameters
    ----------
    y_true : array-like of int
        Observed labels.
    p : array-like of float
        Predicted probabilities.
    bins : int, default 10
        Equal-width probability bins; each weighs by its share of rows.

    Returns
    -------
    float
        Between 0 (perfectly calibrated) and 1.
    """
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(p, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    return float(total)


def evaluation_table(y_true: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """Return :func:`evaluate` for several models, one row each.

    Parameters
    ----------
    y_true : array-like of int
        Observed labels.
    scores : dict
        Model name -> churn probabilities.

    Returns
    -------
    pandas.DataFrame
        model and the metrics of :func:`evaluate`, in the order given.
    """
    return pd.DataFrame([{"model": name, **evaluate(y_true, p)} for name, p in scores.items()])


def gains_curve(y_true: np.ndarray, p: np.ndarray, points: int = 100) -> pd.DataFrame:
    """Return the cumulative gains curve: churners found when contacting the riskiest first.

    Parameters
    ----------
    y_true : array-like of int
        Observed labels.
    p : array-like of float
        Churn scores.
    points : int, default 100
        Points of the curve (shares of customers contacted).

    Returns
    -------
    pandas.DataFrame
        share_contacted, share_of_churners_found.
    """
    y = np.asarray(y_true, dtype=float)
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
    found = np.concatenate([[0.0], np.cumsum(y[order])]) / max(y.sum(), 1.0)
    share = np.linspace(0.0, 1.0, points + 1)
    idx = np.round(share * len(y)).astype(int)
    return pd.DataFrame({"share_contacted": share, "share_of_churners_found": found[idx]})


def choose_threshold(y_true: np.ndarray, p: np.ndarray) -> float:
    """Return the probability threshold that maximises F1 (choose it on validation data).

    Parameters
    ----------
    y_true : array-like of int
        Observed labels.
    p : array-like of float
        Churn probabilities.

    Returns
    -------
    float
        The threshold; predictions ``p >= threshold`` count as churn.
    """
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(np.asarray(y_true, dtype=int), p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def confusion_table(y_true: np.ndarray, p: np.ndarray, threshold: float) -> pd.DataFrame:
    """Return the confusion matrix of ``p >= threshold`` as a labelled frame.

    Parameters
    ----------
    y_true : array-like of int
        Observed labels.
    p : array-like of float
        Churn probabilities.
    threshold : float
        Decision threshold.

    Returns
    -------
    pandas.DataFrame
        Rows "stayed"/"churned" (actual), columns "predicted stay"/"predicted churn".
    """
    from sklearn.metrics import confusion_matrix

    pred = (np.asarray(p, dtype=float) >= threshold).astype(int)
    m = confusion_matrix(np.asarray(y_true, dtype=int), pred, labels=[0, 1])
    return pd.DataFrame(
        m, index=["stayed", "churned"], columns=["predicted stay", "predicted churn"]
    )


def training_cutoffs(
    cutoff: dt.date | str,
    window_days: int,
    n: int,
    data_start: dt.date | str,
    min_history_days: int = 90,
) -> list[dt.date]:
    """Return earlier cutoffs whose label windows end by ``cutoff``, most recent first.

    Cutoff ``k`` is ``cutoff - k x window_days`` (k = 1..n), kept while it leaves
    at least ``min_history_days`` of data before it. Their labels are known at
    ``cutoff``, so a model trained on them can be tested (or used) at ``cutoff``
    without reading the future.

    Parameters
    ----------
    cutoff : date or ISO string
        The evaluation or scoring cutoff.
    window_days : int
        Label window.
    n : int
        Most earlier cutoffs wanted.
    data_start : date or ISO string
        First day of data.
    min_history_days : int, default 90
        History needed before a cutoff for its features to mean something.

    Returns
    -------
    list of datetime.date
        Up to ``n`` cutoffs, newest first (empty when the data is too short).
    """
    c = dt.date.fromisoformat(str(cutoff)[:10])
    start = dt.date.fromisoformat(str(data_start)[:10])
    out = []
    for k in range(1, n + 1):
        ck = c - dt.timedelta(days=k * window_days)
        if ck - dt.timedelta(days=min_history_days) < start:
            break
        out.append(ck)
    return out


@dataclass(frozen=True)
class ChurnSplit:
    """Training, validation and test customers of one churn evaluation.

    Attributes
    ----------
    train, valid : pandas.DataFrame
        Labelled frames: models fit on ``train``, hyper-parameters, calibration
        and the decision threshold are chosen on ``valid``.
    test : pandas.DataFrame
        Frame at the test cutoff (labelled in evaluate mode, unlabelled when scoring).
    design : str
        "temporal" (train on earlier cutoffs, validate on the latest earlier one),
        "temporal, customer validation" (one earlier cutoff, split by customers)
        or "customer holdout" (no earlier cutoff fits in the data, or no dates).
    cutoffs : dict
        "train", "valid" and "test" cutoffs (ISO dates; empty without dates).
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    design: str
    cutoffs: dict[str, list[str]]


def split_by_time(
    frame_at: Callable[[dt.date, bool], pd.DataFrame],
    cutoff: dt.date | str,
    window_days: int,
    n_training_cutoffs: int,
    data_start: dt.date | str,
    min_history_days: int = 90,
    test_size: float = 0.25,
    seed: int = 42,
    labelled_test: bool = True,
    max_train_rows: int | None = None,
    train_frame_at: Callable[[dt.date, bool], pd.DataFrame] | None = None,
) -> ChurnSplit:
    """Build the train/validation/test frames for a cutoff, without reading its label window.

    Training uses the earlier cutoffs of :func:`training_cutoffs`: with two or
    more, the newest validates and the others train; with one, its customers
    are split into train and validation; with none (short data), the frame at
    ``cutoff`` itself is split by customers and the design says so.

    Parameters
    ----------
    frame_at : callable
        ``frame_at(cutoff, labelled)`` returns the churn frame at a cutoff
        (e.g. :func:`crm_analytics.features.churn_frame` materialised).
    cutoff : date or ISO string
        Test (or scoring) cutoff.
    window_days : int
        Label window.
    n_training_cutoffs : int
        Earlier cutoffs the models are trained on; one more, the newest, validates.
    data_start : date or ISO string
        First day of data.
    min_history_days : int, default 90
        See :func:`training_cutoffs`.
    test_size : float, default 0.25
        Share of customers held out when the design falls back to a customer holdout.
    seed : int, default 42
        Seed of customer splits.
    labelled_test : bool, default True
        False when scoring: the test frame has no labels yet.
    max_train_rows : int, optional
        Sample the training rows down to this many (seeded), to bound the
        time on large data; the validation and test frames are not sampled here.
    train_frame_at : callable, optional
        Source of the training and validation frames, e.g. ``frame_at`` over a
        :func:`crm_analytics.features.customer_sample` of the tables, so that
        large data trains on a sample of customers while the test frame holds
        them all; ``frame_at`` by default.

    Returns
    -------
    ChurnSplit
        The frames and the design used.

    Raises
    ------
    ValueError
        If scoring is asked for and no earlier cutoff fits in the data.
    """
    c = dt.date.fromisoformat(str(cutoff)[:10])
    earlier = training_cutoffs(c, window_days, n_training_cutoffs + 1, data_start, min_history_days)
    test = frame_at(c, labelled_test)
    past = train_frame_at or frame_at
    if len(earlier) >= 2:
        valid = past(earlier[0], True)
        train = pd.concat([past(e, True) for e in earlier[1:]], ignore_index=True)
        if max_train_rows and len(train) > max_train_rows:
            train = train.sample(max_train_rows, random_state=seed, ignore_index=True)
        return ChurnSplit(train, valid, test, "temporal", {
            "train": [str(e) for e in earlier[1:]], "valid": [str(earlier[0])], "test": [str(c)]})  # fmt: skip
    if len(earlier) == 1:
        train, valid = holdout_split(past(earlier[0], True), 0.25, seed)
        return ChurnSplit(train, valid, test, "temporal, customer validation", {
            "train": [str(earlier[0])], "valid": [str(earlier[0])], "test": [str(c)]})  # fmt: skip
    if not labelled_test:
        raise ValueError(
            f"no earlier cutoff with a full {window_days}-day label window and "
            f"{min_history_days} days of history fits between {data_start} and {c}; "
            "cannot train a model to score now"
        )
    train, valid, test = split_customers(test, test_size, seed)
    return ChurnSplit(train, valid, test, "customer holdout",
                      {"train": [str(c)], "valid": [str(c)], "test": [str(c)]})  # fmt: skip


def split_customers(
    frame: pd.DataFrame, test_size: float = 0.25, seed: int = 42, label_col: str = "churned"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split one labelled frame into train, validation and test customers (stratified).

    Parameters
    ----------
    frame : pandas.DataFrame
        Labelled churn frame.
    test_size : float, default 0.25
        Share held out for the test; a quarter of the rest validates.
    seed : int, default 42
        Random seed.
    label_col : str, default "churned"
        Label column.

    Returns
    -------
    tuple of pandas.DataFrame
        (train, valid, test).
    """
    rest, test = holdout_split(frame, test_size, seed, label_col)
    train, valid = holdout_split(rest, 0.25, seed, label_col)
    return train, valid, test


def binary_log_loss(y_true: np.ndarray, p: np.ndarray) -> float:
    """Return the mean log loss of 0/1 labels under churn probabilities.

    The value of :func:`sklearn.metrics.log_loss` (probabilities clipped to
    [eps, 1 - eps]) without its input checks, which cost about 4 ms a call:
    :func:`tune_gbm` scores every boosting stage of every candidate (1,200 calls).

    Parameters
    ----------
    y_true : numpy.ndarray
        Labels, 0 or 1.
    p : numpy.ndarray
        Probabilities of 1.

    Returns
    -------
    float
        Mean negative log-likelihood.
    """
    p = np.asarray(p, dtype=float)
    eps = np.finfo(float).eps
    chance = np.where(np.asarray(y_true) == 1, p, 1.0 - p)
    return float(-np.log(np.clip(chance, eps, 1.0 - eps)).mean())


def tune_gbm(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    learning_rates: tuple[float, ...] = (0.05, 0.1),
    max_leaf_nodes: tuple[int, ...] = (15, 31),
    max_iter: int = 300,
    seed: int = 42,
    label_col: str = "churned",
    patience: int = 30,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Choose gradient-boosting hyper-parameters by log loss on the validation frame.

    Each (learning rate, leaves) pair is fitted once with up to ``max_iter`` trees;
    the number of trees is chosen from its staged predictions on ``valid``. Trees
    stop being added once the validation log loss has not improved for
    ``patience`` trees in a row.

    Parameters
    ----------
    train, valid : pandas.DataFrame
        Labelled frames.
    learning_rates, max_leaf_nodes : tuple
        Grid.
    max_iter : int, default 300
        Most trees.
    seed : int, default 42
        Random seed.
    label_col : str, default "churned"
        Label column.
    patience : int, default 30
        Trees without a lower validation log loss after which a candidate stops
        growing (scikit-learn's early stopping on ``valid``, which draws nothing at
        random); 0 fits all ``max_iter`` trees. At 1M customers the chosen model
        had 60 of 300 trees.

    Returns
    -------
    tuple
        (best parameters for :class:`ChurnModel`, table of every candidate with its
        validation log loss and ROC AUC, the best :class:`ChurnModel` fitted on
        ``train``).

    Notes
    -----
    The fitted model is the tuning fit cut to its best number of trees, which is
    the model a fit with that many trees gives (boosting adds trees one after the
    other, and nothing random is drawn without early stopping); it is checked
    against the staged prediction it was chosen by, and refitted if it differs.
    """
    features = feature_columns(train)
    xt, yt = train[features].astype(float), train[label_col].astype(int)
    xv, yv = valid[features].astype(float), valid[label_col].astype(int)
    yv_array = yv.to_numpy()
    rows, fits = [], []
    for lr in learning_rates:
        for leaves in max_leaf_nodes:
            m = ChurnModel("gbm", seed, max_iter, lr, leaves)._estimator()
            if patience > 0:
                m.set_params(
                    early_stopping=True, n_iter_no_change=patience, scoring="loss", tol=0.0
                )
                m.fit(xt, yt, X_val=xv, y_val=yv)
            else:
                m.fit(xt, yt)
            losses, best, p = [], 0, np.empty(0)
            for i, staged in enumerate(m.staged_predict_proba(xv)):
                losses.append(binary_log_loss(yv_array, staged[:, 1]))
                if i == 0 or losses[-1] < losses[best]:
                    best, p = i, staged[:, 1]
            rows.append({"model": "gbm", "learning_rate": lr, "max_leaf_nodes": leaves,
                         "max_iter": best + 1, "valid_log_loss": float(losses[best]),
                         "valid_roc_auc": float(roc_auc_score(yv, p))})  # fmt: skip
            fits.append((m, p))
    table = pd.DataFrame(rows)
    i_top = int(table.valid_log_loss.idxmin())
    top = table.loc[i_top]
    params = {"kind": "gbm", "learning_rate": float(top.learning_rate),
              "max_leaf_nodes": int(top.max_leaf_nodes), "max_iter": int(top.max_iter)}  # fmt: skip
    model = ChurnModel(**{**params, "seed": seed})
    model.features_ = features
    fitted, staged_p = fits[i_top]
    model.estimator_ = _first_trees(fitted, params["max_iter"])
    if model.estimator_ is None or not np.array_equal(
        model.estimator_.predict_proba(xv)[:, 1], staged_p
    ):
        model.fit(train, label_col, features)
    return params, table, model


def _first_trees(
    estimator: HistGradientBoostingClassifier, n: int
) -> HistGradientBoostingClassifier | None:
    """Return a copy of a fitted boosting model keeping its first ``n`` iterations.

    Reads scikit-learn's private ``_predictors``; None when they are not as expected.
    """
    import copy

    predictors = getattr(estimator, "_predictors", None)
    if not isinstance(predictors, list) or not 1 <= n <= len(predictors):
        return None
    cut = copy.copy(estimator)
    cut._predictors = predictors[:n]  # n_iter_ is the length of this list
    cut.max_iter = n
    for name in ("train_score_", "validation_score_"):
        score = getattr(estimator, name, None)
        if isinstance(score, np.ndarray) and len(score) > n:
            setattr(cut, name, score[: n + 1])
    return cut


def tune_logistic(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
    seed: int = 42,
    label_col: str = "churned",
    features: list[str] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Choose the logistic regression's L2 strength by log loss on the validation frame.

    Parameters
    ----------
    train, valid : pandas.DataFrame
        Labelled frames.
    cs : tuple of float
        Inverse regularisation strengths tried.
    seed : int, default 42
        Random seed.
    label_col : str, default "churned"
        Label column.
    features : list of str, optional
        Input columns (all features by default).

    Returns
    -------
    tuple
        (best parameters for :class:`ChurnModel`, table of candidates, the best
        :class:`ChurnModel` fitted on ``train``).
    """
    from sklearn.metrics import log_loss

    rows, models = [], []
    for c in cs:
        m = ChurnModel("logistic", seed, c=c).fit(train, label_col, features)
        p = m.predict_proba(valid)
        rows.append({"model": "logistic", "c": c,
                     "valid_log_loss": float(log_loss(valid[label_col].astype(int), p, labels=[0, 1])),
                     "valid_roc_auc": float(roc_auc_score(valid[label_col].astype(int), p))})  # fmt: skip
        models.append(m)
    table = pd.DataFrame(rows)
    i_top = int(table.valid_log_loss.idxmin())
    return {"kind": "logistic", "c": float(table.c[i_top])}, table, models[i_top]


MODEL_NAMES: dict[str, str] = {"gbm": "gradient boosting", "logistic": "logistic regression"}
"""Display names of the model kinds."""


class ChurnModelSet:
    """Gradient boosting, logistic regression and a one-feature baseline, tuned and calibrated.

    Hyper-parameters are chosen on the validation frame (:func:`tune_gbm`,
    :func:`tune_logistic`), then each model is calibrated on it
    (:class:`CalibratedChurnModel`). The best model is the one with the lower
    validation log loss; its F1-optimal threshold on validation is the decision
    threshold.

    Parameters
    ----------
    baseline_feature : str, default "recency_days"
        Feature of the one-feature logistic baseline ("recency only").
    learning_rates, max_leaf_nodes : tuple
        Gradient-boosting grid.
    max_iter : int, default 300
        Most boosting trees.
    logistic_c : tuple of float
        Logistic-regression grid.
    seed : int, default 42
        Random seed.
    params : dict, optional
        Fixed hyper-parameters per kind (skip tuning; e.g. reuse in a backtest).
    patience : int, default 30
        Early stopping of the boosting candidates (see :func:`tune_gbm`).

    Attributes
    ----------
    params_ : dict
        Hyper-parameters per kind.
    tuning_ : pandas.DataFrame
        Validation scores of every candidate (empty when ``params`` was given).
    models_ : dict
        Display name -> fitted :class:`CalibratedChurnModel`.
    best_ : str
        Display name of the best model.
    threshold_ : float
        Decision threshold of the best model.
    """

    def __init__(
        self,
        baseline_feature: str = "recency_days",
        learning_rates: tuple[float, ...] = (0.05, 0.1),
        max_leaf_nodes: tuple[int, ...] = (15, 31),
        max_iter: int = 300,
        logistic_c: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
        seed: int = 42,
        params: dict[str, dict[str, Any]] | None = None,
        patience: int = 30,
    ) -> None:
        self.baseline_feature = baseline_feature
        self.learning_rates = learning_rates
        self.max_leaf_nodes = max_leaf_nodes
        self.max_iter = max_iter
        self.logistic_c = logistic_c
        self.seed = seed
        self.params = params
        self.patience = patience

    @property
    def baseline_name(self) -> str:
        """Display name of the one-feature baseline."""
        return f"{self.baseline_feature.removesuffix('_days')} only"

    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame, label_col: str = "churned"
    ) -> ChurnModelSet:
        """Tune, fit and calibrate every model.

        Parameters
        ----------
        train, valid : pandas.DataFrame
            Labelled frames of the split.
        label_col : str, default "churned"
            Label column.

        Returns
        -------
        ChurnModelSet
            self.

        Raises
        ------
        ValueError
            If the baseline feature is missing.
        """
        from sklearn.metrics import log_loss

        require_columns(train, [self.baseline_feature], "train")
        tuned: dict[str, ChurnModel] = {}  # the chosen candidates, already fitted on train
        if self.params is None:
            gbm, t1, tuned["gbm"] = tune_gbm(train, valid, self.learning_rates, self.max_leaf_nodes,
                                             self.max_iter, self.seed, label_col, self.patience)  # fmt: skip
            logit, t2, tuned["logistic"] = tune_logistic(
                train, valid, self.logistic_c, self.seed, label_col
            )
            self.params_ = {"gbm": gbm, "logistic": logit}
            self.tuning_ = pd.concat([t1, t2], ignore_index=True)
        else:
            self.params_ = self.params
            self.tuning_ = pd.DataFrame()
        self.models_: dict[str, CalibratedChurnModel] = {}
        loss = {}
        for kind, p in self.params_.items():
            base = tuned.get(kind) or ChurnModel(**{**p, "seed": self.seed})
            m = CalibratedChurnModel(base, self.seed).fit(
                train, valid, label_col, refit=kind not in tuned
            )
            self.models_[MODEL_NAMES[kind]] = m
            loss[MODEL_NAMES[kind]] = log_loss(
                valid[label_col].astype(int), m.predict_proba(valid), labels=[0, 1]
            )
        base = ChurnModel("logistic", self.seed)
        self.models_[self.baseline_name] = CalibratedChurnModel(base, self.seed).fit(
            train, valid, label_col, features=[self.baseline_feature]
        )
        self.best_ = min(loss, key=lambda k: loss[k])
        best = self.models_[self.best_]
        self.threshold_ = choose_threshold(valid[label_col], best.predict_proba(valid))
        return self

    def predict_proba(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Return every model's churn probabilities.

        Parameters
        ----------
        frame : pandas.DataFrame
            Rows with the features.

        Returns
        -------
        dict
            Display name -> probabilities.
        """
        return {name: m.predict_proba(frame) for name, m in self.models_.items()}


def bgnbd_churn_scores(
    summary: pd.DataFrame,
    customer_ids: pd.Series,
    window_days: int,
    time_unit_days: int = 7,
    penalizer: float = 0.001,
    fit_customers: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Return the BG/NBD probability of no purchase in the label window (a churn baseline).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`crm_analytics.features.clv_summary` at the cutoff, in units of
        ``time_unit_days``.
    customer_ids : pandas.Series
        Customers to score, in order.
    window_days : int
        Label window.
    time_unit_days : int, default 7
        Unit of the summary.
    penalizer : float, default 0.001
        L2 penalty of the fit.
    fit_customers : int, default 0
        Customers (a seeded sample of ``summary``) the four parameters are fitted on
        when there are more; 0 fits on every customer. Every customer is scored.
    seed : int, default 0
        Seed of that sample.

    Returns
    -------
    numpy.ndarray
        Probabilities aligned with ``customer_ids`` (NaN for a customer absent from
        the summary).
    """
    from crm_analytics.clv import CLVModel

    unit = "W" if time_unit_days == 7 else "D"
    fitted_on = summary
    if 0 < fit_customers < len(summary):
        fitted_on = summary.sample(n=fit_customers, random_state=seed)
    model = CLVModel("bgnbd", penalizer=penalizer, time_unit=unit, spend=False).fit(fitted_on)
    p = pd.Series(model.probability_no_purchase(summary, window_days / time_unit_days),
                  index=summary.customer_id.to_numpy())  # fmt: skip
    return p.reindex(customer_ids.to_numpy()).to_numpy(dtype=float)


def backtest_origins(cutoff: dt.date | str, n: int, step_days: int) -> list[dt.date]:
    """Return ``n`` backtest cutoffs ending at ``cutoff``, ``step_days`` apart, oldest first.

    Parameters
    ----------
    cutoff : date or ISO string
        The latest origin.
    n : int
        Number of origins.
    step_days : int
        Days between origins.

    Returns
    -------
    list of datetime.date
        Origins.
    """
    c = dt.date.fromisoformat(str(cutoff)[:10])
    return [c - dt.timedelta(days=k * step_days) for k in range(n - 1, -1, -1)]


def frame_sharing_order(origins: list[dt.date], window_days: int) -> list[dt.date]:
    """Return the origins in an order that lets consecutive origins share their frames.

    An origin's split reads frames at the origin and at whole label windows before
    it (see :func:`training_cutoffs`), so two origins a whole number of windows apart
    share all but one of them. The newest origin comes first (the test cutoff, whose
    training frames the main split has just built), followed by the origins whole
    windows before it, newest first; then the same from the newest origin left. A
    frame cache holding one split's frames (``FrameSource(max_cached=...)``) then
    builds one new frame per origin within a chain instead of all of them.

    Parameters
    ----------
    origins : list of date
        Backtest origins (see :func:`backtest_origins`).
    window_days : int
        Label window, the spacing of an origin's cutoffs.

    Returns
    -------
    list of datetime.date
        The same origins, reordered.
    """
    left = sorted(origins, reverse=True)
    if window_days <= 0:
        return left
    order: list[dt.date] = []
    while left:
        chain = [o for o in left if (left[0] - o).days % window_days == 0]  # left[0] included
        order += chain
        left = [o for o in left if o not in chain]
    return order


def rolling_backtest(
    origins: list[dt.date],
    split_at: Callable[[dt.date], ChurnSplit],
    models: Callable[[], ChurnModelSet],
    extra_scores: Callable[[ChurnSplit], dict[str, np.ndarray]] | None = None,
    label_col: str = "churned",
    window_days: int | None = None,
    fitted: dict[str, ChurnModelSet] | None = None,
) -> pd.DataFrame:
    """Refit and evaluate at each origin (rolling origin), one row per origin and model.

    Parameters
    ----------
    origins : list of date
        Test cutoffs (see :func:`backtest_origins`).
    split_at : callable
        Origin -> :class:`ChurnSplit` (e.g. :func:`split_by_time` with its settings bound).
    models : callable
        Returns an unfitted :class:`ChurnModelSet` (fixed hyper-parameters keep it fast).
    extra_scores : callable, optional
        Split -> further scores of its test frame (e.g. the BG/NBD baseline).
    label_col : str, default "churned"
        Label column.
    window_days : int, optional
        Label window of a time-based ``split_at``: the origins are then visited in
        :func:`frame_sharing_order`, so that a bounded frame cache builds fewer
        frames. The rows come out in the order of ``origins`` either way.
    fitted : dict, optional
        ``str(origin)`` -> a model set already fitted on the training and
        validation frames ``split_at(origin)`` gives, with the settings ``models``
        has (e.g. the main model set at the test cutoff): it is evaluated
        instead of refitted, with the same result.

    Returns
    -------
    pandas.DataFrame
        origin, design, model, customers and the metrics of :func:`evaluate`.
    """
    rows = []
    visit = frame_sharing_order(origins, window_days) if window_days else list(origins)
    for origin in visit:
        split = split_at(origin)
        model_set = (fitted or {}).get(str(origin))
        if model_set is None:
            model_set = models().fit(split.train, split.valid, label_col)
        scores = model_set.predict_proba(split.test)
        if extra_scores is not None:
            scores |= extra_scores(split)
        y = split.test[label_col].astype(int).to_numpy()
        for name, p in scores.items():
            known = ~np.isnan(p)
            rows.append({"origin": str(origin), "design": split.design, "model": name,
                         "customers": int(known.sum()), **evaluate(y[known], p[known])})  # fmt: skip
    out = pd.DataFrame(rows)
    if len(out):  # in the order of the origins given, models in their own order
        rank = {str(o): i for i, o in enumerate(origins)}
        out = out.sort_values("origin", key=lambda s: s.map(rank), kind="stable", ignore_index=True)
    return out


def backtest_summary(backtest: pd.DataFrame, metrics: tuple[str, ...] = ("roc_auc", "pr_auc",
                     "brier", "top_decile_lift", "calibration_error")) -> pd.DataFrame:  # fmt: skip
    """Return the mean, standard deviation, minimum and maximum of each metric per model.

    Parameters
    ----------
    backtest : pandas.DataFrame
        :func:`rolling_backtest` output.
    metrics : tuple of str
        Metric columns.

    Returns
    -------
    pandas.DataFrame
        One row per model (in first-seen order), columns ``<metric>_mean``,
        ``_std``, ``_min``, ``_max`` and ``origins``.
    """
    g = backtest.groupby("model", sort=False)[list(metrics)]
    out = g.agg(["mean", "std", "min", "max"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["origins"] = backtest.groupby("model", sort=False).size()
    return out.reset_index()


FEATURE_LABELS: dict[str, str] = {
    "recency_days": "days since last order",
    "frequency": "paid orders",
    "monetary_total": "total spend",
    "monetary_mean": "average order value",
    "tenure_days": "days as a customer",
    "orders_recent": "orders in the activity window",
    "n_refunds": "refunds",
    "refund_share": "share of orders refunded",
    "events_recent": "web/app events in the activity window",
    "n_tickets": "support tickets",
    "tickets_recent": "recent support tickets",
    "mean_satisfaction": "ticket satisfaction",
    "mean_nps": "NPS answer",
    "mean_csat": "CSAT answer",
    "gap_mean_days": "average days between purchases",
    "gap_std_days": "variability of days between purchases",
    "gap_last_days": "days between the last two purchases",
    "views": "product views",
    "cart_adds": "add-to-cart events",
    "abandoned_cart_days": "days with an abandoned cart",
    "browsed_not_bought": "categories browsed but not bought",
    "age_years": "age",
    "consent": "marketing consent",
}
"""Plain-language names of churn features, for reasons and importance tables."""


def feature_label(name: str) -> str:
    """Return the plain-language name of a churn feature (the column name when unknown).

    Parameters
    ----------
    name : str
        Feature column.

    Returns
    -------
    str
        Label.
    """
    if name in FEATURE_LABELS:
        return FEATURE_LABELS[name]
    for prefix, text in (("orders_trend_", "order-rate change, last "), ("orders_", "orders, last "),
                         ("spend_", "spend, last "), ("share_", "share of orders via "),
                         ("cat_", "share of purchases in "), ("gender_", "gender ")):  # fmt: skip
        if name.startswith(prefix):
            rest = name.removeprefix(prefix)
            return text + (rest.replace("d", " days") if rest[:-1].isdigit() else rest)
    return name


def permutation_importance_table(
    model: CalibratedChurnModel,
    frame: pd.DataFrame,
    n_repeats: int = 5,
    seed: int = 42,
    max_rows: int = 5000,
    label_col: str = "churned",
) -> pd.DataFrame:
    """Return the drop in ROC AUC when each feature is shuffled (on holdout rows).

    Calibration is monotone, so the base model's ranking is what is measured.

    Parameters
    ----------
    model : CalibratedChurnModel
        Fitted model.
    frame : pandas.DataFrame
        Labelled holdout frame.
    n_repeats : int, default 5
        Shuffles per feature.
    seed : int, default 42
        Random seed (also of the row sample).
    max_rows : int, default 5000
        Rows sampled from ``frame`` to bound the time.
    label_col : str, default "churned"
        Label column.

    Returns
    -------
    pandas.DataFrame
        feature, label, importance (mean AUC drop), importance_std; largest first.
    """
    from sklearn.inspection import permutation_importance

    rows = frame.sample(min(max_rows, len(frame)), random_state=seed)
    features = model.base.features_
    r = permutation_importance(
        model.base.estimator_, rows[features].astype(float), rows[label_col].astype(int),
        scoring="roc_auc", n_repeats=n_repeats, random_state=seed,
    )  # fmt: skip
    out = pd.DataFrame({"feature": features, "label": [feature_label(f) for f in features],
                        "importance": r.importances_mean, "importance_std": r.importances_std})  # fmt: skip
    return out.sort_values(["importance", "feature"], ascending=[False, True], ignore_index=True)


def _split_thresholds(model: ChurnModel) -> dict[int, np.ndarray] | None:
    """Return, per feature index, the sorted thresholds a boosting model's trees split it at.

    Features never split on are absent. None for other models, or when the trees
    are not readable (they are a private part of scikit-learn's
    HistGradientBoostingClassifier) or split on categories.
    """
    est = getattr(model, "estimator_", None)
    if not isinstance(est, HistGradientBoostingClassifier):
        return None
    try:
        nodes = np.concatenate([tree.nodes for trees in est._predictors for tree in trees])
        split = nodes["is_leaf"] == 0
        if "is_categorical" in (nodes.dtype.names or ()) and nodes["is_categorical"][split].any():
            return None
        feature, threshold = nodes["feature_idx"][split], nodes["num_threshold"][split]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return {int(j): np.unique(threshold[feature == j]) for j in np.unique(feature)}


class _TreeScorer:
    """Churn probabilities of a calibrated boosting model, rebuilt from its trees' leaf values.

    Setting one feature to its reference only changes the trees that split on it, so
    the rise it causes is found by re-predicting those trees alone: the customer's
    raw score minus the old leaf values of those trees plus the new ones, through the
    model's calibration. This reads scikit-learn's private tree structures
    (HistGradientBoostingClassifier keeps its trees in ``_predictors``), so
    :meth:`build` returns None when they are not as expected, and callers fall back
    to re-predicting the whole model.
    """

    def __init__(
        self,
        predictors: list[Any],
        baseline: float,
        calibrate: Callable[[np.ndarray], np.ndarray],
        known_bitsets: np.ndarray,
        feature_map: np.ndarray,
        n_features: int,
    ) -> None:
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        self.predictors = predictors
        self.baseline = baseline
        self.calibrate = calibrate
        self.known_bitsets = known_bitsets
        self.feature_map = feature_map
        self.n_threads = _openmp_effective_n_threads()
        used = [set() for _ in range(n_features)]
        for t, tree in enumerate(predictors):
            split = tree.nodes["is_leaf"] == 0
            for j in np.unique(tree.nodes["feature_idx"][split]):
                used[int(j)].add(t)
        #: per feature position, the trees that split on it
        self.trees_of = [np.array(sorted(u), dtype=np.intp) for u in used]

    @classmethod
    def build(cls, model: CalibratedChurnModel) -> _TreeScorer | None:
        """Return the scorer of a calibrated binary boosting model, or None for other models."""
        from scipy.special import expit

        est = getattr(model.base, "estimator_", None)
        if not isinstance(est, HistGradientBoostingClassifier):
            return None
        try:
            if est.n_trees_per_iteration_ != 1 or any(len(it) != 1 for it in est._predictors):
                return None
            predictors = [it[0] for it in est._predictors]
            nodes = np.concatenate([tree.nodes for tree in predictors])
            split = nodes["is_leaf"] == 0
            if (
                "is_categorical" in (nodes.dtype.names or ())
                and nodes["is_categorical"][split].any()
            ):
                return None
            known_bitsets, feature_map = est._bin_mapper.make_known_categories_bitsets()
            baseline = float(np.asarray(est._baseline_prediction).ravel()[0])
            calibrator = getattr(model, "calibrator_", None)
            if calibrator is None:
                calibrate: Callable[[np.ndarray], np.ndarray] = expit
            else:
                fitted = calibrator.calibrated_classifiers_
                if len(fitted) != 1 or len(fitted[0].calibrators) != 1:
                    return None
                calibrate = fitted[0].calibrators[0].predict
            return cls(predictors, baseline, calibrate, known_bitsets, feature_map,
                       len(model.base.features_))  # fmt: skip
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None

    def leaves(self, x: np.ndarray, trees: np.ndarray | None = None) -> np.ndarray:
        """Return the leaf value of each row of ``x`` in each of ``trees`` (all by default)."""
        trees = np.arange(len(self.predictors)) if trees is None else trees
        out = np.empty((len(x), len(trees)))
        for c, t in enumerate(trees):
            out[:, c] = self.predictors[t].predict(
                x, self.known_bitsets, self.feature_map, self.n_threads
            )
        return out

    def raw(self, leaves: np.ndarray) -> np.ndarray:
        """Return the raw scores, summed tree by tree in the model's own order."""
        raw = np.full(len(leaves), self.baseline)
        for c in range(leaves.shape[1]):
            raw += leaves[:, c]
        return raw

    def proba(self, raw: np.ndarray) -> np.ndarray:
        """Return calibrated probabilities of raw scores."""
        return np.asarray(self.calibrate(raw), dtype=float)


def top_reasons(
    model: CalibratedChurnModel,
    frame: pd.DataFrame,
    reference: pd.Series,
    k: int = 3,
    min_points: float = 1.0,
    batch: int = 50000,
    n_jobs: int = 0,
) -> pd.Series:
    """Return each customer's top reasons for their churn risk, in words.

    For every feature, the customer's probability is recomputed with that feature
    set to the ``reference`` value (e.g. the training median); the features whose
    own value raises the risk most are the reasons, with the rise in percentage points.

    Parameters
    ----------
    model : CalibratedChurnModel
        Fitted model.
    frame : pandas.DataFrame
        Customers to explain (rows with the model's features).
    reference : pandas.Series
        Feature -> typical value.
    k : int, default 3
        Reasons per customer.
    min_points : float, default 1.0
        Smallest rise, in percentage points, reported as a reason.
    batch : int, default 50000
        Customers explained at a time (bounds memory; the reasons do not depend on it).
    n_jobs : int, default 0
        Threads explaining batches at once; 0 means one per core.

    Returns
    -------
    pandas.Series
        One string per row, e.g. "days since last order 212 (+31 pts); ...". When
        no single feature raises a probability of at least 0.5 by ``min_points``
        (near 1, only several features together explain it), the features that
        raise it at all, e.g. "together: days since last order 400; NPS answer -80";
        otherwise empty.

    Notes
    -----
    For a boosting model only the rows whose value is on another side of some split
    than the reference are re-predicted, and only through the trees that split on
    the feature (see ``_TreeScorer``); the rises equal a full re-prediction up to
    rounding (1e-12).
    """
    scorer = _TreeScorer.build(model)
    if len(frame) > batch:
        workers = worker_count(n_jobs)
        if scorer is not None and workers > 1:
            scorer.n_threads = 1  # the batches run side by side instead

        def one(start: int) -> pd.Series:
            return _top_reasons(
                model, scorer, frame.iloc[start : start + batch], reference, k, min_points
            )

        # the tree walks and array work release the GIL: batches run on threads, in order
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(one, range(0, len(frame), batch)))
        return pd.concat(parts).rename("top_reasons")
    return _top_reasons(model, scorer, frame, reference, k, min_points)


def _top_reasons(
    model: CalibratedChurnModel,
    scorer: _TreeScorer | None,
    frame: pd.DataFrame,
    reference: pd.Series,
    k: int,
    min_points: float,
) -> pd.Series:
    """:func:`top_reasons` of one batch."""
    features = model.base.features_
    values = frame[features].to_numpy(dtype=float, copy=True)
    leaves = None
    if scorer is not None:
        leaves = scorer.leaves(values)
        raw = scorer.raw(leaves)
        p = scorer.proba(raw)
        check = slice(0, 1000)  # the scorer must reproduce the model, or it is not used
        if not np.allclose(p[check], model.predict_proba(frame.iloc[check]), rtol=0, atol=1e-9):
            scorer = leaves = None
    if scorer is None:
        p = model.predict_proba(frame)
    rises = np.zeros((len(values), len(features)))
    thresholds = _split_thresholds(model.base)
    for j, f in enumerate(features):
        ref = reference.get(f, np.nan)
        if pd.isna(ref):
            continue
        # only customers whose value differs from the reference can change: re-predict those
        changes = values[:, j] != float(ref)  # NaN differs from any reference
        if thresholds is not None:
            # trees send x left when x <= threshold: a value with as many thresholds below it
            # as the reference takes the same path through every tree, so nothing changes
            t = thresholds.get(j, np.empty(0))
            same_side = np.searchsorted(t, values[:, j]) == np.searchsorted(t, float(ref))
            changes &= ~(same_side & ~np.isnan(values[:, j]))
        rows = np.flatnonzero(changes)
        if len(rows) == 0:
            continue
        changed = values[rows]
        changed[:, j] = float(ref)
        if scorer is not None and leaves is not None:
            trees = scorer.trees_of[j]
            # the same reduction over arrays of one shape: unchanged leaves cancel exactly
            before = leaves[np.ix_(rows, trees)].sum(axis=1)
            after = scorer.leaves(changed, trees).sum(axis=1)
            q = scorer.proba(raw[rows] + (after - before))
        else:
            q = model.predict_proba(pd.DataFrame(changed, columns=features))
        rises[rows, j] = (p[rows] - q) * 100
    return pd.Series(
        _reason_texts(rises, values, p, [feature_label(f) for f in features], k, min_points),
        index=frame.index,
        name="top_reasons",
    )


def _reason_texts(
    rises: np.ndarray,
    values: np.ndarray,
    p: np.ndarray,
    labels: list[str],
    k: int,
    min_points: float,
) -> list[str]:
    """Word each row's ``k`` largest rises (see :func:`top_reasons`)."""
    order = np.argsort(-rises, axis=1)[:, :k]
    # plain Python numbers: indexing NumPy arrays element by element is far slower
    top_rises = np.take_along_axis(rises, order, axis=1).tolist()
    top_values = np.take_along_axis(values, order, axis=1).tolist()
    out = []
    for cols, rs, vs, pi in zip(order.tolist(), top_rises, top_values, p.tolist(), strict=True):
        if not rs or rs[0] <= 0:
            out.append("")
            continue
        parts, joint = [], []
        for j, r, v in zip(cols, rs, vs, strict=True):
            if r <= 0:
                break
            shown = "missing" if v != v else (f"{v:,.0f}" if abs(v) >= 10 else f"{v:,.2g}")
            joint.append(f"{labels[j]} {shown}")
            if r >= min_points:
                parts.append(f"{joint[-1]} (+{r:.0f} pts)")
        # a high probability may not move by min_points for any one feature: name them jointly
        joint_text = "together: " + "; ".join(joint) if joint and pi >= 0.5 else ""
        out.append("; ".join(parts) if parts else joint_text)
    return out


CUTOFF_PLACEHOLDER = dt.date(1901, 2, 3)
"""Cutoff the churn-frame SQL template is compiled with (never executed)."""


def _with_cutoff(sql: str, cutoff: dt.date) -> str:
    """Return DuckDB SQL compiled at :data:`CUTOFF_PLACEHOLDER` with ``cutoff`` in its place."""
    p, c = CUTOFF_PLACEHOLDER, cutoff
    return sql.replace(
        f"MAKE_TIMESTAMP({p.year}, {p.month}, {p.day}, 0, 0, 0.0)",
        f"MAKE_TIMESTAMP({c.year}, {c.month}, {c.day}, 0, 0, 0.0)",
    ).replace(
        f"MAKE_DATE({p.year}, {p.month}, {p.day})", f"MAKE_DATE({c.year}, {c.month}, {c.day})"
    )


class FrameSource:
    """Churn frames built in the store, cached per cutoff: call it as ``frame_at(cutoff, labelled)``.

    Parameters
    ----------
    tables : dict
        Clean tables (see :func:`crm_analytics.features.churn_features`).
    window_days : int
        Label window.
    categories : list of str, optional
        Category-mix columns.
    windows, activity_window_days
        See :func:`crm_analytics.features.churn_features`.
    max_cached : int, optional
        Keep at most this many frames, forgetting the least recently used
        (bounds memory when many cutoffs are visited); all by default.
    active_within_days : int, default 0
        The churn population (see :func:`crm_analytics.features.churn_frame`).

    Attributes
    ----------
    cached : dict
        (cutoff ISO date, labelled) -> frame, least recently used first.
    templates : dict
        labelled -> SQL of the frame at a placeholder cutoff, or None where the
        template did not reproduce the compiled SQL (DuckDB stores only).

    Notes
    -----
    Building and compiling the frame's expression takes about a second (47 features
    over six tables), as long as running it on a sample of 100k customers. The
    expression differs between cutoffs only in the cutoff's literal, so on a DuckDB
    store the first frame is also compiled at a placeholder cutoff; when putting the
    real cutoff in its place gives exactly the SQL compiled for it, later cutoffs
    take the template with their own date instead of a new build and compile.
    """

    def __init__(
        self,
        tables: dict[str, ir.Table],
        window_days: int,
        categories: list[str] | None = None,
        windows: tuple[int, ...] = (30, 90, 180),
        activity_window_days: int = 90,
        max_cached: int | None = None,
        active_within_days: int = 0,
    ) -> None:
        self.tables = tables
        self.active_within_days = active_within_days
        self.window_days = window_days
        self.categories = categories
        self.windows = windows
        self.activity_window_days = activity_window_days
        self.max_cached = max_cached
        self.cached: dict[tuple[str, bool], pd.DataFrame] = {}
        self.templates: dict[bool, str | None] = {}
        self._schema: dict[bool, Any] = {}

    def __call__(self, cutoff: dt.date | str, labelled: bool = True) -> pd.DataFrame:
        """Return the churn frame at ``cutoff``, sorted by customer_id (built once per cutoff).

        Parameters
        ----------
        cutoff : date or ISO string
            The cutoff.
        labelled : bool, default True
            With the label (see :func:`crm_analytics.features.churn_frame`).

        Returns
        -------
        pandas.DataFrame
            One row per customer active at the cutoff (see ``active_within_days``).
        """
        key = (str(cutoff)[:10], labelled)
        if key in self.cached:
            self.cached[key] = self.cached.pop(key)  # most recently used last
            return self.cached[key]
        frame = self._read(dt.date.fromisoformat(key[0]), labelled)  # sorted by customer_id
        if not frame.customer_id.is_monotonic_increasing:  # a collation other than code points
            frame = frame.sort_values("customer_id", ignore_index=True)
        if self.max_cached is not None:
            while self.cached and len(self.cached) >= self.max_cached:
                del self.cached[next(iter(self.cached))]
        self.cached[key] = frame
        return frame

    def _expr(self, cutoff: dt.date, labelled: bool) -> ir.Table:
        """Return the frame's expression at ``cutoff``."""
        from crm_analytics.features import churn_frame

        return churn_frame(self.tables, cutoff, self.window_days, self.categories, labelled,
                           self.windows, self.activity_window_days,
                           self.active_within_days)  # fmt: skip

    def _read(self, cutoff: dt.date, labelled: bool) -> pd.DataFrame:
        """Run the frame at ``cutoff`` in the store, from the SQL template when there is one."""
        from ibis.backends.duckdb.converter import DuckDBPyArrowData

        if labelled not in self.templates:
            self._try_template(cutoff, labelled)  # compiles this cutoff's SQL on the way
        template = self.templates[labelled]
        if template is None:
            return to_frame(self._expr(cutoff, labelled))
        con = backend_of(next(iter(self.tables.values())))
        arrow = con.raw_sql(_with_cutoff(template, cutoff)).to_arrow_table()
        schema = self._schema[labelled]
        # the types ibis gives the result (DuckDB's sums are 128-bit: ibis casts them back)
        return arrow_to_frame(DuckDBPyArrowData.convert_table(arrow, schema), schema)

    def _try_template(self, cutoff: dt.date, labelled: bool) -> None:
        """Keep the frame's SQL at the placeholder when it gives ``cutoff``'s SQL exactly."""
        self.templates[labelled] = None
        con = backend_of(next(iter(self.tables.values())))
        if con is None or con.name != "duckdb" or cutoff == CUTOFF_PLACEHOLDER:
            return
        expr = self._expr(cutoff, labelled)
        if backend_of(expr) is not con:  # tables on several connections: no single SQL
            return
        placeholder = con.compile(self._expr(CUTOFF_PLACEHOLDER, labelled))
        if _with_cutoff(placeholder, cutoff) == con.compile(expr):
            self.templates[labelled] = placeholder
            self._schema[labelled] = expr.schema()

    def clear(self) -> None:
        """Forget the cached frames (frames already handed out stay valid)."""
        self.cached.clear()


def customer_split_at(frame: pd.DataFrame, test_size: float = 0.25) -> Callable[[int], ChurnSplit]:
    """Return ``split_at(seed)``: a stratified customer split, for data without dates.

    Used by :func:`rolling_backtest` on contractual data, where the "origins" are
    seeds of repeated holdouts.

    Parameters
    ----------
    frame : pandas.DataFrame
        Labelled frame.
    test_size : float, default 0.25
        Share held out.

    Returns
    -------
    callable
        Seed -> :class:`ChurnSplit` with design "customer holdout".
    """

    def split_at(seed: int) -> ChurnSplit:
        train, valid, test = split_customers(frame, test_size, seed)
        return ChurnSplit(train, valid, test, "customer holdout", {"seed": [str(seed)]})

    return split_at


def bgnbd_scorer(
    orders: ir.Table,
    window_days: int,
    time_unit_days: int = 7,
    penalizer: float = 0.001,
    fit_customers: int = 0,
    seed: int = 0,
) -> Callable[[ChurnSplit], dict[str, np.ndarray]]:
    """Return a function giving the BG/NBD baseline for a split's test customers.

    Parameters
    ----------
    orders : ibis Table
        Clean orders.
    window_days : int
        Label window.
    time_unit_days : int, default 7
        Time unit of the purchase model.
    penalizer : float, default 0.001
        L2 penalty.
    fit_customers : int, default 0
        Customers sampled (seeded) for the fit when there are more; 0 means all
        (see :func:`bgnbd_churn_scores`).
    seed : int, default 0
        Seed of that sample.

    Returns
    -------
    callable
        Split -> {"BG/NBD": probabilities of no purchase in the window}, fitted
        on data before the split's test cutoff.
    """
    from crm_analytics.features import clv_summary

    def score(split: ChurnSplit) -> dict[str, np.ndarray]:
        cutoff = split.cutoffs["test"][0]
        summary = to_frame(clv_summary(orders, cutoff, time_unit_days))
        return {"BG/NBD": bgnbd_churn_scores(summary, split.test.customer_id, window_days,
                                             time_unit_days, penalizer, fit_customers, seed)}  # fmt: skip

    return score


def suggest_window(
    gaps: pd.DataFrame, quantile: float = 0.9, round_to: int = 30
) -> tuple[int, float]:
    """Return a churn window from the distribution of days between purchases.

    The window is the ``quantile`` of the gaps between a customer's consecutive
    purchase days, rounded up to a multiple of ``round_to`` days: a customer
    silent for longer than that has stayed away longer than most repeat buyers
    ever do between two purchases.

    Parameters
    ----------
    gaps : pandas.DataFrame
        gap_days and n (:func:`crm_analytics.features.gap_distribution`).
    quantile : float, default 0.9
        Share of gaps the window should cover.
    round_to : int, default 30
        Rounding step in days.

    Returns
    -------
    tuple
        (window in days, the quantile of the gaps in days).

    Raises
    ------
    ValueError
        If there are no gaps (no customer bought twice) or the quantile is not in (0, 1).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if gaps.empty or gaps.n.sum() == 0:
        raise ValueError(
            "no customer bought on two different days: set churn_window_days explicitly"
        )
    g = gaps.sort_values("gap_days")
    share = g.n.cumsum() / g.n.sum()
    q = float(g.gap_days.to_numpy()[int(np.searchsorted(share.to_numpy(), quantile))])
    return int(np.ceil(q / round_to) * round_to), q
