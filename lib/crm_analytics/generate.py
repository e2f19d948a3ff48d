"""Synthetic multi-channel CRM data with a known ground truth.

The generator writes the sources as a company would have them:

- ``crm.sqlite``: the CRM database, table ``customers``;
- ``orders/orders_YYYY-MM.csv`` and ``order_items/order_items_YYYY-MM.csv``: monthly exports;
- ``events/events_NNN.jsonl``: web/app events as JSON lines, one file per chunk;
- ``tickets.xlsx``: support tickets exported from the help desk;
- ``surveys.csv``: survey answers, GBK-encoded (as Chinese survey tools export them);
- ``promotions.csv``: the promotion calendar;
- ``truth/``: the ground truth, read only by evaluation code (personas, true
  drop-out dates, duplicate clusters, injected defects).

Generative model (see ``docs/generative-model.md``)
---------------------------------------------------
Each customer belongs to a latent persona. Given the persona, the customer draws
a purchase rate ``lambda ~ Gamma`` and a lifetime ``tau ~ Exponential`` (Pareto/NBD
style): the customer buys as a Poisson process with rate ``lambda * m(t)`` from
signup until ``signup + tau`` (the true drop-out date), then never again.
``m(t)`` is a shared calendar intensity: linear trend, weekly cycle, yearly
cycle, Chinese retail peaks (Spring Festival run-up and holiday dip, 618,
Double 11) and promotion weeks. Order size follows the persona's spend level and
category mix; a later line of an order often completes its first line's category
(:data:`COMPLEMENTS`: electronics with home, fashion with beauty), the one basket
association planted for the cross-sell rules to find. Events, tickets and surveys are drawn from the same active windows;
satisfaction and NPS drop in the months before drop-out.

Messiness is injected at documented rates (:data:`DEFECT_RATES`) and each
injected defect is listed in ``truth/defects.csv``.

Everything is vectorised with NumPy and done in chunks of customers, so memory
is bounded by the chunk size, not by the number of customers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

PERSONAS: dict[str, dict[str, Any]] = {
    "vip": {
        "share": 0.10,
        "rate_per_month": 2.0,
        "rate_shape": 4.0,
        "lifetime_days": 1600,
        "spend": 650.0,
        "categories": [0.30, 0.25, 0.25, 0.10, 0.10],
        "channels": [0.35, 0.15, 0.50],
        "promo_lift": 1.2,
        "nps": 9.0,
    },
    "regular": {
        "share": 0.35,
        "rate_per_month": 0.8,
        "rate_shape": 3.0,
        "lifetime_days": 700,
        "spend": 260.0,
        "categories": [0.15, 0.25, 0.15, 0.20, 0.25],
        "channels": [0.50, 0.30, 0.20],
        "promo_lift": 1.5,
        "nps": 7.5,
    },
    "bargain": {
        "share": 0.30,
        "rate_per_month": 0.6,
        "rate_shape": 2.0,
        "lifetime_days": 420,
        "spend": 110.0,
        "categories": [0.05, 0.30, 0.20, 0.15, 0.30],
        "channels": [0.60, 0.05, 0.35],
        "promo_lift": 3.0,
        "nps": 6.5,
    },
    "one_off": {
        "share": 0.25,
        "rate_per_month": 0.25,
        "rate_shape": 1.5,
        "lifetime_days": 150,
        "spend": 180.0,
        "categories": [0.25, 0.25, 0.20, 0.15, 0.15],
        "channels": [0.45, 0.35, 0.20],
        "promo_lift": 2.0,
        "nps": 6.0,
    },
}
"""Latent personas: share of customers, purchase rate, lifetime, spend, category and
channel mix (online/store/app), sensitivity to promotions, typical NPS."""

CATEGORIES: list[str] = ["electronics", "fashion", "beauty", "home", "grocery"]
CATEGORY_PRICE: dict[str, float] = {
    "electronics": 420.0,
    "fashion": 160.0,
    "beauty": 110.0,
    "home": 140.0,
    "grocery": 45.0,
}
CATEGORY_VARIANTS: dict[str, list[str]] = {
    "electronics": ["Electronics", " electronics", "ELECTRONICS", "电子产品"],
    "fashion": ["Fashion", "fashion ", "服装", "Apparel"],
    "beauty": ["Beauty", "BEAUTY", "美妆"],
    "home": ["Home", "home & living", "家居"],
    "grocery": ["Grocery", "groceries", "食品"],
}
"""Inconsistent labels injected for each canonical category."""

COMPLEMENTS: dict[str, str] = {
    "electronics": "home",
    "home": "electronics",
    "fashion": "beauty",
    "beauty": "fashion",
}
"""Category a later line of an order completes its first line's with (cross-sell planted)."""
COMPLEMENT_RATE = 0.4
"""Share of the later lines of an order that take the complement of its first line's category."""
_COMPLEMENT_INDEX = np.array([CATEGORIES.index(COMPLEMENTS[c]) if c in COMPLEMENTS else -1
                              for c in CATEGORIES])  # fmt: skip
"""Position in :data:`CATEGORIES` of each category's complement (-1: none)."""

CHANNELS: list[str] = ["online", "store", "app"]

N_SKUS = 400
"""Products per category."""
SKU_RANKING = np.stack(
    [
        np.stack([np.random.default_rng(1000 + 10 * p + c).permutation(N_SKUS) for c in range(5)])
        for p in range(4)
    ]
)
"""Each persona's preference order of the products of each category (fixed, not seeded per run)."""

CITIES: list[tuple[str, str, str]] = [
    ("上海", "上海市", "East"),
    ("北京", "北京市", "North"),
    ("广州", "广东省", "South"),
    ("深圳", "广东省", "South"),
    ("杭州", "浙江省", "East"),
    ("南京", "江苏省", "East"),
    ("苏州", "江苏省", "East"),
    ("成都", "四川省", "Southwest"),
    ("重庆", "重庆市", "Southwest"),
    ("武汉", "湖北省", "Central"),
    ("长沙", "湖南省", "Central"),
    ("郑州", "河南省", "Central"),
    ("西安", "陕西省", "Northwest"),
    ("天津", "天津市", "North"),
    ("沈阳", "辽宁省", "Northeast"),
    ("哈尔滨", "黑龙江省", "Northeast"),
    ("昆明", "云南省", "Southwest"),
    ("厦门", "福建省", "East"),
    ("青岛", "山东省", "East"),
    ("济南", "山东省", "East"),
]
CITY_WEIGHTS = np.array([10, 10, 8, 8, 6, 5, 5, 5, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2], float)

SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
)
GIVEN = list(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍鹏辉玲建国红文斌宇浩凯晨欣怡子涵雨轩"
)
EMAIL_DOMAINS = ["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "sina.com"]
ACQ_CHANNELS = ["search", "social", "referral", "store", "ads", "marketplace"]
EVENT_TYPES = ["view", "search", "add_to_cart", "login", "wishlist"]
EVENT_WEIGHTS = [0.55, 0.15, 0.15, 0.10, 0.05]
TICKET_TOPICS = ["delivery", "refund", "product", "account", "payment"]
COMMENTS_GOOD = ["很满意，下次还会再买", "物流很快", "质量不错", "客服态度好", "性价比高"]
COMMENTS_BAD = ["发货太慢了", "质量一般", "退款流程太麻烦", "客服不回复", "价格变贵了"]

DEFECT_RATES: dict[str, float] = {
    "customer_duplicate": 0.02,  # a second CRM record for the same person
    "customer_missing_email": 0.03,
    "customer_missing_phone": 0.02,
    "customer_missing_gender": 0.08,
    "customer_missing_birth_date": 0.10,
    "customer_missing_city": 0.02,
    "order_exact_duplicate": 0.005,  # the same export row twice
    "order_negative_amount": 0.002,
    "order_absurd_amount": 0.001,  # amount x 1000
    "order_future_date": 0.001,
    "order_unparseable_amount": 0.0005,
    "order_missing_region": 0.01,
    "item_inconsistent_category": 0.05,
    "event_unknown_customer": 0.001,
}
"""Rates of injected defects (share of rows of the named table)."""


def generator_version() -> str:
    """Return a fingerprint of this generator's code (recorded with each dataset).

    Data generated by another version of the code differs (its draws, defects or
    planted patterns), so a folder made by it should be generated again.
    """
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class GenerationResult:
    """Summary of a generated dataset.

    Attributes
    ----------
    out_dir : Path
        Folder holding the sources.
    rows : dict
        Rows written per table.
    seconds : float
        Wall time of the generation.
    """

    out_dir: Path
    rows: dict[str, int]
    seconds: float


def calendar_intensity(days: pd.DatetimeIndex, promo_days: np.ndarray | None = None) -> np.ndarray:
    """Return the shared daily purchase intensity ``m(t)`` (mean about 1).

    Parameters
    ----------
    days : pandas.DatetimeIndex
        Consecutive days.
    promo_days : numpy.ndarray of bool, optional
        True on promotion days (same length as ``days``).

    Returns
    -------
    numpy.ndarray
        Positive multipliers, one per day.
    """
    n = len(days)
    t = np.arange(n) / 365.25
    trend = 1.0 + 0.08 * t
    weekly = np.array([0.90, 0.92, 0.95, 1.0, 1.10, 1.15, 0.98])[days.dayofweek]
    yearly = 1.0 + 0.10 * np.cos(2 * np.pi * (days.dayofyear.to_numpy() - 350) / 365.25)
    peaks = np.ones(n)
    md = days.month * 100 + days.day
    peaks[(md >= 601) & (md <= 618)] *= 1.6  # 618 festival
    peaks[md == 618] *= 2.5
    peaks[(md >= 1101) & (md <= 1111)] *= 1.8  # Double 11
    peaks[md == 1111] *= 4.0
    for sf in spring_festival_dates(days.min().year, days.max().year):
        delta = (days - sf).days.to_numpy()
        peaks[(delta >= -21) & (delta < -3)] *= 1.4  # new-year shopping
        peaks[(delta >= -3) & (delta <= 6)] *= 0.45  # the holiday itself
    m = trend * weekly * yearly * peaks
    if promo_days is not None:
        m = m * np.where(promo_days, 1.5, 1.0)
    return m / m.mean()


def spring_festival_dates(first_year: int, last_year: int) -> list[pd.Timestamp]:
    """Return Spring Festival (Chinese New Year's Day) dates in a year range.

    Parameters
    ----------
    first_year, last_year : int
        Inclusive range of Gregorian years.

    Returns
    -------
    list of pandas.Timestamp
        Dates of the lunar new year that fall in the range.
    """
    known = {
        2019: "2019-02-05",
        2020: "2020-01-25",
        2021: "2021-02-12",
        2022: "2022-02-01",
        2023: "2023-01-22",
        2024: "2024-02-10",
        2025: "2025-01-29",
        2026: "2026-02-17",
        2027: "2027-02-06",
        2028: "2028-01-26",
        2029: "2029-02-13",
        2030: "2030-02-03",
    }
    return [pd.Timestamp(known[y]) for y in range(first_year, last_year + 1) if y in known]


def promotion_calendar(
    start: pd.Timestamp, end: pd.Timestamp, rng: np.random.Generator
) -> pd.DataFrame:
    """Draw promotion campaigns: about one week-long campaign every two months.

    Parameters
    ----------
    start, end : pandas.Timestamp
        Period covered.
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    pandas.DataFrame
        Columns ``promo_id``, ``name``, ``start_date``, ``end_date``, ``discount``.
    """
    months = pd.date_range(start, end, freq="2MS")
    starts = [m + pd.Timedelta(days=int(rng.integers(0, 45))) for m in months]
    rows = []
    for i, s in enumerate(starts):
        if s > end:
            continue
        rows.append(
            {
                "promo_id": f"P{i + 1:03d}",
                "name": f"campaign {i + 1}",
                "start_date": s.date(),
                "end_date": (s + pd.Timedelta(days=6)).date(),
                "discount": float(rng.choice([0.1, 0.15, 0.2, 0.3])),
            }
        )
    return pd.DataFrame(rows)


def _phone_formats(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Write Chinese mobile numbers in the formats people type them."""
    fmt = rng.integers(0, 4, len(digits))
    out = np.empty(len(digits), dtype=object)
    for k, f in enumerate(fmt):
        d = digits[k]
        out[k] = (d, f"+86 {d[:3]} {d[3:7]} {d[7:]}", f"{d[:3]}-{d[3:7]}-{d[7:]}", f"0086{d}")[f]
    return out


def _typo(name: str, rng: np.random.Generator) -> str:
    """Return ``name`` with one realistic edit (space, full-width space, swapped or dropped char)."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return name[:1] + " " + name[1:]
    if kind == 1:
        return name + "\u3000"
    if len(name) > 2:
        return name[0] + name[2] + name[1] + name[3:]
    return " " + name


class _Writer:
    """Appends chunks to the output files, writing headers once."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.started: set[Path] = set()
        self.rows: dict[str, int] = {}

    def csv(self, path: Path, frame: pd.DataFrame, table: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        first = path not in self.started
        self.started.add(path)
        arrow = pa.Table.from_pandas(
            frame.astype(str).replace({"None": None, "nan": None}), preserve_index=False
        )
        with path.open("ab") as fh:
            pacsv.write_csv(arrow, fh, pacsv.WriteOptions(include_header=first))
        self.rows[table] = self.rows.get(table, 0) + len(frame)


def generate(
    out_dir: str | Path,
    n_customers: int = 20_000,
    seed: int = 42,
    start: str = "2024-10-01",
    end: str = "2026-09-30",
    chunk_size: int = 50_000,
    events_per_order: float = 2.0,
    rate_scale: float = 1.0,
) -> GenerationResult:
    """Generate a synthetic dataset into ``out_dir`` (replacing what is there).

    Parameters
    ----------
    out_dir : str or Path
        Folder to write; its previous content is removed first.
    n_customers : int, default 20000
        Number of distinct people (duplicate CRM records come on top).
    seed : int, default 42
        Seed of every random draw: the same arguments give the same files.
    start, end : str, default "2024-10-01", "2026-09-30"
        First and last day of the order history (ISO dates).
    chunk_size : int, default 50000
        Customers generated at a time; bounds memory.
    events_per_order : float, default 2.0
        Mean number of web/app events per expected order.
    rate_scale : float, default 1.0
        Multiplies every customer's purchase rate: about 5.8 orders per customer over the
        default two years at 1.0, about 10 at 1.75 (the benchmark's 10M orders at 1M
        customers). The ground truth records the scaled rates.

    Returns
    -------
    GenerationResult
        Where the data went, rows per table and the wall time.

    Raises
    ------
    ValueError
        If ``n_customers`` < 10 or ``end`` is not after ``start``.
    """
    t0 = time.perf_counter()
    if n_customers < 10:
        raise ValueError(f"n_customers must be at least 10, got {n_customers}")
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    if end_ts <= start_ts:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if rate_scale <= 0:
        raise ValueError(f"rate_scale must be positive, got {rate_scale}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "truth").mkdir(parents=True)
    rng = np.random.default_rng(seed)

    days = pd.date_range(start_ts, end_ts, freq="D")
    promos = promotion_calendar(start_ts, end_ts, rng)
    promo_day = np.zeros(len(days), bool)
    for p in promos.itertuples():
        promo_day |= (days >= pd.Timestamp(p.start_date)) & (days <= pd.Timestamp(p.end_date))
    intensity = calendar_intensity(days, promo_day)
    cum = np.concatenate([[0.0], np.cumsum(intensity)])  # cum[i] = intensity mass before day i
    promos.to_csv(out / "promotions.csv", index=False)

    writer = _Writer(out)
    db = sqlite3.connect(out / "crm.sqlite")
    db.execute(
        "CREATE TABLE customers (customer_id TEXT, name TEXT, email TEXT, phone TEXT, gender TEXT,"
        " birth_date TEXT, city TEXT, province TEXT, country TEXT, signup_date TEXT,"
        " acquisition_channel TEXT, consent_marketing TEXT)"
    )
    truth_frames: list[pd.DataFrame] = []
    defects: list[pd.DataFrame] = []
    ticket_frames: list[pd.DataFrame] = []
    survey_path = out / "surveys.csv"
    order_seq = 0
    ticket_seq = 0
    n_dup_total = 0
    for c0 in range(0, n_customers, chunk_size):
        n = min(chunk_size, n_customers - c0)
        res = _generate_chunk(
            rng,
            c0,
            n,
            days,
            cum,
            promo_day,
            start_ts,
            end_ts,
            order_seq,
            ticket_seq,
            n_customers + n_dup_total,
            events_per_order,
            rate_scale,
        )
        order_seq += res["n_orders"]
        ticket_seq += len(res["tickets"])
        n_dup_total += res["n_duplicates"]
        cust = res["customers"]
        db.executemany(
            "INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            cust.astype(object).where(cust.notna(), None).itertuples(index=False, name=None),
        )
        writer.rows["customers"] = writer.rows.get("customers", 0) + len(cust)
        orders, items = res["orders"], res["items"]
        for month, part in orders.groupby("_month", sort=True):
            writer.csv(
                out / "orders" / f"orders_{month}.csv", part.drop(columns="_month"), "orders"
            )
        for month, part in items.groupby("_month", sort=True):
            writer.csv(
                out / "order_items" / f"order_items_{month}.csv",
                part.drop(columns="_month"),
                "order_items",
            )
        ev = res["events"]
        (out / "events").mkdir(exist_ok=True)
        with (out / "events" / f"events_{c0 // chunk_size:03d}.jsonl").open(
            "w", encoding="utf-8"
        ) as fh:
            for rec in ev.to_dict("records"):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        writer.rows["events"] = writer.rows.get("events", 0) + len(ev)
        ticket_frames.append(res["tickets"])
        sv = res["surveys"]
        sv.to_csv(
            survey_path,
            mode="a",
            header=c0 == 0,
            index=False,
            encoding="gbk",
            quoting=csv.QUOTE_MINIMAL,
        )
        writer.rows["surveys"] = writer.rows.get("surveys", 0) + len(sv)
        truth_frames.append(res["truth"])
        defects.append(res["defects"])
    db.commit()
    db.close()
    tickets = pd.concat(ticket_frames, ignore_index=True)
    with pd.ExcelWriter(out / "tickets.xlsx", engine="openpyxl") as xl:
        tickets.to_excel(xl, sheet_name="tickets", index=False)
    writer.rows["tickets"] = len(tickets)
    pd.concat(truth_frames, ignore_index=True).to_parquet(out / "truth" / "customers.parquet")
    pd.concat(defects, ignore_index=True).to_csv(out / "truth" / "defects.csv", index=False)
    seconds = time.perf_counter() - t0
    meta = {
        "n_customers": n_customers,
        "seed": seed,
        "start": start,
        "end": end,
        "chunk_size": chunk_size,
        "events_per_order": events_per_order,
        "rate_scale": rate_scale,
        "generator": generator_version(),
        "rows": writer.rows,
        "seconds": round(seconds, 2),
        "defect_rates": DEFECT_RATES,
        "personas": PERSONAS,
    }
    (out / "truth" / "generation.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    (out / "_SUCCESS").write_text(json.dumps(writer.rows))
    return GenerationResult(out, dict(writer.rows), seconds)


def _generate_chunk(
    rng: np.random.Generator,
    c0: int,
    n: int,
    days: pd.DatetimeIndex,
    cum: np.ndarray,
    promo_day: np.ndarray,
    start: pd.Timestamp,
    end: pd.Timestamp,
    order_seq: int,
    ticket_seq: int,
    dup_id_base: int,
    events_per_order: float,
    rate_scale: float = 1.0,
) -> dict[str, Any]:
    """Generate one chunk of customers and everything they did."""
    n_days = len(days)
    names = list(PERSONAS)
    shares = np.array([PERSONAS[p]["share"] for p in names])
    persona_idx = rng.choice(len(names), size=n, p=shares / shares.sum())
    par = {
        k: np.array([PERSONAS[p][k] for p in names])[persona_idx]
        for k in ("rate_per_month", "rate_shape", "lifetime_days", "spend", "promo_lift", "nps")
    }
    ids = np.array([f"C{c0 + i + 1:07d}" for i in range(n)], dtype=object)

    # signup from a year before the history starts until a month before it ends
    signup_off = rng.integers(-365, n_days - 30, size=n)
    signup = start + pd.to_timedelta(signup_off, unit="D")
    lam = rng.gamma(par["rate_shape"], par["rate_per_month"] / par["rate_shape"]) / 30.4
    lam = lam * rate_scale
    lifetime = rng.exponential(par["lifetime_days"])
    dropout_off = signup_off + lifetime
    dropout = start + pd.to_timedelta(np.floor(dropout_off), unit="D")
    a = np.clip(signup_off, 0, n_days)
    b = np.clip(np.floor(dropout_off).astype(int) + 1, 0, n_days)
    b = np.maximum(a, b)
    mass = cum[b] - cum[a]
    # first purchase right after signup for most new customers
    n_orders = rng.poisson(lam * mass)

    cust_rep = np.repeat(np.arange(n), n_orders)
    u = rng.uniform(cum[a][cust_rep], cum[b][cust_rep])
    day_idx = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, n_days - 1)
    # promotions lift bargain hunters: thin non-promo orders of promo-sensitive customers
    lift = par["promo_lift"][cust_rep]
    keep = promo_day[day_idx] | (rng.random(len(day_idx)) < 1.0 / np.sqrt(lift))
    cust_rep, day_idx = cust_rep[keep], day_idx[keep]
    n_ord = len(cust_rep)
    secs = rng.choice(np.arange(24), size=n_ord, p=_HOUR_P) * 3600 + rng.integers(0, 3600, n_ord)
    order_ts = days[day_idx] + pd.to_timedelta(secs, unit="s")
    order_ids = np.array([f"O{order_seq + i + 1:09d}" for i in range(n_ord)], dtype=object)

    # order lines
    cat_p = np.array([PERSONAS[p]["categories"] for p in names])
    n_items = 1 + np.minimum(rng.poisson(0.6, n_ord), 4)
    line_order = np.repeat(np.arange(n_ord), n_items)
    line_cust = cust_rep[line_order]
    cat_cum = np.cumsum(cat_p[persona_idx[line_cust]], axis=1)
    cat_idx = (rng.random(len(line_order))[:, None] > cat_cum).sum(axis=1)
    cat_idx = np.minimum(cat_idx, len(CATEGORIES) - 1)
    # complementary purchases: a later line of an order often completes the category of
    # its first line, so basket rules have a positive association to find. The draws
    # come from a stream of their own, so every other draw stays as it was
    complement_rng = rng.spawn(1)[0]
    first_line = np.cumsum(n_items) - n_items
    later = np.ones(len(line_order), bool)
    later[first_line] = False
    complement = _COMPLEMENT_INDEX[cat_idx[first_line]][line_order]
    planted = later & (complement >= 0) & (complement_rng.random(len(line_order)) < COMPLEMENT_RATE)
    cat_idx = np.where(planted, complement, cat_idx)
    base_price = np.array([CATEGORY_PRICE[c] for c in CATEGORIES])[cat_idx]
    spend_factor = (par["spend"] / 260.0)[line_cust]
    unit_price = np.round(base_price * spend_factor * rng.lognormal(0, 0.35, len(line_order)), 2)
    quantity = 1 + rng.poisson(0.3, len(line_order))
    # product choice: each persona favours its own products (Zipf over a persona-specific
    # ranking of the 400 products of a category), so co-purchases carry signal
    rank = np.minimum(rng.zipf(1.4, len(line_order)), N_SKUS) - 1
    sku_num = SKU_RANKING[persona_idx[line_cust], cat_idx, rank] + 1
    sku = np.array(
        [f"{CATEGORIES[c][:3].upper()}-{k:04d}" for c, k in zip(cat_idx, sku_num, strict=True)],
        dtype=object,
    )
    line_value = unit_price * quantity
    amount = np.round(np.bincount(line_order, weights=line_value, minlength=n_ord), 2)

    ch_p = np.array([PERSONAS[p]["channels"] for p in names])
    ch_cum = np.cumsum(ch_p[persona_idx[cust_rep]], axis=1)
    ch_idx = np.minimum((rng.random(n_ord)[:, None] > ch_cum).sum(axis=1), 2)
    status = rng.choice(["paid", "refunded", "cancelled"], size=n_ord, p=[0.92, 0.05, 0.03])

    city_idx = rng.choice(len(CITIES), size=n, p=CITY_WEIGHTS / CITY_WEIGHTS.sum())
    region = np.array([c[2] for c in CITIES], dtype=object)[city_idx]

    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": ids[cust_rep],
            "order_ts": order_ts.strftime("%Y-%m-%d %H:%M:%S"),
            "amount": amount.astype(object),
            "currency": "CNY",
            "status": status,
            "channel": np.array(CHANNELS, dtype=object)[ch_idx],
            "region": region[cust_rep],
        }
    )
    items = pd.DataFrame(
        {
            "order_id": order_ids[line_order],
            "sku": sku,
            "category": np.array(CATEGORIES, dtype=object)[cat_idx],
            "quantity": quantity,
            "unit_price": unit_price,
        }
    )

    # customers
    sur = rng.choice(SURNAMES, n)
    g1 = rng.choice(GIVEN, n)
    g2 = np.where(rng.random(n) < 0.6, rng.choice(GIVEN, n), "")
    cname = np.char.add(np.char.add(sur.astype(str), g1.astype(str)), g2.astype(str)).astype(object)
    handle = np.array([f"u{c0 + i + 1}{rng.integers(10, 99)}" for i in range(n)], dtype=object)
    email = handle + "@" + rng.choice(EMAIL_DOMAINS, n).astype(object)
    digits = np.array(
        [
            f"1{p}{r:09d}"
            for p, r in zip(rng.choice([3, 5, 7, 8, 9], n), rng.integers(0, 10**9, n), strict=True)
        ]
    )
    phone = _phone_formats(digits, rng)
    gender = rng.choice(
        ["F", "M", "女", "男", "female", "male"], n, p=[0.3, 0.3, 0.15, 0.15, 0.05, 0.05]
    )
    birth = pd.Timestamp("1960-01-01") + pd.to_timedelta(rng.integers(0, 365 * 45, n), unit="D")
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "name": cname,
            "email": email,
            "phone": phone,
            "gender": gender.astype(object),
            "birth_date": birth.strftime("%Y-%m-%d"),
            "city": np.array([c[0] for c in CITIES], dtype=object)[city_idx],
            "province": np.array([c[1] for c in CITIES], dtype=object)[city_idx],
            "country": "CN",
            "signup_date": signup.strftime("%Y-%m-%d"),
            "acquisition_channel": rng.choice(ACQ_CHANNELS, n).astype(object),
            "consent_marketing": np.where(rng.random(n) < 0.7, "true", "false").astype(object),
        }
    )
    truth = pd.DataFrame(
        {
            "customer_id": ids,
            "persona": np.array(names, dtype=object)[persona_idx],
            "signup_date": signup.date,
            "dropout_date": dropout.date,
            "purchase_rate_per_day": lam,
            "duplicate_of": None,
        }
    )

    defect_rows: list[pd.DataFrame] = []

    def mark(mask: np.ndarray, rate_key: str) -> np.ndarray:
        return mask & (rng.random(len(mask)) < DEFECT_RATES[rate_key])

    def log(table: str, keys: np.ndarray, kind: str) -> None:
        if len(keys):
            defect_rows.append(pd.DataFrame({"table": table, "key": keys, "defect": kind}))

    # missing values in customers
    for col, key in (
        ("email", "customer_missing_email"),
        ("phone", "customer_missing_phone"),
        ("gender", "customer_missing_gender"),
        ("birth_date", "customer_missing_birth_date"),
        ("city", "customer_missing_city"),
    ):
        m = mark(np.ones(n, bool), key)
        customers.loc[m, col] = None
        log("customers", ids[m], f"missing_{col}")

    # duplicate CRM records: same person, typo in name, reformatted phone/email
    dup = np.flatnonzero(mark(np.ones(n, bool), "customer_duplicate"))
    n_dup = len(dup)
    if n_dup:
        dup_ids = np.array([f"C{dup_id_base + k + 1:07d}" for k in range(n_dup)], dtype=object)
        d = customers.iloc[dup].copy()
        d["customer_id"] = dup_ids
        d["name"] = [_typo(x, rng) for x in d["name"]]
        # contact details of the second record: reformatted (45% / 60%), replaced by
        # another address or number (35% / 15%), or left out (20% / 25%)
        u = rng.random(n_dup)
        d["email"] = [
            None
            if e is None or x >= 0.8
            else (
                ("  " + e.upper() if x < 0.225 else e.title()) if x < 0.45 else f"new.{i}@163.com"
            )
            for e, x, i in zip(d["email"], u, dup_ids, strict=True)
        ]
        u = rng.random(n_dup)
        d["phone"] = [
            None
            if p is None or x >= 0.75
            else (
                _phone_formats(np.array([digits[i]]), rng)[0]
                if x < 0.6
                else f"139{rng.integers(0, 10**8):08d}"
            )
            for p, i, x in zip(d["phone"], dup, u, strict=True)
        ]
        d["signup_date"] = (
            (
                pd.to_datetime(d["signup_date"])
                + pd.to_timedelta(rng.integers(1, 200, n_dup), unit="D")
            )
            .clip(upper=end)
            .dt.strftime("%Y-%m-%d")
        )
        customers = pd.concat([customers, d], ignore_index=True)
        dup_truth = truth.iloc[dup].copy()
        dup_truth["duplicate_of"] = ids[dup]
        dup_truth["customer_id"] = dup_ids
        truth = pd.concat([truth, dup_truth], ignore_index=True)
        log("customers", dup_ids, "duplicate_record")
        # some orders of the person are booked on the duplicate record
        dup_map = dict(zip(ids[dup], dup_ids, strict=True))
        cand = orders["customer_id"].isin(dup_map) & (rng.random(n_ord) < 0.3)
        orders.loc[cand, "customer_id"] = orders.loc[cand, "customer_id"].map(dup_map)

    # order defects; the export file is chosen by the true order month
    orders["_month"] = orders["order_ts"].str.slice(0, 7)
    amt = orders["amount"].to_numpy(dtype=object)
    m = mark(np.ones(n_ord, bool), "order_negative_amount")
    amt[m] = -np.abs(amount[m])
    log("orders", order_ids[m], "negative_amount")
    m2 = mark(~m, "order_absurd_amount")
    amt[m2] = amount[m2] * 1000
    log("orders", order_ids[m2], "absurd_amount")
    m3 = mark(~(m | m2), "order_unparseable_amount")
    amt[m3] = rng.choice(["N/A", "abc", "--"], m3.sum())
    log("orders", order_ids[m3], "unparseable_amount")
    orders["amount"] = amt
    m = mark(np.ones(n_ord, bool), "order_future_date")
    orders.loc[m, "order_ts"] = (order_ts[m] + pd.DateOffset(years=5)).strftime("%Y-%m-%d %H:%M:%S")
    log("orders", order_ids[m], "future_date")
    m = mark(np.ones(n_ord, bool), "order_missing_region")
    orders.loc[m, "region"] = None
    log("orders", order_ids[m], "missing_region")
    m = mark(np.ones(n_ord, bool), "order_exact_duplicate")
    log("orders", order_ids[m], "exact_duplicate_row")
    orders = pd.concat([orders, orders[m]], ignore_index=True)
    # an order's lines go to the export of the order's month
    items = items.merge(orders.drop_duplicates("order_id")[["order_id", "_month"]], on="order_id")

    # inconsistent category labels
    m = mark(np.ones(len(items), bool), "item_inconsistent_category")
    cats = items["category"].to_numpy(dtype=object)
    cats[m] = [CATEGORY_VARIANTS[c][rng.integers(0, len(CATEGORY_VARIANTS[c]))] for c in cats[m]]
    items["category"] = cats
    log("order_items", items["order_id"].to_numpy()[m], "inconsistent_category")

    # events: browsing during the active window, about events_per_order per expected order
    n_ev = rng.poisson(lam * mass * events_per_order + 0.5)
    ev_cust = np.repeat(np.arange(n), n_ev)
    uev = rng.uniform(cum[a][ev_cust], cum[b][ev_cust] + 1e-9)
    ev_day = np.clip(np.searchsorted(cum, uev, side="right") - 1, 0, n_days - 1)
    ev_ts = days[ev_day] + pd.to_timedelta(rng.integers(0, 86400, len(ev_cust)), unit="s")
    ev_cat_cum = np.cumsum(cat_p[persona_idx[ev_cust]], axis=1)
    ev_cat = np.minimum((rng.random(len(ev_cust))[:, None] > ev_cat_cum).sum(axis=1), 4)
    etype = rng.choice(EVENT_TYPES, len(ev_cust), p=EVENT_WEIGHTS)
    ev_ids = ids[ev_cust].copy()
    m = mark(np.ones(len(ev_cust), bool), "event_unknown_customer")
    ev_ids[m] = "X" + ev_ids[m]
    log("events", ev_ids[m], "unknown_customer")
    events = pd.DataFrame(
        {
            "customer_id": ev_ids,
            "ts": ev_ts.strftime("%Y-%m-%dT%H:%M:%S"),
            "event_type": etype,
            "page": np.where(
                etype == "view", "product", np.where(etype == "search", "search", "cart")
            ),
            "category": np.where(
                np.isin(etype, ["view", "add_to_cart", "wishlist"]),
                np.array(CATEGORIES, dtype=object)[ev_cat],
                None,
            ),
        }
    )

    # tickets: more of them, and less satisfied, in the 90 days before drop-out
    active_days = (b - a).astype(float)
    n_tk = rng.poisson(0.25 * active_days / 365.0 + 0.05)
    tk_cust = np.repeat(np.arange(n), n_tk)
    tk_day = (a[tk_cust] + rng.random(len(tk_cust)) * np.maximum(b - a, 1)[tk_cust]).astype(int)
    tk_day = np.clip(tk_day, 0, n_days - 1)
    near_drop = (np.floor(dropout_off)[tk_cust] - tk_day) < 90
    opened = days[tk_day] + pd.to_timedelta(
        rng.integers(8 * 3600, 22 * 3600, len(tk_cust)), unit="s"
    )
    closed = opened + pd.to_timedelta(rng.exponential(36, len(tk_cust)), unit="h")
    sat = np.clip(np.round(rng.normal(np.where(near_drop, 2.3, 4.1), 0.9)), 1, 5).astype(int)
    tickets = pd.DataFrame(
        {
            "ticket_id": [f"T{ticket_seq + i + 1:08d}" for i in range(len(tk_cust))],
            "customer_id": ids[tk_cust],
            "opened_at": opened.strftime("%Y-%m-%d %H:%M:%S"),
            "closed_at": pd.Series(closed.strftime("%Y-%m-%d %H:%M:%S")).where(
                rng.random(len(tk_cust)) > 0.03
            ),
            "topic": rng.choice(TICKET_TOPICS, len(tk_cust)),
            "priority": rng.choice(["low", "medium", "high"], len(tk_cust), p=[0.5, 0.35, 0.15]),
            "satisfaction": pd.Series(sat).where(rng.random(len(tk_cust)) < 0.7).astype("Int64"),
        }
    )

    # surveys: about 30% answer once; NPS follows persona and drops near drop-out
    ans = np.flatnonzero((rng.random(n) < 0.3) & (b > a))
    sv_day = (a[ans] + rng.random(len(ans)) * (b - a)[ans]).astype(int)
    sv_day = np.clip(sv_day, 0, n_days - 1)
    near = (np.floor(dropout_off)[ans] - sv_day) < 120
    nps = np.clip(np.round(rng.normal(par["nps"][ans] - 3.0 * near, 1.6)), 0, 10).astype(int)
    csat = np.clip(np.round(1 + nps / 2.5 + rng.normal(0, 0.5, len(ans))), 1, 5).astype(int)
    comment = np.where(
        nps >= 7, rng.choice(COMMENTS_GOOD, len(ans)), rng.choice(COMMENTS_BAD, len(ans))
    )
    comment = np.where(rng.random(len(ans)) < 0.5, comment, "")
    surveys = pd.DataFrame(
        {
            "customer_id": ids[ans],
            "answered_at": (
                days[sv_day] + pd.to_timedelta(rng.integers(0, 86400, len(ans)), unit="s")
            ).strftime("%Y-%m-%d %H:%M:%S"),
            "nps": nps,
            "csat": csat,
            "comment": comment,
        }
    )

    return {
        "customers": customers,
        "orders": orders,
        "items": items,
        "events": events,
        "tickets": tickets,
        "surveys": surveys,
        "truth": truth,
        "defects": pd.concat(defect_rows, ignore_index=True) if defect_rows else pd.DataFrame(),
        "n_orders": n_ord,
        "n_duplicates": n_dup,
    }


_HOUR_P = np.array(
    [
        1,
        0.5,
        0.3,
        0.2,
        0.2,
        0.3,
        0.6,
        1.2,
        2,
        2.5,
        3,
        3.2,
        3.5,
        3,
        2.8,
        2.8,
        3,
        3.2,
        3.5,
        4.2,
        4.8,
        4.5,
        3.2,
        2.0,
    ]
)
_HOUR_P = _HOUR_P / _HOUR_P.sum()


def source_specs(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Return the ``collect.sources`` parameter that reads a generated dataset.

    Parameters
    ----------
    out_dir : str or Path
        Folder written by :func:`generate`.

    Returns
    -------
    dict
        Canonical table -> source mapping (the same as in ``params/default.yaml``).
    """
    d = str(out_dir)
    return {
        "customers": {"kind": "sql", "url": f"sqlite:///{d}/crm.sqlite", "table": "customers"},
        "orders": {"kind": "csv", "path": f"{d}/orders/*.csv"},
        "order_items": {"kind": "csv", "path": f"{d}/order_items/*.csv"},
        "events": {"kind": "jsonl", "path": f"{d}/events/*.jsonl"},
        "tickets": {"kind": "excel", "path": f"{d}/tickets.xlsx"},
        "surveys": {"kind": "csv", "path": f"{d}/surveys.csv", "encoding": "gbk"},
    }
