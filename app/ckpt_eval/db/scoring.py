"""The database side of batch scoring: jobs, runs, the chunk claim protocol, reading inputs, writing predictions.

Chunks are claimed, leased and fenced like evaluation pairs (compare-and-set UPDATEs checked by
rowcount, no row locks, no upserts: Greenplum 6). A chunk's predictions are written with COPY FROM
STDIN in the transaction whose first statement is the chunk's fence, so a worker that lost its
lease writes nothing, and a worker killed mid-write leaves nothing half-written. A finish whose
commit outcome is unknown (the connection dropped during COMMIT) is resolved by the token, which
the finished chunk keeps.

Input, output, key and feature names come from the registry (untrusted): each is quoted with
psycopg.sql.Identifier into the statements' identifier slots, never interpolated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from ..datasets.definition import split_table_name
from ..errors import ConfigError, DatabasePrivilegeError, DatasetError
from ..text import quoted
from . import sql
from .copy_out import copy_out
from .errors import is_lost_race, server_message
from .repository import Repository, compare_and_set, lease_params
from .table_reader import dataset_error, fill_identifiers, grant_advice

log = logging.getLogger(__name__)
T = TypeVar("T")

_INTEGER_TYPES = {20: "bigint", 21: "smallint", 23: "integer"}  # pg_type OIDs of int8, int2, int4


@dataclass(frozen=True)
class ScoringJob:
    """A scoring job's definition with its checkpoint's registry row and its input dataset's definition."""

    name: str
    checkpoint_name: str
    checkpoint_id: int | None  # None: the checkpoint is not registered
    path: str | None
    arch: str | None
    sha256: str | None
    input_dataset: str
    dataset_kind: str | None  # None: the dataset is not registered
    source: str | None
    feature_columns: tuple[str, ...]
    class_names: tuple[str, ...] | None
    key_column: str
    output_schema: str
    output_table: str
    chunk_rows: int
    allow_ungated: bool
    active_run: int | None

    @property
    def output(self) -> str:
        return f"{self.output_schema}.{self.output_table}"

    @property
    def label(self) -> str:
        return f"scoring job {quoted(self.name, 60)}"


class ChunkPlan(NamedTuple):
    chunk_no: int
    low_key: int
    high_key: int
    planned_rows: int
    clean: bool = False  # no other input row within its key range: read without an anti-join


@dataclass(frozen=True)
class ClaimedChunk:
    scoring_run_id: int
    chunk_no: int
    low_key: int
    high_key: int
    planned_rows: int
    attempt: int
    lease_token: str
    clean: bool = False  # see ChunkPlan

    @property
    def key(self) -> dict[str, int]:
        return {"run": self.scoring_run_id, "chunk": self.chunk_no}

    @property
    def label(self) -> str:
        return f"chunk {self.chunk_no} (keys {self.low_key}..{self.high_key}) of scoring run {self.scoring_run_id}"


@dataclass(frozen=True)
class RunProgress:
    chunks: int
    open_chunks: int
    failed_chunks: int
    rows_scored: int
    rows_skipped: int
    open_rows: int


def _job(row: dict[str, Any]) -> ScoringJob:
    return ScoringJob(
        name=row["name"],
        checkpoint_name=row["checkpoint_name"],
        checkpoint_id=row["checkpoint_id"],
        path=row["path"],
        arch=row["arch"],
        sha256=row["sha256"],
        input_dataset=row["input_dataset"],
        dataset_kind=row["dataset_kind"],
        source=row["dataset_source"],
        feature_columns=tuple(row["feature_columns"] or ()),
        class_names=tuple(row["class_names"]) if row["class_names"] else None,
        key_column=row["key_column"],
        output_schema=row["output_schema"],
        output_table=row["output_table"],
        chunk_rows=row["chunk_rows"],
        allow_ungated=row["allow_ungated"],
        active_run=row["active_run"],
    )


def _statement(template: str, job: ScoringJob) -> pgsql.Composed:
    """``template`` with its identifier slots filled from ``job``, every name quoted by psycopg."""
    assert job.source is not None
    return fill_identifiers(
        template,
        input=pgsql.Identifier(*split_table_name(job.source)),
        output=pgsql.Identifier(job.output_schema, job.output_table),
        key=pgsql.Identifier(job.key_column),
        features=pgsql.SQL(", ").join(pgsql.Identifier("i", column) for column in job.feature_columns),
    )


class _Fenced(Exception):
    """The chunk's fence did not hold: roll the transaction back, write nothing."""


class ScoringRepository(Repository):
    """Repository plus the statements of batch scoring (same connection, retries and error translation)."""

    @property
    def _statement_timeout_ms(self) -> int:
        return int(self._connect_options.get("statement_timeout_ms", 0))

    # -- jobs and runs ---------------------------------------------------------------------------
    def scoring_job(self, name: str) -> ScoringJob | None:
        def read(conn: psycopg.Connection) -> dict[str, Any] | None:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.SCORING_JOB, {"job": name}).fetchone()

        row = self._with_retry(read, "reading a scoring job")
        return _job(row) if row else None

    def scoring_job_names(self) -> list[str]:
        return self._with_retry(
            lambda conn: [r[0] for r in conn.execute(sql.SCORING_JOBS).fetchall()], "listing scoring jobs"
        )

    def checkpoint_verdicts(self, checkpoint_id: int) -> list[tuple[str, str, str]]:
        return self._with_retry(
            lambda conn: [tuple(r) for r in conn.execute(sql.CHECKPOINT_VERDICTS, {"checkpoint_id": checkpoint_id})],
            "reading the checkpoint's verdicts",
        )

    def scoring_run(self, run_id: int) -> dict[str, Any] | None:
        def read(conn: psycopg.Connection) -> dict[str, Any] | None:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.SCORING_RUN, {"run": run_id}).fetchone()

        return self._with_retry(read, "reading a scoring run")

    def scoring_runs(self, job: str) -> list[dict[str, Any]]:
        def read(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.SCORING_RUNS_OF_JOB, {"job": job}).fetchall()

        return self._with_retry(read, "reading scoring runs")

    def prediction_counts(self, job: ScoringJob, run_id: int) -> list[dict[str, Any]]:
        """Rows per predicted class in one run's predictions."""
        statement = _statement(sql.PREDICTION_COUNTS, job)

        def read(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(statement, {"run": run_id}).fetchall()

        return self._with_retry(read, "counting a run's predictions")

    # -- checks of the input and the output --------------------------------------------------------
    def _input_query(self, job: ScoringJob, template: str, what: str, params: dict[str, Any] | None = None) -> Any:
        """Run a query on the input table; its errors name the table (and the GRANT it needs)."""
        assert job.source is not None

        def run(conn: psycopg.Connection) -> Any:
            try:
                cursor = conn.execute(_statement(template, job), params or {})
                return cursor.description, cursor.fetchall()
            except psycopg.Error as exc:
                known = dataset_error(exc, job.source or "", self._creds.user, self._statement_timeout_ms)
                if known is not None:
                    raise known from None
                raise

        return self._with_retry(run, what)

    def check_input(self, job: ScoringJob) -> None:
        """The key must be an integer column without NULLs or duplicates; the feature columns must exist."""
        assert job.source is not None
        table = f"input table {quoted(job.source, 120)} of {job.label}"
        description, _ = self._input_query(job, sql.SCORING_INPUT_COLUMNS, "reading the input's columns")
        type_code = description[0].type_code
        if type_code not in _INTEGER_TYPES:
            raise DatasetError(
                f"{table}: key column {quoted(job.key_column, 60)} is not an integer column (smallint, integer "
                "or bigint): scoring splits the input into ranges of keys"
            )
        _, rows = self._input_query(job, sql.SCORING_NULL_KEYS, "counting NULL keys")
        if rows[0][0]:
            raise DatasetError(f"{table}: {rows[0][0]} row(s) have a NULL key in column {quoted(job.key_column, 60)}")
        _, rows = self._input_query(job, sql.SCORING_DUPLICATE_KEY, "looking for duplicate keys")
        if rows:
            raise DatasetError(
                f"{table}: key column {quoted(job.key_column, 60)} is not unique (key {rows[0][0]} appears more "
                "than once): each prediction is written for one row key"
            )

    def check_output(self, job: ScoringJob) -> None:
        """The output table must exist and the app role must be able to read and insert into it."""

        def read(conn: psycopg.Connection) -> tuple[bool, bool]:
            params = {"schema": job.output_schema, "table": job.output_table}
            row = conn.execute(sql.OUTPUT_PRIVILEGES, params).fetchone()
            assert row is not None
            return bool(row[0]), bool(row[1])

        present, writable = self._with_retry(read, "checking the output table")
        shown = quoted(job.output, 130)
        if not present:
            raise ConfigError(
                f"{job.label}: output table {shown} does not exist (or role {self._creds.user} cannot see it): "
                "the deployment makes it (ckpt_eval.create_scoring_job)"
            )
        if not writable:
            grant = grant_advice(job.output, self._creds.user).replace("GRANT SELECT ON", "GRANT SELECT, INSERT ON")
            raise DatabasePrivilegeError(
                f"{job.label}: role {self._creds.user} may not write output table {shown}: the schema owner must "
                f"run {grant} (ckpt_eval.create_scoring_job does)"
            )

    # -- planning and starting a run ----------------------------------------------------------------
    def plan(self, job: ScoringJob, checkpoint_id: int, rescore: bool, limit: int | None) -> list[ChunkPlan]:
        params = {"rescore": rescore, "checkpoint_id": checkpoint_id, "chunk_rows": job.chunk_rows, "limit": limit}
        _, rows = self._input_query(job, sql.SCORING_PLAN, "planning a scoring run", params)
        return [ChunkPlan(int(r[0]), int(r[1]), int(r[2]), int(r[3]), bool(r[4])) for r in rows]

    def start_run(
        self,
        job: ScoringJob,
        plan: Sequence[ChunkPlan],
        *,
        checkpoint_sha256: str,
        rescore: bool,
        owner: str,
        app_version: str,
        class_names: Sequence[str] | None = None,
    ) -> int | None:
        """Record a run and its chunks and make it the job's run; None when another worker's run won."""
        assert job.checkpoint_id is not None

        def start(conn: psycopg.Connection) -> int | None:
            try:
                with conn.transaction():
                    now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
                    run_id = conn.execute(
                        sql.INSERT_SCORING_RUN,
                        {
                            "job": job.name,
                            "checkpoint_id": job.checkpoint_id,
                            "checkpoint_name": job.checkpoint_name,
                            "checkpoint_sha256": checkpoint_sha256,
                            "class_names": None if class_names is None else list(class_names),
                            "rescore": rescore,
                            "planned_rows": sum(chunk.planned_rows for chunk in plan),
                            "chunks": len(plan),
                            "started_by": owner,
                            "app_version": app_version,
                            "now": now,
                        },
                    ).fetchone()[0]  # type: ignore[index]
                    conn.execute(
                        sql.INSERT_SCORING_CHUNKS,
                        {
                            "run": run_id,
                            "now": now,
                            "numbers": [chunk.chunk_no for chunk in plan],
                            "lows": [chunk.low_key for chunk in plan],
                            "highs": [chunk.high_key for chunk in plan],
                            "rows": [chunk.planned_rows for chunk in plan],
                            "cleans": [chunk.clean for chunk in plan],
                        },
                    )
                    if conn.execute(sql.ACTIVATE_SCORING_RUN, {"run": run_id, "job": job.name}).rowcount != 1:
                        raise _Fenced
                    return int(run_id)
            except _Fenced:
                return None
            except psycopg.errors.DatabaseError as exc:
                if is_lost_race(exc):
                    log.debug("lost the race to start a run of %s: %s", job.label, server_message(exc))
                    return None
                raise

        return self._with_retry(start, "starting a scoring run")

    # -- the chunk claim protocol -----------------------------------------------------------------------
    def claimable_chunks(self, run_id: int, limit: int) -> list[int]:
        def read(conn: psycopg.Connection) -> list[int]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            rows = conn.execute(sql.CLAIMABLE_CHUNKS, {"run": run_id, "now": now, "limit": limit}).fetchall()
            return [int(r[0]) for r in rows]

        return self._with_retry(read, "listing claimable chunks")

    def claim_chunk(
        self, run_id: int, chunk_no: int, owner: str, token: str, lease_seconds: float
    ) -> ClaimedChunk | None:
        def attempt(conn: psycopg.Connection) -> ClaimedChunk | None:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {"run": run_id, "chunk": chunk_no, **lease_params(now, owner, token, lease_seconds)}
            if not compare_and_set(conn, sql.CLAIM_CHUNK, params, f"chunk {chunk_no} of scoring run {run_id}"):
                return None
            row = conn.execute(sql.CLAIMED_CHUNK, params).fetchone()
            if row is None:
                return None
            return ClaimedChunk(
                run_id, int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), token, bool(row[5])
            )

        return self._with_retry(attempt, "claiming a chunk")

    def heartbeat_chunk(self, chunk: ClaimedChunk, lease_seconds: float) -> bool:
        def extend(conn: psycopg.Connection) -> bool:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {**chunk.key, "token": chunk.lease_token, "now": now}
            params["expires"] = now + timedelta(seconds=lease_seconds)
            return conn.execute(sql.HEARTBEAT_CHUNK, params).rowcount == 1

        return self._with_retry(extend, "extending a chunk's lease")

    def release_chunk(self, chunk: ClaimedChunk) -> None:
        def update(conn: psycopg.Connection) -> None:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            conn.execute(sql.RELEASE_CHUNK, {**chunk.key, "token": chunk.lease_token, "now": now})

        self._with_retry(update, "handing a chunk back")

    def read_chunk(
        self,
        job: ScoringJob,
        chunk: ClaimedChunk,
        rescore: bool,
        consume: Callable[[Iterable[bytes]], T],
    ) -> T:
        """``consume`` the chunk's input rows (key, features...) as CSV blocks, streamed by COPY.

        A connection lost mid-read is retried from the start of the chunk: ``consume`` must not keep
        anything from an earlier attempt.
        """
        assert job.checkpoint_id is not None
        params = {"low": chunk.low_key, "high": chunk.high_key, "checkpoint_id": job.checkpoint_id}
        # A rescoring run scores every row of its ranges (its chunks are all clean).
        statement = _statement(sql.SCORING_READ_CLEAN_CHUNK if chunk.clean or rescore else sql.SCORING_READ_CHUNK, job)

        def read(conn: psycopg.Connection) -> T:
            try:
                with conn.transaction():
                    conn.execute(sql.TABLE_FLOAT_DIGITS)
                    # COPY takes no bind parameters: psycopg merges these (numbers, booleans) client-side.
                    query = psycopg.ClientCursor(conn).mogrify(statement, params)
                    with closing(copy_out(conn, query.encode(conn.info.encoding))) as blocks:
                        return consume(blocks)
            except psycopg.Error as exc:
                known = dataset_error(exc, job.source or "", self._creds.user, self._statement_timeout_ms)
                if known is not None:
                    raise known from None
                raise

        return self._with_retry(read, f"reading {chunk.label}")

    def finish_chunk(
        self,
        job: ScoringJob,
        chunk: ClaimedChunk,
        *,
        failed: bool,
        data: Callable[[datetime], Iterable[bytes]],
        rows_scored: int,
        rows_skipped: int,
        error: str | None,
    ) -> bool:
        """Fence, write the predictions, mark the chunk; False: the lease was lost (nothing written).

        One transaction: the fence first (rowcount 1 or nothing is written), then COPY of ``data(now)``
        (the binary COPY stream of the chunk's predictions, scored at the server's time), then COMMIT.
        """
        output = _statement(sql.SCORING_WRITE, job)
        first_try = True

        def finish(conn: psycopg.Connection) -> bool:
            nonlocal first_try
            if not first_try:
                # The previous attempt may have committed before its connection dropped.
                row = conn.execute(sql.CHUNK_FINISHED_BY, {**chunk.key, "token": chunk.lease_token}).fetchone()
                if row is not None and row[0] in ("done", "failed"):
                    return True
            first_try = False
            try:
                with conn.transaction():
                    now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
                    fence = conn.execute(
                        sql.FINISH_CHUNK,
                        {
                            **chunk.key,
                            "token": chunk.lease_token,
                            "now": now,
                            "status": "failed" if failed else "done",
                            "rows_scored": rows_scored,
                            "rows_skipped": rows_skipped,
                            "error": error,
                        },
                    )
                    if fence.rowcount != 1:
                        raise _Fenced
                    if not failed:
                        with conn.cursor() as cursor, cursor.copy(output) as copy:
                            for block in data(now):
                                copy.write(block)
                return True
            except _Fenced:
                return False
            except psycopg.errors.DatabaseError as exc:
                if is_lost_race(exc):
                    return False
                if (exc.sqlstate or "") == "42501":
                    raise DatabasePrivilegeError(
                        f"{job.label}: role {self._creds.user} may not write output table {quoted(job.output, 130)} "
                        f"({server_message(exc)}); the schema owner must grant SELECT, INSERT on it "
                        "(ckpt_eval.create_scoring_job does)"
                    ) from None
                raise

        return self._with_retry(finish, f"writing {chunk.label}")

    # -- completing a run -------------------------------------------------------------------------------
    def run_progress(self, run_id: int) -> RunProgress:
        def read(conn: psycopg.Connection) -> RunProgress:
            row = conn.execute(sql.SCORING_RUN_PROGRESS, {"run": run_id}).fetchone()
            assert row is not None
            return RunProgress(*(int(value) for value in row))

        return self._with_retry(read, "reading a scoring run's progress")

    def failed_chunks(self, run_id: int, limit: int = 20) -> list[tuple[int, int, int, str | None]]:
        return self._with_retry(
            lambda conn: [tuple(r) for r in conn.execute(sql.FAILED_CHUNKS, {"run": run_id, "limit": limit})],
            "reading failed chunks",
        )

    def complete_run(self, job: ScoringJob, run_id: int) -> str | None:
        """Close the run when none of its chunks is pending or running: its status, or None (still open)."""

        def complete(conn: psycopg.Connection) -> str | None:
            with conn.transaction():
                row = conn.execute(sql.SCORING_RUN_PROGRESS, {"run": run_id}).fetchone()
                assert row is not None
                progress = RunProgress(*(int(value) for value in row))
                if progress.open_chunks:
                    return None
                now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
                status = "failed" if progress.failed_chunks else "done"
                conn.execute(
                    sql.COMPLETE_SCORING_RUN,
                    {
                        "run": run_id,
                        "status": status,
                        "rows_scored": progress.rows_scored,
                        "rows_skipped": progress.rows_skipped,
                        "failed_chunks": progress.failed_chunks,
                        "now": now,
                    },
                )
                conn.execute(sql.DEACTIVATE_SCORING_RUN, {"run": run_id, "job": job.name})
                return status

        return self._with_retry(complete, "completing a scoring run")
