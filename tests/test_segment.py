import ibis
import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal, assert_series_equal
from sklearn.metrics import adjusted_rand_score

from crm_analytics import segment


def test_quantile_score_handles_ties_by_rank_first():
    values = pd.Series([5, 5, 5, 5, 1, 9, 9, 3, 2, 7], name="x")
    got = segment.quantile_score(values, bins=5)
    # ranks (first occurrence wins ties): 4 5 6 7 1 9 10 3 2 8 -> ceil(rank / 2)
    expected = pd.Series([2, 3, 3, 4, 1, 5, 5, 2, 1, 4], name="x")
    assert_series_equal(got, expected)
    assert got.value_counts().tolist() == [2] * 5  # equal-sized bins even with ties


def test_quantile_score_lower_is_better():
    got = segment.quantile_score(pd.Series([10, 20, 30, 40, 50]), bins=5, higher_is_better=False)
    assert got.tolist() == [5, 4, 3, 2, 1]


def test_quantile_score_errors():
    with pytest.raises(ValueError, match="missing values"):
        segment.quantile_score(pd.Series([1.0, None], name="r"))
    with pytest.raises(ValueError, match="at least 2"):
        segment.quantile_score(pd.Series([1.0]), bins=1)


def test_default_segment_map_is_a_partition():
    cells = segment.rf_segment_map()
    assert len(cells) == 25
    assert (
        cells[(5, 5)] == "Champions" and cells[(1, 1)] == "Lost" and cells[(2, 1)] == "Hibernating"
    )
    assert len(set(cells.values())) == 11
    assert cells[(1, 5)] == "Can't Lose Them" and cells[(2, 3)] == "At Risk"


def test_segment_map_reports_overlaps_and_gaps():
    overlapping = [*segment.RF_SEGMENT_RULES, ((1, 2), (4, 5), "At Risk wide")]
    with pytest.raises(ValueError, match=r"overlap in R1F4 \(At Risk / At Risk wide\)"):
        segment.rf_segment_map(overlapping)
    with pytest.raises(ValueError, match=r"without a segment: R1F1$"):
        segment.rf_segment_map(segment.RF_SEGMENT_RULES[:-1])


def test_rfm_table_known_answer_and_no_mutation():
    feats = pd.DataFrame(
        {
            "customer_id": ["e", "d", "c", "b", "a", "z"],
            "recency_days": [1, 10, 20, 30, 40, np.nan],
            "frequency": [9, 7, 5, 3, 1, 0],
            "monetary_total": [900.0, 700.0, 500.0, 300.0, 100.0, 0.0],
        }
    )
    before = feats.copy()
    got = segment.rfm_table(feats)
    assert_frame_equal(feats, before)
    got = got.set_index("customer_id")
    assert "z" not in got.index  # never bought: not scored
    assert got.loc["e", "rfm_cell"] == "555" and got.loc["e", "segment"] == "Champions"
    assert got.loc["a", "rfm_cell"] == "111" and got.loc["a", "segment"] == "Lost"
    with pytest.raises(ValueError, match="'frequency'"):
        segment.rfm_table(feats.drop(columns="frequency"))


def test_segment_summary_shares_sum_to_one():
    rfm = pd.DataFrame(
        {
            "segment": ["A", "A", "B"],
            "recency_days": [1, 3, 10],
            "frequency": [2, 4, 1],
            "monetary_total": [10.0, 30.0, 60.0],
        }
    )
    got = segment.segment_summary(rfm)
    expected = pd.DataFrame(
        {
            "segment": ["A", "B"],
            "customers": [2, 1],
            "share_customers": [2 / 3, 1 / 3],
            "revenue": [40.0, 60.0],
            "share_revenue": [0.4, 0.6],
            "mean_recency_days": [2.0, 10.0],
            "mean_frequency": [3.0, 1.0],
            "mean_monetary": [20.0, 60.0],
        }
    )
    assert_frame_equal(got, expected, check_dtype=False)


def test_clusters_recover_planted_groups():
    rng = np.random.default_rng(0)
    n = 200
    groups = np.repeat([0, 1, 2], n)
    frame = pd.DataFrame(
        {
            "recency_days": np.r_[
                rng.normal(5, 1, n), rng.normal(200, 10, n), rng.normal(60, 5, n)
            ].clip(0),
            "frequency": np.r_[
                rng.normal(30, 2, n), rng.normal(1, 0.2, n), rng.normal(6, 1, n)
            ].clip(0),
        }
    )
    model = segment.BehaviourClusters(
        k_min=2, k_max=5, sample_size=300, seed=1, features=("recency_days", "frequency")
    ).fit(frame)
    assert model.k_ == 3
    assert adjusted_rand_score(groups, model.predict(frame)) > 0.95
    prof = segment.cluster_profiles(frame, model.predict(frame), model.features_)
    assert prof.customers.sum() == len(frame)
    assert any("high frequency" in d for d in prof.description)
    assert list(prof.columns) == ["cluster", "customers", "description", *model.features_]


def test_clusters_need_features_and_rows():
    with pytest.raises(ValueError, match="none of the clustering features"):
        segment.BehaviourClusters().fit(pd.DataFrame({"x": range(20)}))
    with pytest.raises(ValueError, match="more than k_max"):
        segment.BehaviourClusters(k_max=8).fit(pd.DataFrame({"frequency": range(5)}))


def test_lifecycle_stages_known_answer():
    import datetime as dt

    import ibis

    from crm_analytics import features

    orders = ibis.memtable(
        pd.DataFrame(
            {
                "order_id": list("abcd"),
                "customer_id": ["a", "a", "b", "c"],
                "order_ts": pd.to_datetime(
                    ["2024-01-10", "2024-12-20", "2024-03-01", "2025-01-05"]
                ),
                "amount": [1.0] * 4,
                "status": ["paid"] * 4,
            }
        )
    )
    cust = ibis.memtable(
        pd.DataFrame(
            {
                "customer_id": list("abcdz"),
                "signup_date": [dt.date(2024, 1, 1)] * 4 + [dt.date(2025, 6, 1)],
            }
        )
    )
    got = features.lifecycle_stages(
        orders, cust, [dt.date(2025, 1, 1), dt.date(2025, 3, 1)]
    ).to_pandas()
    got = got.sort_values(["snapshot", "customer_id"])
    assert got.stage.tolist() == [
        "active", "dormant", "prospect", "prospect",  # 2025-01-01: c has not bought yet; z not signed up
        "active", "dormant", "new", "prospect",  # 2025-03-01: b silent exactly 365 days is still dormant
    ]  # fmt: skip
    with pytest.raises(ValueError, match="active_days <= churn_days"):
        features.lifecycle_stages(
            orders, cust, [dt.date(2025, 1, 1)], active_days=400, churn_days=365
        )


def test_stability_gmm_and_persona_agreement():
    rng = np.random.default_rng(0)
    n = 150
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(3 * n)],
            "recency_days": np.r_[
                rng.normal(5, 1, n), rng.normal(200, 10, n), rng.normal(60, 5, n)
            ].clip(0),
            "frequency": np.r_[
                rng.normal(30, 2, n), rng.normal(1, 0.2, n), rng.normal(6, 1, n)
            ].clip(0),
        }
    )
    model = segment.BehaviourClusters(
        k_min=3, k_max=3, sample_size=300, seed=1, features=("recency_days", "frequency")
    ).fit(frame)
    assert segment.cluster_stability(model, frame) > 0.95
    gm = segment.gaussian_mixture_labels(model, frame)
    assert adjusted_rand_score(model.predict(frame), gm) > 0.9
    truth = pd.DataFrame(
        {"customer_id": frame.customer_id, "persona": np.repeat(["vip", "one_off", "regular"], n)}
    )
    assert segment.persona_agreement(frame.assign(cluster=model.predict(frame)), truth) > 0.95


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_shipped_yaml_map_is_the_default_map():
    loaded = segment.load_segment_map(ROOT / "params" / "rfm_segments.yaml")
    assert loaded.cells() == segment.rf_segment_map()
    assert set(loaded.actions) == set(segment.rf_segment_map().values())
    assert all(loaded.actions.values()) and all(loaded.descriptions.values())


def test_yaml_map_where_at_risk_swallows_cant_lose_them_is_rejected(tmp_path):
    text = (ROOT / "params" / "rfm_segments.yaml").read_text()
    # as in a common implementation: At Risk reaches F5 and shadows Can't Lose Them
    bad = text.replace('cells: [{r: "1-2", f: "3-4"}]', 'cells: [{r: "1-2", f: "3-5"}]')
    assert bad != text
    f = tmp_path / "map.yaml"
    f.write_text(bad)
    with pytest.raises(
        ValueError,
        match=r"map\.yaml: segment rules overlap in R1F5 \(At Risk / Can't Lose Them\), R2F5",
    ):
        segment.load_segment_map(f)
    f.write_text("segments: []\n")
    with pytest.raises(ValueError, match="non-empty `segments` list"):
        segment.load_segment_map(f)
    f.write_text("segments:\n  - name: X\n    cells: [{r: 'a-b', f: '1'}]\n")
    with pytest.raises(ValueError, match="cannot read score range 'a-b'"):
        segment.load_segment_map(f)


def test_cohort_matrices_known_answer():
    activity = pd.DataFrame(
        {
            "cohort": pd.to_datetime(["2025-01-01"] * 3 + ["2025-02-01"] * 2),
            "period": [0, 1, 2, 0, 1],
            "customers": [10, 4, 2, 5, 5],
            "revenue": [100.0, 40.0, 30.0, 50.0, 10.0],
        }
    )
    retention, revenue = segment.cohort_matrices(activity)
    assert retention.loc["2025-01-01"].tolist() == [1.0, 0.4, 0.2]
    assert retention.loc["2025-02-01", 1] == 1.0 and pd.isna(retention.loc["2025-02-01", 2])
    assert revenue.loc["2025-01-01"].tolist() == [10.0, 4.0, 3.0]


def test_cohort_activity_in_the_store():
    import ibis

    from crm_analytics import features

    orders = pd.DataFrame(
        {
            "order_id": list("abcde"),
            "customer_id": ["x", "x", "y", "y", "x"],
            "order_ts": pd.to_datetime(
                ["2025-01-05", "2025-03-02", "2025-02-10", "2025-02-20", "2025-12-01"]
            ),
            "amount": [10.0, 20.0, 5.0, 5.0, 1.0],
            "status": ["paid"] * 5,
        }
    )
    got = features.cohort_activity(ibis.memtable(orders), "2025-06-01").to_pandas()
    assert got.values.tolist() == [
        [pd.Timestamp("2025-01-01"), 0, 1, 10.0],
        [pd.Timestamp("2025-01-01"), 2, 1, 20.0],
        [pd.Timestamp("2025-02-01"), 0, 1, 10.0],
    ]


def test_actions_table_and_campaign_lists():
    seg_map = segment.load_segment_map(ROOT / "params" / "rfm_segments.yaml")
    segs = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "segment": ["At Risk", "At Risk", "Champions", "Lost"],
            "clv": [100.0, 50.0, 900.0, np.nan],
            "monetary_total": [10.0, 20.0, 30.0, 1.0],
        }
    )
    actions = segment.segment_actions(segs, seg_map)
    assert actions.segment.tolist() == ["Champions", "At Risk", "Lost"]
    assert actions.set_index("segment").loc[
        "At Risk", ["customers", "value_at_stake"]
    ].tolist() == [2, 150.0]
    assert actions.set_index("segment").loc["At Risk", "action"] == seg_map.actions["At Risk"]
    customers = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "name": ['=HYPERLINK("http://x","y")', "李娜", "王伟", "x"],
            "email": ["a@q.com", "b@q.com", "c@q.com", "d@q.com"],
            "phone": ["+8613800000000", None, None, None],
            "birth_date": [None] * 4,
            "consent_marketing": [True, False, True, None],
        }
    )
    got = segment.campaign_lists(customers, segs, ["At Risk", "Lost"])
    assert got.columns.tolist() == ["customer_id", "name", "email", "phone", "segment"]
    assert got.customer_id.tolist() == ["a"]  # b declined, d never answered
    assert got.name[0].startswith("'=HYPERLINK") and got.phone[0] == "+8613800000000"
    # from a store table: filtered there, the same list
    con = ibis.duckdb.connect()
    table = con.create_table("customers", customers.drop(columns="birth_date"))
    in_store = segment.campaign_lists(table, segs, ["At Risk", "Lost"])
    pd.testing.assert_frame_equal(in_store, got)
    everyone = segment.campaign_lists(con.table("customers"), segs)
    assert everyone.customer_id.tolist() == ["a", "c"]  # every segment, consenting only
    with pytest.raises(ValueError, match="consent_marketing"):
        segment.campaign_lists(con.table("customers").drop("consent_marketing"), segs)
    # integer ids and a consent column that is not boolean are read as the frame path reads them
    numbered = con.create_table("numbered", pd.DataFrame(
        {"customer_id": [1, 2, 3], "email": ["a@q.com", "b@q.com", "c@q.com"], "consent_marketing": [1, 0, 1]}))  # fmt: skip
    seg_ids = pd.DataFrame({"customer_id": [1, 2, 3], "segment": ["At Risk"] * 3})
    assert segment.campaign_lists(numbered, seg_ids).customer_id.tolist() == [1, 3]


def test_net_promoter_score_and_groups():
    assert segment.net_promoter_score(pd.Series([10, 9, 8, 6, 0, None])) == pytest.approx(0.0)
    assert segment.net_promoter_score(pd.Series([10, 10, 7])) == pytest.approx(200 / 3)
    assert np.isnan(segment.net_promoter_score(pd.Series([], dtype=float)))
    surveys = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "answered_at": pd.to_datetime(["2025-01-05", "2025-01-20", "2025-02-01", "2025-02-02"]),
            "nps": [10, 2, 9, 9],
            "csat": [5, 1, 4, 5],
            "comment": ["物流很快，很满意", "发货太慢了，退款流程太麻烦", "质量不错", ""],
        }
    )
    groups = pd.DataFrame({"customer_id": list("abcd"), "segment": ["X", "X", "Y", "Y"]})
    got = segment.satisfaction_by(surveys, groups, "segment")
    assert got.values.tolist() == [["X", 2, 0.0, 3.0], ["Y", 2, 100.0, 4.5]]
    months = segment.satisfaction_over_time(surveys)
    assert months.answers.tolist() == [2, 2] and months.nps.tolist() == [0.0, 100.0]
    kw = segment.comment_keywords(surveys, groups, "segment", top=3).set_index("segment")
    assert (
        kw.loc["X", "comments"] == 2 and kw.loc["Y", "comments"] == 1
    )  # empty comments are skipped
    assert "发货" in kw.loc["X", "keywords"] or "退款" in kw.loc["X", "keywords"]


def test_event_signals_and_category_mix():
    import ibis

    from crm_analytics import features

    orders = ibis.memtable(
        pd.DataFrame(
            {
                "order_id": ["o1", "o2"],
                "customer_id": ["a", "b"],
                "order_ts": pd.to_datetime(["2025-03-02 12:00", "2025-02-01 12:00"]),
                "amount": [10.0, 5.0],
                "status": ["paid", "paid"],
            }
        )
    )
    items = ibis.memtable(
        pd.DataFrame({"order_id": ["o1", "o1", "o1", "o2"], "sku": list("wxyz"),
                      "category": ["home", "home", "beauty", "home"]})
    )  # fmt: skip
    ts = pd.to_datetime(
        ["2025-03-01 10:00", "2025-03-05 10:00", "2025-03-10 10:00", "2025-03-11 10:00", "2025-03-12 10:00",
         "2025-03-01 09:00"]
    )  # fmt: skip
    events = ibis.memtable(
        pd.DataFrame(
            {
                "customer_id": ["a"] * 5 + ["b"],
                "ts": ts,
                "event_type": ["add_to_cart", "add_to_cart", "view", "view", "view", "view"],
                "category": [None, None, "fashion", "fashion", "fashion", "home"],
            }
        )
    )
    got = (
        features.event_signals(events, orders, items, "2025-04-01", 90)
        .to_pandas()
        .set_index("customer_id")
    )
    # a: cart on 03-01 followed by the order of 03-02; cart on 03-05 abandoned; fashion viewed 3x, never bought
    assert got.loc[
        "a", ["views", "cart_adds", "abandoned_cart_days", "browsed_not_bought"]
    ].tolist() == [3, 2, 1, 1]
    assert got.loc["a", "top_browsed_category"] == "fashion"
    assert got.loc["b", ["views", "abandoned_cart_days", "browsed_not_bought"]].tolist() == [
        1,
        0,
        0,
    ]
    mix = (
        features.category_mix(orders, items, "2025-04-01", ["home", "beauty"])
        .to_pandas()
        .set_index("customer_id")
    )
    assert mix.loc["a"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert mix.loc["b"].tolist() == [1.0, 0.0]


def test_projection_2d_separates_planted_groups():
    rng = np.random.default_rng(1)
    n = 100
    frame = pd.DataFrame(
        {"frequency": np.r_[rng.normal(30, 1, n), rng.normal(2, 0.5, n)].clip(0),
         "monetary_mean": np.r_[rng.normal(500, 10, n), rng.normal(50, 5, n)]}
    )  # fmt: skip
    model = segment.BehaviourClusters(k_min=2, k_max=3, sample_size=200, seed=1).fit(frame)
    pts = segment.projection_2d(model, frame, sample=150)
    assert len(pts) == 150 and pts.attrs["explained"][0] > 0.5
    means = pts.groupby("cluster").pc1.mean()
    assert abs(means.iloc[0] - means.iloc[1]) > 1  # the clusters lie apart on the first component


def test_diagnostic_sample_keeps_small_frames_whole_and_samples_large_ones():
    frame = pd.DataFrame({"customer_id": [f"C{i}" for i in range(100)], "x": range(100)})
    pd.testing.assert_frame_equal(segment.diagnostic_sample(frame, 100, seed=1), frame)
    pd.testing.assert_frame_equal(segment.diagnostic_sample(frame, 0, seed=1), frame)
    part = segment.diagnostic_sample(frame, 30, seed=1)
    assert len(part) == 30 and part.customer_id.is_unique
    assert set(part.customer_id) <= set(frame.customer_id)
    pd.testing.assert_frame_equal(part, segment.diagnostic_sample(frame, 30, seed=1))
    assert list(part.customer_id) != list(segment.diagnostic_sample(frame, 30, seed=2).customer_id)


def test_export_contacts_writes_text_as_text_to_csv_and_excel(tmp_path):
    import openpyxl

    contacts = segment.neutralise_formulas(
        pd.DataFrame(
            {
                "customer_id": ["C1", "C2"],
                "name": ["王芳", '=HYPERLINK("x")'],
                "email": ["a@x.cn", None],
                "phone": ["+8613812345678", "0101234567"],
                "segment": ["At Risk", "Lost"],
            }
        )
    )
    csv_path, xlsx_path = segment.export_contacts(
        ibis.duckdb.connect(), contacts, tmp_path / "run1"
    )
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")  # Excel opens UTF-8 with a BOM
    assert_frame_equal(pd.read_csv(csv_path, dtype=str, keep_default_na=False), contacts.fillna(""))
    sheet = openpyxl.load_workbook(xlsx_path)["contacts"]
    rows = [[c.value for c in row] for row in sheet.iter_rows()]
    assert rows[0] == list(contacts.columns)
    assert rows[1:] == contacts.astype(object).where(contacts.notna(), None).values.tolist()
    # every cell is a string: no phone becomes a number, no text a formula
    assert {c.data_type for row in sheet.iter_rows(min_row=2) for c in row if c.value} == {"s"}
