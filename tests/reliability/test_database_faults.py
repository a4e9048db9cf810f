"""Database faults: a restart in the middle of a run, a server unreachable at start, a statement
that times out, and a connection dropped between claim and finish. Each runs on a PostgreSQL of its
own, so stopping it disturbs nobody else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_eval.architectures import build_model
from ckpt_eval.datasets import write_idx
from tests.support.deployment import Deployment, new_deployment
from tests.support.pgcluster import PgCluster, free_port

from .workers import Worker, run_counts, start_worker

METRIC_ROWS_PER_RUN = 6 + 4 * 10  # overall metrics + precision/recall/f1/support per class


@pytest.fixture
def own_deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment on a PostgreSQL server of its own, which the scenario may stop."""
    server = PgCluster()
    try:
        server.init()
        server.write_hba(["host all ckpt_eval_app 127.0.0.1/32 scram-sha-256"])
        server.start()
        server.wait_ready()
        yield new_deployment(server, tmp_path, dbname="ckpt_eval")
    finally:
        server.destroy()


def add_slow_checkpoint(deployment: Deployment, images: int = 6000) -> None:
    """A fashion_cnn checkpoint whose evaluation with --batch-size 1 takes seconds."""
    rng = np.random.default_rng(0)
    write_idx(deployment.data_dir / "fashion_mnist" / "t10k-images-idx3-ubyte", rng.integers(0, 255, (images, 28, 28)))
    write_idx(deployment.data_dir / "fashion_mnist" / "t10k-labels-idx1-ubyte", rng.integers(0, 10, images))
    torch.manual_seed(0)
    torch.save(build_model("fashion_cnn").state_dict(), deployment.checkpoint_root / "slow.pt")
    deployment.register_row("slow", "slow.pt", arch="fashion_cnn", dataset="fashion_mnist")


def wait_until_evaluating(worker: Worker, name: str, timeout: float = 120) -> None:
    assert worker.process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = worker.process.stderr.readline()
        if not line:
            break
        if "evaluating checkpoint" in line and repr(name) in line:
            return
    raise AssertionError(f"the worker never started evaluating {name}")


def assert_nothing_half_written(deployment: Deployment) -> None:
    rows = deployment.rows(
        "SELECT r.run_id, r.status, count(m.metric) FROM ckpt_eval.evaluation_runs r "
        "LEFT JOIN ckpt_eval.evaluation_metrics m USING (run_id) GROUP BY 1, 2"
    )
    for run_id, status, metrics in rows:
        expected = METRIC_ROWS_PER_RUN if status == "succeeded" else 0
        assert int(metrics) == expected, f"run {run_id} has {metrics} metric rows"
    orphans = deployment.rows(
        "SELECT count(*) FROM ckpt_eval.evaluation_metrics m "
        "WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.evaluation_runs r WHERE r.run_id = m.run_id)"
    )
    assert orphans == [["0"]]


@pytest.mark.scenario(
    "DB restart mid-run", "the job retries with backoff and finishes; one run each, none half-written"
)
def test_server_restart_in_the_middle_of_a_run(own_deployment: Deployment, figure) -> None:
    add_slow_checkpoint(own_deployment)
    own_deployment.sql(
        "UPDATE ckpt_eval.evaluations SET requested_at = now() - interval '1 hour' WHERE checkpoint_name = 'slow'"
    )
    worker = start_worker(own_deployment, "--batch-size", "1", "--db-retries", "8", "--db-retry-seconds", "60")
    wait_until_evaluating(worker, "slow")
    own_deployment.cluster.stop("immediate")
    stopped = time.monotonic()
    time.sleep(3)
    own_deployment.cluster.start()
    downtime = time.monotonic() - stopped
    result = worker.wait()
    assert result.returncode == 3, result.stderr[-3000:]  # random weights and the undertrained demo fail the gate
    assert "Traceback" not in result.stderr
    assert run_counts(own_deployment) == {"slow": 1, "digits-mlp-good": 1, "digits-mlp-undertrained": 1}
    assert_nothing_half_written(own_deployment)
    retries = result.stderr.count("reconnecting") + result.stderr.count("heartbeat failed")
    figure(f"down {downtime:.1f} s; job {result.seconds:.1f} s; {retries} retried operations")


@pytest.mark.scenario("DB unreachable at start", "exit 75 after bounded retries (README: about 8 s with defaults)")
def test_server_refusing_connections_at_start(deployment: Deployment, figure) -> None:
    deployment.write_credentials(port=free_port())
    env = {k: v for k, v in deployment.env.items() if not k.startswith("CKPT_EVAL_DB_RETR")}
    deployment.env = env
    started = time.monotonic()
    result = deployment.ckpt_eval("run")  # default retry policy: 5 attempts, at most 60 s
    elapsed = time.monotonic() - started
    assert result.returncode == 75
    assert "gave up after 5 attempts" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60 + 10
    figure(f"exit 75 after {elapsed:.1f} s (5 attempts)")


@pytest.mark.scenario("DB hangs at start", "a server that accepts TCP but never answers: exit 75 within the bound")
def test_server_that_never_answers(deployment: Deployment, figure) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
        deployment.write_credentials(port=silent.getsockname()[1], connect_timeout=2)
        started = time.monotonic()
        result = deployment.ckpt_eval("run", "--db-retries", "3", "--db-retry-seconds", "20")
        elapsed = time.monotonic() - started
    assert result.returncode == 75
    assert "Traceback" not in result.stderr
    assert elapsed < 20 + 2 + 5  # the bound plus one connect_timeout plus process start
    figure(f"exit 75 after {elapsed:.1f} s (3 attempts, connect_timeout 2 s)")


@pytest.mark.scenario(
    "Statement timeout", "a blocked statement times out: exit 75, nothing written; next run completes"
)
def test_statement_timeout_then_recovery(deployment: Deployment, figure) -> None:
    with deployment.superuser() as blocker, blocker.transaction():
        blocker.execute("LOCK TABLE ckpt_eval.checkpoints IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        blocked = deployment.ckpt_eval("run", "--statement-timeout", "1", "--db-retries", "2")
        elapsed = time.monotonic() - started
    assert blocked.returncode == 75, blocked.stderr[-2000:]
    assert "statement timeout" in blocked.stderr or "canceling statement" in blocked.stderr
    assert run_counts(deployment) == {}
    assert deployment.rows("SELECT DISTINCT status FROM ckpt_eval.evaluations") == [["pending"]]
    recovered = deployment.ckpt_eval("run")
    assert recovered.returncode == 3
    assert run_counts(deployment) == {"digits-mlp-good": 1, "digits-mlp-undertrained": 1}
    figure(f"exit 75 after {elapsed:.1f} s with the table locked; clean run afterwards")


@pytest.mark.scenario("Connection dropped", "killed between claim and finish: the job reconnects, writes once")
def test_connection_dropped_between_claim_and_finish(deployment: Deployment, figure) -> None:
    add_slow_checkpoint(deployment)
    deployment.sql(
        "UPDATE ckpt_eval.evaluations SET requested_at = now() - interval '1 hour' WHERE checkpoint_name = 'slow'"
    )
    worker = start_worker(deployment, "--batch-size", "1")
    wait_until_evaluating(worker, "slow")
    killed = deployment.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'ckpt_eval_app'"
    )
    result = worker.wait()
    assert int(killed) >= 1
    assert result.returncode == 3, result.stderr[-3000:]
    assert run_counts(deployment) == {"slow": 1, "digits-mlp-good": 1, "digits-mlp-undertrained": 1}
    assert deployment.rows("SELECT attempt FROM ckpt_eval.evaluation_runs WHERE checkpoint_name = 'slow'") == [["1"]]
    assert_nothing_half_written(deployment)
    figure(f"{killed} backend(s) killed mid-evaluation; job {result.seconds:.1f} s, one run per checkpoint")
