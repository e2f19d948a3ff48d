import datetime as dt

import ibis
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import clean, collect, entities
from crm_analytics.generate import source_specs


def test_exact_pairs_share_a_key():
    records = ibis.memtable(
        {
            "unique_id": ["a", "b", "c", "d"],
            "email": ["x@q.com", "x@q.com", None, None],
            "phone": ["+1", None, "+1", None],
        }
    )
    got = entities.exact_pairs(records, ("email", "phone")).to_pandas()
    got = got.sort_values(["rule", "id_l", "id_r"]).reset_index(drop=True)
    expected = pd.DataFrame(
        {
            "id_l": ["a", "a"],
            "id_r": ["b", "c"],
            "rule": ["exact email", "exact phone"],
            "match_probability": 1.0,
        }
    )
    assert_frame_equal(got, expected)


def test_clusters_are_connected_components():
    pairs = pd.DataFrame({"id_l": ["a", "b", "x"], "id_r": ["b", "c", "y"]})
    got = entities.cluster_records(pd.Series(["a", "b", "c", "d", "x", "y"]), pairs)
    assert got["a"] == got["b"] == got["c"]
    assert got["x"] == got["y"] != got["a"]
    assert got["d"] not in {got["a"], got["x"]}


def test_crosswalk_keeps_the_earliest_record():
    records = pd.DataFrame(
        {
            "unique_id": ["a", "b", "c", "d"],
            "signup_date": [
                dt.date(2024, 5, 1),
                dt.date(2024, 1, 1),
                dt.date(2024, 3, 1),
                dt.date(2024, 1, 1),
            ],
        }
    )
    pairs = pd.DataFrame(
        {
            "id_l": ["a", "b"],
            "id_r": ["b", "c"],
            "rule": ["exact email", "probabilistic"],
            "match_probability": [1, 0.97],
        }
    )
    got = entities.crosswalk(records, pairs)
    assert got.customer_id.tolist() == ["b", "b", "b", "d"]
    assert got.merged.tolist() == [True, False, True, False]
    assert got.rule.tolist() == ["exact email", None, "probabilistic", None]


def test_pairwise_scores_known_answer():
    truth = pd.DataFrame(
        {"customer_id": ["a", "b", "c", "d", "e"], "duplicate_of": [None, "a", "a", None, None]}
    )
    # predicted: {a, b}, {c}, {d, e}: 1 of 3 true pairs found, 1 of 2 predicted pairs right
    predicted = pd.DataFrame(
        {"original_id": list("abcde"), "customer_id": ["a", "a", "c", "d", "d"]}
    )
    got = entities.pairwise_scores(predicted, truth)
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(0.4)
    # records without a cluster pair with nobody
    unassigned = predicted.assign(customer_id=["a", "a", None, None, None])
    got = entities.pairwise_scores(unassigned, truth)
    assert (got["predicted_pairs"], got["correct_pairs"], got["precision"]) == (1, 1, 1.0)


def test_match_settings_validated():
    with pytest.raises(ValueError, match="threshold"):
        entities.MatchSettings(threshold=1.5)
    with pytest.raises(ValueError, match="unknown match column 'zip'"):
        entities.MatchSettings(blocking=[["zip"]])
    with pytest.raises(ValueError, match="unknown match column 'shoe_size'"):
        entities.MatchSettings(em_blocking=[["birth_date"], ["shoe_size"]])


def test_resolve_moves_child_rows_to_survivor(duck):
    duck.create_table(
        "customers",
        pd.DataFrame(
            {
                "customer_id": ["C1", "C2", "C3"],
                "name": ["王伟", "王伟", "李娜"],
                "email": ["w@qq.com", "w@qq.com", "l@qq.com"],
                "phone": pd.Series([None, None, None], dtype="string"),
                "birth_date": [dt.date(1990, 1, 1)] * 3,
                "city": ["上海"] * 3,
                "signup_date": [dt.date(2024, 1, 1), dt.date(2024, 6, 1), dt.date(2024, 2, 1)],
            }
        ),
    )
    for child in entities.CHILD_TABLES:
        duck.create_table(child, pd.DataFrame({"customer_id": ["C2", "C3", "C1"], "v": [1, 2, 3]}))
    result = entities.resolve_customers(duck, entities.MatchSettings(probabilistic=False))
    assert result["merged"] == 1 and result["moved_rows"]["orders"] == 1
    assert sorted(duck.table("customers").customer_id.to_pandas()) == ["C1", "C3"]
    assert duck.table("orders").order_by("v").customer_id.to_pandas().tolist() == ["C1", "C3", "C1"]
    cw = duck.table("customer_crosswalk").order_by("original_id").to_pandas()
    assert cw.customer_id.tolist() == ["C1", "C1", "C3"]


def test_probabilistic_matching_on_generated_duplicates(tiny_dataset, duck):
    """On generated data, duplicates without a shared contact key are found by the model."""
    specs = source_specs(tiny_dataset)
    sources = {t: specs[t] for t in ("customers", "orders")}
    collect.collect_sources(duck, sources)
    acc = clean.clean_all(duck, clean.CleanSettings.build(), entities.MatchSettings(seed=1))
    cust = acc.set_index("table").loc["customers"]
    assert cust.input == cust.kept + cust.merged + cust.quarantined + cust.duplicates
    cw = duck.table("customer_crosswalk").to_pandas()
    truth = pd.read_parquet(tiny_dataset / "truth" / "customers.parquet")
    scores = entities.pairwise_scores(cw, truth)
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.8, scores
    assert cust.merged == cw.merged.sum() > 0
