"""Database errors mean something: each maps to its documented exit code and one line saying what to do.

A deployment problem (a grant missing, a schema object missing, a read-only database) stops the job
with exit 78 and names the object, without retrying it as an outage; what it claimed is handed
back. Exit 70 is left for real defects.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.deployment import Deployment


@dataclass(frozen=True)
class Break:
    statements: tuple[str, ...]
    command: tuple[str, ...]
    exit_code: int
    fragments: tuple[str, ...]


BREAKS = {
    "revoked-insert-on-runs": Break(
        ("REVOKE INSERT ON ckpt_eval.evaluation_runs FROM ckpt_eval_app",),
        ("run",),
        78,
        ("lacks a privilege", "evaluation_runs", "deploy.yml"),
    ),
    "revoked-key-function": Break(
        ("REVOKE EXECUTE ON FUNCTION ckpt_eval.next_run_id() FROM ckpt_eval_app",),
        ("run",),
        78,
        ("lacks a privilege", "next_run_id"),
    ),
    "revoked-select-on-registry": Break(
        ("REVOKE SELECT ON ckpt_eval.checkpoints FROM ckpt_eval_app",),
        ("run",),
        78,
        ("lacks a privilege", "checkpoints"),
    ),
    "revoked-schema-usage": Break(
        ("REVOKE USAGE ON SCHEMA ckpt_eval FROM ckpt_eval_app",),
        ("status",),
        78,
        ("lacks a privilege", "schema ckpt_eval"),
    ),
    "view-missing": Break(
        ("DROP VIEW ckpt_eval.latest_evaluations",),
        ("status",),
        78,
        ("schema does not match", "latest_evaluations", "init.sql"),
    ),
    "key-function-missing": Break(
        (
            "ALTER TABLE ckpt_eval.evaluation_runs ALTER COLUMN run_id DROP DEFAULT",
            "DROP FUNCTION ckpt_eval.next_run_id()",
        ),
        ("run",),
        70,  # a NOT NULL key without a default: the schema is broken in a way ckpt-eval did not make
        ("run_id",),
    ),
    "read-only-database": Break(
        ("ALTER DATABASE {db} SET default_transaction_read_only = on",),
        ("run",),
        78,
        ("read-only",),
    ),
    "revoked-registration": Break(
        ("REVOKE INSERT ON ckpt_eval.checkpoints FROM ckpt_eval_app",),
        ("register", "digits-mlp-good.pt", "--name", "again", "--arch", "digits_mlp", "--dataset", "digits"),
        78,
        ("lacks a privilege", "checkpoints"),
    ),
}


@pytest.mark.scenario(
    "Database error has a meaning", "documented exit code, one line naming the object, no retries, nothing left claimed"
)
@pytest.mark.parametrize("case_id", list(BREAKS))
def test_database_errors_map_to_their_exit_codes(deployment: Deployment, figure, case_id: str) -> None:
    case = BREAKS[case_id]
    with deployment.superuser() as conn:
        for statement in case.statements:
            conn.execute(statement.format(db=deployment.dbname))  # type: ignore[arg-type]
    result = deployment.ckpt_eval(*case.command)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    figure(f"exit {result.returncode}: {lines[-1].split(': ', 1)[-1][:100] if lines else '-'}")
    assert result.returncode == case.exit_code, result.output
    assert "Traceback" not in result.output
    assert "internal error" not in result.output or case.exit_code == 70
    for fragment in case.fragments:
        assert fragment in lines[-1], lines[-1]
    assert "reconnecting" not in result.stderr, "a configuration problem must not be retried as an outage"
    with deployment.superuser() as conn:
        leases = conn.execute("SELECT count(*) FROM ckpt_eval.evaluations WHERE status = 'running'").fetchone()
    assert leases == (0,), "whatever was claimed is handed back"


@pytest.mark.scenario("Rejected value is not an outage", "a value the server refuses is exit 2 before connecting")
def test_statement_timeout_the_server_would_refuse(deployment: Deployment, figure) -> None:
    result = deployment.ckpt_eval("run", "--statement-timeout", "9999999")
    figure(f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1][:90]}")
    assert result.returncode == 2
    assert "reconnecting" not in result.stderr
