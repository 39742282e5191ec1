"""The transformers `Trainer` that `moe-rbench finetune` runs, made to compute what the MoE-RBench reference computes.

The reference (UNITES-Lab/MoE-RBench @b110cc5, `robustness-evaluation/`) trains with its own loop,
`utils/train_utils.py` `train()` (l.54-291), under `torchrun` with FSDP. `Optimization` names each way it differs
from `Trainer`'s defaults, with the reference's behaviour as the default and Trainer's available by name:

- `optimizer="reference"`: `torch.optim.AdamW(model.parameters(), lr, weight_decay)` (`finetuning_*.py`, e.g.
  `finetuning_anli.py` l.445-449): one group, weight decay on every parameter (Trainer's exempts biases and norms);
  the loss of a micro-batch is its own mean (`model(**batch).loss`, l.122) divided by the accumulation steps, as FSDP
  averages the ranks' gradients (Trainer weights tokens across accumulated micro-batches). `"trainer"`: Trainer's.
- `scheduler`: `step` = StepLR(step_size=1, gamma) stepped once per epoch (`train_utils.py` l.258-260); `cosine` =
  `get_cosine_schedule_with_warmup(opt, steps * warmup_fraction, steps, num_cycles=3)` and `linear` =
  `get_linear_schedule_with_warmup(opt, steps * warmup_fraction, steps)`, stepped per optimizer step, with the float
  warm-up the reference passes and steps = epochs x batches per epoch (`finetuning_anli.py` l.463-470); `trainer`:
  TrainingArguments' `lr_scheduler_type`.
- `max_grad_norm=0`: the reference clips only under fp16 (`train_utils.py` l.129), which no script uses.
- `data_order="reference"`: each script runs under `torchrun` with a `DistributedSampler(shuffle=True)` (seed 0,
  never `set_epoch`: the same order every epoch; `finetuning_anli.py` l.357-362) and per-rank `DataLoader`s
  (`drop_last=True` for classification, l.383; `False` for Alpaca, `safety-evaluation/finetuning_llama_moe.py`
  l.187). One optimizer step of the reference consumes one batch on each of `reference_gpus` ranks; here the same
  batches are the micro-batches of one accumulated step, rank by rank. `"trainer"`: Trainer's shuffling (`--seed`).
- bi-level (`Bilevel`): `train_utils.py` l.106-115.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import Trainer, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import InternalsChanged

OPTIMIZERS = ("reference", "trainer")
SCHEDULERS = ("step", "cosine", "linear", "trainer")
DATA_ORDERS = ("reference", "trainer")
COSINE_CYCLES = 3  # finetuning_anli.py l.467: num_cycles=3
SAMPLER_SEED = 0  # torch DistributedSampler's default seed, which the reference keeps


@dataclass(frozen=True)
class Optimization:
    """How the weights are updated (defaults: the reference's `configs/training.py`)."""

    learning_rate: float = 1e-4
    epochs: float = 3.0
    batch_size: int = 4  # per device (per rank in the reference)
    reference_gpus: int = 1  # the reference's GPU count: its global batch is batch_size x reference_gpus
    weight_decay: float = 0.0
    optimizer: str = "reference"
    scheduler: str = "step"
    gamma: float = 0.85  # step: the factor per epoch
    warmup_fraction: float = 0.1  # cosine, linear: warm-up steps as a fraction of all steps
    max_grad_norm: float = 0.0
    data_order: str = "reference"

    def __post_init__(self) -> None:
        problems = []
        for name, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("data_order", DATA_ORDERS)):
            if getattr(self, name) not in allowed:
                problems.append(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.reference_gpus < 1:
            problems.append("--batch_size and --reference_gpus must be at least 1")
        if self.learning_rate <= 0:
            problems.append(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.epochs <= 0:
            problems.append(f"--epochs must be positive, got {self.epochs} (that would train 0 optimizer steps)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            problems.append("--weight_decay and --max_grad_norm must not be negative")
        if not 0 <= self.warmup_fraction < 1 or not 0 < self.gamma <= 1:
            problems.append("--warmup_fraction must be in [0, 1) and --gamma in (0, 1]")
        if problems:
            raise OptionError("; ".join(problems))


def reference_batches(examples: int, replicas: int, batch_size: int, drop_last: bool) -> list[list[int]]:
    """The reference's batches, one optimizer step after another and within a step rank by rank: torch's
    `DistributedSampler(shuffle=True, seed=0, drop_last=False)` over `replicas` ranks (indices padded by repeating the
    first ones to a multiple of the ranks, rank r taking every `replicas`-th from r), each rank's
    `DataLoader(batch_size, drop_last)`."""
    generator = torch.Generator()
    generator.manual_seed(SAMPLER_SEED)
    indices = torch.randperm(examples, generator=generator).tolist()
    per_rank = math.ceil(examples / replicas)
    total = per_rank * replicas
    indices += (indices * math.ceil(total / max(examples, 1)))[: total - examples]
    ranks = [indices[rank:total:replicas] for rank in range(replicas)]
    steps = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    if steps == 0:
        raise OptionError(
            f"{examples} training examples over {replicas} reference GPU(s) leave no full batch of {batch_size}: the "
            "reference drops incomplete batches; lower --batch_size or --reference_gpus"
        )
    return [
        ranks[rank][step * batch_size : (step + 1) * batch_size] for step in range(steps) for rank in range(replicas)
    ]


class FixedBatches(torch.utils.data.Sampler):
    """A batch sampler that yields the same batches every epoch."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Bilevel:
    """Bi-level training over a set of router parameters.

    `reference` (`utils/train_utils.py` l.106-115): before every micro-batch whose index (counted from 0 in each
    training run, `global_step`, l.88 and l.121) is a multiple of K, `requires_grad` of the router parameters is
    toggled; nothing else is ever frozen. Micro-batches 0..K-1 train everything but the routers, K..2K-1 everything,
    and so on; the state carries over to the next training run (the next ANLI round), as the reference's model does.
    `alternate` (moe-rbench's earlier method, by name): K optimizer steps train everything but the routers, the next K
    the routers only (the resting group's gradients are dropped after each backward pass)."""

    def __init__(self, parameters: list[torch.nn.Parameter], every: int, mode: str) -> None:
        self.parameters, self.every, self.mode = parameters, every, mode
        self.micro_batch = 0

    def before_micro_batch(self) -> None:
        if self.mode == "reference" and self.micro_batch % self.every == 0:
            for parameter in self.parameters:
                parameter.requires_grad_(not parameter.requires_grad)
        self.micro_batch += 1

    def after_backward(self, model: torch.nn.Module, optimizer_step: int) -> None:
        if self.mode != "alternate":
            return
        routers = {id(parameter) for parameter in self.parameters}
        router_turn = (optimizer_step // self.every) % 2 == 1
        for parameter in model.parameters():
            if (id(parameter) in routers) != router_turn:
                parameter.grad = None


class MoETrainer(Trainer):
    """Trainer with the load-balancing term added once, bi-level toggling, and the reference's optimizer, schedulers
    and batches (module docstring)."""

    def __init__(
        self, *args, routing, aux_loss_coef: float, bilevel: Bilevel | None, optimization, drop_last, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.routing, self.aux_loss_coef, self.bilevel = routing, aux_loss_coef, bilevel
        self.optimization, self.drop_last = optimization, drop_last
        if optimization.optimizer == "reference":
            self.model_accepts_loss_kwargs = False  # each micro-batch's own mean loss, divided by the accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if getattr(outputs, "aux_loss", None) is not None:
            raise InternalsChanged(
                "transformers",
                f"{type(model).__name__} returned its own aux_loss although its config's output_router_logits was "
                "switched off for training; the load-balancing term would be counted twice",
            )
        balancing = self.routing.balancing_loss(inputs.get("attention_mask"))
        if balancing is not None:
            loss = loss + self.aux_loss_coef * balancing.to(loss.device)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.bilevel is not None:
            self.bilevel.before_micro_batch()
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.bilevel is not None:
            self.bilevel.after_backward(model, self.state.global_step)
        return loss

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        routers = self.bilevel.parameters if self.bilevel is not None else []
        resting = [parameter.requires_grad for parameter in routers]
        for parameter in routers:  # in the optimizer even when a previous round left them resting
            parameter.requires_grad_(True)
        try:
            if self.optimization.optimizer == "trainer":
                return super().create_optimizer(model)
            self.optimizer = torch.optim.AdamW(
                (self.model if model is None else model).parameters(),
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
            return self.optimizer
        finally:
            for parameter, state in zip(routers, resting, strict=True):
                parameter.requires_grad_(state)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        kind = self.optimization.scheduler
        if kind == "trainer" or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer or self.optimizer
        per_epoch = self.steps_per_epoch()
        steps = int(self.optimization.epochs * per_epoch)
        warmup = steps * self.optimization.warmup_fraction
        if kind == "step":
            gamma = self.optimization.gamma
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma ** (step // per_epoch))
        elif kind == "cosine":
            self.lr_scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps, num_cycles=COSINE_CYCLES)
        else:
            self.lr_scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def steps_per_epoch(self) -> int:
        return max(math.ceil(len(self.get_train_dataloader()) / self.args.gradient_accumulation_steps), 1)

    def get_train_dataloader(self):
        if self.optimization.data_order == "trainer":
            return super().get_train_dataloader()
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        batches = reference_batches(
            len(dataset), self.optimization.reference_gpus, self.args.per_device_train_batch_size, self.drop_last
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=FixedBatches(batches),
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)
