"""`moe-rbench`: the command line of moe-rbench.

moe-rbench run <lm_eval arguments>   lm-eval with `moe_hf` and the moe_rbench tasks registered explicitly
moe-rbench data [--data_dir DIR]     every dataset: found where, or how to obtain it
moe-rbench tiny-model ARCH DIR [--set KEY=VALUE ...]
                                     a tiny random-weight checkpoint of a real architecture (offline)
moe-rbench trace --routing DIR --id TASK --ood TASK [TASK ...] --out OUT
                                     routing shift between an ID task and OOD tasks (table and heatmap)
moe-rbench attribute --routing DIR --a SET --b SET [--samples PATH] [--span S] [--pair_by P] --out OUT
                                     the experts more (or less) active in set A than in B: ranked table, heatmap,
                                     model arguments (SET: task patterns, judge:FIELD=VALUE, correct, wrong, choice:N)
moe-rbench steer --routing DIR --a SET --b SET --force N --disable M --out OUT -- <lm_eval arguments>
                                     attribute, re-evaluate with A's experts forced and B's disabled, before/after
moe-rbench judge --judge JUDGE --samples PATH [--out DIR]
                                     judge the safety tasks' generations (resumable), with a summary
moe-rbench judge --judge JUDGE --validate LABELS (.csv, .json, .jsonl)
                                     a judge against human labels: balanced accuracy, precision, recall
moe-rbench judge --agreement PATH    Cohen's kappa of the judges that judged the same samples
moe-rbench finetune MODEL OUT [--preset SCRIPT] --protocol classify --dataset sst2|anli|snli_hard|boss_* | instruct
                  [--router freeze] [--bilevel K] [--expert_dropout P] [--aux_loss_coef C] [--top_k K]
                                     MoE-RBench's fine-tuning protocols with its MoE knobs (transformers' Trainer)
moe-rbench report RUN [RUN ...] [--pair MOE=DENSE ...] --out DIR
                                     MoE-vs-dense tables, figures and report.md from lm-eval outputs
moe-rbench compare --baseline RUN --candidate RUN [--max-drop 0.01] [--paired] [--allow-missing]
                                     CI gate: exits 0 on a pass, 1 when a reliability metric got worse, was lost
                                     or is invalid, 2 on a usage error, 3 when the runs are not comparable
"""

from __future__ import annotations

import argparse
import sys

from moe_rbench_models.errors import MoERBenchError


def run_lm_eval(lm_eval_args: list[str]) -> None:
    """Run the stock lm-eval command line with our hook installed, whether or not the start-up file ran
    (e.g. under `python -S`, or with MOE_RBENCH_STARTUP_HOOK=0)."""
    from moe_rbench import hook

    hook.install(force=True)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *lm_eval_args]
    cli_evaluate()


def show_data(args: argparse.Namespace) -> int:
    from moe_rbench_tasks.data import DATA_DIR_ENV, data_status, resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    print(f"data directory: {root if root else f'none (set {DATA_DIR_ENV} or pass --data_dir to read local files)'}")
    missing = 0
    for row in data_status(root):
        missing += row["status"].startswith("MISSING")
        print(f"\n{row['dataset']}  (tasks: {row['tasks']})")
        for key in ("status", "hub", "obtain", "license"):
            print(f"  {key + ':':9}{row[key]}")
    return 1 if missing else 0


def _tiny_architectures() -> list[str]:
    from moe_rbench_models.tiny import ARCHITECTURES

    return list(ARCHITECTURES)


def build_tiny(args: argparse.Namespace) -> int:
    import ast
    from pathlib import Path

    from huggingface_hub.errors import StrictDataclassError

    from moe_rbench_models.errors import OptionError
    from moe_rbench_models.tiny import build_tiny_model

    overrides = {}
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals:
            raise OptionError(f"--set expects KEY=VALUE (e.g. num_hidden_layers=4), got {setting!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    overrides = _check_tiny_overrides(args.architecture, overrides)
    out = Path(args.out_dir)
    existing = next(path for path in (out, *out.absolute().parents) if path.exists())
    if not existing.is_dir():  # save_pretrained would only warn, and write nothing
        where = "is a file" if existing == out else f"is inside {existing}, a file"
        raise OptionError(f"OUT_DIR {out} {where}; give a directory for the checkpoint")
    try:
        print(build_tiny_model(args.architecture, out, tokenizer=args.tokenizer, **overrides))
    except StrictDataclassError as error:  # a value the config's own check refuses
        raise OptionError(f"--set: {' '.join(str(error).split())}") from None
    except PermissionError as error:
        raise OptionError(f"OUT_DIR {out} cannot be written ({error.strerror}: {error.filename})") from None
    return 0


def _check_tiny_overrides(architecture: str, overrides: dict) -> dict:
    """The --set values, each of the type of the field's value in the tiny config (a whole number where a float is
    expected is made one; a field without a value is not checked)."""
    from transformers import AutoConfig

    from moe_rbench_models.errors import OptionError
    from moe_rbench_models.tiny import ARCHITECTURES

    if architecture not in ARCHITECTURES:
        return overrides  # build_tiny_model names the architectures
    config = AutoConfig.for_model(architecture, **ARCHITECTURES[architecture])
    checked = {}
    for key, value in overrides.items():
        default = getattr(config, key, None)
        expected = None if default is None or value is None else _expected_type(default, value)
        if expected:
            raise OptionError(
                f"--set {key}={value}: {key} ({type(default).__name__}, {default!r} in the tiny {architecture}) "
                f"takes {expected}, e.g. --set {key}={default!r}"
            )
        checked[key] = float(value) if isinstance(default, float) and value is not None else value
    return checked


def _expected_type(default, value) -> str | None:
    """What `value` should be, as the field's `default` is; None when it fits."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, int):
        return None if number and isinstance(value, int) else "a whole number"
    if isinstance(default, float):
        return None if number else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    return None


def trace(args: argparse.Namespace) -> int:
    from moe_rbench.tables import check_output_directory
    from moe_rbench.trace import pairing_notes, trace_routing, write_trace

    check_output_directory(args.out)
    rows = trace_routing(args.routing, args.id_task, args.ood)
    for note in pairing_notes(rows, args.id_task):
        print(f"note: {note}", file=sys.stderr)
    for path in write_trace(rows, args.out, args.id_task):
        print(path)
    return 0


REMOVED_STEERING_FLAGS = (
    "--direction and --top were replaced by --force N / --disable M, which steer toward A in one configuration as "
    "SteerMoE does: `--direction force --top N` is `--force N`; `--direction disable --top N` (switch off the "
    "experts more active in A) is `--a <B> --b <A> --disable N` (swap the sets)"
)


def _check_removed_flags(args: argparse.Namespace) -> None:
    from moe_rbench_models.errors import OptionError

    if args.direction is not None or args.top is not None:
        raise OptionError(REMOVED_STEERING_FLAGS)


def attribute(args: argparse.Namespace) -> int:
    from moe_rbench.attribute import AttributionError, attribute_experts, select_experts, write_attribution
    from moe_rbench.tables import check_output_directory

    _check_removed_flags(args)
    check_output_directory(args.out)
    attribution = attribute_experts(
        args.routing, args.a, args.b, args.samples, args.span, args.alpha, args.metric, args.pair_by
    )
    force, disable = (10 if n is None else n for n in (args.force, args.disable))
    try:
        plan, note = select_experts(attribution, force, disable, args.selection, args.disable_mode), ""
    except AttributionError as error:
        plan, note = None, str(error)
    paths = write_attribution(attribution, args.out, plan, note)
    print(paths[0].read_text(encoding="utf-8"))
    for path in paths:
        print(path)
    if note:  # the table is written; the selection asked for could not be made
        print(f"moe-rbench attribute: {note}", file=sys.stderr)
        return 2
    return 0


def steer(args: argparse.Namespace) -> int:
    from moe_rbench.steer import SteerOptions, markdown, steer
    from moe_rbench.tables import check_output_directory

    _check_removed_flags(args)
    check_output_directory(args.out)
    options = SteerOptions(
        force=args.force or 0,
        disable=args.disable or 0,
        selection=args.selection,
        disable_mode=args.disable_mode,
        samples=args.samples,
        span=args.span,
        alpha=args.alpha,
        metric=args.metric,
        pair_by=args.pair_by,
    )
    steering = steer(args.routing, args.a, args.b, args.lm_eval_args, args.out, options, args.before)
    print(markdown(steering))
    print(f"tables: {args.out}/steer.md, attribution: {args.out}/attribution/attribution.md")
    return 0


def judge(args: argparse.Namespace) -> int:
    if args.agreement:
        from moe_rbench.judge_checks import write_agreement

        print("\n\n".join(write_agreement(args.agreement)))
        return 0
    from moe_rbench_models.errors import OptionError

    if not args.judge:
        raise OptionError("--samples and --validate need --judge NAME (`moe-rbench judge --help` lists them)")
    from moe_rbench_tasks.judges import load_judge

    judge_ = load_judge(args.judge, **_judge_options(args.judge_args))
    if args.validate:
        return _validate(args, judge_)
    from moe_rbench.judging import judge_samples

    for path in judge_samples(args.samples, judge_, args.out, batch_size=args.batch_size):
        print(path)
    return 0


def _judge_options(judge_args: list[str], option: str = "--judge_args") -> dict:
    from lm_eval._cli.utils import key_val_to_dict

    from moe_rbench_models.errors import OptionError

    options = {}
    for arg in judge_args:
        try:
            options |= key_val_to_dict(arg)
        except ValueError as error:
            raise OptionError(
                f"{option} {arg!r}: {error}; a value with commas goes in brackets, e.g. refusal_actions=[0,4]"
            ) from None
    return options


def _validate(args: argparse.Namespace, judge_) -> int:
    import json
    from pathlib import Path

    from moe_rbench.judge_checks import DEFAULT_SCHEMES, LabelScheme, label_format, validate
    from moe_rbench.judging import output_directory
    from moe_rbench_models.errors import OptionError

    columns = {}
    for setting in args.columns:
        key, equals, column = setting.partition("=")
        if not equals or key not in ("prompt", "completion", "label"):
            raise OptionError(f"--columns expects prompt=, completion= or label= COLUMN, got {setting!r}")
        columns[key] = column
    default = DEFAULT_SCHEMES[label_format(args.validate)]
    given = (args.positive, args.negative, args.apart)
    scheme = LabelScheme(
        *(
            tuple(v for v in values.split(",") if v) if values is not None else fallback
            for values, fallback in zip(given, (default.positive, default.negative, default.apart), strict=True)
        )
    )
    out = output_directory(Path(args.out), "--out") if args.out else None  # before judging: fail early
    result = validate(judge_, args.validate, columns, scheme, args.field)
    print(result.text())
    if out:
        path = out / f"validation_{judge_.name}.json"
        path.write_text(json.dumps(result.as_dict(), indent=1))
        print(path)
    return 0


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


def finetune(args: argparse.Namespace) -> int:
    from moe_rbench.finetune import finetune as run_finetune
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
        **_judge_options(args.training_args, "--training_args"),
    }
    for note in PRESETS[args.preset].notes if args.preset else ():
        print(f"preset {args.preset}: {note}", file=sys.stderr)
    result = run_finetune(
        args.model, args.out, recipe, args.data_dir, args.limit, optimization, args.preset, args.overwrite, **training
    )
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    print(f"recipe: {result.label}; trained with {result.recipe}; {optimization}; data: {result.data}")
    if losses:
        print(f"training loss: {losses[0]:.4f} (first logged) -> {losses[-1]:.4f} (last logged)")
    print(result.path)
    return 0


def report(args: argparse.Namespace) -> int:
    from moe_rbench.report import make_report
    from moe_rbench.tables import check_output_directory

    check_output_directory(args.out)
    print(make_report(args.runs, args.pair, args.out, args.labels))
    return 0


def compare(args: argparse.Namespace) -> int:
    """Exit status: 0 pass, 1 a metric got worse, was lost or is invalid, 2 a usage error (an option, a run that
    cannot be read: raised to `main`), 3 the runs are not comparable (a summary line, then one line per difference)."""
    from moe_rbench.compare import EXIT_INCOMPARABLE, GateOptions, Incomparable, run_compare

    options = GateOptions(
        args.max_drop, tuple(args.metrics or ()), args.ignore_within_stderr, args.allow_missing, args.paired, args.alpha
    )
    try:
        summary, status = run_compare(args.baseline, args.candidate, options)
    except Incomparable as error:
        print(f"moe-rbench compare: {error.summary}", file=sys.stderr)
        for line in error.details():
            print(f"  {line}", file=sys.stderr)
        return EXIT_INCOMPARABLE
    print(summary)
    return status


COMMANDS = {
    "data": show_data,
    "tiny-model": build_tiny,
    "trace": trace,
    "attribute": attribute,
    "steer": steer,
    "judge": judge,
    "finetune": finetune,
    "report": report,
    "compare": compare,
}


def _attribution_options(parser: argparse.ArgumentParser, steering: bool) -> None:
    parser.add_argument("--routing", required=True, help="a routing_out directory of moe_hf")
    sets = (
        "task patterns ('moe_rbench_style_*'), judge:FIELD=VALUE (judge:refusal=true), correct, wrong, or choice:N "
        "(the N-th request of each document: the N-th answer choice; choice:N@TASKS for some tasks)"
    )
    parser.add_argument("--a", required=True, help=f"set A: {sets}")
    parser.add_argument("--b", required=True, help="set B, as --a")
    parser.add_argument(
        "--samples",
        help="the lm_eval --output_path of the recorded run (--log_samples), for correct/wrong and judge:... sets",
    )
    parser.add_argument(
        "--span",
        default="prompt",
        choices=("prompt", "continuation", "scored", "all"),
        help="positions counted: those whose input is a prompt token (default) or a continuation token (SteerMoE's "
        "target tokens: the last continuation token is never an input), those that score or produce the "
        "continuation tokens (scored: what `continuation` meant in earlier releases), or all",
    )
    parser.add_argument(
        "--pair_by",
        choices=("document", "doc_key"),
        help="paired sets, as SteerMoE's: units of one document (--a choice:0 --b choice:1), or documents with the "
        "same aligned id (an SST-2 sentence and its styled version); only complete pairs are used",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="false discovery rate (default 0.05)")
    count = "" if steering else " (default 10)"
    parser.add_argument(
        "--force", type=int, metavar="N", help=f"experts more active in A to force on{count}: steering toward A"
    )
    parser.add_argument(
        "--disable", type=int, metavar="M", help=f"experts more active in B to switch off{count}: steering toward A"
    )
    parser.add_argument(
        "--selection",
        default="significant",
        choices=("significant", "steermoe"),
        help="significant (default): experts with q < alpha, within each layer's limits; steermoe: SteerMoE's, the "
        "top rows by |A - B| without a test, a row beyond its layer's limit skipped but counted",
    )
    parser.add_argument(
        "--disable_mode",
        default="reroute",
        choices=("reroute", "steermoe"),
        help="how moe_hf disables: reroute (default; removed from the router, at least k experts must remain) or "
        "steermoe (SteerMoE's edit: the expert's log-probability set to the token's minimum - 0.01; no limit)",
    )
    parser.add_argument("--top", type=int, help=argparse.SUPPRESS)  # removed: REMOVED_STEERING_FLAGS
    parser.add_argument("--direction", help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True, help="output directory")
    if steering:
        parser.add_argument("--before", help="an existing evaluation with the same lm_eval arguments (skip re-running)")
    parser.add_argument("--metric", help="correct/wrong: the 0/1 per-document metric (default: acc or exact_match)")


def _finetune_options(commands) -> None:
    """`moe-rbench finetune`'s options; None when not given, so that a preset's value (or the reference's default,
    `configs/training.py` of UNITES-Lab/MoE-RBench) applies."""
    from moe_rbench.finetune_presets import PRESETS, UNSUPPORTED
    from moe_rbench_tasks.training import TRAIN_SETS

    tuning = commands.add_parser(
        "finetune",
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
    _input_output_options(tuning)
    _optimization_options(tuning)


def _input_output_options(tuning: argparse.ArgumentParser) -> None:
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


def _optimization_options(tuning: argparse.ArgumentParser) -> None:
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lm_eval_args: list[str] = []
    if argv[:1] == ["steer"] and "--" in argv:  # what follows `--` belongs to lm-eval
        cut = argv.index("--")
        argv, lm_eval_args = argv[:cut], argv[cut + 1 :]
    if argv[:1] == ["run"]:  # everything after `run` belongs to lm-eval, flags included
        try:
            run_lm_eval(argv[1:])
        except MoERBenchError as error:
            print(f"moe-rbench run: {error}", file=sys.stderr)
            return 2
        return 0
    parser = argparse.ArgumentParser(
        prog="moe-rbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run lm-eval (`lm_eval` arguments follow) with moe_hf and our tasks registered")
    data = commands.add_parser("data", help="list every dataset, where it is found and how to obtain it")
    data.add_argument("--data_dir", help="data directory (default: $MOE_RBENCH_DATA_DIR)")
    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight checkpoint (no download)")
    tiny.add_argument("architecture", help="one of: " + ", ".join(_tiny_architectures()))
    tiny.add_argument("out_dir")
    tiny.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config field to change, e.g. --set num_hidden_layers=4 --set initializer_range=0.3",
    )
    tiny.add_argument(
        "--tokenizer", help="a tokenizer directory to use instead of the built-in one (sets the vocabulary)"
    )
    tracing = commands.add_parser("trace", help="routing shift between an ID task and OOD tasks, per MoE layer")
    tracing.add_argument("--routing", required=True, help="a routing_out directory of moe_hf")
    tracing.add_argument("--id", required=True, dest="id_task", help="in-distribution task, e.g. moe_rbench_sst2")
    tracing.add_argument("--ood", required=True, nargs="+", help="OOD tasks or patterns, e.g. 'moe_rbench_style_*'")
    tracing.add_argument("--out", required=True, help="directory for trace.md, trace.csv, trace.json, trace.png")
    for name, help_text in (
        ("attribute", "the experts more active in one set of requests than another (ranked table, heatmap)"),
        ("steer", "attribute, then re-evaluate with A's experts forced and B's disabled: a before/after table"),
    ):
        _attribution_options(commands.add_parser(name, help=help_text), steering=name == "steer")
    from moe_rbench_tasks.judges import JUDGES

    judging = commands.add_parser(
        "judge", help="judge the safety tasks' generations (resumable); validate a judge; judges' agreement"
    )
    what = judging.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", help="an lm_eval --output_path directory, or one samples file, to judge")
    what.add_argument(
        "--validate",
        metavar="LABELS",
        help="check the judge against human labels: a CSV (XSTest's format by default), a chatgpt-refusals .json or "
        "an RBR gold .jsonl",
    )
    what.add_argument(
        "--agreement", metavar="PATH", help="Cohen's kappa between the judges whose judged files are under PATH"
    )
    judging.add_argument("--judge", choices=JUDGES)
    judging.add_argument(
        "--out",
        help="output directory: judged files, for one run (default: <run folder>/judged/<stamp>); with --validate, "
        "where validation_<judge>.json goes",
    )
    judging.add_argument("--batch_size", type=positive_int, default=16)
    judging.add_argument(
        "--judge_args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="judge options, e.g. model=/models/LlamaGuard-7b device=cuda base_url=http://...",
    )
    judging.add_argument(
        "--columns",
        nargs="*",
        default=[],
        metavar="KEY=COLUMN",
        help="--validate: the CSV's columns, e.g. prompt=question completion=response label=human "
        "(default: prompt, completion, final_label)",
    )
    judging.add_argument(
        "--positive",
        help="--validate: label values of a yes, comma-separated (default: XSTest's 2_full_refusal; chatgpt-refusals' "
        "rejected; RBR gold's declined)",
    )
    judging.add_argument(
        "--negative",
        help="--validate: label values of a no (default: 1_full_compliance; complied, disclaimed, contradicted, "
        "dontknow; fully_complied)",
    )
    judging.add_argument(
        "--apart",
        help="--validate: label values reported apart (default: 3_partial_refusal; redirected, counseling, incoherent; "
        "partially_complied, evaded)",
    )
    judging.add_argument("--field", help="--validate: the judge's yes/no field (default: its refusal verdict)")
    _finetune_options(commands)
    reporting = commands.add_parser("report", help="MoE-vs-dense tables and figures from lm-eval output directories")
    reporting.add_argument("runs", nargs="+", help="lm_eval --output_path directories (or results files)")
    reporting.add_argument("--label", action="append", dest="labels", help="a label per run (default: model name)")
    reporting.add_argument("--pair", action="append", default=[], metavar="MOE=DENSE", help="compare two runs by label")
    reporting.add_argument("--out", required=True, help="directory for report.md, tables and figures")
    comparing = commands.add_parser(
        "compare",
        help="CI gate: exit 0 on a pass, 1 when a reliability metric got worse, was lost or is invalid, 2 on a "
        "usage error (an option, a run that cannot be read), 3 when the runs are not comparable",
    )
    comparing.add_argument("--baseline", required=True)
    comparing.add_argument("--candidate", required=True)
    comparing.add_argument("--max-drop", type=float, default=0.01, help="tolerated drop (default 0.01)")
    comparing.add_argument("--metrics", nargs="+", help="only metrics matching these patterns, e.g. 'moe_rbench_ood/*'")
    comparing.add_argument(
        "--ignore-within-stderr",
        action="store_true",
        help="unpaired rule: pass drops no larger than the combined standard error",
    )
    comparing.add_argument(
        "--allow-missing", action="store_true", help="list metrics the candidate lacks instead of failing on them"
    )
    comparing.add_argument(
        "--paired",
        action="store_true",
        help="decide drops with a paired test on the documents both runs logged (--log_samples)",
    )
    comparing.add_argument("--alpha", type=float, default=0.05, help="significance level of --paired (default 0.05)")
    args = parser.parse_args(argv)
    args.lm_eval_args = lm_eval_args
    if args.command == "steer" and not lm_eval_args:
        parser.error("steer needs the evaluation after `--`: -- --model moe_hf --model_args pretrained=... --tasks ...")
    if args.command == "report" and args.labels and len(args.labels) != len(args.runs):
        parser.error("give one --label per run, or none")
    try:
        return COMMANDS[args.command](args)
    except MoERBenchError as error:  # our own errors name the problem and the fix: one line, no traceback
        print(f"moe-rbench {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
