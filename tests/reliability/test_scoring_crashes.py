"""Batch scoring under crashes: 4 workers share one scoring run of 1 million rows while one is killed with
SIGKILL and another frozen with SIGSTOP in the middle of a chunk. Their chunks are taken over once the
leases expire; the frozen worker, resumed, writes nothing; every row ends with exactly one prediction of
the run, and the run is closed as done."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support.deployment import CKPT_EVAL, Deployment

from .test_crashes import Watched
from .workers import Worker

ROWS = 1_000_000
CHUNK_ROWS = 50_000
LEASE_SECONDS = "3"
FEATURES = [f"f{i:02d}" for i in range(30)]


def scoring_worker(deployment: Deployment, *args: str) -> Worker:
    process = subprocess.Popen(
        [CKPT_EVAL, "score", "big", "--force", "--torch-threads", "1", "--lease-seconds", LEASE_SECONDS, *args],
        cwd=deployment.workdir,
        env=deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Worker(process, time.monotonic())


def prepare_big_job(deployment: Deployment) -> None:
    """1M rows of 30 features made by the server (no client transfer), a breast_cancer scoring job over them."""
    columns = ", ".join(f"{c} double precision" for c in FEATURES)
    values = ", ".join(f"random() * {10 + i}" for i in range(len(FEATURES)))
    with deployment.superuser() as conn:
        conn.execute("CREATE SCHEMA lab")
        conn.execute("GRANT USAGE ON SCHEMA lab TO ckpt_eval_app")
        conn.execute("GRANT USAGE, CREATE ON SCHEMA lab TO ckpt_eval_owner")
        conn.execute(f"CREATE TABLE lab.big (id bigint PRIMARY KEY, {columns})")
        conn.execute(f"INSERT INTO lab.big SELECT g, {values} FROM generate_series(1, {ROWS}) g")
        conn.execute("ANALYZE lab.big")
        conn.execute("GRANT SELECT ON lab.big TO ckpt_eval_app")
        conn.execute(
            "INSERT INTO ckpt_eval.datasets (name, kind, source, feature_columns) "
            "VALUES ('big', 'table', 'lab.big', %s)",
            (FEATURES,),
        )
    deployment.register_row(
        "breast-cancer-mlp", "breast-cancer-mlp.pt", arch="breast_cancer_mlp", dataset="breast_cancer"
    )
    with deployment.superuser() as conn:
        conn.execute("SET ROLE ckpt_eval_owner")
        conn.execute(
            "SELECT ckpt_eval.create_scoring_job('big', 'breast-cancer-mlp', 'big', 'id', 'lab', 'big_predictions', "
            "%s)",
            (CHUNK_ROWS,),
        )


def wait_for_claim(watched: Watched, timeout: float = 300) -> None:
    watched.wait_for("scoring chunk", timeout)


@pytest.mark.scenario(
    "scoring: 4 workers, 1M rows, kill -9 and SIGSTOP",
    "every row exactly one prediction of the run; the killed and frozen workers' chunks taken over; "
    "the frozen worker writes nothing when resumed; the run closes as done",
)
def test_four_workers_score_a_million_rows_exactly_once_through_a_kill_and_a_freeze(
    deployment: Deployment, figure
) -> None:
    prepare_big_job(deployment)
    started = time.monotonic()
    first = Watched(scoring_worker(deployment))
    wait_for_claim(first)  # the run exists: the others join it
    others = [Watched(scoring_worker(deployment)) for _ in range(3)]
    victim, frozen, *healthy = [first, *others]
    try:
        wait_for_claim(frozen)
        frozen.worker.process.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # the victim is in the middle of a chunk (a chunk takes about a second)
        victim.worker.process.send_signal(signal.SIGKILL)
        assert victim.finish()[0] == -signal.SIGKILL
        for worker in healthy:
            returncode, stderr = worker.finish(timeout=600)
            assert returncode == 0, stderr[-3000:]
            assert "Traceback" not in stderr
        # The healthy workers take the abandoned chunks over once their leases expire, if they are still
        # scoring then; otherwise the next worker joins the run and finishes it.
        if deployment.rows("SELECT status FROM ckpt_eval.scoring_runs") != [["done"]]:
            time.sleep(float(LEASE_SECONDS) + 0.5)
            successor = Watched(scoring_worker(deployment))
            returncode, stderr = successor.finish(timeout=600)
            assert returncode == 0, stderr[-3000:]
            assert "joined scoring run" in stderr
        frozen.worker.process.send_signal(signal.SIGCONT)
        returncode, frozen_stderr = frozen.finish(timeout=600)
    finally:
        for worker in (first, *others):
            worker.kill()
    elapsed = time.monotonic() - started
    assert returncode == 0, frozen_stderr[-3000:]
    assert "lease lost" in frozen_stderr

    (run,) = deployment.rows("SELECT scoring_run_id, status, rows_scored, failed_chunks FROM ckpt_eval.scoring_runs")
    assert run[1:] == ["done", str(ROWS), "0"]
    total, distinct, runs_seen = deployment.rows(
        "SELECT count(*), count(DISTINCT row_key), count(DISTINCT scoring_run_id) FROM lab.big_predictions"
    )[0]
    assert (int(total), int(distinct), int(runs_seen)) == (ROWS, ROWS, 1)
    assert deployment.rows("SELECT count(*) FROM lab.big b LEFT JOIN lab.big_predictions p ON p.row_key = b.id "
                           "WHERE p.row_key IS NULL") == [["0"]]  # fmt: skip
    retried = deployment.rows("SELECT count(*) FROM ckpt_eval.scoring_chunks WHERE attempt > 1")[0][0]
    assert int(retried) >= 2
    figure(f"{ROWS:,} rows in {ROWS // CHUNK_ROWS} chunks, {retried} chunk(s) taken over; {elapsed:.0f} s in all")
