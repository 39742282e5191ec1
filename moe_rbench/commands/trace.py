"""`moe-rbench trace`: the routing shift between an ID task and OOD tasks, per MoE layer."""

from __future__ import annotations

import argparse
import sys

NAME = "trace"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(NAME, help="routing shift between an ID task and OOD tasks, per MoE layer")
    parser.add_argument("--routing", required=True, help="a routing_out directory of moe_hf")
    parser.add_argument("--id", required=True, dest="id_task", help="in-distribution task, e.g. moe_rbench_sst2")
    parser.add_argument("--ood", required=True, nargs="+", help="OOD tasks or patterns, e.g. 'moe_rbench_style_*'")
    parser.add_argument("--out", required=True, help="directory for trace.md, trace.csv, trace.json, trace.png")
    return parser


def run(args: argparse.Namespace) -> int:
    from moe_rbench.tables import check_output_directory
    from moe_rbench.trace import pairing_notes, trace_routing, write_trace

    check_output_directory(args.out)
    rows = trace_routing(args.routing, args.id_task, args.ood)
    for note in pairing_notes(rows, args.id_task):
        print(f"note: {note}", file=sys.stderr)
    for path in write_trace(rows, args.out, args.id_task):
        print(path)
    return 0
