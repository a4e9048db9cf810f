"""Concurrency: several `ckpt-eval run` processes on one registry, with and without `--force` reruns
issued while they work. The claim protocol must give every checkpoint exactly the runs it was asked for."""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.deployment import VAULT_PASSWORD, Deployment

from .workers import Worker, WorkerResult, finish_demo_checkpoints, register_many, start_worker

WORKERS = 4
CHECKPOINTS = 200
LOST_RACE = "claimed by another worker"


def wait_all(workers: list[Worker], timeout: float = 300) -> list[WorkerResult]:
    """Drain every worker's pipes at once, so a chatty worker never blocks on a full pipe."""
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        return list(pool.map(lambda worker: worker.wait(timeout), workers))


def kill_all(workers: list[Worker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()


def run_clean_workers(deployment: Deployment) -> tuple[list[WorkerResult], float]:
    """WORKERS `ckpt-eval run` processes started together; each must exit 0 without a traceback."""
    started = time.monotonic()
    workers = [start_worker(deployment, "--log-level", "debug") for _ in range(WORKERS)]
    try:
        results = wait_all(workers)
    finally:
        kill_all(workers)
    wall = time.monotonic() - started
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    return results, wall


def our_checkpoints(deployment: Deployment) -> dict[int, str]:
    rows = deployment.rows(
        "SELECT checkpoint_id, status FROM ckpt_eval.evaluations WHERE checkpoint_name LIKE 'ckpt-%'"
    )
    return {int(checkpoint_id): status for checkpoint_id, status in rows}


def runs_per_checkpoint(deployment: Deployment) -> dict[int, tuple[int, int, list[int]]]:
    """checkpoint_id -> (runs, succeeded runs, attempts in order) for every checkpoint of the scenario."""
    rows = deployment.rows(
        "SELECT c.checkpoint_id, count(r.run_id), count(r.run_id) FILTER (WHERE r.status = 'succeeded'), "
        "coalesce(array_to_string(array_agg(r.attempt ORDER BY r.attempt) FILTER (WHERE r.run_id IS NOT NULL), ','),"
        " '') FROM ckpt_eval.checkpoints c LEFT JOIN ckpt_eval.evaluation_runs r USING (checkpoint_id) "
        "WHERE c.name LIKE 'ckpt-%' GROUP BY 1"
    )
    return {
        int(cid): (int(runs), int(ok), [int(a) for a in attempts.split(",") if a]) for cid, runs, ok, attempts in rows
    }


def assert_one_run_per_claim(deployment: Deployment) -> None:
    total, tokens = deployment.rows("SELECT count(*), count(DISTINCT lease_token) FROM ckpt_eval.evaluation_runs")[0]
    assert total == tokens, f"{total} runs but only {tokens} distinct lease tokens: a claim wrote twice"


@pytest.mark.scenario(
    "4 workers, 200 checkpoints",
    "every checkpoint ends with exactly one succeeded run; no duplicate; every worker exits 0",
)
def test_four_workers_evaluate_each_checkpoint_once(deployment: Deployment, figure) -> None:
    register_many(deployment, CHECKPOINTS)
    finish_demo_checkpoints(deployment)
    results, wall = run_clean_workers(deployment)
    statuses = our_checkpoints(deployment)
    assert len(statuses) == CHECKPOINTS
    assert {cid: s for cid, s in statuses.items() if s != "done"} == {}
    runs = runs_per_checkpoint(deployment)
    assert {cid: r for cid, r in runs.items() if r[:2] != (1, 1)} == {}, "checkpoints without exactly one success"
    assert {cid: r[2] for cid, r in runs.items() if r[2] != [1]} == {}, "a checkpoint was claimed more than once"
    assert_one_run_per_claim(deployment)

    lost = sum(result.stderr.count(LOST_RACE) for result in results)
    evaluated = [result.stderr.count("evaluating checkpoint") for result in results]
    assert sum(evaluated) == CHECKPOINTS
    figure(
        f"wall {wall:.1f} s ({CHECKPOINTS / wall:.1f} ckpt/s incl. start-up); {lost} lost races; "
        f"per worker {'/'.join(map(str, evaluated))}"
    )


@pytest.mark.scenario(
    "4 workers, 100 checkpoints x 2 datasets",
    "pairs: every (checkpoint, dataset) ends with exactly one succeeded run; adoption races are harmless",
)
def test_four_workers_evaluate_each_pair_once(deployment: Deployment, figure) -> None:
    pairs_wanted = 100
    deployment.sql("INSERT INTO ckpt_eval.datasets (name, kind, split) VALUES ('digits_train', 'digits', 'train')")
    register_many(deployment, pairs_wanted, prefix="pair")  # adopted as pairs on digits by the first runs
    deployment.sql(
        "INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id) "
        "SELECT name, 'digits_train', checkpoint_id FROM ckpt_eval.checkpoints WHERE name LIKE 'pair-%'"
    )
    finish_demo_checkpoints(deployment)
    results, wall = run_clean_workers(deployment)
    rows = deployment.rows(
        "SELECT e.checkpoint_name, e.dataset, e.status, count(r.run_id), "
        "count(r.run_id) FILTER (WHERE r.status = 'succeeded') FROM ckpt_eval.evaluations e "
        "LEFT JOIN ckpt_eval.evaluation_runs r ON r.checkpoint_id = e.checkpoint_id AND r.dataset = e.dataset "
        "WHERE e.checkpoint_name LIKE 'pair-%' GROUP BY 1, 2, 3"
    )
    assert len(rows) == 2 * pairs_wanted
    assert [row for row in rows if row[2:] != ["done", "1", "1"]] == []
    assert_one_run_per_claim(deployment)
    adopted = sum(len(re.findall(r"made (\d+) \(checkpoint, dataset\) pair", r.stderr)) for r in results)
    figure(
        f"wall {wall:.1f} s for {2 * pairs_wanted} pairs; adopted by {adopted} of {WORKERS} workers; "
        f"{sum(r.stderr.count(LOST_RACE) for r in results)} lost races"
    )


class GatedRerun:
    """A `ckpt-eval run --force` whose vault password comes on stdin: the process starts and waits for
    it (stdin held open, within a generous CKPT_EVAL_STDIN_TIMEOUT); writing the password and closing
    stdin releases it at the moment the scenario chooses. (A FIFO as password file is refused now:
    secret sources are regular files or stdin.)"""

    def __init__(self, deployment: Deployment, ids: tuple[int, ...]) -> None:
        self.ids = ids
        args = [arg for cid in ids for arg in ("--checkpoint-id", str(cid))]
        self.worker = start_worker(
            deployment,
            "--force",
            "--vault-password-file",
            "-",
            *args,
            env={"CKPT_EVAL_STDIN_TIMEOUT": "600"},
            stdin=subprocess.PIPE,
        )

    def release(self) -> None:
        stdin = self.worker.process.stdin
        assert stdin is not None
        if self.worker.process.poll() is not None:
            raise AssertionError(f"--force rerun {self.ids} ended before its password was given")
        stdin.write(f"{VAULT_PASSWORD}\n")
        stdin.close()
        self.worker.process.stdin = None  # communicate() must not touch the closed pipe


def wait_for_runs(deployment: Deployment, ids: tuple[int, ...], timeout: float = 120) -> None:
    """Until every checkpoint in ``ids`` has a run (or the deadline: the workers may be done anyway)."""
    wanted = ",".join(map(str, ids))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = deployment.rows(
            f"SELECT count(DISTINCT checkpoint_id) FROM ckpt_eval.evaluation_runs WHERE checkpoint_id IN ({wanted})"
        )
        if int(done[0][0]) == len(ids):
            return
        time.sleep(0.05)


@pytest.mark.scenario(
    "4 workers + --force reruns",
    "one run per claim; >=1 success each; >1 run only where --force targeted; attempts 1..k, no gaps",
)
def test_force_reruns_while_workers_run(deployment: Deployment, tmp_path: Path, figure) -> None:
    register_many(deployment, CHECKPOINTS)
    finish_demo_checkpoints(deployment)
    ids = sorted(our_checkpoints(deployment))  # the queue order: same requested_at, then checkpoint_id
    # Each wave is released once its trigger checkpoints have a run, while the rest are still queued:
    # reruns of finished checkpoints, of one forced twice at once, and of ones still pending or running.
    waves: list[tuple[tuple[int, ...], list[tuple[int, ...]]]] = [
        ((ids[0], ids[1], ids[2]), [(ids[0],), (ids[1], ids[2])]),
        ((ids[60],), [(ids[0], ids[60])]),
        ((ids[100],), [(ids[100],)]),
        ((ids[151],), [(ids[150], ids[151]), (ids[-1],)]),
    ]
    reruns = [[GatedRerun(deployment, target) for target in targets] for _, targets in waves]
    everyone = [rerun.worker for wave in reruns for rerun in wave]
    started = time.monotonic()
    workers = [start_worker(deployment) for _ in range(WORKERS)]
    everyone = workers + everyone
    try:
        for (trigger, _), wave in zip(waves, reruns, strict=True):
            wait_for_runs(deployment, trigger)
            for rerun in wave:
                rerun.release()
        results = wait_all(everyone)
    finally:
        kill_all(everyone)
    wall = time.monotonic() - started

    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    statuses = our_checkpoints(deployment)
    assert {cid: s for cid, s in statuses.items() if s != "done"} == {}, "checkpoints left pending or running"
    assert_one_run_per_claim(deployment)
    runs = runs_per_checkpoint(deployment)
    assert len(runs) == CHECKPOINTS
    assert {cid: r for cid, r in runs.items() if r[1] < 1} == {}, "checkpoints without a succeeded run"
    targeted = {cid for wave in reruns for rerun in wave for cid in rerun.ids}
    assert {cid: r[0] for cid, r in runs.items() if r[0] > 1 and cid not in targeted} == {}, (
        "more than one run for checkpoints no --force rerun targeted"
    )
    gaps = {cid: r[2] for cid, r in runs.items() if r[2] != list(range(1, r[0] + 1))}
    assert gaps == {}, "attempt numbers with gaps or repeats"

    rerun_counts = {cid: runs[cid][0] for cid in sorted(targeted)}
    requeued = sum(
        int(n) for result in results[WORKERS:] for n in re.findall(r"queued (\d+) checkpoint", result.stderr)
    )
    # A requeue stamps requested_at; the ones before the last first-pass result overlapped the workers.
    overlapped = deployment.rows(
        "SELECT count(*) FROM ckpt_eval.evaluations WHERE checkpoint_name LIKE 'ckpt-%' AND requested_at > attached_at "
        "AND requested_at < (SELECT max(finished_at) FROM ckpt_eval.evaluation_runs WHERE attempt = 1)"
    )[0][0]
    figure(
        f"wall {wall:.1f} s; {len(everyone) - WORKERS} --force processes on {len(targeted)} ids, {requeued} requeued "
        f"({overlapped} while the workers still ran); runs of targeted ids {rerun_counts}; "
        f"{sum(r[0] for r in runs.values())} runs in all"
    )
