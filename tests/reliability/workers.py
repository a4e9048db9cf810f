"""Helpers of the reliability suite: many registered checkpoints, worker processes, counts."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from tests.support.deployment import CKPT_EVAL, Deployment

DEMO_GOOD = "digits-mlp-good.pt"


def register_many(deployment: Deployment, count: int, prefix: str = "ckpt", path: str = DEMO_GOOD) -> None:
    """Register ``count`` checkpoints pointing at one tiny file (names are unique, paths need not be)."""
    sha = deployment.rows("SELECT sha256 FROM ckpt_eval.checkpoints WHERE name = 'digits-mlp-good'")[0][0]
    deployment.sql(
        "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256) "
        f"SELECT '{prefix}-' || g, '{path}', 'digits_mlp', 'digits', '{sha}' FROM generate_series(1, {count}) g"
    )


def finish_demo_checkpoints(deployment: Deployment) -> None:
    """Take the two demo checkpoints out of the queue so a scenario sees only its own."""
    deployment.sql("UPDATE ckpt_eval.evaluations SET status = 'done' WHERE checkpoint_name LIKE 'digits-mlp-%'")


@dataclass
class Worker:
    process: subprocess.Popen[str]
    started: float

    def wait(self, timeout: float = 600) -> WorkerResult:
        stdout, stderr = self.process.communicate(timeout=timeout)
        return WorkerResult(self.process.returncode, stdout, stderr, time.monotonic() - self.started)


@dataclass
class WorkerResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def start_worker(
    deployment: Deployment, *args: str, env: dict[str, str] | None = None, stdin: int | None = None
) -> Worker:
    process = subprocess.Popen(
        [CKPT_EVAL, "run", *args],
        cwd=deployment.workdir,
        env={**deployment.env, **(env or {})},
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Worker(process, time.monotonic())


def run_counts(deployment: Deployment, status: str | None = None) -> dict[str, int]:
    """checkpoint name -> number of runs (optionally only runs with this status)."""
    where = f"WHERE status = '{status}'" if status else ""
    rows = deployment.rows(f"SELECT checkpoint_name, count(*) FROM ckpt_eval.evaluation_runs {where} GROUP BY 1")
    return {name: int(n) for name, n in rows}
