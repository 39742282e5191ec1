"""`moe-rbench attribute`: the experts behind a behaviour, found from saved routing records (SteerMoE's detection,
Fayyaz et al., 2025, adobe-research/SteerMoE @0c7e6b5: compare how often each expert activates on inputs with and
without the behaviour). docs/fidelity.md sets each knob beside SteerMoE's, with the test that checks it.

Two sets of units, A and B, from one `routing_out` directory, each chosen
- by task: `moe_rbench_sst2`, `'moe_rbench_style_*'` (shell patterns over the recorded tasks, comma-separated);
- by a judge's verdict: `judge:refusal=true` (`judge:JUDGE.FIELD=VALUE` where several judges give FIELD), over the
  `judged_<judge>.jsonl` file that `moe-rbench judge` wrote for the run's samples (`samples=`);
- by correctness: `correct` or `wrong`, from the samples lm-eval logged (`--log_samples`; `samples=`), by a 0/1
  metric per document (`metric=`; default `acc`, else `exact_match`);
- by request: `choice:N` (or `choice:N@PATTERNS`), the N-th request of each document (lm-eval's request index: the
  N-th answer choice of a multiple-choice task), so that two answers to one prompt can be compared.
A unit is a document (all its requests), or for `choice:N` one request.

Spans (which stored positions count). A routing record's continuation entry is the position whose output scores
(or produced) a continuation token, so in a causal model its input is the token before: for the answer " Maybe"
after "...:" the entries' inputs are [':', ' ', 'Ma'] and they score [' ', 'Ma', 'ybe'] (records.py). SteerMoE
counts the positions whose input is a target-response token (custom_steering.ipynb cells 8 and 11: the target's
token range in the prompt, `router_prob_n2_1[:, token_1_idx, :]`). So:
- `prompt`: positions whose input is a prompt token: the context entries and, in a causal model, the first
  continuation entry (its input is the last prompt token); a context shared by several requests of a document (a
  multiple-choice question) counts once per unit;
- `continuation`: positions whose input is a continuation token: the continuation entries but the first (the last
  continuation token is never an input, in lm-eval's scoring or generation, so it has no routing);
- `scored`: the positions that score or produce the continuation tokens (all continuation entries: what
  `continuation` meant in earlier releases);
- `all`: every stored position once (prompt, continuation, and the first decoder position of an encoder-decoder
  model or of a rolling loglikelihood, whose input is the decoder-start or prefix token: in no other span).
Sets that share a prompt (`choice:0` and `choice:1` of the same documents) cannot compare `prompt` (the same
positions in both: an error); with `all` the shared prompt counts in both.

Per MoE layer and expert: the activation rate in A and in B (the share of the span's tokens whose top-k holds the
expert, pooled over tokens as SteerMoE's a/(a+d), cell 12; tokens dropped for capacity are not counted), the risk
difference A - B, and a test (attribution_stats.py): units, not tokens, are the independent draws (a prompt's
tokens route alike). Unpaired sets: an exact permutation test over units where the relabelings can be enumerated,
else a clustered (ratio-estimator) t-test. Paired sets (`pair_by`: `document` pairs the units of one document,
e.g. `choice:0` with `choice:1`; `doc_key` pairs documents with the same aligned id, e.g. an SST-2 sentence and its
Shakespeare-style version, as `moe-rbench trace` aligns them): an exact sign-flip test or a paired t-test. Only
complete pairs are used; the others are counted as left out. A layer is tested only where each set has tokens of
the span in at least 2 units (in an encoder-decoder model the prompt reaches the encoder layers only). p-values are
corrected for the layer x expert tests by Benjamini-Hochberg (q-values); an expert is significant when q < alpha.
SteerMoE tests nothing: it ranks by |risk difference| (`select_experts(..., selection="steermoe")`).

Samples and judged files must come from the run that wrote the records: the results file beside them names the
routing run (`config.moe.routing.run`), which must be the records' own.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import false_discovery_control

from moe_rbench.attribution_stats import CellTests, paired_tests, unpaired_tests
from moe_rbench.judging import json_lines
from moe_rbench.runs import RESULTS_FILE, SAMPLES_FILE
from moe_rbench.tables import markdown, number, pyplot, save_figure, save_table
from moe_rbench_models.errors import MoERBenchError, OptionError
from moe_rbench_models.routing import (
    VERSION,
    RoutingRecord,
    expert_counts,
    load_manifest,
    load_records,
    recorded_tasks,
    steering_limit,
)
from moe_rbench_tasks.families import aligned, family_of

SPANS = ("prompt", "continuation", "scored", "all")
PAIRINGS = ("document", "doc_key")
CORRECTNESS_METRICS = ("acc", "exact_match")
SELECTIONS = ("significant", "steermoe")
DISABLE_MODES = ("reroute", "steermoe")
CHOICE = re.compile(r"choice:(?P<index>\d+)(?:@(?P<patterns>.+))?")


class AttributionError(MoERBenchError, ValueError):
    """Sets that cannot be formed from the records and files given; the message names them and the fix."""


@dataclass(frozen=True)
class ExpertRow:
    layer: str
    expert: int
    rate_a: float
    rate_b: float
    risk_difference: float
    stderr: float  # clustered (unpaired) or paired standard error of the risk difference
    z: float  # risk difference / stderr (the t statistic)
    p_value: float
    q_value: float
    significant: bool
    test: str  # the test that gave p: exact permutation, clustered t, exact sign-flip, paired t, exact (zero variance)


@dataclass(frozen=True)
class SetSummary:
    selector: str
    documents: int  # units counted: documents, or requests for choice:N (with pair_by, those in complete pairs)
    tokens: int  # tokens of the span (in the MoE layer that sees most: encoder and decoder layers differ)
    left_out: int = 0  # documents the selector could not place (a judge gave no verdict)
    unpaired: int = 0  # pair_by: units without a partner in the other set, left out


@dataclass(frozen=True)
class Attribution:
    rows: list[ExpertRow]  # ranked: largest |risk difference| first
    a: SetSummary
    b: SetSummary
    span: str
    alpha: float
    layers: list[dict]  # the routing manifest's layers (key, side, layer, num_experts, top_k)
    untested: list[str]  # layers without span tokens in 2 units of each set
    pair_by: str | None = None
    pairs: int = 0  # complete pairs (pair_by)


# -- the two sets ---------------------------------------------------------------------------------------------

Document = tuple[str, int]  # (task, doc_id)
Unit = tuple  # (task, doc_id), or (task, doc_id, request_index) for choice:N


@dataclass(frozen=True)
class DocumentSet:
    """Set A or B: the documents a judge's verdict or their correctness names, or every recorded document of the
    tasks matching `patterns`; with `choice`, only each document's request of that index."""

    selector: str
    documents: frozenset[Document] | None = None
    patterns: tuple[str, ...] = ()
    left_out: int = 0  # documents a judge gave no verdict
    choice: int | None = None  # choice:N: lm-eval's request index within the document

    def holds(self, record: RoutingRecord) -> bool:
        if record.task is None or (self.choice is not None and record.request_index != self.choice):
            return False
        if self.documents is not None:
            return (record.task, record.doc_id) in self.documents
        return any(fnmatch.fnmatch(record.task, pattern) for pattern in self.patterns)

    def unit(self, record: RoutingRecord) -> Unit:
        document = (record.task, record.doc_id)
        return document if self.choice is None else (*document, record.request_index)


def select_documents(
    selector: str, tasks: set[str], samples: str | Path | None, metric: str | None, routing_run: str
) -> DocumentSet:
    """The set a selector names; `tasks`: the recorded tasks; `routing_run`: the records' run id, which the
    samples' run must name."""
    if selector in ("correct", "wrong"):
        samples = _require(samples, selector)
        scores = _correctness(samples, metric, routing_run)
        return DocumentSet(
            selector, frozenset(doc for doc, score in scores.items() if score == (selector == "correct"))
        )
    if selector.startswith("judge:"):
        samples = _require(samples, selector)
        documents, unjudged, stamp = _judged(selector, samples)
        _check_same_run(samples, stamp, routing_run)
        return DocumentSet(selector, frozenset(documents), left_out=unjudged)
    choice = CHOICE.fullmatch(selector.strip())
    if selector.startswith("choice:") and not choice:
        raise AttributionError(f"{selector!r}: write choice:N (the N-th request of each document) or choice:N@TASKS")
    patterns = _task_patterns(choice["patterns"] or "*" if choice else selector, selector, tasks)
    return DocumentSet(selector, patterns=patterns, choice=int(choice["index"]) if choice else None)


def _task_patterns(text: str, selector: str, tasks: set[str]) -> tuple[str, ...]:
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    unmatched = [pattern for pattern in patterns if not fnmatch.filter(tasks, pattern)]
    if not patterns or unmatched:
        raise AttributionError(
            f"{selector!r}: no recorded task matches {', '.join(unmatched) or 'it'}; recorded tasks: "
            f"{', '.join(sorted(tasks))}. Give task patterns, judge:FIELD=VALUE, correct, wrong or choice:N."
        )
    return patterns


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


def _correctness(path: Path, metric: str | None, routing_run: str) -> dict[Document, bool]:
    """Per document, whether it was scored right; the samples' run checked first to be the records' own (another
    run's samples may lack the metric, and would name other documents)."""
    files = _find_files(path, "samples_*.jsonl", "lm-eval samples files")
    stamps = {match["stamp"] for file in files if (match := SAMPLES_FILE.fullmatch(file.name))}
    if len(stamps) > 1:
        raise AttributionError(
            f"{path} holds the samples of {len(stamps)} runs ({', '.join(sorted(stamps))}); pass the folder of one"
        )
    if stamps:
        _check_same_run(path, next(iter(stamps)), routing_run)
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
    return scores


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
    chosen, unjudged, values = set(), 0, {}
    for line, row in json_lines(judge_files[0]):
        if field not in row or not {"task", "doc_id"} <= row.keys():
            raise AttributionError(f"{judge_files[0]}, line {line}: no {field!r}, task or doc_id")
        if row[field] is None:
            unjudged += 1
            continue
        values[_verdict(row[field])] = isinstance(row[field], bool)
        if _verdict(row[field]) == wanted.strip().lower():
            chosen.add((row["task"], int(row["doc_id"])))
    _check_value_taken(selector, field, wanted, values, judge_files[0])
    return chosen, unjudged, stamp


def _check_value_taken(selector: str, field: str, wanted: str, values: dict[str, bool], file: Path) -> None:
    """A value the field never takes is an error naming the values it takes (a yes/no field: true and false), not
    an empty set."""
    wanted = wanted.strip().lower()
    if values and all(values.values()):  # a yes/no verdict
        if wanted not in ("true", "false"):
            raise AttributionError(
                f"{selector!r}: {field} is a yes/no verdict in {file}: it is true or false, never {wanted!r}"
            )
    elif wanted not in values:
        shown = ", ".join(sorted(values)[:12]) + (" ..." if len(values) > 12 else "")
        raise AttributionError(
            f"{selector!r}: {field} is never {wanted!r} in {file}; the values it takes there: {shown or 'none'}"
        )


def _verdict(value) -> str:
    return str(value).strip().lower()


# -- counting -------------------------------------------------------------------------------------------------


@dataclass
class UnitCounts:
    counts: np.ndarray  # [layers, experts]: span tokens whose top-k holds the expert
    tokens: np.ndarray  # [layers]: span tokens (not dropped for capacity)
    task: str
    doc_key: str | None


def span_positions(record: RoutingRecord, span: str, new_prompt: bool) -> list[tuple[str, slice]]:
    """The record's stored positions in `span`, as (part, slice of that part's entries); `new_prompt`: whether
    the record's prompt has not been counted yet for its unit (a shared multiple-choice context counts once)."""
    encoder_decoder = any(side == "encoder" for _, side, _, _ in record.context_spans)
    # the first continuation entry's input: the last prompt token (causal), the decoder-start token
    # (encoder-decoder) or the prefix token (a rolling loglikelihood has no prompt)
    first_is_prompt = not encoder_decoder and record.request_type != "loglikelihood_rolling"
    first = 1 if first_is_prompt else 0
    prompt = [("context", slice(None))] + ([("continuation", slice(0, 1))] if first_is_prompt else [])
    if span == "scored":
        return [("continuation", slice(None))]
    if span == "continuation":
        return [("continuation", slice(1, None))]
    if span == "prompt":
        return prompt if new_prompt else []
    return (prompt if new_prompt else []) + [("continuation", slice(first, None))]


def _prompt_key(record: RoutingRecord) -> tuple:
    """What identifies a record's prompt within its document: its context span (shared by the requests of a
    multiple-choice document) and the first continuation entry's input (the last prompt token)."""
    first_input = int(record.continuation_inputs[0]) if len(record.continuation_inputs) else None
    return record.context_spans, first_input


def _add_positions(unit: UnitCounts, record: RoutingRecord, parts, layers: list[dict]) -> None:
    for part, positions in parts:
        for index, layer in enumerate(layers):
            routing = record.layers[layer["key"]]
            ids, dropped = getattr(routing, f"{part}_ids")[positions], getattr(routing, f"{part}_dropped")
            dropped = None if dropped is None else dropped[positions]
            unit.counts[index, : layer["num_experts"]] += expert_counts(ids, dropped, layer["num_experts"])
            unit.tokens[index] += len(ids) - (0 if dropped is None else int(dropped.sum()))


def _counts(directory: str | Path, sets: list[DocumentSet], span: str, layers: list[dict]):
    """In one pass over the records, per set: unit -> its counts; the documents a record of which both sets hold;
    the prompts (document, prompt key) both sets count."""
    experts = max(layer["num_experts"] for layer in layers)
    units: list[dict[Unit, UnitCounts]] = [{} for _ in sets]
    prompts: list[set[tuple]] = [set() for _ in sets]
    shared: set[Document] = set()
    for record in load_records(directory):
        holders = [i for i, documents in enumerate(sets) if documents.holds(record)]
        if len(holders) != 1:
            shared.update([(record.task, record.doc_id)] if holders else [])
            continue
        (i,) = holders
        key = sets[i].unit(record)
        unit = units[i].setdefault(
            key,
            UnitCounts(
                np.zeros((len(layers), experts), dtype=np.int64),
                np.zeros(len(layers), dtype=np.int64),
                record.task,
                record.doc_key,
            ),
        )
        prompt = (record.task, record.doc_id, *_prompt_key(record))
        new_prompt = (key, prompt) not in prompts[i]
        prompts[i].add((key, prompt))
        _add_positions(unit, record, span_positions(record, span, new_prompt), layers)
    both = {prompt for _, prompt in prompts[0]} & {prompt for _, prompt in prompts[1]}
    return units, shared, both


def _check_units(sets, units, shared: set, shared_prompts: set, span: str, routing) -> None:
    for documents, counted in zip(sets, units, strict=True):
        recorded = {unit[:2] for unit in counted}
        missing = sorted(documents.documents - recorded) if documents.documents is not None else []
        if missing:
            raise AttributionError(
                f"{documents.selector!r}: {len(missing)} document(s) have no routing records in {routing} (first: "
                f"task {missing[0][0]}, doc_id {missing[0][1]}); the samples and the records come from different runs"
            )
    if shared:
        task, doc_id = sorted(shared)[0]
        raise AttributionError(
            f"{sets[0].selector!r} and {sets[1].selector!r} share {len(shared)} document(s) (first: {task} {doc_id})"
        )
    if shared_prompts and span == "prompt":
        task, doc_id, *_ = sorted(shared_prompts, key=str)[0]
        raise AttributionError(
            f"{sets[0].selector!r} and {sets[1].selector!r} share the prompt of {len(shared_prompts)} document(s) "
            f"(first: {task} {doc_id}), so --span prompt would count the same positions in both; compare what "
            "differs: --span continuation (or scored)"
        )
    for documents, counted in zip(sets, units, strict=True):
        if len(counted) < 2:
            raise AttributionError(f"{documents.selector!r} selects {len(counted)} unit(s); a set needs at least 2")


# -- pairs ------------------------------------------------------------------------------------------------------


def _pair_key(key: Unit, unit: UnitCounts, pair_by: str):
    return key[:2] if pair_by == "document" else unit.doc_key


def pair_units(units: list[dict[Unit, UnitCounts]], pair_by: str, version: int):
    """Complete pairs: per pair key (document, or aligned doc_key), set A's and set B's units of that key; and the
    units of each set left without a partner."""
    if pair_by == "doc_key" and version < VERSION:
        raise AttributionError(
            f"--pair_by doc_key: these records are of version {version}, whose document keys do not align "
            "documents across tasks; record the routing again"
        )
    grouped = [defaultdict(list) for _ in units]
    for by_key, counted in zip(grouped, units, strict=True):
        for key, unit in counted.items():
            by_key[_pair_key(key, unit, pair_by)].append(unit)
    keys = sorted((grouped[0].keys() & grouped[1].keys()) - {None}, key=str)
    unpaired = [sum(len(v) for k, v in by_key.items() if k not in keys) for by_key in grouped]
    pairs = [(grouped[0][key], grouped[1][key]) for key in keys]
    if pair_by == "doc_key":
        _check_aligned(pairs)
    return pairs, unpaired


def _check_aligned(pairs) -> None:
    """Documents pair by key only within tasks whose ids name the same documents (as `moe-rbench trace` pairs)."""
    for side_a, side_b in pairs:
        for task_a in {unit.task for unit in side_a}:
            for task_b in {unit.task for unit in side_b}:
                if (
                    task_a != task_b
                    and not aligned(task_a, task_b)
                    and not family_of(task_a) is family_of(task_b) is None
                ):
                    raise AttributionError(
                        f"--pair_by doc_key: documents of {task_a} and {task_b} share an id, but their ids do not "
                        "name the same documents (the families align ids within the Style-OOD tasks and SNLI / "
                        "SNLI-hard); pair sets whose documents are versions of one another, or leave out --pair_by"
                    )


def _stack(units: list[UnitCounts]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([unit.counts for unit in units]), np.stack([unit.tokens for unit in units])


def _summed(groups: list[list[UnitCounts]]) -> tuple[np.ndarray, np.ndarray]:
    """Per group (the units of one set in one pair), counts and tokens summed."""
    return (
        np.stack([sum(unit.counts for unit in group) for group in groups]),
        np.stack([sum(unit.tokens for unit in group) for group in groups]),
    )


# -- the attribution ----------------------------------------------------------------------------------------


def _check_options(span: str, alpha: float, pair_by: str | None) -> None:
    if span not in SPANS:
        raise OptionError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    if not 0 < alpha < 1:
        raise OptionError(f"alpha must be between 0 and 1, got {alpha}")
    if pair_by is not None and pair_by not in PAIRINGS:
        raise OptionError(f"pair_by must be one of {', '.join(PAIRINGS)} (or none), got {pair_by!r}")


def attribute_experts(
    routing: str | Path,
    a: str,
    b: str,
    samples: str | Path | None = None,
    span: str = "prompt",
    alpha: float = 0.05,
    metric: str | None = None,
    pair_by: str | None = None,
) -> Attribution:
    """The layer x expert attribution of set A against set B (see the module docstring)."""
    _check_options(span, alpha, pair_by)
    manifest = load_manifest(routing)
    layers = manifest["layers"]
    sets = [
        select_documents(selector, recorded_tasks(routing), samples, metric, manifest.get("run")) for selector in (a, b)
    ]
    units, shared, shared_prompts = _counts(routing, sets, span, layers)
    _check_units(sets, units, shared, shared_prompts, span, routing)
    unpaired, pairs = [0, 0], []
    if pair_by:
        pairs, unpaired = pair_units(units, pair_by, manifest.get("version", 1))
        if len(pairs) < 2:
            raise AttributionError(
                f"--pair_by {pair_by}: {len(pairs)} complete pair(s) of {a!r} and {b!r} ({unpaired[0]} and "
                f"{unpaired[1]} units without a partner); "
                + (
                    "`document` pairs units of one document, as choice:0 with choice:1"
                    if pair_by == "document"
                    else "`doc_key` pairs documents with the same aligned id, as an SST-2 sentence and its styles"
                )
            )
        arrays = [_summed([pair[side] for pair in pairs]) for side in (0, 1)]
    else:
        arrays = [_stack(list(counted.values())) for counted in units]
    (counts_a, tokens_a), (counts_b, tokens_b) = arrays
    tested = np.minimum((tokens_a > 0).sum(0), (tokens_b > 0).sum(0)) >= 2
    if not tested.any():
        raise AttributionError(
            f"no MoE layer has {span} tokens in at least 2 units of each set ({a!r}: up to "
            f"{(tokens_a > 0).sum(0).max()}, {b!r}: up to {(tokens_b > 0).sum(0).max()}); choose another --span "
            "(a one-token continuation has no continuation input: --span scored counts the position that scores it) "
            "or larger sets"
        )
    tests = (paired_tests if pair_by else unpaired_tests)(counts_a, tokens_a, counts_b, tokens_b, tested)
    summaries = [
        SetSummary(
            documents.selector,
            sum(len(pair[side]) for pair in pairs) if pair_by else len(units[side]),
            int(tokens.sum(0).max()),
            documents.left_out,
            unpaired[side],
        )
        for side, (documents, (_, tokens)) in enumerate(zip(sets, arrays, strict=True))
    ]
    untested = [layer["key"] for layer, ok in zip(layers, tested, strict=True) if not ok]
    rows = _rows(tests, layers, tested, alpha)
    return Attribution(rows, *summaries, span, alpha, layers, untested, pair_by, len(pairs))


def _rows(tests: CellTests, layers: list[dict], tested: np.ndarray, alpha: float) -> list[ExpertRow]:
    """One row per expert of the tested layers, with BH q-values over them all; largest |risk difference| first."""
    cells = [(i, e) for i, layer in enumerate(layers) if tested[i] for e in range(layer["num_experts"])]
    q_values = false_discovery_control([tests.p_value[cell] for cell in cells], method="bh")
    rows = [
        ExpertRow(
            layers[i]["key"],
            e,
            float(tests.rate_a[i, e]),
            float(tests.rate_b[i, e]),
            float(tests.difference[i, e]),
            float(tests.stderr[i, e]),
            float(tests.statistic[i, e]),
            float(tests.p_value[i, e]),
            float(q),
            bool(q < alpha),
            str(tests.test[i, e]),
        )
        for (i, e), q in zip(cells, q_values, strict=True)
    ]
    return sorted(rows, key=lambda row: (-abs(row.risk_difference), row.p_value))


# -- from attribution to model arguments ------------------------------------------------------------------------


@dataclass(frozen=True)
class SteeringPlan:
    """Experts to force (more active in A) and to disable (more active in B), in one configuration."""

    forced: dict[str, list[int]]  # layer key -> expert ids
    disabled: dict[str, list[int]]
    selection: str
    disable_mode: str
    asked: tuple[int, int]  # (force N, disable M)
    skipped: list[dict] = field(default_factory=list)  # rows passed over for a layer's limit (layer, expert, why)


def select_experts(
    attribution: Attribution,
    force: int,
    disable: int,
    selection: str = "significant",
    disable_mode: str = "reroute",
) -> SteeringPlan:
    """Steering toward A's behaviour: up to `force` experts more active in A forced on, up to `disable` experts more
    active in B disabled (swap A and B to steer toward B: SteerMoE's reverse_effect, src/utils.py l.96-98).

    `significant` (ours): rows with q < alpha only, largest |risk difference| first; forced at most k per layer and,
    with disable_mode=reroute, at least k experts left enabled per layer; a row beyond its layer's limit is passed
    over and the next one taken. `steermoe` (src/utils.py l.90-125): every row, ranked by |risk difference| (ties:
    layer, then expert); the first `force` rows with RD > 0 and the first `disable` with RD < 0, an error when fewer
    exist (l.103-107); a positive row beyond k forced in its layer is skipped but still counts toward `force`
    (l.118-122); negative rows have no per-layer limit (l.123-125: SteerMoE's soft deactivation), except that with
    disable_mode=reroute (hard removal) a row that would leave fewer than k experts is skipped likewise."""
    _check_selection(force, disable, selection, disable_mode)
    layers = {layer["key"]: layer for layer in attribution.layers}
    if selection == "steermoe":
        return _steermoe_selection(attribution, layers, force, disable, disable_mode)
    chosen: dict[str, dict[str, list[int]]] = {"force": defaultdict(list), "disable": defaultdict(list)}
    skipped, wanted = [], {"force": force, "disable": disable}
    for row in attribution.rows:
        layer = layers[row.layer]
        if not row.significant or row.risk_difference == 0 or layer["top_k"] is None:
            continue  # a layer whose k the records do not give cannot be checked against the limits
        kind = "force" if row.risk_difference > 0 else "disable"
        if sum(map(len, chosen[kind].values())) == wanted[kind]:
            continue
        if len(chosen[kind][row.layer]) < _limit(layer, kind, disable_mode):
            chosen[kind][row.layer].append(row.expert)
        else:
            skipped.append(_skip(row, layer, kind, disable_mode))
    return _plan(chosen, selection, disable_mode, (force, disable), skipped)


def _check_selection(force: int, disable: int, selection: str, disable_mode: str) -> None:
    if selection not in SELECTIONS:
        raise OptionError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if disable_mode not in DISABLE_MODES:
        raise OptionError(f"disable_mode must be one of {', '.join(DISABLE_MODES)}, got {disable_mode!r}")
    if force < 0 or disable < 0:
        raise OptionError(f"--force and --disable count experts (0 or more), got {force} and {disable}")


def _limit(layer: dict, kind: str, disable_mode: str) -> int:
    """How many experts of a layer may be forced (k: all are selected) or disabled (reroute: k must remain)."""
    return steering_limit(kind, layer["num_experts"], layer["top_k"], disable_mode)


def _skip(row: ExpertRow, layer: dict, kind: str, disable_mode: str) -> dict:
    why = (
        f"{layer['top_k']} experts already forced in its layer (top-k {layer['top_k']})"
        if kind == "force"
        else f"disable_mode={disable_mode} must leave {layer['top_k']} experts enabled"
    )
    return {"layer": row.layer, "expert": row.expert, "kind": kind, "why": why}


def _steermoe_selection(attribution, layers: dict, force: int, disable: int, disable_mode: str) -> SteeringPlan:
    order = {layer["key"]: i for i, layer in enumerate(attribution.layers)}
    ranked = sorted(attribution.rows, key=lambda row: (-abs(row.risk_difference), order[row.layer], row.expert))
    positive = [row for row in ranked if row.risk_difference > 0][:force]
    negative = [row for row in ranked if row.risk_difference < 0][:disable]
    if len(positive) < force or len(negative) < disable:
        raise AttributionError(
            f"SteerMoE's selection takes the top {force} rows with A - B > 0 and the top {disable} with A - B < 0; "
            f"there are {len(positive)} and {len(negative)} such rows (SteerMoE raises here too, src/utils.py "
            "l.106-107). Ask for fewer with --force/--disable, or record more units"
        )
    chosen: dict[str, dict[str, list[int]]] = {"force": defaultdict(list), "disable": defaultdict(list)}
    skipped = []
    for kind, rows in (("force", positive), ("disable", negative)):
        for row in rows:
            layer = layers[row.layer]
            if layer["top_k"] is None and (kind == "force" or disable_mode == "reroute"):
                raise AttributionError(
                    f"layer {row.layer}: the records do not give its top-k, so the per-layer limit of SteerMoE's "
                    f"selection cannot be applied to expert {row.expert}; use --selection significant"
                )
            if len(chosen[kind][row.layer]) < _limit(layer, kind, disable_mode):
                chosen[kind][row.layer].append(row.expert)
            else:  # skipped, and counted toward the N asked (src/utils.py l.118-122)
                skipped.append(_skip(row, layer, kind, disable_mode))
    return _plan(chosen, "steermoe", disable_mode, (force, disable), skipped)


def _plan(chosen, selection: str, disable_mode: str, asked: tuple[int, int], skipped: list[dict]) -> SteeringPlan:
    def ordered(experts: dict[str, list[int]]) -> dict[str, list[int]]:
        return {key: sorted(ids) for key, ids in experts.items() if ids}

    return SteeringPlan(ordered(chosen["force"]), ordered(chosen["disable"]), selection, disable_mode, asked, skipped)


def _layer_spec(attribution: Attribution, experts: dict[str, list[int]]) -> str:
    two_sides = len({layer["side"] for layer in attribution.layers}) > 1
    names = {layer["key"]: layer["key"] if two_sides else str(layer["layer"]) for layer in attribution.layers}
    order = [layer["key"] for layer in attribution.layers]
    return ";".join(f"{names[key]}:{','.join(map(str, experts[key]))}" for key in order if key in experts)


def model_argument(attribution: Attribution, plan: SteeringPlan) -> str:
    """The plan as one `--model_args` addition: `force_experts="0:3,5;2:1",disable_experts="1:0",disable_mode=...`
    (layers by block index unless the model has an encoder and a decoder); "" when it steers nothing."""
    parts = []
    if plan.forced:
        parts.append(f'force_experts="{_layer_spec(attribution, plan.forced)}"')
    if plan.disabled:
        parts += [f'disable_experts="{_layer_spec(attribution, plan.disabled)}"', f"disable_mode={plan.disable_mode}"]
    return ",".join(parts)


# -- output -----------------------------------------------------------------------------------------------------


def write_attribution(
    attribution: Attribution, out_dir: str | Path, plan: SteeringPlan | None = None, note: str = ""
) -> list[Path]:
    """`attribution.md/.csv/.json` (ranked table, the sets, the steering plan and its model arguments; `note`: why
    there is no plan) and the layer x expert heatmap `attribution.png`."""
    out = Path(out_dir)
    argument = model_argument(attribution, plan) if plan else ""
    meta = {
        "a": asdict(attribution.a),
        "b": asdict(attribution.b),
        "span": attribution.span,
        "alpha": attribution.alpha,
        "pair_by": attribution.pair_by,
        "pairs": attribution.pairs,
        "untested_layers": attribution.untested,
        "steering": asdict(plan) if plan else None,
        "model_args": argument,
    }
    text = _text_report(attribution) + _steering_report(attribution, plan, argument, note)
    records = [asdict(row) for row in attribution.rows]
    paths = save_table(out, "attribution", list(ExpertRow.__dataclass_fields__), records, text, meta)
    return paths + heatmap(attribution, out / "attribution")


def _set_line(name: str, summary: SetSummary, attribution: Attribution) -> str:
    units = "requests" if CHOICE.fullmatch(summary.selector.strip()) else "documents"
    line = f"{name} = `{summary.selector}`: {summary.documents} {units}, {summary.tokens} {attribution.span} tokens"
    notes = [f"{summary.left_out} unjudged left out"] if summary.left_out else []
    notes += [f"{summary.unpaired} without a partner left out"] if attribution.pair_by else []
    return line + (f" ({'; '.join(notes)})" if notes else "")


def _text_report(attribution: Attribution) -> str:
    significant_ranks = {id(row) for row in [row for row in attribution.rows if row.significant][:40]}
    shown = [row for rank, row in enumerate(attribution.rows) if rank < 20 or id(row) in significant_ranks]
    table = markdown(
        ["layer", "expert", "rate A", "rate B", "A - B", "stderr", "p", "q", "test", ""],
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
                row.test,
                "significant" if row.significant else "",
            ]
            for row in shown
        ],
        [False, True, True, True, True, True, True, True, False, False],
    )
    significant = sum(row.significant for row in attribution.rows)
    tests = ", ".join(sorted({row.test for row in attribution.rows}))
    pairing = f", {attribution.pairs} pairs by {attribution.pair_by}" if attribution.pair_by else ""
    lines = [
        "### Experts behind the behaviour: A vs B",
        "",
        _set_line("A", attribution.a, attribution),
        _set_line("B", attribution.b, attribution),
        "",
        f"{significant} of {len(attribution.rows)} layer x expert pairs differ at q < {attribution.alpha} "
        f"(tests: {tests}{pairing}; units, not tokens, as independent draws; Benjamini-Hochberg).",
        "",
        table,
    ]
    if attribution.untested:
        lines += [
            f"Not tested (no {attribution.span} tokens in 2 units of each set): {', '.join(attribution.untested)}",
            "",
        ]
    return "\n".join(lines) + "\n"


def _steering_report(attribution: Attribution, plan: SteeringPlan | None, argument: str, note: str) -> str:
    unknown_k = [layer["key"] for layer in attribution.layers if layer["top_k"] is None]
    lines = [f"Not steered (the records do not give their top-k): {', '.join(unknown_k)}", ""] if unknown_k else []
    if plan is None:
        return "\n".join([*lines, f"No steering plan: {note}"]) + "\n"
    force, disable = plan.asked
    lines.append(
        f"Steering toward A ({plan.selection} selection, disable_mode={plan.disable_mode}): asked to force {force} "
        f"experts more active in A and disable {disable} more active in B; forcing "
        f"{sum(map(len, plan.forced.values()))}, disabling {sum(map(len, plan.disabled.values()))}."
    )
    lines += [
        f"- skipped {s['kind']} {s['layer']} expert {s['expert']}: {s['why']}"
        + (" (counted toward the number asked, as SteerMoE does)" if plan.selection == "steermoe" else "")
        for s in plan.skipped
    ]
    lines += ["", f"Model arguments: `{argument}`" if argument else "Nothing to steer: no expert qualifies."]
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
