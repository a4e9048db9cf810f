"""A deployment under test: one real PostgreSQL per test session, a fresh database per test,
the real `ckpt-eval` CLI in a subprocess, and credentials in the real ansible-vault format.
The fixtures are registered in tests/conftest.py."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from ckpt_eval.credentials import encrypt_mapping
from tests.support.pgcluster import PgCluster, create_app_database

REPO = Path(__file__).resolve().parents[2]
VAULT_PASSWORD = "integration-vault-pass-7f3a"
APP_PASSWORD = "integration-db-pass-91c2"
CKPT_EVAL = str(Path(sys.executable).parent / "ckpt-eval")
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[PgCluster]:
    server = PgCluster()
    try:
        server.init()
        server.write_hba(
            [
                "host all ckpt_eval_app 127.0.0.1/32 scram-sha-256",
                "host all all 127.0.0.1/32 reject",
            ]
        )
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.destroy()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Deployment:
    """One database with init.sql applied, plus the files a classifier host would have."""

    cluster: PgCluster
    dbname: str
    workdir: Path
    checkpoint_root: Path
    data_dir: Path
    credentials: Path
    password_file: Path
    env: dict[str, str] = field(default_factory=dict)

    def superuser(self) -> psycopg.Connection:
        """The superuser over the cluster's Unix socket (autocommit): exact values, no psql text parsing."""
        return psycopg.connect(
            host=str(self.cluster.sockdir),
            port=self.cluster.port,
            user="postgres",
            dbname=self.dbname,
            autocommit=True,
        )

    def sql(self, query: str) -> str:
        return self.cluster.psql(query, dbname=self.dbname)

    def rows(self, query: str) -> list[list[str]]:
        out = self.sql(query)
        return [line.split("|") for line in out.splitlines() if line]

    def ckpt_eval(
        self, *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 300
    ) -> Result:
        full_env = {**self.env, **(env or {})}
        completed = subprocess.run(
            [CKPT_EVAL, *args],
            cwd=self.workdir,
            env=full_env,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return Result(completed.returncode, completed.stdout, completed.stderr)

    def write_credentials(self, path: Path | None = None, **overrides: object) -> Path:
        data: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.cluster.port,
            "dbname": self.dbname,
            "user": "ckpt_eval_app",
            "password": APP_PASSWORD,
            "connect_timeout": 5,
        }
        data.update(overrides)
        target = path or self.credentials
        target.write_text(encrypt_mapping({k: v for k, v in data.items() if v is not None}, VAULT_PASSWORD.encode()))
        return target

    def register_row(
        self, name: str, path: str, arch: str = "digits_mlp", dataset: str = "digits", sha256: str | None = None
    ) -> int:
        """Insert a registry row as the owner would, bypassing `register`'s checks (hostile rows).

        The recorded sha256 is the file's own when ``path`` names a regular file under the checkpoint
        root (so the row fails for the reason under test, not a hash mismatch), else one matching nothing.
        """
        if sha256 is None:
            sha256 = file_sha256(self.checkpoint_root, path)
        with self.superuser() as conn:
            row = conn.execute(
                "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING checkpoint_id",
                (name, path, arch, dataset, sha256),
            ).fetchone()
            assert row is not None
            # Its pending (checkpoint, dataset) pair, as `register` makes it (a run would adopt the row too).
            conn.execute(
                "INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id) VALUES (%s, %s, %s)",
                (name, dataset, row[0]),
            )
        return int(row[0])


def file_sha256(root: Path, stored: str) -> str:
    """The sha256 of ``root/stored`` when it is a readable regular file inside the root, else 64 zeros."""
    try:
        candidate = (root / stored).resolve()
        if "\x00" not in stored and candidate.is_file() and not stored.startswith("/"):
            return hashlib.sha256(candidate.read_bytes()).hexdigest()
    except (OSError, ValueError):
        pass
    return "0" * 64


def base_environment() -> dict[str, str]:
    """The parent's environment minus anything that could configure ckpt-eval behind the test's back."""
    return {
        key: value for key, value in os.environ.items() if not key.startswith(("CKPT_EVAL_", "ANSIBLE_VAULT", "PG"))
    }


def new_deployment(
    cluster: PgCluster, tmp_path: Path, dbname: str | None = None, init_sql: Path = REPO / "init.sql"
) -> Deployment:
    """A fresh database with init.sql applied on ``cluster``, plus a classifier host's files in tmp_path."""
    dbname = dbname or f"ckpt_eval_t{next(_database_numbers)}"
    create_app_database(cluster, init_sql, APP_PASSWORD, dbname=dbname)
    workdir = tmp_path / "host"
    workdir.mkdir()
    checkpoint_root = workdir / "checkpoints"
    shutil.copytree(REPO / "checkpoints", checkpoint_root)
    data_dir = workdir / "data"
    data_dir.mkdir()
    password_file = tmp_path / "vault-password"
    password_file.write_text(VAULT_PASSWORD + "\n")
    password_file.chmod(0o600)
    deployment = Deployment(
        cluster=cluster,
        dbname=dbname,
        workdir=workdir,
        checkpoint_root=checkpoint_root,
        data_dir=data_dir,
        credentials=workdir / "db.credentials",
        password_file=password_file,
    )
    deployment.write_credentials()
    deployment.env = {
        **base_environment(),
        "CKPT_EVAL_VAULT_PASSWORD_FILE": str(password_file),
        "CKPT_EVAL_DB_RETRIES": "2",
        "CKPT_EVAL_DB_RETRY_SECONDS": "5",
    }
    return deployment


@pytest.fixture
def deployment(cluster: PgCluster, tmp_path: Path) -> Deployment:
    return new_deployment(cluster, tmp_path)
