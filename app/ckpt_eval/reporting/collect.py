"""From the rows the database returns to a ReportData (pure): runs with their metrics, gate results and
curves, the dataset's history with the champion of each moment, the promotions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from ..gates import results_from_json
from ..metrics import OVERALL
from .model import ClassRow, Curve, HistoryPoint, Promotion, ReportData, ReportRun

HISTORY_METRICS = ("accuracy", "f1_macro")


def _curve(stored: Mapping[str, Any] | None) -> Curve | None:
    if not stored:
        return None
    return Curve(tuple(float(v) for v in stored["x"]), tuple(float(v) for v in stored["y"]))


def _class_name(names: Sequence[str] | None, index: int) -> str:
    return names[index] if names and index < len(names) else str(index)


def report_run(
    row: Mapping[str, Any],
    metric_rows: Sequence[Mapping[str, Any]],
    class_names: Sequence[str] | None,
    champion_id: int | None,
) -> ReportRun:
    """One ckpt_eval.evaluation_runs row (sql.REPORT_RUN_COLUMNS) and its metric rows."""
    overall: dict[str, float] = {}
    per_class: dict[int, dict[str, float]] = {}
    for metric in metric_rows:
        label, value = metric["class_label"], float(metric["value"])
        if label == OVERALL:
            overall[metric["metric"]] = value
        elif label.isdigit():
            per_class.setdefault(int(label), {})[metric["metric"]] = value
    curves = json.loads(row["curves"]) if row.get("curves") else {}
    confusion = json.loads(row["confusion_matrix"]) if row.get("confusion_matrix") else None
    return ReportRun(
        run_id=int(row["run_id"]),
        checkpoint_name=row["checkpoint_name"],
        checkpoint_id=int(row["checkpoint_id"]),
        dataset=row["dataset"],
        dataset_sha256=row.get("dataset_sha256"),
        status=row["status"],
        verdict=row["verdict"],
        verdict_reasons=row.get("verdict_reasons"),
        error=row.get("error"),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        n_samples=row.get("n_samples"),
        metrics=overall,
        per_class=tuple(
            ClassRow(
                label=index,
                name=_class_name(class_names, index),
                precision=values.get("precision", 0.0),
                recall=values.get("recall", 0.0),
                f1=values.get("f1", 0.0),
                support=int(values.get("support", 0)),
            )
            for index, values in sorted(per_class.items())
        ),
        confusion=None if confusion is None else tuple(tuple(int(v) for v in line) for line in confusion),
        rules=results_from_json(row.get("gate_results")),
        gate_note=row.get("gate_note"),
        roc=_curve(curves.get("roc")),
        pr=_curve(curves.get("pr")),
        champion=champion_id is not None and int(row["checkpoint_id"]) == champion_id,
    )


def champion_at(promotions: Sequence[Promotion], moment: datetime) -> str | None:
    """The dataset's champion at ``moment``: its latest promotion until then (promotions oldest first)."""
    current = None
    for promotion in promotions:
        if promotion.promoted_at <= moment:
            current = promotion.checkpoint_name
    return current


def promotions_of(rows: Sequence[Mapping[str, Any]], dataset: str | None) -> tuple[Promotion, ...]:
    return tuple(
        Promotion(row["checkpoint_name"], row["dataset"], row["promoted_at"], row["promoted_by"], row.get("reason"))
        for row in rows
        if dataset is None or row["dataset"] == dataset
    )


def history_points(rows: Sequence[Mapping[str, Any]], promotions: Sequence[Promotion]) -> tuple[HistoryPoint, ...]:
    """sql.REPORT_HISTORY rows (one per run and metric, oldest first) as points; each knows whether its
    checkpoint was the champion when the run finished."""
    runs: dict[int, dict[str, Any]] = {}
    for row in rows:
        run = runs.setdefault(int(row["run_id"]), {**row, "metrics": {}})
        run["metrics"][row["metric"]] = float(row["value"])
    return tuple(
        HistoryPoint(
            run_id=run_id,
            checkpoint_name=run["checkpoint_name"],
            finished_at=run["finished_at"],
            metrics=run["metrics"],
            verdict=run["verdict"],
            champion=champion_at(promotions, run["finished_at"]) == run["checkpoint_name"],
        )
        for run_id, run in runs.items()
    )


def build_report(
    kind: Literal["run", "checkpoint", "comparison"],
    title: str,
    runs: Sequence[ReportRun],
    history_rows: Sequence[Mapping[str, Any]],
    promotion_rows: Sequence[Mapping[str, Any]],
    history_dataset: str | None,
    generated_at: datetime,
) -> ReportData:
    promotions = promotions_of(promotion_rows, history_dataset)
    return ReportData(
        kind=kind,
        title=title,
        generated_at=generated_at,
        runs=tuple(runs),
        history=history_points(history_rows, promotions),
        history_dataset=history_dataset,
        champion=promotions[-1].checkpoint_name if promotions else None,
        promotions=promotions,
        history_metrics=HISTORY_METRICS,
    )
