import numpy as np
import pandas as pd
import pytest

from crm_analytics import churn


def test_label_window_must_be_observed():
    churn.check_label_window("2025-06-30", 90, "2025-09-27")  # last label day 2025-09-27
    with pytest.raises(
        ValueError, match=r"runs past the last day of data \(2025-09-26\).*2025-06-29"
    ):
        churn.check_label_window("2025-06-30", 90, "2025-09-26")
    with pytest.raises(ValueError, match="positive"):
        churn.check_label_window("2025-06-30", 0, "2026-01-01")


def test_feature_columns_exclude_ids_label_and_times():
    frame = pd.DataFrame(
        {
            "customer_id": ["a"],
            "churned": [1],
            "last_order_ts": pd.to_datetime(["2025-01-01"]),
            "frequency": [3],
            "flag": [True],
            "note": ["x"],
            "recency_days": [4.0],
        }
    )
    assert churn.feature_columns(frame) == ["frequency", "recency_days"]


def test_evaluate_known_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    got = churn.evaluate(y, p)
    assert got["roc_auc"] == pytest.approx(0.75)
    assert got["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert got["base_rate"] == 0.5


def test_holdout_split_is_stratified_and_disjoint():
    frame = pd.DataFrame(
        {"customer_id": [f"c{i}" for i in range(100)], "churned": [1] * 30 + [0] * 70}
    )
    train, test = churn.holdout_split(frame, 0.2, seed=3)
    assert len(test) == 20 and test.churned.sum() == 6
    assert not set(train.customer_id) & set(test.customer_id)
    with pytest.raises(ValueError, match="single class"):
        churn.holdout_split(frame.assign(churned=0))


@pytest.mark.parametrize("kind", ["gbm", "logistic"])
def test_models_learn_a_planted_signal(kind):
    rng = np.random.default_rng(5)
    n = 1500
    recency = rng.uniform(0, 300, n)
    noise = rng.normal(size=n)
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-(recency - 150) / 30))).astype(int)
    frame = pd.DataFrame(
        {"customer_id": range(n), "recency_days": recency, "noise": noise, "churned": churned}
    )
    frame.loc[::17, "noise"] = np.nan  # missing values are handled
    train, test = churn.holdout_split(frame, seed=1)
    model = churn.ChurnModel(kind, seed=1).fit(train)
    assert model.features_ == ["recency_days", "noise"]
    assert churn.evaluate(test.churned, model.predict_proba(test))["roc_auc"] > 0.85
    with pytest.raises(ValueError, match="kind"):
        churn.ChurnModel("svm").fit(train)


def test_risk_tiers():
    assert churn.risk_tiers([0.1, 0.4, 0.69, 0.7, 0.95]).tolist() == [
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]
