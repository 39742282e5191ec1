"""The `moe-rbench` commands, one module each (as lm-eval's own CLI is laid out).

Each module has `NAME` (the command word), `add_parser(subparsers)`, which builds the command's parser and help,
and `run(args) -> int`, which calls the tool module that does the work and returns the exit status. A command
that cannot do what it was asked raises a `MoERBenchError`; `moe_rbench.cli.main` prints it as one line.
"""

from moe_rbench.commands import (
    attribute,
    compare,
    data,
    finetune,
    judge,
    report,
    run,
    steer,
    tiny_model,
    trace,
)

# in the order `moe-rbench --help` lists them
COMMANDS = (run, data, tiny_model, trace, attribute, steer, judge, finetune, report, compare)
