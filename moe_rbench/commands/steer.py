"""`moe-rbench steer ... -- <lm_eval arguments>`: attribute, then re-evaluate with A's experts forced and B's
disabled: a before/after table."""

from __future__ import annotations

import argparse

from moe_rbench.commands.attribute import add_attribution_options, check_removed_flags

NAME = "steer"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME, help="attribute, then re-evaluate with A's experts forced and B's disabled: a before/after table"
    )
    add_attribution_options(parser, steering=True)
    return parser


def run(args: argparse.Namespace) -> int:
    """`args.lm_eval_args`: what followed `--` on the command line (`moe_rbench.cli.main` splits it off)."""
    from moe_rbench.steer import SteerOptions, markdown, steer
    from moe_rbench.tables import check_output_directory
    from moe_rbench_models.errors import OptionError

    if not args.lm_eval_args:
        raise OptionError(
            "no evaluation after `--`: give lm_eval's arguments there, e.g. -- --model moe_hf --model_args "
            "pretrained=... --tasks ..."
        )
    check_removed_flags(args)
    check_output_directory(args.out)
    options = SteerOptions(
        force=args.force or 0,
        disable=args.disable or 0,
        selection=args.selection,
        disable_mode=args.disable_mode,
        samples=args.samples,
        span=args.span,
        alpha=args.alpha,
        metric=args.metric,
        pair_by=args.pair_by,
    )
    steering = steer(args.routing, args.a, args.b, args.lm_eval_args, args.out, options, args.before)
    print(markdown(steering))
    print(f"tables: {args.out}/steer.md, attribution: {args.out}/attribution/attribution.md")
    return 0
