"""Every model argument of `moe_hf`, read and checked once: `MoEOptions.parse(model_args)`.

Each argument has one reader (specs.py: how a value is written; the module that uses the option: what it may be),
and the combinations are checked here, before the model is loaded; what depends on the model (its MoE layers, its
classes, its depth) is checked where the options are applied. Every refusal is an `OptionError` (a `ValueError`)
that names the argument and what it should be.

lm-eval hands model arguments over as strings, numbers and booleans, turning only `true`/`false` into booleans: yes/no
arguments, hf's own included (`trust_remote_code`, `parallelize`, ...), are read strictly (specs.parse_bool), as any
other word would reach the model as a string that Python reads as true (`trust_remote_code=no` would trust it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lm_eval.models.huggingface import HFLM

from moe_rbench_models.classifier import HEADS
from moe_rbench_models.decoding.options import (
    DIVERGENCES,
    SELECTIONS,
    DolaOptions,
    SelfContrastOptions,
    read_dola_layers,
)
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing.interventions import DISABLE_MODES, check_disable_options, read_experts, read_top_k
from moe_rbench_models.specs import (
    LayerSpec,
    parse_bool,
    parse_items,
    read_choice,
    read_integer,
    read_number,
    read_path,
)

# HFLM's own yes/no arguments: annotated `bool` or `bool | None` (as strings: lm-eval's module uses postponed
# annotations; internals.py checks the HFLM methods moe_hf overrides)
HFLM_SWITCHES = frozenset(
    name
    for name, parameter in inspect.signature(HFLM.__init__).parameters.items()
    if parameter.annotation in (bool, bool | None, "bool", "bool | None")
)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    return lambda value, option: read_choice(value, option, choices)


def _label_map(value: Any, option: str) -> tuple[str, ...]:
    """Class ids or names per choice; the names are looked up in the checkpoint's config (classifier.py)."""
    return tuple(parse_items(value, option, expected="class ids or names such as '2,0,1'"))


# the reader of every moe_hf argument (the rest goes to HFLM); a value of None is "not given"
READERS: dict[str, Callable[[Any, str], Any]] = {
    "data_dir": read_path,
    "routing_out": read_path,
    "routing_logits": parse_bool,
    "routing_overwrite": parse_bool,
    "top_k": read_top_k,
    "disable_experts": read_experts,
    "disable_mode": _one_of(DISABLE_MODES),
    "drop_renormalize": parse_bool,
    "force_experts": read_experts,
    "dola_layers": lambda value, option: read_dola_layers(value),
    "dola_relative_top": read_number,
    "dola_post_softmax": parse_bool,
    "dola_final_norm": parse_bool,
    "dola_divergence": _one_of(DIVERGENCES),
    "dola_select": _one_of(SELECTIONS),
    "scmoe_beta": read_number,
    "scmoe_weak_k": read_integer,
    "scmoe_alpha": read_number,
    "head": _one_of(HEADS),
    "label_map": _label_map,
}


@dataclass(frozen=True)
class MoEOptions:
    """`moe_hf`'s own model arguments, read (module docstring of moe_hf.py for what each does), the arguments for
    HFLM (`hf_arguments`, yes/no ones read), and the contrastive decoding they ask for (`decoding`)."""

    data_dir: str | None = None  # the benchmarks' release files, read by the tasks (model arguments reach them)
    routing_out: str | None = None
    routing_logits: bool = False
    routing_overwrite: bool = False
    top_k: LayerSpec | None = None
    disable_experts: LayerSpec | None = None
    disable_mode: str = "reroute"
    drop_renormalize: bool = False
    force_experts: LayerSpec | None = None
    dola_layers: str | tuple[int, ...] | None = None
    dola_relative_top: float | None = None
    dola_post_softmax: bool | None = None
    dola_final_norm: bool | None = None
    dola_divergence: str | None = None
    dola_select: str | None = None
    scmoe_beta: float | None = None
    scmoe_weak_k: int | None = None
    scmoe_alpha: float | None = None
    head: str = "causal_lm"
    label_map: tuple[str, ...] | None = None
    hf_arguments: Mapping[str, Any] = field(default_factory=dict)
    decoding: DolaOptions | SelfContrastOptions | None = None

    @classmethod
    def parse(cls, model_args: Mapping[str, Any]) -> MoEOptions:
        """`model_args`: every model argument but `pretrained`, as lm-eval or a Python caller passes them."""
        ours = {name: READERS[name](value, name) for name, value in model_args.items() if name in READERS}
        hf_arguments = {
            name: value if name not in HFLM_SWITCHES or value is None else parse_bool(value, name)
            for name, value in model_args.items()
            if name not in READERS
        }
        options = cls(**{name: value for name, value in ours.items() if value is not None}, hf_arguments=hf_arguments)
        options._check_combinations()
        return replace(options, decoding=options._contrastive_decoding())

    @property
    def classifier_head(self) -> bool:
        return self.head == "sequence_classification"

    @property
    def moe_options(self) -> dict[str, Any]:
        """The options that change answers or record routing, as given (lm-eval's request cache ignores them)."""
        dola_layers = (
            self.dola_layers if not isinstance(self.dola_layers, tuple) else ",".join(map(str, self.dola_layers))
        )
        options = {
            "routing_out": self.routing_out,
            "top_k": self.top_k.given if self.top_k else None,
            "disable_experts": self.disable_experts.given if self.disable_experts else None,
            "force_experts": self.force_experts.given if self.force_experts else None,
            "dola_layers": dola_layers,
            "scmoe_beta": self.scmoe_beta,
            "head": self.head if self.classifier_head else None,
        }
        return {name: value for name, value in options.items() if value is not None}

    def _check_combinations(self) -> None:
        if self.label_map is not None and not self.classifier_head:
            raise OptionError("label_map applies to head=sequence_classification only")
        if self.classifier_head and (self.routing_out or self.dola_layers is not None or self.scmoe_beta is not None):
            raise OptionError(
                "head=sequence_classification scores with class logits; routing_out, DoLa and SCMoE work "
                "with the causal LM head only"
            )
        if self.routing_logits and not self.routing_out:
            raise OptionError("routing_logits=true needs routing_out=DIR (where the logits are written)")
        check_disable_options(self.disable_mode, self.drop_renormalize)

    def _contrastive_decoding(self) -> DolaOptions | SelfContrastOptions | None:
        dola = self._prefixed("dola_")
        scmoe = self._prefixed("scmoe_")
        if dola and scmoe:
            raise OptionError("DoLa (dola_*) and SCMoE (scmoe_*) are two contrastive decoding methods; choose one.")
        if dola:
            if "layers" not in dola:
                raise OptionError(f"dola_{next(iter(dola))} needs dola_layers (e.g. dola_layers=paper) to turn DoLa on")
            return DolaOptions(**dola)
        if scmoe:
            if "beta" not in scmoe:
                raise OptionError(f"scmoe_{next(iter(scmoe))} needs scmoe_beta (e.g. scmoe_beta=0.5) to turn SCMoE on")
            return SelfContrastOptions(**scmoe)
        return None

    def _prefixed(self, prefix: str) -> dict[str, Any]:
        """The options given among those named `prefix*`, without the prefix."""
        return {
            option.name.removeprefix(prefix): getattr(self, option.name)
            for option in fields(self)
            if option.name.startswith(prefix) and getattr(self, option.name) is not None
        }


def refuse_request_cache(cache_hook, moe_options: dict[str, Any], model: str) -> None:
    """lm-eval's `--use_cache` keys answers by request only, not by model arguments: answers cached by a run with other
    MoE options (or none) would be returned as this configuration's, so the two do not mix."""
    if getattr(cache_hook, "dbdict", None) is not None and moe_options:
        given = ", ".join(f"{name}={value}" for name, value in moe_options.items())
        raise OptionError(
            f"--use_cache cannot be combined with {model}'s MoE options ({given}): lm-eval's cache is keyed by "
            "the request alone, so it would return answers computed under another configuration (and routing "
            "capture would record nothing for cached requests). Run without --use_cache."
        )


MODEL_ARGUMENTS = tuple(READERS)  # moe_hf's own model arguments, besides `pretrained` and HFLM's
