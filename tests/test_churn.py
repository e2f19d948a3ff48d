import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import churn, store


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


def test_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.05, 0.05, 0.05, 0.05, 0.95, 0.95, 0.95, 0.95])
    # two bins of four: observed 0.5 vs predicted 0.05 and 0.95 -> gap 0.45 each
    assert churn.calibration_error(y, p) == pytest.approx(0.45)
    assert churn.calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_gains_curve_by_hand():
    y = np.array([1, 0, 1, 0])
    g = churn.gains_curve(y, np.array([0.9, 0.8, 0.7, 0.1]), points=4)
    assert g.share_of_churners_found.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_threshold_and_confusion_table():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    t = churn.choose_threshold(y, p)
    assert t == pytest.approx(0.4)  # everyone from 0.4 up: precision 3/4, recall 1, best F1
    m = churn.confusion_table(y, p, t)
    assert m.loc["churned", "predicted churn"] == 3 and m.loc["stayed", "predicted churn"] == 1
    assert int(m.to_numpy().sum()) == 5


def test_training_cutoffs_step_back_one_window_and_stop_at_the_data():
    got = churn.training_cutoffs("2025-07-01", 90, 5, "2024-06-01", min_history_days=90)
    assert got == [dt.date(2025, 4, 2), dt.date(2025, 1, 2), dt.date(2024, 10, 4)]
    assert churn.training_cutoffs("2025-07-01", 90, 5, "2025-05-01") == []


def _panel(cutoff, labelled=True, n=400):
    """A frame at a cutoff whose churn depends on recency, different each cutoff."""
    rng = np.random.default_rng(abs(hash(str(cutoff))) % 2**32)
    recency = rng.exponential(60, n)
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-(recency - 60) / 20))).astype(int)
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "recency_days": recency,
                         "noise": rng.normal(size=n), "cutoff": cutoff,
                         "churned": churned if labelled else np.nan})  # fmt: skip


def test_split_by_time_uses_only_earlier_cutoffs_and_falls_back_honestly():
    seen = []

    def frame_at(c, labelled=True):
        seen.append((c, labelled))
        return _panel(c, labelled)

    s = churn.split_by_time(frame_at, "2025-07-01", 90, 2, "2024-06-01", 90)
    assert s.design == "temporal"
    assert s.cutoffs == {"train": ["2025-01-02", "2024-10-04"], "valid": ["2025-04-02"],
                         "test": ["2025-07-01"]}  # fmt: skip
    assert (
        set(s.train.cutoff) == {dt.date(2025, 1, 2), dt.date(2024, 10, 4)} and len(s.train) == 800
    )
    assert set(s.valid.cutoff) == {dt.date(2025, 4, 2)}
    # every training label window ends by the test cutoff
    assert all(c + dt.timedelta(days=90) <= dt.date(2025, 7, 1) for c, _ in seen[1:])
    one = churn.split_by_time(frame_at, "2025-07-01", 90, 2, "2024-12-01", 90)
    assert one.design == "temporal, customer validation"
    assert set(one.train.customer_id).isdisjoint(one.valid.customer_id)
    short = churn.split_by_time(frame_at, "2025-07-01", 90, 2, "2025-05-01", 90)
    assert short.design == "customer holdout"
    assert len(short.train) + len(short.valid) + len(short.test) == 400
    with pytest.raises(ValueError, match="cannot train a model to score now"):
        churn.split_by_time(frame_at, "2025-07-01", 90, 2, "2025-05-01", 90, labelled_test=False)
    sampled = churn.split_by_time(
        frame_at, "2025-07-01", 90, 2, "2024-06-01", 90, max_train_rows=100
    )
    assert len(sampled.train) == 100 and len(sampled.valid) == 400
    past_seen = []

    def past_at(c, labelled=True):
        past_seen.append(c)
        return _panel(c, labelled, n=50)

    seen.clear()
    split = churn.split_by_time(
        frame_at, "2025-07-01", 90, 2, "2024-06-01", 90, train_frame_at=past_at
    )
    assert seen == [(dt.date(2025, 7, 1), True)]  # only the test frame from the full source
    assert sorted(past_seen) == [dt.date(2024, 10, 4), dt.date(2025, 1, 2), dt.date(2025, 4, 2)]
    assert len(split.test) == 400 and len(split.valid) == 50 and len(split.train) == 100


def test_model_set_tunes_on_validation_and_beats_noise():
    train, valid, test = (_panel(c) for c in ("2025-01-01", "2025-02-01", "2025-03-01"))
    ms = churn.ChurnModelSet(learning_rates=(0.1,), max_leaf_nodes=(7, 15), max_iter=60,
                             logistic_c=(0.1, 1.0), seed=1).fit(train, valid)  # fmt: skip
    assert set(ms.models_) == {"gradient boosting", "logistic regression", "recency only"}
    assert len(ms.tuning_) == 4 and 1 <= ms.params_["gbm"]["max_iter"] <= 60
    assert ms.params_["gbm"]["max_leaf_nodes"] in (7, 15) and ms.params_["logistic"]["c"] in (
        0.1,
        1.0,
    )
    assert ms.best_ in ("gradient boosting", "logistic regression") and 0 < ms.threshold_ < 1
    table = churn.evaluation_table(test.churned, ms.predict_proba(test))
    assert (table.roc_auc > 0.75).all()
    assert ms.models_["recency only"].base.features_ == ["recency_days"]


def test_model_set_keeps_the_tuned_fits_which_equal_fresh_fits(monkeypatch):
    train, valid, test = (_panel(c) for c in ("2025-01-01", "2025-02-01", "2025-03-01"))
    settings = dict(learning_rates=(0.1, 0.3), max_leaf_nodes=(7, 15), max_iter=80,
                    logistic_c=(0.1, 1.0), seed=1)  # fmt: skip
    fits = []
    real_fit = churn.ChurnModel.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(self.kind)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(churn.ChurnModel, "fit", counting_fit)
    tuned = churn.ChurnModelSet(**settings).fit(train, valid)
    # the logistic candidates and the recency baseline; no second fit of the chosen models
    assert fits == ["logistic", "logistic", "logistic"]
    assert tuned.params_["gbm"]["max_iter"] < 80  # the cut-off fit is shorter than the tuning fit
    fits.clear()
    fresh = churn.ChurnModelSet(**settings, params=tuned.params_).fit(train, valid)
    assert fits == ["gbm", "logistic", "logistic"]
    for name, p in tuned.predict_proba(test).items():
        np.testing.assert_array_equal(p, fresh.predict_proba(test)[name], err_msg=name)
    gbm = tuned.models_["gradient boosting"].base.estimator_
    assert gbm.n_iter_ == tuned.params_["gbm"]["max_iter"] == len(gbm._predictors)
    assert tuned.best_ == fresh.best_ and tuned.threshold_ == fresh.threshold_


def test_first_trees_refuses_what_it_cannot_cut():
    train = _panel("2025-01-01")
    est = churn.ChurnModel("gbm", 1, 10)._estimator().fit(train[["recency_days"]], train.churned)
    assert churn._first_trees(est, 0) is None and churn._first_trees(est, 11) is None
    cut = churn._first_trees(est, 4)
    assert cut.n_iter_ == 4 and est.n_iter_ == 10  # the tuning fit itself is left whole
    assert churn._first_trees(churn.ChurnModel("logistic")._estimator(), 1) is None


def test_rolling_backtest_refits_at_every_origin():
    origins = churn.backtest_origins("2025-07-01", 3, 30)
    assert origins == [dt.date(2025, 5, 2), dt.date(2025, 6, 1), dt.date(2025, 7, 1)]
    calls = []

    def split_at(origin):
        calls.append(origin)
        d = _panel(origin)
        return churn.ChurnSplit(_panel(f"{origin}-t"), _panel(f"{origin}-v"), d, "temporal",
                                {"test": [str(origin)]})  # fmt: skip

    bt = churn.rolling_backtest(
        origins, split_at,
        lambda: churn.ChurnModelSet(params={"logistic": {"kind": "logistic", "c": 1.0}}),
        lambda s: {"noise": np.random.default_rng(0).uniform(size=len(s.test))},
    )  # fmt: skip
    assert calls == origins
    assert len(bt) == 3 * 3 and set(bt.model) == {"logistic regression", "recency only", "noise"}
    summary = churn.backtest_summary(bt).set_index("model")
    assert summary.loc["noise", "roc_auc_mean"] < summary.loc["logistic regression", "roc_auc_mean"]
    assert summary.loc["noise", "origins"] == 3
    by_hand = bt[bt.model == "noise"].roc_auc
    assert summary.loc["noise", "roc_auc_std"] == pytest.approx(by_hand.std())


def test_frame_sharing_order_chains_origins_whole_windows_apart():
    origins = churn.backtest_origins("2026-06-30", 4, 30)  # 04-01, 05-01, 05-31, 06-30
    d = dt.date
    assert churn.frame_sharing_order(origins, 60) == [
        d(2026, 6, 30),
        d(2026, 5, 1),
        d(2026, 5, 31),
        d(2026, 4, 1),
    ]
    assert (
        churn.frame_sharing_order(origins, 30) == origins[::-1]
    )  # every origin shares with the next
    assert churn.frame_sharing_order(origins, 70) == origins[::-1]  # none share: newest first
    assert churn.frame_sharing_order(origins, 45)[:2] == [
        d(2026, 6, 30),
        d(2026, 4, 1),
    ]  # 90 days: two windows
    assert sorted(churn.frame_sharing_order(origins, 0)) == origins


def test_rolling_backtest_visits_frame_sharing_origins_together_and_keeps_their_order():
    origins = churn.backtest_origins("2026-06-30", 4, 30)
    visited, built = [], []
    cache: dict[dt.date, pd.DataFrame] = {}

    def frame_at(cutoff):  # a frame cache holding one split's five frames, least recent out
        if cutoff in cache:
            cache[cutoff] = cache.pop(cutoff)
        else:
            built.append(cutoff)
            if len(cache) >= 5:
                del cache[next(iter(cache))]
            cache[cutoff] = _panel(cutoff)
        return cache[cutoff]

    def split_at(origin):
        visited.append(origin)
        cutoffs = [origin - dt.timedelta(days=60 * k) for k in range(5)]
        frames = [frame_at(c) for c in cutoffs]
        return churn.ChurnSplit(
            pd.concat(frames[2:], ignore_index=True), frames[1], frames[0], "temporal", {}
        )

    models = lambda: churn.ChurnModelSet(params={"logistic": {"kind": "logistic", "c": 1.0}})  # noqa: E731
    bt = churn.rolling_backtest(origins, split_at, models, window_days=60)
    assert visited == churn.frame_sharing_order(origins, 60)
    assert len(built) == 5 + 1 + 5 + 1  # each chain's second origin builds one new frame
    assert bt.origin.drop_duplicates().tolist() == [str(o) for o in origins]
    visited.clear(), built.clear(), cache.clear()
    plain = churn.rolling_backtest(origins, split_at, models)
    assert visited == origins and len(built) == 4 * 5
    pd.testing.assert_frame_equal(bt, plain)  # the order of the fits changes nothing else
    # a model set fitted before on an origin's frames is evaluated, not refitted
    newest = split_at(origins[-1])
    main = churn.ChurnModelSet(params={"logistic": {"kind": "logistic", "c": 1.0}}).fit(
        newest.train, newest.valid
    )
    fits = []
    counted = lambda: fits.append(1) or models()  # noqa: E731
    reused = churn.rolling_backtest(
        origins, split_at, counted, window_days=60, fitted={str(origins[-1]): main}
    )
    assert len(fits) == 3
    pd.testing.assert_frame_equal(reused, plain)


def test_top_reasons_name_the_feature_that_raises_risk():
    rng = np.random.default_rng(5)
    n = 3000
    frame = pd.DataFrame({"recency_days": rng.uniform(0, 300, n), "noise": rng.normal(size=n)})
    frame["churned"] = (rng.uniform(size=n) < frame.recency_days / 300).astype(int)
    frame["customer_id"] = range(n)
    train, valid = churn.holdout_split(frame, 0.3, seed=1)
    model = churn.CalibratedChurnModel(churn.ChurnModel("logistic"), seed=1).fit(train, valid)
    who = pd.DataFrame({"customer_id": [1, 2], "recency_days": [290.0, 10.0], "noise": [0.0, 0.0]})
    reasons = churn.top_reasons(model, who, train[["recency_days", "noise"]].median(), k=2)
    assert reasons.iloc[0].startswith("days since last order 290 (+")
    assert reasons.iloc[1] == ""  # a recent buyer: nothing raises the risk
    imp = churn.permutation_importance_table(model, valid, n_repeats=3, seed=1)
    assert imp.feature.iloc[0] == "recency_days" and imp.importance.iloc[0] > 0.1
    assert abs(imp.set_index("feature").loc["noise", "importance"]) < 0.02


def test_feature_labels_read_as_words():
    assert churn.feature_label("orders_trend_90d") == "order-rate change, last 90 days"
    assert churn.feature_label("cat_home") == "share of purchases in home"
    assert churn.feature_label("unknown_col") == "unknown_col"


def test_suggest_window_from_the_gap_distribution():
    gaps = pd.DataFrame({"gap_days": [10, 20, 40, 100], "n": [50, 30, 15, 5]})
    # cumulative shares 0.5, 0.8, 0.95, 1.0: the 90th percentile is 40 days, rounded up to 60
    assert churn.suggest_window(gaps, 0.9, 30) == (60, 40.0)
    assert churn.suggest_window(gaps, 0.5, 7) == (14, 10.0)
    with pytest.raises(ValueError, match="bought on two different days"):
        churn.suggest_window(gaps.iloc[:0])


def test_top_reasons_match_recomputing_every_feature_for_every_customer():
    """Re-predicting only customers whose value differs from the reference changes nothing."""
    rng = np.random.default_rng(11)
    n = 2000
    frame = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 300, n).astype(float),
            "n_refunds": rng.choice([0.0, 0.0, 0.0, 1.0, 2.0], n),  # mostly the median
            "share_app": np.where(rng.uniform(size=n) < 0.1, np.nan, rng.uniform(size=n)),
        }
    )
    risk = frame.recency_days / 300 + 0.2 * frame.n_refunds - 0.3 * frame.share_app.fillna(0.5)
    frame["churned"] = (rng.uniform(size=n) < risk.clip(0, 1)).astype(int)
    frame["customer_id"] = [f"C{i}" for i in range(n)]
    train, valid = churn.holdout_split(frame, 0.3, seed=2)
    model = churn.CalibratedChurnModel(churn.ChurnModel("gbm", max_iter=50), seed=2).fit(
        train, valid
    )
    feats = model.base.features_
    who = valid.iloc[:300].set_index(pd.Index(range(1000, 1300)))  # an index that is not 0..n
    ref = train[feats].median()
    reasons = churn.top_reasons(model, who, ref, k=2)
    assert list(reasons.index) == list(who.index)
    p = model.predict_proba(who)
    rises = np.column_stack(
        [(p - model.predict_proba(who.assign(**{f: ref[f]}))) * 100 for f in feats]
    )
    for i, text in enumerate(reasons):
        expected = [
            churn.feature_label(feats[j])
            for j in np.argsort(-rises[i], kind="stable")[:2]
            if rises[i, j] >= 1.0
        ]
        if text.startswith("together: "):  # no single feature moves a high risk by a point
            assert not expected and p[i] >= 0.5
            expected = [churn.feature_label(feats[j]) for j in np.argsort(-rises[i], kind="stable")[:2]
                        if rises[i, j] > 0]  # fmt: skip
            text = text.removeprefix("together: ")
        named = [part.split(" (+")[0].rsplit(" ", 1)[0] for part in text.split("; ") if part]
        assert named == expected, (i, text, rises[i])
    # explained in batches (bounded memory): the same reasons, in the same order
    pd.testing.assert_series_equal(churn.top_reasons(model, who, ref, k=2, batch=70), reasons)
    for n_jobs in (1, 2):  # batches on one thread or side by side
        pd.testing.assert_series_equal(
            churn.top_reasons(model, who, ref, k=2, batch=70, n_jobs=n_jobs), reasons
        )
    # the comparison above ran with the shortcut that skips values on the reference's side
    # of every split: it is in use for boosting and not for other models
    thresholds = churn._split_thresholds(model.base)
    assert thresholds and set(thresholds) <= set(range(len(feats)))
    assert all((np.diff(t) > 0).all() for t in thresholds.values())
    assert churn._split_thresholds(churn.ChurnModel("logistic").fit(train)) is None


@pytest.mark.parametrize("method", ["none", "sigmoid", "isotonic"])
def test_tree_scorer_reproduces_the_calibrated_boosting_model(method, monkeypatch):
    """Re-predicting only the trees that split on a feature gives the model's probabilities."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    rng = np.random.default_rng(4)
    n = 3000
    frame = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 300, n).astype(float),
            "n_orders": rng.poisson(3, n).astype(float),
            "share_app": np.where(rng.uniform(size=n) < 0.1, np.nan, rng.uniform(size=n)),
            "noise": rng.normal(size=n),
            "complaint": (rng.uniform(size=n) < 0.03).astype(float),
        }
    )
    risk = frame.recency_days / 300 - 0.05 * frame.n_orders + 0.2 * frame.share_app.fillna(0)
    frame["churned"] = (rng.uniform(size=n) < risk.clip(0, 1)).astype(int)
    frame["customer_id"] = range(n)
    train, valid = churn.holdout_split(frame, 0.3, seed=3)
    model = churn.CalibratedChurnModel(churn.ChurnModel("gbm", max_iter=60), seed=3).fit(
        train, valid
    )
    feats = model.base.features_
    x_valid = valid[feats].astype(float)
    model.calibrator_ = (
        None
        if method == "none"
        else CalibratedClassifierCV(FrozenEstimator(model.base.estimator_), method=method).fit(
            x_valid, valid.churned
        )
    )
    scorer = churn._TreeScorer.build(model)
    assert scorer is not None
    x = x_valid.to_numpy()
    leaves = scorer.leaves(x)
    raw = scorer.raw(leaves)
    np.testing.assert_allclose(scorer.proba(raw), model.predict_proba(valid), rtol=0, atol=1e-12)
    ref = train[feats].median()
    # a feature few trees split on: its rises come from those trees alone
    assert min(len(t) for t in scorer.trees_of) < len(scorer.predictors)
    for j, f in enumerate(feats):
        trees = scorer.trees_of[j]
        changed = x.copy()
        changed[:, j] = ref[f]
        moved = raw - leaves[:, trees].sum(axis=1) + scorer.leaves(changed, trees).sum(axis=1)
        expected = model.predict_proba(pd.DataFrame(changed, columns=feats))
        np.testing.assert_allclose(scorer.proba(moved), expected, rtol=0, atol=1e-12)
    # the reasons are those of re-predicting the whole model
    reasons = churn.top_reasons(model, valid, ref, k=2, batch=400)
    assert (reasons != "").mean() > 0.3
    monkeypatch.setattr(churn._TreeScorer, "build", classmethod(lambda cls, m: None))
    pd.testing.assert_series_equal(churn.top_reasons(model, valid, ref, k=2, batch=400), reasons)


def test_tree_scorer_is_only_for_boosting():
    frame = pd.DataFrame({"a": np.arange(200.0), "churned": np.arange(200) % 2})
    train, valid = churn.holdout_split(frame.assign(customer_id=range(200)), 0.3, seed=1)
    logistic = churn.CalibratedChurnModel(churn.ChurnModel("logistic"), seed=1).fit(train, valid)
    assert churn._TreeScorer.build(logistic) is None


def test_frame_source_builds_each_cutoff_once_until_cleared():
    import ibis

    from tests.test_features import CUTOFF, ORDERS

    frames = churn.FrameSource({"orders": ibis.memtable(ORDERS)}, 30)
    first = frames(CUTOFF)
    assert (
        frames(dt.date.fromisoformat(CUTOFF)) is first
    )  # a date and its ISO string share the entry
    assert list(first.customer_id) == ["a", "b"] and set(frames.cached) == {(CUTOFF, True)}
    unlabelled = frames(CUTOFF, labelled=False)
    assert unlabelled.churned.isna().all() and len(frames.cached) == 2
    frames.clear()
    assert frames.cached == {}
    again = frames(CUTOFF)
    assert again is not first
    pd.testing.assert_frame_equal(again, first)
    bounded = churn.FrameSource({"orders": ibis.memtable(ORDERS)}, 30, max_cached=2)
    a = bounded("2025-02-01")
    bounded(CUTOFF)
    assert bounded("2025-02-01") is a  # used again: now the most recent
    bounded("2025-02-15")  # forgets the least recently used, CUTOFF
    assert list(bounded.cached) == [("2025-02-01", True), ("2025-02-15", True)]


def test_frames_read_through_arrow_equal_ibis_own_conversion(clean_store):
    """The fast Arrow read gives the very frame ``to_pandas`` gives: values, dtypes, order."""
    from crm_analytics import features

    names = ("orders", "customers", "order_items", "events", "tickets", "surveys")
    tables = {t: clean_store.table(t) for t in names}
    categories = features.top_categories(tables["orders"], tables["order_items"], "2026-03-01", 4)
    frames = churn.FrameSource(tables, 60, categories)
    for labelled in (True, False):
        expr = features.churn_frame(tables, "2026-03-01", 60, categories, labelled)
        pd.testing.assert_frame_equal(store.to_frame(expr), expr.to_pandas())
        pd.testing.assert_frame_equal(frames("2026-03-01", labelled), expr.to_pandas())


def test_frames_at_later_cutoffs_come_from_the_sql_template_and_equal_a_fresh_build(clean_store):
    from crm_analytics import features

    names = ("orders", "customers", "order_items", "events", "tickets", "surveys")
    tables = {t: clean_store.table(t) for t in names}
    categories = features.top_categories(tables["orders"], tables["order_items"], "2026-03-01", 4)
    frames = churn.FrameSource(tables, 60, categories)
    frames("2026-03-01")
    template = frames.templates[True]
    assert template is not None and "MAKE_TIMESTAMP(1901, 2, 3, 0, 0, 0.0)" in template
    assert "2026" not in churn._with_cutoff(template, dt.date(2025, 11, 20)).replace(
        "2025, 11, 20", ""
    )  # every cutoff literal is replaced; the data's own dates never appear in the SQL
    for cutoff in ("2025-12-15", "2026-01-31"):
        fresh = features.churn_frame(tables, cutoff, 60, categories, True).to_pandas()
        assert len(fresh) > 0
        pd.testing.assert_frame_equal(frames(cutoff), fresh)
    assert False not in frames.templates
    unlabelled = frames("2026-01-31", labelled=False)  # the unlabelled frame has its own template
    assert frames.templates[False] is not None and unlabelled.churned.isna().all()
    on_memtables = churn.FrameSource({"orders": tables["orders"].to_pyarrow()}, 60)
    assert on_memtables.templates == {}
    recent = churn.FrameSource(tables, 60, categories, active_within_days=90)
    recent("2026-03-01")
    assert recent.templates[True] is not None  # the population's bound moves with the cutoff too
    got = recent("2026-01-31")
    pd.testing.assert_frame_equal(
        got,
        features.churn_frame(
            tables, "2026-01-31", 60, categories, True, active_within_days=90
        ).to_pandas(),
    )
    everyone = frames("2026-01-31")
    assert 0 < len(got) < len(everyone) and got.recency_days.max() <= 90
    assert everyone.recency_days.max() > 90


def test_top_reasons_name_features_jointly_when_no_single_one_moves_a_near_certain_risk():
    rng = np.random.default_rng(3)
    n = 4000
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    frame["churned"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-4 * (frame.a + frame.b)))).astype(
        int
    )
    frame["customer_id"] = range(n)
    train, valid = churn.holdout_split(frame, 0.3, seed=1)
    model = churn.CalibratedChurnModel(churn.ChurnModel("logistic", c=100.0), seed=1).fit(
        train, valid
    )
    model.calibrator_ = None  # the logistic model's own probabilities, so the saturation is exact
    who = pd.DataFrame({"customer_id": [1, 2, 3], "a": [3.0, 1.0, -2.0], "b": [3.0, 0.0, -2.0]})
    p = model.predict_proba(who)
    assert p[0] > 0.9999  # either feature alone, set to the median, leaves it above 99%
    reasons = churn.top_reasons(model, who, train[["a", "b"]].median(), k=2)
    assert reasons.iloc[0] in ("together: a 3; b 3", "together: b 3; a 3")
    assert reasons.iloc[1].startswith("a 1 (+")  # one feature moves a moderate risk
    assert reasons.iloc[2] == ""  # a low risk has no reasons


def test_binary_log_loss_is_sklearns_log_loss():
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 1000)
    p = np.concatenate([rng.uniform(size=996), [0.0, 1.0, 0.0, 1.0]])  # certain and wrong too
    y[-4:] = [1, 0, 0, 1]
    assert churn.binary_log_loss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)
    assert churn.binary_log_loss(np.array([1, 0]), np.array([0.9, 0.2])) == pytest.approx(
        -(np.log(0.9) + np.log(0.8)) / 2
    )


def test_tuning_stops_growing_a_candidate_once_validation_loss_stalls(monkeypatch):
    from sklearn.ensemble import HistGradientBoostingClassifier

    train, valid = _panel("2025-01-01", n=2000), _panel("2025-02-01", n=2000)
    grown = []
    real_fit = HistGradientBoostingClassifier.fit

    def recording_fit(self, *args, **kwargs):
        out = real_fit(self, *args, **kwargs)
        grown.append(self.n_iter_)
        return out

    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", recording_fit)
    grid = dict(learning_rates=(0.3,), max_leaf_nodes=(15,), max_iter=200, seed=1)
    all_trees = churn.tune_gbm(train, valid, **grid, patience=0)
    stopped = churn.tune_gbm(train, valid, **grid, patience=20)
    assert grown[0] == 200 and grown[1] < 200  # the second fit stopped early
    # the best number of trees lies before the stop: the same choice and the same model
    assert stopped[0] == all_trees[0] and stopped[0]["max_iter"] + 20 <= grown[1]
    assert_frame_equal(stopped[1], all_trees[1])
    np.testing.assert_array_equal(
        stopped[2].predict_proba(valid), all_trees[2].predict_proba(valid)
    )


def test_bgnbd_baseline_fitted_on_a_sample_scores_every_customer_alike():
    from lifetimes.generate_data import beta_geometric_nbd_model

    np.random.seed(11)  # noqa: NPY002 - lifetimes' simulator draws from the global generator
    summary = beta_geometric_nbd_model(T=52, size=20000, r=0.3, alpha=4.0, a=0.7, b=2.5)
    summary = summary.reset_index(drop=True).assign(
        customer_id=[f"c{i}" for i in range(len(summary))], monetary_value=0.0
    )
    ids = pd.Series(["c5", "missing", *summary.customer_id.iloc[:2000]])
    full = churn.bgnbd_churn_scores(summary, ids, 60, 7)
    sampled = churn.bgnbd_churn_scores(summary, ids, 60, 7, fit_customers=5000, seed=3)
    assert np.isnan(full[1]) and np.isnan(sampled[1])  # absent from the summary
    assert not np.allclose(full[~np.isnan(full)], sampled[~np.isnan(sampled)], atol=1e-9)
    # a quarter of the customers estimate the same four parameters: scores within 0.02
    assert np.nanmax(np.abs(full - sampled)) < 0.02
    # the sample is seeded, and a sample at least as large as the data is the data
    again = churn.bgnbd_churn_scores(summary, ids, 60, 7, fit_customers=5000, seed=3)
    np.testing.assert_array_equal(sampled, again)
    whole = churn.bgnbd_churn_scores(summary, ids, 60, 7, fit_customers=len(summary), seed=3)
    np.testing.assert_array_equal(full, whole)
