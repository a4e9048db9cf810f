"""A job's life: an interrupt hands the work back, and `train` reproduces the shipped demo checkpoints."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_eval.architectures import build_model
from ckpt_eval.datasets import write_idx
from tests.support.deployment import CKPT_EVAL, REPO, Deployment


def slow_fashion_checkpoint(deployment: Deployment, images: int = 6000) -> int:
    """A fashion_cnn checkpoint over enough IDX images that evaluation with batch size 1 takes seconds."""
    rng = np.random.default_rng(0)
    folder = deployment.data_dir / "fashion_mnist"
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, size=(images, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=images))
    torch.manual_seed(0)
    torch.save(build_model("fashion_cnn").state_dict(), deployment.checkpoint_root / "slow.pt")
    registered = deployment.ckpt_eval("register", "slow.pt", "--arch", "fashion_cnn", "--dataset", "fashion_mnist")
    assert registered.returncode == 0, registered.output
    deployment.sql("UPDATE ckpt_eval.evaluations SET status = 'done' WHERE checkpoint_name LIKE 'digits-%'")
    return int(deployment.rows("SELECT checkpoint_id FROM ckpt_eval.checkpoints WHERE name = 'slow'")[0][0])


def start_job(deployment: Deployment, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CKPT_EVAL, "run", "--batch-size", "1", "--log-level", "debug", *args],
        cwd=deployment.workdir,
        env=deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], fragment: str, timeout: float = 120) -> list[str]:
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if fragment in line:
            return seen
    raise AssertionError(f"{fragment!r} never appeared: {''.join(seen)}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_hands_the_checkpoint_back_and_writes_nothing(deployment: Deployment, signum: int) -> None:
    checkpoint_id = slow_fashion_checkpoint(deployment)
    job = start_job(deployment)
    try:
        wait_for_line(job, "evaluating checkpoint")
        job.send_signal(signum)
        _, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 130, stderr
    assert "interrupted" in stderr, stderr
    assert "Traceback" not in stderr
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.evaluation_runs") == [["0"]], stderr
    assert deployment.rows(
        f"SELECT status, lease_token IS NULL FROM ckpt_eval.evaluations WHERE checkpoint_id = {checkpoint_id}"
    ) == [["pending", "t"]], stderr


def test_train_reproduces_the_demo_checkpoints(tmp_path: Path) -> None:
    for name, extra in (
        ("digits-mlp-good.pt", ["--epochs", "20", "--seed", "7"]),
        ("digits-mlp-undertrained.pt", ["--epochs", "1", "--seed", "7", "--lr", "0.002"]),
    ):
        out = tmp_path / name
        result = subprocess.run(
            [CKPT_EVAL, "train", "--arch", "digits_mlp", "--dataset", "digits", "--out", str(out), *extra],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        shipped = torch.load(REPO / "checkpoints" / name, weights_only=True)
        retrained = torch.load(out, weights_only=True)
        assert shipped.keys() == retrained.keys()
        for key in shipped:
            torch.testing.assert_close(retrained[key], shipped[key], atol=1e-6, rtol=1e-5)


def test_train_reports_missing_data_and_bad_combinations(tmp_path: Path) -> None:
    def train(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CKPT_EVAL, "train", "--out", str(tmp_path / "x.pt"), "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    missing = train("--arch", "fashion_cnn", "--dataset", "fashion_mnist")
    assert missing.returncode == 66
    assert "train-images-idx3-ubyte" in missing.stderr
    mismatched = train("--arch", "fashion_cnn", "--dataset", "digits", "--epochs", "1")
    assert mismatched.returncode == 2
    assert "expects 1x28x28 inputs" in mismatched.stderr
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03short")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    corrupt = train("--arch", "fashion_cnn", "--dataset", "mnist")
    assert corrupt.returncode == 65
    assert not (tmp_path / "x.pt").exists()
