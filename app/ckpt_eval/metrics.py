"""Classification metrics (pure): accumulated per batch, summarised with scikit-learn, gated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

DEFAULT_MIN_ACCURACY = 0.7
DEFAULT_MIN_F1_MACRO = 0.7
OVERALL = ""  # class_label of a metric that is not per class


class MetricAccumulator:
    """Collects labels, predictions and the summed loss batch by batch."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._labels: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []
        self._loss_sum = 0.0
        self._count = 0

    def update(self, labels: np.ndarray, predictions: np.ndarray, loss_sum: float) -> None:
        self._labels.append(np.asarray(labels, dtype=np.int64))
        self._predictions.append(np.asarray(predictions, dtype=np.int64))
        self._loss_sum += float(loss_sum)
        self._count += len(labels)

    def result(self) -> Metrics:
        if self._count == 0:
            raise ValueError("no samples were evaluated")
        return compute_metrics(
            np.concatenate(self._labels), np.concatenate(self._predictions), self._loss_sum, self.num_classes
        )


@dataclass(frozen=True)
class ClassMetrics:
    label: int
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    n_samples: int
    loss: float
    accuracy: float
    f1_macro: float
    f1_weighted: float
    precision_macro: float
    recall_macro: float
    per_class: tuple[ClassMetrics, ...]
    confusion: tuple[tuple[int, ...], ...]

    def rows(self) -> list[tuple[str, str, float]]:
        """(metric, class_label, value) rows for the metrics table; class_label '' is overall."""
        rows = [
            ("loss", OVERALL, self.loss),
            ("accuracy", OVERALL, self.accuracy),
            ("f1_macro", OVERALL, self.f1_macro),
            ("f1_weighted", OVERALL, self.f1_weighted),
            ("precision_macro", OVERALL, self.precision_macro),
            ("recall_macro", OVERALL, self.recall_macro),
        ]
        for cls in self.per_class:
            label = str(cls.label)
            rows += [
                ("precision", label, cls.precision),
                ("recall", label, cls.recall),
                ("f1", label, cls.f1),
                ("support", label, float(cls.support)),
            ]
        return rows


def compute_metrics(labels: np.ndarray, predictions: np.ndarray, loss_sum: float, num_classes: int) -> Metrics:
    classes = list(range(num_classes))
    n = len(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0.0
    )
    # Averages over the classes present in labels or predictions (scikit-learn's default), so a
    # test set that lacks a class is not marked down for it; per-class rows cover every class.
    macro = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0.0)
    weighted = precision_recall_fscore_support(labels, predictions, average="weighted", zero_division=0.0)
    matrix = confusion_matrix(labels, predictions, labels=classes)
    return Metrics(
        n_samples=n,
        loss=loss_sum / n,
        accuracy=float(np.trace(matrix)) / n,
        f1_macro=float(macro[2]),
        f1_weighted=float(weighted[2]),
        precision_macro=float(macro[0]),
        recall_macro=float(macro[1]),
        per_class=tuple(
            ClassMetrics(c, float(precision[c]), float(recall[c]), float(f1[c]), int(support[c])) for c in classes
        ),
        confusion=tuple(tuple(int(v) for v in row) for row in matrix),
    )


@dataclass(frozen=True)
class Gate:
    min_accuracy: float = DEFAULT_MIN_ACCURACY
    min_f1_macro: float = DEFAULT_MIN_F1_MACRO

    @classmethod
    def from_registry(cls, min_accuracy: float | None, min_f1_macro: float | None) -> Gate:
        return cls(
            DEFAULT_MIN_ACCURACY if min_accuracy is None else float(min_accuracy),
            DEFAULT_MIN_F1_MACRO if min_f1_macro is None else float(min_f1_macro),
        )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return "pass" if self.passed else "fail"


def apply_gate(metrics: Metrics, gate: Gate) -> Verdict:
    """A metric that is NaN, infinite, or below its threshold fails the gate."""
    reasons = []
    if not math.isfinite(metrics.loss):
        reasons.append(f"loss is {metrics.loss}")
    for name, value, threshold in (
        ("accuracy", metrics.accuracy, gate.min_accuracy),
        ("f1_macro", metrics.f1_macro, gate.min_f1_macro),
    ):
        if not math.isfinite(value):
            reasons.append(f"{name} is {value}")
        elif value < threshold:
            reasons.append(f"{name} {value:.4f} < {threshold:g}")
    return Verdict(not reasons, tuple(reasons))
