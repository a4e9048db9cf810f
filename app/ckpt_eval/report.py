"""Rendering results for people (aligned tables) and machines (JSON). Pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .text import printable, quoted

if TYPE_CHECKING:
    from .job import JobSummary
    from .scoring import ScoringSummary


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    # Names come from the database: control characters escaped, one line per row.
    text = printable(value)
    return text if len(text) <= 60 else text[:57] + "..."


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Render rows as an aligned text table; ``columns`` is (key, header) pairs."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


SUMMARY_COLUMNS = (
    ("checkpoint_id", "id"),
    ("name", "checkpoint"),
    ("dataset", "dataset"),
    ("attempt", "attempt"),
    ("run_id", "run"),
    ("status", "status"),
    ("verdict", "verdict"),
    ("accuracy", "accuracy"),
    ("f1_macro", "f1_macro"),
    ("loss", "loss"),
    ("error", "error"),
)

STATUS_COLUMNS = (
    ("checkpoint_id", "id"),
    ("name", "checkpoint"),
    ("arch", "arch"),
    ("dataset", "dataset"),
    ("job_status", "job"),
    ("attempt", "attempt"),
    ("run_id", "last run"),
    ("run_status", "run status"),
    ("verdict", "verdict"),
    ("accuracy", "accuracy"),
    ("f1_macro", "f1_macro"),
    ("finished_at", "finished"),
)

PLAN_COLUMNS = (
    ("checkpoint_id", "id"),
    ("name", "checkpoint"),
    ("arch", "arch"),
    ("dataset", "dataset"),
    ("status", "status now"),
    ("attempt", "attempts so far"),
)


def summary_text(summary: JobSummary) -> str:
    rows = [asdict(o) for o in summary.outcomes]
    if not rows:
        return "nothing to evaluate: no pending (checkpoint, dataset) pairs"
    recorded = summary.recorded
    passed = sum(o.ok for o in recorded)
    failed = sum(o.status == "failed" for o in recorded)
    gated = len(recorded) - passed - failed
    lost = len(summary.outcomes) - len(recorded)
    footer = f"{len(recorded)} evaluated: {passed} passed, {gated} failed the gate, {failed} failed to evaluate"
    if lost:
        footer += f"; {lost} lost to another worker"
    # Which gate requirement failed and by how much: the reason a pipeline stops.
    reasons = [
        f"{printable(o.name, 60)} on {printable(o.dataset, 60)}: {printable(o.verdict_reasons, 1000)}"
        for o in recorded
        if o.status == "succeeded" and o.verdict == "fail" and o.verdict_reasons
    ]
    gate = "".join(f"\ngate failed: {reason}" for reason in reasons)
    return table(rows, SUMMARY_COLUMNS) + gate + "\n" + footer


DATASET_COLUMNS = (
    ("name", "dataset"),
    ("kind", "kind"),
    ("source", "source"),
    ("split", "split"),
    ("features", "features"),
    ("label_column", "label"),
    ("class_names", "classes"),
    ("fingerprint", "version last evaluated"),
)


def dataset_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Dataset registry rows for the table: column lists summarised (a table may have hundreds)."""
    shown = []
    for row in rows:
        features = row.get("feature_columns")
        classes = row.get("class_names")
        shown.append(
            {
                **row,
                "features": None if not features else f"{len(features)} columns",
                "class_names": None if not classes else ",".join(classes),
                "fingerprint": (row.get("fingerprint") or "")[:12] or None,
            }
        )
    return shown


def summary_json(summary: JobSummary) -> str:
    return to_json({"evaluated": [asdict(o) for o in summary.outcomes], "all_passed": summary.all_passed})


def to_json(data: Any) -> str:
    """JSON with NaN and infinities as null: strict parsers reject the bare tokens."""
    return json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


SCORING_RUN_COLUMNS = (
    ("scoring_run_id", "run"),
    ("checkpoint_name", "checkpoint"),
    ("rescore", "rescore"),
    ("status", "status"),
    ("planned_rows", "planned"),
    ("rows_scored", "scored"),
    ("rows_skipped", "skipped"),
    ("failed_chunks", "failed chunks"),
    ("started_at", "started"),
    ("finished_at", "finished"),
)


def scoring_summary_text(summary: ScoringSummary) -> str:
    """What one ``ckpt-eval score`` did, for people (names escaped)."""
    job = quoted(summary.job, 60)
    if summary.dry_run:
        where = f" (left in scoring run {summary.scoring_run_id})" if summary.scoring_run_id else ""
        return f"scoring job {job}: {summary.planned_rows} row(s) would be scored{where}"
    if summary.scoring_run_id is None:
        return f"scoring job {job}: nothing to score"
    how = "started" if summary.started else "joined"
    done = [c for c in summary.chunks if c.status == "done"]
    failed = [c for c in summary.chunks if c.status == "failed"]
    lost = [c for c in summary.chunks if c.status == "lost"]
    lines = [
        f"scoring job {job}: {how} scoring run {summary.scoring_run_id} ({summary.planned_rows} row(s) planned); "
        f"this worker: {len(done)} chunk(s), {summary.rows_scored} row(s) scored, {summary.rows_skipped} skipped, "
        f"{len(failed)} chunk(s) failed, {len(lost)} lost; run {summary.run_status}"
    ]
    lines += [f"  chunk {c.chunk_no} failed: {printable(c.error or '', 300)}" for c in failed]
    return "\n".join(lines)


def scoring_summary_json(summary: ScoringSummary) -> str:
    data = asdict(summary)
    data.update(rows_scored=summary.rows_scored, rows_skipped=summary.rows_skipped, ok=summary.ok)
    return to_json(data)
