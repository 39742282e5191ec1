"""`moe-rbench`: the command line of moe-rbench.

  moe-rbench run <lm_eval arguments>   lm-eval with `moe_hf` and the moe_rbench tasks registered explicitly
  moe-rbench data [--data_dir DIR]     every dataset: found where, or how to obtain it
  moe-rbench tiny-model ARCH DIR       a tiny random-weight checkpoint of a real architecture (offline)
"""

from __future__ import annotations

import argparse
import sys


def run_lm_eval(lm_eval_args: list[str]) -> None:
    """Run the stock lm-eval command line with our hook installed, whether or not the start-up file ran
    (e.g. under `python -S`, or with MOE_RBENCH_STARTUP_HOOK=0)."""
    from moe_rbench_tasks import lm_eval_hook

    lm_eval_hook.install(force=True)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *lm_eval_args]
    cli_evaluate()


def show_data(data_dir: str | None) -> int:
    from moe_rbench_tasks.data import DATA_DIR_ENV, DataError, data_status, resolve_data_dir

    try:
        root = resolve_data_dir(data_dir)
    except DataError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"data directory: {root if root else f'none (set {DATA_DIR_ENV} or pass --data_dir to read local files)'}")
    missing = 0
    for row in data_status(root):
        missing += row["status"].startswith("MISSING")
        print(f"\n{row['dataset']}  (tasks: {row['tasks']})")
        for key in ("status", "hub", "obtain", "license"):
            print(f"  {key + ':':9}{row[key]}")
    return 1 if missing else 0


def build_tiny(architecture: str, out_dir: str) -> int:
    from moe_rbench_models.tiny import build_tiny_model

    print(build_tiny_model(architecture, out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # everything after `run` belongs to lm-eval, flags included
        run_lm_eval(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="moe-rbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run lm-eval (`lm_eval` arguments follow) with moe_hf and our tasks registered")
    data = commands.add_parser("data", help="list every dataset, where it is found and how to obtain it")
    data.add_argument("--data_dir", help="data directory (default: $MOE_RBENCH_DATA_DIR)")
    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight checkpoint (no download)")
    tiny.add_argument("architecture", help="mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, gpt_oss, "
                                           "switch_transformers, llama or t5")  # fmt: skip
    tiny.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.command == "data":
        return show_data(args.data_dir)
    return build_tiny(args.architecture, args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
