"""`moe-rbench run <lm_eval arguments>`: the stock lm-eval command line with `moe_hf` and the tasks registered."""

from __future__ import annotations

import argparse
import sys

NAME = "run"


def add_parser(subparsers) -> argparse.ArgumentParser:
    # listed for --help only: `moe_rbench.cli.main` hands everything after `run` to lm-eval, flags included
    return subparsers.add_parser(
        NAME, help="run lm-eval (`lm_eval` arguments follow) with moe_hf and our tasks registered"
    )


def run(lm_eval_args: list[str]) -> int:
    """Run the stock lm-eval command line with our hook installed, whether or not the start-up file ran
    (e.g. under `python -S`, or with MOE_RBENCH_STARTUP_HOOK=0)."""
    from moe_rbench import hook

    hook.install(force=True)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *lm_eval_args]
    cli_evaluate()
    return 0
