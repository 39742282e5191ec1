"""One run's routing in `moe_hf`: the interventions its options ask for and the capture of every request.

`RoutingSession` builds, from the model and its `MoEOptions`, the plan (interventions.py), the hooks that apply and
read it (hooks.py), and with `routing_out` the `RequestCapture` (requests.py) with its `RecordWriter` (writer.py);
`moe_hf` only tells the capture what lm-eval does. `close()` publishes the records and restores the model.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from moe_rbench_models.routing.discovery import MoELayer, describe_moe, require_moe
from moe_rbench_models.routing.hooks import RoutingHooks
from moe_rbench_models.routing.interventions import LayerIntervention, plan_interventions
from moe_rbench_models.routing.requests import RequestCapture
from moe_rbench_models.routing.writer import RecordWriter, new_run_id

if TYPE_CHECKING:  # options.py imports the routing package
    from moe_rbench_models.options import MoEOptions

# the options that need MoE layers (SCMoE's are checked where it is built, decoding/__init__.py)
ROUTING_OPTIONS = ("routing_out", "top_k", "disable_experts", "force_experts")


class RoutingSession:
    def __init__(self, lm, layers: list[MoELayer], options: MoEOptions) -> None:
        """`lm`: the HFLM whose model is routed (its tokenizer, lengths and processes serve the capture)."""
        for option in ROUTING_OPTIONS:
            if getattr(options, option) is not None:
                require_moe(layers, option, lm.model)
        self.layers, self.options = layers, options
        self.plan = plan_interventions(
            layers,
            options.top_k,
            options.disable_experts,
            options.disable_mode,
            options.drop_renormalize,
            options.force_experts,
        )
        self.hooks: RoutingHooks | None = None
        if self.plan or options.routing_out:
            self.hooks = RoutingHooks(
                layers, self.plan, record=bool(options.routing_out), keep_logits=options.routing_logits
            ).install()
        try:
            self.capture = self._request_capture(lm) if options.routing_out else None
        except BaseException:
            self._remove_hooks()  # the model may be the caller's own object: leave it as it came
            raise

    @property
    def interventions(self) -> dict[str, Any]:
        """The interventions as asked for (the specs as given) and per layer, for the results and the records."""
        return describe_interventions(self.options, self.plan)

    def report(self) -> dict[str, Any]:
        """The results' `config.moe` entries of the routing; publishes the records (lm-eval asks for the model's
        info once the evaluation has finished)."""
        report: dict[str, Any] = {}
        if self.plan:
            report["interventions"] = self.interventions
        if self.capture is not None:
            report["routing"] = published(self.capture.writer)
        return report

    def close(self) -> None:
        """Publish the records (main process) and remove every hook, restoring the model's routers."""
        if self.capture is not None:
            self.capture.writer.commit()
            self.capture = None
        self._remove_hooks()

    def discard(self) -> None:
        """After a failed evaluation: publish nothing, so that the earlier records stay; `close()` still follows."""
        self.capture = None

    def abandon(self) -> None:
        """The model failed to set up after this session: release the routing directory, publish nothing and
        restore the routers."""
        if self.capture is not None:
            self.capture.writer.abandon()
            self.capture = None
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    def _request_capture(self, lm) -> RequestCapture:
        writer = open_writer(
            self.options, self.layers, self.plan, describe_moe(lm.model, self.layers), lm.rank, lm.world_size
        )
        decoder_start = lm.model.config.decoder_start_token_id if lm.backend == "seq2seq" else None
        return RequestCapture(self.hooks, writer, self.layers, lm.max_length, decoder_start, lm.tok_decode)


def published(writer: RecordWriter) -> dict[str, Any]:
    """Publish a run's records (main process) and describe them for the results' `config.moe.routing`."""
    writer.commit()
    return {"out": str(writer.out_dir), "run": writer.run_id, "summary": writer.summary()}


def describe_interventions(options: MoEOptions, plan: dict[str, LayerIntervention]) -> dict[str, Any]:
    """The interventions as asked for (the specs as given) and per layer, for the results and the records."""
    return {
        "top_k": options.top_k.given if options.top_k else None,
        "disable_experts": options.disable_experts.given if options.disable_experts else None,
        "disable_mode": options.disable_mode,
        "drop_renormalize": options.drop_renormalize,
        "force_experts": options.force_experts.given if options.force_experts else None,
        "per_layer": {
            key: {"top_k": change.top_k, "disabled": sorted(change.disabled), "forced": sorted(change.forced)}
            for key, change in plan.items()
        },
    }


def open_writer(
    options: MoEOptions,
    layers: list[MoELayer],
    plan: dict[str, LayerIntervention],
    model: dict[str, Any],
    rank: int,
    world_size: int,
) -> RecordWriter:
    """The record writer of a run with `routing_out` (its header: `model`, describe_moe's summary, the
    interventions and whether logits are kept), shared by moe_hf and moe_vllm."""
    described = [
        {
            "key": layer.key,
            "name": layer.name,
            "side": layer.side,
            "layer": layer.layer,
            "num_experts": layer.num_experts,
            "top_k": plan[layer.key].top_k or layer.top_k if layer.key in plan else layer.top_k,
        }
        for layer in layers
    ]
    header = {
        "model": model,
        "interventions": describe_interventions(options, plan) if plan else None,
        "logits": options.routing_logits,
    }
    return RecordWriter(
        options.routing_out,
        described,
        json.loads(json.dumps(header, default=str)),
        rank,
        world_size,
        options.routing_overwrite,
        shared_run_id(world_size),
    )


def shared_run_id(world_size: int) -> str:
    """One run id for every process: the main process's (all processes build the model, so this collective cannot
    be skipped)."""
    run_id = [new_run_id()]
    if world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(run_id, src=0)
    return run_id[0]
