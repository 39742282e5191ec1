"""MoE-RBench tasks for lm-evaluation-harness: one folder per task family (its data loading, prompts, metrics and
task YAMLs), the family registry (families.py) and the judges.

Kept import-light on purpose (no pathlib, no typing): the start-up hook imports this package in every
Python process of an environment where moe-rbench is installed.
"""

import os

__all__ = ["TASKS_DIR", "task_manager", "with_our_tasks"]


# The folder lm-eval indexes: this package. Each family folder (adversarial_nli/, boss/, ...) holds its task YAMLs
# beside its code, as lm-eval's own task folders do, and groups/ the umbrella groups.
TASKS_DIR: str = os.path.dirname(os.path.realpath(__file__))


def with_our_tasks(include_path) -> list:
    """`include_path` for a lm-eval TaskManager (None, a path or a list of paths), extended by our task
    folder unless it is already there."""
    if include_path is None:
        paths = []
    elif isinstance(include_path, (list, tuple)):
        paths = list(include_path)
    else:
        paths = [include_path]
    if not any(os.path.realpath(path) == TASKS_DIR for path in paths):
        paths.append(TASKS_DIR)
    return paths


def task_manager(include_path=None, **kwargs):
    """A `lm_eval.tasks.TaskManager` (lm-eval is imported here, not with this package) that knows lm-eval's own
    tasks and every `moe_rbench_*` task.

    Keyword arguments go to `TaskManager` (e.g. `metadata={"data_dir": "/data/moe_rbench"}`, or
    `include_defaults=False` to index only our tasks, which is much faster).
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=with_our_tasks(include_path), **kwargs)
