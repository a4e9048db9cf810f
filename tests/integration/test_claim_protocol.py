"""The compare-and-set claim, heartbeat and fenced finish against a real server, in-process,
plus the privileges of ckpt_eval_app."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import psycopg
import pytest

from ckpt_eval.credentials import DbCredentials
from ckpt_eval.db.connection import RetryPolicy
from ckpt_eval.db.repository import Repository, RunRecord
from ckpt_eval.errors import LeaseLost
from ckpt_eval.job import Heartbeat
from tests.support.deployment import APP_PASSWORD, Deployment

POLICY = RetryPolicy(attempts=2, max_seconds=5, initial_wait=0.1, max_wait=0.2)
GOOD_PAIR = ("digits-mlp-good", "digits")


def app_credentials(deployment: Deployment) -> DbCredentials:
    return DbCredentials("127.0.0.1", deployment.cluster.port, deployment.dbname, "ckpt_eval_app", APP_PASSWORD)


def record(status: str = "succeeded") -> RunRecord:
    now = datetime.now().astimezone()
    return RunRecord(
        status=status,
        verdict="pass" if status == "succeeded" else "fail",
        verdict_reasons=None,
        error=None if status == "succeeded" else "boom",
        dataset_sha256="0" * 64,
        checkpoint_sha256="1" * 64,
        started_at=now,
        finished_at=now + timedelta(seconds=1),
        duration_seconds=1.0,
        n_samples=10,
        worker_host="test",
        worker_pid=1,
        app_version="test",
        min_accuracy=0.7,
        min_f1_macro=0.7,
        confusion_matrix="[[1]]",
        metrics=[("accuracy", "", 0.9), ("f1_macro", "", 0.8), ("loss", "", 0.1), ("precision", "0", 1.0)],
    )


@pytest.fixture
def repositories(deployment: Deployment):
    first = Repository(app_credentials(deployment), POLICY).open()
    second = Repository(app_credentials(deployment), POLICY).open()
    yield first, second
    first.close()
    second.close()


def test_only_one_of_two_workers_wins_a_claim(repositories, deployment: Deployment) -> None:
    first, second = repositories
    assert first.claim(GOOD_PAIR, "w1", "token-1", 60) is not None
    assert second.claim(GOOD_PAIR, "w2", "token-2", 60) is None
    [(owner, token, attempt)] = deployment.rows(
        "SELECT lease_owner, lease_token, attempt FROM ckpt_eval.evaluations WHERE checkpoint_name = 'digits-mlp-good'"
    )
    assert (owner, token, attempt) == ("w1", "token-1", "1")


def test_finish_writes_run_metrics_and_state_together(repositories, deployment: Deployment) -> None:
    first, _ = repositories
    claim = first.claim(GOOD_PAIR, "w1", "token-1", 60)
    run_id = first.finish(claim, record())
    assert deployment.rows(f"SELECT status, lease_token FROM ckpt_eval.evaluation_runs WHERE run_id = {run_id}") == [
        ["succeeded", "token-1"]
    ]
    assert deployment.rows(f"SELECT count(*) FROM ckpt_eval.evaluation_metrics WHERE run_id = {run_id}") == [["4"]]
    assert deployment.rows(
        "SELECT status, lease_token IS NULL FROM ckpt_eval.evaluations WHERE checkpoint_name = 'digits-mlp-good'"
    ) == [["done", "t"]]
    # Finishing again with the same token is idempotent (a lost commit acknowledgement).
    assert first.finish(claim, record()) == run_id
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_runs") == [["1"]]


def test_finishing_a_group_writes_every_pair_still_ours_in_one_transaction(
    repositories, deployment: Deployment
) -> None:
    first, second = repositories
    good = first.claim(GOOD_PAIR, "w1", "token-1", 60)
    other = first.claim(("digits-mlp-undertrained", "digits"), "w1", "token-2", 60)
    deployment.sql(
        "UPDATE ckpt_eval.evaluations SET lease_expires_at = now() - interval '1 second' "
        "WHERE checkpoint_name = 'digits-mlp-undertrained'"
    )
    taken = second.claim(("digits-mlp-undertrained", "digits"), "w2", "token-3", 60)
    assert taken is not None

    [run_id, lost] = first.finish_many([(good, record()), (other, record("failed"))])
    assert isinstance(lost, LeaseLost)
    assert "lease lost to another worker" in str(lost)
    assert deployment.rows("SELECT run_id, lease_token FROM ckpt_eval.evaluation_runs") == [[str(run_id), "token-1"]]
    metrics = deployment.rows(
        f"SELECT metric, class_label, value FROM ckpt_eval.evaluation_metrics WHERE run_id = {run_id} ORDER BY 1, 2"
    )
    assert metrics == [["accuracy", "", "0.9"], ["f1_macro", "", "0.8"], ["loss", "", "0.1"], ["precision", "0", "1"]]
    assert deployment.rows(
        "SELECT checkpoint_name, status, lease_owner FROM ckpt_eval.evaluations ORDER BY checkpoint_name"
    ) == [["digits-mlp-good", "done", ""], ["digits-mlp-undertrained", "running", "w2"]]
    # The same batch again (a commit acknowledgement lost with the connection): nothing written twice.
    assert first.finish_many([(good, record()), (other, record("failed"))])[0] == run_id
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_runs") == [["1"]]
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_metrics") == [["4"]]
    assert second.finish_many([(taken, record())])[0] != run_id


def test_stale_worker_is_fenced_off_after_its_lease_was_taken_over(repositories, deployment: Deployment) -> None:
    first, second = repositories
    stale = first.claim(GOOD_PAIR, "w1", "token-1", 60)
    deployment.sql("UPDATE ckpt_eval.evaluations SET lease_expires_at = now() - interval '1 second'")
    assert first.heartbeat(stale, 60) is True, "an expired but untaken lease can still be renewed"
    deployment.sql("UPDATE ckpt_eval.evaluations SET lease_expires_at = now() - interval '1 second'")
    fresh = second.claim(GOOD_PAIR, "w2", "token-2", 60)
    assert fresh is not None
    assert fresh.attempt == 2

    assert first.heartbeat(stale, 60) is False
    with pytest.raises(LeaseLost):
        first.finish(stale, record())
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_runs") == [["0"]]
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_metrics") == [["0"]]

    run_id = second.finish(fresh, record())
    assert deployment.rows("SELECT run_id, attempt FROM ckpt_eval.evaluation_runs") == [[str(run_id), "2"]]


def test_heartbeat_keeps_a_lease_alive_and_notices_when_it_is_taken(repositories, deployment: Deployment) -> None:
    first, second = repositories
    claim = first.claim(GOOD_PAIR, "w1", "token-1", 1)
    beating = Repository(app_credentials(deployment), POLICY)
    with Heartbeat(beating, claim, lease_seconds=1, interval=0.2) as heartbeat:
        time.sleep(2.5)  # more than twice the lease: only the heartbeats keep it
        assert second.claim(GOOD_PAIR, "w2", "token-2", 60) is None
        assert not heartbeat.lost.is_set()
        deployment.sql(
            "UPDATE ckpt_eval.evaluations SET lease_token = 'stolen' WHERE checkpoint_name = 'digits-mlp-good'"
        )
        assert heartbeat.lost.wait(timeout=5), "a lost lease is noticed at the next heartbeat"
    beating.close()
    with pytest.raises(LeaseLost):
        first.finish(claim, record())


def test_without_heartbeats_the_lease_expires_and_is_taken_over(repositories) -> None:
    first, second = repositories
    assert first.claim(GOOD_PAIR, "w1", "token-1", 1) is not None
    time.sleep(1.5)
    taken = second.claim(GOOD_PAIR, "w2", "token-2", 60)
    assert taken is not None
    assert taken.attempt == 2


def test_release_hands_the_checkpoint_back(repositories, deployment: Deployment) -> None:
    first, second = repositories
    claim = first.claim(GOOD_PAIR, "w1", "token-1", 60)
    assert claim is not None
    second.release(GOOD_PAIR, "token-other")  # not its lease: nothing happens
    assert deployment.rows("SELECT status FROM ckpt_eval.evaluations WHERE checkpoint_name = 'digits-mlp-good'") == [
        ["running"]
    ]
    first.release(GOOD_PAIR, claim.lease_token)
    assert deployment.rows("SELECT status FROM ckpt_eval.evaluations WHERE checkpoint_name = 'digits-mlp-good'") == [
        ["pending"]
    ]
    assert second.claim(GOOD_PAIR, "w2", "token-2", 60) is not None


def test_repository_reconnects_after_the_connection_is_killed(repositories, deployment: Deployment) -> None:
    first, _ = repositories
    deployment.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ckpt_eval_app'")
    assert [c.pair for c in first.candidates(None, 10)] == [GOOD_PAIR, ("digits-mlp-undertrained", "digits")]
    assert [c.arch for c in first.candidates(None, 10)] == ["digits_mlp", "digits_mlp"]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE ckpt_eval.intruder (a int)",
        "CREATE TABLE public.intruder (a int)",
        "CREATE TEMP TABLE intruder (a int)",
        "CREATE SCHEMA intruder",
        "DROP TABLE ckpt_eval.evaluation_runs",
        "ALTER TABLE ckpt_eval.checkpoints ADD COLUMN x int",
        "TRUNCATE ckpt_eval.evaluation_metrics",
        "DELETE FROM ckpt_eval.checkpoints",
        "DELETE FROM ckpt_eval.evaluation_runs",
        "UPDATE ckpt_eval.checkpoints SET path = '../../etc/passwd'",
        "UPDATE ckpt_eval.checkpoints SET sha256 = NULL",
        "UPDATE ckpt_eval.evaluation_runs SET verdict = 'pass'",
        "UPDATE ckpt_eval.evaluation_metrics SET value = 1",
        "SELECT * FROM pg_catalog.pg_authid",
        "CREATE ROLE intruder",
        "GRANT ckpt_eval_owner TO ckpt_eval_app",
    ],
)
def test_app_role_has_no_privileges_beyond_the_job(deployment: Deployment, statement: str) -> None:
    creds = app_credentials(deployment)
    with psycopg.connect(**creds.connect_kwargs()) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)
