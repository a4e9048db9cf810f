"""Evaluation pairs against a real PostgreSQL: one checkpoint on several datasets, attach, dataset
versions that queue their pairs again, the dataset registry commands, and the upgrade from schema 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_eval.architectures import build_model
from ckpt_eval.datasets import load_digits, write_idx
from tests.support.deployment import Deployment, new_deployment
from tests.support.pgcluster import PgCluster

INIT_V2 = Path(__file__).resolve().parents[1] / "support" / "init_v2.sql"


def runs_by_pair(deployment: Deployment) -> dict[tuple[str, str], int]:
    rows = deployment.rows("SELECT checkpoint_name, dataset, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1, 2")
    return {(name, dataset): int(count) for name, dataset, count in rows}


def pair_states(deployment: Deployment) -> dict[tuple[str, str], str]:
    rows = deployment.rows("SELECT checkpoint_name, dataset, status FROM ckpt_eval.evaluations")
    return {(name, dataset): status for name, dataset, status in rows}


def add_digits_train(deployment: Deployment) -> None:
    added = deployment.ckpt_eval("dataset", "add", "digits_train", "--kind", "digits", "--split", "train")
    assert added.returncode == 0, added.output


def write_mnist(deployment: Deployment, seed: int, images: int = 64) -> None:
    rng = np.random.default_rng(seed)
    folder = deployment.data_dir / "mnist"
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, size=(images, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=images))


def test_one_checkpoint_on_two_datasets_has_a_run_and_a_latest_row_per_pair(deployment: Deployment) -> None:
    add_digits_train(deployment)
    registered = deployment.ckpt_eval(
        "register", "digits-mlp-good.pt", "--arch", "digits_mlp", "--name", "both",
        "--dataset", "digits", "--dataset", "digits_train", "--dataset", "digits",
    )  # fmt: skip
    assert registered.returncode == 0, registered.output
    assert "for 'digits', 'digits_train'" in registered.stdout
    result = deployment.ckpt_eval("run", "--format", "json")
    assert result.returncode == 3, result.output  # the undertrained demo checkpoint fails its gate
    evaluated = {(o["name"], o["dataset"]) for o in json.loads(result.stdout)["evaluated"]}
    assert {("both", "digits"), ("both", "digits_train")} <= evaluated
    assert runs_by_pair(deployment)[("both", "digits")] == 1
    assert runs_by_pair(deployment)[("both", "digits_train")] == 1
    latest = deployment.rows(
        "SELECT dataset, n_samples FROM ckpt_eval.latest_evaluations WHERE checkpoint_name = 'both' ORDER BY 1"
    )
    assert latest == [["digits", "450"], ["digits_train", "1347"]]
    status = deployment.ckpt_eval("status", "--format", "json")
    rows = [(r["name"], r["dataset"], r["job_status"]) for r in json.loads(status.stdout)["checkpoints"]]
    assert ("both", "digits", "done") in rows
    assert ("both", "digits_train", "done") in rows


def test_attach_queues_one_new_pair_and_refuses_what_cannot_be(deployment: Deployment) -> None:
    assert deployment.ckpt_eval("run").returncode == 3
    add_digits_train(deployment)
    attached = deployment.ckpt_eval("attach", "1", "digits_train")
    assert attached.returncode == 0, attached.output
    assert "attached checkpoint 1 'digits-mlp-good' to dataset 'digits_train'" in attached.stdout
    assert pair_states(deployment)[("digits-mlp-good", "digits_train")] == "pending"

    again = deployment.ckpt_eval("attach", "digits-mlp-good", "digits_train")
    assert again.returncode == 2
    assert "already attached" in again.stderr
    unknown_dataset = deployment.ckpt_eval("attach", "digits-mlp-good", "imagenet")
    assert unknown_dataset.returncode == 2
    assert "no dataset named 'imagenet'" in unknown_dataset.stderr
    unknown_checkpoint = deployment.ckpt_eval("attach", "no-such", "digits")
    assert unknown_checkpoint.returncode == 2
    assert "no checkpoint named or numbered 'no-such'" in unknown_checkpoint.stderr
    for odd in ("²", "9" * 5000):
        refused = deployment.ckpt_eval("attach", odd, "digits")
        assert refused.returncode == 2, refused.output
        assert "no checkpoint named or numbered" in refused.stderr

    result = deployment.ckpt_eval("run")
    assert result.returncode == 0, result.output
    assert runs_by_pair(deployment) == {
        ("digits-mlp-good", "digits"): 1,
        ("digits-mlp-undertrained", "digits"): 1,
        ("digits-mlp-good", "digits_train"): 1,
    }


def test_run_dataset_selects_only_pairs_on_that_dataset(deployment: Deployment) -> None:
    add_digits_train(deployment)
    assert deployment.ckpt_eval("attach", "digits-mlp-good", "digits_train").returncode == 0
    dry = deployment.ckpt_eval("run", "--dry-run", "--dataset", "digits_train", "--format", "json")
    assert dry.returncode == 0, dry.output
    assert [(p["name"], p["dataset"]) for p in json.loads(dry.stdout)["would_evaluate"]] == [
        ("digits-mlp-good", "digits_train")
    ]
    result = deployment.ckpt_eval("run", "--dataset", "digits_train")
    assert result.returncode == 0, result.output
    assert runs_by_pair(deployment) == {("digits-mlp-good", "digits_train"): 1}
    unknown = deployment.ckpt_eval("run", "--dataset", "nope")
    assert unknown.returncode == 2
    assert "no dataset named 'nope'" in unknown.stderr


def test_a_new_dataset_version_queues_exactly_the_pairs_that_use_it(deployment: Deployment) -> None:
    write_mnist(deployment, seed=1)
    torch.manual_seed(0)
    torch.save(build_model("fashion_cnn").state_dict(), deployment.checkpoint_root / "cnn.pt")
    registered = deployment.ckpt_eval(
        "register", "cnn.pt", "--arch", "fashion_cnn", "--dataset", "mnist", "--min-accuracy", "0", "--min-f1", "0"
    )
    assert registered.returncode == 0, registered.output
    assert deployment.ckpt_eval("run").returncode == 3
    first = runs_by_pair(deployment)
    assert first == {("digits-mlp-good", "digits"): 1, ("digits-mlp-undertrained", "digits"): 1, ("cnn", "mnist"): 1}

    unchanged = deployment.ckpt_eval("run")
    assert unchanged.returncode == 0, unchanged.output
    assert runs_by_pair(deployment) == first, "the same files are the same version: nothing runs again"

    write_mnist(deployment, seed=2)  # new files: a new version of mnist only
    changed = deployment.ckpt_eval("run")
    assert changed.returncode == 0, changed.output
    assert "dataset 'mnist' has a new version: 1 pair(s) queued again" in changed.stderr
    assert runs_by_pair(deployment) == {**first, ("cnn", "mnist"): 2}
    versions = deployment.rows(
        "SELECT dataset_sha256 FROM ckpt_eval.evaluation_runs WHERE checkpoint_name = 'cnn' ORDER BY run_id"
    )
    assert versions[0] != versions[1], "each run records the version it saw"
    recorded = deployment.rows("SELECT fingerprint FROM ckpt_eval.datasets WHERE name = 'mnist'")
    assert recorded == [versions[1]]
    assert deployment.ckpt_eval("run").returncode == 0
    assert runs_by_pair(deployment)[("cnn", "mnist")] == 2


def test_dataset_add_list_and_show(deployment: Deployment) -> None:
    features = deployment.workdir / "features.txt"
    features.write_text("".join(f"f{i}\n" for i in range(60)))
    added = deployment.ckpt_eval(
        "dataset", "add", "sonar", "--kind", "table", "--source", "lab.sonar", "--features-file", str(features),
        "--label-column", "label", "--class-names", "R,M", "--description", "rocks and mines",
    )  # fmt: skip
    assert added.returncode == 0, added.output
    duplicate = deployment.ckpt_eval("dataset", "add", "sonar", "--kind", "digits")
    assert duplicate.returncode == 2
    assert "already registered" in duplicate.stderr
    bad_kind = deployment.ckpt_eval("dataset", "add", "x", "--kind", "excel")
    assert bad_kind.returncode == 2

    listed = deployment.ckpt_eval("dataset", "list")
    assert listed.returncode == 0, listed.output
    sonar_line = next(line for line in listed.stdout.splitlines() if line.startswith("sonar"))
    assert "60 columns" in sonar_line
    assert "R,M" in sonar_line
    for builtin in ("digits", "breast_cancer", "mnist", "fashion_mnist"):
        assert any(line.startswith(builtin) for line in listed.stdout.splitlines())

    shown = json.loads(deployment.ckpt_eval("dataset", "show", "sonar", "--format", "json").stdout)
    assert shown["dataset"]["feature_columns"] == [f"f{i}" for i in range(60)]
    assert shown["dataset"]["class_names"] == ["R", "M"]
    assert shown["evaluations"] == []
    missing = deployment.ckpt_eval("dataset", "show", "nope")
    assert missing.returncode == 2


def test_the_app_role_may_not_change_or_delete_a_dataset(deployment: Deployment) -> None:
    import psycopg

    from tests.support.deployment import APP_PASSWORD

    with psycopg.connect(
        host="127.0.0.1", port=deployment.cluster.port, dbname=deployment.dbname, user="ckpt_eval_app",
        password=APP_PASSWORD, autocommit=True,
    ) as conn:  # fmt: skip
        for statement in (
            "UPDATE ckpt_eval.datasets SET source = 'other.table'",
            "UPDATE ckpt_eval.datasets SET feature_columns = ARRAY['x']",
            "DELETE FROM ckpt_eval.datasets",
            "DELETE FROM ckpt_eval.evaluations",
            "UPDATE ckpt_eval.evaluations SET checkpoint_name = 'x'",
            "UPDATE ckpt_eval.checkpoints SET status = 'pending'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_upgrade_from_schema_2_keeps_every_run_and_evaluates_only_new_pairs(cluster: PgCluster, tmp_path: Path) -> None:
    old = new_deployment(cluster, tmp_path, init_sql=INIT_V2)
    digits_version = load_digits("test").sha256
    with old.superuser() as conn:
        # The good demo checkpoint was evaluated by version 2: a run with metrics, its job done.
        run_id = conn.execute(
            "INSERT INTO ckpt_eval.evaluation_runs (checkpoint_id, checkpoint_name, attempt, dataset, dataset_sha256, "
            "status, verdict, started_at, finished_at, duration_seconds, n_samples, worker_host, worker_pid, "
            "app_version, lease_token) VALUES (1, 'digits-mlp-good', 1, 'digits', %s, 'succeeded', 'pass', now(), "
            "now(), 1, 450, 'h', 1, '0.1.0', 'v2-token') RETURNING run_id",
            (digits_version,),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO ckpt_eval.evaluation_metrics (run_id, metric, value) VALUES (%s, 'accuracy', 0.97)", (run_id,)
        )
        conn.execute("UPDATE ckpt_eval.checkpoints SET status = 'done', attempt = 1 WHERE name = 'digits-mlp-good'")
    too_old = old.ckpt_eval("status")
    assert too_old.returncode == 78
    assert "schema version 2" in too_old.stderr

    old.cluster.psql(file=Path(__file__).resolve().parents[2] / "init.sql", dbname=old.dbname)
    assert pair_states(old) == {("digits-mlp-good", "digits"): "done", ("digits-mlp-undertrained", "digits"): "pending"}
    result = old.ckpt_eval("run")
    assert result.returncode == 3, result.output
    assert runs_by_pair(old) == {("digits-mlp-good", "digits"): 1, ("digits-mlp-undertrained", "digits"): 1}
    assert old.rows(f"SELECT value FROM ckpt_eval.evaluation_metrics WHERE run_id = {run_id}") == [["0.97"]]
    latest = dict(old.rows("SELECT checkpoint_name, run_id FROM ckpt_eval.latest_evaluations"))
    assert latest["digits-mlp-good"] == str(run_id)
