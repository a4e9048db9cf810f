"""`ckpt-eval run` against a real PostgreSQL: exactly-once evaluation, reruns, history, exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import termios

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from ckpt_eval.datasets import write_idx
from tests.support.deployment import CKPT_EVAL, Deployment
from tests.support.reference_models import ReferenceFashionCNN

GOOD, UNDERTRAINED = 1, 2


def run_counts(deployment: Deployment) -> dict[int, int]:
    rows = deployment.rows("SELECT checkpoint_id, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1")
    return {int(cid): int(n) for cid, n in rows}


def test_run_evaluates_each_checkpoint_once_then_nothing(deployment: Deployment) -> None:
    first = deployment.ckpt_eval("run")
    assert first.returncode == 3, first.output  # the undertrained demo checkpoint fails its gate
    assert "digits-mlp-good" in first.stdout
    assert "digits-mlp-undertrained" in first.stdout
    assert "1 passed, 1 failed the gate" in first.stdout
    assert run_counts(deployment) == {GOOD: 1, UNDERTRAINED: 1}
    verdicts = dict(deployment.rows("SELECT checkpoint_name, verdict FROM ckpt_eval.latest_evaluations"))
    assert verdicts == {"digits-mlp-good": "pass", "digits-mlp-undertrained": "fail"}
    assert deployment.rows("SELECT DISTINCT status FROM ckpt_eval.evaluations") == [["done"]]

    second = deployment.ckpt_eval("run")
    assert second.returncode == 0, second.output
    assert "nothing to evaluate" in second.stdout
    assert run_counts(deployment) == {GOOD: 1, UNDERTRAINED: 1}


def test_force_rerun_adds_one_run_for_that_checkpoint_only(deployment: Deployment) -> None:
    assert deployment.ckpt_eval("run").returncode == 3
    first_run = deployment.rows(f"SELECT run_id FROM ckpt_eval.latest_evaluations WHERE checkpoint_id = {GOOD}")

    rerun = deployment.ckpt_eval("run", "--force", "--checkpoint-id", str(GOOD))
    assert rerun.returncode == 0, rerun.output  # the good checkpoint passes its gate
    assert run_counts(deployment) == {GOOD: 2, UNDERTRAINED: 1}
    latest = deployment.rows("SELECT checkpoint_id, run_id, attempt FROM ckpt_eval.latest_evaluations ORDER BY 1")
    assert len(latest) == 2, "latest_evaluations has one row per checkpoint"
    assert latest[0][1] != first_run[0][0]
    assert latest[0][2] == "2"
    # History is kept: both runs of the good checkpoint are still there with their metrics.
    assert deployment.rows(
        f"SELECT count(DISTINCT m.run_id) FROM ckpt_eval.evaluation_metrics m "
        f"JOIN ckpt_eval.evaluation_runs r USING (run_id) WHERE r.checkpoint_id = {GOOD}"
    ) == [["2"]]


def test_force_without_ids_requeues_everything(deployment: Deployment) -> None:
    assert deployment.ckpt_eval("run").returncode == 3
    assert deployment.ckpt_eval("run", "--force").returncode == 3
    assert run_counts(deployment) == {GOOD: 2, UNDERTRAINED: 2}


def test_checkpoint_id_selects_without_touching_others(deployment: Deployment) -> None:
    result = deployment.ckpt_eval("run", "--checkpoint-id", str(GOOD))
    assert result.returncode == 0, result.output
    assert run_counts(deployment) == {GOOD: 1}
    status = dict(deployment.rows("SELECT checkpoint_id, status FROM ckpt_eval.evaluations"))
    assert status == {str(GOOD): "done", str(UNDERTRAINED): "pending"}


def test_unknown_checkpoint_id_is_a_usage_error(deployment: Deployment) -> None:
    result = deployment.ckpt_eval("run", "--checkpoint-id", "999")
    assert result.returncode == 2
    assert "no checkpoint with id 999" in result.stderr
    assert run_counts(deployment) == {}


def test_dry_run_lists_and_changes_nothing(deployment: Deployment) -> None:
    before = deployment.sql("SELECT checkpoint_name, status, attempt, updated_at FROM ckpt_eval.evaluations ORDER BY 1")
    result = deployment.ckpt_eval("run", "--dry-run")
    assert result.returncode == 0, result.output
    assert "digits-mlp-good" in result.stdout
    assert "digits-mlp-undertrained" in result.stdout
    assert (
        deployment.sql("SELECT checkpoint_name, status, attempt, updated_at FROM ckpt_eval.evaluations ORDER BY 1")
        == before
    )
    assert run_counts(deployment) == {}

    assert deployment.ckpt_eval("run").returncode == 3
    planned = deployment.ckpt_eval("run", "--dry-run", "--force", "--checkpoint-id", "2", "--format", "json")
    assert planned.returncode == 0
    assert [row["checkpoint_id"] for row in json.loads(planned.stdout)["would_evaluate"]] == [2]
    assert deployment.ckpt_eval("run", "--dry-run").stdout.strip() == "nothing would be evaluated"
    assert run_counts(deployment) == {GOOD: 1, UNDERTRAINED: 1}


def test_failed_requeues_only_failed_checkpoints(deployment: Deployment) -> None:
    good_file = deployment.checkpoint_root / "digits-mlp-good.pt"
    saved = good_file.read_bytes()
    good_file.unlink()
    first = deployment.ckpt_eval("run")
    assert first.returncode == 3
    errors = dict(deployment.rows("SELECT checkpoint_id, coalesce(error, '') FROM ckpt_eval.latest_evaluations"))
    assert "not found" in errors[str(GOOD)]
    assert errors[str(UNDERTRAINED)] == ""

    good_file.write_bytes(saved)
    rerun = deployment.ckpt_eval("run", "--failed")
    assert rerun.returncode == 0, rerun.output
    assert run_counts(deployment) == {GOOD: 2, UNDERTRAINED: 1}
    latest = dict(deployment.rows("SELECT checkpoint_id, status FROM ckpt_eval.latest_evaluations"))
    assert latest[str(GOOD)] == "succeeded"


def test_expired_lease_of_a_crashed_worker_is_taken_over(deployment: Deployment) -> None:
    deployment.sql(
        "UPDATE ckpt_eval.evaluations SET status = 'running', attempt = 1, lease_owner = 'dead:1:x', "
        f"lease_token = 'stale', lease_expires_at = now() - interval '1 minute' WHERE checkpoint_id = {GOOD}"
    )
    deployment.sql(
        "UPDATE ckpt_eval.evaluations SET status = 'running', attempt = 1, lease_owner = 'alive:2:y', "
        f"lease_token = 'fresh', lease_expires_at = now() + interval '1 hour' WHERE checkpoint_id = {UNDERTRAINED}"
    )
    result = deployment.ckpt_eval("run")
    assert result.returncode == 0, result.output
    assert run_counts(deployment) == {GOOD: 1}, "a live lease is never taken over"
    assert deployment.rows(f"SELECT attempt FROM ckpt_eval.evaluation_runs WHERE checkpoint_id = {GOOD}") == [["2"]]


def test_status_shows_registry_and_latest_results(deployment: Deployment) -> None:
    assert deployment.ckpt_eval("run").returncode == 3
    table = deployment.ckpt_eval("status")
    assert table.returncode == 0
    assert "digits-mlp-good" in table.stdout
    assert "pass" in table.stdout
    as_json = json.loads(deployment.ckpt_eval("status", "--format", "json").stdout)
    by_name = {row["name"]: row for row in as_json["checkpoints"]}
    assert by_name["digits-mlp-good"]["verdict"] == "pass"
    assert by_name["digits-mlp-undertrained"]["verdict"] == "fail"
    assert by_name["digits-mlp-good"]["accuracy"] > 0.9


def test_json_output_of_run(deployment: Deployment) -> None:
    result = deployment.ckpt_eval("run", "--format", "json", "--torch-threads", "1")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["all_passed"] is False
    assert {row["name"]: row["verdict"] for row in report["evaluated"]} == {
        "digits-mlp-good": "pass",
        "digits-mlp-undertrained": "fail",
    }


def test_fashion_cnn_state_dict_on_idx_files_matches_scikit_learn(deployment: Deployment) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=300).astype(np.uint8)
    # Images that carry their label (a bright band at a label-dependent row) so the model is not a coin toss.
    images = rng.integers(0, 60, size=(300, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, :] = 250
    write_idx(deployment.data_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz", images)
    write_idx(deployment.data_dir / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)

    torch.manual_seed(0)
    model = ReferenceFashionCNN()
    inputs = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.from_numpy(labels.astype(np.int64))
    for _ in range(15):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), target).backward()
        optimizer.step()
    (deployment.checkpoint_root / "fashion").mkdir()
    torch.save(model.state_dict(), deployment.checkpoint_root / "fashion" / "cnn.pth")

    registered = deployment.ckpt_eval(
        "register", "fashion/cnn.pth", "--arch", "fashion_cnn", "--dataset", "fashion_mnist", "--name", "fashion-cnn"
    )
    assert registered.returncode == 0, registered.output
    checkpoint_id = int(
        deployment.rows("SELECT checkpoint_id FROM ckpt_eval.checkpoints WHERE name = 'fashion-cnn'")[0][0]
    )
    result = deployment.ckpt_eval("run", "--checkpoint-id", str(checkpoint_id))
    assert result.returncode in (0, 3), result.output

    model.eval()
    with torch.no_grad():
        logits = model(inputs)
    predictions = logits.argmax(dim=1).numpy()
    expected_accuracy = accuracy_score(labels, predictions)
    expected_f1 = f1_score(labels, predictions, average="macro")
    expected_loss = nn.functional.cross_entropy(logits, target).item()
    [(accuracy, f1_macro, loss, n_samples, dataset_sha)] = deployment.rows(
        "SELECT accuracy, f1_macro, loss, n_samples, dataset_sha256 FROM ckpt_eval.latest_evaluations "
        f"WHERE checkpoint_id = {checkpoint_id}"
    )
    assert abs(float(accuracy) - expected_accuracy) < 1e-6
    assert abs(float(f1_macro) - expected_f1) < 1e-6
    assert abs(float(loss) - expected_loss) < 1e-5
    assert int(n_samples) == 300
    assert len(dataset_sha) == 64
    assert expected_accuracy > 0.5, "the fixture model should have learnt the bands"


def test_progress_bar_only_on_a_terminal(deployment: Deployment) -> None:
    plain = deployment.ckpt_eval("run", "--force")
    assert "/2 [" not in plain.stderr
    assert "evaluating:" not in plain.stderr

    controller, terminal = os.openpty()
    # A new pseudo-terminal is 0 columns wide; give it a real terminal's size.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [CKPT_EVAL, "run", "--force"],
            cwd=deployment.workdir,
            env=deployment.env,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO once the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.communicate(timeout=120)
    finally:
        os.close(controller)
    assert process.returncode == 3
    shown = b"".join(chunks).decode(errors="replace")
    assert "evaluating:" in shown
    assert "/2 [" in shown


def test_checkpoints_evaluated_together_record_what_each_records_alone(deployment: Deployment) -> None:
    """The default run evaluates pairs of one architecture and dataset in groups (one pass over the
    data); a rerun one at a time (--group-size 1) records exactly the same metrics for each."""
    rng = np.random.default_rng(11)
    write_idx(deployment.data_dir / "fashion_mnist" / "t10k-images-idx3-ubyte", rng.integers(0, 256, (200, 28, 28)))
    write_idx(deployment.data_dir / "fashion_mnist" / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 200))
    (deployment.checkpoint_root / "group").mkdir()
    for seed in range(4):
        torch.manual_seed(seed)
        torch.save(ReferenceFashionCNN().state_dict(), deployment.checkpoint_root / "group" / f"cnn{seed}.pt")
        registered = deployment.ckpt_eval(
            "register", f"group/cnn{seed}.pt", "--arch", "fashion_cnn", "--dataset", "fashion_mnist"
        )
        assert registered.returncode == 0, registered.output

    def results() -> dict[str, list[list[str]]]:
        rows = deployment.rows(
            "SELECT l.checkpoint_name, m.metric, m.class_label, m.value::text, r.confusion_matrix "
            "FROM ckpt_eval.latest_evaluations l JOIN ckpt_eval.evaluation_metrics m USING (run_id) "
            "JOIN ckpt_eval.evaluation_runs r USING (run_id) WHERE l.dataset = 'fashion_mnist' ORDER BY 1, 2, 3"
        )
        by_name: dict[str, list[list[str]]] = {}
        for name, *rest in rows:
            by_name.setdefault(name, []).append(rest)
        return by_name

    selected = ("--dataset", "fashion_mnist", "--batch-size", "64")
    together = deployment.ckpt_eval("run", *selected)
    assert together.returncode in (0, 3), together.output
    grouped = results()
    alone = deployment.ckpt_eval("run", "--force", *selected, "--group-size", "1")
    assert alone.returncode in (0, 3), alone.output
    assert results() == grouped
    assert len(grouped) == 4
    assert len({tuple(map(tuple, rows)) for rows in grouped.values()}) == 4, "four different models"
    attempts = deployment.rows("SELECT DISTINCT attempt FROM ckpt_eval.evaluations WHERE dataset = 'fashion_mnist'")
    assert attempts == [["2"]]
