"""`moe-rbench data [--data_dir DIR]`: every dataset, where it is found and how to obtain it."""

from __future__ import annotations

import argparse

NAME = "data"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(NAME, help="list every dataset, where it is found and how to obtain it")
    parser.add_argument("--data_dir", help="data directory (default: $MOE_RBENCH_DATA_DIR)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit status 1 when a dataset is missing from the data directory."""
    from moe_rbench_tasks.data import DATA_DIR_ENV, data_status, resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    print(f"data directory: {root if root else f'none (set {DATA_DIR_ENV} or pass --data_dir to read local files)'}")
    missing = 0
    for row in data_status(root):
        missing += row["status"].startswith("MISSING")
        print(f"\n{row['dataset']}  (tasks: {row['tasks']})")
        for key in ("status", "hub", "obtain", "license"):
            print(f"  {key + ':':9}{row[key]}")
    return 1 if missing else 0
