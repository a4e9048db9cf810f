"""Figures of a report, drawn with matplotlib's object API on the Agg canvas.

Never pyplot: pyplot keeps global figure state and may pick a GUI backend, while a bare ``Figure`` with
a ``FigureCanvasAgg`` is an ordinary object that is freed like any other (and safe to draw from a
worker thread). matplotlib is imported here only, so commands that draw nothing do not pay for it.

Every text drawn comes from the database: it goes through ``printable`` (control characters shown as
escapes) and has its ``$`` escaped, so a name such as ``$\\frac{$`` is drawn as it is instead of being
parsed as mathtext (which would raise at draw time or show something else than the name).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from ..text import printable
from .model import Curve, HistoryPoint, ReportData, ReportRun

# Every PNG has this size, whatever it shows: the page lays figures out in a grid of equal cells.
FIGURE_WIDTH_INCHES = 6.4
FIGURE_HEIGHT_INCHES = 4.8
FIGURE_DPI = 100
PNG_WIDTH_PX = round(FIGURE_WIDTH_INCHES * FIGURE_DPI)  # 640
PNG_HEIGHT_PX = round(FIGURE_HEIGHT_INCHES * FIGURE_DPI)  # 480

TICK_LABEL_LIMIT = 20  # class and checkpoint names on an axis
LEGEND_LABEL_LIMIT = 24
TITLE_LIMIT = 60
MAX_NAMED_CLASSES = 40  # beyond this, names would overlap: the axes show class indices
MAX_ANNOTATED_CLASSES = 20  # beyond this, cell numbers would overlap: the colour alone tells
MAX_HISTORY_SERIES = 10  # checkpoints with their own legend entry; the others are drawn as "other"
OTHER_LABEL = "other"
CHAMPION_LABEL = "champion"
PROMOTION_LABEL = "promotion"
COMPARISON_METRICS = ("accuracy", "f1_macro")
COMPARISON_OPTIONAL_METRICS = ("roc_auc",)  # drawn only when every compared run has it

# PNG metadata would otherwise carry the matplotlib version: same data, same bytes.
_PNG_METADATA: dict[str, str | None] = {"Software": None}


def label(value: object, limit: int | None = None) -> str:
    """Untrusted text as drawn: control characters escaped, mathtext disabled, cut to ``limit``."""
    text = printable(value, limit).replace("$", r"\$")
    # A legend skips every artist whose label starts with "_": a leading space keeps the name listed.
    return " " + text if text.startswith("_") else text


def _new_figure() -> Figure:
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, FIGURE_HEIGHT_INCHES), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _run_title(what: str, run: ReportRun) -> str:
    return f"{what}: {label(run.checkpoint_name, TITLE_LIMIT)} (run {run.run_id})"


def _class_names(run: ReportRun, count: int) -> list[str]:
    names = {row.label: row.name for row in run.per_class}
    return [label(names.get(index, str(index)), TICK_LABEL_LIMIT) for index in range(count)]


def _legend_below(figure: Figure, ax: Axes, columns: int) -> None:
    """The legend under the axes, in columns: inside, it would cover bars or points (the constrained
    layout makes room for it, which it does not for a legend anchored outside an axes)."""
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=columns, fontsize=7, frameon=False)


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix(run: ReportRun) -> np.ndarray:
    """The stored matrix as integers (rows: true class, columns: predicted)."""
    if not run.confusion or not run.confusion[0]:
        raise ValueError(f"run {run.run_id} has no confusion matrix")
    return np.asarray(run.confusion, dtype=np.int64)


def normalised_confusion(matrix: np.ndarray) -> np.ndarray:
    """Each row over its support (the fraction of a true class predicted as each class); empty rows stay 0."""
    support = matrix.sum(axis=1, keepdims=True)
    out = np.zeros(matrix.shape, dtype=np.float64)
    np.divide(matrix, support, out=out, where=support > 0)
    return out


def confusion_figure(run: ReportRun, normalised: bool) -> Figure:
    """Heatmap of the confusion matrix: counts, or fractions of each true class when ``normalised``."""
    counts = confusion_matrix(run)
    shown = normalised_confusion(counts) if normalised else counts
    figure = _new_figure()
    ax = figure.add_subplot()
    # Normalised cells share one scale (0..1) across runs, so colours compare between figures.
    limits = {"vmin": 0.0, "vmax": 1.0} if normalised else {}
    image = ax.imshow(shown, cmap="Blues", interpolation="nearest", aspect="auto", **limits)
    figure.colorbar(image, ax=ax, label="fraction of true class" if normalised else "samples")
    rows, columns = shown.shape
    if max(rows, columns) <= MAX_NAMED_CLASSES:
        ax.set_xticks(range(columns), _class_names(run, columns), rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(rows), _class_names(run, rows))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(_run_title("Confusion matrix" + (" (row-normalised)" if normalised else ""), run), fontsize=10)
    if max(rows, columns) <= MAX_ANNOTATED_CLASSES:
        _annotate_cells(ax, shown, normalised)
    return figure


def _annotate_cells(ax: Axes, shown: np.ndarray, normalised: bool) -> None:
    peak = float(shown.max()) if shown.size else 0.0
    threshold = 0.5 if normalised else peak / 2
    size = 8 if max(shown.shape) <= 10 else 6
    for (row, column), value in np.ndenumerate(shown):
        text = f"{value:.2f}" if normalised else f"{int(value)}"
        # White on the dark cells, black on the light ones.
        colour = "white" if value > threshold else "black"
        ax.text(column, row, text, ha="center", va="center", color=colour, fontsize=size)


# --------------------------------------------------------------------------- per class


def per_class_figure(run: ReportRun) -> Figure:
    """Grouped bars of precision, recall and F1 for each class."""
    if not run.per_class:
        raise ValueError(f"run {run.run_id} has no per-class metrics")
    rows = sorted(run.per_class, key=lambda row: row.label)
    figure = _new_figure()
    ax = figure.add_subplot()
    positions = np.arange(len(rows), dtype=np.float64)
    width = 0.8 / 3
    series = (
        ("precision", [row.precision for row in rows]),
        ("recall", [row.recall for row in rows]),
        ("F1", [row.f1 for row in rows]),
    )
    for offset, (name, values) in enumerate(series):
        ax.bar(positions + (offset - 1) * width, values, width, label=name)
    if len(rows) <= MAX_NAMED_CLASSES:
        names = [label(row.name, TICK_LABEL_LIMIT) for row in rows]
        ax.set_xticks(positions, names, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xlabel("class index")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score")
    ax.set_title(_run_title("Per-class metrics", run), fontsize=10)
    _legend_below(figure, ax, columns=3)
    return figure


# --------------------------------------------------------------------------- curves


def _curve_axes(figure: Figure, curve: Curve, what: str, run: ReportRun) -> Axes:
    if not curve.x:
        raise ValueError(f"run {run.run_id} has an empty {what} curve")
    ax = figure.add_subplot()
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.set_title(_run_title(what, run), fontsize=10)
    return ax


def roc_figure(run: ReportRun) -> Figure:
    """ROC curve of a binary run, with the chance diagonal and the run's AUC in the legend."""
    if run.roc is None:
        raise ValueError(f"run {run.run_id} has no ROC curve")
    figure = _new_figure()
    ax = _curve_axes(figure, run.roc, "ROC curve", run)
    auc = run.metrics.get("roc_auc")
    name = "ROC" if auc is None or not math.isfinite(auc) else f"ROC (AUC = {auc:.4f})"
    ax.plot(run.roc.x, run.roc.y, color="tab:blue", linewidth=2, label=name)
    ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    return figure


def pr_figure(run: ReportRun) -> Figure:
    """Precision-recall curve of a binary run."""
    if run.pr is None:
        raise ValueError(f"run {run.run_id} has no precision-recall curve")
    figure = _new_figure()
    ax = _curve_axes(figure, run.pr, "Precision-recall curve", run)
    ax.plot(run.pr.x, run.pr.y, color="tab:orange", linewidth=2, label="precision-recall")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(loc="lower left", fontsize=8)
    return figure


# --------------------------------------------------------------------------- history


def history_points(data: ReportData, metric: str) -> list[HistoryPoint]:
    """The history points that have a finite value of ``metric``, oldest first."""
    points = [p for p in data.history if _finite(p.metrics.get(metric))]
    return sorted(points, key=lambda p: p.finished_at)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _series_names(points: Sequence[HistoryPoint], champion: str | None) -> list[str]:
    """Checkpoints given their own series: the current champion, then the most recently run ones."""
    latest: dict[str, datetime] = {}
    for point in points:
        latest[point.checkpoint_name] = point.finished_at  # points are in time order: the last one wins
    recent = sorted(latest, key=lambda name: latest[name], reverse=True)
    if champion in latest:
        recent.remove(champion)
        recent.insert(0, champion)
    return recent[:MAX_HISTORY_SERIES]


def history_figure(data: ReportData, metric: str) -> Figure:
    """``metric`` of every run over time: one series per checkpoint, stars on the champion's runs,
    a vertical line at each promotion."""
    points = history_points(data, metric)
    figure = _new_figure()
    ax = figure.add_subplot()
    where = f" on {label(data.history_dataset, TITLE_LIMIT)}" if data.history_dataset else ""
    ax.set_title(f"{label(metric, TITLE_LIMIT)} over time{where}", fontsize=10)
    ax.set_ylabel(label(metric, TITLE_LIMIT))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if not points:
        ax.text(0.5, 0.5, "no runs with this metric", ha="center", va="center", transform=ax.transAxes)
        return figure
    _plot_series(ax, points, metric, data.champion)
    _plot_promotions(ax, data)
    ax.grid(True, alpha=0.3)
    _legend_below(figure, ax, columns=3)
    return figure


def _plot_series(ax: Axes, points: Sequence[HistoryPoint], metric: str, champion: str | None) -> None:
    named = _series_names(points, champion)
    groups: dict[str, list[HistoryPoint]] = defaultdict(list)
    others: list[HistoryPoint] = []  # apart from groups: a checkpoint may well be named "other"
    for point in points:
        (groups[point.checkpoint_name] if point.checkpoint_name in named else others).append(point)
    for name in named:
        _plot_points(ax, groups[name], metric, label=label(name, LEGEND_LABEL_LIMIT), marker="o", linestyle="-")
    if others:
        _plot_points(ax, others, metric, label=OTHER_LABEL, marker="x", linestyle="", color="black", markersize=4)
    crowned = [point for point in points if point.champion]
    if crowned:
        # Drawn last, on top: the runs made while their checkpoint was the dataset's champion.
        _plot_points(
            ax, crowned, metric, label=CHAMPION_LABEL, marker="*", linestyle="", color="gold",
            markersize=14, markeredgecolor="black", zorder=5,
        )  # fmt: skip


def _plot_points(ax: Axes, points: Sequence[HistoryPoint], metric: str, **style: object) -> None:
    times = [point.finished_at for point in points]
    values = [point.metrics[metric] for point in points]
    ax.plot(times, values, **style)


def _plot_promotions(ax: Axes, data: ReportData) -> None:
    for index, promotion in enumerate(sorted(data.promotions, key=lambda p: p.promoted_at)):
        # One legend entry for all of them; the checkpoint promoted is written along the line.
        ax.axvline(
            promotion.promoted_at, color="tab:red", linestyle=":", linewidth=1,
            label=PROMOTION_LABEL if index == 0 else "_promotion",
        )  # fmt: skip
        ax.annotate(
            label(promotion.checkpoint_name, TICK_LABEL_LIMIT), xy=(promotion.promoted_at, 1.0),
            xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top", fontsize=6, color="tab:red",
        )  # fmt: skip


# --------------------------------------------------------------------------- comparison


def comparison_metrics(data: ReportData) -> tuple[str, ...]:
    """The overall metrics a comparison shows: accuracy and f1_macro, roc_auc when every run has it."""
    optional = tuple(m for m in COMPARISON_OPTIONAL_METRICS if data.runs and all(m in r.metrics for r in data.runs))
    return COMPARISON_METRICS + optional


def comparison_figure(data: ReportData) -> Figure:
    """Grouped bars of the main overall metrics, one group per compared checkpoint."""
    if not data.runs:
        raise ValueError("a comparison needs at least one run")
    metrics = comparison_metrics(data)
    figure = _new_figure()
    ax = figure.add_subplot()
    positions = np.arange(len(data.runs), dtype=np.float64)
    width = 0.8 / len(metrics)
    for offset, metric in enumerate(metrics):
        # A run without the metric (a failed run) leaves a gap rather than a zero-height bar that reads as 0.
        values = [run.metrics.get(metric, math.nan) for run in data.runs]
        shift = (offset - (len(metrics) - 1) / 2) * width
        ax.bar(positions + shift, values, width, label=metric)
    names = [label(run.checkpoint_name, TICK_LABEL_LIMIT) for run in data.runs]
    ax.set_xticks(positions, names, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score")
    ax.set_title(label(data.title, TITLE_LIMIT), fontsize=10)
    _legend_below(figure, ax, columns=len(metrics))
    return figure


# --------------------------------------------------------------------------- output


def render_png(figure: Figure) -> bytes:
    """The figure as PNG bytes of PNG_WIDTH_PX x PNG_HEIGHT_PX pixels."""
    figure.set_size_inches(FIGURE_WIDTH_INCHES, FIGURE_HEIGHT_INCHES)
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No bbox_inches="tight": it would change the pixel size from figure to figure.
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, facecolor="white", metadata=_PNG_METADATA)
    return buffer.getvalue()
