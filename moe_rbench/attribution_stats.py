"""The statistics of `moe-rbench attribute`: per MoE layer and expert, the pooled activation rates of two sets of
units (documents, requests, or paired units), their risk difference, and a test of it.

Inputs are per-unit arrays: `counts[u, layer, expert]` (tokens of the span whose top-k holds the expert) and
`tokens[u, layer]` (tokens of the span). Rates are pooled over tokens, as SteerMoE's a/(a+d)
(custom_steering.ipynb cell 12): rate = sum of counts / sum of tokens over the set's units.

Tests, two-sided, per layer x expert cell:
- unpaired sets: an exact permutation test over units (every relabeling of the layer's units between A and B that
  keeps the set sizes; statistic: the difference of pooled rates; the observed labeling counts, so p >= 1/C(n, nA))
  where at most `EXACT_LABELINGS` labelings exist, else the clustered (ratio-estimator) t-test with (fewer units -
  1) degrees of freedom;
- paired sets: an exact sign-flip test (every swap of A and B within pairs) up to `SIGN_FLIP_PAIRS` pairs, else a
  paired t-test on the linearised per-pair residuals (cA_i - rA tA_i)/TA - (cB_i - rB tB_i)/TB, variance
  n/(n-1) sum r_i^2, n - 1 degrees of freedom.
A t-test cell with zero variance in both sets (e.g. an expert on every token of one set and never in the other)
would get p = 0; it gets the exact test's p-value instead, which is then known in closed form: the observed
labeling and its mirror image are the only ones as extreme, (1 + [nA == nB]) / C(nA + nB, nA) unpaired, 2 / 2^n
paired (computed in log space, never below the smallest positive float). That value is also the smallest p-value
the exact test can give, so no t-test p-value goes below it. A unit takes part in a layer's test when it has span
tokens in that layer (an encoder-decoder model's prompt reaches its encoder only); a pair, when either side has.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln
from scipy.stats import t as student_t

EXACT_LABELINGS = 20_000  # unpaired: enumerate the relabelings of a layer's units up to this many
SIGN_FLIP_PAIRS = 14  # paired: enumerate the 2^n sign flips up to this many pairs
SMALLEST_P = float(np.nextafter(0.0, 1.0))
# ties in the null distribution: values within this relative distance of the observed one count as at least as
# extreme (scipy.stats.permutation_test's rule, 100 machine epsilons)
TIE_TOLERANCE = 100 * np.finfo(float).eps
CELLS_PER_CHUNK = 1_000_000  # labelings x cells evaluated at once (memory bound of the enumeration)

EXACT_PERMUTATION = "exact permutation"
EXACT_SIGN_FLIP = "exact sign-flip"
CLUSTERED_T = "clustered t"
PAIRED_T = "paired t"
ZERO_VARIANCE = "exact (zero variance)"


@dataclass(frozen=True)
class CellTests:
    rate_a: np.ndarray  # [layers, experts]
    rate_b: np.ndarray
    difference: np.ndarray  # rate_a - rate_b
    stderr: np.ndarray  # clustered (unpaired) or paired standard error of the difference
    statistic: np.ndarray  # difference / stderr (+-inf where stderr is 0 and the difference is not)
    p_value: np.ndarray
    test: np.ndarray  # [layers, experts] of str: the test that gave the p-value


def pooled_rate(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Activation rate [layers, experts] pooled over the units' tokens (0 where a layer has none)."""
    return counts.sum(0) / np.maximum(tokens.sum(0), 1)[:, None]


def _clustered_variance(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Ratio-estimator variance of a pooled rate, clustered by unit: m/(m-1) sum (c_i - r t_i)^2 / T^2 over the m
    units with tokens in the layer."""
    total = np.maximum(tokens.sum(0), 1)[:, None].astype(float)
    clusters = (tokens > 0).sum(0)
    residual = counts - pooled_rate(counts, tokens)[None] * tokens[:, :, None]  # 0 for a unit without tokens
    factor = np.where(clusters > 1, clusters / np.maximum(clusters - 1, 1), np.nan)[:, None]
    return factor * (residual**2).sum(0) / total**2


def _constant_rate(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """[layers, experts]: whether every unit's rate equals the set's pooled rate (zero within-set variance), in
    integer arithmetic (c_i T == C t_i): floating-point residuals can miss a zero by 1e-17, which would give the
    t-test p = 0."""
    counts, tokens = counts.astype(np.int64), tokens.astype(np.int64)
    return (counts * tokens.sum(0)[None, :, None] == counts.sum(0)[None] * tokens[:, :, None]).all(0)


def _t_test(difference, stderr, degrees, zero, log_p_min, label: str):
    """The t-test's p-values, never below `exp(log_p_min)`, the smallest p-value the exact test can give (the
    observed labeling and, where it exists, its mirror image); a zero-variance cell (`zero`) gets that exact
    p-value. Returns (stderr, statistic, p-value, test) per cell."""
    stderr = np.where(zero, 0.0, stderr)
    statistic, p_value = _t_p_values(difference, stderr, degrees)
    p_min = _smallest_exact_p(log_p_min)
    p_value = np.where(zero, p_min, np.maximum(p_value, p_min))
    return stderr, statistic, p_value, np.where(zero, ZERO_VARIANCE, label).astype(object)


def _t_p_values(difference: np.ndarray, stderr: np.ndarray, degrees: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(
            stderr > 0, difference / stderr, np.where(difference == 0, 0.0, np.sign(difference) * np.inf)
        )
        return statistic, 2 * student_t.sf(np.abs(statistic), np.maximum(degrees, 1)[:, None])


def _layer_groups(members: np.ndarray, tested: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Tested layers grouped by the units taking part in them (`members[u, layer]`): (unit indices, layers)."""
    groups: dict[bytes, tuple[np.ndarray, list[int]]] = {}
    for layer in np.flatnonzero(tested):
        column = members[:, layer]
        groups.setdefault(column.tobytes(), (np.flatnonzero(column), []))[1].append(int(layer))
    return list(groups.values())


def _extreme_share(labelings, statistic, count: int, observed: np.ndarray) -> np.ndarray:
    """Share of the `count` labelings (`labelings(size)` yields them in batches, `statistic(batch)` gives their
    statistic per cell) at least as far from 0 as the observed statistic; a labeling that leaves a set without
    tokens (possible when pairs are swapped) counts as extreme."""
    cells = observed.shape[0]
    threshold = np.abs(observed) * (1 - TIE_TOLERANCE)
    extreme = np.zeros(cells, dtype=np.int64)
    chunk = max(1, CELLS_PER_CHUNK // max(cells, 1))
    for batch in labelings(chunk):
        values = statistic(batch)
        extreme += ((np.abs(values) >= threshold) | np.isnan(values)).sum(0)
    return extreme / count


def _chunks(iterator, size: int):
    while batch := list(itertools.islice(iterator, size)):
        yield np.array(batch)


def _exact_permutation(counts: np.ndarray, tokens: np.ndarray, units_a: int, observed: np.ndarray) -> np.ndarray:
    """Exact permutation p-values; `counts` [units, cells] with set A's `units_a` units first, `tokens` [units,
    cells]. Every unit has tokens, so both relabeled sets do."""
    units = len(counts)
    total_counts, total_tokens = counts.sum(0), tokens.sum(0)

    def labelings(size):
        for batch in _chunks(itertools.combinations(range(units), units_a), size):
            in_a = np.zeros((len(batch), units))
            in_a[np.arange(len(batch))[:, None], batch] = 1.0
            yield in_a

    def statistic(in_a):
        counts_a, tokens_a = in_a @ counts, in_a @ tokens
        return counts_a / tokens_a - (total_counts - counts_a) / (total_tokens - tokens_a)

    return _extreme_share(labelings, statistic, math.comb(units, units_a), observed)


def _exact_sign_flip(pairs_a, pairs_b, observed: np.ndarray) -> np.ndarray:
    """Exact sign-flip p-values; `pairs_a`/`pairs_b` = (counts [pairs, cells], tokens [pairs, cells])."""
    (counts_a, tokens_a), (counts_b, tokens_b) = pairs_a, pairs_b
    pairs = len(counts_a)
    total_counts, total_tokens = counts_a.sum(0) + counts_b.sum(0), tokens_a.sum(0) + tokens_b.sum(0)
    moved_counts, moved_tokens = counts_b - counts_a, tokens_b - tokens_a

    def labelings(size):
        yield from (batch.astype(float) for batch in _chunks(itertools.product((0, 1), repeat=pairs), size))

    def statistic(flipped):
        new_counts_a = counts_a.sum(0) + flipped @ moved_counts
        new_tokens_a = tokens_a.sum(0) + flipped @ moved_tokens
        with np.errstate(divide="ignore", invalid="ignore"):
            return new_counts_a / new_tokens_a - (total_counts - new_counts_a) / (total_tokens - new_tokens_a)

    return _extreme_share(labelings, statistic, 2**pairs, observed)


def _smallest_exact_p(log_p: np.ndarray | float) -> np.ndarray:
    return np.maximum(np.exp(log_p), SMALLEST_P)


def _log_labelings(units_a: np.ndarray, units_b: np.ndarray) -> np.ndarray:
    """log C(nA + nB, nA), elementwise."""
    return gammaln(units_a + units_b + 1) - gammaln(units_a + 1) - gammaln(units_b + 1)


def unpaired_tests(counts_a, tokens_a, counts_b, tokens_b, tested: np.ndarray) -> CellTests:
    """Set A's units against set B's (see the module docstring); `tested[layer]`: the layers to test (elsewhere p =
    1)."""
    rate_a, rate_b = pooled_rate(counts_a, tokens_a), pooled_rate(counts_b, tokens_b)
    difference = rate_a - rate_b
    stderr = np.sqrt(_clustered_variance(counts_a, tokens_a) + _clustered_variance(counts_b, tokens_b))
    units_a, units_b = (tokens_a > 0).sum(0), (tokens_b > 0).sum(0)
    zero = _constant_rate(counts_a, tokens_a) & _constant_rate(counts_b, tokens_b) & (difference != 0)
    log_p_min = math.log(2) * (units_a == units_b)[:, None] - _log_labelings(units_a, units_b)[:, None]
    stderr, statistic, p_value, test = _t_test(
        difference, stderr, np.minimum(units_a, units_b) - 1, zero, log_p_min, CLUSTERED_T
    )
    members = np.concatenate([tokens_a > 0, tokens_b > 0])
    for units, layers in _layer_groups(members, tested):
        in_a = int((units < len(tokens_a)).sum())
        if math.comb(len(units), in_a) > EXACT_LABELINGS:
            continue
        counts = np.concatenate([counts_a, counts_b])[units][:, layers].reshape(len(units), -1)
        tokens = np.repeat(np.concatenate([tokens_a, tokens_b])[units][:, layers], counts_a.shape[2], axis=1)
        exact = _exact_permutation(counts.astype(float), tokens.astype(float), in_a, difference[layers].ravel())
        p_value[layers] = exact.reshape(len(layers), -1)
        test[layers] = EXACT_PERMUTATION
    p_value[~tested] = 1.0
    return CellTests(rate_a, rate_b, difference, stderr, statistic, np.minimum(p_value, 1.0), test)


def paired_tests(counts_a, tokens_a, counts_b, tokens_b, tested: np.ndarray) -> CellTests:
    """Pair i of set A against pair i of set B (see the module docstring); arrays indexed by pair."""
    rate_a, rate_b = pooled_rate(counts_a, tokens_a), pooled_rate(counts_b, tokens_b)
    difference = rate_a - rate_b
    total_a, total_b = (np.maximum(t.sum(0), 1)[:, None].astype(float) for t in (tokens_a, tokens_b))
    residual = (counts_a - rate_a[None] * tokens_a[:, :, None]) / total_a - (
        counts_b - rate_b[None] * tokens_b[:, :, None]
    ) / total_b
    members = (tokens_a > 0) | (tokens_b > 0)
    pairs = members.sum(0)
    factor = np.where(pairs > 1, pairs / np.maximum(pairs - 1, 1), np.nan)[:, None]
    stderr = np.sqrt(factor * (residual**2).sum(0))
    zero = _constant_rate(counts_a, tokens_a) & _constant_rate(counts_b, tokens_b) & (difference != 0)
    log_p_min = (math.log(2) * (1 - pairs))[:, None]
    stderr, statistic, p_value, test = _t_test(difference, stderr, pairs - 1, zero, log_p_min, PAIRED_T)
    for units, layers in _layer_groups(members, tested):
        if len(units) > SIGN_FLIP_PAIRS:
            continue
        experts = counts_a.shape[2]
        sides = [
            (
                c[units][:, layers].reshape(len(units), -1).astype(float),
                np.repeat(t[units][:, layers], experts, axis=1).astype(float),
            )
            for c, t in ((counts_a, tokens_a), (counts_b, tokens_b))
        ]
        exact = _exact_sign_flip(*sides, difference[layers].ravel())
        p_value[layers] = exact.reshape(len(layers), -1)
        test[layers] = EXACT_SIGN_FLIP
    p_value[~tested] = 1.0
    return CellTests(rate_a, rate_b, difference, stderr, statistic, np.minimum(p_value, 1.0), test)
