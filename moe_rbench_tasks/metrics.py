"""Per-document metrics of the classification tasks.

Each task reports `acc`, plus the same value under its role in the benchmark: `id_acc` for an
in-distribution set, `ood_acc` for an out-of-distribution one, `sa_acc` (standard accuracy) and
`ra_acc` (robust accuracy) in adversarial NLI. A group that aggregates `id_acc` and `ood_acc`
(unweighted) thus reports the ID accuracy and the mean OOD accuracy side by side, which lm-eval's group
aggregation (one metric name averaged over all subtasks) cannot do otherwise.
"""

from __future__ import annotations

import logging
import re


def choice_accuracy(doc: dict, results: list[tuple[float, bool]]) -> float:
    """1.0 when the highest-loglikelihood choice is the gold label (`doc["label"]`, a choice index)."""
    loglikelihoods = [loglikelihood for loglikelihood, _ in results]
    return float(loglikelihoods.index(max(loglikelihoods)) == doc["label"])


def role_accuracy(role: str):
    """`process_results` reporting `acc` and the same value as `role` (e.g. `ood_acc`)."""

    def process_results(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
        accuracy = choice_accuracy(doc, results)
        return {"acc": accuracy, role: accuracy}

    return process_results


# the functions the task YAMLs name
id_accuracy = role_accuracy("id_acc")
ood_accuracy = role_accuracy("ood_acc")
standard_accuracy = role_accuracy("sa_acc")
robust_accuracy = role_accuracy("ra_acc")


class _ExpectedRoleGaps(logging.Filter):
    """lm-eval warns when a group metric is missing in some subtasks; for the role metrics that is the
    design (only ID sets have `id_acc`), so those warnings are dropped. Every other warning passes."""

    _pattern = re.compile(r"metric '(id_acc|ood_acc|sa_acc|ra_acc),[^']*' is missing in")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._pattern.search(record.getMessage())


logging.getLogger("lm_eval.api.group").addFilter(_ExpectedRoleGaps())
