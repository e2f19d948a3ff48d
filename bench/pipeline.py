"""Benchmark: data generation and the full pipeline at several sizes.

Prints, per size: generation time and peak memory, pipeline time per stage and in
total, peak memory of the runner and of the notebook kernels, and orders per second.

    .venv/bin/python bench/pipeline.py --customers 20000 200000

Data goes to data/bench/<N>/ (regenerated only if absent or --regenerate); stores and
reports go to data/bench/ too, so benchmark runs never become reports/latest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
kind = sys.argv[1]
if kind == "generate":
    from crm_analytics.generate import generate
    res = generate(sys.argv[2], int(sys.argv[3]), 42)
    extra = {"rows": res.rows}
else:
    from crm_analytics.runner import run_pipeline
    run_dir = run_pipeline(sys.argv[2], run_id=sys.argv[3], reports_dir="data/bench/reports",
                           progress=False)
    extra = {"run_dir": str(run_dir)}
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - t0, "self_mb": self_kb / 1024,
                  "children_mb": child_kb / 1024, **extra}))
"""


def _measure(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(n: int, regenerate: bool, generate_only: bool = False) -> dict:
    data = ROOT / "data" / "bench" / str(n)
    gen = None
    if regenerate or not (data / "_SUCCESS").is_file():
        gen = _measure("generate", str(data), str(n))
    rows = json.loads((data / "_SUCCESS").read_text())
    if generate_only:
        return {"customers": n, "rows": rows, "generate": gen, "run": None, "stages": {}}
    params = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    params.pop("generate", None)
    params["store"] = f"data/bench/store-{n}.duckdb"
    params["clean"]["truth_dir"] = f"data/bench/{n}/truth"
    for spec in params["collect"]["sources"].values():
        for key in ("path", "url"):
            if key in spec:
                spec[key] = spec[key].replace("data/raw/default", f"data/bench/{n}")
    pfile = ROOT / "data" / "bench" / f"params-{n}.yaml"
    pfile.write_text(yaml.safe_dump(params, allow_unicode=True))
    run_id = f"bench-{n}-{time.strftime('%Y%m%dT%H%M%S')}"
    run = _measure("run", str(pfile), run_id)
    manifest = json.loads((Path(run["run_dir"]) / "manifest.json").read_text())
    metrics = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())
    return {
        "customers": n,
        "rows": rows,
        "generate": gen,
        "run": run,
        "stages": {s["stage"]: s["seconds"] for s in manifest["stages"]},
        "dedup_f1": (metrics["clean"].get("duplicate_detection") or {}).get("f1"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--customers", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--regenerate", action="store_true", help="regenerate data even if present")
    ap.add_argument("--generate-only", action="store_true", help="measure data generation only")
    args = ap.parse_args()
    results = [bench(n, args.regenerate, args.generate_only) for n in args.customers]
    print(
        f"{'customers':>10} {'orders':>10} {'gen s':>7} {'gen MB':>7} {'run s':>7} "
        f"{'runner MB':>9} {'kernel MB':>9} {'orders/s':>9}  stages (s)"
    )
    for r in results:
        g = r["generate"] or {}
        orders = r["rows"]["orders"]
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items())
        gen_s = f"{g['seconds']:7.1f}" if g else "    (-)"
        gen_mb = f"{g['self_mb']:7.0f}" if g else "    (-)"
        if r["run"] is None:
            print(f"{r['customers']:>10,} {orders:>10,} {gen_s} {gen_mb}")
            continue
        print(
            f"{r['customers']:>10,} {orders:>10,} {gen_s} {gen_mb} {r['run']['seconds']:7.1f} "
            f"{r['run']['self_mb']:9.0f} {r['run']['children_mb']:9.0f} "
            f"{orders / r['run']['seconds']:9,.0f}  {stages}  dedup F1={r['dedup_f1']}"
        )
    print(
        "gen: generation (skipped '(-)' when the data existed; use --regenerate); "
        "kernel MB: peak RSS of the largest notebook kernel"
    )


if __name__ == "__main__":
    main()
