"""`moe-rbench finetune`: MoE-RBench's fine-tuning protocols with its MoE knobs, on transformers' `Trainer`.

Protocols (training data: moe_rbench_tasks/training.py):

- `classify`: a robustness task's training set (`--dataset sst2|snli|boss_sa|boss_nli|boss_td`), each document asked
  exactly as its evaluation task asks it (the task's own prompt and label words). `--head sequence_classification`
  (the paper's protocol for decoder-only models: a classification head on the prompt, scored by `moe_hf` with
  `head=sequence_classification`) or `--head causal_lm` (trained on the label words, lm-eval's own
  loglikelihood scoring: the loss is on the label word's tokens, split from the prompt as lm-eval splits them);
- `instruct`: Alpaca instruction tuning in the Alpaca prompt, without the samples MoE-RBench removed as
  safety-related, optionally with Safety-Tuned LLaMAs' safety data; the loss is on the response and EOS.

MoE knobs (refused on a dense model, checked against the model's MoE layers before training starts):

- `router="freeze"`: the routers' parameters get no gradient (bit-identical after training);
- `bilevel=K`: K optimizer steps update everything but the routers, the next K the routers only, and so on (the
  paper's K-step bi-level alternation); gradients of the resting group are dropped after each backward pass;
- `expert_dropout=P`: dropout with rate P on the output of each MoE layer's experts, in training mode only;
- `aux_loss_coef=C`: weight of the load-balancing loss, the architecture's own (`load_balancing_loss_func` of its
  transformers module) over the router logits of the training batch; default: the checkpoint's
  `router_aux_loss_coef`; 0 disables it;
- `top_k=K`: experts per token during training (the checkpoint keeps its own k).

The output directory is a normal checkpoint with its tokenizer; the recipe is in its config
(`moe_rbench_recipe`), which `moe_hf` reports and `moe-rbench report` uses to label the run.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import InternalsChanged
from moe_rbench_models.routing.discovery import MoELayer, find_moe_layers
from moe_rbench_models.routing.hooks import HookSet, router_logits
from moe_rbench_models.routing.interventions import set_top_k, top_k_limit
from moe_rbench_tasks.families import family_of
from moe_rbench_tasks.training import TRAIN_SETS, classification_docs, instruction_examples

PROTOCOLS = ("classify", "instruct")
HEADS = ("sequence_classification", "causal_lm")
MOE_KNOBS = ("router", "bilevel", "expert_dropout", "aux_loss_coef", "top_k")


@dataclass(frozen=True)
class Recipe:
    protocol: str
    dataset: str | None = None  # classify: a training set of moe_rbench_tasks.training.TRAIN_SETS
    head: str = "sequence_classification"  # classify; instruct trains the causal LM head
    router: str = "train"
    bilevel: int | None = None
    expert_dropout: float = 0.0
    aux_loss_coef: float | None = None  # None: the checkpoint's router_aux_loss_coef (0 without one)
    top_k: int | None = None
    keep_safety_samples: bool = False  # instruct: keep the Alpaca samples MoE-RBench removes
    safety_samples: int = 0  # instruct: Safety-Tuned LLaMAs safety samples mixed in
    max_length: int = 512

    def __post_init__(self) -> None:
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
        if self.router not in ("train", "freeze"):
            problems.append(f"--router must be train or freeze, got {self.router!r}")
        if self.bilevel is not None and (self.bilevel < 1 or self.router == "freeze"):
            problems.append(
                f"--bilevel K alternates K backbone steps with K router steps: K must be at least 1 (got "
                f"{self.bilevel}) and the routers not frozen"
            )
        if not 0 <= self.expert_dropout < 1:
            problems.append(f"--expert_dropout P must be in [0, 1), got {self.expert_dropout}")
        if self.aux_loss_coef is not None and self.aux_loss_coef < 0:
            problems.append(f"--aux_loss_coef must be 0 or more, got {self.aux_loss_coef}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"--top_k must be at least 1, got {self.top_k}")
        if self.safety_samples < 0 or self.max_length < 8:
            problems.append("--safety_samples must be 0 or more and --max_length at least 8")
        if problems:
            raise OptionError("; ".join(problems))

    def moe_knobs(self) -> dict[str, Any]:
        """The MoE knobs set away from their defaults."""
        defaults = Recipe(protocol=self.protocol, dataset=self.dataset, head=self.head)
        return {name: getattr(self, name) for name in MOE_KNOBS if getattr(self, name) != getattr(defaults, name)}

    def label(self) -> str:
        """How `moe-rbench report` names runs of a checkpoint trained with this recipe."""
        knobs = ", ".join(f"{name}={value}" for name, value in self.moe_knobs().items())
        return f"{self.protocol}:{self.dataset or 'alpaca'}" + (f" ({knobs})" if knobs else "")


def for_model(recipe: Recipe, model: torch.nn.Module, layers: list[MoELayer]) -> Recipe:
    """The recipe checked against the model's MoE layers, with the load-balancing weight resolved."""
    if not layers:
        asked = [name for name in recipe.moe_knobs() if name != "aux_loss_coef" or recipe.aux_loss_coef]
        if asked:
            raise OptionError(
                f"--{', --'.join(asked)} {'needs' if len(asked) == 1 else 'need'} a Mixture-of-Experts model; "
                f"{type(model).__name__} has no MoE layer (a dense model takes the other options only)"
            )
        return replace(recipe, aux_loss_coef=0.0)
    if recipe.top_k is not None:
        fixed = [layer.key for layer in layers if layer.top_k_owner is None]
        too_many = [layer.key for layer in layers if recipe.top_k > top_k_limit(layer)]
        if fixed or too_many:
            raise OptionError(
                f"--top_k {recipe.top_k}: "
                + (f"the routers of layers {', '.join(fixed)} have a fixed k" if fixed else "")
                + (f"layers {', '.join(too_many)} have fewer experts to route a token to" if too_many else "")
            )
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
        for layer in layers:
            if recipe.top_k is not None:
                previous = set_top_k(layer, recipe.top_k)
                self._restore.append(lambda layer=layer, k=previous: set_top_k(layer, k))
            if recipe.expert_dropout:
                self._handles.append(layer.block.experts.register_forward_hook(self._dropout))
            if self.loss_function is not None:
                self._handles.append(
                    layer.router.register_forward_hook(
                        lambda module, args, output, layer=layer: self._keep_logits(module, layer, output)
                    )
                )

    def _dropout(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise InternalsChanged(
                "transformers", f"{type(module).__name__} no longer returns the experts' output as one tensor"
            )
        return F.dropout(output, self.recipe.expert_dropout, training=module.training)

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


def router_parameters(layers: list[MoELayer]) -> list[torch.nn.Parameter]:
    return [parameter for layer in layers for parameter in layer.router.parameters()]


# -- data ---------------------------------------------------------------------------------------------------


def classification_features(recipe: Recipe, tokenizer, data_dir, limit: int | None) -> tuple[list[dict], list[str]]:
    """Tokenized training examples of the classify protocol, and the task's label words (class i first)."""
    import moe_rbench_tasks

    task_name, docs = classification_docs(recipe.dataset, data_dir)
    docs = docs[:limit] if limit else docs
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": data_dir and str(data_dir)})
    task = manager.load([task_name])["tasks"][task_name]
    label_words = list(task.doc_to_choice(docs[0]))
    features = []
    for doc in docs:
        context, label = task.doc_to_text(doc), task.doc_to_target(doc)
        if recipe.head == "sequence_classification":
            ids = tokenizer(context)["input_ids"][-recipe.max_length :]  # lm-eval truncates on the left
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label})
        else:
            continuation = task.config.target_delimiter + task.doc_to_choice(doc)[label]
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
            ids = (context_ids + continuation_ids)[-recipe.max_length :]
            labels = ([-100] * len(context_ids) + continuation_ids)[-recipe.max_length :]
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features, label_words


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-eval's causal models split them (`LM._encode_pair`): trailing spaces
    of the context move to the continuation, the whole is encoded once and split after the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return whole[: len(context_ids)], whole[len(context_ids) :]


def instruction_features(recipe: Recipe, tokenizer, data_dir, limit: int | None) -> tuple[list[dict], dict]:
    """Tokenized Alpaca examples (loss on the response and EOS), and counts of what was read and cut."""
    examples, counts = instruction_examples(data_dir, recipe.keep_safety_samples, recipe.safety_samples)
    examples = examples[:limit] if limit else examples
    features, cut = [], 0
    for prompt, response in examples:
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt_ids + response_ids
        labels = [-100] * len(prompt_ids) + response_ids
        if len(ids) > recipe.max_length:
            cut += 1
            ids, labels = ids[: recipe.max_length], labels[: recipe.max_length]
        if all(label == -100 for label in labels):
            raise OptionError(
                f"An Alpaca prompt is longer than --max_length {recipe.max_length} tokens, leaving no response to "
                f"learn: {prompt[:80]!r}...; raise --max_length"
            )
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features, {**counts, "used": len(features), "cut_at_max_length": cut}


# -- training -----------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    path: Path
    recipe: Recipe  # as trained: the checkpoint's defaults filled in
    label: str  # the knobs asked for (how reports name the checkpoint's runs)
    log_history: list[dict]
    data: dict


def finetune(
    model: str | Path,
    out_dir: str | Path,
    recipe: Recipe,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    **training_args: Any,
) -> FinetuneResult:
    """Fine-tune `model` (a hub id or local checkpoint) by `recipe` and save it to `out_dir`. `training_args` are
    transformers `TrainingArguments` fields (learning_rate, num_train_epochs, max_steps, per_device_train_batch_size,
    seed, bf16, deepspeed, fsdp, ...); `limit` takes the first N training examples."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithPadding, set_seed

    set_seed(int(training_args.get("seed", 42)))
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    label_words = list(family_of(TRAIN_SETS[recipe.dataset].task).choices) if recipe.protocol == "classify" else []
    network = _load(model, recipe, label_words, tokenizer)
    layers = find_moe_layers(network)
    label = recipe.label()  # the knobs asked for, before the checkpoint's defaults fill the rest in
    recipe = for_model(recipe, network, layers)  # checked before any data is read
    if recipe.protocol == "classify":
        features, label_words = classification_features(recipe, tokenizer, data_dir, limit)
        data = {"examples": len(features), "labels": label_words}
    else:
        features, data = instruction_features(recipe, tokenizer, data_dir, limit)
    if recipe.router == "freeze":
        for parameter in router_parameters(layers):
            parameter.requires_grad_(False)
    network.config.moe_rbench_recipe = {**asdict(recipe), "label": label, "data": data}
    collator = (
        DataCollatorWithPadding(tokenizer)
        if recipe.head == "sequence_classification" and recipe.protocol == "classify"
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    )
    routing = TrainingRouting(network, layers, recipe)
    try:
        trainer = _trainer(network, layers, recipe, routing, features, collator, tokenizer, out_dir, training_args)
        trainer.train()
    finally:
        routing.remove()
    trainer.save_model(str(out_dir))
    return FinetuneResult(Path(out_dir), recipe, label, trainer.state.log_history, data)


def _load(model: str | Path, recipe: Recipe, label_words: list[str], tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model)
    if config.is_encoder_decoder:
        raise OptionError(
            f"{model} is an encoder-decoder model; `moe-rbench finetune` trains decoder-only models (the paper trains "
            "T5 and Switch on label words with their own seq2seq scripts)"
        )
    if recipe.head == "sequence_classification" and recipe.protocol == "classify":
        names = dict(enumerate(label_words))
        network = AutoModelForSequenceClassification.from_pretrained(
            model, num_labels=len(label_words), id2label=names, label2id={v: k for k, v in names.items()}
        )
    else:
        network = AutoModelForCausalLM.from_pretrained(model)
    network.config.pad_token_id = tokenizer.pad_token_id
    return network


def _trainer(network, layers, recipe, routing, features, collator, tokenizer, out_dir, training_args):
    import datasets
    from transformers import Trainer, TrainingArguments

    class MoETrainer(Trainer):
        """Adds the load-balancing loss, and drops the resting group's gradients in bi-level training."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            balancing = routing.balancing_loss(inputs.get("attention_mask"))
            if balancing is not None:
                loss = loss + recipe.aux_loss_coef * balancing.to(loss.device)
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if recipe.bilevel:
                routers = {id(p) for p in router_parameters(layers)}
                router_turn = (self.state.global_step // recipe.bilevel) % 2 == 1
                for parameter in network.parameters():
                    if (id(parameter) in routers) != router_turn:
                        parameter.grad = None
            return loss

    arguments = {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-5,
        "num_train_epochs": 1.0,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        **training_args,
    }
    unknown = sorted(set(arguments) - {field.name for field in fields(TrainingArguments)})
    if unknown:
        raise OptionError(f"Unknown training arguments {', '.join(unknown)} (transformers TrainingArguments fields)")
    args = TrainingArguments(**arguments)
    if recipe.bilevel and (args.deepspeed or args.fsdp):
        raise OptionError(
            "--bilevel drops the resting group's gradients after each backward pass, which DeepSpeed and FSDP keep "
            "in sharded buffers; run bi-level training on one device or with DDP"
        )
    dataset = datasets.Dataset.from_list(features)
    return MoETrainer(
        model=network, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer
    )
