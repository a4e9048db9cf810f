"""Load: thousands of registered checkpoints evaluated by two workers on the digits dataset.

Throughput is reported; exactly one succeeded run per checkpoint is asserted, and so is a peak
memory per job that does not grow with the number of checkpoints it evaluated."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deployment import CKPT_EVAL, Deployment

from .workers import finish_demo_checkpoints, register_many

SMALL = 200
LARGE = 2000
LOAD_WORKERS = 2

# Runs one command and reports the peak RSS of that child alone (the wrapper has no other child).
_PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'peak-rss-kb {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@dataclass
class MeasuredRun:
    returncode: int
    stderr: str
    peak_rss_mb: float
    evaluated: int


class MeasuredWorker:
    def __init__(self, deployment: Deployment, logs: Path, label: str) -> None:
        self.stdout_path = logs / f"{label}.out"
        self.stderr_path = logs / f"{label}.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _PEAK_RSS_WRAPPER, CKPT_EVAL, "run"],
                cwd=deployment.workdir,
                env=deployment.env,
                stdout=out,
                stderr=err,
                text=True,
            )

    def wait(self, timeout: float = 300) -> MeasuredRun:
        returncode = self.process.wait(timeout)
        stderr = self.stderr_path.read_text()
        peak = re.findall(r"^peak-rss-kb (\d+)$", stderr, re.MULTILINE)
        assert peak, stderr[-3000:]
        return MeasuredRun(returncode, stderr, int(peak[-1]) / 1024, stderr.count("evaluating checkpoint"))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def run_workers(deployment: Deployment, logs: Path, label: str, count: int) -> tuple[list[MeasuredRun], float]:
    started = time.monotonic()
    workers = [MeasuredWorker(deployment, logs, f"{label}-{i}") for i in range(count)]
    try:
        results = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    return results, time.monotonic() - started


def assert_exactly_one_success(deployment: Deployment, prefix: str, expected: int) -> None:
    rows = deployment.rows(
        "SELECT count(*), count(*) FILTER (WHERE c.status = 'done'), "
        "count(*) FILTER (WHERE r.runs = 1 AND r.succeeded = 1) FROM ckpt_eval.evaluations c "
        "LEFT JOIN (SELECT checkpoint_id, count(*) AS runs, count(*) FILTER (WHERE status = 'succeeded') "
        "AS succeeded FROM ckpt_eval.evaluation_runs GROUP BY 1) r USING (checkpoint_id) "
        f"WHERE c.checkpoint_name LIKE '{prefix}-%'"
    )
    assert rows == [[str(expected)] * 3], f"(checkpoints, done, exactly one succeeded run) = {rows}"


def steady_rate(deployment: Deployment, prefix: str) -> float:
    """Checkpoints per second between the first evaluation's start and the last one's end."""
    seconds = deployment.rows(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM ckpt_eval.evaluation_runs "
        f"WHERE checkpoint_name LIKE '{prefix}-%'"
    )[0][0]
    runs = deployment.rows(f"SELECT count(*) FROM ckpt_eval.evaluation_runs WHERE checkpoint_name LIKE '{prefix}-%'")
    return int(runs[0][0]) / float(seconds)


@pytest.mark.scenario(
    "2,000 checkpoints, 2 workers",
    "exactly one succeeded run each; a job's peak memory does not grow with the number of checkpoints",
)
def test_two_thousand_checkpoints_two_workers(deployment: Deployment, tmp_path: Path, figure) -> None:
    finish_demo_checkpoints(deployment)

    # The reference: one job on a small registry.
    register_many(deployment, SMALL, prefix="small")
    [small], _ = run_workers(deployment, tmp_path, "small", 1)
    assert small.returncode == 0, small.stderr[-3000:]
    assert "Traceback" not in small.stderr
    assert small.evaluated == SMALL
    assert_exactly_one_success(deployment, "small", SMALL)

    # Ten times as many checkpoints for one job alone: its peak must not follow the count.
    register_many(deployment, LARGE, prefix="solo")
    [solo], solo_wall = run_workers(deployment, tmp_path, "solo", 1)
    assert solo.returncode == 0, solo.stderr[-3000:]
    assert "Traceback" not in solo.stderr
    assert solo.evaluated == LARGE
    assert_exactly_one_success(deployment, "solo", LARGE)

    # The load: the same number again, two jobs side by side.
    register_many(deployment, LARGE, prefix="load")
    results, wall = run_workers(deployment, tmp_path, "load", LOAD_WORKERS)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    assert sum(result.evaluated for result in results) == LARGE
    assert_exactly_one_success(deployment, "load", LARGE)
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluations WHERE status IN ('pending', 'running')") == [
        ["0"]
    ]

    figure(
        f"2 jobs: {LARGE / wall:.1f} ckpt/s wall ({wall:.1f} s incl. start-up), "
        f"{steady_rate(deployment, 'load'):.1f} ckpt/s steady; 1 job: {LARGE / solo_wall:.1f} ckpt/s wall; "
        f"peak RSS per job: {small.peak_rss_mb:.0f} MB for {SMALL} ckpts, {solo.peak_rss_mb:.0f} MB for {LARGE}, "
        + ", ".join(f"{r.peak_rss_mb:.0f} MB for {r.evaluated}" for r in results)
        + " (2 jobs)"
    )
    for result in (solo, *results):
        assert result.peak_rss_mb < 1.25 * small.peak_rss_mb + 30, (
            f"peak RSS {result.peak_rss_mb:.0f} MB after {result.evaluated} checkpoints vs "
            f"{small.peak_rss_mb:.0f} MB after {SMALL}: memory grows with the number of checkpoints"
        )
