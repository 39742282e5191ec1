"""The training sets of MoE-RBench's fine-tuning protocols (used by `moe-rbench finetune`).

Classification (the robustness study): a training set is read into documents of the task it trains for, so that
the trainer asks the model exactly what the evaluation will ask (the task's own `doc_to_text` and label words).
The reference is the authors' code, UNITES-Lab/MoE-RBench @b110cc5, `robustness-evaluation/`:

- `sst2`: documents of `moe_rbench_sst2` (Style-OOD); reference `ft_datasets/style_dataset/load_ood_datasets.py`;
  release file `sst2/train.tsv`, hub `nyu-mll/glue` sst2 train.
- `anli`: documents of `moe_rbench_anli_r{1,2,3}`; reference `finetuning_anli.py` l.311-487 and
  `ft_datasets/adv_dataset/load_adv_datasets.py` l.29-97; release files `anli/R{r}/train.jsonl` and
  `snli/hf/train.tsv`, hub `facebook/anli` and `stanfordnlp/snli`.
- `snli_hard`: documents of `moe_rbench_snli_hard`; reference `scripts/snli-hard/*.sh` (`finetuning_moe.py`, dataset
  `adv_snli_dataset_seq2class`) and `ft_datasets/snli_dataset/load_ood_datasets.py` l.30-94; release files
  `esnli/esnli_train_{1,2}.csv`, hub `esnli/esnli`.
- `boss_sa`, `boss_nli`, `boss_td`: documents of the suite's ID task; reference
  `ft_datasets/{sa,nli,td}_dataset/load_ood_datasets.py`; release file `boss/<ID set>/train.tsv` (no hub copy).
- `snli`: documents of `moe_rbench_snli`, SNLI train alone (beyond the reference); `snli/hf/train.tsv`,
  `stanfordnlp/snli`.

- `anli` trains in three sequential rounds (`ANLI_ROUNDS`): round r is ANLI `train_r{r}` plus a slice of SNLI train,
  shuffled together (`anli_round_docs`).
- The reference tokenizes with `truncation=True` (right) at 256 tokens for ANLI (`load_adv_datasets.py` l.88) and at
  the tokenizer's `model_max_length=512` elsewhere (`finetuning_moe.py` l.224, `load_ood_datasets.py` l.83): each
  set's `max_length`.

Instruction tuning (the safety and hallucination study, `safety-evaluation/`): Alpaca less the samples MoE-RBench
removed as safety-related (matched on instruction, input and output), the first `ALPACA_HOLDOUT` of them held out
(`alpaca_dataset.py` l.44-47: `self.ann[200:]` trains), optionally plus the first N safety demonstrations of
Safety-Tuned LLaMAs (Bianchi et al. 2024). Prompt formats: `llama2_chat`, the reference's (`alpaca_dataset.py`
l.16-32 and l.61-65: the Alpaca prompt inside Llama-2's `[INST] <<SYS>> ... <</SYS>> ... [/INST]`), and `alpaca`,
the plain Alpaca prompt the safety tasks ask with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe_rbench_models.errors import OptionError
from moe_rbench_tasks.adversarial_nli.loader import LABELS, nli_document
from moe_rbench_tasks.boss import loader as boss_loader
from moe_rbench_tasks.data import (
    MalformedDataError,
    label_index,
    load_from_hub,
    local_file,
    read_json,
    read_jsonl,
    read_table,
    require_data_dir,
    resolve_data_dir,
)
from moe_rbench_tasks.families import BOSS_NLI, BOSS_SA, BOSS_TD, SOURCES
from moe_rbench_tasks.safety.loader import ALPACA
from moe_rbench_tasks.style_ood import loader as style_ood_loader

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n"
)
# the reference's Alpaca prompt (safety-evaluation/ft_datasets/alpaca_dataset/alpaca_dataset.py l.16-32, l.61-64)
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_HOLDOUT = 200  # alpaca_dataset.py l.44-47: the first 200 rows validate, `self.ann[200:]` trains
PROMPT_FORMATS = ("llama2_chat", "alpaca")
ANLI_ROUNDS = (1, 2, 3)
ANLI_SEED = 42  # load_adv_datasets.py l.52 and l.71: `.shuffle(42)`


@dataclass(frozen=True)
class TrainSet:
    task: str  # the task whose documents it is and whose prompt it trains; `{round}`: the ANLI round
    read: Callable[..., list[dict]]  # (data directory, None for the hub; ANLI: round) -> documents
    max_length: int  # the reference's token limit for this protocol
    rounds: tuple[int, ...] = ()  # sequential training runs, one per round (ANLI); empty: one run

    def task_of(self, round_number: int | None = None) -> str:
        return self.task.format(round=round_number)


# -- classification sets ------------------------------------------------------------------------------------


def _sst2(root: Path | None) -> list[dict]:
    source = SOURCES["sst2_train"]
    if root is None:
        rows = load_from_hub(source, "nyu-mll/glue", "sst2", split="train")
        return style_ood_loader.to_docs(rows, "base", "nyu-mll/glue sst2 train", fields=("sentence", "label", "idx"))
    path = local_file(source, root)
    return style_ood_loader.to_docs(read_table(path, ("sentence", "label"), delimiter="\t"), "base", str(path))


def _boss(family) -> Callable[[Path | None], list[dict]]:
    id_set = family.members[0].subset

    def read(root: Path | None) -> list[dict]:
        source = SOURCES["boss"]
        return boss_loader.docs(
            family, id_set, local_file(source, require_data_dir(source, root), f"{id_set}/train.tsv")
        )

    return read


def nli_doc(premise, hypothesis, label, where: str, uid: str | None = None) -> dict:
    """A training document of the adversarial NLI tasks (label 0 entailment, 1 neutral, 2 contradiction). Texts may be
    empty: the reference keeps every pair of its training sets."""
    for name, text in (("premise", premise), ("hypothesis", hypothesis)):
        if not isinstance(text, str):
            raise MalformedDataError(f"{where}: {name} must be a string, got {text!r}")
    return nli_document(premise, hypothesis, label, where, uid)


def snli_train_rows(root: Path | None) -> list[tuple[str, str, int]]:
    """SNLI train as (premise, hypothesis, label) in the hub's order, label -1 (no gold label) rows included."""
    source = SOURCES["snli_train"]
    if root is None:
        rows = load_from_hub(source, "stanfordnlp/snli", split="train")
        return list(zip(rows["premise"], rows["hypothesis"], rows["label"], strict=True))
    path = local_file(source, root)
    triples = []
    for i, row in enumerate(read_table(path, ("premise", "hypothesis", "label"), delimiter="\t")):
        label = row["label"].strip()
        triples.append(
            (
                row["premise"],
                row["hypothesis"],
                -1 if label == "-1" else label_index(label, LABELS, f"{path}, row {i + 1}"),
            )
        )
    return triples


def _snli(root: Path | None) -> list[dict]:
    return [
        nli_doc(premise, hypothesis, label, f"SNLI train[{i}]")
        for i, (premise, hypothesis, label) in enumerate(snli_train_rows(root))
        if label != -1
    ]


def anli_train_docs(root: Path | None, round_number: int) -> list[dict]:
    """ANLI `train_r{round}` in file (hub) order."""
    source = SOURCES["anli_train"]
    if root is None:
        rows = load_from_hub(source, "facebook/anli", split=f"train_r{round_number}")
        return [
            nli_doc(
                row["premise"], row["hypothesis"], row["label"], f"facebook/anli train_r{round_number}[{i}]", row["uid"]
            )
            for i, row in enumerate(rows)
        ]
    path = local_file(source, root, f"R{round_number}/train.jsonl")
    return [
        nli_doc(row.get("context"), row.get("hypothesis"), row.get("label"), f"{path}[{i}]", row.get("uid"))
        for i, row in enumerate(read_jsonl(path))
    ]


def snli_slice(rows: list, round_number: int) -> list:
    """The round's slice of SNLI train (`load_adv_datasets.py` l.52-60): the whole split shuffled with seed 42 by
    `datasets`, then its label -1 rows dropped, then [:n//9] (round 1), [n//3 : n//3 + n//6] (round 2), [2n//3:]
    (round 3)."""
    kept = [rows[i] for i in _datasets_shuffle(len(rows)) if rows[i][2] != -1]
    n = len(kept)
    if round_number == 1:
        return kept[: n // 9]
    if round_number == 2:
        return kept[n // 3 : n // 3 + 1 * n // 6]
    return kept[2 * n // 3 :]


def _datasets_shuffle(length: int) -> list[int]:
    """The order `datasets.Dataset.shuffle(42)` gives a dataset of `length` rows."""
    import datasets

    return list(datasets.Dataset.from_dict({"i": list(range(length))}).shuffle(seed=ANLI_SEED)["i"])


def anli_round_docs(root: Path | None, round_number: int) -> list[dict]:
    """Round r of the adversarial NLI protocol (`load_adv_datasets.py` l.41 and l.50-71): ANLI `train_r{r}` followed by
    the round's SNLI slice, the concatenation shuffled with seed 42 by `datasets`."""
    if round_number not in ANLI_ROUNDS:
        raise OptionError(f"ANLI has rounds {', '.join(map(str, ANLI_ROUNDS))}; got round {round_number}")
    rows = snli_train_rows(root)
    if not any(label == -1 for _, _, label in rows):
        where = local_file(SOURCES["snli_train"], root) if root else "stanfordnlp/snli train"
        raise MalformedDataError(
            f"{where} has no label -1 rows: the "
            "ANLI protocol shuffles the whole SNLI train split before dropping them (load_adv_datasets.py l.52-53), so "
            "its slices can only be taken from the complete split; export it again keeping its 785 label -1 rows"
        )
    snli = [
        nli_doc(premise, hypothesis, label, f"SNLI train (round {round_number} slice)[{i}]")
        for i, (premise, hypothesis, label) in enumerate(snli_slice(rows, round_number))
    ]
    docs = anli_train_docs(root, round_number) + snli
    return [docs[i] for i in _datasets_shuffle(len(docs))]


def _esnli(root: Path | None) -> list[dict]:
    """e-SNLI train (`snli_dataset/load_ood_datasets.py` l.35-37: `load_dataset('esnli', split='train')`), in the hub's
    order: `esnli_train_1.csv` then `esnli_train_2.csv`."""
    source = SOURCES["esnli_train"]
    if root is None:
        rows = load_from_hub(source, "esnli/esnli", split="train")
        return [
            nli_doc(row["premise"], row["hypothesis"], row["label"], f"esnli/esnli train[{i}]")
            for i, row in enumerate(rows)
        ]
    docs = []
    for name in source.files:
        path = local_file(source, root, name)
        for i, row in enumerate(read_table(path, ("gold_label", "Sentence1", "Sentence2"))):
            docs.append(nli_doc(row["Sentence1"], row["Sentence2"], row["gold_label"], f"{path}, row {i + 1}"))
    return docs


TRAIN_SETS = {
    "sst2": TrainSet("moe_rbench_sst2", _sst2, 512),
    "anli": TrainSet("moe_rbench_anli_r{round}", anli_round_docs, 256, rounds=ANLI_ROUNDS),
    "snli_hard": TrainSet("moe_rbench_snli_hard", _esnli, 512),
    "snli": TrainSet("moe_rbench_snli", _snli, 512),
    **{
        f"boss_{f.key.removeprefix('boss_')}": TrainSet(f.members[0].task, _boss(f), 512)
        for f in (BOSS_SA, BOSS_NLI, BOSS_TD)
    },
}


def classification_docs(
    name: str, data_dir: str | Path | None = None, round_number: int | None = None
) -> tuple[str, list[dict]]:
    """The task a training set (of an ANLI round) trains for, and its documents."""
    if name not in TRAIN_SETS:
        raise OptionError(f"Unknown training set {name!r}; choose one of: {', '.join(TRAIN_SETS)}")
    train_set = TRAIN_SETS[name]
    root = resolve_data_dir(data_dir)
    if train_set.rounds:
        if round_number not in train_set.rounds:
            raise OptionError(f"--dataset {name} trains in rounds {train_set.rounds}; got round {round_number}")
        return train_set.task_of(round_number), train_set.read(root, round_number)
    return train_set.task_of(), train_set.read(root)


# -- instruction tuning -------------------------------------------------------------------------------------


def instruction_examples(
    data_dir: str | Path | None = None,
    keep_safety_samples: bool = False,
    safety_samples: int = 0,
    prompt_format: str = "llama2_chat",
    holdout: int = ALPACA_HOLDOUT,
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(prompt, response) pairs of the instruction-tuning protocol, and what was read, removed, held out and added."""
    if prompt_format not in PROMPT_FORMATS:
        raise OptionError(f"--prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    root = resolve_data_dir(data_dir)
    alpaca = _instructions(SOURCES["alpaca"], root)
    counts = {"alpaca": len(alpaca)}
    if not keep_safety_samples:
        source = SOURCES["alpaca_safety_samples"]
        removed = {_key(row) for row in _instructions(source, require_data_dir(source, root))}
        alpaca = [row for row in alpaca if _key(row) not in removed]
        counts["removed_as_safety_related"] = counts["alpaca"] - len(alpaca)
    if holdout:
        if holdout >= len(alpaca):
            raise OptionError(f"--alpaca_holdout {holdout} holds out all {len(alpaca)} Alpaca samples; lower it")
        alpaca, counts["held_out"] = alpaca[holdout:], holdout
    if safety_samples:
        source = SOURCES["safety_training"]
        safety = _instructions(source, require_data_dir(source, root))
        if safety_samples > len(safety):
            raise OptionError(f"--safety_samples {safety_samples}: the Safety-Tuned LLaMAs file has {len(safety)}")
        alpaca += safety[:safety_samples]
        counts["safety_added"] = safety_samples
    prompt = llama2_chat_prompt if prompt_format == "llama2_chat" else alpaca_prompt
    return [(prompt(row["instruction"], row["input"]), row["output"]) for row in alpaca], counts


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: the safety tasks' template, or Alpaca's template with an input when there is one."""
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA.format(instruction=instruction)


def llama2_chat_prompt(instruction: str, input_text: str = "") -> str:
    """The reference's prompt (`alpaca_dataset.py` l.21-32 and l.61-64): `[INST] <<SYS>>\\n{header}\\n<</SYS>>
    \\n\\n### Instruction:\\n...\\n\\n### Response:\\n [/INST]`, with `### Input:` when the sample has one."""
    header = HEADER_WITH_INPUT if input_text else HEADER
    body = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        body += f"### Input:\n{input_text}\n\n"
    return B_INST + " " + B_SYS + header + E_SYS + body + "### Response:\n" + " " + E_INST


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
