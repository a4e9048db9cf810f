"""Figures and ratios of a run: the printed table, the JSON file, and the comparison of two files."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "ckpt-eval-bench/1"


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    samples: list[float] = field(default_factory=list)
    goal: str | None = None  # printed next to the figure, never asserted
    note: str | None = None  # why there is no value, or how it was obtained
    higher_is_better: bool = False

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(figure: Figure) -> str:
    if len(figure.samples) < 2:
        return ""
    return f"[{_fmt(min(figure.samples))} .. {_fmt(max(figure.samples))}]"


def render_table(result: dict[str, object]) -> str:
    """The human-readable table of one result document."""
    machine = result["machine"]
    config = result["config"]
    assert isinstance(machine, dict)
    assert isinstance(config, dict)
    lines = [
        f"ckpt-eval bench ({config['mode']}): N={config['checkpoints']} {config['arch']} checkpoints, "
        f"{config['images']} images 28x28, batch {config['batch_size']}, {config['threads']} torch threads, "
        f"{config['repetitions']} interleaved repetition(s), medians",
        f"machine: {machine['cores']} cores ({machine['cpu']}), torch {machine['torch']}, Python {machine['python']}, "
        f"{machine['glibc']}, load average at start {machine['load_average_at_start']}",
        "",
    ]
    for section in ("figures", "ratios"):
        rows = result[section]
        assert isinstance(rows, list)
        lines.append(f"{section}:")
        width = max(len(str(row["label"])) for row in rows)
        for row in rows:
            figure = Figure(**{k: row[k] for k in Figure.__dataclass_fields__})
            cells = [
                f"  {figure.label:<{width}}",
                f"{_fmt(figure.value):>10} {figure.unit:<8}",
                f"{_spread(figure):<22}",
            ]
            extra = "; ".join(x for x in (f"goal {figure.goal}" if figure.goal else "", figure.note or "") if x)
            lines.append(" ".join(cells) + extra)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def document(
    machine: dict[str, object], config: dict[str, object], figures: list[Figure], ratios: list[Figure]
) -> dict:
    def rows(items: list[Figure]) -> list[dict[str, object]]:
        return [{**asdict(f), "value": f.value} for f in items]

    return {"schema": SCHEMA, "machine": machine, "config": config, "figures": rows(figures), "ratios": rows(ratios)}


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def load_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a ckpt-eval bench result (schema {data.get('schema')!r})")
    return dict(data)


def compare(before: dict, after: dict) -> str:
    """Figures of two results side by side with after/before; machines that differ are pointed out."""
    lines = []
    for key in ("cores", "cpu", "torch", "torch_threads", "glibc"):
        if before["machine"].get(key) != after["machine"].get(key):
            lines.append(f"note: machine differs in {key}: {before['machine'].get(key)} -> {after['machine'].get(key)}")
    for key in ("mode", "checkpoints", "images", "batch_size", "threads"):
        if before["config"].get(key) != after["config"].get(key):
            lines.append(f"note: setting differs in {key}: {before['config'].get(key)} -> {after['config'].get(key)}")
    if lines:
        lines.append("")
    rows = [("figure", "before", "after", "after/before", "")]
    for section in ("figures", "ratios"):
        old = {row["key"]: row for row in before[section]}
        for row in after[section]:
            previous = old.get(row["key"], {})
            a, b = previous.get("value"), row.get("value")
            change = _fmt(b / a) if a and b is not None else "n/a"
            verdict = ""
            if a and b is not None and a != b:
                better = (b > a) == bool(row.get("higher_is_better"))
                verdict = "better" if better else "worse"
            rows.append((str(row["label"]), _fmt(a), _fmt(b), change, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip()
        )
    return "\n".join(lines) + "\n"
