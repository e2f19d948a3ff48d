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
