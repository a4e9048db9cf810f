"""One self-contained HTML page per report, and its figures as PNG files next to it.

The page needs nothing but itself: every figure is inlined as a ``data:`` URL, the style is inline, there is
no JavaScript, and its Content-Security-Policy forbids loading anything else. Every text from the database
is escaped twice over: ``printable`` shows control characters (and bidi overrides) as escapes, Jinja2's
autoescape turns ``<`` and quotes into entities. File names are made here from run ids and known words,
never from database text.

matplotlib is imported only when figures are drawn, so ``render_html`` works without it.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import jinja2

from ..gates import RuleResult
from ..text import printable, printable_lines
from .model import ReportData, ReportRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMPLATE = "report.html.j2"
HTML_NAME = "report.html"
DIR_MODE = 0o750
FILE_MODE = 0o640
MISSING = "–"  # a value the run does not have

FigureKind = Literal["confusion-counts", "confusion-normalised", "per-class", "roc", "pr", "history", "comparison"]

_CAPTIONS: dict[FigureKind, str] = {
    "confusion-counts": "Confusion matrix (counts)",
    "confusion-normalised": "Confusion matrix (row-normalised)",
    "per-class": "Precision, recall and F1 per class",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "history": "History",
    "comparison": "Comparison",
}
# A metric name becomes part of a file name only when it is this plain; otherwise its position does.
_SAFE_METRIC = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
_OUTCOMES = frozenset({"pass", "fail", "skipped"})
_STATUSES = frozenset({"succeeded", "failed"})
_KIND_WORDS = {"threshold": "threshold", "absolute_change": "absolute change", "relative_change": "relative change"}


@dataclass(frozen=True)
class ReportFiles:
    """What ``render_report`` wrote: the page, and every figure as its own PNG."""

    html: Path
    pngs: tuple[Path, ...]


@dataclass(frozen=True)
class FigureSlot:
    """One figure a report shows: its key (also the PNG's file stem) and what to draw."""

    key: str
    kind: FigureKind
    alt: str
    run: ReportRun | None = None
    metric: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.key}.png"


# --------------------------------------------------------------------------- which figures


def figure_slots(data: ReportData) -> list[FigureSlot]:
    """Every figure that applies to ``data``, in page order."""
    slots: list[FigureSlot] = []
    if data.kind == "comparison" and data.runs:
        slots.append(FigureSlot("comparison", "comparison", f"Main overall metrics per checkpoint: {_t(data.title)}"))
    for run in data.runs:
        slots += run_figure_slots(run)
    slots += history_figure_slots(data)
    return slots


def run_figure_slots(run: ReportRun) -> list[FigureSlot]:
    """The figures of one run: only those its data allows (a failed run may have none)."""
    kinds: list[FigureKind] = []
    if run.confusion and run.confusion[0]:
        kinds += ["confusion-counts", "confusion-normalised"]
    if run.per_class:
        kinds.append("per-class")
    if run.roc is not None and run.roc.x:
        kinds.append("roc")
    if run.pr is not None and run.pr.x:
        kinds.append("pr")
    about = f"of run {run.run_id}, checkpoint {_t(run.checkpoint_name, 200)} on dataset {_t(run.dataset, 200)}"
    return [FigureSlot(f"run-{run.run_id}-{kind}", kind, f"{_CAPTIONS[kind]} {about}", run=run) for kind in kinds]


def history_figure_slots(data: ReportData) -> list[FigureSlot]:
    """One history figure per metric of ``data.history_metrics`` that some run of the history has."""
    slots = []
    for index, metric in enumerate(dict.fromkeys(data.history_metrics)):
        if not any(_finite(point.metrics.get(metric)) for point in data.history):
            continue
        stem = metric if _SAFE_METRIC.fullmatch(metric) else f"metric-{index + 1}"
        where = f" on dataset {_t(data.history_dataset, 200)}" if data.history_dataset else ""
        alt = f"{_t(metric, 80)} of every run over time{where}; stars mark the champion's runs"
        slots.append(FigureSlot(f"history-{stem}", "history", alt, metric=metric))
    return slots


# --------------------------------------------------------------------------- drawing


def _draw(slot: FigureSlot, data: ReportData) -> Figure:
    from . import figures  # matplotlib is loaded only when something is drawn

    run = slot.run
    if slot.kind == "comparison":
        return figures.comparison_figure(data)
    if slot.kind == "history":
        assert slot.metric is not None
        return figures.history_figure(data, slot.metric)
    assert run is not None
    if slot.kind in ("confusion-counts", "confusion-normalised"):
        return figures.confusion_figure(run, normalised=slot.kind == "confusion-normalised")
    if slot.kind == "per-class":
        return figures.per_class_figure(run)
    return figures.roc_figure(run) if slot.kind == "roc" else figures.pr_figure(run)


def _png(slot: FigureSlot, data: ReportData) -> bytes:
    from .figures import render_png

    figure = _draw(slot, data)
    try:
        return render_png(figure)
    finally:
        # Drop the artists now rather than at the next garbage collection: a report may draw hundreds.
        figure.clear()


def render_figures(data: ReportData) -> dict[str, bytes]:
    """Every applicable figure of ``data`` as PNG bytes, by key (see ``figure_slots``)."""
    return {slot.key: _png(slot, data) for slot in figure_slots(data)}


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Image:
    src: str
    alt: str
    caption: str


@dataclass(frozen=True)
class RuleRow:
    metric: str
    direction: str
    kind: str
    required: str
    value: str
    baseline: str
    change: str
    outcome: str  # pass / fail / skipped / unknown: also the row's CSS class
    note: str | None
    scope: str


@dataclass(frozen=True)
class RunView:
    run: ReportRun
    images: tuple[Image, ...]
    rules: tuple[RuleRow, ...]
    status_class: str
    verdict_class: str


def render_html(data: ReportData, figures: Mapping[str, bytes]) -> str:
    """The page of ``data``, with the PNGs of ``figures`` (by key, see ``figure_slots``) inlined.

    A figure missing from ``figures`` is left out of the page: ``render_html(data, {})`` is the page without
    figures, and nothing is drawn here.
    """
    slots = figure_slots(data)
    by_run: dict[int, list[Image]] = {}
    history: list[Image] = []
    comparison: list[Image] = []
    for slot in slots:
        png = figures.get(slot.key)
        if png is None:
            continue
        image = _image(slot, png)
        if slot.run is not None:
            by_run.setdefault(slot.run.run_id, []).append(image)
        else:
            (comparison if slot.kind == "comparison" else history).append(image)
    runs = [_run_view(run, by_run.get(run.run_id, ())) for run in data.runs]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            data=data,
            runs=runs,
            summary_metrics=_summary_metrics(data.runs),
            history_images=history,
            comparison_images=comparison,
            promotions=sorted(data.promotions, key=lambda p: p.promoted_at),
        )
    )


def _image(slot: FigureSlot, png: bytes) -> Image:
    caption = _CAPTIONS[slot.kind]
    if slot.metric is not None:
        caption = f"{_t(slot.metric, 80)} over time"
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return Image(src=src, alt=slot.alt, caption=caption)


def _run_view(run: ReportRun, images: Iterable[Image]) -> RunView:
    return RunView(
        run=run,
        images=tuple(images),
        rules=tuple(rule_row(rule) for rule in run.rules),
        status_class=_token(run.status, _STATUSES),
        verdict_class=_token(run.verdict, _OUTCOMES),
    )


def _summary_metrics(runs: Sequence[ReportRun]) -> tuple[str, ...]:
    """Columns of the overview table of a multi-run report: the main metrics some run has."""
    wanted = ("accuracy", "f1_macro", "loss", "roc_auc")
    return tuple(m for m in wanted if any(m in run.metrics for run in runs))


def rule_row(rule: RuleResult) -> RuleRow:
    """One gate requirement as the page shows it: required and measured values formatted for its kind."""
    relative = rule.kind == "relative_change"
    if rule.kind == "threshold":
        required = ("≤ " if rule.direction == "lower" else "≥ ") + fmt_number(rule.required)
    else:
        # A change is measured as an improvement whatever the direction: it must reach the minimum.
        required = "change ≥ " + (fmt_percent(rule.required) if relative else fmt_signed(rule.required))
    return RuleRow(
        metric=_t(rule.metric, 80),
        direction="higher is better" if rule.direction == "higher" else "lower is better",
        kind=_KIND_WORDS.get(rule.kind, _t(rule.kind, 40)),
        required=required,
        value=fmt_number(rule.value),
        baseline=_baseline(rule),
        change=(fmt_percent if relative else fmt_signed)(rule.change),
        outcome=_token(rule.outcome, _OUTCOMES),
        note=None if rule.note is None else _t(rule.note),
        scope=_t(rule.scope, 40),
    )


def _baseline(rule: RuleResult) -> str:
    if rule.baseline is None:
        return MISSING
    text = fmt_number(rule.baseline)
    return text if rule.baseline_run_id is None else f"{text} (run {rule.baseline_run_id})"


# --------------------------------------------------------------------------- formatting


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _t(value: object, limit: int | None = None) -> str:
    return printable(value, limit)


def _token(value: str, allowed: frozenset[str]) -> str:
    """A database word used as a CSS class: only the known ones, so the style cannot be steered."""
    return value if value in allowed else "unknown"


def fmt_number(value: float | None) -> str:
    """4 decimals; MISSING when there is no value."""
    if value is None:
        return MISSING
    return "nan" if math.isnan(value) else f"{value:.4f}"


def fmt_signed(value: float | None) -> str:
    """A change: 4 decimals with its sign (``+0.0050``, ``-0.0120``)."""
    if value is None:
        return MISSING
    return "nan" if math.isnan(value) else f"{value:+.4f}"


def fmt_percent(value: float | None) -> str:
    """A relative change (a fraction) as a signed percentage: 0.0123 -> ``+1.23 %``."""
    if value is None:
        return MISSING
    return "nan" if math.isnan(value) else f"{value * 100:+.2f} %"


def fmt_time(value: datetime | None) -> str:
    return MISSING if value is None else value.isoformat(sep=" ", timespec="seconds")


def fmt_duration(run: ReportRun) -> str:
    seconds = (run.finished_at - run.started_at).total_seconds()
    return f"{seconds:.1f} s"


def _text_filter(value: object, limit: int | None = None) -> str:
    return MISSING if value is None else printable(value, limit)


@functools.cache
def _environment() -> jinja2.Environment:
    # One environment for the process: it caches the compiled template, and rendering is thread-safe.
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("ckpt_eval.reporting", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm", "j2"), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        text=_text_filter,
        lines=printable_lines,
        num=fmt_number,
        signed=fmt_signed,
        percent=fmt_percent,
        when=fmt_time,
        duration=fmt_duration,
    )
    return environment


# --------------------------------------------------------------------------- files


def render_report(data: ReportData, out_dir: Path) -> ReportFiles:
    """Draw every figure once, write each as a PNG and the page (``report.html``) with them inlined."""
    _make_dir(out_dir)
    figures: dict[str, bytes] = {}
    pngs: list[Path] = []
    for slot in figure_slots(data):
        png = _png(slot, data)
        path = out_dir / slot.file_name
        write_atomic(path, png)
        figures[slot.key] = png
        pngs.append(path)
    html_path = out_dir / HTML_NAME
    write_atomic(html_path, render_html(data, figures).encode("utf-8"))
    return ReportFiles(html=html_path, pngs=tuple(pngs))


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        return  # an existing directory keeps the mode its owner gave it
    os.chmod(path, DIR_MODE)  # the umask may have narrowed it; the mode is the documented one


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` with mode 0o640: a reader sees the old file or the whole new one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
