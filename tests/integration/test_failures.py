"""Failure paths a user meets: bad secrets, a database that is down, hostile registry rows."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from ckpt_eval.architectures import build_model
from tests.support.deployment import APP_PASSWORD, VAULT_PASSWORD, Deployment
from tests.support.pgcluster import free_port


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_wrong_vault_password_exits_77_naming_the_file(deployment: Deployment, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    result = deployment.ckpt_eval("run", "--vault-password-file", str(wrong))
    assert result.returncode == 77
    assert_one_line_error(result.stderr, "db.credentials", "wrong vault password")
    assert "not-the-password" not in result.output


def test_plaintext_credentials_are_refused_with_78(deployment: Deployment) -> None:
    deployment.credentials.write_text(f"host: 127.0.0.1\nport: 5432\ndbname: x\nuser: u\npassword: {APP_PASSWORD}\n")
    result = deployment.ckpt_eval("run")
    assert result.returncode == 78
    assert_one_line_error(result.stderr, "not ansible-vault encrypted")
    assert APP_PASSWORD not in result.output


def test_missing_credentials_file_exits_66(deployment: Deployment) -> None:
    result = deployment.ckpt_eval("run", "--credentials", "nowhere/db.credentials")
    assert result.returncode == 66
    assert_one_line_error(result.stderr, "nowhere/db.credentials")


def test_no_vault_password_at_all_is_a_configuration_error(deployment: Deployment) -> None:
    env = {k: v for k, v in deployment.env.items() if k != "CKPT_EVAL_VAULT_PASSWORD_FILE"}
    deployment.env = env
    result = deployment.ckpt_eval("status")
    assert result.returncode == 78
    assert "--vault-password-file" in result.stderr


def test_vault_password_from_stdin_and_from_environment(deployment: Deployment) -> None:
    env_without_file = {k: v for k, v in deployment.env.items() if k != "CKPT_EVAL_VAULT_PASSWORD_FILE"}
    deployment.env = env_without_file
    from_stdin = deployment.ckpt_eval("status", "--vault-password-file", "-", input=VAULT_PASSWORD + "\n")
    assert from_stdin.returncode == 0, from_stdin.output
    from_env = deployment.ckpt_eval("status", env={"ANSIBLE_VAULT_PASSWORD": VAULT_PASSWORD})
    assert from_env.returncode == 0, from_env.output
    assert "digits-mlp-good" in from_env.stdout


def test_vault_password_is_not_accepted_as_an_argument(deployment: Deployment) -> None:
    result = deployment.ckpt_eval("run", "--vault-password", VAULT_PASSWORD)
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_wrong_database_password_exits_77(deployment: Deployment) -> None:
    deployment.write_credentials(password="definitely-wrong-db-password")
    result = deployment.ckpt_eval("run")
    assert result.returncode == 77
    assert "password authentication failed" in result.stderr
    assert "definitely-wrong-db-password" not in result.output
    assert "Traceback" not in result.stderr


def test_database_down_exits_75_after_bounded_retries(deployment: Deployment) -> None:
    deployment.write_credentials(port=free_port())
    started = time.monotonic()
    result = deployment.ckpt_eval("run", "--db-retries", "3", "--db-retry-seconds", "10")
    elapsed = time.monotonic() - started
    assert result.returncode == 75
    assert result.stderr.count("(attempt ") == 3, result.stderr  # one warning per attempt
    assert "gave up after 3 attempts" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30


@pytest.mark.parametrize(
    ("stored_path", "expected"),
    [
        ("../outside.pt", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("escape.pt", "leaves the checkpoint root"),
        ("nested/../../outside.pt", "contains '..'"),
    ],
)
def test_hostile_stored_paths_fail_their_own_run_only(deployment: Deployment, stored_path: str, expected: str) -> None:
    outside = deployment.workdir / "outside.pt"
    outside.write_bytes((deployment.checkpoint_root / "digits-mlp-good.pt").read_bytes())
    (deployment.checkpoint_root / "escape.pt").symlink_to(outside)
    bad_id = deployment.register_row("hostile", stored_path)

    result = deployment.ckpt_eval("run")
    assert result.returncode == 3
    runs = {
        int(cid): (status, error)
        for cid, status, error in deployment.rows(
            "SELECT checkpoint_id, status, coalesce(error, '') FROM ckpt_eval.latest_evaluations"
        )
    }
    assert runs[bad_id][0] == "failed"
    assert expected in runs[bad_id][1]
    assert runs[1] == ("succeeded", "")
    assert runs[2] == ("succeeded", "")


def test_pickle_payload_is_refused_and_never_runs(deployment: Deployment, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    hostile = deployment.checkpoint_root / "hostile.pt"
    torch.save({"layers.1.weight": Payload()}, hostile)
    raw_pickle = deployment.checkpoint_root / "raw-pickle.pt"
    raw_pickle.write_bytes(pickle.dumps(Payload()))
    assert not marker.exists()

    refused = deployment.ckpt_eval("register", "hostile.pt", "--arch", "digits_mlp", "--dataset", "digits")
    assert refused.returncode == 65
    assert "refused" in refused.stderr

    ids = [deployment.register_row("hostile", "hostile.pt"), deployment.register_row("raw", "raw-pickle.pt")]
    result = deployment.ckpt_eval("run")
    assert result.returncode == 3
    for checkpoint_id in ids:
        [(status, error)] = deployment.rows(
            f"SELECT status, error FROM ckpt_eval.latest_evaluations WHERE checkpoint_id = {checkpoint_id}"
        )
        assert status == "failed"
        assert "refused" in error or "not a readable PyTorch checkpoint" in error
    assert not marker.exists(), "the pickled payload must never execute"


def test_sha256_mismatch_fails_the_run(deployment: Deployment) -> None:
    tampered = deployment.checkpoint_root / "digits-mlp-good.pt"
    model = build_model("digits_mlp")
    torch.save(model.state_dict(), tampered)  # same name, other bytes than the registered sha256
    result = deployment.ckpt_eval("run", "--checkpoint-id", "1")
    assert result.returncode == 3
    [(status, error)] = deployment.rows("SELECT status, error FROM ckpt_eval.latest_evaluations")
    assert status == "failed"
    assert "sha256 mismatch" in error


def test_unknown_arch_or_dataset_fails_that_run(deployment: Deployment) -> None:
    arch_id = deployment.register_row("odd-arch", "digits-mlp-good.pt", arch="resnet9000")
    data_id = deployment.register_row("odd-data", "digits-mlp-good.pt", dataset="imagenet")
    missing_id = deployment.register_row("no-idx", "digits-mlp-good.pt", dataset="mnist")
    result = deployment.ckpt_eval("run")
    assert result.returncode == 3
    errors = dict(deployment.rows("SELECT checkpoint_id, coalesce(error, '') FROM ckpt_eval.latest_evaluations"))
    assert "unknown architecture 'resnet9000'" in errors[str(arch_id)]
    assert "dataset 'imagenet' is not registered" in errors[str(data_id)]
    assert "not found" in errors[str(missing_id)]
    assert errors["1"] == ""


def test_sql_looking_names_are_stored_and_reported_verbatim(deployment: Deployment) -> None:
    name = "x'); DROP TABLE ckpt_eval.checkpoints; --"
    (deployment.checkpoint_root / "evil").mkdir()
    (deployment.checkpoint_root / "evil" / "a.pt").write_bytes(
        (deployment.checkpoint_root / "digits-mlp-good.pt").read_bytes()
    )
    registered = deployment.ckpt_eval(
        "register", "evil/a.pt", "--arch", "digits_mlp", "--dataset", "digits", "--name", name
    )
    assert registered.returncode == 0, registered.output
    result = deployment.ckpt_eval("run", "--format", "json")
    assert result.returncode == 3
    assert name in result.stdout
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.checkpoints") == [["3"]]


def test_register_refuses_duplicates_and_paths_outside_the_root(deployment: Deployment) -> None:
    duplicate = deployment.ckpt_eval(
        "register", "digits-mlp-good.pt", "--arch", "digits_mlp", "--dataset", "digits", "--name", "digits-mlp-good"
    )
    assert duplicate.returncode == 2
    assert "already registered" in duplicate.stderr
    outside = deployment.ckpt_eval("register", "../db.credentials", "--arch", "digits_mlp", "--dataset", "digits")
    assert outside.returncode == 65
    unknown = deployment.ckpt_eval("register", "digits-mlp-good.pt", "--arch", "vgg", "--dataset", "digits")
    assert unknown.returncode == 2
    assert deployment.rows("SELECT count(*) FROM ckpt_eval.checkpoints") == [["2"]]


def test_register_stores_sha256_and_gate(deployment: Deployment) -> None:
    (deployment.checkpoint_root / "copy.safetensors").write_bytes(b"")
    empty = deployment.ckpt_eval("register", "copy.safetensors", "--arch", "digits_mlp", "--dataset", "digits")
    assert empty.returncode == 65
    registered = deployment.ckpt_eval(
        "register",
        "digits-mlp-good.pt",
        "--arch",
        "digits_mlp",
        "--dataset",
        "digits",
        "--name",
        "strict-gate",
        "--min-accuracy",
        "0.99",
        "--min-f1",
        "0.5",
    )
    assert registered.returncode == 0, registered.output
    [(sha, min_accuracy, min_f1)] = deployment.rows(
        "SELECT sha256, min_accuracy, min_f1_macro FROM ckpt_eval.checkpoints WHERE name = 'strict-gate'"
    )
    assert sha in registered.stdout
    assert (float(min_accuracy), float(min_f1)) == (0.99, 0.5)
    result = deployment.ckpt_eval("run", "--format", "json")
    verdicts = {row["name"]: row["verdict"] for row in json.loads(result.stdout)["evaluated"]}
    assert verdicts["strict-gate"] == "fail"
    assert verdicts["digits-mlp-good"] == "pass"
