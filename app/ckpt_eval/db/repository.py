"""The only place SQL runs: registry reads, the claim protocol, and recording results.

Every operation is a short autocommit statement or one small transaction. A dropped
connection is reopened and the operation retried within the retry policy; a finish whose
commit outcome is unknown is resolved by looking for the run row carrying our lease token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg.rows import dict_row
from tenacity import RetryError

from ..credentials import DbCredentials
from ..errors import DatabaseUnavailable, LeaseLost, SchemaMismatch, UsageError
from ..gates import Baseline, GateRule, GateSyntaxError, PairGate, default_rules, effective_rules, rules_from_json
from ..text import printable, quoted
from . import sql
from .connection import RetryPolicy, connect
from .errors import Transient, is_lost_race, server_message, translate

log = logging.getLogger(__name__)
T = TypeVar("T")


class Candidate(NamedTuple):
    """A claimable (checkpoint name, dataset) pair and its checkpoint's architecture."""

    name: str
    dataset: str
    arch: str | None

    @property
    def pair(self) -> tuple[str, str]:
        return (self.name, self.dataset)


@dataclass(frozen=True)
class ClaimedCheckpoint:
    """A claimed (checkpoint, dataset) pair: the checkpoint's registry row and the dataset's definition."""

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
    dataset_row: Mapping[str, Any] | None = None  # the ckpt_eval.datasets row; None: not registered

    @property
    def key(self) -> dict[str, str]:
        return {"name": self.name, "dataset": self.dataset}

    @property
    def label(self) -> str:
        """How logs and errors name the pair: id, checkpoint name and dataset, escaped."""
        return f"checkpoint {self.checkpoint_id} {quoted(self.name)} on {quoted(self.dataset, 60)}"


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
    arch_package: str | None = None
    arch_version: str | None = None
    gate_results: str | None = None  # JSON: every gate requirement with the values compared (gates.py)
    gate_note: str | None = None  # why the change rules were skipped, when they were
    curves: str | None = None  # JSON: a binary task's ROC and precision-recall points

    @property
    def job_status(self) -> str:
        return "done" if self.status == "succeeded" else "failed"


def gates_for_claims(
    claims: Sequence[ClaimedCheckpoint],
    gates: Sequence[Mapping[str, Any]],
    champions: Sequence[Mapping[str, Any]],
    baselines: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], PairGate]:
    """Each pair's PairGate from the rows of GATES_IN_FORCE, CURRENT_CHAMPIONS and CHAMPION_BASELINES.
    A stored gate that cannot be read fails the runs it applies to (a gate is never silently dropped)."""
    by_checkpoint = {row["checkpoint_name"]: row for row in gates if row["checkpoint_name"] is not None}
    by_dataset = {row["dataset"]: row for row in gates if row["dataset"] is not None}
    champion_of = {row["dataset"]: row for row in champions}
    runs: dict[str, dict[str, Baseline]] = {}
    for row in baselines:
        by_version = runs.setdefault(row["dataset"], {})
        found = by_version.get(row["dataset_sha256"])
        if found is None:
            found = by_version[row["dataset_sha256"]] = Baseline(row["checkpoint_name"], int(row["run_id"]), {})
        found.metrics[row["metric"]] = float(row["value"])
    result = {}
    for claim in claims:
        defaults = default_rules(claim.min_accuracy, claim.min_f1_macro)
        error = None
        try:
            own = _stored_rules(by_checkpoint.get(claim.name), "checkpoint")
            shared = _stored_rules(by_dataset.get(claim.dataset), "dataset")
        except GateSyntaxError as exc:
            own = shared = None
            error = str(exc)
        champion = champion_of.get(claim.dataset)
        result[(claim.name, claim.dataset)] = PairGate(
            rules=effective_rules(own, shared, defaults),
            error=error,
            dataset=claim.dataset,
            champion=None if champion is None else champion["checkpoint_name"],
            is_champion=champion is not None and int(champion["checkpoint_id"]) == claim.checkpoint_id,
            baselines=runs.get(claim.dataset, {}),
        )
    return result


def _stored_rules(row: Mapping[str, Any] | None, scope: str) -> tuple[GateRule, ...] | None:
    if row is None:
        return None
    try:
        return rules_from_json(row["rules"], scope)
    except (ValueError, TypeError, ArithmeticError) as exc:  # GateSyntaxError is a ValueError, as bad JSON is
        raise GateSyntaxError(f"gate {row['gate_id']} ({scope}) cannot be read: {printable(exc, 200)}") from None


def _ids_param(ids: Sequence[int] | None) -> list[int] | None:
    return list(ids) if ids else None


def _selection(ids: Sequence[int] | None, datasets: Sequence[str] | None) -> dict[str, Any]:
    return {"ids": _ids_param(ids), "datasets": list(datasets) if datasets else None}


_DATASET_PREFIX = "dataset_"


def lease_params(now: datetime, owner: str, token: str, lease_seconds: float) -> dict[str, Any]:
    """The parameters of a claim: who holds the lease, its fencing token, and until when (server time)."""
    return {"owner": owner, "token": token, "now": now, "expires": now + timedelta(seconds=lease_seconds)}


def compare_and_set(conn: psycopg.Connection, statement: str, params: Mapping[str, Any], what: str) -> bool:
    """Run a compare-and-set UPDATE: True when it took (one row), False when another worker won the race.

    Greenplum with the global deadlock detector reports a concurrent update of the row as an error
    instead of a rowcount of 0: that is a lost race too.
    """
    try:
        return conn.execute(statement, params).rowcount == 1
    except psycopg.errors.DatabaseError as exc:
        if is_lost_race(exc):
            log.debug("lost the race for %s: %s", what, server_message(exc))
            return False
        raise


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

    def check_datasets_exist(self, names: Sequence[str]) -> None:
        if not names:
            return
        rows = self._with_retry(
            lambda conn: conn.execute(sql.KNOWN_DATASETS, {"names": list(names)}).fetchall(), "dataset lookup"
        )
        missing = sorted(set(names) - {row[0] for row in rows})
        if missing:
            shown = ", ".join(quoted(name, 60) for name in missing)
            raise UsageError(f"no dataset named {shown} is registered (ckpt-eval dataset list)")

    def planned(
        self, ids: Sequence[int] | None, force: bool, failed: bool, datasets: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {**_selection(ids, datasets), "now": now, "force": force, "failed": failed}
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.PLANNED, params).fetchall()

        return self._with_retry(query, "planning")

    def running_elsewhere(
        self, ids: Sequence[int] | None, datasets: Sequence[str] | None = None
    ) -> list[tuple[int, str, str]]:
        def query(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {**_selection(ids, datasets), "now": now}
            return [tuple(row) for row in conn.execute(sql.RUNNING_SELECTED, params)]  # type: ignore[misc]

        return self._with_retry(query, "listing running checkpoints")

    def status(self) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.STATUS).fetchall()

        return self._with_retry(query, "reading status")

    # -- queueing -----------------------------------------------------------------------------
    def requeue(
        self, ids: Sequence[int] | None, *, force: bool, failed: bool, datasets: Sequence[str] | None = None
    ) -> int:
        """Put finished pairs back to pending (``force``: done and failed; ``failed``: failed only)."""
        statement = sql.REQUEUE_FINISHED if force else sql.REQUEUE_FAILED if failed else None
        if statement is None:
            return 0

        def update(conn: psycopg.Connection) -> int:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            return conn.execute(statement, {**_selection(ids, datasets), "now": now}).rowcount

        return self._with_retry(update, "requeueing")

    def adopt_registered(self) -> int:
        """Make pairs of checkpoint rows inserted with a dataset the version-2 way (see sql.ADOPT_REGISTERED)."""

        def insert(conn: psycopg.Connection) -> int:
            try:
                return conn.execute(sql.ADOPT_REGISTERED).rowcount
            except psycopg.errors.UniqueViolation:  # another worker adopted the same rows just now
                return 0

        return self._with_retry(insert, "adopting registered checkpoints")

    def datasets_to_check(self, ids: Sequence[int] | None, datasets: Sequence[str] | None) -> list[str]:
        def query(conn: psycopg.Connection) -> list[str]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            return [row[0] for row in conn.execute(sql.DATASETS_TO_CHECK, {**_selection(ids, datasets), "now": now})]

        return self._with_retry(query, "finding datasets to check")

    def dataset(self, name: str) -> dict[str, Any] | None:
        def query(conn: psycopg.Connection) -> dict[str, Any] | None:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.DATASET, {"name": name}).fetchone()

        return self._with_retry(query, "reading a dataset")

    def datasets(self) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.DATASETS).fetchall()

        return self._with_retry(query, "listing datasets")

    def dataset_pairs(self, name: str) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.DATASET_PAIRS, {"name": name}).fetchall()

        return self._with_retry(query, "listing a dataset's checkpoints")

    def record_dataset_version(self, dataset: str, fingerprint: str) -> int:
        """Remember the dataset version just seen; queue again the pairs evaluated on another one."""

        def update(conn: psycopg.Connection) -> int:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {"dataset": dataset, "fingerprint": fingerprint, "now": now}
            conn.execute(sql.RECORD_DATASET_VERSION, params)
            return conn.execute(sql.REQUEUE_STALE, params).rowcount

        return self._with_retry(update, "recording a dataset version")

    def pair_gates(self, claims: Sequence[ClaimedCheckpoint]) -> dict[tuple[str, str], PairGate]:
        """What each claimed pair is gated with: its rules in force (the checkpoint's, then the dataset's,
        then the checkpoint's two threshold columns), the dataset's champion and its runs by version."""
        names = sorted({claim.name for claim in claims})
        datasets = sorted({claim.dataset for claim in claims})

        def query(conn: psycopg.Connection) -> tuple[list[dict[str, Any]], ...]:
            params = {"names": names, "datasets": datasets}
            with conn.cursor(row_factory=dict_row) as cur:
                gates = cur.execute(sql.GATES_IN_FORCE, params).fetchall()
                # The checkpoints' two columns have no change rule: without a stored gate (the usual case)
                # the champion is not needed, and a group costs one round trip, not three.
                if not gates:
                    return gates, [], []
                champions = cur.execute(sql.CURRENT_CHAMPIONS, params).fetchall()
                baselines = cur.execute(sql.CHAMPION_BASELINES, params).fetchall()
            return gates, champions, baselines

        gates, champions, baselines = self._with_retry(query, "reading the gates and champions")
        return gates_for_claims(claims, gates, champions, baselines)

    # -- the claim protocol -------------------------------------------------------------------
    def candidates(
        self, ids: Sequence[int] | None, limit: int, datasets: Sequence[str] | None = None
    ) -> list[Candidate]:
        """Claimable (checkpoint name, dataset) pairs with their architecture, oldest request first."""

        def query(conn: psycopg.Connection) -> list[Candidate]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {**_selection(ids, datasets), "now": now, "limit": limit}
            return [Candidate(row[0], row[1], row[2]) for row in conn.execute(sql.CANDIDATES, params).fetchall()]

        return self._with_retry(query, "finding pending checkpoints")

    def claim(self, pair: tuple[str, str], owner: str, token: str, lease_seconds: float) -> ClaimedCheckpoint | None:
        """Compare-and-set claim of a (checkpoint name, dataset) pair; None when another worker won the race."""
        name, dataset = pair

        def attempt(conn: psycopg.Connection) -> ClaimedCheckpoint | None:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {"name": name, "dataset": dataset, **lease_params(now, owner, token, lease_seconds)}
            if not compare_and_set(conn, sql.CLAIM, params, quoted(name)):
                return None
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(sql.CLAIMED, {"name": name, "dataset": dataset, "token": token}).fetchone()
            if row is None:  # lease taken over in between: vanishingly rare, still a lost race
                return None
            dataset_row = {
                key[len(_DATASET_PREFIX) :]: row.pop(key) for key in list(row) if key.startswith(_DATASET_PREFIX)
            }
            registered = dataset_row.get("name") is not None
            return ClaimedCheckpoint(lease_token=token, dataset_row=dataset_row if registered else None, **row)

        return self._with_retry(attempt, "claiming")

    def heartbeat(self, claim: ClaimedCheckpoint, lease_seconds: float) -> bool:
        """Extend the lease; False means the lease was lost and the work must stop."""

        def extend(conn: psycopg.Connection) -> bool:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            params = {
                **claim.key,
                "token": claim.lease_token,
                "now": now,
                "expires": now + timedelta(seconds=lease_seconds),
            }
            return conn.execute(sql.HEARTBEAT, params).rowcount == 1

        return self._with_retry(extend, "heartbeat")

    def finish(self, claim: ClaimedCheckpoint, record: RunRecord) -> int:
        """Record the run, its metrics and the job state in ONE transaction fenced by the lease token."""
        (result,) = self.finish_many([(claim, record)])
        if isinstance(result, LeaseLost):
            raise result
        return result

    def finish_many(self, results: Sequence[tuple[ClaimedCheckpoint, RunRecord]]) -> list[int | LeaseLost]:
        """Record several runs in ONE transaction, each fenced by its own lease token.

        A pair whose lease is no longer ours gets LeaseLost in its place and nothing written for it;
        the others are written (run row, metrics, job state), all in one commit. A pair whose fence
        fails because this very token already finished it (a commit acknowledgement lost with the
        connection, then retried) gets the run that was written, never a second one.
        """
        if not results:
            return []

        def write(conn: psycopg.Connection) -> list[int | LeaseLost]:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            written: list[int | LeaseLost] = []
            run_ids: list[int] = []
            metrics: list[str] = []
            labels: list[str] = []
            values: list[float] = []
            with conn.transaction():
                for claim, record in results:
                    fenced = conn.execute(
                        sql.FINISH_JOB,
                        {
                            **claim.key,
                            "status": record.job_status,
                            "now": now,
                            "token": claim.lease_token,
                            "fingerprint": record.dataset_sha256,
                        },
                    )
                    if fenced.rowcount != 1:
                        # Only on this path (rare) are the runs searched by token.
                        row = conn.execute(sql.RUNS_BY_TOKENS, {"tokens": [claim.lease_token]}).fetchone()
                        lost = LeaseLost(f"{claim.label}: lease lost to another worker; result discarded")
                        written.append(int(row[1]) if row is not None else lost)
                        continue
                    run_id = int(conn.execute(sql.INSERT_RUN, self._run_params(claim, record)).fetchone()[0])  # type: ignore[index]
                    written.append(run_id)
                    for metric, label, value in record.metrics:
                        run_ids.append(run_id)
                        metrics.append(metric)
                        labels.append(label)
                        values.append(value)
                if run_ids:
                    params = {"run_ids": run_ids, "metrics": metrics, "labels": labels, "values": values}
                    conn.execute(sql.INSERT_METRICS, params)
            return written

        return self._with_retry(write, "recording the result")

    def release(self, pair: tuple[str, str], token: str) -> None:
        """Hand a claimed pair back (pending), if ``token`` still holds its lease; otherwise nothing."""
        name, dataset = pair

        def update(conn: psycopg.Connection) -> None:
            now = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            conn.execute(sql.RELEASE_JOB, {"name": name, "dataset": dataset, "token": token, "now": now})

        self._with_retry(update, "releasing a lease")

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
            "arch_package": record.arch_package,
            "arch_version": record.arch_version,
            "gate_results": record.gate_results,
            "gate_note": record.gate_note,
            "curves": record.curves,
        }

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        *,
        name: str,
        path: str,
        arch: str,
        datasets: Sequence[str],
        sha256: str,
        min_accuracy: float | None,
        min_f1_macro: float | None,
    ) -> int:
        """Register a checkpoint and one pending pair per dataset, in one transaction."""
        if not datasets:
            raise UsageError("a checkpoint needs at least one dataset")
        params = {
            "name": name,
            "path": path,
            "arch": arch,
            "dataset": datasets[0],
            "sha256": sha256,
            "min_accuracy": min_accuracy,
            "min_f1_macro": min_f1_macro,
        }
        self.check_datasets_exist(datasets)

        def insert(conn: psycopg.Connection) -> int:
            if conn.execute(sql.NAME_TAKEN, params).fetchone() is not None:
                raise UsageError(f"a checkpoint named {quoted(name)} is already registered")
            try:
                with conn.transaction():
                    checkpoint_id = int(conn.execute(sql.REGISTER, params).fetchone()[0])  # type: ignore[index]
                    for dataset in dict.fromkeys(datasets):
                        conn.execute(sql.ATTACH, {"name": name, "dataset": dataset, "checkpoint_id": checkpoint_id})
                return checkpoint_id
            except psycopg.errors.UniqueViolation:
                raise UsageError(f"a checkpoint named {quoted(name)} is already registered") from None
            except psycopg.errors.CheckViolation as exc:
                raise UsageError(f"the registry refused the checkpoint: {server_message(exc)}") from None

        return self._with_retry(insert, "registering")

    def attach(self, checkpoint: str, dataset: str) -> tuple[int, str]:
        """Add the pending pair (checkpoint, dataset); CHECKPOINT is a name or an id."""
        self.check_datasets_exist([dataset])
        # An id only when it is one: ASCII digits within bigint (str.isdigit() also accepts '²').
        is_id = checkpoint.isascii() and checkpoint.isdigit() and len(checkpoint) <= 19 and int(checkpoint) < 2**63
        handle_id = int(checkpoint) if is_id else None

        def insert(conn: psycopg.Connection) -> tuple[int, str]:
            row = conn.execute(sql.CHECKPOINT_BY_HANDLE, {"handle": checkpoint, "id": handle_id}).fetchone()
            if row is None:
                raise UsageError(f"no checkpoint named or numbered {quoted(checkpoint, 60)}")
            checkpoint_id, name = int(row[0]), str(row[1])
            params = {"name": name, "dataset": dataset, "checkpoint_id": checkpoint_id}
            if conn.execute(sql.PAIR_EXISTS, params).fetchone() is not None:
                raise UsageError(f"checkpoint {checkpoint_id} {quoted(name)} is already attached to {quoted(dataset)}")
            try:
                conn.execute(sql.ATTACH, params)
            except psycopg.errors.UniqueViolation:
                raise UsageError(
                    f"checkpoint {checkpoint_id} {quoted(name)} is already attached to {quoted(dataset)}"
                ) from None
            return checkpoint_id, name

        return self._with_retry(insert, "attaching a dataset")

    def add_dataset(self, definition: Mapping[str, Any]) -> None:
        """Insert a dataset definition (changing or deleting one is the owner's job)."""
        params = {key: definition.get(key) for key in sql.ADD_DATASET_KEYS}
        name = str(params["name"])

        def insert(conn: psycopg.Connection) -> None:
            if conn.execute(sql.DATASET, {"name": name}).fetchone() is not None:
                raise UsageError(f"a dataset named {quoted(name)} is already registered")
            try:
                conn.execute(sql.ADD_DATASET, params)
            except psycopg.errors.UniqueViolation:
                raise UsageError(f"a dataset named {quoted(name)} is already registered") from None
            except psycopg.errors.CheckViolation as exc:
                raise UsageError(f"the registry refused the dataset: {server_message(exc)}") from None

        self._with_retry(insert, "adding a dataset")
