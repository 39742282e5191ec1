"""`moe-rbench`: the command line of moe-rbench.

moe-rbench run <lm_eval arguments>   lm-eval with `moe_hf` and the moe_rbench tasks registered explicitly
moe-rbench data [--data_dir DIR]     every dataset: found where, or how to obtain it
moe-rbench tiny-model ARCH DIR [--set KEY=VALUE ...]
                                     a tiny random-weight checkpoint of a real architecture (offline)
moe-rbench trace --routing DIR --id TASK --ood TASK [TASK ...] --out OUT
                                     routing shift between an ID task and OOD tasks (table and heatmap)
moe-rbench attribute --routing DIR --a SET --b SET [--samples PATH] [--span S] [--pair_by P] --out OUT
                                     the experts more (or less) active in set A than in B: ranked table, heatmap,
                                     model arguments (SET: task patterns, judge:FIELD=VALUE, correct, wrong, choice:N)
moe-rbench steer --routing DIR --a SET --b SET --force N --disable M --out OUT -- <lm_eval arguments>
                                     attribute, re-evaluate with A's experts forced and B's disabled, before/after
moe-rbench judge --judge JUDGE --samples PATH [--out DIR]
                                     judge the safety tasks' generations (resumable), with a summary
moe-rbench judge --judge JUDGE --validate LABELS (.csv, .json, .jsonl)
                                     a judge against human labels: balanced accuracy, precision, recall
moe-rbench judge --agreement PATH    Cohen's kappa of the judges that judged the same samples
moe-rbench finetune MODEL OUT [--preset SCRIPT] --protocol classify --dataset sst2|anli|snli_hard|boss_* | instruct
                  [--router freeze] [--bilevel K] [--expert_dropout P] [--aux_loss_coef C] [--top_k K]
                                     MoE-RBench's fine-tuning protocols with its MoE knobs (transformers' Trainer)
moe-rbench report RUN [RUN ...] [--pair MOE=DENSE ...] --out DIR
                                     MoE-vs-dense tables, figures and report.md from lm-eval outputs
moe-rbench compare --baseline RUN --candidate RUN [--max_drop 0.01] [--paired] [--allow_missing]
                                     CI gate: exits 0 on a pass, 1 when a reliability metric got worse, was lost
                                     or is invalid, 2 on a usage error, 3 when the runs are not comparable
"""

from __future__ import annotations

import argparse
import sys

from moe_rbench.commands import COMMANDS, run, steer
from moe_rbench_models.errors import MoERBenchError

USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [run.NAME]:  # everything after `run` belongs to lm-eval, flags included
        return _run_command(run.NAME, run.run, argv[1:])
    lm_eval_args: list[str] = []
    if argv[:1] == [steer.NAME] and "--" in argv:  # what follows `--` belongs to lm-eval
        cut = argv.index("--")
        argv, lm_eval_args = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.lm_eval_args = lm_eval_args
    commands = {module.NAME: module for module in COMMANDS}
    return _run_command(args.command, commands[args.command].run, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-rbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _run_command(name: str, run_command, args) -> int:
    try:
        return run_command(args)
    except MoERBenchError as error:  # our own errors name the problem and the fix: one line, no traceback
        print(f"moe-rbench {name}: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
