"""`moe-rbench attribute`: the experts more (or less) active in one set of requests than in another: a ranked
table, a heatmap and the steering plan's model arguments. Its options are `steer`'s as well."""

from __future__ import annotations

import argparse
import sys

NAME = "attribute"
REMOVED_STEERING_FLAGS = (
    "--direction and --top were replaced by --force N / --disable M, which steer toward A in one configuration as "
    "SteerMoE does: `--direction force --top N` is `--force N`; `--direction disable --top N` (switch off the "
    "experts more active in A) is `--a <B> --b <A> --disable N` (swap the sets)"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME, help="the experts more active in one set of requests than another (ranked table, heatmap)"
    )
    add_attribution_options(parser, steering=False)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit status 2, with the table written, when the selection asked for cannot be made."""
    from moe_rbench.attribute import AttributionError, attribute_experts, select_experts, write_attribution
    from moe_rbench.tables import check_output_directory

    check_removed_flags(args)
    check_output_directory(args.out)
    attribution = attribute_experts(
        args.routing, args.a, args.b, args.samples, args.span, args.alpha, args.metric, args.pair_by
    )
    force, disable = (10 if n is None else n for n in (args.force, args.disable))
    try:
        plan, note = select_experts(attribution, force, disable, args.selection, args.disable_mode), ""
    except AttributionError as error:
        plan, note = None, str(error)
    paths = write_attribution(attribution, args.out, plan, note)
    print(paths[0].read_text(encoding="utf-8"))
    for path in paths:
        print(path)
    if note:  # the table is written; the selection asked for could not be made
        print(f"moe-rbench attribute: {note}", file=sys.stderr)
        return 2
    return 0


def check_removed_flags(args: argparse.Namespace) -> None:
    from moe_rbench_models.errors import OptionError

    if args.direction is not None or args.top is not None:
        raise OptionError(REMOVED_STEERING_FLAGS)


def add_attribution_options(parser: argparse.ArgumentParser, steering: bool) -> None:
    """The options of `attribute` and `steer` (`steer` has no default for --force and --disable, and --before)."""
    parser.add_argument("--routing", required=True, help="a routing_out directory of moe_hf")
    sets = (
        "task patterns ('moe_rbench_style_*'), judge:FIELD=VALUE (judge:refusal=true), correct, wrong, or choice:N "
        "(the N-th request of each document: the N-th answer choice; choice:N@TASKS for some tasks)"
    )
    parser.add_argument("--a", required=True, help=f"set A: {sets}")
    parser.add_argument("--b", required=True, help="set B, as --a")
    parser.add_argument(
        "--samples",
        help="the lm_eval --output_path of the recorded run (--log_samples), for correct/wrong and judge:... sets",
    )
    parser.add_argument(
        "--span",
        default="prompt",
        choices=("prompt", "continuation", "scored", "all"),
        help="positions counted: those whose input is a prompt token (default) or a continuation token (SteerMoE's "
        "target tokens: the last continuation token is never an input), those that score or produce the "
        "continuation tokens (scored: what `continuation` meant in earlier releases), or all",
    )
    parser.add_argument(
        "--pair_by",
        choices=("document", "doc_key"),
        help="paired sets, as SteerMoE's: units of one document (--a choice:0 --b choice:1), or documents with the "
        "same aligned id (an SST-2 sentence and its styled version); only complete pairs are used",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="false discovery rate (default 0.05)")
    _add_selection_options(parser, steering)
    parser.add_argument("--top", type=int, help=argparse.SUPPRESS)  # removed: REMOVED_STEERING_FLAGS
    parser.add_argument("--direction", help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True, help="output directory")
    if steering:
        parser.add_argument("--before", help="an existing evaluation with the same lm_eval arguments (skip re-running)")
    parser.add_argument("--metric", help="correct/wrong: the 0/1 per-document metric (default: acc or exact_match)")


def _add_selection_options(parser: argparse.ArgumentParser, steering: bool) -> None:
    """Which experts are forced and disabled, and how moe_hf disables them."""
    count = "" if steering else " (default 10)"
    parser.add_argument(
        "--force", type=int, metavar="N", help=f"experts more active in A to force on{count}: steering toward A"
    )
    parser.add_argument(
        "--disable", type=int, metavar="M", help=f"experts more active in B to switch off{count}: steering toward A"
    )
    parser.add_argument(
        "--selection",
        default="significant",
        choices=("significant", "steermoe"),
        help="significant (default): experts with q < alpha, within each layer's limits; steermoe: SteerMoE's, the "
        "top rows by |A - B| without a test, a row beyond its layer's limit skipped but counted",
    )
    parser.add_argument(
        "--disable_mode",
        default="reroute",
        choices=("reroute", "steermoe"),
        help="how moe_hf disables: reroute (default; removed from the router, at least k experts must remain) or "
        "steermoe (SteerMoE's edit: the expert's log-probability set to the token's minimum - 0.01; no limit)",
    )
