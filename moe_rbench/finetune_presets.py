"""Presets of `moe-rbench finetune`: one flag reproduces a run of the MoE-RBench reference.

The reference is UNITES-Lab/MoE-RBench @b110cc5. Its robustness runs are the shell scripts
`robustness-evaluation/scripts/<study>/<model>.sh`; each preset is named after one (`adv_nli/llama_moe_2_16`) and
carries what that script makes the training code compute, read from the script by hand (the table below, not at
run time; `tests/test_finetune.py` checks a few rows against the scripts' text):

- the training data protocol (`--dataset`: style_ood -> sst2, boss_sa/nli/td -> boss_*, snli-hard -> snli_hard,
  adv_nli -> anli with the script's `--begin_round`) and its token limit;
- learning rate, epochs, batch per GPU and GPU count (`export gpu_num=`, the `--nproc_per_node` of `torchrun`); the
  global batch (batch x GPUs) is reproduced on one device by gradient accumulation;
- weight decay on every parameter (`optim.AdamW(model.parameters(), weight_decay=...)`, `finetuning_*.py`);
- the scheduler: `step` (StepLR(step_size=1, gamma=0.85), stepped once per epoch: `utils/train_utils.py` l.258-260),
  `cosine` (get_cosine_schedule_with_warmup, num_cycles=3) or `linear`, with warm-up 0.08 x steps
  (`finetuning_anli.py` l.466-470) or 0.1 x steps (`finetuning_moe.py`, `finetuning_ood_style.py`);
- `--freeze_router` (routers frozen);
- the expert dropout and load-balancing weight the code actually applies, which is not always what the script
  passes (`NOTES`).

What the presets do not reproduce (named differences, docs/fidelity.md): `--dropout_rate` sets MoLM's and
Pythia's own config dropout (transformers architectures name their dropout differently, so it is not applied);
`--pure_bf16` casts the model to bfloat16 (presets train in the precision the model loads in; pass
`--training_args bf16=true` for mixed precision); the encoder-decoder scripts (Switch, T5) train seq2seq models,
which `moe-rbench finetune` refuses (`UNSUPPORTED`).

`REFERENCE_DEFAULTS` are the values of `configs/training.py` (a run without a preset); `trainer_defaults` is
moe-rbench's own previous recipe, kept by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REFERENCE = "UNITES-Lab/MoE-RBench@b110cc5"
# configs/training.py: lr 1e-4, weight_decay 0, gamma 0.85, scheduler_type 'step', num_epochs 3, batch_size_training 4,
# gradient_accumulation_steps 1, seed 42, aux_loss_weight 0, expert_dropout_rate 0, bilevel_step 2
REFERENCE_DEFAULTS = {
    "learning_rate": 1e-4,
    "epochs": 3.0,
    "batch_size": 4,
    "reference_gpus": 1,
    "weight_decay": 0.0,
    "optimizer": "reference",
    "scheduler": "step",
    "gamma": 0.85,
    "warmup_fraction": 0.1,
    "max_grad_norm": 0.0,
    "data_order": "reference",
}


@dataclass(frozen=True)
class Preset:
    source: str  # the reference file it reproduces
    recipe: dict  # Recipe fields (moe_rbench.finetune.Recipe)
    optimization: dict  # Optimization fields (moe_rbench.finetune_trainer.Optimization)
    notes: tuple[str, ...] = field(default_factory=tuple)


# the studies' training code: script folder -> (dataset, warm-up fraction of cosine/linear, training script)
STUDIES = {
    "style_ood": ("sst2", 0.1, "finetuning_ood_style.py"),
    "boss_sa": ("boss_sa", 0.1, "finetuning_moe.py"),
    "boss_nli": ("boss_nli", 0.1, "finetuning_moe.py"),
    "boss_td": ("boss_td", 0.1, "finetuning_moe.py"),
    "snli-hard": ("snli_hard", 0.1, "finetuning_moe.py"),
    "adv_nli": ("anli", 0.08, "finetuning_anli.py"),
}
NOTES = {
    "aux": "the script passes aux_loss_weight={} as the balance-loss weight, but the reference's decoder-only "
    "classifiers never add it to the loss (LlamaMoEForSequenceClassification, modeling_llama_moe_hf.py l.1752-1775; "
    "ModuleFormerForSequenceClassification, modeling_moduleformer.py l.849-870): the preset trains without it",
    "molm_anli_dropout": "finetuning_anli.py l.118-128 does not pass expert_dropout_rate to MoLM's config (the "
    "script's value {} is unused; MoLM keeps its checkpoint's own rate): the preset adds no expert dropout",
    "dense_dropout": "expert_dropout_rate={} is passed, but the model is dense: no expert dropout",
    "dense_freeze_pythia": "--freeze_router freezes parameters named 'router' or 'gate'; Pythia has none: nothing "
    "frozen",
    "dense_freeze_llama": "--freeze_router freezes parameters named 'router' or 'gate': on OpenLLaMA every MLP's "
    "gate_proj; reproduced with --router freeze --router_set by_name",
}
# (script, model family, lr, epochs, batch per GPU, GPUs, scheduler, --freeze_router, expert_dropout_rate,
#  aux_loss_weight, begin_round), from robustness-evaluation/scripts/<script>.sh
SCRIPTS = [
    ("style_ood/llama_moe_2_16", "llama_moe", 2e-5, 4, 16, 4, "step", False, 0.0, 1e-3, 1),
    ("style_ood/llama_moe_2_8", "llama_moe", 5e-5, 2, 16, 4, "step", False, 0.0, 1e-3, 1),
    ("style_ood/llama_moe_4_16", "llama_moe", 2e-5, 2, 16, 4, "step", False, 0.0, 1e-3, 1),
    ("style_ood/molm_350m_4B", "molm", 1e-4, 4, 64, 2, "step", True, 0.2, 0.0, 1),
    ("style_ood/molm_700m_4B", "molm", 1e-4, 4, 32, 4, "step", True, 0.2, 0.0, 1),
    ("style_ood/molm_700m_8B", "molm", 1e-4, 4, 32, 4, "step", False, 0.1, 0.0, 1),
    ("style_ood/open-llama-7b", "open_llama", 5e-5, 3, 32, 8, "step", False, 0.0, 1e-3, 1),
    ("style_ood/open_llama", "open_llama", 2e-5, 2, 32, 8, "step", False, 0.0, 1e-3, 1),
    ("style_ood/pythia_1.4b", "pythia", 2e-5, 4, 32, 4, "cosine", False, 0.1, 0.0, 1),
    ("style_ood/pythia_410m", "pythia", 5e-5, 4, 64, 2, "step", False, 0.1, 0.0, 1),
    ("boss_sa/molm_sa", "molm", 1e-4, 6, 128, 2, "linear", False, 0.1, 0.0, 1),
    ("boss_sa/pythia_sa", "pythia", 5e-5, 6, 64, 2, "linear", False, 0.1, 0.0, 1),
    ("boss_nli/molm_nli", "molm", 1e-4, 3, 128, 2, "step", True, 0.3, 0.0, 1),
    ("boss_nli/pythia_nli", "pythia", 5e-5, 3, 128, 2, "step", False, 0.1, 0.0, 1),
    ("boss_td/molm_td", "molm", 1e-4, 4, 128, 2, "linear", True, 0.1, 0.0, 1),
    ("boss_td/pythia_td", "pythia", 5e-5, 4, 128, 2, "linear", False, 0.1, 0.0, 1),
    ("snli-hard/llama_moe_2_16", "llama_moe", 2e-5, 2, 32, 4, "step", True, 0.2, 1e-3, 1),
    ("snli-hard/llama_moe_2_8", "llama_moe", 2e-5, 2, 32, 4, "step", True, 0.2, 1e-3, 1),
    ("snli-hard/llama_moe_4_16", "llama_moe", 2e-5, 2, 32, 4, "step", True, 0.2, 1e-3, 1),
    ("snli-hard/molm_350m_4b", "molm", 1e-4, 2, 128, 2, "step", True, 0.1, 0.0, 1),
    ("snli-hard/molm_700m_4b", "molm", 1e-4, 2, 64, 2, "step", True, 0.2, 1e-3, 1),
    ("snli-hard/open_llama", "open_llama", 2e-5, 2, 32, 4, "step", True, 0.2, 1e-3, 1),
    ("snli-hard/pythia_410m", "pythia", 5e-5, 2, 128, 2, "step", True, 0.1, 0.0, 1),
    ("adv_nli/llama_moe_2_16", "llama_moe", 2e-5, 3, 32, 4, "step", True, 0.0, 0.0, 1),
    ("adv_nli/llama_moe_2_8", "llama_moe", 2e-5, 3, 32, 4, "step", True, 0.0, 0.0, 1),
    ("adv_nli/llama_moe_4_16", "llama_moe", 2e-5, 3, 32, 4, "step", False, 0.1, 1e-3, 3),
    ("adv_nli/molm_350m_4B", "molm", 1e-4, 3, 64, 2, "step", True, 0.2, 0.0, 1),
    ("adv_nli/molm_700m_4b", "molm", 1e-4, 4, 64, 4, "step", True, 0.1, 0.0, 1),
    ("adv_nli/molm_700m_8b", "molm", 1e-4, 3, 32, 4, "cosine", True, 0.2, 0.0, 2),
    ("adv_nli/open_llama", "open_llama", 2e-5, 3, 32, 4, "step", True, 0.0, 0.0, 2),
    ("adv_nli/pythia_1_4B", "pythia", 3e-5, 4, 32, 4, "step", True, 0.0, 0.0, 2),
    ("adv_nli/pythia_410m", "pythia", 2e-5, 3, 32, 2, "step", True, 0.0, 0.0, 2),
]
# encoder-decoder scripts (Switch, T5: seq2seq training on label words), which `moe-rbench finetune` refuses
UNSUPPORTED = tuple(
    f"{study}/{name}"
    for study, names in {
        "style_ood": ("switch", "t5"),
        "boss_sa": ("switch_sa", "t5_sa"),
        "boss_nli": ("switch_nli", "t5_nli"),
        "boss_td": ("switch_td", "t5_td"),
        "snli-hard": ("switch", "t5"),
        "adv_nli": ("switch", "t5"),
    }.items()
    for name in names
)


def _from_script(script, family, lr, epochs, batch, gpus, scheduler, freeze, dropout, aux, begin_round) -> Preset:
    study = script.split("/")[0]
    dataset, warmup, training_code = STUDIES[study]
    recipe: dict = {"protocol": "classify", "dataset": dataset, "head": "sequence_classification"}
    notes = []
    dense = family in ("pythia", "open_llama")
    if freeze and family == "open_llama":
        recipe |= {"router": "freeze", "router_set": "by_name"}
        notes.append(NOTES["dense_freeze_llama"])
    elif freeze and family == "pythia":
        notes.append(NOTES["dense_freeze_pythia"])
    elif freeze:
        recipe["router"] = "freeze"
    if dropout and dense:
        notes.append(NOTES["dense_dropout"].format(dropout))
    elif dropout and family == "molm" and study == "adv_nli":
        notes.append(NOTES["molm_anli_dropout"].format(dropout))
    elif dropout:
        recipe["expert_dropout"] = dropout
    if aux:
        notes.append(NOTES["aux"].format(aux))
    if begin_round != 1:
        recipe["anli_begin_round"] = begin_round
    optimization = {
        **REFERENCE_DEFAULTS,
        "learning_rate": lr,
        "epochs": float(epochs),
        "batch_size": batch,
        "reference_gpus": gpus,
        "weight_decay": 1e-3,  # every script: weight_decay=1e-3
        "scheduler": scheduler,
        "warmup_fraction": warmup,
    }
    source = f"{REFERENCE} robustness-evaluation/scripts/{script}.sh ({training_code})"
    return Preset(source, recipe, optimization, tuple(notes))


PRESETS: dict[str, Preset] = {script[0]: _from_script(*script) for script in SCRIPTS} | {
    # safety-evaluation README.md (batch 64, lr 2e-5, gradient_accumulation_steps 1, weight_decay 0, 1 epoch);
    # finetuning_llama_moe.py l.220 StepLR(gamma=0.85); utils/dataset_utils.py l.15 max_words=512. The README leaves
    # the GPU count open (`--nproc_per_node gpu_num`): set --reference_gpus to match a run on several GPUs.
    "alpaca": Preset(
        f"{REFERENCE} safety-evaluation/README.md (finetuning_llama_moe.py, ft_datasets/alpaca_dataset)",
        {"protocol": "instruct", "head": "causal_lm", "prompt_format": "llama2_chat"},
        {**REFERENCE_DEFAULTS, "learning_rate": 2e-5, "epochs": 1.0, "batch_size": 64},
    ),
    # moe-rbench's own recipe before it followed the reference: transformers Trainer defaults (AdamW without decay on
    # biases and norms, linear decay without warm-up, gradient clipping at 1.0, its shuffling), left truncation, the
    # plain Alpaca prompt without a hold-out, and the checkpoint's own load-balancing weight
    "trainer_defaults": Preset(
        "moe-rbench <= 0.x (before issue 20)",
        {"truncation": "left", "aux_loss_coef": None, "prompt_format": "alpaca", "alpaca_holdout": 0},
        {
            "learning_rate": 5e-5,
            "epochs": 1.0,
            "batch_size": 8,
            "reference_gpus": 1,
            "weight_decay": 0.0,
            "optimizer": "trainer",
            "scheduler": "trainer",
            "gamma": 0.85,
            "warmup_fraction": 0.0,
            "max_grad_norm": 1.0,
            "data_order": "trainer",
        },
    ),
}


def resolve(preset: str | None, recipe_options: dict, optimization_options: dict):
    """The recipe and optimization of a run: the reference's defaults (`configs/training.py`), then the preset's
    values, then the options given (None: not given)."""
    from moe_rbench.finetune import Recipe
    from moe_rbench.finetune_trainer import Optimization
    from moe_rbench_models.errors import OptionError

    if preset is not None and preset not in PRESETS:
        unsupported = " (an encoder-decoder script, which finetune does not train)" if preset in UNSUPPORTED else ""
        raise OptionError(f"Unknown preset {preset!r}{unsupported}; choose one of: {', '.join(PRESETS)}")
    chosen = PRESETS[preset] if preset else Preset("configs/training.py", {}, dict(REFERENCE_DEFAULTS))
    given = {key: value for key, value in recipe_options.items() if value is not None}
    if given.get("aux_loss_coef") == "checkpoint":
        given["aux_loss_coef"] = None  # the checkpoint's router_aux_loss_coef
    recipe = {**chosen.recipe, **given}
    if "protocol" not in recipe:
        raise OptionError("--protocol classify|instruct is required without a --preset")
    if recipe["protocol"] == "instruct":
        recipe.setdefault("head", "causal_lm")
    optimization = {**chosen.optimization, **{k: v for k, v in optimization_options.items() if v is not None}}
    return Recipe(**recipe), Optimization(**optimization)
