"""Secret hygiene: run the job at debug level with JSON logs through its successes and failures,
watch its /proc entries (and its children's) while it runs, and scan everything it printed, the
server's log and the files a deployment wrote: neither secret may appear anywhere."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from ckpt_eval.credentials import decrypt_credentials, read_password_file
from tests.support.deployment import APP_PASSWORD, REPO, VAULT_PASSWORD, Deployment
from tests.support.pgcluster import free_port

from .test_database_faults import add_slow_checkpoint
from .workers import start_worker

DEBUG_JSON = ("--log-level", "debug", "--log-format", "json")
WRONG_VAULT = "wrong-vault-password-3141"
WRONG_DB = "wrong-db-password-2718"
SECRETS = (VAULT_PASSWORD, APP_PASSWORD, WRONG_VAULT, WRONG_DB)


def demo_secrets() -> tuple[str, ...]:
    """The secrets of the local deployment (its public demo vault password and what it opens)."""
    password_file = REPO / "inventories" / "local" / "vault-password"
    vault_password = read_password_file(str(password_file))
    creds = decrypt_credentials(REPO / "db.credentials", vault_password)
    return (vault_password.decode(), creds.password)


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return pids


def watched_run(deployment: Deployment, args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, int]:
    """Run the job, sampling /proc/<pid>/{cmdline,environ} of it and its children until it exits.

    The environment block is sampled once the job has started (its first log line): the kernel shows
    a variable given to a process from its exec until the process wipes it, which the job does first
    thing (README, security model); the argv is sampled from the start.
    """
    worker = start_worker(deployment, *args, env=env)
    assert worker.process.stderr is not None
    started = threading.Event()
    stderr_lines: list[str] = []

    def read_stderr() -> None:
        for line in worker.process.stderr:  # type: ignore[union-attr]
            stderr_lines.append(line)
            started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    samples: list[bytes] = []
    while worker.process.poll() is None:
        for pid in process_tree(worker.process.pid):
            entries = ("cmdline", "environ") if started.is_set() else ("cmdline",)
            for entry in entries:
                with contextlib.suppress(OSError):
                    samples.append(Path(f"/proc/{pid}/{entry}").read_bytes())
        time.sleep(0.02)
    stdout = worker.process.stdout.read() if worker.process.stdout else ""
    worker.process.wait()
    reader.join(timeout=10)
    seen = b"\n".join(samples).decode(errors="replace")
    return worker.process.returncode, stdout + "".join(stderr_lines) + "\n" + seen, len(samples)


CASES = {
    "success": ((), {}),
    "rerun": (("--force",), {}),
    "dry run": (("--dry-run", "--force"), {}),
    "wrong vault password": ((), {"ANSIBLE_VAULT_PASSWORD": WRONG_VAULT}),
    "wrong db password": ((), {"_credentials": {"password": WRONG_DB}}),
    "database down": (("--db-retries", "2"), {"_credentials": {"port": "free"}}),
}


@pytest.mark.scenario("Secret hygiene", "no secret in output, argv or environment of the job and its children")
@pytest.mark.parametrize("case", list(CASES))
def test_no_secret_anywhere(deployment: Deployment, case: str, figure) -> None:
    args, env = CASES[case]
    env = dict(env)
    if case in ("success", "rerun"):
        add_slow_checkpoint(deployment, images=2000)
    if case == "rerun":
        assert deployment.ckpt_eval("run").returncode == 3
    overrides = env.pop("_credentials", {})
    if overrides.get("port") == "free":
        overrides["port"] = free_port()
    if overrides:
        deployment.write_credentials(**overrides)
    # The vault password comes from the environment, the riskiest of its sources.
    deployment.env = {k: v for k, v in deployment.env.items() if k != "CKPT_EVAL_VAULT_PASSWORD_FILE"}
    env.setdefault("ANSIBLE_VAULT_PASSWORD", VAULT_PASSWORD)
    returncode, everything, samples = watched_run(deployment, (*DEBUG_JSON, *args), env)
    assert returncode in {"success": (3,), "rerun": (3,), "dry run": (0,)}.get(case, (75, 77)), everything[-2000:]
    assert samples > 0, "the job's /proc entries were sampled while it ran"
    for secret in SECRETS:
        assert secret not in everything, f"{case}: a secret leaked"
    figure(f"exit {returncode}; {samples} /proc samples clean")


@pytest.mark.scenario(
    "Server log and deployed files", "the database server's log and the deployed files hold no secret"
)
def test_server_log_and_deployed_files(deployment: Deployment, figure) -> None:
    deployment.ckpt_eval("run", *DEBUG_JSON)
    deployment.write_credentials(password=WRONG_DB)
    deployment.ckpt_eval("run", *DEBUG_JSON)
    scanned = [deployment.cluster.logfile, deployment.credentials]
    deployed = [p for root in ("/etc/ckpt-eval", "/opt/ckpt-eval/src") for p in Path(root).rglob("*") if p.is_file()]
    scanned += deployed
    secrets = (*SECRETS, *demo_secrets())
    for path in scanned:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{path} holds a secret"
    assert deployment.credentials.read_bytes().startswith(b"$ANSIBLE_VAULT;")
    figure(f"{len(scanned)} files scanned ({len(deployed)} deployed)")
