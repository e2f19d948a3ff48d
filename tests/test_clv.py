import ibis
import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import clv, features

ORDERS = pd.DataFrame(
    {
        "order_id": list("abcdefgh"),
        "customer_id": ["x", "x", "x", "y", "y", "z", "x", "y"],
        "order_ts": pd.to_datetime(
            [
                "2025-01-01 10:00",
                "2025-01-01 18:00",
                "2025-01-11 09:00",
                "2025-01-05 00:00",
                "2025-02-01 00:00",
                "2025-02-10 00:00",
                "2025-03-05 00:00",
                "2025-03-01 00:00",
            ]
        ),
        "amount": [10.0, 5.0, 20.0, 7.0, 9.0, 4.0, 100.0, 1.0],
        "status": ["paid"] * 8,
    }
)


def test_clv_summary_matches_lifetimes():
    from lifetimes.utils import summary_data_from_transaction_data

    got = features.clv_summary(ibis.memtable(ORDERS), "2025-03-01").to_pandas()
    got = got.set_index("customer_id").sort_index()
    before = ORDERS[ORDERS.order_ts < "2025-03-01"]
    ref = summary_data_from_transaction_data(
        before, "customer_id", "order_ts", "amount", observation_period_end="2025-02-28", freq="D"
    )
    assert_frame_equal(got, ref, check_dtype=False, check_names=False)
    weeks = features.clv_summary(ibis.memtable(ORDERS), "2025-03-01", time_unit_days=7).to_pandas()
    assert weeks.set_index("customer_id").loc["x", "T"] == pytest.approx(58 / 7)


def test_holdout_purchases_and_join():
    hold = features.holdout_purchases(ibis.memtable(ORDERS), "2025-03-01", 10).to_pandas()
    assert hold.set_index("customer_id").frequency_holdout.to_dict() == {"x": 1, "y": 1}
    summary = features.clv_summary(ibis.memtable(ORDERS), "2025-03-01").to_pandas()
    joined = clv.calibration_holdout(summary, hold).set_index("customer_id")
    assert joined.frequency_holdout.to_dict() == {"x": 1, "y": 1, "z": 0}


def test_bgnbd_recovers_known_parameters():
    from lifetimes.generate_data import beta_geometric_nbd_model

    np.random.seed(7)  # noqa: NPY002 - lifetimes' simulator draws from the global generator
    true = {"r": 0.25, "alpha": 4.0, "a": 0.8, "b": 2.5}
    sim = beta_geometric_nbd_model(T=104, size=20000, **true)
    spend = np.random.default_rng(7).gamma(6.0, 4.0, len(sim))
    sim["monetary_value"] = np.where(sim.frequency > 0, spend, 0.0)
    got = clv.CLVModel("bgnbd").fit(sim).params_["bgnbd"]
    # the shape parameters are well identified; alpha (the rate scale) trades off against r
    for k in ("r", "a", "b"):
        assert got[k] == pytest.approx(true[k], rel=0.15), (k, got)
    assert got["alpha"] == pytest.approx(true["alpha"], rel=0.25), got


def test_bgnbd_fit_on_distinct_summaries_matches_the_fit_on_every_customer():
    from lifetimes import BetaGeoFitter
    from lifetimes.datasets import load_cdnow_summary

    d = load_cdnow_summary(index_col=[0]).assign(monetary_value=0.0)
    rows = clv.distinct_summaries(d)
    assert rows.customers.sum() == len(d)
    assert len(rows) < len(d) / 2  # many CDNOW customers share a summary (e.g. one purchase)
    assert not rows.duplicated(["frequency", "recency", "T"]).any()
    for penalizer in (0.0, 0.001):
        got = clv.CLVModel("bgnbd", penalizer=penalizer).fit(d)
        every = BetaGeoFitter(penalizer_coef=penalizer).fit(d.frequency, d.recency, d["T"])
        for k, v in every.params_.items():
            assert got.params_["bgnbd"][k] == pytest.approx(float(v), rel=1e-4), (penalizer, k)
        assert got.neg_log_likelihood_ == pytest.approx(every._negative_log_likelihood_, rel=1e-9)


def test_purchase_only_model_has_no_spend_model_and_no_clv():
    from lifetimes.datasets import load_cdnow_summary

    d = load_cdnow_summary(index_col=[0])
    spend = np.random.default_rng(3).gamma(6.0, 4.0, len(d))
    d["monetary_value"] = np.where(d.frequency > 0, spend, 0.0)
    full = clv.CLVModel("bgnbd").fit(d)
    purchases_only = clv.CLVModel("bgnbd", spend=False).fit(d)
    assert full.spend_model_ is not None and purchases_only.spend_model_ is None
    assert purchases_only.params_["gamma_gamma"] is None
    assert np.isnan(purchases_only.clv(d)).all() and np.isfinite(full.clv(d)).all()
    np.testing.assert_allclose(purchases_only.probability_no_purchase(d, 13),
                               full.probability_no_purchase(d, 13))  # fmt: skip


def test_cdnow_reproduces_the_published_fit():
    """BG/NBD on the CDNOW sample (weeks): Fader, Hardie and Lee (2005) report r=0.243, alpha=4.414, a=0.793, b=2.426."""
    from lifetimes.datasets import load_cdnow_summary

    d = load_cdnow_summary(index_col=[0]).assign(monetary_value=0.0)
    model = clv.CLVModel("bgnbd").fit(d)
    got = model.params_["bgnbd"]
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    for k, v in published.items():
        assert got[k] == pytest.approx(v, abs=0.01)
    assert model.log_likelihood_ == pytest.approx(-9582.4, abs=0.5)  # as published
    pareto = clv.CLVModel("pareto").fit(d)
    assert pareto.log_likelihood_ == pytest.approx(-9595.0, abs=1.0)  # Pareto/NBD, as published


def test_clv_grows_with_horizon_and_falls_with_discounting():
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    d = load_cdnow_summary_data_with_monetary_value()
    model = clv.CLVModel("bgnbd").fit(d)
    short, long = model.clv(d, 6, 0.1), model.clv(d, 24, 0.1)
    assert (long >= short).all() and (short >= 0).all()
    assert model.clv(d, 24, 0.5).sum() < long.sum()
    assert model.params_["gamma_gamma"]["p"] > 0
    alive = model.probability_alive(d)
    assert ((alive >= 0) & (alive <= 1)).all()
    pareto = clv.CLVModel("pareto").fit(d)
    assert set(pareto.params_["pareto"]) == {"r", "alpha", "s", "beta"}


def test_clv_computed_per_distinct_summary_equals_the_month_by_month_sum_per_customer():
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    d = load_cdnow_summary_data_with_monetary_value().reset_index(drop=True)
    model = clv.CLVModel("bgnbd", time_unit="W").fit(d)
    assert (
        d[["frequency", "recency", "T"]].duplicated().sum() > 1000
    )  # many customers share a summary
    expected, previous = np.zeros(len(d)), np.zeros(len(d))
    monthly = 1.1 ** (1 / 12) - 1
    for month in range(1, 13):
        cumulative = model.expected_purchases(d, month * 4.348125)
        expected += (cumulative - previous) * model.expected_spend(d) / (1 + monthly) ** month
        previous = cumulative
    np.testing.assert_allclose(model.clv(d, 12, 0.1), expected, rtol=1e-12)
    shuffled = d.sample(frac=1.0, random_state=0)  # spread back to each row, whatever the order
    np.testing.assert_allclose(model.clv(shuffled, 12, 0.1), expected[shuffled.index], rtol=1e-12)


def test_gamma_gamma_check_flags_correlated_spend():
    rng = np.random.default_rng(0)
    f = rng.integers(1, 20, 500)
    independent = pd.DataFrame({"frequency": f, "monetary_value": rng.gamma(5, 10, 500)})
    correlated = pd.DataFrame({"frequency": f, "monetary_value": f * 10.0 + rng.normal(0, 1, 500)})
    assert clv.check_gamma_gamma(independent).ok
    check = clv.check_gamma_gamma(correlated)
    assert not check.ok and "assumes independence" in check.message
    assert not clv.check_gamma_gamma(independent.head(5)).ok


def test_value_tiers():
    tiers = clv.value_tiers(np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, np.nan]))
    assert tiers.tolist() == ["low"] * 5 + ["medium"] * 3 + ["high"] * 2 + ["unknown"]


def test_model_validates_inputs():
    with pytest.raises(ValueError, match="'T'"):
        clv.CLVModel().fit(
            pd.DataFrame({"frequency": [1], "recency": [1.0], "monetary_value": [1.0]})
        )
    with pytest.raises(ValueError, match="purchase_model"):
        clv.CLVModel("magic").fit(
            pd.DataFrame({"frequency": [1], "recency": [1.0], "T": [2.0], "monetary_value": [1.0]})
        )


def test_model_matrix_and_repeat_curve():
    from lifetimes.datasets import load_cdnow_summary

    d = load_cdnow_summary(index_col=[0]).assign(monetary_value=0.0)
    model = clv.CLVModel().fit(d)
    alive = clv.model_matrix(model, "p_alive", 10, 39, 39)
    assert alive.shape == (11, 14) and (alive.loc[0] == 1).all()  # never repeated: assumed alive
    assert alive.loc[10].iloc[-1] > alive.loc[10].iloc[0]  # recent buyers are more likely alive
    expected = clv.model_matrix(model, "expected", 10, 39, 39)
    assert expected.loc[10].iloc[-1] > expected.loc[1].iloc[-1]
    with pytest.raises(ValueError, match="kind"):
        clv.model_matrix(model, "cltv")
    curve = clv.expected_repeat_curve(model, np.array([0.0, 0.0, 5.0]), np.array([0.0, 5.0, 10.0]))
    assert curve[0] == 0 and np.all(np.diff(curve) > 0)
    one = model.purchase_model_.expected_number_of_purchases_up_to_time(5.0)
    assert curve[1] == pytest.approx(2 * one)  # the third customer is not born yet


def test_repeat_purchases_by_period():
    got = features.repeat_purchases_by_period(ibis.memtable(ORDERS), "2025-03-01", 7).to_pandas()
    # first purchase days: x 01-01, y 01-05, z 02-10; repeats: x 01-11 (period 1), y 02-01 (period 4)
    assert got.values.tolist() == [[1, 1], [4, 1]]


def test_probability_of_no_purchase_in_a_window():
    from lifetimes.datasets import load_cdnow_summary

    d = load_cdnow_summary(index_col=[0]).assign(monetary_value=0.0)
    model = clv.CLVModel("bgnbd").fit(d)
    p = model.params_["bgnbd"]
    p4, p39, p10k = (model.probability_no_purchase(d, t) for t in (4, 39, 10_000))
    assert ((p4 >= p39) & (p39 >= p10k - 1e-12)).all()  # a longer window: less chance of silence
    assert (p10k >= 1 - model.probability_alive(d) - 1e-12).all()  # the dead always stay silent
    # a customer with no repeat purchase is alive for sure under BG/NBD: P(0) = ((alpha+T)/(alpha+T+t))^r
    once = d[d.frequency == 0].iloc[[0]]
    t_obs = float(once["T"].iloc[0])
    by_hand = ((p["alpha"] + t_obs) / (p["alpha"] + t_obs + 39)) ** p["r"]
    assert model.probability_no_purchase(once, 39)[0] == pytest.approx(by_hand)
    # expected purchases and the chance of none agree in direction across customers
    expected = model.expected_purchases(d, 39)
    assert np.corrcoef(expected, p39)[0, 1] < -0.5
    pareto = clv.CLVModel("pareto").fit(d).probability_no_purchase(d, 39)
    assert ((pareto >= 0) & (pareto <= 1)).all() and np.corrcoef(pareto, p39)[0, 1] > 0.9


def test_probability_of_no_purchase_matches_simulated_customers():
    """Simulate BG/NBD customers, whose true rate and status are known, and compare the chance of silence."""
    from lifetimes.generate_data import beta_geometric_nbd_model

    np.random.seed(1)  # noqa: NPY002 - lifetimes draws from the global generator
    sim = beta_geometric_nbd_model(39, 0.8, 4.0, 0.8, 2.5, size=20000).assign(monetary_value=0.0)
    model = clv.CLVModel("bgnbd").fit(sim)
    # judge the formula, not the fit: use the parameters the customers were drawn with
    model.purchase_model_.params_ = pd.Series({"r": 0.8, "alpha": 4.0, "a": 0.8, "b": 2.5})
    # alive with rate lambda: no purchase in 13 weeks with probability exp(-13 lambda); dead: always silent
    truth = (1 - sim.alive) + sim.alive * np.exp(-sim["lambda"] * 13)
    predicted = model.probability_no_purchase(sim, 13)
    for f in (0, 1, 2, 4):
        group = (sim.frequency == f).to_numpy()
        assert predicted[group].mean() == pytest.approx(truth[group].mean(), abs=0.02), f
    assert predicted.mean() == pytest.approx(truth.mean(), abs=0.01)
