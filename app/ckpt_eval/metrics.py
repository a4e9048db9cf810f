"""Classification metrics (pure): one confusion matrix accumulated per batch, summarised, gated.

Every figure comes from the confusion matrix, computed as scikit-learn does (its
``precision_recall_fscore_support`` with ``zero_division=0`` and ``confusion_matrix``; the tests
check the two agree), without importing scikit-learn on the run path: it costs 0.7-1.4 s of
start-up and about 10 ms per checkpoint for four summaries.

Binary tasks (two classes) add ``roc_auc`` and ``log_loss`` from the softmax probabilities, with
memory that does not grow with the number of samples (``BinaryScores``); class index 1 (the second
class name) is the positive class, as scikit-learn's default ``pos_label=1``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

DEFAULT_MIN_ACCURACY = 0.7
DEFAULT_MIN_F1_MACRO = 0.7
OVERALL = ""  # class_label of a metric that is not per class


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x num_classes int64 counts: rows are true labels, columns predictions."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            bad = int(values.min()) if int(values.min()) < 0 else int(values.max())
            raise ValueError(f"{name} {bad} is outside 0..{num_classes - 1}")
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Curve:
    """Points of a curve in order: ROC (x false positive rate, y true positive rate) or precision-recall
    (x recall, y precision). Stored with the run (a few KB of JSON), so a report can draw it later."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def as_json(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}


def _rounded(values: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


class BinaryScores:
    """ROC AUC and log loss of a two-class model, accumulated batch by batch in bounded memory.

    Log loss is exact: the sum of ``-log(clip(p_true, eps, 1 - eps))`` in float64 with float64's
    machine epsilon, as scikit-learn's ``log_loss`` computes it from the same probabilities.

    ROC AUC comes from two histograms (positives, negatives) of the log-odds ``s = logit_1 - logit_0``
    (``p_1 = sigmoid(s)``, a monotone map: the same ranking as the probabilities) over
    ``[-LOG_ODDS_LIMIT, LOG_ODDS_LIMIT]`` in ``BINS`` equal bins (width 7.6e-5; scores beyond the range
    fall in the end bins, where float64 probabilities have long saturated to 0 or 1 and tie anyway).
    Pairs in different bins are ranked exactly and equal scores always tie, as in scikit-learn's
    ``roc_auc_score``; a (positive, negative) pair whose scores differ but share a bin counts as a tie
    (1/2 instead of 0 or 1). The error is therefore at most half the fraction of positive-negative pairs
    sharing a bin, ``sum_b pos_b * neg_b / (2 * P * N)``, which ``auc_error_bound`` reports. Memory:
    2 x BINS int64 counts (16 MiB), whatever the number of samples.
    """

    BINS = 1 << 20
    LOG_ODDS_LIMIT = 40.0
    EPS = float(np.finfo(np.float64).eps)

    def __init__(self) -> None:
        self._counts = np.zeros(2 * self.BINS, dtype=np.int64)  # [bin * 2 + label]
        self._log_loss_sum = 0.0
        self._count = 0
        self._non_finite = False

    def update(self, labels: np.ndarray, logits: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64).ravel()
        logits = np.asarray(logits, dtype=np.float64).reshape(len(labels), 2)
        s = logits[:, 1] - logits[:, 0]
        if not np.isfinite(s).all():
            self._non_finite = True
            s = np.nan_to_num(s, nan=0.0)
        # -log p(true): p_1 = sigmoid(s), p_0 = sigmoid(-s); clipped to [eps, 1 - eps] like scikit-learn.
        toward_true = np.where(labels == 1, s, -s)
        p_true = np.clip(1.0 / (1.0 + np.exp(-toward_true)), self.EPS, 1.0 - self.EPS)
        self._log_loss_sum += float(-np.log(p_true).sum())
        position = (np.clip(s, -self.LOG_ODDS_LIMIT, self.LOG_ODDS_LIMIT) + self.LOG_ODDS_LIMIT) * (
            self.BINS / (2 * self.LOG_ODDS_LIMIT)
        )
        bins = np.minimum(position.astype(np.int64), self.BINS - 1)
        np.add.at(self._counts, bins * 2 + labels, 1)
        self._count += len(labels)

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        return self._counts[1::2], self._counts[0::2]  # positives, negatives per bin

    def log_loss(self) -> float:
        return math.nan if self._non_finite else self._log_loss_sum / self._count

    def roc_auc(self) -> float | None:
        """None when only one class is present (undefined, as scikit-learn refuses it)."""
        positives, negatives = self._split()
        p, n = int(positives.sum()), int(negatives.sum())
        if p == 0 or n == 0:
            return None
        if self._non_finite:
            return math.nan
        below = np.cumsum(negatives) - negatives  # negatives in strictly lower bins
        doubled = 2 * int(np.dot(positives, below)) + int(np.dot(positives, negatives))
        return doubled / (2 * p * n)

    def curves(self, max_points: int = 200) -> tuple[Curve, Curve] | None:
        """The ROC and precision-recall curves at up to ``max_points`` thresholds (the histogram's
        non-empty bins, evenly thinned), what a report draws; None when a class is missing."""
        positives, negatives = self._split()
        p, n = int(positives.sum()), int(negatives.sum())
        if p == 0 or n == 0 or self._non_finite:
            return None
        occupied = np.flatnonzero(positives + negatives)[::-1]  # thresholds from the highest score down
        true_positives = np.cumsum(positives[occupied])
        false_positives = np.cumsum(negatives[occupied])
        keep = np.unique(np.linspace(0, len(occupied) - 1, min(max_points, len(occupied))).round().astype(np.int64))
        tpr, fpr = true_positives[keep] / p, false_positives[keep] / n
        precision = true_positives[keep] / (true_positives[keep] + false_positives[keep])
        roc = Curve((0.0, *_rounded(fpr)), (0.0, *_rounded(tpr)))
        pr = Curve((0.0, *_rounded(tpr)), (1.0, *_rounded(precision)))
        return roc, pr

    def auc_error_bound(self) -> float:
        positives, negatives = self._split()
        p, n = int(positives.sum()), int(negatives.sum())
        return int(np.dot(positives, negatives)) / (2 * p * n) if p and n else 0.0


class MetricAccumulator:
    """Collects the confusion matrix and the summed loss batch by batch (constant memory).

    With two classes and the logits passed to ``update``, also ROC AUC and log loss (BinaryScores).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self._loss_sum = 0.0
        self._count = 0
        self._binary = BinaryScores() if num_classes == 2 else None
        self._scored = 0

    def update(
        self, labels: np.ndarray, predictions: np.ndarray, loss_sum: float, logits: np.ndarray | None = None
    ) -> None:
        counts = confusion_counts(labels, predictions, self.num_classes)
        self._confusion += counts
        self._loss_sum += float(loss_sum)
        self._count += int(counts.sum())
        if self._binary is not None and logits is not None:
            self._binary.update(labels, logits)
            self._scored += int(counts.sum())

    def result(self) -> Metrics:
        if self._count == 0:
            raise ValueError("no samples were evaluated")
        roc_auc = log_loss = curves = None
        if self._binary is not None and self._scored == self._count:
            roc_auc, log_loss = self._binary.roc_auc(), self._binary.log_loss()
            curves = self._binary.curves()
        metrics = metrics_from_confusion(self._confusion, self._loss_sum, roc_auc=roc_auc, log_loss=log_loss)
        return metrics if curves is None else replace(metrics, roc_curve=curves[0], pr_curve=curves[1])


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
    roc_auc: float | None = None  # binary tasks only (None: one class present, or not binary)
    log_loss: float | None = None  # binary tasks only
    roc_curve: Curve | None = None  # binary tasks only
    pr_curve: Curve | None = None  # binary tasks only

    def overall(self) -> dict[str, float]:
        """The overall metrics by name (what gate rules compare)."""
        return {metric: value for metric, label, value in self.rows() if label == OVERALL}

    def curves_json(self) -> str | None:
        if self.roc_curve is None or self.pr_curve is None:
            return None
        return json.dumps({"roc": self.roc_curve.as_json(), "pr": self.pr_curve.as_json()}, separators=(",", ":"))

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
        if self.roc_auc is not None:
            rows.append(("roc_auc", OVERALL, self.roc_auc))
        if self.log_loss is not None:
            rows.append(("log_loss", OVERALL, self.log_loss))
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
    return metrics_from_confusion(confusion_counts(labels, predictions, num_classes), loss_sum)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator in float64, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    denominator = denominator.astype(np.float64)
    zero = denominator == 0
    denominator[zero] = 1.0
    result = numerator.astype(np.float64) / denominator
    result[zero] = 0.0
    return result


def metrics_from_confusion(
    matrix: np.ndarray, loss_sum: float, roc_auc: float | None = None, log_loss: float | None = None
) -> Metrics:
    """All metrics of one evaluation from its confusion matrix and summed loss."""
    matrix = np.asarray(matrix, dtype=np.int64)
    num_classes = matrix.shape[0]
    n = int(matrix.sum())
    tp = np.diagonal(matrix).copy()
    true_sum = matrix.sum(axis=1)  # support
    pred_sum = matrix.sum(axis=0)
    precision = _divide(tp, pred_sum)
    recall = _divide(tp, true_sum)
    f1 = _divide(2.0 * tp, 1.0 * true_sum + pred_sum)
    # Averages over the classes present in labels or predictions (scikit-learn's default), so a
    # test set that lacks a class is not marked down for it; per-class rows cover every class.
    present = (true_sum + pred_sum) > 0
    weights = true_sum[present]
    return Metrics(
        n_samples=n,
        loss=loss_sum / n,
        accuracy=float(tp.sum()) / n,
        f1_macro=float(np.mean(f1[present])),
        f1_weighted=float(np.average(f1[present], weights=weights)) if weights.sum() else 0.0,
        precision_macro=float(np.mean(precision[present])),
        recall_macro=float(np.mean(recall[present])),
        per_class=tuple(
            ClassMetrics(c, float(precision[c]), float(recall[c]), float(f1[c]), int(true_sum[c]))
            for c in range(num_classes)
        ),
        confusion=tuple(tuple(int(v) for v in row) for row in matrix),
        roc_auc=roc_auc,
        log_loss=log_loss,
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
    """The checkpoint's two threshold columns alone (gates.apply_rules with their default rules): a metric
    that is NaN, infinite, or below its threshold fails, and so does a loss that is not finite."""
    from .gates import PairGate, apply_rules, default_rules

    outcome = apply_rules(metrics.overall(), PairGate(default_rules(gate.min_accuracy, gate.min_f1_macro)), None)
    return Verdict(outcome.passed, outcome.reasons)
