"""Neither the vault password nor the database password appears in anything the job prints or in its argv."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.support.deployment import APP_PASSWORD, CKPT_EVAL, VAULT_PASSWORD, Deployment
from tests.support.pgcluster import free_port

DEBUG_JSON = ("--log-level", "debug", "--log-format", "json")


def assert_no_secret(text: str, *extra: str) -> None:
    for secret in (VAULT_PASSWORD, APP_PASSWORD, *extra):
        assert secret not in text


def assert_json_lines(stderr: str) -> None:
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()


def test_no_secret_in_output_at_debug_level_across_outcomes(deployment: Deployment, tmp_path: Path) -> None:
    via_environment = {"ANSIBLE_VAULT_PASSWORD": VAULT_PASSWORD}
    deployment.env = {k: v for k, v in deployment.env.items() if k != "CKPT_EVAL_VAULT_PASSWORD_FILE"}
    (deployment.checkpoint_root / "broken.pt").write_bytes(b"not a checkpoint")
    deployment.register_row("broken", "broken.pt")

    outputs = []
    for args in (
        ("run", *DEBUG_JSON),
        ("run", "--force", *DEBUG_JSON, "--format", "json"),
        ("run", "--dry-run", "--force", *DEBUG_JSON),
        ("status", "--format", "json", *DEBUG_JSON),
        ("register", "digits-mlp-good.pt", "--arch", "digits_mlp", "--dataset", "digits", "--name", "r", *DEBUG_JSON),
        ("run", "--checkpoint-id", "77", *DEBUG_JSON),
    ):
        result = deployment.ckpt_eval(*args, env=via_environment)
        assert result.returncode in (0, 2, 3), result.output
        assert_json_lines(result.stderr)
        outputs.append(result.output)
    assert any('"level": "debug"' in output for output in outputs), "debug logging was really on"

    wrong_db_password = "wrong-db-password-5521"
    deployment.write_credentials(password=wrong_db_password)
    refused = deployment.ckpt_eval("run", *DEBUG_JSON, env=via_environment)
    assert refused.returncode == 77
    outputs.append(refused.output)

    deployment.write_credentials(port=free_port())
    down = deployment.ckpt_eval("run", *DEBUG_JSON, "--db-retries", "2", env=via_environment)
    assert down.returncode == 75
    outputs.append(down.output)

    wrong_vault = deployment.ckpt_eval("run", *DEBUG_JSON, env={"ANSIBLE_VAULT_PASSWORD": "wrong-vault-pw-8812"})
    assert wrong_vault.returncode == 77
    outputs.append(wrong_vault.output)

    for output in outputs:
        assert_no_secret(output, wrong_db_password, "wrong-vault-pw-8812")


def test_no_secret_in_the_job_argv(deployment: Deployment) -> None:
    process = subprocess.Popen(
        [CKPT_EVAL, "run", *DEBUG_JSON],
        cwd=deployment.workdir,
        env=deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            seen.append(Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace"))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert seen, "the job's argv was sampled while it ran"
    for cmdline in seen:
        assert_no_secret(cmdline)
    assert_no_secret(stdout + stderr)
