import ibis
import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from crm_analytics import crosssell

ITEMS = pd.DataFrame({"order_id": [1, 1, 2, 2, 3, 4], "item": ["a", "b", "a", "b", "a", "c"]})


def test_association_rules_known_answer():
    got = crosssell.association_rules(
        ibis.memtable(ITEMS), min_support=0.3, min_confidence=0.5
    ).to_pandas()
    expected = pd.DataFrame(
        {
            "antecedent": ["b", "a"],
            "consequent": ["a", "b"],
            "orders": [2, 2],
            "support": [0.5, 0.5],
            "confidence": [1.0, 2 / 3],
            "lift": [4 / 3, 4 / 3],
        }
    )
    got = got.sort_values("confidence", ascending=False, ignore_index=True)
    assert_frame_equal(got, expected, check_dtype=False)


def test_pairs_bought_together_less_often_than_chance_are_no_rules():
    # a and b are each in half the orders and share two: support 0.2, confidence 0.4,
    # lift 0.2 / (0.5 * 0.5) = 0.8; c and d always come together: lift 0.2 / 0.2**2 = 5
    items = pd.DataFrame(
        {
            "order_id": [1, 1, 2, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 10],
            "item": ["a", "b", "a", "a", "c", "d", "a", "b", "b", "b", "a", "b", "c", "d"],
        }
    )
    got = crosssell.association_rules(ibis.memtable(items), 0.1, 0.2).to_pandas()
    assert got[["antecedent", "consequent"]].values.tolist() == [["c", "d"], ["d", "c"]]
    assert got.lift.tolist() == pytest.approx([5.0, 5.0])
    # with the bar lowered below the pair's lift, it is a rule again, strongest lift first
    every = crosssell.association_rules(ibis.memtable(items), 0.1, 0.2, min_lift=0.0).to_pandas()
    assert every[["antecedent", "consequent"]].values.tolist() == [
        ["c", "d"], ["d", "c"], ["a", "b"], ["b", "a"]
    ]  # fmt: skip
    assert every.lift.tolist() == pytest.approx([5.0, 5.0, 0.8, 0.8])


def test_purchased_items_uses_paid_orders_in_the_period():
    orders = ibis.memtable(
        pd.DataFrame(
            {
                "order_id": ["o1", "o2", "o3"],
                "customer_id": ["x", "x", "y"],
                "order_ts": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-01-15"]),
                "amount": [1.0, 1.0, 1.0],
                "status": ["paid", "paid", "cancelled"],
            }
        )
    )
    lines = ibis.memtable(pd.DataFrame({"order_id": ["o1", "o1", "o2", "o3"], "sku": ["A", "A", "B", "C"],
                                        "category": ["k", "k", "k", "m"]}))  # fmt: skip
    got = crosssell.purchased_items(orders, lines, "sku", end="2025-01-31").to_pandas()
    assert got.values.tolist() == [["o1", "x", "A"]]
    with pytest.raises(ValueError, match="'brand'"):
        crosssell.purchased_items(orders, lines, "brand")


def test_cooccurrence_and_popularity():
    bought = pd.DataFrame(
        {
            "customer_id": ["x", "x", "y", "y", "z", "w", "v"],
            "item": ["a", "b", "a", "b", "a", "c", "c"],
        }
    )
    rec = crosssell.CooccurrenceRecommender(k=1).fit(bought)
    got = rec.recommend(bought).set_index("customer_id").item.to_dict()
    assert got["z"] == "b"  # bought a; a's buyers also bought b
    assert "w" not in got or got["w"] != "c"  # never recommend what a customer has
    pop = rec.popular(bought).set_index("customer_id").item.to_dict()
    assert pop["z"] == "b" and pop["w"] == "a"  # most bought items first


def test_recommendation_ties_go_to_the_more_popular_item():
    # z bought a; a's other buyers bought b (x) and c (y) once each, but c has two buyers
    bought = pd.DataFrame(
        {"customer_id": ["x", "x", "y", "y", "u", "z"], "item": ["a", "b", "a", "c", "c", "a"]}
    )
    recs = crosssell.CooccurrenceRecommender(k=2).fit(bought).recommend(bought, batch=2)
    z = recs[recs.customer_id == "z"]
    assert z.item.tolist() == ["c", "b"] and z["rank"].tolist() == [1, 2]
    assert z.score.iloc[0] == z.score.iloc[1] == pytest.approx(1 / 3)
    assert not recs.merge(bought, on=["customer_id", "item"]).shape[0]  # nothing already owned


def test_recommendations_equal_a_full_sort_of_every_item():
    # sparse co-purchases: most rows tie at a score of 0 far beyond k
    rng = np.random.default_rng(3)
    bought = (
        pd.DataFrame(
            {
                "customer_id": rng.integers(0, 400, 800).astype(str),
                "item": rng.integers(0, 300, 800),
            }
        )
        .astype({"item": str})
        .drop_duplicates()
    )
    model = crosssell.CooccurrenceRecommender(k=5).fit(bought)
    got = model.recommend(bought, batch=64, n_jobs=2)  # seven batches on two threads
    pd.testing.assert_frame_equal(got, model.recommend(bought, batch=64, n_jobs=1))
    owned = bought.groupby("customer_id").item.agg(set)
    items = model.items_
    expected = []
    for cid in pd.unique(bought.customer_id):
        have = [items.get_loc(i) for i in owned[cid]]
        score = model.similarity_[have].sum(axis=0).A1
        free = [j for j in range(len(items)) if j not in have]
        best = sorted(free, key=lambda j: (-score[j], -model.popularity_[j], j))[:5]
        expected += [(cid, r + 1, items[j]) for r, j in enumerate(best)]
    assert list(got[["customer_id", "rank", "item"]].itertuples(index=False, name=None)) == expected
    assert crosssell.CooccurrenceRecommender(k=0).fit(bought).recommend(bought).empty


def test_fitted_customers_get_the_same_recommendations_without_the_pairs_again():
    # the matrix kept by fit serves recommend() and popular(): equal to passing the pairs
    rng = np.random.default_rng(5)
    ids = np.array(["c10", "c2", "顾客7", "C1", "b", "a", "Z9", "c1"])
    bought = (
        pd.DataFrame(
            {"customer_id": rng.choice(ids, 60), "item": rng.integers(0, 12, 60).astype(str)}
        )
        .astype("string[pyarrow]")
        .drop_duplicates()
        .reset_index(drop=True)
    )
    model = crosssell.CooccurrenceRecommender(k=3).fit(bought)
    pd.testing.assert_frame_equal(model.recommend(batch=3), model.recommend(bought, batch=3))
    pd.testing.assert_frame_equal(model.popular(batch=3), model.popular(bought, batch=3))
    assert model.popular().customer_id.is_monotonic_increasing  # sorted by customer, as before
    assert set(model.recommend().customer_id) == set(bought.customer_id)
    with pytest.raises(ValueError, match="fit the recommender first"):
        crosssell.CooccurrenceRecommender(k=3).recommend()


def test_recommender_takes_items_that_are_not_text():
    bought = pd.DataFrame({"customer_id": ["x", "x", "y"], "item": [1, 2, 1]})
    got = crosssell.CooccurrenceRecommender(k=1).fit(bought).recommend(bought)
    assert got[["customer_id", "item"]].values.tolist() == [["y", "2"]]


def test_evaluate_recommendations():
    before = pd.DataFrame({"customer_id": ["x", "y"], "item": ["a", "a"]})
    later = pd.DataFrame({"customer_id": ["x", "x", "y", "y"], "item": ["b", "c", "a", "d"]})
    recs = pd.DataFrame({"customer_id": ["x", "x", "y"], "item": ["b", "z", "q"]})
    got = crosssell.evaluate_recommendations(recs, later, before)
    # new items: x {b, c}, y {d} (a is a repeat); hits: x-b
    assert got == {"hit_rate": 0.5, "recall": pytest.approx(1 / 3), "customers": 2}


def test_evaluate_recommendations_in_the_store_matches_frames(duck):
    # purchases as store tables (duplicated lines included), recommendations as a frame
    duck.create_table(
        "before", pd.DataFrame({"customer_id": ["x", "y", "y"], "item": ["a", "a", "a"]})
    )
    duck.create_table("later", pd.DataFrame({"customer_id": ["x", "x", "x", "y", "y", "w"],
                                             "item": ["b", "b", "c", "a", "d", "e"]}))  # fmt: skip
    recs = pd.DataFrame(
        {"customer_id": ["x", "x", "y"], "item": ["b", "z", "d"]}, dtype="string[pyarrow]"
    )
    got = crosssell.evaluate_recommendations(recs, duck.table("later"), duck.table("before"))
    # w has no recommendations and is not evaluated; x: new {b, c}, hit b; y: new {d}, hit d
    assert got == {"hit_rate": 1.0, "recall": pytest.approx(2 / 3), "customers": 2}
    none_new = crosssell.evaluate_recommendations(recs, duck.table("before"), duck.table("before"))
    assert none_new["customers"] == 0 and np.isnan(none_new["hit_rate"])
    with pytest.raises(ValueError, match="item"):
        crosssell.evaluate_recommendations(
            recs.drop(columns="item"), duck.table("later"), duck.table("before")
        )


def test_compare_recommendations_scores_each_method_on_its_own_customers(duck):
    before = pd.DataFrame({"customer_id": ["x", "y"], "item": ["a", "a"]})
    later = pd.DataFrame(
        {"customer_id": ["x", "x", "y", "y", "w"], "item": ["b", "c", "a", "d", "e"]}
    )
    duck.create_table("later", later)
    duck.create_table("before", before)
    good = pd.DataFrame({"customer_id": ["x", "y", "w"], "item": ["c", "d", "q"]})
    poor = pd.DataFrame({"customer_id": ["x", "x"], "item": ["z", "b"]})
    nobody = pd.DataFrame({"customer_id": ["v"], "item": ["b"]})  # v bought nothing new
    got = crosssell.compare_recommendations(
        {"good": duck.create_table("good", good), "poor": poor, "nobody": nobody},
        duck.table("later"),
        duck.table("before"),
    )
    # new: x {b, c}, y {d}, w {e}. good judges x, y, w: hits x-c, y-d -> 2 of 3 customers,
    # 2 of 4 new items. poor judges x only: hit x-b -> 1 of 1 customer, 1 of 2 items.
    expected = pd.DataFrame(
        {
            "method": ["good", "poor", "nobody"],
            "hit_rate": [2 / 3, 1.0, np.nan],
            "recall": [0.5, 0.5, np.nan],
            "customers": np.array([3, 1, 0], dtype="int64"),
        }
    )
    pd.testing.assert_frame_equal(got, expected)
    # each row is what the method scored alone gets
    alone = crosssell.evaluate_recommendations(poor, later, before)
    assert alone == {"hit_rate": 1.0, "recall": 0.5, "customers": 1}
    with pytest.raises(ValueError, match="methods is empty"):
        crosssell.compare_recommendations({}, later, before)
    with pytest.raises(ValueError, match="item"):
        crosssell.compare_recommendations({"bad": poor.drop(columns="item")}, later, before)


def test_recommendations_kept_on_another_connection_are_scored_where_the_purchases_are(
    duck, tmp_path
):
    # the recommendations in one database, the purchases in another (the store and Spark)
    before = pd.DataFrame({"customer_id": ["x", "y"], "item": ["a", "a"]})
    later = pd.DataFrame({"customer_id": ["x", "x", "y", "y"], "item": ["b", "c", "a", "d"]})
    recs = pd.DataFrame({"customer_id": ["x", "x", "y"], "item": ["b", "z", "q"]})
    other = ibis.duckdb.connect(str(tmp_path / "other.duckdb"))
    other.create_table("recs", recs)
    duck.create_table("later", later)
    duck.create_table("before", before)
    got = crosssell.evaluate_recommendations(
        other.table("recs"), duck.table("later"), duck.table("before")
    )
    assert got == crosssell.evaluate_recommendations(recs, later, before)
    assert got["customers"] == 2
    other.disconnect()


def test_next_best_by_segment():
    segs = pd.DataFrame({"customer_id": ["x", "y", "z"], "segment": ["S", "S", "T"]})
    bought = pd.DataFrame({"customer_id": ["x", "y", "y", "z"], "item": ["a", "a", "b", "b"]})
    rules = pd.DataFrame(
        {
            "antecedent": ["a", "b"],
            "consequent": ["b", "a"],
            "confidence": [0.5, 0.9],
            "lift": [1.2, 1.2],
        }
    )
    got = crosssell.next_best_by_segment(segs, bought, rules)
    assert got.values.tolist() == [["S", "b", 1, 0.5, 1.2], ["T", "a", 1, 0.9, 1.2]]


def test_single_category_gives_no_rules_and_typed_empty_results(duck):
    items = ibis.memtable(pd.DataFrame({"order_id": [1, 2], "item": ["music", "music"]}))
    rules = crosssell.association_rules(items)
    duck.create_table("rules", rules)  # an empty result must still be a typed table
    assert duck.table("rules").count().to_pandas() == 0
    bought = pd.DataFrame({"customer_id": ["x", "y"], "item": ["music", "music"]})
    recs = crosssell.CooccurrenceRecommender(k=3).fit(bought).recommend(bought)
    assert recs.empty and str(recs.dtypes["rank"]) == "int64"
    duck.create_table("recs", recs)


def test_customer_item_pairs_are_distinct_and_compact():
    items = ibis.memtable(
        pd.DataFrame(
            {
                "order_id": [1, 2, 3, 4],
                "customer_id": ["C1", "C1", "C2", "C2"],
                "item": ["a", "a", "a", "b"],
            }
        )
    )
    got = crosssell.customer_item_pairs(items).sort_values(["customer_id", "item"])
    expected = pd.DataFrame(
        {"customer_id": ["C1", "C2", "C2"], "item": ["a", "a", "b"]}, dtype="string[pyarrow]"
    )
    assert_frame_equal(got.reset_index(drop=True), expected)
    with pytest.raises(ValueError, match="item"):
        crosssell.customer_item_pairs(items.drop("item"))


def test_association_rules_count_an_item_once_per_order():
    # the same item twice in an order (two lines of one category) is one purchase
    doubled = pd.concat([ITEMS, ITEMS.iloc[[0, 1]]], ignore_index=True)
    once = crosssell.association_rules(ibis.memtable(ITEMS), 0.3, 0.5).to_pandas()
    twice = crosssell.association_rules(ibis.memtable(doubled), 0.3, 0.5).to_pandas()
    assert_frame_equal(twice, once)


def _next_best_by_sets(segments, pairs, rules, top=3):
    """Reference: the rule-by-rule definition with Python sets."""
    owned = pairs.merge(segments[["customer_id", "segment"]], on="customer_id")
    rows = []
    for seg, part in owned.groupby("segment"):
        have = part.groupby("item").customer_id.agg(set)
        scores = {}
        for r in rules.itertuples():
            if r.antecedent not in have:
                continue
            without = have[r.antecedent] - have.get(r.consequent, set())
            expected = len(without) * r.confidence
            if expected > scores.get(r.consequent, (0.0, 0, 0.0))[0]:
                scores[r.consequent] = (expected, len(without), r.lift)
        best = sorted(scores.items(), key=lambda kv: -kv[1][0])[:top]
        rows += [(seg, item, n, round(e, 1), lift) for item, (e, n, lift) in best]
    return pd.DataFrame(
        rows, columns=["segment", "item", "customers_without_it", "expected_buyers", "lift"]
    )


@pytest.mark.parametrize("seed", range(5))
def test_next_best_by_segment_matches_the_rule_by_rule_definition(seed):
    rng = np.random.default_rng(seed)
    customers = [f"C{i}" for i in range(60)]
    items = list("abcdefg")
    segs = pd.DataFrame({"customer_id": customers, "segment": rng.choice(["S", "T", "U"], 60)})
    bought = pd.DataFrame(
        {"customer_id": rng.choice(customers, 150), "item": rng.choice(items[:6], 150)}
    )  # repeats included; item g is never bought
    n = 25
    rules = pd.DataFrame(
        {
            "antecedent": rng.choice(items, n),
            "consequent": rng.choice(items, n),
            "confidence": rng.choice([0.25, 0.5, 1.0], n),  # ties between rules
            "lift": rng.uniform(0.5, 3.0, n).round(2),
        }
    )
    got = crosssell.next_best_by_segment(segs, bought, rules, top=3)
    expected = _next_best_by_sets(segs, bought, rules, top=3)
    assert len(expected) > 0
    assert_frame_equal(got, expected, check_dtype=False)
