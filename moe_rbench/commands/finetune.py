"""`moe-rbench finetune MODEL OUT`: MoE-RBench's fine-tuning protocols with its MoE knobs (transformers' Trainer).

Options not given are None, so that a preset's value (or the reference's default, `configs/training.py` of
UNITES-Lab/MoE-RBench) applies.
"""

from __future__ import annotations

import argparse
import sys

from moe_rbench.commands.options import key_value_options, positive_int

NAME = "finetune"
RECIPE_OPTIONS = (
    "protocol",
    "dataset",
    "head",
    "router",
    "router_set",
    "bilevel",
    "bilevel_mode",
    "expert_dropout",
    "aux_loss_coef",
    "top_k",
    "keep_safety_samples",
    "safety_samples",
    "prompt_format",
    "alpaca_holdout",
    "max_length",
    "truncation",
    "anli_begin_round",
)
OPTIMIZATION_OPTIONS = (
    "learning_rate",
    "epochs",
    "batch_size",
    "reference_gpus",
    "weight_decay",
    "optimizer",
    "scheduler",
    "gamma",
    "warmup_fraction",
    "max_grad_norm",
    "data_order",
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from moe_rbench.finetune_presets import PRESETS, UNSUPPORTED
    from moe_rbench_tasks.training import TRAIN_SETS

    tuning = subparsers.add_parser(
        NAME,
        help="fine-tune a checkpoint by MoE-RBench's protocols, with its MoE knobs (transformers' Trainer)",
        description="Defaults without --preset are the reference's configs/training.py: learning rate 1e-4, 3 epochs, "
        "batch 4, weight decay 0 on every parameter, StepLR(gamma 0.85) once per epoch, no gradient clipping, the "
        "reference's batch order, no load-balancing term, right truncation at the protocol's limit.",
    )
    tuning.add_argument("model", help="a Hugging Face model id or local checkpoint (MoE or dense, decoder-only)")
    tuning.add_argument("out", help="directory for the fine-tuned checkpoint: new or empty (see --overwrite)")
    tuning.add_argument(
        "--preset",
        choices=list(PRESETS),
        metavar="NAME",
        help="a reference script's whole recipe (options given as well override it): "
        + ", ".join(PRESETS)
        + "; not supported (encoder-decoder): "
        + ", ".join(UNSUPPORTED),
    )
    tuning.add_argument("--protocol", choices=("classify", "instruct"))
    tuning.add_argument("--dataset", choices=list(TRAIN_SETS), help="classify: the training set")
    tuning.add_argument(
        "--head",
        choices=("sequence_classification", "causal_lm"),
        help="classify: a classification head (default, the reference's) or the label words (causal_lm)",
    )
    _add_moe_knobs(tuning)
    _add_data_options(tuning)
    _add_input_output_options(tuning)
    _add_optimization_options(tuning)
    return tuning


def _add_moe_knobs(tuning: argparse.ArgumentParser) -> None:
    """`moe-rbench finetune`'s options for the routers and experts."""
    tuning.add_argument("--router", choices=("train", "freeze"), help="freeze: routers get no updates (default train)")
    tuning.add_argument(
        "--router_set",
        choices=("discovered", "by_name"),
        help="the routers for --router freeze and --bilevel: those transformers declares (default) or, as the "
        "reference, every parameter whose name contains 'router' or 'gate'",
    )
    tuning.add_argument("--bilevel", type=int, metavar="K", help="bi-level training, toggling the routers every K")
    tuning.add_argument(
        "--bilevel_mode",
        choices=("reference", "alternate"),
        help="reference (default): the routers' requires_grad toggles before micro-batches 0, K, 2K, ... (all but the "
        "routers, then everything); alternate: K optimizer steps without the routers, then K of the routers only",
    )
    tuning.add_argument(
        "--expert_dropout", type=float, metavar="P", help="dropout on each routed expert's interim activations"
    )
    tuning.add_argument(
        "--aux_loss_coef",
        metavar="C",
        type=lambda text: text if text == "checkpoint" else float(text),
        help="weight of the architecture's load-balancing loss, added once (default 0, as the reference); "
        "'checkpoint': its router_aux_loss_coef",
    )
    tuning.add_argument("--top_k", type=int, metavar="K", help="experts per token, in training and in the saved config")


def _add_data_options(tuning: argparse.ArgumentParser) -> None:
    """`moe-rbench finetune`'s options for the training examples."""
    tuning.add_argument(
        "--keep_safety_samples", action="store_true", default=None, help="instruct: keep MoE-RBench's removed samples"
    )
    tuning.add_argument("--safety_samples", type=int, metavar="N", help="instruct: add N safety samples")
    tuning.add_argument(
        "--prompt_format",
        choices=("llama2_chat", "alpaca"),
        help="instruct: the reference's [INST] <<SYS>>-wrapped Alpaca prompt (default) or the plain Alpaca prompt",
    )
    tuning.add_argument("--alpaca_holdout", type=int, metavar="N", help="instruct: samples held out (default 200)")
    tuning.add_argument(
        "--max_length", type=int, help="tokens per example (default: 256 for anli, 512 otherwise, as the reference)"
    )
    tuning.add_argument("--truncation", choices=("right", "left"), help="which end is cut (default right)")
    tuning.add_argument("--anli_begin_round", type=int, choices=(1, 2, 3), help="anli: the first round (default 1)")


def _add_input_output_options(tuning: argparse.ArgumentParser) -> None:
    """`moe-rbench finetune`'s options for what is read and where the checkpoint goes."""
    tuning.add_argument("--limit", type=int, help="train on the first N examples of each run only")
    tuning.add_argument(
        "--data_dir", help="data directory of release files (default: $MOE_RBENCH_DATA_DIR, or the hub)"
    )
    tuning.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT, and every file in it, once the new checkpoint is completely written (never the input "
        "checkpoint)",
    )


def _add_optimization_options(tuning: argparse.ArgumentParser) -> None:
    """`moe-rbench finetune`'s options for the weight updates (moe_rbench.finetune_trainer.Optimization)."""
    tuning.add_argument("--epochs", type=float, help="epochs (default 3)")
    tuning.add_argument("--learning_rate", type=float, help="default 1e-4")
    tuning.add_argument("--batch_size", type=positive_int, help="per device (default 4)")
    tuning.add_argument(
        "--reference_gpus", type=positive_int, help="the reference run's GPUs: global batch = batch x GPUs (default 1)"
    )
    tuning.add_argument("--weight_decay", type=float, help="AdamW weight decay (default 0)")
    tuning.add_argument(
        "--optimizer",
        choices=("reference", "trainer"),
        help="reference (default): AdamW decaying every parameter, each micro-batch's mean loss; trainer: Trainer's",
    )
    tuning.add_argument(
        "--scheduler",
        choices=("step", "cosine", "linear", "trainer"),
        help="step (default): x gamma each epoch; cosine (3 cycles) or linear with warm-up; trainer: lr_scheduler_type",
    )
    tuning.add_argument("--gamma", type=float, help="step scheduler: factor per epoch (default 0.85)")
    tuning.add_argument(
        "--warmup_fraction", type=float, help="cosine, linear: warm-up share of the steps (default 0.1)"
    )
    tuning.add_argument("--max_grad_norm", type=float, help="gradient clipping (default 0: none, as the reference)")
    tuning.add_argument(
        "--data_order",
        choices=("reference", "trainer"),
        help="reference (default): the batches of the reference's DistributedSampler (seed 0, the same every epoch); "
        "trainer: Trainer's shuffling with --seed",
    )
    tuning.add_argument(
        "--max_steps",
        type=int,
        help="stop after this many optimizer steps (step/cosine/linear schedules keep their full length)",
    )
    tuning.add_argument("--seed", type=int, default=42)
    tuning.add_argument(
        "--training_args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other transformers TrainingArguments, e.g. bf16=true logging_steps=1",
    )


def run(args: argparse.Namespace) -> int:
    from moe_rbench.finetune import finetune
    from moe_rbench.finetune_presets import PRESETS, resolve

    options = vars(args)
    recipe, optimization = resolve(
        args.preset,
        {name: options[name] for name in RECIPE_OPTIONS},
        {name: options[name] for name in OPTIMIZATION_OPTIONS},
    )
    training = {
        "seed": args.seed,
        **({"max_steps": args.max_steps} if args.max_steps is not None else {}),
        **key_value_options(args.training_args, "--training_args"),
    }
    for note in PRESETS[args.preset].notes if args.preset else ():
        print(f"preset {args.preset}: {note}", file=sys.stderr)
    result = finetune(
        args.model, args.out, recipe, args.data_dir, args.limit, optimization, args.preset, args.overwrite, **training
    )
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    print(f"recipe: {result.label}; trained with {result.recipe}; {optimization}; data: {result.data}")
    if losses:
        print(f"training loss: {losses[0]:.4f} (first logged) -> {losses[-1]:.4f} (last logged)")
    print(result.path)
    return 0
