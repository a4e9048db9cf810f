"""Crashes: a worker killed with SIGKILL in the middle of an evaluation, and a worker frozen with
SIGSTOP past its lease and then resumed. Neither may leave a trace of its run; the checkpoint is
taken over once the lease expires, and the frozen worker must not write its result when it wakes."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import torch

from ckpt_eval.architectures import build_model
from ckpt_eval.datasets import write_idx
from tests.support.deployment import Deployment

from .workers import Worker, finish_demo_checkpoints, run_counts, start_worker

LEASE_SECONDS = "3"
PAST_FIRST_HEARTBEAT = 1.2  # heartbeats come every lease/3 = 1 s; the evaluation takes ~4 s


class Watched:
    """A worker whose stderr is read line by line in the background (no pipe ever fills up)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.worker.process.pid

    def _read(self) -> None:
        assert self.worker.process.stderr is not None
        for line in self.worker.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of stream
            self._changed.notify_all()

    def wait_for(self, fragment: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(fragment in line for line in self.lines):
                if (self.lines and self.lines[-1] == "") or not self._changed.wait(deadline - time.monotonic()):
                    raise AssertionError(f"{fragment!r} never appeared: {''.join(self.lines)[-3000:]}")

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        returncode = self.worker.process.wait(timeout)
        self._reader.join(timeout)
        return returncode, "".join(self.lines)

    def kill(self) -> None:
        if self.worker.process.poll() is None:
            self.worker.process.send_signal(signal.SIGCONT)
            self.worker.process.kill()
        self.worker.process.wait(30)


def add_slow_checkpoint(deployment: Deployment, images: int = 24000) -> int:
    """A fashion_cnn checkpoint whose evaluation with --batch-size 1 takes ~4 s; its gate always passes."""
    rng = np.random.default_rng(0)
    folder = deployment.data_dir / "fashion_mnist"
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (images, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, images))
    torch.manual_seed(0)
    torch.save(build_model("fashion_cnn").state_dict(), deployment.checkpoint_root / "slow.pt")
    checkpoint_id = deployment.register_row("slow", "slow.pt", arch="fashion_cnn", dataset="fashion_mnist")
    # Random weights: a zero gate makes a recorded run a pass, so a clean worker exits 0.
    deployment.sql("UPDATE ckpt_eval.checkpoints SET min_accuracy = 0, min_f1_macro = 0 WHERE name = 'slow'")
    finish_demo_checkpoints(deployment)
    return checkpoint_id


def job_state(deployment: Deployment) -> tuple[str, int, bool, bool]:
    """(status, attempt, holds a lease token, lease already expired) of the slow checkpoint."""
    status, attempt, token, expired = deployment.rows(
        "SELECT status, attempt, lease_token IS NOT NULL, coalesce(lease_expires_at < now(), false) "
        "FROM ckpt_eval.evaluations WHERE checkpoint_name = 'slow'"
    )[0]
    return status, int(attempt), token == "t", expired == "t"


def wait_for_lease_expiry(deployment: Deployment, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not job_state(deployment)[3]:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.1)


def runs_of_slow(deployment: Deployment) -> list[tuple[int, str, int]]:
    """(attempt, status, metric rows) of every run of the slow checkpoint."""
    rows = deployment.rows(
        "SELECT r.attempt, r.status, count(m.metric) FROM ckpt_eval.evaluation_runs r "
        "LEFT JOIN ckpt_eval.evaluation_metrics m USING (run_id) WHERE r.checkpoint_name = 'slow' "
        "GROUP BY r.run_id, 1, 2 ORDER BY r.run_id"
    )
    return [(int(attempt), status, int(metrics)) for attempt, status, metrics in rows]


def metric_rows(deployment: Deployment) -> int:
    return int(deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_metrics")[0][0])


@pytest.mark.scenario(
    "kill -9 mid-evaluation",
    "nothing of the run is visible, the lease stays; after it expires the next worker takes over (attempt 2)",
)
def test_killed_worker_leaves_nothing_and_is_taken_over(deployment: Deployment, figure) -> None:
    add_slow_checkpoint(deployment)
    victim = Watched(start_worker(deployment, "--batch-size", "1", "--lease-seconds", LEASE_SECONDS))
    try:
        victim.wait_for("evaluating checkpoint")
        time.sleep(PAST_FIRST_HEARTBEAT)
        victim.worker.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        returncode, stderr = victim.finish()
    finally:
        victim.kill()
    assert returncode == -signal.SIGKILL, stderr

    assert run_counts(deployment) == {}, "the killed worker's run is visible"
    assert metric_rows(deployment) == 0, "the killed worker's metrics are visible"
    status, attempt, holds_lease, _ = job_state(deployment)
    assert (status, attempt, holds_lease) == ("running", 1, True), "the killed worker's lease is gone"

    wait_for_lease_expiry(deployment)
    expired = time.monotonic() - killed
    successor = start_worker(deployment, "--lease-seconds", LEASE_SECONDS).wait(timeout=180)
    recovered = time.monotonic() - killed
    assert successor.returncode == 0, successor.stderr[-3000:]
    assert "Traceback" not in successor.stderr
    assert "attempt 2" in successor.stderr
    assert runs_of_slow(deployment) == [(2, "succeeded", 6 + 4 * 10)]
    assert job_state(deployment)[:3] == ("done", 2, False)
    figure(f"lease expired {expired:.1f} s after the kill; recorded by the next worker {recovered:.1f} s after it")


@pytest.mark.scenario(
    "SIGSTOP past the lease, then SIGCONT",
    "the frozen worker writes nothing after the takeover, says the lease was lost, exits 0",
)
def test_frozen_worker_cannot_write_after_takeover(deployment: Deployment, figure) -> None:
    add_slow_checkpoint(deployment)
    frozen = Watched(start_worker(deployment, "--batch-size", "1", "--lease-seconds", LEASE_SECONDS))
    try:
        frozen.wait_for("evaluating checkpoint")
        time.sleep(PAST_FIRST_HEARTBEAT)
        frozen.worker.process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert job_state(deployment)[:3] == ("running", 1, True)

        wait_for_lease_expiry(deployment)
        successor = start_worker(deployment, "--lease-seconds", LEASE_SECONDS).wait(timeout=180)
        assert successor.returncode == 0, successor.stderr[-3000:]
        assert "attempt 2" in successor.stderr
        assert runs_of_slow(deployment) == [(2, "succeeded", 6 + 4 * 10)]
        metrics_before = metric_rows(deployment)

        frozen.worker.process.send_signal(signal.SIGCONT)
        frozen_for = time.monotonic() - stopped
        returncode, stderr = frozen.finish()
    finally:
        frozen.kill()

    assert returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "lease lost" in stderr, stderr[-3000:]
    assert runs_of_slow(deployment) == [(2, "succeeded", 6 + 4 * 10)], "the frozen worker wrote its result"
    assert metric_rows(deployment) == metrics_before
    assert job_state(deployment)[:3] == ("done", 2, False)
    said = " / ".join(line.split(": ", 1)[-1].strip() for line in stderr.splitlines() if "lease lost" in line)
    figure(f"frozen {frozen_for:.1f} s (lease {LEASE_SECONDS} s); it said: {said}")
