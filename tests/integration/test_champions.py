"""Champions, gates against the champion and reports, end to end against PostgreSQL: the real CLI in a
subprocess, the app role's privileges as the schema grants them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
from matplotlib.image import imread

from ckpt_eval.reporting.figures import PNG_HEIGHT_PX, PNG_WIDTH_PX
from tests.support.deployment import Deployment

GOOD, UNDERTRAINED = "digits-mlp-good", "digits-mlp-undertrained"


def latest_run(deployment: Deployment, name: str, dataset: str = "digits") -> dict:
    with deployment.superuser() as conn:
        row = conn.execute(
            "SELECT run_id, verdict, verdict_reasons, gate_results, gate_note, curves FROM ckpt_eval.evaluation_runs "
            "WHERE checkpoint_name = %s AND dataset = %s ORDER BY run_id DESC LIMIT 1",
            (name, dataset),
        ).fetchone()
    assert row is not None, f"{name} has no run"
    keys = ("run_id", "verdict", "verdict_reasons", "gate_results", "gate_note", "curves")
    return dict(zip(keys, row, strict=True))


def allow_app_promotion(deployment: Deployment) -> None:
    """What the deployment does with greenplum_app_may_promote: true."""
    deployment.sql("GRANT INSERT (dataset, checkpoint_name, checkpoint_id, promoted_by, reason) "
                   "ON ckpt_eval.champions TO ckpt_eval_app")  # fmt: skip


@pytest.fixture
def evaluated(deployment: Deployment) -> Deployment:
    first = deployment.ckpt_eval("run")
    assert first.returncode == 3, first.output  # the undertrained demo fails its gate
    return deployment


def test_promotion_needs_the_deployments_leave_and_keeps_its_history(evaluated: Deployment) -> None:
    refused = evaluated.ckpt_eval("promote", GOOD, "--reason", "best so far")
    assert refused.returncode == 78, refused.output
    assert "greenplum_app_may_promote" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert evaluated.rows("SELECT count(*) FROM ckpt_eval.champions") == [["0"]]
    allow_app_promotion(evaluated)
    promoted = evaluated.ckpt_eval("promote", GOOD, "--reason", "best so far", "--format", "json")
    assert promoted.returncode == 0, promoted.output
    record = json.loads(promoted.stdout)
    assert (record["checkpoint_name"], record["dataset"], record["reason"]) == (GOOD, "digits", "best so far")
    assert re.fullmatch(r".+@.+", record["promoted_by"])
    again = evaluated.ckpt_eval("promote", UNDERTRAINED, "--dataset", "digits")
    assert again.returncode == 0, again.output
    current = json.loads(evaluated.ckpt_eval("champions", "--format", "json").stdout)["champions"]
    assert [(c["dataset"], c["checkpoint_name"]) for c in current] == [("digits", UNDERTRAINED)]
    history = json.loads(evaluated.ckpt_eval("champions", "--history", "--format", "json").stdout)["promotions"]
    assert [p["checkpoint_name"] for p in history] == [GOOD, UNDERTRAINED]  # nothing is overwritten
    # What cannot be a champion: an unknown checkpoint, a dataset it is not evaluated on, no succeeded run.
    assert evaluated.ckpt_eval("promote", "nope").returncode == 2
    assert evaluated.ckpt_eval("promote", GOOD, "--dataset", "mnist").returncode == 2
    evaluated.register_row("fresh", "digits-mlp-good.pt")
    unevaluated = evaluated.ckpt_eval("promote", "fresh")
    assert unevaluated.returncode == 2
    assert "no succeeded run" in unevaluated.stderr
    # The app role may add promotions where allowed, never rewrite them.
    for statement in ("UPDATE ckpt_eval.champions SET reason = 'x'", "DELETE FROM ckpt_eval.champions"):
        with evaluated.superuser() as conn:
            conn.execute("SET ROLE ckpt_eval_app")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_change_rules_are_skipped_without_a_champion_and_compared_with_one(
    evaluated: Deployment, tmp_path: Path
) -> None:
    undertrained = latest_run(evaluated, UNDERTRAINED)
    assert undertrained["gate_note"] is None  # the default rules have no change requirement
    gate = evaluated.ckpt_eval("gate", "set", "--dataset", "digits", "f1_macro>=champion+0.01", "accuracy>=0.5")
    assert gate.returncode == 0, gate.output
    assert "f1_macro>=champion+0.01, accuracy>=0.5" in gate.stdout
    # No champion yet: the change rule is skipped and the run says so; the thresholds still decide.
    rerun = evaluated.ckpt_eval("run", "--force", "--format", "json")
    good = latest_run(evaluated, GOOD)
    assert good["verdict"] == "pass"
    assert "no champion for dataset" in good["gate_note"]
    results = json.loads(good["gate_results"])
    assert [(r["metric"], r["kind"], r["outcome"]) for r in results] == [
        ("f1_macro", "absolute_change", "skipped"),
        ("accuracy", "threshold", "pass"),
    ]
    assert all(r["scope"] == "dataset" for r in results)
    assert rerun.returncode in (0, 3), rerun.output
    # With a champion: the candidate must beat it by 0.01 macro-F1; the champion itself is not compared.
    allow_app_promotion(evaluated)
    assert evaluated.ckpt_eval("promote", GOOD).returncode == 0
    champion_run = latest_run(evaluated, GOOD)["run_id"]
    run = evaluated.ckpt_eval("run", "--force")
    assert run.returncode == 3, run.output  # the undertrained one fails the change rule
    good, bad = latest_run(evaluated, GOOD), latest_run(evaluated, UNDERTRAINED)
    assert good["verdict"] == "pass"
    assert good["gate_note"] == "this checkpoint is the champion: change rules skipped"
    change = next(r for r in json.loads(bad["gate_results"]) if r["kind"] == "absolute_change")
    assert change["outcome"] == "fail"
    assert change["baseline_run_id"] == champion_run
    assert change["change"] == pytest.approx(change["value"] - change["baseline"])
    assert change["change"] < 0.01
    assert bad["verdict"] == "fail"
    assert f"against the champion {GOOD}" in bad["verdict_reasons"]
    assert f"{change['change']:+.4f}" in bad["verdict_reasons"]
    # The CLI's summary names the failed requirement and the shortfall, and so does the run's report.
    assert f"gate failed: {UNDERTRAINED} on digits: f1_macro changed {change['change']:+.4f}" in run.stdout
    shortfall = f"short by {0.01 - change['change']:.4f}"
    assert shortfall in bad["verdict_reasons"]
    made = evaluated.ckpt_eval("report", "--run", str(bad["run_id"]), "--out", str(tmp_path), "--format", "json")
    assert made.returncode == 0, made.output
    html = Path(json.loads(made.stdout)["html"]).read_text()
    assert shortfall in html
    assert "FAIL" in html
    # A checkpoint's own gate overrides the dataset's on the same metric: the undertrained one passes now.
    own = evaluated.ckpt_eval("gate", "set", "--checkpoint", UNDERTRAINED, "f1_macro>=champion-1", "accuracy>=0")
    assert own.returncode == 0, own.output
    shown = evaluated.ckpt_eval("gate", "show", "--checkpoint", UNDERTRAINED, "--format", "json")
    assert json.loads(shown.stdout)["rules"] == ["f1_macro>=champion-1", "accuracy>=0"]
    assert evaluated.ckpt_eval("run", "--force", "--checkpoint-id", "2").returncode == 0
    assert latest_run(evaluated, UNDERTRAINED)["verdict"] == "pass"
    # Rules that cannot be read are refused before anything is stored.
    bad_rule = evaluated.ckpt_eval("gate", "set", "--dataset", "digits", "f1_macro>=champion+x")
    assert bad_rule.returncode == 2
    assert "expected METRIC>=X" in bad_rule.stderr


def test_the_report_shows_the_run_its_gate_and_figures_and_escapes_names(evaluated: Deployment, tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    evaluated.register_row(hostile, "digits-mlp-good.pt")
    evaluated.register_row("bc", "breast-cancer-mlp.pt", arch="breast_cancer_mlp", dataset="breast_cancer")
    assert evaluated.ckpt_eval("run").returncode == 0
    out = tmp_path / "report"
    made = evaluated.ckpt_eval("report", "--dataset", "digits", "--out", str(out), "--format", "json")
    assert made.returncode == 0, made.output
    listed = json.loads(made.stdout)
    html = Path(listed["html"]).read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"https?://", html)
    assert len(listed["runs"]) == 3  # the comparison: the latest run of each checkpoint on digits
    for png in map(Path, listed["pngs"]):
        assert imread(png).shape[:2] == (PNG_HEIGHT_PX, PNG_WIDTH_PX), png.name
    # A binary task's run keeps its curves, and its report draws them.
    curves = json.loads(latest_run(evaluated, "bc", "breast_cancer")["curves"])
    assert curves["roc"]["x"][0] == 0.0
    assert curves["roc"]["y"][-1] == pytest.approx(1.0)
    binary = evaluated.ckpt_eval("report", "--checkpoint", "bc", "--out", str(tmp_path / "bc"), "--format", "json")
    assert binary.returncode == 0, binary.output
    names = {Path(p).name for p in json.loads(binary.stdout)["pngs"]}
    run_id = latest_run(evaluated, "bc", "breast_cancer")["run_id"]
    assert {f"run-{run_id}-roc.png", f"run-{run_id}-pr.png", f"run-{run_id}-confusion-counts.png"} <= names
    # Nothing to report is a usage error, not an empty page.
    nothing = evaluated.ckpt_eval("report", "--checkpoint", "never-registered", "--out", str(tmp_path / "x"))
    assert nothing.returncode == 2
    assert "has no run yet" in nothing.stderr
