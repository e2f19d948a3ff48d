"""Malformed inputs (tests/data/bad/): a clear error naming the file, or quarantine with a reason."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from crm_analytics import clean, collect

BAD = Path(__file__).parent / "data" / "bad"
SETTINGS = clean.CleanSettings.build(as_of=dt.date(2026, 1, 1))


def run(con, **sources):
    """Collect the given sources (with the valid customers) and clean; return accounting and quarantine."""
    spec = {"customers": {"kind": "csv", "path": str(BAD / "customers.csv")}}
    for table, name in sources.items():
        kind = "jsonl" if name.endswith(".jsonl") else "excel" if name.endswith(".xlsx") else "csv"
        spec[table] = {"kind": kind, "path": str(BAD / name)}
    collect.collect_sources(con, spec)
    acc = clean.clean_all(con, SETTINGS).set_index("table")
    assert (acc.input == acc.kept + acc.duplicates + acc.merged + acc.quarantined).all()
    q = con.table("quarantine").order_by(["table", "_source_row"]).to_pandas()
    return acc, q


def reasons(q, table="orders"):
    part = q[q.table == table]
    return dict(zip(part._source_row, part.reason, strict=True))


def test_missing_columns_error_names_file_and_columns(duck):
    with pytest.raises(
        collect.SourceError, match=r"missing_columns\.csv.*order_ts, currency, status"
    ):
        run(duck, orders="missing_columns.csv")


def test_extra_columns_are_ignored(duck):
    acc, _ = run(duck, orders="extra_columns.csv")
    assert acc.loc["orders", "kept"] == 1
    assert "coupon" not in duck.table("orders").columns


def test_wrong_types_are_quarantined_per_column(duck):
    acc, q = run(duck, orders="wrong_types.csv")
    assert reasons(q) == {
        1: "amount: cannot parse as float64",
        2: "order_ts: cannot parse as timestamp",
        3: "status: not one of paid/refunded/cancelled",
        4: "channel: not one of online/store/app",
    }
    assert acc.loc["orders", "quarantined"] == 4


def test_empty_file_is_an_error(duck):
    with pytest.raises(collect.SourceError, match=r"empty\.csv: empty file, no header row"):
        run(duck, orders="empty.csv")


def test_header_only_loads_nothing(duck):
    acc, _ = run(duck, orders="header_only.csv")
    assert acc.loc["orders"].tolist() == [0, 0, 0, 0, 0]


def test_duplicate_keys(duck):
    acc, q = run(duck, orders="duplicate_keys.csv")
    assert acc.loc["orders", ["kept", "duplicates", "quarantined"]].tolist() == [1, 1, 1]
    assert reasons(q) == {2: "order_id: duplicate key, first kept"}


def test_negative_and_absurd_amounts(duck):
    acc, _ = run(duck, orders="amounts.csv")
    o = duck.table("orders").order_by("order_id").to_pandas()
    assert acc.loc["orders", "kept"] == 7
    assert o.loc[o.order_id == "O1", ["status", "amount"]].values.tolist() == [["refunded", 25.5]]
    assert o.set_index("order_id").amount_outlier.to_dict()["O2"]
    assert o.amount_outlier.sum() == 1


def test_future_and_impossible_dates(duck):
    _, q = run(duck, orders="dates.csv")
    assert reasons(q) == {
        1: "order_ts: in the future (after 2026-01-01)",
        2: "order_ts: cannot parse as timestamp",
        3: "order_ts: cannot parse as timestamp",
        4: "order_ts: cannot parse as timestamp",
    }


def test_broken_quote_rejects_the_rest_of_the_file_with_its_line(duck):
    acc, q = run(duck, orders="broken_quotes.csv")
    assert acc.loc["orders", ["input", "kept", "quarantined"]].tolist() == [2, 1, 1]
    ((row, reason),) = reasons(q).items()
    assert row == 2 and "unterminated quote" in reason and "runs over 2 lines" in reason


def test_ragged_rows_are_rejected_with_reasons(duck):
    acc, q = run(duck, orders="ragged_rows.csv")
    assert acc.loc["orders", ["input", "kept", "quarantined"]].tolist() == [4, 2, 2]
    r = reasons(q)
    assert set(r) == {2, 3}
    assert "Expected Number of Columns: 8 Found: 9" in r[2]
    assert "Expected Number of Columns: 8" in r[3]
    kept = duck.table("orders").order_by("order_id").to_pandas()
    assert kept[["order_id", "_source_row"]].values.tolist() == [["O1", 1], ["O4", 4]]


def test_duplicate_header_is_an_error(duck):
    with pytest.raises(
        collect.SourceError, match=r"duplicate_header\.csv: header repeats column name\(s\) amount"
    ):
        run(duck, orders="duplicate_header.csv")


def test_formula_and_html_are_kept_as_text(duck):
    acc, _ = run(duck, surveys="html_comments.csv")
    names = duck.table("customers").order_by("customer_id").name.to_pandas().tolist()
    assert names[1].startswith("=HYPERLINK(")
    comments = duck.table("surveys").order_by("customer_id").comment.to_pandas().tolist()
    assert comments == ['<script>alert("x")</script>', "<b onmouseover=alert(1)>slow</b>"]
    assert acc.loc["surveys", "kept"] == 2


def test_broken_json_line_names_the_file(duck):
    with pytest.raises(collect.SourceError, match=r"broken\.jsonl: cannot read as jsonl"):
        run(duck, events="broken.jsonl")


def test_text_posing_as_excel_names_the_file(duck):
    with pytest.raises(collect.SourceError, match=r"not_really\.xlsx: cannot read as excel"):
        run(duck, tickets="not_really.xlsx")


def test_encoding_declared_wrong_and_detected(duck):
    # declared UTF-8: the GBK line is rejected by the reader and quarantined with the reason
    spec = {
        "customers": {"kind": "csv", "path": str(BAD / "customers.csv")},
        "surveys": {"kind": "csv", "path": str(BAD / "gbk_as_utf8.csv"), "encoding": "utf-8"},
    }
    collect.collect_sources(duck, spec)
    acc = clean.clean_all(duck, SETTINGS).set_index("table")
    assert acc.loc["surveys", ["input", "kept", "quarantined"]].tolist() == [1, 0, 1]
    q = duck.table("quarantine").to_pandas()
    assert q.loc[q.table == "surveys", "reason"].str.contains("not utf-8 encoded").all()
    # detected: read correctly
    assert collect.detect_encoding(BAD / "gbk_as_utf8.csv") == "gb18030"
    run(duck, surveys="gbk_as_utf8.csv")
    assert duck.table("surveys").comment.to_pandas().tolist() == ["物流很快"]


def test_undecodable_header_names_the_byte(duck, tmp_path):
    f = tmp_path / "h.csv"
    f.write_bytes("客户,b\n1,2\n".encode("gbk"))
    with pytest.raises(
        collect.SourceError, match=r"h\.csv: cannot decode byte 0 of the header as utf-8"
    ):
        collect.collect_sources(
            duck, {"surveys": {"kind": "csv", "path": str(f), "encoding": "utf-8"}}
        )


@pytest.mark.parametrize(
    ("name", "comment"), [("utf8_bom.csv", "很满意"), ("semicolons.csv", "ok, fine")]
)
def test_bom_and_delimiter_detection(duck, name, comment):
    acc, _ = run(duck, surveys=name)
    assert acc.loc["surveys", "kept"] == 1
    assert duck.table("surveys").comment.to_pandas().tolist() == [comment]


def test_very_long_field(duck, tmp_path):
    f = tmp_path / "long.csv"
    long = "很" * 200_000
    f.write_text(
        f"customer_id,answered_at,nps,csat,comment\nC1,2025-01-01,9,5,{long}\n", encoding="utf-8"
    )
    spec = {"customers": {"kind": "csv", "path": str(BAD / "customers.csv")},
            "surveys": {"kind": "csv", "path": str(f)}}  # fmt: skip
    collect.collect_sources(duck, spec)
    clean.clean_all(duck, SETTINGS)
    assert len(duck.table("surveys").comment.to_pandas()[0]) == 200_000


def test_detect_encoding_variants(tmp_path):
    cases = {
        "utf-8": "a,b\n1,é\n".encode(),
        "utf-16": "a,b\n1,2\n".encode("utf-16"),
        "latin-1": b"a\n\xff\xfe\x80\n",
    }
    for expected, data in cases.items():
        f = tmp_path / f"{expected}.csv"
        f.write_bytes(data)
        assert collect.detect_encoding(f) == expected
    pd.DataFrame()  # keep pandas import used for readers of this module
