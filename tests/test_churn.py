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


def _orders():
    import ibis

    return {
        "orders": ibis.memtable(
            pd.DataFrame(
                {
                    "order_id": ["o1", "o2", "o3", "o4"],
                    "customer_id": ["a", "a", "b", "b"],
                    "order_ts": pd.to_datetime(
                        ["2025-01-10", "2025-03-05", "2025-02-01", "2025-02-20"]
                    ),
                    "amount": [10.0, 20.0, 5.0, 7.0],
                    "status": ["paid"] * 4,
                }
            )
        )
    }


def test_leakage_guard_passes_honest_features_and_names_leaking_ones():
    from crm_analytics import features

    tables, times = _orders(), {"orders": "order_ts"}
    churn.check_no_leakage(
        lambda t: features.customer_features(t["orders"], "2025-03-01"), tables, times, "2025-03-01"
    )

    def leaking(t):  # reads a month past the cutoff
        return features.customer_features(t["orders"], "2025-04-01")

    with pytest.raises(churn.LeakageError, match=r"at or after the cutoff 2025-03-01: .*frequency"):
        churn.check_no_leakage(leaking, tables, times, "2025-03-01")


def test_calibration_improves_brier_on_an_overconfident_model():
    rng = np.random.default_rng(3)
    n = 6000
    x = rng.normal(size=(n, 3))
    p_true = 1 / (1 + np.exp(-(0.8 * x[:, 0] - 0.5 * x[:, 1])))
    frame = pd.DataFrame(x, columns=["f1", "f2", "f3"]).assign(
        churned=(rng.uniform(size=n) < p_true).astype(int)
    )
    frame["customer_id"] = range(n)
    train, rest = churn.holdout_split(frame, 0.5, seed=1)
    valid, test = churn.holdout_split(rest, 0.5, seed=2)
    # a deliberately overfitted booster gives over-confident probabilities
    base = churn.ChurnModel("gbm", seed=1, max_iter=400, learning_rate=0.5)
    raw_brier = churn.evaluate(test.churned, churn.ChurnModel("gbm", seed=1, max_iter=400, learning_rate=0.5)
                               .fit(train).predict_proba(test))["brier"]  # fmt: skip
    model = churn.CalibratedChurnModel(base, seed=1).fit(train, valid)
    assert model.method_ in ("sigmoid", "isotonic")
    assert churn.evaluate(test.churned, model.predict_proba(test))["brier"] < raw_brier


def test_retention_targets_rank_by_expected_value():
    scores = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "p_churn": [0.9, 0.5, 0.1], "clv": [100.0, 1000.0, np.nan]}
    )
    got = churn.retention_targets(scores, save_rate=0.2, contact_cost=5.0)
    assert got.customer_id.tolist() == ["b", "a", "c"]
    assert got.expected_value.tolist() == pytest.approx([95.0, 13.0, -5.0])
    assert got.cumulative_value.tolist() == pytest.approx([95.0, 108.0, 103.0])
    with pytest.raises(ValueError, match="save_rate"):
        churn.retention_targets(scores, save_rate=2)


def test_oracle_scores():
    truth = pd.DataFrame(
        {
            "customer_id": ["gone", "alive", "leaves"],
            "dropout_date": pd.to_datetime(["2025-01-01", "2030-01-01", "2025-03-11"]),
            "purchase_rate_per_day": [0.1, 0.05, 0.05],
        }
    )
    got = churn.oracle_scores(pd.DataFrame({"customer_id": ["gone", "alive", "leaves", "unknown"]}), truth,
                              "2025-03-01", 30)  # fmt: skip
    assert got[0] == 1.0
    assert got[1] == pytest.approx(np.exp(-0.05 * 30))
    assert got[2] == pytest.approx(np.exp(-0.05 * 10))  # alive for 10 days of the window
    assert np.isnan(got[3])
