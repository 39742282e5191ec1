"""`moe-rbench steer`: from routing records to an intervention to a re-measured score, in one command.

1. `attribute_experts` over the records (`--routing`, sets `--a` and `--b`) and `select_experts` give the experts to
   steer toward A's behaviour in one configuration, as SteerMoE's `steer_moe` does (src/utils.py l.72-132):
   `--force N` experts more active in A forced on, `--disable M` experts more active in B disabled (swap --a and
   --b to steer toward B: SteerMoE's reverse_effect); `--selection significant` (q < alpha) or `steermoe` (ranked
   by |risk difference|, no test); `--disable_mode reroute` (hard removal) or `steermoe` (SteerMoE's soft edit);
2. the stock lm-eval runs the evaluation given after `--` twice, into `<out>/before` and `<out>/after`, the second
   with `force_experts=`, `disable_experts=` and `disable_mode=` added to its model arguments, both with
   `--log_samples`; `--before RUN` reuses an evaluation already made with the same arguments;
3. `moe-rbench compare`'s metrics give the before/after table: every metric of the evaluated tasks, the change and
   its standard error, paired on the same documents (with the paired test's p-value) where the samples reproduce
   the reported number. Judges run afterwards: `moe-rbench judge --samples <out>` judges both runs.

Writes `<out>/attribution/` (table, heatmap, steering plan, model arguments), `<out>/steer.md/.csv/.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_rbench import tables
from moe_rbench.attribute import (
    AttributionError,
    attribute_experts,
    model_argument,
    select_experts,
    write_attribution,
)
from moe_rbench.compare import Comparison, GateOptions, compare, comparison_table
from moe_rbench.runs import RunError, load_run
from moe_rbench_models.errors import MoERBenchError, OptionError
from moe_rbench_models.routing import config_fingerprint, describe_checkpoint, load_manifest, weights_fingerprint

# moe_hf's model arguments that `steer`'s evaluation may not set, and why: steer's own intervention is the only change
# to the checkpoint's routing, and the evaluation records nothing. DoLa (`dola_*`) is allowed: it reads the same
# forward pass's hidden states at earlier layers, routing unchanged, and before and after both run with it.
REFUSED_MODEL_ARGS = {
    "top_k": "changes which experts process each token",
    "disable_experts": "changes which experts process each token",
    "force_experts": "changes which experts process each token",
    "disable_mode": "steer sets it with --disable_mode",
    "drop_renormalize": "qualifies a disable_experts intervention",
    "scmoe_beta": "SCMoE adds a pass routed to fewer experts, without the steering",
    "scmoe_weak_k": "SCMoE adds a pass routed to fewer experts, without the steering",
    "scmoe_alpha": "SCMoE adds a pass routed to fewer experts, without the steering",
    "routing_out": "it would record routing (and could replace the records being attributed)",
    "routing_logits": "it belongs to routing_out",
    "routing_overwrite": "it belongs to routing_out",
}
# what the routing records say about the checkpoint, compared with the evaluated one
RECORDED_FIELDS = ("architecture", "model_type", "moe_layers", "experts_per_layer", "top_k")


class SteerError(MoERBenchError, RuntimeError):
    """An evaluation of the loop failed; the message says which and where its output is."""


@dataclass(frozen=True)
class Steering:
    model_argument: str  # e.g. force_experts="0:3",disable_experts="1:2",disable_mode=reroute
    rows: list[Comparison]
    before: Path
    after: Path


STEERED_MODELS = ("moe_hf", "moe_vllm")  # the models that take steer's intervention (force/disable_experts)


def check_lm_eval_args(lm_eval_args: list[str], disable_mode: str = "reroute") -> dict:
    """The evaluation must be `moe_hf` or `moe_vllm` (reroute only), without an output path (steer sets it), routing
    capture or an expert intervention of its own; returns its model arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model")
    parser.add_argument("--model_args", "-a", nargs="+", action="extend", default=[])
    parser.add_argument("--output_path", "-o")
    known, _ = parser.parse_known_args(lm_eval_args)
    if known.model not in STEERED_MODELS:
        raise OptionError(
            f"steer evaluates with `--model moe_hf` or `--model moe_vllm` (it adds an expert intervention); the "
            f"lm_eval arguments say --model {known.model}. Give them after `--`: -- --model moe_hf --model_args "
            "pretrained=... --tasks ..."
        )
    if known.model == "moe_vllm" and disable_mode != "reroute":
        raise OptionError(
            f"moe_vllm disables experts with disable_mode=reroute only; steer --disable_mode {disable_mode} needs "
            "--model moe_hf"
        )
    if known.output_path:
        raise OptionError(
            "leave --output_path out of the lm_eval arguments: steer writes to <out>/before and <out>/after"
        )
    model_args = {}
    for text in known.model_args:
        model_args.update(_model_args(text))
    taken = [name for name in REFUSED_MODEL_ARGS if name in model_args]
    if taken:
        reasons = "; ".join(f"{name}: {REFUSED_MODEL_ARGS[name]}" for name in taken)
        raise OptionError(
            f"the lm_eval model arguments set {', '.join(taken)}; steer adds the intervention itself and records no "
            f"routing: it evaluates the recorded checkpoint as it was recorded, with the steering its only change "
            f"({reasons}). Leave them out."
        )
    if not isinstance(model_args.get("pretrained"), str) or not model_args["pretrained"]:
        raise OptionError(
            "the lm_eval arguments name no checkpoint: give --model_args pretrained=<the checkpoint whose routing is "
            "in --routing> after `--`"
        )
    return model_args


def check_checkpoint(routing: str | Path, model_args: dict, samples: str | Path | None) -> None:
    """The evaluated checkpoint is the one whose routing was recorded: the same architecture, MoE layers, experts and
    top-k (the manifest's `model` against the checkpoint's config), and the same config.json fingerprint where the
    records carry one (routing/checkpoint.py); else, for older records, the same name (the manifest's, or the
    `pretrained` of the samples' run)."""
    pretrained = model_args["pretrained"]
    recorded = load_manifest(routing).get("model") or {}
    try:
        evaluated = describe_checkpoint(pretrained, model_args.get("revision"))
    except (OSError, ValueError) as error:  # no such checkpoint, an unknown architecture
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise OptionError(
            f"pretrained={pretrained}: its config cannot be read ({first}); give the checkpoint whose routing is in "
            f"{routing}"
        ) from None
    differences = [
        f"{name} {recorded[name]} vs {evaluated[name]}"
        for name in RECORDED_FIELDS
        if name in recorded and recorded[name] != evaluated[name]
    ]
    name = (recorded.get("checkpoint") or {}).get("name_or_path") or _samples_checkpoint(samples)
    if not differences:
        differences = _identity_differences(recorded, evaluated, name, pretrained)
    if differences:
        raise OptionError(
            f"the routing records in {routing} are of {_described(recorded, name)}, but the evaluation's "
            f"pretrained={pretrained} is {_described(evaluated, None)} ({'; '.join(differences)}): the experts "
            "attributed there would be steered in another model. Evaluate the recorded checkpoint"
            + (f" (pretrained={name})" if name else "")
            + f", or record the routing of {pretrained} and attribute on it"
        )


def _identity_differences(recorded: dict, evaluated: dict, name: str | None, pretrained: str) -> list[str]:
    """How the two checkpoints' fingerprints differ (config.json, weights; those of a recorded `name` taken now for
    records without them); without fingerprints to compare, whether the names differ."""
    identity = recorded.get("checkpoint") or {}
    differences, compared = [], False
    for what, field, fingerprint in (
        ("config.json", "config_sha256", config_fingerprint),
        ("weights", "weights_sha256", weights_fingerprint),
    ):
        ours = identity.get(field) or (fingerprint(name) if name and field not in identity else None)
        theirs = evaluated["checkpoint"][field]
        if ours and theirs:
            compared = True
            differences += [] if ours == theirs else [f"{what} fingerprint {ours} vs {theirs}"]
    if compared or name is None or name == pretrained or _same_folder(name, pretrained):
        return differences
    return [f"the recorded checkpoint is {name}, and their files cannot be compared"]


def _same_folder(first: str, second: str) -> bool:
    a, b = Path(first).expanduser(), Path(second).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _samples_checkpoint(samples: str | Path | None) -> str | None:
    """The `pretrained` of the samples' run (older routing records do not name their checkpoint)."""
    if samples is None:
        return None
    try:
        args = load_run(samples).results.get("config", {}).get("model_args") or {}
    except RunError:
        return None  # the attribution names what is wrong with the samples
    args = _model_args(args) if isinstance(args, str) else args
    return str(args["pretrained"]) if args.get("pretrained") else None


def _described(description: dict, name: str | None) -> str:
    shape = (
        f"{description.get('architecture', 'an unknown architecture')}, {description.get('moe_layers', '?')} MoE "
        f"layers of {description.get('experts_per_layer', '?')} experts, top-{description.get('top_k', '?')}"
    )
    return f"{name} ({shape})" if name else shape


def _model_args(text: str) -> dict:
    """One `--model_args` value as lm-eval reads it: JSON, or `key=value,key=value`."""
    from lm_eval._cli.utils import key_val_to_dict

    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    try:
        return key_val_to_dict(text)
    except ValueError as error:
        raise OptionError(f"--model_args {text!r}: {error}") from None


def check_before(before: Path, model_args: dict) -> None:
    """A reused evaluation must be of the same checkpoint, without an intervention."""
    config = load_run(before).results.get("config", {})
    interventions = (config.get("moe") or {}).get("interventions")
    if interventions:
        raise OptionError(f"--before {before} ran with an intervention ({interventions}); give a run without one")
    recorded = config.get("model_args") or {}
    recorded = _model_args(recorded) if isinstance(recorded, str) else recorded
    if str(recorded.get("pretrained")) != str(model_args.get("pretrained")):
        raise OptionError(
            f"--before {before} evaluated pretrained={recorded.get('pretrained')}, the lm_eval arguments "
            f"pretrained={model_args.get('pretrained')}; give a run of the same checkpoint"
        )


def evaluate(lm_eval_args: list[str], output_path: Path) -> Path:
    """Run the stock lm-eval (through `moe-rbench run`, so our tasks are registered) in its own process."""
    command = [sys.executable, "-m", "moe_rbench.cli", "run", *lm_eval_args, "--output_path", str(output_path)]
    if "--log_samples" not in lm_eval_args and "-s" not in lm_eval_args:
        command.append("--log_samples")
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise SteerError(f"the evaluation into {output_path} exited {finished.returncode} (its output is above)")
    return output_path


@dataclass(frozen=True)
class SteerOptions:
    """What to steer (`select_experts`) and how the attribution is made (`attribute_experts`)."""

    force: int = 0
    disable: int = 0
    selection: str = "significant"
    disable_mode: str = "reroute"
    samples: str | Path | None = None
    span: str = "prompt"
    alpha: float = 0.05
    metric: str | None = None
    pair_by: str | None = None


def check_options(options: SteerOptions) -> None:
    """Something to steer (checked before any evaluation)."""
    if options.force < 1 and options.disable < 1:
        raise OptionError("steer needs --force N and/or --disable M (experts to force on / to switch off)")


def steer(
    routing: str | Path,
    a: str,
    b: str,
    lm_eval_args: list[str],
    out: str | Path,
    options: SteerOptions,
    before: str | Path | None = None,
) -> Steering:
    model_args = check_lm_eval_args(lm_eval_args, options.disable_mode)
    check_options(options)
    check_checkpoint(routing, model_args, options.samples)
    out = Path(out)
    if before:
        check_before(Path(before), model_args)
    for path in ([] if before else [out / "before"]) + [out / "after"]:
        if path.exists() and any(path.iterdir()):
            raise OptionError(f"{path} already holds an evaluation; give another --out, or remove it")
    attribution = attribute_experts(
        routing, a, b, options.samples, options.span, options.alpha, options.metric, options.pair_by
    )
    try:
        plan = select_experts(attribution, options.force, options.disable, options.selection, options.disable_mode)
    except AttributionError as error:
        write_attribution(attribution, out / "attribution", None, str(error))
        raise
    write_attribution(attribution, out / "attribution", plan)
    argument = model_argument(attribution, plan)
    if not argument:
        raise OptionError(
            f"no expert qualifies: none is more active in {a!r} than in {b!r} (to force) or in {b!r} than in {a!r} "
            f"(to disable) at q < {options.alpha} within the layers' limits (see {out / 'attribution'}); nothing to "
            "steer. Record more documents, or use --selection steermoe (ranked by |A - B|, no test)."
        )
    before_path = Path(before) if before else evaluate(lm_eval_args, out / "before")
    after_path = evaluate([*lm_eval_args, "--model_args", argument], out / "after")
    baseline, steered = load_run(before_path, "before"), load_run(after_path, "after")
    gate = compare(baseline, steered, GateOptions(max_drop=math.inf, paired=True, tasks="*"))
    steering = Steering(argument, gate.rows, baseline.path, steered.path)
    write_steering(steering, out)
    return steering


def markdown(steering: Steering) -> str:
    return (
        f"### moe-rbench steer: `{steering.model_argument}`\n\n"
        f"before: {steering.before}\nafter: {steering.after}\n\n"
        "The standard error is paired (per-document differences) where the test is McNemar or paired bootstrap, "
        "else the two runs' combined.\n\n" + comparison_table(steering.rows, ("before", "after"), status=False)
    )


def write_steering(steering: Steering, out: Path) -> list[Path]:
    records = [{**asdict(row), "change": row.change} for row in steering.rows]
    fields = ["name", "higher_is_better", "baseline", "candidate", "change", "stderr", "p_value", "test"]
    meta = {"model_argument": steering.model_argument, "before": str(steering.before), "after": str(steering.after)}
    return tables.save_table(out, "steer", fields, records, markdown(steering), meta)
