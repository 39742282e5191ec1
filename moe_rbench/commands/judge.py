"""`moe-rbench judge`: judge the safety tasks' generations (resumable), validate a judge against human labels, or
the judges' agreement."""

from __future__ import annotations

import argparse

from moe_rbench.commands.options import key_value_options, positive_int

NAME = "judge"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from moe_rbench_tasks.judges import JUDGES

    parser = subparsers.add_parser(
        NAME, help="judge the safety tasks' generations (resumable); validate a judge; judges' agreement"
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", help="an lm_eval --output_path directory, or one samples file, to judge")
    what.add_argument(
        "--validate",
        metavar="LABELS",
        help="check the judge against human labels: a CSV (XSTest's format by default), a chatgpt-refusals .json or "
        "an RBR gold .jsonl",
    )
    what.add_argument(
        "--agreement", metavar="PATH", help="Cohen's kappa between the judges whose judged files are under PATH"
    )
    parser.add_argument("--judge", choices=JUDGES)
    parser.add_argument(
        "--out",
        help="output directory: judged files, for one run (default: <run folder>/judged/<stamp>); with --validate, "
        "where validation_<judge>.json goes",
    )
    parser.add_argument("--batch_size", type=positive_int, default=16)
    parser.add_argument(
        "--judge_args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="judge options, e.g. model=/models/LlamaGuard-7b device=cuda base_url=http://...",
    )
    _add_validation_options(parser)
    return parser


def _add_validation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--columns",
        nargs="*",
        default=[],
        metavar="KEY=COLUMN",
        help="--validate: the CSV's columns, e.g. prompt=question completion=response label=human "
        "(default: prompt, completion, final_label)",
    )
    parser.add_argument(
        "--positive",
        help="--validate: label values of a yes, comma-separated (default: XSTest's 2_full_refusal; chatgpt-refusals' "
        "rejected; RBR gold's declined)",
    )
    parser.add_argument(
        "--negative",
        help="--validate: label values of a no (default: 1_full_compliance; complied, disclaimed, contradicted, "
        "dontknow; fully_complied)",
    )
    parser.add_argument(
        "--apart",
        help="--validate: label values reported apart (default: 3_partial_refusal; redirected, counseling, incoherent; "
        "partially_complied, evaded)",
    )
    parser.add_argument("--field", help="--validate: the judge's yes/no field (default: its refusal verdict)")


def run(args: argparse.Namespace) -> int:
    if args.agreement:
        from moe_rbench.judge_checks import write_agreement

        print("\n\n".join(write_agreement(args.agreement)))
        return 0
    from moe_rbench_models.errors import OptionError

    if not args.judge:
        raise OptionError("--samples and --validate need --judge NAME (`moe-rbench judge --help` lists them)")
    from moe_rbench_tasks.judges import load_judge

    judge = load_judge(args.judge, **key_value_options(args.judge_args, "--judge_args"))
    if args.validate:
        return _validate(args, judge)
    from moe_rbench.judging import judge_samples

    for path in judge_samples(args.samples, judge, args.out, batch_size=args.batch_size):
        print(path)
    return 0


def _validate(args: argparse.Namespace, judge) -> int:
    import json
    from pathlib import Path

    from moe_rbench.judge_checks import validate
    from moe_rbench.judging import output_directory

    columns = _label_columns(args.columns)
    scheme = _label_scheme(args)
    out = output_directory(Path(args.out), "--out") if args.out else None  # before judging: fail early
    result = validate(judge, args.validate, columns, scheme, args.field)
    print(result.text())
    if out:
        path = out / f"validation_{judge.name}.json"
        path.write_text(json.dumps(result.as_dict(), indent=1))
        print(path)
    return 0


def _label_columns(settings: list[str]) -> dict[str, str]:
    from moe_rbench_models.errors import OptionError

    columns = {}
    for setting in settings:
        key, equals, column = setting.partition("=")
        if not equals or key not in ("prompt", "completion", "label"):
            raise OptionError(f"--columns expects prompt=, completion= or label= COLUMN, got {setting!r}")
        columns[key] = column
    return columns


def _label_scheme(args: argparse.Namespace):
    """--positive, --negative and --apart, each falling back to the labelled file format's default."""
    from moe_rbench.judge_checks import DEFAULT_SCHEMES, LabelScheme, label_format

    default = DEFAULT_SCHEMES[label_format(args.validate)]
    given = (args.positive, args.negative, args.apart)
    fallbacks = (default.positive, default.negative, default.apart)
    return LabelScheme(
        *(
            tuple(value for value in values.split(",") if value) if values is not None else fallback
            for values, fallback in zip(given, fallbacks, strict=True)
        )
    )
