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

NON_FEATURES: frozenset[str] = frozenset(
    {
        "customer_id",
        "churned",
        "first_order_ts",
        "last_order_ts",
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
    if label_col not in frame.columns:
        raise ValueError(f"missing column {label_col!r}")
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

    Attributes
    ----------
    features_ : list of str
        Input columns.
    estimator_ : sklearn estimator
        The fitted model.
    """

    def __init__(
        self, kind: str = "gbm", seed: int = 42, max_iter: int = 200, learning_rate: float = 0.06
    ) -> None:
        self.kind = kind
        self.seed = seed
        self.max_iter = max_iter
        self.learning_rate = learning_rate

    def _estimator(self) -> HistGradientBoostingClassifier | Pipeline:
        """Return an unfitted estimator of the chosen kind."""
        if self.kind == "gbm":
            return HistGradientBoostingClassifier(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                early_stopping=False,
                random_state=self.seed,
            )
        if self.kind == "logistic":
            return make_pipeline(
                SimpleImputer(strategy="median"),
                StandardScaler(),
                LogisticRegression(max_iter=max(self.max_iter, 500)),
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
        roc_auc, pr_auc, brier, base_rate, top_decile_lift.
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
        self, train: pd.DataFrame, valid: pd.DataFrame, label_col: str = "churned"
    ) -> CalibratedChurnModel:
        """Fit the base model on ``train`` and choose a calibration on ``valid``.

        Parameters
        ----------
        train, valid : pandas.DataFrame
            Churn frames of distinct customers.
        label_col : str, default "churned"
            Label column.

        Returns
        -------
        CalibratedChurnModel
            self.
        """
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        self.base.fit(train, label_col)
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
    for c in ("customer_id", "p_churn", value_col):
        if c not in scores.columns:
            raise ValueError(f"missing column {c!r}")
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
