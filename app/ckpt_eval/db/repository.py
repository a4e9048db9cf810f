"""The only place SQL runs: registry reads, the claim protocol, and recording results.

Every operation is a short autocommit statement or one small transaction. A dropped
connection is reopened and the operation retried within the retry policy; a finish whose
commit outcome is unknown is resolved by looking for the run row carrying our lease token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from tenacity import RetryError

from ..credentials import DbCredentials
from ..errors import DatabaseUnavailable, LeaseLost, SchemaMismatch, UsageError
from ..text import quoted
from . import sql
from .connection import RetryPolicy, connect
from .errors import Transient, is_lost_race, server_message, translate

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ClaimedCheckpoint:
    checkpoint_id: int
    name: str
    path: str
    arch: str
    dataset: str
    sha256: str | None
    min_accuracy: float | None
    min_f1_macro: float | None
    attempt: int
    lease_token: str


@dataclass(frozen=True)
class RunRecord:
    """Everything written for one finished evaluation attempt."""

    status: str  # succeeded | failed
    verdict: str  # pass | fail
    verdict_reasons: str | None
    error: str | None
    dataset_sha256: str | None
    checkpoint_sha256: str | None
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    n_samples: int | None
    worker_host: str
    worker_pid: int
    app_version: str
    min_accuracy: float
    min_f1_macro: float
    confusion_matrix: str | None
    metrics: Sequence[tuple[str, str, float]]

    @property
    def job_status(self) -> str:
        return "done" if self.status == "succeeded" else "failed"


def _ids_param(ids: Sequence[int] | None) -> list[int] | None:
    return list(ids) if ids else None


class Repository:
    def __init__(self, creds: DbCredentials, policy: RetryPolicy, **connect_options: Any) -> None:
        self._creds = creds
        self._policy = policy
        self._connect_options = connect_options
        self._conn: psycopg.Connection | None = None

    # -- connection management ----------------------------------------------------------------
    def open(self) -> Repository:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._creds, self._policy, **self._connect_options)
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Repository:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_retry(self, operation: Callable[[psycopg.Connection], T], what: str) -> T:
        """Run ``operation`` on a live connection; every database error is translated here, once.

        What a retry may fix (a broken connection, a restart, a timeout, a lost race) reconnects
        and tries again within the retry policy; anything else is raised as ckpt-eval's error.
        """
        last: Exception | None = None
        try:
            for attempt in self._policy.retrying():
                with attempt:
                    self.open()
                    assert self._conn is not None
                    try:
                        return operation(self._conn)
                    except psycopg.Error as exc:
                        error = translate(exc, what, self._creds.user)
                        if not isinstance(error, Transient):
                            raise error from None
                        last = error
                        log.warning("%s; reconnecting", error)
                        self.close()
                        raise error from None
        except RetryError:
            pass
        raise DatabaseUnavailable(f"{last} (gave up after {self._policy.attempts} attempts)")

    # -- reads --------------------------------------------------------------------------------
    def server_now(self) -> datetime:
        return self._with_retry(lambda conn: conn.execute(sql.SERVER_NOW).fetchone()[0], "reading the clock")  # type: ignore[index]

    def check_schema(self) -> int:
        """Refuse a database whose schema is older than this release (78, with what to do)."""
        version = int(
            self._with_retry(lambda conn: conn.execute(sql.SCHEMA_VERSION).fetchone()[0], "reading the schema version")  # type: ignore[index]
        )
        if version < sql.REQUIRED_SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the database has ckpt_eval schema version {version}; this ckpt-eval needs "
                f"{sql.REQUIRED_SCHEMA_VERSION}: apply its init.sql (ansible-playbook playbooks/deploy.yml does)"
            )
        return version

    def is_greenplum(self) -> bool:
        return bool(self._with_retry(lambda conn: conn.execute(sql.IS_GREENPLUM).fetchone()[0], "detection"))  # type: ignore[index]

    def check_ids_exist(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        rows = self._with_retry(lambda conn: conn.execute(sql.KNOWN_IDS, {"ids": list(ids)}).fetchall(), "lookup")
        missing = sorted(set(ids) - {row[0] for row in rows})
        if missing:
            raise UsageError(f"no checkpoint with id {', '.join(map(str, missing))}")

    def planned(self, ids: Sequence[int] | None, force: bool, failed: bool) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {"ids": _ids_param(ids), "now": now, "force": force, "failed": failed}
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.PLANNED, params).fetchall()

        return self._with_retry(query, "planning")

    def running_elsewhere(self, ids: Sequence[int] | None) -> list[tuple[int, str]]:
        def query(conn: psycopg.Connection) -> list[tuple[int, str]]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            return [tuple(row) for row in conn.execute(sql.RUNNING_SELECTED, {"ids": _ids_param(ids), "now": now})]  # type: ignore[misc]

        return self._with_retry(query, "listing running checkpoints")

    def status(self) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.STATUS).fetchall()

        return self._with_retry(query, "reading status")

    # -- queueing -----------------------------------------------------------------------------
    def requeue(self, ids: Sequence[int] | None, *, force: bool, failed: bool) -> int:
        """Put finished checkpoints back to pending (``force``: done and failed; ``failed``: failed only)."""
        statement = sql.REQUEUE_FINISHED if force else sql.REQUEUE_FAILED if failed else None
        if statement is None:
            return 0

        def update(conn: psycopg.Connection) -> int:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            return conn.execute(statement, {"ids": _ids_param(ids), "now": now}).rowcount

        return self._with_retry(update, "requeueing")

    # -- the claim protocol -------------------------------------------------------------------
    def candidates(self, ids: Sequence[int] | None, limit: int) -> list[str]:
        def query(conn: psycopg.Connection) -> list[str]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            rows = conn.execute(sql.CANDIDATES, {"ids": _ids_param(ids), "now": now, "limit": limit}).fetchall()
            return [row[0] for row in rows]

        return self._with_retry(query, "finding pending checkpoints")

    def claim(self, name: str, owner: str, token: str, lease_seconds: float) -> ClaimedCheckpoint | None:
        """Compare-and-set claim; None when another worker won the race."""

        def attempt(conn: psycopg.Connection) -> ClaimedCheckpoint | None:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {
                "name": name,
                "owner": owner,
                "token": token,
                "now": now,
                "expires": now + timedelta(seconds=lease_seconds),
            }
            try:
                if conn.execute(sql.CLAIM, params).rowcount != 1:
                    return None
            except psycopg.errors.DatabaseError as exc:
                if is_lost_race(exc):
                    log.debug("lost the race for %s: %s", quoted(name), server_message(exc))
                    return None
                raise
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(sql.CLAIMED, {"name": name, "token": token}).fetchone()
            if row is None:  # lease taken over in between: vanishingly rare, still a lost race
                return None
            return ClaimedCheckpoint(lease_token=token, **row)

        return self._with_retry(attempt, "claiming")

    def heartbeat(self, claim: ClaimedCheckpoint, lease_seconds: float) -> bool:
        """Extend the lease; False means the lease was lost and the work must stop."""

        def extend(conn: psycopg.Connection) -> bool:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {
                "name": claim.name,
                "token": claim.lease_token,
                "now": now,
                "expires": now + timedelta(seconds=lease_seconds),
            }
            return conn.execute(sql.HEARTBEAT, params).rowcount == 1

        return self._with_retry(extend, "heartbeat")

    def finish(self, claim: ClaimedCheckpoint, record: RunRecord) -> int:
        """Record the run, its metrics and the job state in ONE transaction fenced by the lease token."""

        def write(conn: psycopg.Connection) -> int:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            existing = self._run_with_token(conn, claim.lease_token)
            if existing is not None:  # an earlier attempt committed before the connection broke
                return existing
            with conn.transaction():
                fenced = conn.execute(
                    sql.FINISH_JOB,
                    {"status": record.job_status, "now": now, "name": claim.name, "token": claim.lease_token},
                )
                if fenced.rowcount != 1:
                    raise LeaseLost(
                        f"checkpoint {claim.checkpoint_id} ({quoted(claim.name)}): lease lost to another worker; "
                        "result discarded"
                    )
                run_id = conn.execute(sql.INSERT_RUN, self._run_params(claim, record)).fetchone()[0]  # type: ignore[index]
                with conn.cursor() as cur:
                    cur.executemany(sql.INSERT_METRIC, [(run_id, m, label, v) for m, label, v in record.metrics])
            return int(run_id)

        return self._with_retry(write, "recording the result")

    def release(self, claim: ClaimedCheckpoint) -> None:
        def update(conn: psycopg.Connection) -> None:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            conn.execute(sql.RELEASE_JOB, {"name": claim.name, "token": claim.lease_token, "now": now})

        self._with_retry(update, "releasing a lease")

    @staticmethod
    def _run_with_token(conn: psycopg.Connection, token: str) -> int | None:
        row = conn.execute(sql.RUN_BY_TOKEN, {"token": token}).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _run_params(claim: ClaimedCheckpoint, record: RunRecord) -> dict[str, Any]:
        return {
            "checkpoint_id": claim.checkpoint_id,
            "checkpoint_name": claim.name,
            "attempt": claim.attempt,
            "dataset": claim.dataset,
            "dataset_sha256": record.dataset_sha256,
            "checkpoint_sha256": record.checkpoint_sha256,
            "status": record.status,
            "verdict": record.verdict,
            "verdict_reasons": record.verdict_reasons,
            "error": record.error,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "duration_seconds": record.duration_seconds,
            "n_samples": record.n_samples,
            "worker_host": record.worker_host,
            "worker_pid": record.worker_pid,
            "app_version": record.app_version,
            "lease_token": claim.lease_token,
            "min_accuracy": record.min_accuracy,
            "min_f1_macro": record.min_f1_macro,
            "confusion_matrix": record.confusion_matrix,
        }

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        *,
        name: str,
        path: str,
        arch: str,
        dataset: str,
        sha256: str,
        min_accuracy: float | None,
        min_f1_macro: float | None,
    ) -> int:
        params = {
            "name": name,
            "path": path,
            "arch": arch,
            "dataset": dataset,
            "sha256": sha256,
            "min_accuracy": min_accuracy,
            "min_f1_macro": min_f1_macro,
        }

        def insert(conn: psycopg.Connection) -> int:
            if conn.execute(sql.NAME_TAKEN, params).fetchone() is not None:
                raise UsageError(f"a checkpoint named {quoted(name)} is already registered")
            try:
                return int(conn.execute(sql.REGISTER, params).fetchone()[0])  # type: ignore[index]
            except psycopg.errors.UniqueViolation:
                raise UsageError(f"a checkpoint named {quoted(name)} is already registered") from None
            except psycopg.errors.CheckViolation as exc:
                raise UsageError(f"the registry refused the checkpoint: {server_message(exc)}") from None

        return self._with_retry(insert, "registering")
