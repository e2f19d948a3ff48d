"""Benchmark: the whole pipeline at 20k, 200k and 1M customers, stage by stage.

For each size it generates the data once (``data/bench/<N>/``, reused afterwards; purchase
rates scaled by ``--rate-scale``, 1.75 by default: about 10 orders per customer, 10.2M orders
and 52.8M input rows at 1M customers),
runs all five stages plus the HTML with ``crm-analytics run`` and prints, per stage
and in total: wall time (notebook and HTML), peak resident memory of the notebook
kernel and of the runner (sampled by the runner, see ``manifest.json``), and input
rows per second. It then times the heaviest aggregation, the per-customer features
(:func:`crm_analytics.features.customer_features` over orders, customers, events,
tickets and surveys), as our ibis expression and as hand-written DuckDB SQL on the
same store, checks both give the same rows, and prints our time / bare time.

    .venv/bin/python bench/run.py                      # 20k, 200k and 1M customers
    .venv/bin/python bench/run.py --customers 20000    # one size
    .venv/bin/python bench/run.py --engine spark       # also the features on local Spark
    .venv/bin/python bench/run.py --engine postgres --engine-url postgresql://u@127.0.0.1/db
                                                       # also the features on PostgreSQL
    .venv/bin/python bench/run.py --generate-only      # only the data

Stores and reports go to ``data/bench/`` so benchmark runs never become
``reports/latest``. Figures depend on the machine; the README quotes the ones
measured on 2 cores / 24 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "data" / "bench"
SIZES = (20_000, 200_000, 1_000_000)
RATE_SCALE = 1.75  # purchase-rate multiplier: about 10 orders per customer, 10M at 1M
MEMORY_LIMIT = (
    "1GB"  # DuckDB's share of the 3 GiB memory target; the notebooks' frames take the rest
)
FEATURE_TABLES = ("orders", "customers", "events", "tickets", "surveys")

BARE_FEATURES_SQL = """
with paid as (
    select * from orders
    where order_ts < TIMESTAMP '{cutoff}' and status = 'paid' and not amount_outlier
), buy as (
    select customer_id,
           count(*) as frequency,
           cast(sum(cast(amount as decimal(38, 2))) as double) as monetary_total,
           cast(sum(cast(amount as decimal(38, 2))) as double) / count(amount) as monetary_mean,
           min(order_ts) as first_order_ts,
           max(order_ts) as last_order_ts,
           count(*) filter (where order_ts >= TIMESTAMP '{cutoff}' - INTERVAL 90 DAY)
               as orders_recent,
           count(*) filter (where channel = 'app') / count(*) as share_app,
           count(*) filter (where channel = 'online') / count(*) as share_online,
           count(*) filter (where channel = 'store') / count(*) as share_store
    from paid group by customer_id
), ref as (
    select customer_id, count(*) as n_refunds from orders
    where order_ts < TIMESTAMP '{cutoff}' and status = 'refunded' group by customer_id
), ev as (
    select customer_id, count(*) as events_recent from events
    where ts < TIMESTAMP '{cutoff}' and ts >= TIMESTAMP '{cutoff}' - INTERVAL 90 DAY
    group by customer_id
), tk as (
    select customer_id, count(*) as n_tickets, avg(satisfaction) as mean_satisfaction
    from tickets where opened_at < TIMESTAMP '{cutoff}' group by customer_id
), sv as (
    select customer_id, avg(nps) as mean_nps, avg(csat) as mean_csat
    from surveys where answered_at < TIMESTAMP '{cutoff}' group by customer_id
)
select c.customer_id,
       coalesce(b.frequency, 0) as frequency,
       coalesce(b.monetary_total, 0) as monetary_total,
       coalesce(b.monetary_mean, 0) as monetary_mean,
       b.first_order_ts, b.last_order_ts,
       coalesce(b.orders_recent, 0) as orders_recent,
       coalesce(b.share_app, 0) as share_app,
       coalesce(b.share_online, 0) as share_online,
       coalesce(b.share_store, 0) as share_store,
       coalesce(r.n_refunds, 0) as n_refunds,
       date_diff('day', b.last_order_ts::date, DATE '{cutoff}') as recency_days,
       date_diff('day', least(c.signup_date::timestamp,
                              coalesce(b.first_order_ts, c.signup_date::timestamp))::date,
                 DATE '{cutoff}') as tenure_days,
       coalesce(e.events_recent, 0) as events_recent,
       coalesce(t.n_tickets, 0) as n_tickets, t.mean_satisfaction,
       s.mean_nps, s.mean_csat
from customers c
left join buy b using (customer_id)
left join ref r using (customer_id)
left join ev e using (customer_id)
left join tk t using (customer_id)
left join sv s using (customer_id)
where c.signup_date::timestamp < TIMESTAMP '{cutoff}'
order by c.customer_id
"""

GENERATE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from crm_analytics.generate import generate
res = generate(sys.argv[1], int(sys.argv[2]), 42, rate_scale=float(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(n: int, rate_scale: float) -> dict[str, Any] | None:
    """Generate ``n`` customers into data/bench/<n>/ unless there already, made by this code at ``rate_scale``."""
    from crm_analytics.generate import generator_version

    out = BENCH / str(n)
    if (out / "_SUCCESS").is_file():
        meta = json.loads((out / "truth" / "generation.json").read_text())
        if (
            meta.get("rate_scale", 1.0) == rate_scale
            and meta.get("generator") == generator_version()
        ):
            return None
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, str(out), str(n), str(rate_scale)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def params_file(n: int, memory_limit: str | None) -> Path:
    """Write the default parameters pointed at the benchmark data of size ``n``."""
    params = yaml.safe_load((ROOT / "params" / "default.yaml").read_text(encoding="utf-8"))
    params.pop("generate", None)
    if memory_limit is not None:
        params["memory_limit"] = memory_limit
    params["store"] = f"data/bench/store-{n}.duckdb"
    params["clean"]["truth_dir"] = f"data/bench/{n}/truth"
    params["collect"]["suppression_file"] = f"data/bench/suppression-{n}.csv"
    params.setdefault("report", {})["snapshot_dir"] = "data/bench/snapshots"
    text = yaml.safe_dump(params, allow_unicode=True).replace("data/raw/default", f"data/bench/{n}")
    path = BENCH / f"params-{n}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run_pipeline(n: int, memory_limit: str | None) -> dict[str, Any]:
    """Run every stage on size ``n``; return the manifest and the runner's wall time."""
    run_id = f"bench-{n}-{time.strftime('%Y%m%dT%H%M%S')}"
    t0 = time.perf_counter()
    subprocess.run(
        [
            str(Path(sys.executable).with_name("crm-analytics")),
            "run",
            "--params",
            str(params_file(n, memory_limit)),
            "--run-id",
            run_id,
            "--reports-dir",
            "data/bench/reports",
            "--keep",
            "3",
        ],
        cwd=ROOT,
        check=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    wall = time.perf_counter() - t0
    manifest = json.loads((BENCH / "reports" / run_id / "manifest.json").read_text())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall": wall, "manifest": manifest, "children_peak_mb": children}


def _same_rows(a: Any, b: Any) -> bool:
    """Return whether two feature frames hold the same rows (floats to 1e-9), in any order."""
    import pandas as pd

    key = a.columns[0]
    a = a.sort_values(key).reset_index(drop=True)
    b = b[a.columns].sort_values(key).reset_index(drop=True)
    return len(a) == len(b) and all(
        (a[c].fillna(-1) == b[c].fillna(-1)).all()
        if not pd.api.types.is_float_dtype(a[c])
        else ((a[c] - b[c].astype(float)).abs().fillna(0) < 1e-9).all()
        for c in a.columns
    )


def time_features(n: int, cutoff: str, engine: str, engine_url: str = "") -> dict[str, Any]:
    """Time the per-customer features as ibis and as bare SQL on the store of size ``n``."""
    import duckdb
    import ibis

    from crm_analytics import features, store

    path = str(BENCH / f"store-{n}.duckdb")
    con = ibis.duckdb.connect(path, read_only=True)
    tables = {t: con.table(t) for t in FEATURE_TABLES}
    out: dict[str, Any] = {}
    raw = duckdb.connect(path, read_only=True)
    sql = BARE_FEATURES_SQL.format(cutoff=cutoff)
    for label in ("ibis", "bare"):
        times = []
        for _ in range(3):  # the first warms the file cache; the best of the others counts
            t0 = time.perf_counter()
            if label == "ibis":
                ours = features.customer_features(
                    tables["orders"], cutoff, tables["customers"], tables["events"],
                    tables["tickets"], tables["surveys"],
                ).to_pyarrow()  # fmt: skip
            else:
                bare = raw.sql(sql).arrow().read_all()
            times.append(time.perf_counter() - t0)
        out[label] = min(times[1:])
    raw.close()
    a = ours.to_pandas()
    same = _same_rows(a, bare.to_pandas())
    out.update(rows=len(a), same=bool(same), ratio=out["ibis"] / out["bare"])
    if engine == "spark":
        t0 = time.perf_counter()
        on_spark = store.engine_tables(con, FEATURE_TABLES, engine="spark")
        out["spark_export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        features.customer_features(
            on_spark["orders"], cutoff, on_spark["customers"], on_spark["events"],
            on_spark["tickets"], on_spark["surveys"],
        ).to_pyarrow()  # fmt: skip
        out["spark"] = time.perf_counter() - t0
    if engine == "postgres":
        t0 = time.perf_counter()
        on_pg = store.engine_tables(con, FEATURE_TABLES, engine="postgres", engine_url=engine_url)
        out["postgres_copy"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_server = store.to_frame(
            features.customer_features(
                on_pg["orders"], cutoff, on_pg["customers"], on_pg["events"],
                on_pg["tickets"], on_pg["surveys"],
            )
        )  # fmt: skip
        out["postgres"] = time.perf_counter() - t0
        out["postgres_same"] = bool(_same_rows(a, on_server))
    con.disconnect()
    return out


def input_rows(n: int) -> int:
    """Return the number of generated input rows (all tables) of size ``n``."""
    counts = json.loads((BENCH / str(n) / "_SUCCESS").read_text())
    return sum(v for k, v in counts.items() if k != "customers") + counts["customers"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--customers", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--engine", choices=["store", "spark", "postgres"], default="store")
    ap.add_argument(
        "--engine-url",
        default=os.environ.get("CRM_BENCH_POSTGRES_URL", ""),
        help="PostgreSQL URL for --engine postgres (default: $CRM_BENCH_POSTGRES_URL)",
    )
    ap.add_argument("--features-only", action="store_true", help="skip the pipeline run")
    ap.add_argument(
        "--rate-scale",
        type=float,
        default=RATE_SCALE,
        help="purchase-rate multiplier of the generated data (1.75: about 10M orders at 1M)",
    )
    ap.add_argument("--generate-only", action="store_true", help="only generate the data")
    ap.add_argument(
        "--memory-limit",
        help="DuckDB memory_limit of the runs instead of the default parameters' (1GB, which "
        "keeps 1M customers within 3 GiB: a kernel peaks at about this plus its frames)",
    )
    args = ap.parse_args()
    defaults = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    cutoff = defaults["cutoff_date"]
    args.memory_limit = args.memory_limit or defaults["memory_limit"]
    BENCH.mkdir(parents=True, exist_ok=True)
    table = []
    for n in args.customers:
        gen = generate(n, args.rate_scale)
        if gen:
            print(
                f"generated {n:,} customers in {gen['seconds']:.0f} s, peak {gen['peak_mb']:.0f} MB"
            )
        counts = json.loads((BENCH / str(n) / "_SUCCESS").read_text())
        print(f"{n:,} customers: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        if args.generate_only:
            continue
        rows = input_rows(n)
        result: dict[str, Any] = {"customers": n, "rows": rows}
        if not args.features_only:
            result.update(run_pipeline(n, args.memory_limit), memory_limit=args.memory_limit)
        result["features"] = time_features(n, cutoff, args.engine, args.engine_url)
        table.append(result)
        (BENCH / f"result-{n}.json").write_text(json.dumps(result, indent=2, default=str))
    if not table:  # --generate-only
        return

    print()
    print(
        f"per stage (DuckDB memory_limit {args.memory_limit}): seconds (notebook + HTML) | "
        "peak kernel MB | input rows per second"
    )
    stages = ["collect", "clean", "segment", "churn", "forecast"]
    header = f"{'stage':<10}" + "".join(f"{r['customers']:>30,}" for r in table)
    print(header)
    for stage in [*stages, "total"]:
        cells = []
        for r in table:
            if "manifest" not in r:
                cells.append(f"{'-':>30}")
                continue
            entries = {e["stage"]: e for e in r["manifest"]["stages"]}
            if stage == "total":
                sec = r["wall"]
                mem = max(e.get("peak_kernel_mb", 0) for e in entries.values())
            else:
                e = entries.get(stage, {})
                sec = e.get("seconds", 0) + e.get("html_seconds", 0)
                mem = e.get("peak_kernel_mb", 0)
            cells.append(f"{sec:9.1f} s {mem:7.0f} MB {r['rows'] / max(sec, 1e-9):9,.0f}/s")
        print(f"{stage:<10}" + "".join(f"{c:>30}" for c in cells))
    for r in table:
        if "manifest" in r:
            runner = max(e.get("peak_runner_mb", 0) for e in r["manifest"]["stages"])
            print(
                f"{r['customers']:>9,} customers, {r['rows']:,} input rows: wall {r['wall']:.1f} s, "
                f"runner peak {runner:.0f} MB, largest child process {r['children_peak_mb']:.0f} MB"
            )
    ran = [r for r in table if "manifest" in r]
    if ran:
        big = ran[-1]
        print()
        print(
            f"slowest cells at {big['customers']:,} customers (seconds, peak kernel MB in the cell):"
        )
        for e in big["manifest"]["stages"]:
            shown = "; ".join(
                f"[{c['cell']}] {c['code'][:48]} {c['seconds']:.0f} s"
                + (f" {c['peak_kernel_mb']:.0f} MB" if c["peak_kernel_mb"] is not None else "")
                for c in e.get("hot_cells", [])
            )
            print(f"  {e['stage']:<9} {shown}")
    print()
    print("per-customer features (orders, customers, events, tickets, surveys), warm cache:")
    for r in table:
        f = r["features"]
        line = (
            f"{r['customers']:>9,}: ibis {f['ibis']:.2f} s, bare DuckDB SQL {f['bare']:.2f} s, "
            f"ratio {f['ratio']:.2f}, {f['rows']:,} rows, same result: {'yes' if f['same'] else 'NO'}"
        )
        if "postgres" in f:
            line += (
                f"; PostgreSQL {f['postgres']:.2f} s (+ {f['postgres_copy']:.1f} s copying the "
                f"tables), same result: {'yes' if f['postgres_same'] else 'NO'}"
            )
        if "spark" in f:
            line += (
                f"; Spark local[2] {f['spark']:.2f} s (+ {f['spark_export']:.1f} s Parquet export)"
            )
        print(line)


if __name__ == "__main__":
    main()
