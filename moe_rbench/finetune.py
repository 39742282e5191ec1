"""`moe-rbench finetune`: MoE-RBench's fine-tuning protocols with its MoE knobs, on transformers' `Trainer`, computing
what the authors' code computes (UNITES-Lab/MoE-RBench @b110cc5; the differences that remain are named in
docs/fidelity.md).

Protocols (training data: moe_rbench_tasks/training.py):

- `classify`: a robustness task's training set (`--dataset sst2|anli|snli_hard|boss_sa|boss_nli|boss_td|snli`), each
  document asked exactly as its evaluation task asks it (the task's own prompt and label words). `--head
  sequence_classification` (the reference's protocol for decoder-only models, `AutoModelForSequenceClassification`:
  a classification head on the prompt, scored by `moe_hf` with `head=sequence_classification`) or `--head causal_lm`
  (beyond the reference: trained on the label words, lm-eval's own loglikelihood scoring). `anli` trains three
  sequential rounds (from `anli_begin_round`), each a fresh optimizer and scheduler on the previous round's weights
  (`finetuning_anli.py` l.311-487).
- `instruct`: Alpaca instruction tuning (`safety-evaluation/`), without the samples MoE-RBench removed as safety-related
  and the first 200 held out, in the reference's Llama-2-chat-wrapped Alpaca prompt (`prompt_format="llama2_chat"`)
  or the plain one the safety tasks ask with (`"alpaca"`); optionally with Safety-Tuned LLaMAs' safety data.

Tokens: each protocol's limit (`max_length`: 256 for ANLI, 512 elsewhere) cut on the right as the reference's
tokenizer calls do (`truncation="left"` by name keeps the end instead).

MoE knobs (refused on a dense model, checked against the model's MoE layers before training starts):

- `router="freeze"`: the routers' parameters get no gradient (bit-identical after training). Which parameters are the
  routers: `router_set="discovered"` (the routers transformers declares, the default) or `"by_name"` (the reference's
  rule, `finetuning_anli.py` l.273-280: every parameter whose name contains "router" or "gate", which on
  transformers 5 models also freezes the experts' `gate_up_proj` and dense MLPs' `gate_proj`);
- `bilevel=K` with `bilevel_mode="reference"` (`utils/train_utils.py` l.106-115): before micro-batches 0, K, 2K, ...
  the routers' `requires_grad` is toggled, so micro-batches 0..K-1 train all but the routers, K..2K-1 everything;
  `bilevel_mode="alternate"`: K optimizer steps without the routers, then K of the routers only;
- `expert_dropout=P`: dropout with rate P on the interim activations inside each routed expert, in training only
  (moe_rbench/expert_dropout.py, with the reference's per-model placements);
- `aux_loss_coef=C` (default 0, as `configs/training.py`): total loss = task loss + C x the architecture's own
  load-balancing loss (its transformers module's `load_balancing_loss_func`) over the router logits of the batch,
  exactly once: the checkpoint's own `output_router_logits` term is switched off while training (its config is saved
  as it was). `None`: C is the checkpoint's `router_aux_loss_coef`. Router z-loss exists in transformers only for
  the encoder-decoder Switch/NLLB-MoE, which this command refuses, so there is no z-loss option;
- `top_k=K`: experts per token during training; the saved config carries K in the architecture's own field, checked
  by reloading it.

The output directory is a normal checkpoint with its tokenizer; the recipe (with the optimization and the preset) is
in its config (`moe_rbench_recipe`), which `moe_hf` reports and `moe-rbench report` uses to label the run.
"""

from __future__ import annotations

import enum
import sys
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from moe_rbench import expert_dropout
from moe_rbench.finetune_output import destination, discard, publish, write_failure
from moe_rbench.finetune_trainer import Bilevel, MoETrainer, Optimization
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing import HookSet, MoELayer, find_moe_layers, router_logits, set_top_k, top_k_limit
from moe_rbench_tasks.families import family_of
from moe_rbench_tasks.training import ALPACA_HOLDOUT, PROMPT_FORMATS, TRAIN_SETS, classification_docs

PROTOCOLS = ("classify", "instruct")
HEADS = ("sequence_classification", "causal_lm")
ROUTER_SETS = ("discovered", "by_name")
BILEVEL_MODES = ("reference", "alternate")
TRUNCATIONS = ("right", "left")
INSTRUCT_MAX_LENGTH = 512  # safety-evaluation/utils/dataset_utils.py l.15: max_words=512
MOE_KNOBS = ("router", "router_set", "bilevel", "bilevel_mode", "expert_dropout", "aux_loss_coef", "top_k")
NAME_RULE = ("router", "gate")  # finetuning_anli.py l.275: `if "router" in name or "gate" in name`


@dataclass(frozen=True)
class Recipe:
    protocol: str
    dataset: str | None = None  # classify: a training set of moe_rbench_tasks.training.TRAIN_SETS
    head: str = "sequence_classification"  # classify; instruct trains the causal LM head
    router: str = "train"  # train | freeze
    router_set: str = "discovered"  # which parameters are the routers (freeze, bilevel): discovered | by_name
    bilevel: int | None = None
    bilevel_mode: str = "reference"
    expert_dropout: float = 0.0
    aux_loss_coef: float | None = 0.0  # None: the checkpoint's router_aux_loss_coef
    top_k: int | None = None
    keep_safety_samples: bool = False  # instruct: keep the Alpaca samples MoE-RBench removes
    safety_samples: int = 0  # instruct: Safety-Tuned LLaMAs safety samples mixed in
    prompt_format: str = "llama2_chat"  # instruct: llama2_chat (the reference's) | alpaca
    alpaca_holdout: int = ALPACA_HOLDOUT  # instruct: the first N samples are not trained on
    max_length: int | None = None  # None: the protocol's (TrainSet.max_length; 512 for instruct)
    truncation: str = "right"
    anli_begin_round: int = 1  # classify --dataset anli: the first round trained (the scripts' --begin_round)

    def __post_init__(self) -> None:
        problems = self._protocol_problems() + self._knob_problems()
        if problems:
            raise OptionError("; ".join(problems))

    def _protocol_problems(self) -> list[str]:
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        elif self.protocol == "classify" and self.dataset not in TRAIN_SETS:
            problems.append(
                f"--protocol classify needs --dataset, one of {', '.join(TRAIN_SETS)}; got {self.dataset!r}"
            )
        elif self.protocol == "instruct" and (self.dataset is not None or self.head != "causal_lm"):
            problems.append("--protocol instruct trains on Alpaca with the causal LM head: drop --dataset and --head")
        if self.protocol == "classify" and (self.keep_safety_samples or self.safety_samples):
            problems.append("--keep_safety_samples and --safety_samples belong to --protocol instruct")
        if self.head not in HEADS:
            problems.append(f"--head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            problems.append(f"--prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.truncation not in TRUNCATIONS:
            problems.append(f"--truncation must be right or left, got {self.truncation!r}")
        if self.safety_samples < 0 or self.alpaca_holdout < 0 or (self.max_length is not None and self.max_length < 8):
            problems.append("--safety_samples and --alpaca_holdout must be 0 or more and --max_length at least 8")
        if self.anli_begin_round not in (1, 2, 3) or (self.anli_begin_round != 1 and self.dataset != "anli"):
            problems.append(
                f"--anli_begin_round must be 1, 2 or 3, and only with --dataset anli (got {self.anli_begin_round})"
            )
        return problems

    def _knob_problems(self) -> list[str]:
        problems = []
        if self.router not in ("train", "freeze"):
            problems.append(f"--router must be train or freeze, got {self.router!r}")
        if self.router_set not in ROUTER_SETS:
            problems.append(f"--router_set must be one of {', '.join(ROUTER_SETS)}, got {self.router_set!r}")
        if self.bilevel_mode not in BILEVEL_MODES:
            problems.append(f"--bilevel_mode must be one of {', '.join(BILEVEL_MODES)}, got {self.bilevel_mode!r}")
        if self.bilevel is not None and (self.bilevel < 1 or self.router == "freeze"):
            problems.append(
                f"--bilevel K toggles the routers every K micro-batches: K must be at least 1 (got {self.bilevel}) "
                "and the routers not frozen"
            )
        if not 0 <= self.expert_dropout < 1:
            problems.append(f"--expert_dropout P must be in [0, 1), got {self.expert_dropout}")
        if self.aux_loss_coef is not None and self.aux_loss_coef < 0:
            problems.append(f"--aux_loss_coef must be 0 or more, got {self.aux_loss_coef}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"--top_k must be at least 1, got {self.top_k}")
        return problems

    def moe_knobs(self) -> dict[str, Any]:
        """The MoE knobs set away from their defaults."""
        defaults = Recipe(protocol=self.protocol, dataset=self.dataset, head=self.head)
        return {name: getattr(self, name) for name in MOE_KNOBS if getattr(self, name) != getattr(defaults, name)}

    def label(self) -> str:
        """How `moe-rbench report` names runs of a checkpoint trained with this recipe."""
        knobs = ", ".join(f"{name}={value}" for name, value in self.moe_knobs().items())
        return f"{self.protocol}:{self.dataset or 'alpaca'}" + (f" ({knobs})" if knobs else "")

    def token_limit(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return TRAIN_SETS[self.dataset].max_length if self.protocol == "classify" else INSTRUCT_MAX_LENGTH

    def rounds(self) -> list[int | None]:
        """The training runs: the ANLI rounds from `anli_begin_round`, or one run."""
        train_set = TRAIN_SETS.get(self.dataset) if self.protocol == "classify" else None
        return [r for r in train_set.rounds if r >= self.anli_begin_round] if train_set and train_set.rounds else [None]


# -- the recipe against the model ---------------------------------------------------------------------------


def router_parameters(model: torch.nn.Module, layers: list[MoELayer], router_set: str) -> list[torch.nn.Parameter]:
    """The routers' parameters: those of the discovered routers, or (`by_name`) every parameter whose name contains
    "router" or "gate", the reference's rule."""
    if router_set == "by_name":
        return [parameter for name, parameter in model.named_parameters() if any(word in name for word in NAME_RULE)]
    return [parameter for layer in layers for parameter in layer.router.parameters()]


def for_model(recipe: Recipe, model: torch.nn.Module, layers: list[MoELayer]) -> Recipe:
    """The recipe checked against the model's MoE layers, with the load-balancing weight resolved."""
    named_routers = recipe.router_set == "by_name" and (recipe.router == "freeze" or recipe.bilevel)
    if named_routers and not router_parameters(model, layers, "by_name"):
        raise OptionError(
            f"--router_set by_name: {type(model).__name__} has no parameter whose name contains 'router' or "
            "'gate'; there is nothing to freeze or alternate"
        )
    if not layers:
        return _dense(recipe, model)
    if (recipe.router == "freeze" or recipe.bilevel) and not router_parameters(model, layers, recipe.router_set):
        raise OptionError(
            f"--router freeze and --bilevel act on the routers' parameters; the routers of {type(model).__name__} have "
            "none (a gate without weights): there is nothing to freeze or alternate"
        )
    _check_top_k(recipe, model, layers)
    if recipe.expert_dropout:
        for layer in layers:
            expert_dropout.experts_module(layer)  # an OptionError naming the layer when unsupported
    coef = recipe.aux_loss_coef
    if coef is None:
        coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
        coef = coef if balancing_loss(model) is not None else 0.0
    elif coef > 0 and balancing_loss(model) is None:
        raise OptionError(
            f"--aux_loss_coef {coef}: {type(model).__name__}'s transformers module defines no "
            "load_balancing_loss_func (its architecture balances experts another way); pass --aux_loss_coef 0"
        )
    return replace(recipe, aux_loss_coef=coef)


def _dense(recipe: Recipe, model: torch.nn.Module) -> Recipe:
    knobs = recipe.moe_knobs()
    if recipe.router_set == "by_name":  # the name rule needs no MoE layer
        knobs = {name: value for name, value in knobs.items() if name not in ("router", "router_set", "bilevel")}
    asked = [name for name in knobs if name not in ("aux_loss_coef", "bilevel_mode") or recipe.aux_loss_coef]
    if asked:
        by_name = any(word in name for name, _ in model.named_parameters() for word in NAME_RULE)
        hint = " (to freeze parameters named 'router' or 'gate' as the reference does, add --router_set by_name)"
        raise OptionError(
            f"--{', --'.join(asked)} {'needs' if len(asked) == 1 else 'need'} a Mixture-of-Experts model; "
            f"{type(model).__name__} has no MoE layer (none declared by transformers and no router adapter registered)"
            + (hint if by_name and "router" in asked else "")
        )
    return replace(recipe, aux_loss_coef=0.0)


def _check_top_k(recipe: Recipe, model: torch.nn.Module, layers: list[MoELayer]) -> None:
    if recipe.top_k is None:
        return
    fixed = [layer.key for layer in layers if layer.top_k_owner is None]
    too_many = [layer.key for layer in layers if recipe.top_k > top_k_limit(layer)]
    if fixed or too_many:
        raise OptionError(
            f"--top_k {recipe.top_k}: "
            + (f"the routers of layers {', '.join(fixed)} have a fixed k" if fixed else "")
            + (f"layers {', '.join(too_many)} have fewer experts to route a token to" if too_many else "")
        )
    if top_k_field(model.config) is None:
        raise OptionError(
            f"--top_k {recipe.top_k}: {type(model.config).__name__} has no known field for the experts per token "
            "(num_experts_per_tok, ffn_config.moe_top_k), so the checkpoint could not be saved with it"
        )


def top_k_field(config) -> tuple[Any, str] | None:
    """The config object and attribute that hold the architecture's experts per token."""
    if isinstance(getattr(config, "num_experts_per_tok", None), int):
        return config, "num_experts_per_tok"
    ffn = getattr(config, "ffn_config", None)  # DBRX
    if isinstance(getattr(ffn, "moe_top_k", None), int):
        return ffn, "moe_top_k"
    return None


def balancing_loss(model: torch.nn.Module):
    """The architecture's own load-balancing loss function, or None."""
    return getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)


# -- the MoE knobs during training --------------------------------------------------------------------------


class TrainingRouting(HookSet):
    """Hooks for the MoE knobs while training: expert dropout, the training top-k, and the router logits the
    load-balancing loss needs. `remove()` restores the model."""

    def __init__(self, model: torch.nn.Module, layers: list[MoELayer], recipe: Recipe) -> None:
        super().__init__()
        self.layers, self.recipe = layers, recipe
        self.loss_function = balancing_loss(model) if recipe.aux_loss_coef else None
        self.logits: list[torch.Tensor] = []
        if recipe.expert_dropout:
            expert_dropout.install(self, layers, recipe.expert_dropout)
        for layer in layers:
            if recipe.top_k is not None:
                previous = set_top_k(layer, recipe.top_k)
                self._restore.append(lambda layer=layer, k=previous: set_top_k(layer, k))
            if self.loss_function is not None:
                self._handles.append(
                    layer.router.register_forward_hook(
                        lambda module, args, output, layer=layer: self._keep_logits(module, layer, output)
                    )
                )

    def _keep_logits(self, module, layer: MoELayer, output) -> None:
        if module.training:
            self.logits.append(router_logits(layer, output))

    def balancing_loss(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The load-balancing loss of the forward pass just made (None when it is off)."""
        if self.loss_function is None:
            return None
        logits, self.logits = tuple(self.logits), []
        layer = self.layers[0]
        top_k = self.recipe.top_k or getattr(layer.top_k_owner, layer.top_k_attribute or "", None) or layer.top_k
        return self.loss_function(logits, layer.num_experts, top_k, attention_mask)


# -- training -----------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    path: Path
    recipe: Recipe  # as trained: the checkpoint's defaults filled in
    label: str  # the knobs asked for (how reports name the checkpoint's runs)
    log_history: list[dict]  # Trainer's log, each entry with its ANLI round ("round": None for one run)
    data: dict


@dataclass(frozen=True)
class Run:
    """One training run: its ANLI round (None: the only run), tokenized examples and what was read."""

    round: int | None
    features: list[dict]
    data: dict


def finetune(
    model: str | Path,
    out_dir: str | Path,
    recipe: Recipe,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    optimization: Optimization | None = None,
    preset: str | None = None,
    overwrite: bool = False,
    **training_args: Any,
) -> FinetuneResult:
    """Fine-tune `model` (a hub id or local checkpoint) by `recipe` and `optimization` (default: the reference's
    `configs/training.py`) and save it to `out_dir`. `training_args` are other transformers `TrainingArguments` fields
    (max_steps, seed, logging_steps, bf16, use_cpu, deepspeed, ...); `limit` takes the first N training examples of
    each run; `preset` is recorded with the recipe. `out_dir` must be new or empty unless `overwrite` (then it is
    replaced once the checkpoint is written); it is never the input checkpoint (moe_rbench/finetune_output.py)."""
    from transformers import AutoConfig, AutoTokenizer, set_seed

    optimization = optimization or Optimization()
    if limit is not None and limit < 1:
        raise OptionError(
            f"--limit takes the first N training examples (N at least 1), got {limit}; leave it out to train on all"
        )
    check_training_args(optimization, training_args)
    target = destination(model, out_dir, overwrite)
    _training_arguments(optimization, target.staging, training_args)  # TrainingArguments' own checks, early
    set_seed(int(training_args.get("seed", 42)))
    config = _from_pretrained(AutoConfig, model)
    tokenizer = _from_pretrained(AutoTokenizer, model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # the reference's pad token (finetuning_anli.py l.216)
    network = _load(model, config, recipe, tokenizer)
    layers = find_moe_layers(network)
    label = recipe.label()  # the knobs asked for, before the checkpoint's defaults fill the rest in
    recipe = for_model(recipe, network, layers)  # checked before any data is read
    runs = [_run(recipe, tokenizer, data_dir, limit, round_number) for round_number in recipe.rounds()]
    routers = router_parameters(network, layers, recipe.router_set)
    if recipe.router == "freeze":
        for parameter in routers:
            parameter.requires_grad_(False)
    bilevel = Bilevel(routers, recipe.bilevel, recipe.bilevel_mode) if recipe.bilevel else None
    data = runs[0].data if len(runs) == 1 else {f"round {run.round}": run.data for run in runs}
    try:
        trainer, log_history = _train(
            network, layers, recipe, optimization, bilevel, runs, tokenizer, target, training_args
        )
        network.config.moe_rbench_recipe = {
            **asdict(recipe),
            "optimization": asdict(optimization),
            "preset": preset,
            "label": label,
            "data": data,
        }
        try:
            _save(trainer, network, recipe, target.staging)
        except (OSError, SafetensorError) as error:
            raise write_failure(target, error) from None
        if trainer.args.should_save:  # the main process (every process saves under DeepSpeed and FSDP)
            publish(target)
    finally:
        discard(target)
    return FinetuneResult(target.out, recipe, label, log_history, data)


def _train(network, layers, recipe, optimization, bilevel, runs, tokenizer, target, training_args):
    """Train every run (ANLI round) in turn; the last trainer and the log of all."""
    log_history: list[dict] = []
    with own_balancing_term_off(network):
        routing = TrainingRouting(network, layers, recipe)
        try:
            for run in runs:
                trainer = _trainer(
                    network, recipe, optimization, routing, bilevel, run, tokenizer, target.staging, training_args
                )
                trainer.train()
                if trainer.state.global_step == 0:
                    raise OptionError(
                        f"Training took 0 optimizer steps ({len(run.features)} examples, --epochs "
                        f"{optimization.epochs}, max_steps {trainer.args.max_steps}): the checkpoint would be the "
                        f"untrained model under the recipe's label; nothing was written to {target.out}. Train on more "
                        "examples or for more steps"
                    )
                log_history += [{**entry, "round": run.round} for entry in trainer.state.log_history]
        finally:
            routing.remove()
    return trainer, log_history


def _from_pretrained(auto_class, model: str | Path, **kwargs):
    """`auto_class.from_pretrained(model)`, a missing checkpoint named in one line."""
    path = Path(model).expanduser()
    if not path.exists() and (path.is_absolute() or str(model).startswith((".", "~")) or str(model).count("/") > 1):
        raise OptionError(
            f"MODEL {model}: no such checkpoint directory; give the folder of a checkpoint (with config.json) or a "
            "Hugging Face model id"
        )
    try:
        return auto_class.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as error:  # missing files, the hub out of reach; no model_type, no tokenizer file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OptionError(
            f"MODEL {model}: no checkpoint could be loaded from it ({first}); give the folder of a checkpoint (with "
            "config.json and its tokenizer) or a Hugging Face model id you can reach"
        ) from None


@contextmanager
def own_balancing_term_off(network) -> Iterator[None]:
    """While training, the checkpoint's config does not ask the model for its own load-balancing term
    (`output_router_logits`): transformers' CausalLM adds `router_aux_loss_coef x aux` itself when it is on, and ours
    is added once by the trainer. The config is restored as it was."""
    config = network.config
    if not hasattr(config, "output_router_logits"):
        yield
        return
    value = config.output_router_logits
    config.output_router_logits = False
    try:
        yield
    finally:
        config.output_router_logits = value


def _run(recipe: Recipe, tokenizer, data_dir, limit: int | None, round_number: int | None) -> Run:
    import moe_rbench_tasks
    from moe_rbench.finetune_data import classification_features, instruction_features

    if recipe.protocol == "instruct":
        features, data = instruction_features(recipe, tokenizer, data_dir, limit)
        return Run(round_number, features, data)
    task_name, docs = classification_docs(recipe.dataset, data_dir, round_number)
    docs = docs[:limit] if limit else docs
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": data_dir and str(data_dir)})
    task = manager.load([task_name])["tasks"][task_name]
    features, label_words, truncated = classification_features(recipe, tokenizer, task, docs)
    data = {"task": task_name, "examples": len(features), "labels": label_words, "cut_at_max_length": truncated}
    return Run(round_number, features, data)


def _load(model: str | Path, config, recipe: Recipe, tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if config.is_encoder_decoder:
        raise OptionError(
            f"{model} is an encoder-decoder model; `moe-rbench finetune` trains decoder-only models (the reference "
            "trains T5 and Switch on label words with their own seq2seq scripts, not reproduced here)"
        )
    if recipe.head == "sequence_classification" and recipe.protocol == "classify":
        if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
            raise OptionError(
                f"{model} ({config.model_type}) has no sequence-classification class in transformers "
                "(AutoModelForSequenceClassification), which --head sequence_classification (the default of "
                "--protocol classify and of the presets) trains; pass --head causal_lm to train on the label words "
                "(evaluate the checkpoint with moe_hf's default head)"
            )
        task = TRAIN_SETS[recipe.dataset].task_of(1)
        names = dict(enumerate(family_of(task).choices))
        network = AutoModelForSequenceClassification.from_pretrained(
            model, num_labels=len(names), id2label=names, label2id={v: k for k, v in names.items()}
        )
    else:
        network = AutoModelForCausalLM.from_pretrained(model)
    network.config.pad_token_id = tokenizer.pad_token_id
    return network


def _trainer(network, recipe, optimization, routing, bilevel, run, tokenizer, out_dir, training_args) -> MoETrainer:
    import datasets
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    args = _training_arguments(optimization, out_dir, training_args)
    if bilevel is not None:
        _check_bilevel_setup(args)
        bilevel.micro_batch = 0  # the reference counts micro-batches from 0 in each training run
    classifier = recipe.head == "sequence_classification" and recipe.protocol == "classify"
    collator = (
        DataCollatorWithPadding(tokenizer)
        if classifier
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    )
    return MoETrainer(
        model=network,
        args=args,
        train_dataset=datasets.Dataset.from_list(run.features),
        data_collator=collator,
        processing_class=tokenizer,
        routing=routing,
        aux_loss_coef=recipe.aux_loss_coef,
        bilevel=bilevel,
        optimization=optimization,
        drop_last=recipe.protocol == "classify",  # finetuning_anli.py l.383; safety finetuning_llama_moe.py l.187
    )


# TrainingArguments set by Optimization (and its command-line options)
OWNED = {
    "learning_rate": "learning_rate",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
}


def check_training_args(optimization: Optimization, training_args: dict) -> None:
    """Other TrainingArguments fields: known, not set by the optimization, each of its field's type; before anything is
    loaded."""
    from transformers import TrainingArguments

    owned = sorted(set(training_args) & set(OWNED))
    if owned:
        raise OptionError(
            f"Training arguments {', '.join(owned)} are set by the recipe's optimization: use "
            + ", ".join(f"--{OWNED[name]}" for name in owned)
        )
    unknown = sorted(set(training_args) - {field.name for field in fields(TrainingArguments)})
    if unknown:
        raise OptionError(f"Unknown training arguments {', '.join(unknown)} (transformers TrainingArguments fields)")
    hints = typing.get_type_hints(TrainingArguments)
    for name, value in training_args.items():
        # a text field may also take a switch (transformers documents fsdp=True); TrainingArguments checks it then
        switch_for_text = isinstance(value, bool) and _fits("text", hints[name])
        if not switch_for_text and not _fits(value, hints[name]):
            quoted = _fits(str(value), hints[name]) and not isinstance(value, str)
            raise OptionError(
                f"--training_args {name}={value!r}: TrainingArguments.{name} takes {_described(hints[name])}, got "
                f"{_described(type(value))}"
                + (f" (text that reads as a number or true/false goes in quotes: {name}='{value}')" if quoted else "")
            )
    steps = training_args.get("max_steps", -1)  # -1: TrainingArguments' "not set", --epochs decide
    if isinstance(steps, int) and not isinstance(steps, bool) and steps != -1 and steps < 1:
        raise OptionError(
            f"--max_steps {steps} would train {max(steps, 0)} optimizer steps; give at least 1 (or leave it out: "
            "--epochs decide)"
        )
    if optimization.reference_gpus > 1 and "gradient_accumulation_steps" in training_args:
        raise OptionError(
            "--reference_gpus reproduces the reference's global batch by gradient accumulation; do not also set "
            "gradient_accumulation_steps"
        )


def _fits(value, hint) -> bool:
    """Whether a --training_args value (lm-eval's parsing: bool, int, float, a literal or text) is of the field's
    type; types other than the builtin ones are left to TrainingArguments."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    simple = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if hint in simple:
        return simple[hint]
    origin = typing.get_origin(hint) or hint
    return isinstance(value, origin) if origin in (list, dict, tuple) else True


def _described(hint) -> str:
    names = {type(None): "none", bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        described = dict.fromkeys(_described(member) for member in typing.get_args(hint))
        return " or ".join(described)
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in hint)
    return names.get(hint) or f"a {getattr(typing.get_origin(hint) or hint, '__name__', hint)}"


def _training_arguments(optimization: Optimization, out_dir, training_args: dict):
    from transformers import TrainingArguments

    arguments = {
        "output_dir": str(out_dir),
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        **training_args,
        "learning_rate": optimization.learning_rate,
        "num_train_epochs": optimization.epochs,
        "per_device_train_batch_size": optimization.batch_size,
        "weight_decay": optimization.weight_decay,
        "max_grad_norm": optimization.max_grad_norm,
    }
    try:
        args = TrainingArguments(**arguments)
    except ValueError as error:  # TrainingArguments' own checks (an unknown scheduler name, bf16 without support)
        raise OptionError(f"--training_args: {str(error).strip().splitlines()[0]}") from None
    return _with_accumulation(args, optimization)


def _with_accumulation(args, optimization: Optimization):
    """The reference's global batch (batch x reference GPUs) on this run's processes, by gradient accumulation."""
    gpus, world = optimization.reference_gpus, args.world_size
    if optimization.data_order == "reference" and world > 1:
        raise OptionError(
            f"--data_order reference replays the batches of {gpus} reference GPU(s) on one process; this run has "
            f"{world} processes: run on one (the global batch comes from gradient accumulation) or pass "
            "--data_order trainer"
        )
    if gpus % world:
        raise OptionError(f"--reference_gpus {gpus} is not a multiple of this run's {world} processes")
    if gpus > 1:
        args.gradient_accumulation_steps = gpus // world
    return args


def _check_bilevel_setup(args) -> None:
    if args.world_size > 1 or args.deepspeed or args.fsdp:
        raise OptionError(
            "--bilevel toggles the routers' requires_grad between micro-batches, which breaks the gradient reducer of "
            "DDP and the sharded parameters of DeepSpeed and FSDP; run bi-level training in one process "
            "(--reference_gpus reproduces a multi-GPU global batch by gradient accumulation)"
        )


def _save(trainer, network, recipe: Recipe, out_dir) -> None:
    if recipe.top_k is not None:
        owner, name = top_k_field(network.config)
        setattr(owner, name, recipe.top_k)
    trainer.save_model(str(out_dir))
    if recipe.top_k is not None and trainer.args.should_save:
        check_saved_top_k(out_dir, recipe.top_k, type(network))


def check_saved_top_k(out_dir, k: int, model_class) -> None:
    """The saved checkpoint routes every token of every MoE layer to k experts (its config rebuilt on the meta
    device, the layers found as `moe_hf` finds them); an error otherwise."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out_dir)
    with torch.device("meta"):
        rebuilt = model_class(config)
    found = {layer.key: layer.top_k for layer in find_moe_layers(rebuilt)}
    wrong = {key: value for key, value in found.items() if value != k}
    if not found or wrong:
        raise RuntimeError(
            f"The checkpoint saved at {out_dir} does not route with the trained top-k {k}: {wrong or 'no MoE layer'}; "
            "its config field for the experts per token was not the one its routers read"
        )
