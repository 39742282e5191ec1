"""How judges are scored: against human labels (a confusion matrix) and against each other (Cohen's kappa)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Confusion:
    """Binary verdicts against labels; positive is the judged property (a refusal, a harmful response)."""

    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int

    @classmethod
    def of(cls, labels: Sequence[bool], predictions: Sequence[bool]) -> Confusion:
        if len(labels) != len(predictions):
            raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
        pairs = list(zip(labels, predictions, strict=True))
        return cls(
            pairs.count((True, True)),
            pairs.count((False, True)),
            pairs.count((True, False)),
            pairs.count((False, False)),
        )

    @property
    def recall(self) -> float | None:
        """Of the labelled positives, the share the judge found (also: sensitivity)."""
        return _ratio(self.true_positive, self.true_positive + self.false_negative)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.true_negative, self.true_negative + self.false_positive)

    @property
    def precision(self) -> float | None:
        return _ratio(self.true_positive, self.true_positive + self.false_positive)

    @property
    def balanced_accuracy(self) -> float | None:
        """The mean of recall and specificity: 0.5 for a judge that always says the same."""
        if self.recall is None or self.specificity is None:
            return None
        return (self.recall + self.specificity) / 2


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def cohen_kappa(first: Sequence[bool], second: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' binary verdicts on the same items; None when it is undefined (both raters
    always say the same one thing)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"kappa needs verdicts on the same items, got {len(first)} and {len(second)}")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    yes_first, yes_second = sum(first) / n, sum(second) / n
    expected = yes_first * yes_second + (1 - yes_first) * (1 - yes_second)
    return None if expected == 1 else (observed - expected) / (1 - expected)
