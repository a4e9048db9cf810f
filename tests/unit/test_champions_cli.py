"""`promote`, `champions`, `gate` and `report` in-process over a fake registry: the CLI's exit codes, what
it prints, and the report's files, without a server (the SQL is tested in tests/integration)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from ckpt_eval import cli
from ckpt_eval.db.champions import PROMOTION_DENIED
from ckpt_eval.errors import DatabasePrivilegeError
from ckpt_eval.gates import Baseline, GateRule, PairGate, apply_rules, parse_rule, results_to_json
from ckpt_eval.reporting.figures import PNG_HEIGHT_PX, PNG_WIDTH_PX

WHEN = datetime(2026, 5, 1, 12, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>\x1b[2J"


def run_row(run_id: int, name: str, confusion: list[list[int]], **changes: Any) -> dict[str, Any]:
    outcome = apply_rules(
        {"accuracy": 0.8, "f1_macro": 0.78},
        PairGate(
            (GateRule("f1_macro", "higher", min_absolute_change=0.01),),
            dataset="digits",
            champion="cnn-v2",
            baselines={"v1": Baseline("cnn-v2", 8, {"f1_macro": 0.8})},
        ),
        "v1",
    )
    row = {
        "run_id": run_id, "checkpoint_id": run_id, "checkpoint_name": name, "dataset": "digits",
        "dataset_sha256": "v1", "status": "succeeded", "verdict": "fail", "verdict_reasons": "; ".join(outcome.reasons),
        "error": None, "started_at": WHEN, "finished_at": WHEN + timedelta(seconds=3),
        "n_samples": sum(map(sum, confusion)),
        "confusion_matrix": json.dumps(confusion), "gate_results": results_to_json(outcome.results),
        "gate_note": outcome.note, "curves": None,
    }  # fmt: skip
    row.update(changes)
    return row


class FakeChampions:
    """What the commands ask ChampionRepository, answered from lists."""

    def __init__(self) -> None:
        self.runs = {7: run_row(7, HOSTILE, [[5, 1], [2, 4]]), 8: run_row(8, "cnn-v2", [[6, 0], [1, 5]])}
        self.gates: list[tuple[list[GateRule], str | None, str | None]] = []
        self.promote_error: Exception | None = None
        self.opened = 0

    def __enter__(self) -> FakeChampions:
        self.opened += 1
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def check_schema(self) -> int:
        return 5

    def promote(self, name: str, dataset: str | None, promoted_by: str, reason: str | None) -> dict[str, Any]:
        if self.promote_error:
            raise self.promote_error
        return {"promotion_id": 3, "checkpoint_name": name, "checkpoint_id": 8, "dataset": dataset or "digits",
                "promoted_by": promoted_by, "reason": reason, "promoted_at": WHEN}  # fmt: skip

    def promotions(self, dataset: str | None = None) -> list[dict[str, Any]]:
        return [{"promotion_id": 1, "dataset": "digits", "checkpoint_name": "cnn-v2", "checkpoint_id": 8,
                 "promoted_by": "ops@host", "promoted_at": WHEN - timedelta(days=1),
                 "reason": "<b>why</b>"}]  # fmt: skip

    def set_gate(self, rules: list[GateRule], created_by: str, checkpoint: str | None = None,
                 dataset: str | None = None) -> int:  # fmt: skip
        self.gates.append((rules, checkpoint, dataset))
        return len(self.gates)

    def gate_in_force(self, checkpoint: str | None = None, dataset: str | None = None) -> dict[str, Any] | None:
        if not self.gates:
            return None
        return {"gate_id": len(self.gates), "created_by": "me@host", "created_at": WHEN, "parsed": self.gates[-1][0]}

    def report_run(self, run_id: int) -> dict[str, Any] | None:
        return self.runs.get(run_id)

    def latest_runs(self, names: Any, dataset: str | None, limit: int) -> list[dict[str, Any]]:
        return [row for row in self.runs.values() if names is None or row["checkpoint_name"] in names]

    def run_metrics(self, run_ids: list[int]) -> list[dict[str, Any]]:
        rows = []
        for run_id in run_ids:
            rows += [{"run_id": run_id, "metric": "accuracy", "class_label": "", "value": 0.8},
                     {"run_id": run_id, "metric": "f1_macro", "class_label": "", "value": 0.78},
                     {"run_id": run_id, "metric": "recall", "class_label": "0", "value": 0.5},
                     {"run_id": run_id, "metric": "recall", "class_label": "1", "value": 0.9}]  # fmt: skip
        return rows

    def history(self, dataset: str, metrics: Any, limit: int = 500) -> list[dict[str, Any]]:
        return [{"run_id": r["run_id"], "checkpoint_name": r["checkpoint_name"], "finished_at": r["finished_at"],
                 "verdict": r["verdict"], "metric": "accuracy", "value": 0.8} for r in self.runs.values()]  # fmt: skip

    def dataset(self, name: str) -> dict[str, Any]:
        return {"name": name, "class_names": ["zero", "<i>one</i>"]}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeChampions:
    registry = FakeChampions()
    monkeypatch.setattr(cli, "_champion_repository", lambda options: registry)
    return registry


def test_report_of_runs_writes_an_escaped_self_contained_page_and_its_figures(fake, tmp_path: Path, capsys) -> None:
    code = cli.main(["report", "--run", "7", "--run", "8", "--out", str(tmp_path / "r"), "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    listed = json.loads(out)
    assert listed["runs"] == [7, 8]
    html = Path(listed["html"]).read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\x1b" not in html
    assert "&lt;i&gt;one&lt;/i&gt;" in html  # a class name from the registry, escaped
    assert "short by 0.0300" in html, "the failed change rule says by how much"
    names = {Path(p).name for p in listed["pngs"]}
    assert {"run-7-confusion-counts.png", "run-8-confusion-normalised.png", "run-7-per-class.png"} <= names
    for png in listed["pngs"]:
        assert imread(png).shape[:2] == (PNG_HEIGHT_PX, PNG_WIDTH_PX)


def test_report_needs_a_selection_and_runs_that_exist(fake, tmp_path: Path, capsys) -> None:
    assert cli.main(["report", "--out", str(tmp_path)]) == 2
    assert cli.main(["report", "--run", "7", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    assert cli.main(["report", "--run", "99", "--out", str(tmp_path)]) == 2
    assert "has no run yet" in capsys.readouterr().err
    assert cli.main(["report", "--run", "7", "--run", "99", "--out", str(tmp_path)]) == 2
    assert "no run numbered 99" in capsys.readouterr().err


def test_promotion_refused_by_the_deployment_is_one_line_with_exit_78(fake, capsys) -> None:
    fake.promote_error = DatabasePrivilegeError(PROMOTION_DENIED)
    assert cli.main(["promote", "cnn-v2", "--reason", "best"]) == 78
    err = capsys.readouterr().err
    assert "greenplum_app_may_promote" in err
    assert "Traceback" not in err
    fake.promote_error = None
    assert cli.main(["promote", "cnn-v2", "--reason", "best"]) == 0
    assert "is the champion of 'digits'" in capsys.readouterr().out
    assert cli.main(["promote", "cnn-v2", "--reason", " "]) == 2


def test_gate_set_parses_every_rule_before_anything_is_stored(fake, capsys) -> None:
    assert cli.main(["gate", "set", "--dataset", "digits", "f1_macro>=champion+0.01", "log_loss<=0.3"]) == 0
    assert "gate 1 of dataset 'digits': f1_macro>=champion+0.01, log_loss<=0.3" in capsys.readouterr().out
    assert fake.gates == [([parse_rule("f1_macro>=champion+0.01"), parse_rule("log_loss<=0.3")], None, "digits")]
    assert cli.main(["gate", "set", "--dataset", "digits", "f1_macro>=0.9", "accuracy>>1"]) == 2
    assert cli.main(["gate", "set", "f1_macro>=0.9"]) == 2  # no scope
    assert cli.main(["gate", "set", "--dataset", "d", "--checkpoint", "c", "f1_macro>=0.9"]) == 2
    assert len(fake.gates) == 1
    assert cli.main(["gate", "show", "--dataset", "digits", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["rules"] == ["f1_macro>=champion+0.01", "log_loss<=0.3"]


def test_champions_lists_each_datasets_current_one(fake, capsys) -> None:
    assert cli.main(["champions"]) == 0
    out = capsys.readouterr().out
    assert "cnn-v2" in out
    assert "<b>why</b>" in out  # a terminal shows text as text; control characters would be escaped
