"""Benchmark: collect + clean (with entity resolution) at several sizes.

Prints per size: rows read, collect time, clean time, peak memory of the process
(DuckDB runs in it), rows per second, and the duplicate-detection F1 against the
generator's ground truth.

    .venv/bin/python bench/collect_clean.py --customers 100000 1000000

Data goes to data/bench/<N>/ (generated when absent), the store to data/bench/cc-<N>.duckdb.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import pandas as pd
from crm_analytics import clean, collect, entities, store
from crm_analytics.generate import generate, source_specs

n, data, db = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if not (data / "_SUCCESS").is_file():
    generate(data, n, 42)
Path(db).unlink(missing_ok=True)
con = store.connect(db)
sources = source_specs(data)
t0 = time.perf_counter()
files = collect.collect_sources(con, sources)
t1 = time.perf_counter()
acc = clean.clean_all(con, clean.CleanSettings.build(), entities.MatchSettings())
t2 = time.perf_counter()
cw = con.table("customer_crosswalk").to_pandas()
f1 = entities.pairwise_scores(cw, pd.read_parquet(data / "truth" / "customers.parquet"))["f1"]
print(json.dumps({"rows": int(files.rows.sum()), "orders": int(acc.set_index("table").loc["orders", "input"]),
                  "collect_s": t1 - t0, "clean_s": t2 - t1,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "f1": f1}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    print(
        f"{'customers':>10} {'rows':>11} {'orders':>10} {'collect s':>9} {'clean s':>8} "
        f"{'peak MB':>8} {'rows/s':>9} {'dedup F1':>8}"
    )
    for n in args.customers:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                WORKER,
                str(n),
                str(ROOT / "data" / "bench" / str(n)),
                str(ROOT / "data" / "bench" / f"cc-{n}.duckdb"),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["collect_s"] + r["clean_s"]
        print(
            f"{n:>10,} {r['rows']:>11,} {r['orders']:>10,} {r['collect_s']:>9.1f} {r['clean_s']:>8.1f} "
            f"{r['peak_mb']:>8.0f} {r['rows'] / total:>9,.0f} {r['f1']:>8.3f}"
        )


if __name__ == "__main__":
    main()
