"""Upgrade in place: this machine deployed with the current release (schema version 2, one dataset per
checkpoint), runs recorded, then this checkout's deploy.yml over it. Every run and metric must be kept,
the checkpoints evaluated before must not be evaluated again (their dataset did not change), and the new
pairs (the tabular demo) must be evaluated, the scoring demo scored.

Deploys onto this machine like test_playbooks.py (PostgreSQL 15/main on 5432, /opt/ckpt-eval): it first
puts the machine back to "the release is deployed" by dropping the ckpt_eval database and the installed
sources, then deploys the release from `git archive` of its commit (no worktree, no checkout change).
It leaves the machine deployed with this checkout."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ckpt_eval.db.sql import REQUIRED_SCHEMA_VERSION
from tests.deploy.test_playbooks import (
    BIN,
    DEMO_PASSWORD_FILE,
    REPO,
    PlaybookRun,
    ansible_playbook,
    drop_the_deployed_database,
    environment,
    latest_evaluations,
    pair_runs,
    superuser_sql,
)

RELEASE = "d2ad8dd"  # the current release: schema version 2
RECAP_HOST = "localhost"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local deployment runs as root")


def release_playbook(release: Path, *args: str) -> PlaybookRun:
    """The release's own playbooks and roles, run from its tree with this venv's Ansible."""
    completed = subprocess.run(
        [
            BIN / "ansible-playbook",
            "-i",
            "inventories/local/hosts.yml",
            "--vault-password-file",
            str(DEMO_PASSWORD_FILE),
            *args,
        ],
        cwd=release,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    return PlaybookRun(completed.returncode, completed.stdout + completed.stderr)


def table_snapshot(table: str, columns: list[str], order: str) -> list[str]:
    return superuser_sql(f"SELECT {', '.join(columns)} FROM ckpt_eval.{table} ORDER BY {order}").splitlines()


def table_columns(table: str) -> list[str]:
    out = superuser_sql(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ckpt_eval'"
        f" AND table_name = '{table}' ORDER BY ordinal_position"
    )
    return out.split()


def runs_per_checkpoint() -> dict[int, int]:
    out = superuser_sql("SELECT checkpoint_id, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1")
    return {int(a): int(b) for a, b in (line.split("|") for line in out.split())}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("release")
    archive = subprocess.run(["git", "archive", RELEASE], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    # The machine as the release left it: no v3 database, no newer sources in the install directory.
    drop_the_deployed_database()
    shutil.rmtree("/opt/ckpt-eval/src", ignore_errors=True)
    return root


def test_upgrade_keeps_every_run_and_metric_and_evaluates_the_new_pairs(release: Path) -> None:
    deployed = release_playbook(release, "playbooks/deploy.yml")
    assert deployed.returncode == 0, deployed.output[-5000:]
    assert superuser_sql("SELECT max(version) FROM ckpt_eval.schema_version").strip() == "2"
    # History: a second run of every checkpoint, as an operator's rerun makes it.
    rerun = release_playbook(release, "playbooks/evaluate.yml", "-e", "force=true")
    assert rerun.returncode == 0, rerun.output[-5000:]
    run_columns = table_columns("evaluation_runs")
    metric_columns = table_columns("evaluation_metrics")
    checkpoint_columns = ["checkpoint_id", "name", "path", "arch", "dataset", "sha256"]
    runs = table_snapshot("evaluation_runs", run_columns, "run_id")
    metrics = table_snapshot("evaluation_metrics", metric_columns, "run_id, metric, class_label")
    checkpoints = table_snapshot("checkpoints", checkpoint_columns, "checkpoint_id")
    counts = runs_per_checkpoint()
    assert len(runs) >= 4
    assert len(metrics) > len(runs)
    assert set(counts) == {1, 2}

    upgraded = ansible_playbook("playbooks/deploy.yml")
    assert upgraded.returncode == 0, upgraded.output[-5000:]
    assert superuser_sql("SELECT max(version) FROM ckpt_eval.schema_version").strip() == str(REQUIRED_SCHEMA_VERSION)
    # Nothing lost or changed...
    assert table_snapshot("evaluation_runs", run_columns, "run_id")[: len(runs)] == runs
    assert table_snapshot("evaluation_metrics", metric_columns, "run_id, metric, class_label")[: len(metrics)] == (
        metrics
    )
    assert table_snapshot("checkpoints", checkpoint_columns, "checkpoint_id")[: len(checkpoints)] == checkpoints
    # ... the checkpoints evaluated before are not evaluated again (their dataset is the same version) ...
    after = runs_per_checkpoint()
    assert {k: after[k] for k in counts} == counts
    pairs = pair_runs()
    assert pairs[("digits-mlp-good", "digits")] == counts[1]
    # ... and the new pairs are.
    evaluations = latest_evaluations()
    assert evaluations[("digits-mlp-good", "digits")]["verdict"] == "pass"
    assert evaluations[("digits-mlp-undertrained", "digits")]["verdict"] == "fail"
    assert evaluations[("breast-cancer-mlp", "breast_cancer_table")]["status"] == "succeeded"
    scored = superuser_sql("SELECT status, rows_scored FROM ckpt_eval.scoring_runs").split()
    assert scored == ["done|143"], "the scoring demo ran after the upgrade"

    again = ansible_playbook("playbooks/deploy.yml")
    assert again.returncode == 0, again.output[-5000:]
    assert again.changed() == {RECAP_HOST: 0}, again.output[-5000:]
    assert evaluations[("breast-cancer-mlp", "breast_cancer")]["status"] == "succeeded"
