"""Expert dropout for `moe-rbench finetune --expert_dropout P`: dropout with rate P on the interim (d_ff) activations
inside each routed expert, the input of the expert's down projection, in training mode only.

This is the Switch Transformer's expert dropout (Fedus et al. 2022, section 2.4: "a smaller dropout rate at non-expert
layers and a much larger dropout rate at the interim feed-forward computation at each expert layer"). The MoE-RBench
reference (UNITES-Lab/MoE-RBench @b110cc5, `robustness-evaluation/`) places it per model:

- Switch: `SwitchTransformersLayerFF` (`switch_transformers/switch_transformers.py` l.594-628) replaces the FF
  sub-layer's output dropout by `nn.Dropout(config.expert_dropout_rate)`, on the output of the whole (dense or
  sparse) FF layer before the residual: not inside the experts (and on dense FF layers too);
- LLaMA-MoE: `LinearGLUExperts.forward` (`llama_moe/modeling_llama_moe_hf.py` l.606 and l.680) drops the `up`
  projection inside each expert before `gate * up`: a mask on the interim activations, as here;
- MoLM: `MoE.forward` (`moduleformer/utils/moe.py` l.63 and l.139) drops each expert's gated output (after the down
  projection and the routing weight) before the experts' outputs are summed.

transformers 5 stores the experts of a layer as fused tensors (`gate_up_proj`, `down_proj` of shape [experts, ...])
and runs them through one of several kernels (`experts_implementation`: `grouped_mm`, the default; `eager`, a loop
over experts; `batched_mm`; Llama4's dense `bmm`). Rather than one copy of each kernel, an `InterimDropout` mode
(a `TorchFunctionMode`, active only while the experts module runs in training mode) follows the tensors derived from
the down-projection parameter (indexed, transposed, viewed) and, at the operation that multiplies activations by
one of them (`linear`, `matmul`/`@`, `bmm`, `grouped_mm`), applies `F.dropout(activations, P)` to the other operand.
Shared experts and dense MLPs are other modules and are left alone. An experts module without a known
down-projection parameter is refused before training (`OptionError`); a training forward in which the down
projection was never seen multiplying activations stops the run (`InternalsChanged`): never a silent no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import InternalsChanged
from moe_rbench_models.routing import HookSet, MoELayer

# where each architecture keeps its experts' down projection: `down_proj` (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3,
# GPT-OSS, PhiMoE, GraniteMoE, Jamba, Llama4), `mlp.w2` (DBRX)
DOWN_PROJECTIONS = ("down_proj", "mlp.w2")
# operations that only re-index or re-shape the down projection: their output is followed too
_VIEWS = frozenset(
    {
        "__getitem__",
        "__get__",
        "transpose",
        "t",
        "view",
        "permute",
        "reshape",
        "contiguous",
        "to",
        "unsqueeze",
        "squeeze",
        "select",
        "index_select",
        "narrow",
        "expand",
        "float",
        "bfloat16",
        "half",
    }
)
# products whose activations are the first operand (the weight is the second), and symmetric products
_WEIGHT_SECOND = frozenset({"linear", "_grouped_mm", "grouped_mm", "grouped_mm_fallback"})
_PRODUCTS = frozenset({"matmul", "__matmul__", "__rmatmul__", "bmm", "mm"})


def down_projection(experts: nn.Module) -> tuple[str, nn.Parameter] | None:
    """The experts module's down-projection parameter and its name, or None when it has none we know."""
    for name in DOWN_PROJECTIONS:
        try:
            parameter = experts.get_parameter(name)
        except AttributeError:
            continue
        return name, parameter
    return None


def experts_module(layer: MoELayer) -> nn.Module:
    """The routed experts of an MoE layer, with a known down projection; an OptionError naming the fix otherwise."""
    experts = getattr(layer.block, "experts", None)
    if not isinstance(experts, nn.Module) or down_projection(experts) is None:
        found = type(experts).__name__ if isinstance(experts, nn.Module) else "no `experts` module"
        raise OptionError(
            f"--expert_dropout: layer {layer.key} ({type(layer.block).__name__}) has {found} with a down-projection "
            f"parameter named {' or '.join(DOWN_PROJECTIONS)}, where the interim activations are dropped; this "
            "architecture is not supported for expert dropout: train without it (--expert_dropout 0)"
        )
    return experts


class InterimDropout(TorchFunctionMode):
    """Active while one experts module runs: dropout on the activations its down projection multiplies."""

    def __init__(self, weight: torch.Tensor, rate: float) -> None:
        super().__init__()
        self.rate = rate
        self._followed: dict[int, torch.Tensor] = {}  # id -> tensor (kept alive so that ids stay unique)
        self.weight = weight
        self.applied = 0

    def start(self) -> None:
        self._followed = {id(self.weight): self.weight}
        self.applied = 0

    def stop(self) -> None:
        self._followed = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        followed = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor) and id(arg) in self._followed]
        if followed and (name in _WEIGHT_SECOND or name in _PRODUCTS):
            args = self._drop_activations(name, args, followed)
        output = func(*args, **kwargs)
        if followed and isinstance(output, torch.Tensor) and not (name in _WEIGHT_SECOND or name in _PRODUCTS):
            if name not in _VIEWS:
                raise InternalsChanged(
                    "transformers",
                    f"the experts' down projection went through `{name}`, an operation expert dropout does not know; "
                    "it cannot tell which operand holds the interim activations",
                )
            self._followed[id(output)] = output
        return output

    def _drop_activations(self, name: str, args: tuple, followed: list[int]) -> tuple:
        if len(followed) != 1 or len(args) < 2 or (name in _WEIGHT_SECOND and followed != [1]):
            raise InternalsChanged(
                "transformers",
                f"`{name}` got the experts' down projection as operand(s) {followed}; expert dropout expects it as the "
                "weight operand of a product with the interim activations",
            )
        position = 0 if followed == [1] else 1
        self.applied += 1
        dropped = F.dropout(args[position], self.rate, training=True)
        return (*args[:position], dropped, *args[position + 1 :])


def install(hooks: HookSet, layers: list[MoELayer], rate: float) -> None:
    """Expert dropout with `rate` on every MoE layer's routed experts, while they run in training mode."""
    for layer in layers:
        experts = experts_module(layer)
        name, weight = down_projection(experts)
        mode = InterimDropout(weight, rate)

        def before(module, args, mode=mode):
            if module.training:
                mode.start()
                mode.__enter__()

        def after(module, args, output, mode=mode, layer=layer, name=name):
            if not module.training:
                return
            mode.__exit__(None, None, None)
            mode.stop()
            if output is None:  # the forward failed: its own error is the one to see
                return
            tokens = next((arg.numel() for arg in args if isinstance(arg, torch.Tensor)), 0)
            if tokens and not mode.applied:
                raise InternalsChanged(
                    "transformers",
                    f"{type(module).__name__} (layer {layer.key}) ran without multiplying activations by its down "
                    f"projection `{name}`; expert dropout was not applied",
                )

        hooks._handles.append(experts.register_forward_pre_hook(before))
        hooks._handles.append(experts.register_forward_hook(after, always_call=True))
