"""`ckpt-eval report`: read what the report shows (db/champions.py), build it (collect.py), render it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import UsageError
from ..text import quoted
from .collect import HISTORY_METRICS, build_report, report_run
from .model import ReportData

if TYPE_CHECKING:
    from ..db.champions import ChampionRepository
    from .html import ReportFiles

MAX_RUNS = 50  # runs in one report (a comparison of every checkpoint of a dataset stays readable)


def build(
    repository: ChampionRepository,
    out_dir: Path,
    *,
    run_ids: Sequence[int],
    checkpoints: Sequence[str],
    dataset: str | None,
) -> tuple[ReportFiles, ReportData]:
    kind, title, rows = _select(repository, run_ids, checkpoints, dataset)
    if not rows:
        raise UsageError(f"nothing to report: {title} has no run yet")
    datasets = sorted({row["dataset"] for row in rows})
    class_names = {name: (repository.dataset(name) or {}).get("class_names") for name in datasets}
    promotions = repository.promotions(None)
    champion_of = {row["dataset"]: int(row["checkpoint_id"]) for row in promotions}  # the latest wins
    metrics = repository.run_metrics([int(row["run_id"]) for row in rows])
    by_run: dict[int, list] = {}
    for metric in metrics:
        by_run.setdefault(int(metric["run_id"]), []).append(metric)
    runs = [
        report_run(
            row, by_run.get(int(row["run_id"]), []), class_names[row["dataset"]], champion_of.get(row["dataset"])
        )
        for row in rows
    ]
    history_dataset = dataset or datasets[0]
    history = repository.history(history_dataset, HISTORY_METRICS)
    data = build_report(kind, title, runs, history, promotions, history_dataset, datetime.now().astimezone())
    from .html import render_report  # matplotlib and Jinja2: only when a report is made

    return render_report(data, out_dir), data


def _select(
    repository: ChampionRepository, run_ids: Sequence[int], checkpoints: Sequence[str], dataset: str | None
) -> tuple[Literal["run", "checkpoint", "comparison"], str, list[dict]]:
    if run_ids:
        if checkpoints or dataset:
            raise UsageError("--run names runs: give it without --checkpoint or --dataset")
        unique = list(dict.fromkeys(run_ids))[:MAX_RUNS]
        rows = [row for row in map(repository.report_run, unique) if row is not None]
        missing = sorted(set(unique) - {int(row["run_id"]) for row in rows})
        if missing and rows:
            raise UsageError(f"no run numbered {', '.join(map(str, missing[:10]))}")
        if len(unique) == 1:
            return "run", f"run {unique[0]}", rows
        return "comparison", f"{len(unique)} runs", rows
    if len(checkpoints) == 1 and dataset is None:
        return "checkpoint", f"checkpoint {quoted(checkpoints[0])}", repository.latest_runs(checkpoints, None, MAX_RUNS)
    if len(checkpoints) == 1:
        title = f"checkpoint {quoted(checkpoints[0])} on {quoted(dataset or '', 60)}"
        return "checkpoint", title, repository.latest_runs(checkpoints, dataset, MAX_RUNS)
    if dataset is None:
        raise UsageError("a report needs --run N, --checkpoint NAME, or --dataset NAME (to compare checkpoints)")
    title = f"checkpoints on {quoted(dataset, 60)}"
    return "comparison", title, repository.latest_runs(checkpoints or None, dataset, MAX_RUNS)
