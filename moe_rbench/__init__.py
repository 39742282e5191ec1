"""moe-rbench's tools around an evaluation: the `moe-rbench` command line, the start-up hook that registers the
model and tasks with lm-eval, judging, runs, reports, the CI gate and router tracing on saved records.

Imports point one way: `moe_rbench` -> `moe_rbench_tasks` (what the task YAMLs call) -> `moe_rbench_models` (the
lm-eval model). Kept empty: the start-up hook imports this package in every Python process.
"""
