"""Batch scoring against a real PostgreSQL: the breast_cancer rows without their labels as an input table,
scored by the shipped breast_cancer checkpoint through `ckpt-eval score`, each prediction checked against
an independent forward pass; reruns, new rows, --rescore, --limit, --dry-run, the gate, bad rows and bad
inputs; the chunk fence in-process with the real repository."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.config import Settings
from ckpt_eval.credentials import decrypt_credentials
from ckpt_eval.db.connection import RetryPolicy
from ckpt_eval.db.scoring import ScoringRepository
from ckpt_eval.scoring import Predictions, copy_blocks
from tests.support.deployment import REPO, VAULT_PASSWORD, Deployment

CHECKPOINT = "breast-cancer-mlp"
FEATURES = tuple(f"f{i:02d}" for i in range(30))
CHUNK_ROWS = 200
JOB = "patients"


def create_input(
    deployment: Deployment,
    table: str = "lab.patients",
    *,
    key_type: str = "bigint",
    rows: np.ndarray | None = None,
    first_key: int = 0,
) -> np.ndarray:
    features = load_breast_cancer().data if rows is None else rows
    columns = ", ".join(f"{c} double precision" for c in FEATURES)
    with deployment.superuser() as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (sample_id {key_type}, {columns})")
        with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
            for offset, row in enumerate(features):
                copy.write_row([first_key + offset, *row.tolist()])
        conn.execute(f"GRANT SELECT ON {table} TO ckpt_eval_app")
    return features


@pytest.fixture
def db(deployment: Deployment) -> Deployment:
    with deployment.superuser() as conn:
        conn.execute("CREATE SCHEMA lab")
        conn.execute("GRANT USAGE ON SCHEMA lab TO ckpt_eval_app")
        conn.execute("GRANT USAGE, CREATE ON SCHEMA lab TO ckpt_eval_owner")
    create_input(deployment)
    register_dataset(deployment, JOB, "lab.patients")
    deployment.register_row(CHECKPOINT, "breast-cancer-mlp.pt", arch="breast_cancer_mlp", dataset="breast_cancer")
    create_job(deployment, JOB, JOB, "lab", "patient_predictions")
    return deployment


def register_dataset(deployment: Deployment, name: str, source: str) -> None:
    with deployment.superuser() as conn:
        conn.execute(
            "INSERT INTO ckpt_eval.datasets (name, kind, source, feature_columns, class_names) "
            "VALUES (%s, 'table', %s, %s, ARRAY['malignant', 'benign'])",
            (name, source, list(FEATURES)),
        )


def create_job(deployment: Deployment, job: str, dataset: str, schema: str, table: str, key: str = "sample_id") -> None:
    with deployment.superuser() as conn:
        conn.execute("SET ROLE ckpt_eval_owner")
        conn.execute(
            "SELECT ckpt_eval.create_scoring_job(%s, %s, %s, %s, %s, %s, %s)",
            (job, CHECKPOINT, dataset, key, schema, table, CHUNK_ROWS),
        )


def reference_probabilities(features: np.ndarray) -> np.ndarray:
    architecture = get_architecture("breast_cancer_mlp")
    model = build_model("breast_cancer_mlp")
    model.load_state_dict(torch.load(REPO / "checkpoints" / "breast-cancer-mlp.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        logits = model(architecture.prepare(torch.from_numpy(features.astype(np.float32))))
        return torch.softmax(logits.double(), dim=1).numpy()


def score(deployment: Deployment, *args: str, job: str = JOB):  # type: ignore[no-untyped-def]
    return deployment.ckpt_eval("score", job, "--format", "json", *args)


def predictions(deployment: Deployment, table: str = "lab.patient_predictions") -> list[tuple]:
    """The output table's rows as stored (a binary model's rows hold no probability array)."""
    with deployment.superuser() as conn:
        return conn.execute(
            f"SELECT row_key, scoring_run_id, checkpoint_id, predicted_index, probabilities, positive_probability "
            f"FROM {table} ORDER BY scoring_run_id, row_key"
        ).fetchall()


def latest(deployment: Deployment, view: str = "lab.patient_predictions_latest") -> list[tuple]:
    """What analysts join to the input: the view of each row's latest prediction."""
    with deployment.superuser() as conn:
        return conn.execute(
            f"SELECT row_key, scoring_run_id, checkpoint_name, predicted_index, predicted_class, probabilities, "
            f"positive_probability FROM {view} ORDER BY row_key"
        ).fetchall()


def runs(deployment: Deployment) -> list[tuple]:
    with deployment.superuser() as conn:
        return conn.execute(
            "SELECT scoring_run_id, status, rescore, planned_rows, chunks, rows_scored, rows_skipped, failed_chunks "
            "FROM ckpt_eval.scoring_runs ORDER BY scoring_run_id"
        ).fetchall()


def test_predictions_equal_an_independent_forward_pass(db: Deployment) -> None:
    result = score(db, "--force")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows_scored"] == 569
    assert summary["started"] is True
    assert summary["run_status"] == "done"
    written = predictions(db)
    assert [row[0] for row in written] == list(range(569))
    assert {row[4] for row in written} == {None}, "two classes: only the positive probability is stored"
    shown = latest(db)
    assert [(r[0], r[1], r[3], r[5]) for r in written] == [(r[0], r[1], r[3], r[6]) for r in shown]
    expected = reference_probabilities(load_breast_cancer().data)
    for key, _, name, index, label, probabilities, positive in shown:
        assert name == CHECKPOINT
        np.testing.assert_allclose(probabilities, expected[key], rtol=1e-5, atol=1e-6)
        assert index == int(np.argmax(expected[key]))
        assert label == ("malignant", "benign")[index]
        assert positive == probabilities[1]
    (run,) = runs(db)
    assert run[1:] == ("done", False, 569, math.ceil(569 / CHUNK_ROWS), 569, 0, 0)


def test_a_second_run_scores_nothing_and_new_rows_are_scored_by_the_next(db: Deployment) -> None:
    assert score(db, "--force").returncode == 0
    again = score(db, "--force")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scoring_run_id"] is None
    assert len(runs(db)) == 1
    create_input(db, rows=load_breast_cancer().data[:10], first_key=1000)
    dry = score(db, "--force", "--dry-run")
    assert json.loads(dry.stdout)["planned_rows"] == 10
    later = score(db, "--force")
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout)["rows_scored"] == 10
    written = predictions(db)
    assert len(written) == 579
    assert sorted(row[0] for row in written if row[1] == runs(db)[1][0]) == list(range(1000, 1010))
    assert len({row[0] for row in written}) == 579  # exactly one prediction per row


def test_keys_that_arrive_inside_a_scored_range_are_scored_alone(db: Deployment) -> None:
    db.sql("DELETE FROM lab.patients WHERE sample_id IN (50, 60, 300)")
    assert score(db, "--force").returncode == 0
    with db.superuser() as conn:
        conn.execute(
            "INSERT INTO lab.patients SELECT sample_id + 1000, " + ", ".join(FEATURES) + " FROM lab.patients "
            "WHERE sample_id IN (49, 59, 299)"
        )
        conn.execute("UPDATE lab.patients SET sample_id = sample_id - 1000 + 1 WHERE sample_id > 1000")
    # 50, 60 and 300 make one chunk whose key range also holds the rows scored in between: it leaves them out.
    later = score(db, "--force", "--format", "json")
    assert later.returncode == 0, later.stderr
    summary = json.loads(later.stdout)
    assert summary["rows_scored"] == 3
    with db.superuser() as conn:
        chunks = conn.execute(
            "SELECT low_key, high_key, planned_rows, clean FROM ckpt_eval.scoring_chunks "
            "WHERE scoring_run_id = (SELECT max(scoring_run_id) FROM ckpt_eval.scoring_runs) ORDER BY chunk_no"
        ).fetchall()
    assert chunks == [(50, 300, 3, False)]
    written = predictions(db)
    assert len(written) == 569
    assert sorted(row[0] for row in written) == list(range(569)), "each row exactly once"


def test_rescore_adds_a_scoring_run_and_the_latest_view_shows_it(db: Deployment) -> None:
    assert score(db, "--force").returncode == 0
    rescored = score(db, "--force", "--rescore")
    assert rescored.returncode == 0, rescored.stderr
    first, second = runs(db)
    assert second[2] is True
    assert len(predictions(db)) == 2 * 569
    with db.superuser() as conn:
        latest = conn.execute(
            "SELECT count(*), min(scoring_run_id), max(scoring_run_id) FROM lab.patient_predictions_latest"
        ).fetchone()
    assert latest == (569, second[0], second[0])
    assert first[0] < second[0]
    # A bounded rescore: the first ten rows again, as a third run; the view shows them from it.
    bounded = score(db, "--force", "--rescore", "--limit", "10", "--format", "json")
    assert bounded.returncode == 0, bounded.stderr
    assert json.loads(bounded.stdout)["rows_scored"] == 10
    with db.superuser() as conn:
        shown = conn.execute(
            "SELECT scoring_run_id, count(*) FROM lab.patient_predictions_latest GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert shown == [(second[0], 559), (runs(db)[2][0], 10)]


def test_limit_bounds_a_run_and_the_next_run_takes_the_rest(db: Deployment) -> None:
    limited = score(db, "--force", "--limit", "150")
    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout)["rows_scored"] == 150
    assert [row[0] for row in predictions(db)] == list(range(150))
    assert json.loads(score(db, "--force", "--dry-run").stdout)["planned_rows"] == 569 - 150
    assert json.loads(score(db, "--force").stdout)["rows_scored"] == 569 - 150


def test_a_checkpoint_that_has_not_passed_its_gate_is_refused_unless_forced(db: Deployment) -> None:
    refused = score(db)
    assert refused.returncode == 3
    assert "has not passed its gate" in refused.stderr
    assert "--force" in refused.stderr
    assert runs(db) == []
    evaluated = db.ckpt_eval("run", "--dataset", "breast_cancer")
    assert evaluated.returncode == 0, evaluated.stderr
    allowed = score(db)
    assert allowed.returncode == 0, allowed.stderr


def test_bad_rows_fail_their_chunk_or_are_skipped_and_counted(db: Deployment) -> None:
    with db.superuser() as conn:
        conn.execute("CREATE TABLE lab.raw (sample_id integer, " + ", ".join(f"{c} text" for c in FEATURES) + ")")
        conn.execute("INSERT INTO lab.raw SELECT * FROM lab.patients")
        conn.execute("UPDATE lab.raw SET f03 = NULL WHERE sample_id = 5")
        conn.execute("UPDATE lab.raw SET f07 = 'n/a' WHERE sample_id = 7")
        conn.execute("GRANT SELECT ON lab.raw TO ckpt_eval_app")
    register_dataset(db, "raw", "lab.raw")
    create_job(db, "raw", "raw", "lab", "raw_predictions")
    failing = score(db, "--force", job="raw")
    assert failing.returncode == 3, failing.stderr
    summary = json.loads(failing.stdout)
    assert summary["rows_scored"] == 569 - CHUNK_ROWS  # the other chunks went on
    assert summary["run_status"] == "failed"
    with db.superuser() as conn:
        (error,) = conn.execute("SELECT error FROM ckpt_eval.scoring_chunks WHERE status = 'failed'").fetchone()  # type: ignore[misc]
    assert "key 5" in error
    assert "NULL feature in column 'f03'" in error
    skipping = score(db, "--force", "--skip-bad-rows", job="raw")
    assert skipping.returncode == 0, skipping.stderr
    assert json.loads(skipping.stdout)["rows_scored"] == CHUNK_ROWS - 2
    assert json.loads(skipping.stdout)["rows_skipped"] == 2
    keys = {row[0] for row in predictions(db, "lab.raw_predictions")}
    assert keys == set(range(569)) - {5, 7}
    with db.superuser() as conn:
        (skipped,) = conn.execute("SELECT error FROM ckpt_eval.scoring_chunks WHERE rows_skipped = 2").fetchone()  # type: ignore[misc]
    assert "key 7: value 'n/a' is not a finite number in column 'f07'" in skipped


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ("INSERT INTO lab.patients SELECT * FROM lab.patients WHERE sample_id = 3", 65, "is not unique (key 3"),
        ("INSERT INTO lab.patients (sample_id) VALUES (NULL)", 65, "have a NULL key"),
        ("ALTER TABLE lab.patients DROP COLUMN f29", 65, "lacks a column"),
        ("REVOKE INSERT ON lab.patient_predictions FROM ckpt_eval_app", 78, "may not write output table"),
        ("DROP TABLE lab.patient_predictions CASCADE", 78, "does not exist"),
        ("UPDATE ckpt_eval.scoring_jobs SET checkpoint_name = 'nope'", 78, "is not registered"),
        ("REVOKE SELECT ON lab.patients FROM ckpt_eval_app", 65, 'GRANT SELECT ON "lab"."patients"'),
    ],
)
def test_bad_inputs_are_clear_errors_with_their_exit_code(db: Deployment, change: str, code: int, message: str) -> None:
    db.sql(change)
    result = score(db, "--force")
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert runs(db) == []


def test_an_unknown_job_is_a_usage_error(db: Deployment) -> None:
    result = score(db, job="nope")
    assert result.returncode == 2
    assert "no scoring job 'nope' (scoring jobs: 'patients')" in result.stderr


def test_a_text_key_is_refused(db: Deployment) -> None:
    create_input(db, "lab.texts", key_type="text")
    register_dataset(db, "texts", "lab.texts")
    create_job(db, "texts", "texts", "lab", "text_predictions")
    result = score(db, "--force", job="texts")
    assert result.returncode == 65
    assert "is not an integer column" in result.stderr


def test_score_runs_lists_the_history(db: Deployment) -> None:
    assert score(db, "--force").returncode == 0
    assert score(db, "--force", "--rescore").returncode == 0
    listed = db.ckpt_eval("score-runs", JOB, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["rescore"], r["status"], r["rows_scored"]) for r in json.loads(listed.stdout)["scoring_runs"]] == [
        (False, "done", 569),
        (True, "done", 569),
    ]


def _repository(db: Deployment) -> ScoringRepository:
    creds = decrypt_credentials(db.credentials, VAULT_PASSWORD.encode())
    return ScoringRepository(creds, RetryPolicy(attempts=2, max_seconds=5), **Settings().connect_options())


def test_a_chunk_whose_lease_was_taken_over_writes_nothing(db: Deployment) -> None:
    with _repository(db) as first, _repository(db) as second:
        job = first.scoring_job(JOB)
        assert job is not None
        assert job.checkpoint_id is not None
        plan = first.plan(job, job.checkpoint_id, rescore=False, limit=None)
        run_id = first.start_run(job, plan, checkpoint_sha256="0" * 64, rescore=False, owner="w1", app_version="t")
        assert run_id is not None
        # A second run cannot start while this one is active: compare-and-set on the job.
        other = second.start_run(job, plan, checkpoint_sha256="0" * 64, rescore=False, owner="w2", app_version="t")
        assert other is None
        chunk = first.claim_chunk(run_id, 0, "w1", "token-1", lease_seconds=1)
        assert chunk is not None
        db.sql("UPDATE ckpt_eval.scoring_chunks SET lease_expires_at = now() - interval '1 second'")
        stolen = second.claim_chunk(run_id, 0, "w2", "token-2", lease_seconds=60)
        assert stolen is not None
        assert stolen.attempt == 2
        one = Predictions(keys=[np.array([0])], indices=[np.array([1])], probabilities=[np.array([[0.1, 0.9]])])

        def data(now: datetime) -> Iterator[bytes]:
            return copy_blocks(one, run_id, job.checkpoint_id or 0, now)

        assert not first.finish_chunk(job, chunk, failed=False, data=data, rows_scored=1, rows_skipped=0, error=None)
        assert predictions(db) == []
        assert second.finish_chunk(job, stolen, failed=False, data=data, rows_scored=1, rows_skipped=0, error=None)
        assert [r[0] for r in predictions(db)] == [0]
        # The same token again (a retried finish): the fence no longer holds, nothing is written twice.
        assert not second.finish_chunk(job, stolen, failed=False, data=data, rows_scored=1, rows_skipped=0, error=None)
        assert len(predictions(db)) == 1
        assert first.complete_run(job, run_id) is None  # other chunks are still pending


def test_a_value_the_input_view_cannot_compute_stops_the_job_and_hands_the_chunk_back(db: Deployment) -> None:
    features = ", ".join(["1.0 / (sample_id - 300) AS f00", *FEATURES[1:]])
    with db.superuser() as conn:
        conn.execute(f"CREATE VIEW lab.broken AS SELECT sample_id, {features} FROM lab.patients")
        conn.execute("GRANT SELECT ON lab.broken TO ckpt_eval_app")
    register_dataset(db, "broken", "lab.broken")
    create_job(db, "broken", "broken", "lab", "broken_predictions")
    result = score(db, "--force", job="broken")
    assert result.returncode == 65, result.stderr
    assert "failed on a value: division by zero" in result.stderr
    assert "Traceback" not in result.stderr
    with db.superuser() as conn:
        holding = conn.execute(
            "SELECT status, lease_token IS NULL FROM ckpt_eval.scoring_chunks WHERE 300 BETWEEN low_key AND high_key"
        ).fetchone()
        done = conn.execute(
            "SELECT coalesce(sum(rows_scored), 0) FROM ckpt_eval.scoring_chunks WHERE status = 'done'"
        ).fetchone()
        written = conn.execute("SELECT count(*) FROM lab.broken_predictions").fetchone()
    # The chunk holding key 300 was handed back untouched; chunks scored before it (in random order) keep
    # their predictions, exactly their rows.
    assert holding == ("pending", True)
    assert written == done
