"""The judge contract: what every judge is, what `moe-rbench judge` (moe_rbench/judging.py) and its checks rely on.

A judge is a class registered in `JUDGES` (moe_rbench_tasks/judges/__init__.py) as `"name": "module:Class"` under
`moe_rbench_tasks.judges`, imported only when asked for. It has:

- `name` (class attribute): its `JUDGES` key, the `--judge` value; its output files are `judged_<name>.jsonl` and
  `summary_<name>.{json,md}`.
- `fields` (class attribute): the keys of every verdict it returns, in the order its judged rows show them. A field
  listed in `MEASURES` is summarised (its mean over each prompt set, under the measure's title) and, when it answers
  a yes/no question (`Measure.asks`), compared with the other judges' answers to it (`--agreement`); other fields
  (`category`, `refusal_reasons`, ...) are kept in the judged rows only. Every field in `MEASURES` must hold what its
  measure says: JSON true or false for a yes/no field, a finite number otherwise, or None for no verdict.
- options: the keyword parameters of its constructor, each with a default (`--judge_args model=... device=cuda`);
  `load_judge` refuses an option the constructor does not name. The constructor loads what the judge needs (a model,
  a client) and raises `JudgeError` naming what is missing and how to get it.
- `score(pairs)`: `pairs` is a list of `(instruction, response)` strings (a response may be empty); it returns a
  list of one dict per pair, in the order of `pairs`, each with the keys of `fields`. It is called on batches of the
  samples not yet judged; the same pair must get the same verdict (greedy decoding, no sampling), because an
  interrupted run resumes where it stopped and keeps the verdicts written before. It raises `JudgeError` (a
  `MoERBenchError`) for anything it cannot judge, with the problem and the fix; `moe-rbench judge` writes nothing of
  a batch whose `score` raised or answered other than one dict per pair, and the judged file keeps the batches
  written before.

Judges that run a transformers model locally subclass `TransformersJudge` (judges/transformers_judge.py), which
batches `score` and holds the loading and decoding they share. docs/guides/add-a-judge.md lists the files to touch.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class Judge(Protocol):
    """A safety judge, as the module docstring states the contract."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]

    def score(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """One verdict per `(instruction, response)` pair, in order, each with the keys of `fields`."""
        ...


def contract_problems(cls: type, registered_as: str) -> list[str]:
    """What keeps the judge class `cls`, registered as `registered_as`, from meeting the contract (none: it does)."""
    problems = []
    if getattr(cls, "name", None) != registered_as:
        problems.append(f"name is {getattr(cls, 'name', None)!r}, not its JUDGES key {registered_as!r}")
    fields = getattr(cls, "fields", None)
    if not isinstance(fields, tuple) or not fields or not all(isinstance(field, str) for field in fields):
        problems.append(f"fields must be a non-empty tuple of strings, got {fields!r}")
    elif len(set(fields)) != len(fields):
        problems.append(f"fields name a key twice: {fields!r}")
    score = getattr(cls, "score", None)
    if not callable(score) or list(inspect.signature(score).parameters) != ["self", "pairs"]:
        problems.append("score must be a method taking the list of (instruction, response) pairs: score(self, pairs)")
    for parameter in list(inspect.signature(cls).parameters.values()):
        if parameter.default is inspect.Parameter.empty or parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
            problems.append(
                f"option {parameter.name} needs a default and a keyword (--judge_args {parameter.name}=...)"
            )
    return problems
