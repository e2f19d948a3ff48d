"""Command line: ``crm-analytics generate | run | docs``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crm_analytics import __version__

EXIT_STAGE_FAILED = 1
"""Exit status when a stage notebook failed (the run folder says where)."""

EXIT_BAD_SETUP = 2
"""Exit status when the run could not start: bad parameters, missing file, run id taken."""

EXIT_STORE_BUSY = 3
"""Exit status when another run holds the store (nothing was changed; try again later)."""


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    p = argparse.ArgumentParser(prog="crm-analytics", description=__doc__)
    p.add_argument("--version", action="version", version=f"crm-analytics {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a synthetic dataset with ground truth")
    g.add_argument("--customers", type=int, default=20_000, help="number of customers")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--out", required=True, help="output folder (replaced)")
    g.add_argument("--start", default="2024-10-01", help="first day of order history")
    g.add_argument("--end", default="2026-09-30", help="last day of order history")
    g.add_argument(
        "--chunk-size", type=int, default=50_000, help="customers per chunk (bounds memory)"
    )
    g.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="multiply every purchase rate (1.75 gives about 10 orders per customer)",
    )

    r = sub.add_parser("run", help="run the pipeline notebooks and render the reports")
    r.add_argument("--params", default="params/default.yaml", help="parameter YAML")
    r.add_argument("--run-id", help="name of the run folder under reports/")
    r.add_argument("--from", dest="from_stage", help="first stage to run")
    r.add_argument("--only", help="run this stage only")
    r.add_argument("--reports-dir", default="reports", help="where run folders go")
    r.add_argument(
        "--keep",
        type=int,
        default=0,
        help="keep only the newest N run folders of this parameter file (0: all)",
    )

    f = sub.add_parser(
        "forget", help="erase a customer everywhere (right to erasure) and keep them suppressed"
    )
    f.add_argument("--customer-id", required=True, help="a CRM key of the person")
    f.add_argument("--params", default="params/default.yaml", help="parameter YAML of the runs")
    f.add_argument("--reason", default="", help="why, e.g. the request number (audit log)")
    f.add_argument("--reports-dir", default="reports", help="folder of run folders")
    f.add_argument("--audit-file", default="data/erasure_audit.jsonl", help="audit log (appended)")

    d = sub.add_parser("docs", help="write docs/data-model.md from the schemas")
    d.add_argument("--out", default="docs/data-model.md", help="output file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (``sys.argv[1:]`` by default).

    Returns
    -------
    int
        Exit status.
    """
    args = _parser().parse_args(argv)
    if args.command == "generate":
        from crm_analytics.generate import generate

        res = generate(
            args.out,
            args.customers,
            args.seed,
            args.start,
            args.end,
            args.chunk_size,
            rate_scale=args.rate_scale,
        )
        rows = ", ".join(f"{k} {v:,}" for k, v in res.rows.items())
        print(f"generated {res.out_dir} in {res.seconds:.1f} s: {rows}")
        return 0
    if args.command == "run":
        from crm_analytics.runner import StageFailed, StoreBusy, run_pipeline

        try:
            run_pipeline(args.params, args.run_id, args.from_stage, args.only, args.reports_dir,
                         keep=args.keep)  # fmt: skip
        except StageFailed as exc:
            print(f"crm-analytics: {exc}", file=sys.stderr)
            return EXIT_STAGE_FAILED
        except StoreBusy as exc:
            print(f"crm-analytics: {exc}", file=sys.stderr)
            return EXIT_STORE_BUSY
        except (FileExistsError, FileNotFoundError, ValueError) as exc:
            print(f"crm-analytics: {exc}", file=sys.stderr)
            return EXIT_BAD_SETUP
        return 0
    if args.command == "forget":
        from crm_analytics.runner import StoreBusy, forget_customer

        try:
            rec = forget_customer(args.params, args.customer_id, args.reason, args.reports_dir,
                                  args.audit_file)  # fmt: skip
        except StoreBusy as exc:
            print(f"crm-analytics: {exc}", file=sys.stderr)
            return EXIT_STORE_BUSY
        except (FileNotFoundError, ValueError) as exc:
            print(f"crm-analytics: {exc}", file=sys.stderr)
            return EXIT_BAD_SETUP
        rows = sum(rec["store_rows_deleted"].values())
        print(f"forgot {rec['records']} record(s): {rows:,} store rows, "
              f"{sum(rec['file_rows_deleted'].values()):,} export/snapshot rows, "
              f"{rec['report_files_scrubbed']} report files; suppressed from the next run on "
              f"(audit: {args.audit_file})")  # fmt: skip
        return 0
    if args.command == "docs":
        from crm_analytics.config import resolve_path
        from crm_analytics.schemas import data_model_markdown

        out = Path(resolve_path(args.out))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(data_model_markdown() + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
