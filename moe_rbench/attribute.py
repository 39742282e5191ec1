"""`moe-rbench attribute`: the experts behind a behaviour, found from saved routing records (SteerMoE's detection,
Fayyaz et al., 2025: compare how often each expert activates on inputs with and without the behaviour).

Two sets of documents, A and B, from one `routing_out` directory, each chosen
- by task: `moe_rbench_sst2`, `'moe_rbench_style_*'` (shell patterns over the recorded tasks, comma-separated);
- by a judge's verdict: `judge:refusal=true` (`judge:JUDGE.FIELD=VALUE` where several judges give FIELD), over the
  `judged_<judge>.jsonl` file that `moe-rbench judge` wrote for the run's samples (`samples=`);
- by correctness: `correct` or `wrong`, from the samples lm-eval logged (`--log_samples`; `samples=`), by a 0/1
  metric per document (`metric=`; default `acc`, else `exact_match`).

Per MoE layer and expert, over the tokens of the chosen span of each document (`prompt`: the context entries, a
multiple-choice context once; `continuation`: the scored or generated tokens; `all`): the activation rate in A and
in B (the share of tokens whose top-k holds the expert; tokens dropped for capacity are not counted), the risk
difference A - B, and a two-proportion test. Tokens of one document are not independent draws (a prompt's
tokens route alike), so each rate's standard error is the cluster (ratio-estimator) one over the documents with
tokens in the span, not the binomial one over tokens, which would call nearly every expert significant; the
statistic is referred to Student's t with (fewer documents of the two sets - 1) degrees of freedom, as few
clusters make the normal approximation too bold. A layer is tested only where each set has tokens of the span
in at least 2 documents (in an encoder-decoder model the prompt reaches the encoder layers only). p-values are
corrected for the layer x expert tests by Benjamini-Hochberg (q-values); an expert is significant when q < alpha.

Samples and judged files must come from the run that wrote the records: the results file beside them names the
routing run (`config.moe.routing.run`), which must be the records' own.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import false_discovery_control
from scipy.stats import t as student_t

from moe_rbench.judging import json_lines
from moe_rbench.runs import RESULTS_FILE, SAMPLES_FILE
from moe_rbench.tables import markdown, number, pyplot, save_figure, save_table
from moe_rbench_models.errors import MoERBenchError, OptionError
from moe_rbench_models.routing.records import expert_counts, load_manifest, load_records, recorded_tasks

SPANS = ("prompt", "continuation", "all")
CORRECTNESS_METRICS = ("acc", "exact_match")
DIRECTIONS = ("disable", "force")


class AttributionError(MoERBenchError, ValueError):
    """Sets that cannot be formed from the records and files given; the message names them and the fix."""


@dataclass(frozen=True)
class ExpertRow:
    layer: str
    expert: int
    rate_a: float
    rate_b: float
    risk_difference: float
    stderr: float
    z: float
    p_value: float
    q_value: float
    significant: bool


@dataclass(frozen=True)
class SetSummary:
    selector: str
    documents: int
    tokens: int  # tokens of the span (in the MoE layer that sees most: encoder and decoder layers differ)
    left_out: int = 0  # documents the selector could not place (a judge gave no verdict)


@dataclass(frozen=True)
class Attribution:
    rows: list[ExpertRow]  # ranked: largest |risk difference| first
    a: SetSummary
    b: SetSummary
    span: str
    alpha: float
    layers: list[dict]  # the routing manifest's layers (key, side, layer, num_experts, top_k)
    untested: list[str]  # layers without span tokens in 2 documents of each set


# -- the two sets ---------------------------------------------------------------------------------------------

Document = tuple[str, int]  # (task, doc_id)


@dataclass(frozen=True)
class DocumentSet:
    """Set A or B: the documents a judge's verdict or their correctness names, or every recorded document of the
    tasks matching `patterns`."""

    selector: str
    documents: frozenset[Document] | None = None
    patterns: tuple[str, ...] = ()
    left_out: int = 0  # documents a judge gave no verdict

    def holds(self, doc: Document) -> bool:
        if self.documents is not None:
            return doc in self.documents
        return any(fnmatch.fnmatch(doc[0], pattern) for pattern in self.patterns)


def select_documents(
    selector: str, tasks: set[str], samples: str | Path | None, metric: str | None, routing_run: str
) -> DocumentSet:
    """The set a selector names; `tasks`: the recorded tasks; `routing_run`: the records' run id, which the
    samples' run must name."""
    if selector in ("correct", "wrong"):
        samples = _require(samples, selector)
        scores, stamp = _correctness(samples, metric)
        _check_same_run(samples, stamp, routing_run)
        return DocumentSet(
            selector, frozenset(doc for doc, score in scores.items() if score == (selector == "correct"))
        )
    if selector.startswith("judge:"):
        samples = _require(samples, selector)
        documents, unjudged, stamp = _judged(selector, samples)
        _check_same_run(samples, stamp, routing_run)
        return DocumentSet(selector, frozenset(documents), left_out=unjudged)
    patterns = tuple(part.strip() for part in selector.split(",") if part.strip())
    unmatched = [pattern for pattern in patterns if not fnmatch.filter(tasks, pattern)]
    if not patterns or unmatched:
        raise AttributionError(
            f"{selector!r}: no recorded task matches {', '.join(unmatched) or 'it'}; recorded tasks: "
            f"{', '.join(sorted(tasks))}. Give task patterns, judge:FIELD=VALUE, correct or wrong."
        )
    return DocumentSet(selector, patterns=patterns)


def _require(samples: str | Path | None, selector: str) -> Path:
    if samples is None or not Path(samples).is_dir():
        raise AttributionError(
            f"{selector!r} reads the run's samples: pass --samples, the lm_eval --output_path directory of the run "
            "that wrote the routing records (run with --log_samples; for judge:..., judged by `moe-rbench judge`)"
            + (f"; {samples} is not a directory" if samples is not None else "")
        )
    return Path(samples)


def _check_same_run(samples: Path, stamp: str, routing_run: str) -> None:
    """The results file of the samples' run (its stamp) must name the records' routing run."""
    found = [path for path in samples.rglob(f"results_{stamp}.json") if RESULTS_FILE.fullmatch(path.name)]
    if len(found) != 1:
        raise AttributionError(
            f"{samples}: {len(found) or 'no'} results file(s) results_{stamp}.json for the samples' run; pass the "
            "lm_eval --output_path directory of the run that wrote the routing records"
        )
    config = json.loads(found[0].read_text(encoding="utf-8")).get("config", {})
    run = ((config.get("moe") or {}).get("routing") or {}).get("run")
    if run != routing_run:
        what = f"routing run {run}" if run else "no routing (no config.moe.routing)"
        raise AttributionError(
            f"{found[0]} records {what}, but the routing records are of run {routing_run}: the samples and the "
            "records come from different runs. Use the samples of the run that wrote the records."
        )


def _find_files(path: Path, pattern: str, what: str) -> list[Path]:
    files = sorted(path.rglob(pattern))
    if not files:
        raise AttributionError(f"No {what} ({pattern}) under {path}")
    return files


def _correctness(path: Path, metric: str | None) -> tuple[dict[Document, bool], str]:
    files = _find_files(path, "samples_*.jsonl", "lm-eval samples files")
    stamps = {match["stamp"] for file in files if (match := SAMPLES_FILE.fullmatch(file.name))}
    if len(stamps) > 1:
        raise AttributionError(
            f"{path} holds the samples of {len(stamps)} runs ({', '.join(sorted(stamps))}); pass the folder of one"
        )
    scores: dict[Document, bool] = {}
    for file in files:
        match = SAMPLES_FILE.fullmatch(file.name)
        if not match:
            raise AttributionError(f"{file}: not an lm-eval samples file name (samples_<task>_<date>.jsonl)")
        for line, row in json_lines(file):
            name = metric or next((m for m in CORRECTNESS_METRICS if m in row), None)
            value = row.get(name) if name else None
            if value not in (0, 1, True, False):
                found = ", ".join(key for key, v in row.items() if isinstance(v, (int, float)) and key != "doc_id")
                raise AttributionError(
                    f"{file}, line {line}: correct/wrong needs a 0/1 score per document; "
                    f"{name or 'acc or exact_match'} is {value!r} here. Name one with --metric (numbers here: {found})"
                )
            doc = (match["task"], int(row["doc_id"]))
            if doc in scores:
                raise AttributionError(
                    f"{file}, line {line}: document {row['doc_id']} appears again (several filters?); correctness "
                    "needs one score per document"
                )
            scores[doc] = bool(value)
    return scores, stamps.pop()


def _judged(selector: str, path: Path) -> tuple[set[Document], int, str]:
    condition = selector.removeprefix("judge:")
    field, equals, wanted = condition.partition("=")
    if not equals or not field or not wanted:
        raise AttributionError(f"{selector!r}: write judge:FIELD=VALUE, e.g. judge:refusal=true")
    judge, _, field = field.rpartition(".")
    files = _find_files(path, f"judged_{judge or '*'}.jsonl", "judged files of `moe-rbench judge`")
    having = defaultdict(list)
    for file in files:
        first = next(json_lines(file), (0, {}))[1]
        if field in first:
            having[file.stem.removeprefix("judged_")].append(file)
    if not having:
        raise AttributionError(f"{selector!r}: no judged file under {path} has the field {field!r}")
    if len(having) > 1:
        names = ", ".join(f"judge:{name}.{field}={wanted}" for name in sorted(having))
        raise AttributionError(f"{selector!r}: several judges give {field!r}; name one: {names}")
    (judge_files,) = having.values()
    if len(judge_files) > 1:
        raise AttributionError(
            f"{selector!r}: {len(judge_files)} judged files under {path} ({', '.join(map(str, judge_files))}); "
            "pass the folder of one run"
        )
    summary = judge_files[0].with_name(judge_files[0].name.replace("judged_", "summary_").replace(".jsonl", ".json"))
    try:
        stamp = json.loads(summary.read_text(encoding="utf-8"))["run"]["stamp"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise AttributionError(
            f"{summary}: cannot tell which run {judge_files[0].name} judged ({error}); judge the run again"
        ) from None
    chosen, unjudged = set(), 0
    for line, row in json_lines(judge_files[0]):
        if field not in row or not {"task", "doc_id"} <= row.keys():
            raise AttributionError(f"{judge_files[0]}, line {line}: no {field!r}, task or doc_id")
        if row[field] is None:
            unjudged += 1
        elif _verdict(row[field]) == wanted.strip().lower():
            chosen.add((row["task"], int(row["doc_id"])))
    return chosen, unjudged, stamp


def _verdict(value) -> str:
    return str(value).strip().lower()


# -- counting -------------------------------------------------------------------------------------------------


def _counts(directory: str | Path, sets: list[DocumentSet], span: str, layers: list[dict]):
    """In one pass over the records, per set: document -> (expert counts [layers, experts], span tokens [layers]);
    and the documents both sets hold."""
    experts = max(layer["num_experts"] for layer in layers)
    per_document: list[dict[Document, tuple[np.ndarray, np.ndarray]]] = [{} for _ in sets]
    shared: set[Document] = set()
    parts = {"prompt": ("context",), "continuation": ("continuation",), "all": ("context", "continuation")}[span]
    seen: set[tuple] = set()
    for record in load_records(directory):
        doc = (record.task, record.doc_id)
        holders = [i for i, documents in enumerate(sets) if record.task is not None and documents.holds(doc)]
        if len(holders) != 1:
            shared.update([doc] if holders else [])
            continue
        zeros = (np.zeros((len(layers), experts), dtype=np.int64), np.zeros(len(layers), dtype=np.int64))
        counts, tokens = per_document[holders[0]].setdefault(doc, zeros)
        for part in parts:
            spans = getattr(record, f"{part}_spans")
            if not spans or (doc, spans) in seen:  # a multiple-choice context once, however many choices share it
                continue
            seen.add((doc, spans))
            for position, layer in enumerate(layers):
                routing = record.layers[layer["key"]]
                ids, dropped = getattr(routing, f"{part}_ids"), getattr(routing, f"{part}_dropped")
                n = layer["num_experts"]
                counts[position, :n] += expert_counts(ids, dropped, n)
                tokens[position] += len(ids) - (0 if dropped is None else int(dropped.sum()))
    return per_document, shared


def _rate_and_variance(counts: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled activation rate [layers, experts], its cluster (ratio-estimator) variance over the documents with
    tokens in each layer, and the number of those documents [layers]."""
    total = tokens.sum(0)[:, None].astype(float)
    rate = counts.sum(0) / np.maximum(total, 1)
    clusters = (tokens > 0).sum(0)
    residual = counts - rate[None] * tokens[:, :, None]  # 0 for a document without tokens
    factor = np.where(clusters > 1, clusters / np.maximum(clusters - 1, 1), np.nan)[:, None]
    variance = factor * (residual**2).sum(0) / np.maximum(total, 1) ** 2
    return rate, variance, clusters


def attribute_experts(
    routing: str | Path,
    a: str,
    b: str,
    samples: str | Path | None = None,
    span: str = "prompt",
    alpha: float = 0.05,
    metric: str | None = None,
) -> Attribution:
    """The layer x expert attribution of set A against set B (see the module docstring)."""
    if span not in SPANS:
        raise OptionError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    if not 0 < alpha < 1:
        raise OptionError(f"alpha must be between 0 and 1, got {alpha}")
    manifest = load_manifest(routing)
    layers = manifest["layers"]
    sets = [
        select_documents(selector, recorded_tasks(routing), samples, metric, manifest.get("run")) for selector in (a, b)
    ]
    per_document, shared = _counts(routing, sets, span, layers)
    for documents, counted in zip(sets, per_document, strict=True):
        missing = sorted(documents.documents - counted.keys()) if documents.documents is not None else []
        if missing:
            raise AttributionError(
                f"{documents.selector!r}: {len(missing)} document(s) have no routing records in {routing} (first: "
                f"task {missing[0][0]}, doc_id {missing[0][1]}); the samples and the records come from different runs"
            )
    if shared:
        task, doc_id = sorted(shared)[0]
        raise AttributionError(f"{a!r} and {b!r} share {len(shared)} document(s) (first: {task} {doc_id})")
    for documents, counted in zip(sets, per_document, strict=True):
        if len(counted) < 2:
            raise AttributionError(f"{documents.selector!r} selects {len(counted)} document(s); a set needs at least 2")
    measured = [tuple(np.stack(arrays) for arrays in zip(*counted.values(), strict=True)) for counted in per_document]
    (rate_a, var_a, clusters_a), (rate_b, var_b, clusters_b) = (_rate_and_variance(*pair) for pair in measured)
    tested = np.minimum(clusters_a, clusters_b) >= 2
    if not tested.any():
        raise AttributionError(
            f"no MoE layer has {span} tokens in at least 2 documents of each set ({a!r}: up to "
            f"{clusters_a.max()}, {b!r}: up to {clusters_b.max()}); choose another --span or larger sets"
        )
    degrees = np.minimum(clusters_a, clusters_b) - 1
    rows = _tests(rate_a - rate_b, np.sqrt(var_a + var_b), degrees, (rate_a, rate_b), layers, tested, alpha)
    summaries = [
        SetSummary(documents.selector, len(counted), int(tokens.sum(0).max()), documents.left_out)
        for documents, counted, (_, tokens) in zip(sets, per_document, measured, strict=True)
    ]
    untested = [layer["key"] for layer, ok in zip(layers, tested, strict=True) if not ok]
    return Attribution(rows, *summaries, span, alpha, layers, untested)


def _tests(difference, stderr, degrees, rates, layers: list[dict], tested, alpha: float) -> list[ExpertRow]:
    """One row per expert of the tested layers: the t-test of the difference, BH q-values over them all."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(stderr > 0, difference / stderr, np.where(difference == 0, 0.0, np.sign(difference) * np.inf))
        p_values = 2 * student_t.sf(np.abs(z), np.maximum(degrees, 1)[:, None])
    rate_a, rate_b = rates
    cells = [(i, e) for i, layer in enumerate(layers) if tested[i] for e in range(layer["num_experts"])]
    q_values = false_discovery_control([p_values[cell] for cell in cells], method="bh")
    rows = [
        ExpertRow(
            layers[i]["key"],
            e,
            round(float(rate_a[i, e]), 6),
            round(float(rate_b[i, e]), 6),
            round(float(difference[i, e]), 6),
            round(float(stderr[i, e]), 6),
            round(float(z[i, e]), 4) if math.isfinite(z[i, e]) else float(z[i, e]),
            float(p_values[i, e]),
            float(q),
            bool(q < alpha),
        )
        for (i, e), q in zip(cells, q_values, strict=True)
    ]
    return sorted(rows, key=lambda row: (-abs(row.risk_difference), row.p_value))


# -- from attribution to model arguments ------------------------------------------------------------------------


def steering_experts(attribution: Attribution, top: int, direction: str) -> dict[str, list[int]]:
    """The top experts significantly more active in A than in B, per layer key, within what the intervention
    allows in a layer (forced: at most k; disabled: at least k left)."""
    if direction not in DIRECTIONS:
        raise OptionError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if top < 1:
        raise OptionError(f"top must be at least 1, got {top}")
    layers = {layer["key"]: layer for layer in attribution.layers}
    chosen: dict[str, list[int]] = defaultdict(list)
    taken = 0
    for row in attribution.rows:
        if taken == top:
            break
        if not row.significant or row.risk_difference <= 0 or layers[row.layer]["top_k"] is None:
            continue  # a layer whose k the records do not give cannot be checked against the limits
        layer = layers[row.layer]
        limit = layer["top_k"] if direction == "force" else layer["num_experts"] - layer["top_k"]
        if len(chosen[row.layer]) < limit:
            chosen[row.layer].append(row.expert)
            taken += 1
    return {key: sorted(experts) for key, experts in chosen.items()}


def model_argument(attribution: Attribution, experts: dict[str, list[int]], direction: str) -> str:
    """`disable_experts="0:3,5;2:1"` (or force_experts) for `--model_args`; layers by block index unless the
    model has an encoder and a decoder."""
    two_sides = len({layer["side"] for layer in attribution.layers}) > 1
    names = {layer["key"]: layer["key"] if two_sides else str(layer["layer"]) for layer in attribution.layers}
    spec = ";".join(f"{names[key]}:{','.join(map(str, ids))}" for key, ids in experts.items())
    return f'{direction}_experts="{spec}"'


# -- output -----------------------------------------------------------------------------------------------------


def write_attribution(attribution: Attribution, out_dir: str | Path, top: int = 10) -> list[Path]:
    """`attribution.md/.csv/.json` (ranked table, the sets, model arguments for the top experts) and the
    layer x expert heatmap `attribution.png`."""
    out = Path(out_dir)
    arguments = {
        direction: model_argument(attribution, experts, direction)
        for direction in DIRECTIONS
        if (experts := steering_experts(attribution, top, direction))
    }
    records = [asdict(row) for row in attribution.rows]
    meta = {
        "a": asdict(attribution.a),
        "b": asdict(attribution.b),
        "span": attribution.span,
        "alpha": attribution.alpha,
        "untested_layers": attribution.untested,
        "model_args": arguments,
    }
    paths = save_table(
        out,
        "attribution",
        list(ExpertRow.__dataclass_fields__),
        records,
        _text_report(attribution, arguments, top),
        meta,
    )
    return paths + heatmap(attribution, out / "attribution")


def _text_report(attribution: Attribution, arguments: dict[str, str], top: int) -> str:
    a, b = attribution.a, attribution.b
    shown = [row for row in attribution.rows if row.significant][: max(top, 20)] or attribution.rows[:top]
    table = markdown(
        ["layer", "expert", "rate A", "rate B", "A - B", "stderr", "p", "q", ""],
        [
            [
                row.layer,
                str(row.expert),
                number(row.rate_a),
                number(row.rate_b),
                number(row.risk_difference, signed=True),
                number(row.stderr),
                f"{row.p_value:.3g}",
                f"{row.q_value:.3g}",
                "significant" if row.significant else "",
            ]
            for row in shown
        ],
        [False, True, True, True, True, True, True, True, False],
    )
    significant = sum(row.significant for row in attribution.rows)
    lines = [
        "### Experts behind the behaviour: A vs B",
        "",
        f"A = `{a.selector}`: {a.documents} documents, {a.tokens} {attribution.span} tokens"
        + (f" ({a.left_out} unjudged left out)" if a.left_out else ""),
        f"B = `{b.selector}`: {b.documents} documents, {b.tokens} {attribution.span} tokens"
        + (f" ({b.left_out} unjudged left out)" if b.left_out else ""),
        "",
        f"{significant} of {len(attribution.rows)} layer x expert pairs differ at q < {attribution.alpha} "
        "(two-proportion test, standard errors clustered by document, Benjamini-Hochberg).",
        "",
        table,
    ]
    if attribution.untested:
        lines += [
            f"Not tested (no {attribution.span} tokens in 2 documents of each set): {', '.join(attribution.untested)}",
            "",
        ]
    unknown_k = [layer["key"] for layer in attribution.layers if layer["top_k"] is None]
    if unknown_k:
        lines += [f"Not steered (the records do not give their top-k): {', '.join(unknown_k)}", ""]
    if arguments:
        lines += [f"Model arguments for the top {top} experts more active in A:", ""]
        lines += [f"- `{argument}`" for argument in arguments.values()]
    else:
        lines.append("No expert is significantly more active in A than in B: nothing to steer.")
    return "\n".join(lines) + "\n"


def heatmap(attribution: Attribution, path: Path) -> list[Path]:
    """Risk difference A - B per layer (rows) and expert (columns); significant cells dotted."""
    plt = pyplot()
    layers = [layer["key"] for layer in attribution.layers]
    experts = max(layer["num_experts"] for layer in attribution.layers)
    grid = np.full((len(layers), experts), np.nan)
    for row in attribution.rows:
        grid[layers.index(row.layer), row.expert] = row.risk_difference
    limit = max(float(np.nanmax(np.abs(grid))), 1e-9)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.5 + 0.18 * experts), 1.5 + 0.3 * len(layers)))
    image = axis.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    marked = [(layers.index(row.layer), row.expert) for row in attribution.rows if row.significant]
    if marked:
        y, x = zip(*marked, strict=True)
        axis.scatter(x, y, s=6, c="black", marker="o", label=f"q < {attribution.alpha}")
        axis.legend(loc="upper right", fontsize=7)
    axis.set_yticks(range(len(layers)), layers)
    axis.set_xlabel("expert")
    axis.set_title(f"activation rate A - B ({attribution.span} tokens)", fontsize=9)
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return save_figure(figure, path, (".png",))
