"""`moe-rbench compare --baseline RUN --candidate RUN`: the CI gate on reliability metrics."""

from __future__ import annotations

import argparse
import sys

from moe_rbench.commands.options import add_old_spelling

NAME = "compare"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="CI gate: exit 0 on a pass, 1 when a reliability metric got worse, was lost or is invalid, 2 on a "
        "usage error (an option, a run that cannot be read), 3 when the runs are not comparable",
    )
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--candidate", required=True)
    max_drop = parser.add_argument("--max_drop", type=float, default=0.01, help="tolerated drop (default 0.01)")
    parser.add_argument("--metrics", nargs="+", help="only metrics matching these patterns, e.g. 'moe_rbench_ood/*'")
    within_stderr = parser.add_argument(
        "--ignore_within_stderr",
        action="store_true",
        help="unpaired rule: pass drops no larger than the combined standard error",
    )
    allow_missing = parser.add_argument(
        "--allow_missing", action="store_true", help="list metrics the candidate lacks instead of failing on them"
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="decide drops with a paired test on the documents both runs logged (--log_samples)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of --paired (default 0.05)")
    # the spellings of releases before the one flag style (CHANGELOG.md)
    for old, documented in (
        ("--max-drop", max_drop),
        ("--ignore-within-stderr", within_stderr),
        ("--allow-missing", allow_missing),
    ):
        add_old_spelling(parser, old, documented)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 pass, 1 a metric got worse, was lost or is invalid, 2 a usage error (an option, a run that
    cannot be read: raised to `main`), 3 the runs are not comparable (a summary line, then one line per difference)."""
    from moe_rbench.compare import EXIT_INCOMPARABLE, GateOptions, Incomparable, run_compare

    options = GateOptions(
        args.max_drop, tuple(args.metrics or ()), args.ignore_within_stderr, args.allow_missing, args.paired, args.alpha
    )
    try:
        summary, status = run_compare(args.baseline, args.candidate, options)
    except Incomparable as error:
        print(f"moe-rbench compare: {error.summary}", file=sys.stderr)
        for line in error.details():
            print(f"  {line}", file=sys.stderr)
        return EXIT_INCOMPARABLE
    print(summary)
    return status
