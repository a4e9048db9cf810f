"""What a report shows: plain data read from the database, every text field untrusted (escape it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ..gates import RuleResult
from ..metrics import Curve


@dataclass(frozen=True)
class ClassRow:
    label: int
    name: str  # the class name, or the index as text when the dataset names no classes
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ReportRun:
    run_id: int
    checkpoint_name: str
    checkpoint_id: int
    dataset: str
    dataset_sha256: str | None
    status: str  # succeeded / failed
    verdict: str  # pass / fail
    verdict_reasons: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    n_samples: int | None
    metrics: dict[str, float]  # overall metrics: accuracy, f1_macro, loss, roc_auc, ...
    per_class: tuple[ClassRow, ...] = ()
    confusion: tuple[tuple[int, ...], ...] | None = None  # rows: true class, columns: predicted
    rules: tuple[RuleResult, ...] = ()
    gate_note: str | None = None  # e.g. "no champion for dataset 'x' yet: change rules skipped"
    roc: Curve | None = None  # binary tasks
    pr: Curve | None = None  # binary tasks
    champion: bool = False  # the checkpoint was the dataset's champion when the report was made


@dataclass(frozen=True)
class HistoryPoint:
    run_id: int
    checkpoint_name: str
    finished_at: datetime
    metrics: dict[str, float]
    verdict: str
    champion: bool  # the checkpoint was the champion at finished_at


@dataclass(frozen=True)
class Promotion:
    checkpoint_name: str
    dataset: str
    promoted_at: datetime
    promoted_by: str
    reason: str | None


@dataclass(frozen=True)
class ReportData:
    kind: Literal["run", "checkpoint", "comparison"]
    title: str
    generated_at: datetime
    runs: tuple[ReportRun, ...]  # one (run), a checkpoint's latest per dataset, or one per compared checkpoint
    history: tuple[HistoryPoint, ...] = ()  # the dataset's (or checkpoint line's) runs over time
    history_dataset: str | None = None
    champion: str | None = None  # the current champion of history_dataset
    promotions: tuple[Promotion, ...] = ()
    history_metrics: tuple[str, ...] = field(default=("accuracy", "f1_macro"))
