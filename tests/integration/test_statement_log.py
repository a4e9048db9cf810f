"""The run-time half of the PostgreSQL 9.4 check: the test servers log every statement they receive, the
log is read back whole (multi-line statements, the extended protocol), and a statement newer than 9.4
fails the pytest run that sent it, with the statement listed (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from tests.support.deployment import REPO, Deployment
from tests.support.pgcluster import logged_statements


def test_the_server_logs_simple_extended_and_multi_line_statements(deployment: Deployment) -> None:
    marker = uuid.uuid4().hex
    multi_line = f"SELECT '{marker}' AS a,\n       2 AS b\n  -- a comment\n  WHERE true"
    deployment.sql(multi_line + ";")
    with deployment.superuser() as conn:
        conn.execute(f"SELECT %s::text AS extended_{marker}", ("bound-value-stays-out",))
        for _ in range(3):
            conn.execute(f"SELECT %s::int AS prepared_{marker}", (1,), prepare=True)
    logged = logged_statements(deployment.cluster.logfile)
    assert multi_line + ";" in logged  # psql (simple protocol) sends it whole, line breaks and all
    assert f"SELECT $1::text AS extended_{marker}" in logged  # psycopg, extended protocol
    assert logged.count(f"SELECT $1::int AS prepared_{marker}") == 3  # a prepared statement, each execution
    assert "bound-value-stays-out" not in deployment.cluster.logfile.read_text()  # parameters are not logged


def test_setting_a_password_leaves_it_out_of_the_log(deployment: Deployment) -> None:
    role, secret = f"probe_{uuid.uuid4().hex[:12]}", f"pw-{uuid.uuid4().hex}"
    deployment.sql(f"CREATE ROLE {role} NOLOGIN")
    deployment.cluster.set_password(role, secret)
    with deployment.superuser() as conn:
        [(verifier,)] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchall()
        conn.execute(f"DROP ROLE {role}")
    assert verifier.startswith("SCRAM-SHA-256$")  # the password was set ...
    assert secret not in deployment.cluster.logfile.read_text()  # ... and not logged


def _run_session(tmp_path: Path, statement: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_sends.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            def test_sends(cluster):
                cluster.psql({statement!r})
            """
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", str(test_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_statement_newer_than_94_fails_the_run_and_is_listed(tmp_path: Path) -> None:
    newer = _run_session(tmp_path, "SELECT to_regrole('postgres')")
    assert "1 passed" in newer.stdout, newer.stdout + newer.stderr
    assert newer.returncode == 1, newer.stdout
    assert "statements newer than PostgreSQL 9.4" in newer.stdout
    assert "1 NEWER THAN 9.4" in newer.stdout
    assert "SELECT to_regrole('postgres')" in newer.stdout
    assert "to_regrole / to_regnamespace (PostgreSQL 9.5+)" in newer.stdout
    # The control: the same session with the 9.4 spelling passes.
    valid = _run_session(tmp_path, "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'postgres'")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "none newer than 9.4" in valid.stdout
