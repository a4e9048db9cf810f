"""Report rendering: figures drawn from known data, and the page built from them, with hostile text in every field."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from ckpt_eval.gates import RuleResult
from ckpt_eval.reporting import figures
from ckpt_eval.reporting.html import (
    DIR_MODE,
    FILE_MODE,
    ReportFiles,
    figure_slots,
    render_figures,
    render_html,
    render_report,
)
from ckpt_eval.reporting.model import ClassRow, Curve, HistoryPoint, Promotion, ReportData, ReportRun

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
HOSTILE_NAMES = (
    "$x$",
    "bad $\\frac{$ math",
    "$x$ and $^$",
    "$",
    "\x1b[31mred\x1b[0m\nnext line",
    "ctrl\x00\x07\u202eevil",
    "n" * 500,
)

MULTI_CONFUSION = ((50, 2, 3), (4, 40, 6), (0, 0, 0))
BINARY_CONFUSION = ((90, 10), (5, 95))


def run(run_id: int = 7, **changes: object) -> ReportRun:
    """A succeeded three-class run with a confusion matrix, per-class rows and gate rules."""
    values: dict[str, object] = {
        "run_id": run_id,
        "checkpoint_name": f"ckpt-{run_id}",
        "checkpoint_id": run_id + 100,
        "dataset": "digits",
        "dataset_sha256": "ab" * 32,
        "status": "succeeded",
        "verdict": "pass",
        "verdict_reasons": None,
        "error": None,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=42),
        "n_samples": 105,
        "metrics": {"accuracy": 0.8571, "f1_macro": 0.5912, "loss": 0.41},
        "per_class": (
            ClassRow(0, "cat", 0.9259, 0.9091, 0.9174, 55),
            ClassRow(1, "dog", 0.9524, 0.8, 0.8696, 50),
            ClassRow(2, "bird", 0.0, 0.0, 0.0, 0),
        ),
        "confusion": MULTI_CONFUSION,
        "rules": (RuleResult("accuracy", "higher", "threshold", 0.7, 0.8571, outcome="pass", scope="default"),),
    }
    values.update(changes)
    return ReportRun(**values)  # type: ignore[arg-type]


def binary_run(run_id: int = 8, **changes: object) -> ReportRun:
    values: dict[str, object] = {
        "per_class": (ClassRow(0, "benign", 0.947, 0.9, 0.923, 100), ClassRow(1, "malignant", 0.905, 0.95, 0.927, 100)),
        "confusion": BINARY_CONFUSION,
        "metrics": {"accuracy": 0.925, "f1_macro": 0.925, "roc_auc": 0.9612},
        "roc": Curve((0.0, 0.05, 0.1, 1.0), (0.0, 0.8, 0.95, 1.0)),
        "pr": Curve((0.0, 0.5, 0.95, 1.0), (1.0, 0.98, 0.905, 0.5)),
    }
    values.update(changes)
    return run(run_id, **values)


def failed_run(run_id: int = 9, **changes: object) -> ReportRun:
    values: dict[str, object] = {
        "status": "failed",
        "verdict": "fail",
        "verdict_reasons": "the evaluation failed",
        "error": "RuntimeError: shape mismatch\n  at layer fc1",
        "n_samples": None,
        "metrics": {},
        "per_class": (),
        "confusion": None,
        "rules": (),
    }
    values.update(changes)
    return run(run_id, **values)


def history(names: tuple[str, ...] = ("ckpt-1", "ckpt-2"), champion: str = "ckpt-1") -> tuple[HistoryPoint, ...]:
    points = []
    for index in range(12):
        name = names[index % len(names)]
        points.append(
            HistoryPoint(
                run_id=index + 1,
                checkpoint_name=name,
                finished_at=T0 + timedelta(days=index),
                metrics={"accuracy": 0.8 + index / 100, "f1_macro": 0.75 + index / 200},
                verdict="pass",
                champion=name == champion and index >= 4,
            )
        )
    return tuple(points)


def report(*runs: ReportRun, **changes: object) -> ReportData:
    values: dict[str, object] = {
        "kind": "run",
        "title": "Report",
        "generated_at": T0 + timedelta(days=30),
        "runs": runs or (run(),),
        "history": history(),
        "history_dataset": "digits",
        "champion": "ckpt-1",
        "promotions": (Promotion("ckpt-1", "digits", T0 + timedelta(days=3), "alice", "better f1"),),
    }
    values.update(changes)
    return ReportData(**values)  # type: ignore[arg-type]


def legend(figure: Figure) -> list[str]:
    """The entries of the figure's legends, in order."""
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
    return [text.get_text() for entry in legends for text in entry.get_texts()]


def png_size(png: bytes) -> tuple[int, int]:
    pixels = imread(io.BytesIO(png), format="png")
    return pixels.shape[1], pixels.shape[0]


def page_text(html: str) -> str:
    """The text a reader sees (tags dropped, whitespace collapsed)."""
    return " ".join(re.sub(r"<[^>]*>", " ", html).split())


def rule_rows(html: str) -> list[str]:
    table = html.split('<table class="rules">', 1)[1].split("</table>", 1)[0]
    return [page_text(row) for row in re.findall(r"<tr class=.*?</tr>", table, flags=re.DOTALL)]


# --------------------------------------------------------------------------- figures


def test_counts_heatmap_shows_the_stored_confusion_matrix() -> None:
    figure = figures.confusion_figure(run(), normalised=False)
    shown = np.asarray(figure.axes[0].images[0].get_array())
    assert np.array_equal(shown, np.array(MULTI_CONFUSION))
    # Every cell carries its count, and the axes name the classes.
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == [str(count) for row in MULTI_CONFUSION for count in row]
    assert [tick.get_text() for tick in figure.axes[0].get_yticklabels()] == ["cat", "dog", "bird"]


def test_normalised_heatmap_shows_row_fractions_and_zero_for_empty_rows() -> None:
    figure = figures.confusion_figure(run(), normalised=True)
    shown = np.asarray(figure.axes[0].images[0].get_array())
    expected = np.array([[50 / 55, 2 / 55, 3 / 55], [4 / 50, 40 / 50, 6 / 50], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(shown, expected)
    assert "0.91" in [text.get_text() for text in figure.axes[0].texts]


def test_confusion_figure_of_a_run_without_matrix_is_refused() -> None:
    with pytest.raises(ValueError, match="no confusion matrix"):
        figures.confusion_figure(failed_run(), normalised=False)


def test_per_class_bars_show_precision_recall_and_f1() -> None:
    figure = figures.per_class_figure(run())
    ax = figure.axes[0]
    heights = [bar.get_height() for container in ax.containers for bar in container]
    assert heights == pytest.approx([0.9259, 0.9524, 0.0, 0.9091, 0.8, 0.0, 0.9174, 0.8696, 0.0])
    assert ax.get_ylim() == (0.0, 1.0)
    assert legend(figure) == ["precision", "recall", "F1"]


def test_roc_figure_has_the_curve_the_chance_line_and_the_auc() -> None:
    ax = figures.roc_figure(binary_run()).axes[0]
    curve, chance = ax.lines
    assert list(curve.get_xdata()) == [0.0, 0.05, 0.1, 1.0]
    assert list(chance.get_ydata()) == [0.0, 1.0]
    assert "AUC = 0.9612" in ax.get_legend().get_texts()[0].get_text()


def test_pr_figure_plots_recall_against_precision() -> None:
    ax = figures.pr_figure(binary_run()).axes[0]
    assert list(ax.lines[0].get_xdata()) == [0.0, 0.5, 0.95, 1.0]
    assert list(ax.lines[0].get_ydata()) == [1.0, 0.98, 0.905, 0.5]


def test_binary_runs_get_roc_and_pr_figures_and_multiclass_runs_do_not() -> None:
    kinds = {(slot.run.run_id if slot.run else None, slot.kind) for slot in figure_slots(report(run(7), binary_run(8)))}
    assert {(8, "roc"), (8, "pr")} <= kinds
    assert (7, "roc") not in kinds
    assert (7, "pr") not in kinds
    assert {(7, "confusion-counts"), (7, "confusion-normalised"), (7, "per-class")} <= kinds


def test_history_figure_marks_the_champions_runs() -> None:
    data = report()
    ax = figures.history_figure(data, "accuracy").axes[0]
    by_label = {line.get_label(): line for line in ax.lines}
    champion = by_label[figures.CHAMPION_LABEL]
    crowned = [p for p in data.history if p.champion]
    assert len(crowned) == 4
    assert list(champion.get_ydata()) == [p.metrics["accuracy"] for p in crowned]
    assert [figures.label(x) for x in champion.get_xdata()] == [figures.label(p.finished_at) for p in crowned]
    assert champion.get_marker() == "*"
    assert {"ckpt-1", "ckpt-2", figures.PROMOTION_LABEL} <= set(by_label)
    # The promotion is a vertical line at its time.
    promotion = by_label[figures.PROMOTION_LABEL]
    assert list(promotion.get_xdata()) == [data.promotions[0].promoted_at] * 2


def test_history_legend_keeps_ten_checkpoints_and_groups_the_rest() -> None:
    names = tuple(f"c{index:02d}" for index in range(12))
    data = report(history=history(names, champion="c00"), champion="c00")
    entries = legend(figures.history_figure(data, "accuracy"))
    assert "c00" in entries  # the champion keeps its entry although it ran first
    assert figures.OTHER_LABEL in entries
    assert len([name for name in entries if name in names]) == figures.MAX_HISTORY_SERIES


def test_comparison_bars_add_roc_auc_only_when_every_run_has_it() -> None:
    both_binary = report(binary_run(1), binary_run(2), kind="comparison")
    assert legend(figures.comparison_figure(both_binary)) == ["accuracy", "f1_macro", "roc_auc"]
    mixed = report(binary_run(1), run(2), kind="comparison")
    figure = figures.comparison_figure(mixed)
    assert legend(figure) == ["accuracy", "f1_macro"]
    ax = figure.axes[0]
    assert [bar.get_height() for bar in ax.containers[0]] == [0.925, 0.8571]


def test_png_has_the_documented_pixel_size() -> None:
    assert (figures.PNG_WIDTH_PX, figures.PNG_HEIGHT_PX) == (640, 480)
    for figure in (figures.confusion_figure(run(), normalised=False), figures.history_figure(report(), "f1_macro")):
        png = figures.render_png(figure)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert png_size(png) == (figures.PNG_WIDTH_PX, figures.PNG_HEIGHT_PX)


def test_same_figure_gives_the_same_bytes() -> None:
    first = figures.render_png(figures.per_class_figure(run()))
    second = figures.render_png(figures.per_class_figure(run()))
    assert first == second
    assert b"matplotlib" not in first  # no version stamp in the metadata


def test_hostile_names_are_drawn_as_text() -> None:
    # Every drawn text at once: checkpoint names (titles, ticks, legend, promotion marks), class names,
    # dataset and metric names, the title. Unescaped, the mathtext ones raise at draw time.
    names = HOSTILE_NAMES
    rows = tuple(ClassRow(index, name, 0.5, 0.5, 0.5, 10) for index, name in enumerate(names[:2]))
    drawn_run = binary_run(1, checkpoint_name=names[2], per_class=rows)
    listed = tuple(
        failed_run(index + 2, checkpoint_name=name, metrics={"accuracy": 0.5}) for index, name in enumerate(names)
    )
    # Half the names with a leading "_", which a legend would take for "do not list".
    prefixes = ("", "_") * 6
    points = tuple(
        dataclasses.replace(point, checkpoint_name=prefix + names[index % 5])
        for index, (prefix, point) in enumerate(zip(prefixes, history(), strict=True))
    )
    data = report(
        drawn_run,
        *listed,
        kind="comparison",
        title=" ".join(names),
        history=points,
        history_dataset=names[0],
        history_metrics=("accuracy",),
        champion=names[1],
        promotions=tuple(
            Promotion(name, name, T0 + timedelta(days=index), name, name) for index, name in enumerate(names)
        ),
    )
    rendered = render_figures(data)
    assert len(rendered) == 1 + 5 + 1
    assert all(png_size(png) == (640, 480) for png in rendered.values())
    entries = legend(figures.history_figure(data, "accuracy"))
    assert {figures.CHAMPION_LABEL, figures.PROMOTION_LABEL} <= set(entries)
    assert len(entries) == 10 + 2  # 5 names with and without "_": none dropped
    assert all(text.isprintable() for text in entries)  # control characters shown as escapes


def test_label_disables_mathtext_and_escapes_control_characters() -> None:
    assert figures.label("$x$") == r"\$x\$"
    assert figures.label("a\x1bb\n") == "a\\x1bb\\n"
    assert figures.label("_private") == " _private"
    assert len(figures.label("n" * 500, 20)) == 23


# --------------------------------------------------------------------------- the page


def hostile_report() -> ReportData:
    hostile_rows = (ClassRow(0, IMG, 0.5, 0.5, 0.5, 10), ClassRow(1, SCRIPT, 0.5, 0.5, 0.5, 10))
    rules = (RuleResult("accuracy", "higher", "threshold", 0.7, 0.9, outcome="pass", note=IMG),)
    return report(
        binary_run(1, checkpoint_name=SCRIPT, verdict_reasons=IMG, per_class=hostile_rows, rules=rules),
        failed_run(2, checkpoint_name=IMG, dataset=SCRIPT, error=f"boom {IMG} {SCRIPT}", gate_note=SCRIPT),
        kind="comparison",
        title=SCRIPT,
        champion=SCRIPT,
        history_dataset=IMG,
        history_metrics=("accuracy",),
        promotions=(Promotion(SCRIPT, IMG, T0, SCRIPT, IMG),),
    )


@pytest.fixture(scope="module")
def hostile_html() -> str:
    data = hostile_report()
    return render_html(data, render_figures(data))


def test_page_has_no_script_and_escapes_every_database_text(hostile_html: str) -> None:
    assert "<script" not in hostile_html.lower()
    assert "<img src=x" not in hostile_html
    assert "onerror=" not in hostile_html.replace("onerror=&#34;", "")  # only as escaped text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in hostile_html
    # Every real <img> is an inlined figure.
    sources = re.findall(r"<img\s+src=\"([^\"]*)\"", hostile_html)
    assert sources
    assert all(src.startswith("data:image/png;base64,") for src in sources)


def test_page_loads_nothing_from_outside(hostile_html: str) -> None:
    assert not re.search(r"https?://", hostile_html)
    assert "href=" not in hostile_html
    assert "<link" not in hostile_html
    assert "default-src 'none'; img-src data:; style-src 'unsafe-inline'" in hostile_html


def test_inlined_figures_are_the_rendered_pngs() -> None:
    data = report(binary_run(), history=())
    rendered = render_figures(data)
    html = render_html(data, rendered)
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert sorted(base64.b64decode(s) for s in sources) == sorted(rendered.values())
    assert 'alt="ROC curve of run 8, checkpoint ckpt-8 on dataset digits"' in html


def test_failed_change_rule_shows_metric_required_and_measured_change() -> None:
    rules = (
        RuleResult("accuracy", "higher", "threshold", 0.7, 0.8571, outcome="pass"),
        RuleResult(
            "f1_macro", "higher", "absolute_change", 0.005, 0.5912, baseline=0.6032, change=-0.012,
            outcome="fail", note="f1_macro is 0.0120 worse than the champion's", scope="dataset", baseline_run_id=41,
        ),
        RuleResult("loss", "lower", "relative_change", 0.01, 0.41, baseline=0.4, change=-0.025, outcome="fail"),
    )  # fmt: skip
    html = render_html(report(run(rules=rules, verdict="fail")), {})
    threshold, absolute, relative = rule_rows(html)
    assert threshold.split()[:5] == ["accuracy", "(default)", "higher", "is", "better"]
    assert "≥ 0.7000" in threshold
    assert "PASS" in threshold
    for expected in ("f1_macro", "absolute change", "change ≥ +0.0050", "0.5912", "0.6032 (run 41)", "-0.0120", "FAIL"):
        assert expected in absolute
    assert "change ≥ +1.00 %" in relative
    assert "-2.50 %" in relative
    assert "lower is better" in relative
    assert '<tr class="fail">' in html


def test_skipped_rules_show_their_note_and_the_gate_note() -> None:
    skipped = RuleResult(
        "accuracy", "higher", "absolute_change", 0.0, 0.9, outcome="skipped", note="no champion run on this dataset"
    )
    note = "no champion for dataset 'digits' yet: change rules skipped"
    html = render_html(report(run(rules=(skipped,), gate_note=note)), {})
    (row,) = rule_rows(html)
    assert "SKIPPED" in row
    assert "no champion run on this dataset" in row
    assert "–" in row  # neither baseline nor change
    assert '<tr class="skipped">' in html
    assert "no champion for dataset &#39;digits&#39; yet: change rules skipped" in html


def test_failed_run_without_confusion_renders_its_error_and_no_figures(tmp_path: Path) -> None:
    data = report(failed_run(), history=(), promotions=())
    files = render_report(data, tmp_path)
    assert files.pngs == ()
    html = files.html.read_text(encoding="utf-8")
    assert "<img" not in html
    assert "RuntimeError: shape mismatch\n  at layer fc1" in html
    assert "the evaluation failed" in page_text(html)


def test_numbers_are_formatted_to_four_decimals() -> None:
    text = page_text(render_html(report(run(metrics={"accuracy": 0.857142857, "loss": 1.0})), {}))
    assert "accuracy 0.8571" in text
    assert "loss 1.0000" in text


def test_render_report_writes_every_png_and_the_page(tmp_path: Path) -> None:
    out_dir = tmp_path / "reports" / "today"
    data = report(run(7), binary_run(8), kind="checkpoint", history_metrics=("accuracy",))
    files = render_report(data, out_dir)
    # The file holds the figure as drawn (same data, same bytes).
    assert (out_dir / "run-8-roc.png").read_bytes() == figures.render_png(figures.roc_figure(binary_run(8)))
    assert isinstance(files, ReportFiles)
    assert files.html == out_dir / "report.html"
    names = sorted(path.name for path in files.pngs)
    assert names == sorted(
        [
            *(f"run-7-{kind}.png" for kind in ("confusion-counts", "confusion-normalised", "per-class")),
            *(f"run-8-{kind}.png" for kind in ("confusion-counts", "confusion-normalised", "per-class", "roc", "pr")),
            "history-accuracy.png",
        ]
    )
    assert sorted(path.name for path in out_dir.iterdir()) == sorted([*names, "report.html"])  # no temp files left
    assert stat.S_IMODE(out_dir.stat().st_mode) == DIR_MODE
    for path in (files.html, *files.pngs):
        assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    for path in files.pngs:
        assert png_size(path.read_bytes()) == (640, 480)
    html = files.html.read_text(encoding="utf-8")
    for path in files.pngs:
        assert base64.b64encode(path.read_bytes()).decode() in html


def test_file_names_never_come_from_database_text(tmp_path: Path) -> None:
    data = report(
        failed_run(5, checkpoint_name="../../etc/passwd", dataset="/tmp/x"),
        history_metrics=("accuracy", "../evil name", "f1_macro"),
        history=tuple(
            dataclasses.replace(p, metrics={**p.metrics, "../evil name": 0.5}) for p in history()
        ),
    )  # fmt: skip
    files = render_report(data, tmp_path)
    names = {path.name for path in files.pngs}
    assert {"history-accuracy.png", "history-metric-2.png", "history-f1_macro.png"} <= names
    assert all(path.parent == tmp_path for path in files.pngs)
    assert all(re.fullmatch(r"[a-z0-9_-]+\.png", name) for name in names)


def test_history_section_lists_champion_and_promotions() -> None:
    text = page_text(render_html(report(), {}))
    assert "current champion: ckpt-1" in text
    assert "2025-03-04 12:00:00+00:00 ckpt-1 digits alice better f1" in text


def test_control_characters_are_shown_escaped_in_the_page() -> None:
    html = render_html(report(run(checkpoint_name="evil\x1b[2J\u202ename")), {})
    assert "\x1b" not in html
    assert "\u202e" not in html
    assert "evil\\x1b[2J\\u202ename" in html


def test_many_classes_keep_the_exact_matrix_without_overlapping_text() -> None:
    size = figures.MAX_NAMED_CLASSES + 10
    matrix = tuple(tuple((row * 7 + column) % 13 for column in range(size)) for row in range(size))
    rows = tuple(ClassRow(index, f"class {index}", 0.5, 0.5, 0.5, 1) for index in range(size))
    ax = figures.confusion_figure(run(confusion=matrix, per_class=rows), normalised=False).axes[0]
    assert np.array_equal(np.asarray(ax.images[0].get_array()), np.array(matrix))
    assert len(ax.texts) == 0  # no cell numbers
    assert "class 1" not in [tick.get_text() for tick in ax.get_xticklabels()]


def test_a_checkpoint_named_other_keeps_its_own_series() -> None:
    names = ("other", *(f"c{index:02d}" for index in range(11)))
    data = report(history=history(names, champion="other"), champion="other", promotions=())
    ax = figures.history_figure(data, "accuracy").axes[0]
    series = [line for line in ax.lines if line.get_label() == figures.OTHER_LABEL]
    assert len(series) == 2  # the checkpoint "other" (a line with dots) and the group of the rest (crosses)
    assert sorted(line.get_marker() for line in series) == ["o", "x"]


def test_the_page_alone_does_not_load_matplotlib() -> None:
    code = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from ckpt_eval.reporting.html import render_html\n"
        "from ckpt_eval.reporting.model import ReportData\n"
        "html = render_html(ReportData('run', 't', datetime.now(UTC), ()), {})\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
