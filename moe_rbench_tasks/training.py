"""The training sets of MoE-RBench's two fine-tuning protocols (used by `moe-rbench finetune`).

Classification (the robustness study): a training set is read into documents of the task it trains for, so that
the trainer asks the model exactly what the evaluation will ask (the task's own `doc_to_text` and label words):

| `--dataset` | documents of | release file (`<data dir>/...`) | hub |
|---|---|---|---|
| `sst2` | `moe_rbench_sst2` (Style-OOD) | `sst2/train.tsv` | `nyu-mll/glue`, sst2, train |
| `snli` | `moe_rbench_snli` (adversarial NLI) | `snli/hf/train.tsv` | `stanfordnlp/snli`, train |
| `boss_sa`, `boss_nli`, `boss_td` | the suite's ID task | `boss/<ID set>/train.tsv` | none |

Instruction tuning (the safety and hallucination study): Alpaca in the Alpaca prompt the safety tasks ask with,
less the samples MoE-RBench removed as safety-related (matched on instruction, input and output), plus optionally
the first N safety demonstrations of Safety-Tuned LLaMAs (Bianchi et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe_rbench_models.errors import OptionError
from moe_rbench_tasks import adversarial_nli, boss, style_ood
from moe_rbench_tasks.data import (
    SOURCES,
    MalformedDataError,
    load_from_hub,
    local_file,
    read_json,
    read_table,
    require_data_dir,
    resolve_data_dir,
)
from moe_rbench_tasks.families import BOSS_NLI, BOSS_SA, BOSS_TD
from moe_rbench_tasks.safety import ALPACA

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n"
)


@dataclass(frozen=True)
class TrainSet:
    task: str  # the task whose documents it is and whose prompt it trains
    read: Callable[[Path | None], list[dict]]  # data directory (None: the hub) -> documents


def _sst2(root: Path | None) -> list[dict]:
    source = SOURCES["sst2_train"]
    if root is None:
        rows = load_from_hub(source, "nyu-mll/glue", "sst2", split="train")
        return style_ood.to_docs(rows, "base", "nyu-mll/glue sst2 train", fields=("sentence", "label", "idx"))
    path = local_file(source, root)
    return style_ood.to_docs(read_table(path, ("sentence", "label"), delimiter="\t"), "base", str(path))


def _boss(family) -> Callable[[Path | None], list[dict]]:
    id_set = family.members[0].subset

    def read(root: Path | None) -> list[dict]:
        source = SOURCES["boss"]
        return boss.docs(family, id_set, local_file(source, require_data_dir(source, root), f"{id_set}/train.tsv"))

    return read


TRAIN_SETS = {
    "sst2": TrainSet("moe_rbench_sst2", _sst2),
    "snli": TrainSet("moe_rbench_snli", lambda root: adversarial_nli.read_split("train", root)),
    **{
        f"boss_{f.key.removeprefix('boss_')}": TrainSet(f.members[0].task, _boss(f))
        for f in (BOSS_SA, BOSS_NLI, BOSS_TD)
    },
}


def classification_docs(name: str, data_dir: str | Path | None = None) -> tuple[str, list[dict]]:
    """The task a training set trains for, and its documents."""
    if name not in TRAIN_SETS:
        raise OptionError(f"Unknown training set {name!r}; choose one of: {', '.join(TRAIN_SETS)}")
    train_set = TRAIN_SETS[name]
    return train_set.task, train_set.read(resolve_data_dir(data_dir))


def instruction_examples(
    data_dir: str | Path | None = None, keep_safety_samples: bool = False, safety_samples: int = 0
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(prompt, response) pairs of the instruction-tuning protocol, and what was read, removed and added."""
    root = resolve_data_dir(data_dir)
    alpaca = _instructions(SOURCES["alpaca"], root)
    counts = {"alpaca": len(alpaca)}
    if not keep_safety_samples:
        source = SOURCES["alpaca_safety_samples"]
        removed = {_key(row) for row in _instructions(source, require_data_dir(source, root))}
        alpaca = [row for row in alpaca if _key(row) not in removed]
        counts["removed_as_safety_related"] = counts["alpaca"] - len(alpaca)
    if safety_samples:
        source = SOURCES["safety_training"]
        safety = _instructions(source, require_data_dir(source, root))
        if safety_samples > len(safety):
            raise OptionError(f"--safety_samples {safety_samples}: the Safety-Tuned LLaMAs file has {len(safety)}")
        alpaca += safety[:safety_samples]
        counts["safety_added"] = safety_samples
    return [(alpaca_prompt(row["instruction"], row["input"]), row["output"]) for row in alpaca], counts


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: the safety tasks' template, or Alpaca's template with an input when there is one."""
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA.format(instruction=instruction)


def _key(row: dict) -> tuple[str, str, str]:
    return row["instruction"], row["input"], row["output"]


def _instructions(source, root: Path | None) -> list[dict]:
    """Alpaca-format `{instruction, input, output}` rows (`input` optional), from the data directory or the hub."""
    if root is None:
        rows, where = list(load_from_hub(source, "tatsu-lab/alpaca", split="train")), "tatsu-lab/alpaca"
    else:
        path = local_file(source, root)
        rows, where = read_json(path), str(path)
    if not isinstance(rows, list):
        raise MalformedDataError(f"{where}: expected a list of {{instruction, input, output}} objects")
    checked = []
    for i, row in enumerate(rows):
        texts = {key: row.get(key, "" if key == "input" else None) for key in ("instruction", "input", "output")}
        if not all(isinstance(text, str) for text in texts.values()) or not texts["instruction"].strip():
            raise MalformedDataError(f"{where}[{i}]: expected a non-empty instruction, an output and an optional input")
        checked.append(texts)
    return checked
