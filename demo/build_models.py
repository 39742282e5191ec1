"""Build the demo's two checkpoints: a small MoE and a dense model of the same active size, from random weights,
fine-tuned by `moe-rbench finetune` on SST-2 train with a tokenizer trained on the same data.

    MOE_RBENCH_DATA_DIR=../shared/data .venv/bin/python demo/build_models.py [--out demo/models]

Needs `<data dir>/sst2/train.tsv` (GLUE SST-2 train, 67,349 sentences). Deterministic on CPU (seed 0): the
checkpoints committed under demo/models are its output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from moe_rbench_tasks.families import STYLE_OOD
from moe_rbench_tasks.training import classification_docs

BIN = Path(sys.executable).parent
VOCAB_SIZE = 8192
SHARED = {  # both models: 2 layers, hidden 64, 4 heads; the same embeddings and attention
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
MODELS = {  # active parameters per token match: 2 of 4 experts of 128 vs one MLP of 256
    "moe": ("mixtral", {**SHARED, "intermediate_size": 128, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "dense": ("llama", {**SHARED, "intermediate_size": 256}),
}
# moe-rbench's own earlier recipe (Trainer defaults, left truncation), with which the committed checkpoints were built
TRAINING = [
    "--preset",
    "trainer_defaults",
    "--epochs",
    "1",
    "--learning_rate",
    "1e-3",
    "--batch_size",
    "32",
    "--seed",
    "0",
]
TRAINING += ["--max_length", "96"]


def train_tokenizer(data_dir: str, out: Path) -> Path:
    """A byte-level BPE tokenizer trained on SST-2 train, with the prompt's and the label words' text."""
    _, docs = classification_docs("sst2", data_dir)
    prompt = "Given the sentences: \n what is the sentiment of this sentence ? " + " ".join(STYLE_OOD.choices)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([doc["sentence"] for doc in docs] + [prompt] * 1000, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "models"))
    parser.add_argument("--data_dir", default=os.environ.get("MOE_RBENCH_DATA_DIR"))
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.out) / "_work"
    tokenizer = train_tokenizer(args.data_dir, work / "tokenizer")
    for name, (architecture, config) in MODELS.items():
        initial = work / f"{name}-random"
        settings = [f"--set={key}={value}" for key, value in config.items()]
        subprocess.run(
            [BIN / "moe-rbench", "tiny-model", architecture, initial, "--tokenizer", tokenizer, *settings], check=True
        )
        command = [BIN / "moe-rbench", "finetune", initial, out / name, "--protocol", "classify", "--dataset", "sst2"]
        # --overwrite: the committed checkpoints are replaced, each once its new one is written
        subprocess.run(
            [*command, "--head", "causal_lm", "--data_dir", args.data_dir, "--overwrite", *TRAINING], check=True
        )
        (out / name / "training_args.bin").unlink()  # a pickle of the Trainer's arguments: not needed to load
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
