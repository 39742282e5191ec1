"""`moe-rbench report RUN [RUN ...] --out DIR`: MoE-vs-dense tables, figures and report.md from lm-eval outputs."""

from __future__ import annotations

import argparse

NAME = "report"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(NAME, help="MoE-vs-dense tables and figures from lm-eval output directories")
    parser.add_argument("runs", nargs="+", help="lm_eval --output_path directories (or results files)")
    parser.add_argument("--label", action="append", dest="labels", help="a label per run (default: model name)")
    parser.add_argument("--pair", action="append", default=[], metavar="MOE=DENSE", help="compare two runs by label")
    parser.add_argument("--out", required=True, help="directory for report.md, tables and figures")
    return parser


def run(args: argparse.Namespace) -> int:
    from moe_rbench.report import make_report
    from moe_rbench.tables import check_output_directory
    from moe_rbench_models.errors import OptionError

    if args.labels and len(args.labels) != len(args.runs):
        raise OptionError(f"give one --label per run, or none ({len(args.runs)} runs, {len(args.labels)} labels)")
    check_output_directory(args.out)
    print(make_report(args.runs, args.pair, args.out, args.labels))
    return 0
