"""An in-memory stand-in for db.repository.Repository, to test the job and the CLI in-process.

It keeps the same contract as the SQL (compare-and-set claims, the lease-token fence, requeueing
by selection and by dataset version) so the job's logic is exercised without a server; the real
repository is tested against PostgreSQL in tests/integration and tests/reliability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ckpt_eval.db.repository import Candidate, ClaimedCheckpoint, RunRecord, gates_for_claims
from ckpt_eval.errors import LeaseLost, UsageError
from ckpt_eval.gates import PairGate


@dataclass
class Pair:
    checkpoint_name: str
    dataset: str
    checkpoint_id: int
    status: str = "pending"
    attempt: int = 0
    lease_token: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    dataset_fingerprint: str | None = None


@dataclass
class FakeRepository:
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets_by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], Pair] = field(default_factory=dict)
    runs: list[tuple[ClaimedCheckpoint, RunRecord]] = field(default_factory=list)
    clock: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    steal_on_finish: bool = False  # another worker takes every lease just before the finish
    closed: int = 0
    released: list[tuple[tuple[str, str], str]] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)  # ckpt_eval.gates rows, oldest first
    promotions: list[dict[str, Any]] = field(default_factory=list)  # ckpt_eval.champions rows, oldest first

    # -- set-up helpers of the tests ---------------------------------------------------------------
    def add_checkpoint(self, name: str, path: str, arch: str, sha256: str, datasets: Sequence[str]) -> int:
        checkpoint_id = len(self.checkpoints) + 1
        self.checkpoints[name] = {
            "checkpoint_id": checkpoint_id, "name": name, "path": path, "arch": arch, "sha256": sha256,
            "min_accuracy": None, "min_f1_macro": None,
        }  # fmt: skip
        for dataset in datasets:
            self.pairs[(name, dataset)] = Pair(name, dataset, checkpoint_id)
        return checkpoint_id

    def add_dataset_row(self, name: str, kind: str, **fields: Any) -> None:
        self.datasets_by_name[name] = {"name": name, "kind": kind, "split": "test", **fields}

    def add_gate(self, rules: str, checkpoint_name: str | None = None, dataset: str | None = None) -> None:
        self.gates.append({"gate_id": len(self.gates) + 1, "checkpoint_name": checkpoint_name, "dataset": dataset,
                           "rules": rules})  # fmt: skip

    def promote(self, checkpoint_name: str, dataset: str) -> None:
        self.promotions.append({"promotion_id": len(self.promotions) + 1, "dataset": dataset,
                                "checkpoint_name": checkpoint_name,
                                "checkpoint_id": self.checkpoints[checkpoint_name]["checkpoint_id"]})  # fmt: skip

    # -- the Repository interface the job uses -------------------------------------------------------
    def close(self) -> None:
        self.closed += 1

    def _selected(self, pair: Pair, ids: Sequence[int] | None, datasets: Sequence[str] | None) -> bool:
        return (not ids or pair.checkpoint_id in ids) and (not datasets or pair.dataset in datasets)

    def _claimable(self, pair: Pair) -> bool:
        return pair.status == "pending" or (
            pair.status == "running" and pair.lease_expires_at is not None and pair.lease_expires_at < self.clock
        )

    def check_ids_exist(self, ids: Sequence[int]) -> None:
        known = {row["checkpoint_id"] for row in self.checkpoints.values()}
        missing = sorted(set(ids) - known)
        if missing:
            raise UsageError(f"no checkpoint with id {', '.join(map(str, missing))}")

    def check_datasets_exist(self, names: Sequence[str]) -> None:
        missing = sorted(set(names) - set(self.datasets_by_name))
        if missing:
            raise UsageError(f"no dataset named {', '.join(missing)} is registered")

    def adopt_registered(self) -> int:
        return 0

    def running_elsewhere(self, ids: Sequence[int] | None, datasets: Sequence[str] | None = None) -> list[Any]:
        return [
            (p.checkpoint_id, p.checkpoint_name, p.dataset)
            for p in self.pairs.values()
            if p.status == "running" and not self._claimable(p) and self._selected(p, ids, datasets)
        ]

    def requeue(self, ids: Sequence[int] | None, *, force: bool, failed: bool, datasets: Any = None) -> int:
        wanted = {"done", "failed"} if force else {"failed"} if failed else set()
        count = 0
        for pair in self.pairs.values():
            if pair.status in wanted and self._selected(pair, ids, datasets):
                pair.status = "pending"
                count += 1
        return count

    def datasets_to_check(self, ids: Sequence[int] | None, datasets: Sequence[str] | None) -> list[str]:
        busy = {p.dataset for p in self.pairs.values() if self._claimable(p)}
        return sorted(
            {
                p.dataset
                for p in self.pairs.values()
                if p.status in ("done", "failed") and p.dataset_fingerprint and self._selected(p, ids, datasets)
            }
            - busy
        )

    def dataset(self, name: str) -> dict[str, Any] | None:
        return self.datasets_by_name.get(name)

    def record_dataset_version(self, dataset: str, fingerprint: str) -> int:
        if dataset in self.datasets_by_name:
            self.datasets_by_name[dataset]["fingerprint"] = fingerprint
        count = 0
        for pair in self.pairs.values():
            stale = pair.dataset_fingerprint is not None and pair.dataset_fingerprint != fingerprint
            if pair.dataset == dataset and pair.status in ("done", "failed") and stale:
                pair.status = "pending"
                count += 1
        return count

    def candidates(self, ids: Sequence[int] | None, limit: int, datasets: Any = None) -> list[Candidate]:
        claimable = [key for key, p in self.pairs.items() if self._claimable(p) and self._selected(p, ids, datasets)]
        return [Candidate(name, dataset, self.checkpoints[name]["arch"]) for name, dataset in claimable[:limit]]

    def claim(self, pair: tuple[str, str], owner: str, token: str, lease_seconds: float) -> ClaimedCheckpoint | None:
        state = self.pairs[pair]
        if not self._claimable(state):
            return None
        state.status, state.attempt, state.lease_token, state.lease_owner = "running", state.attempt + 1, token, owner
        state.lease_expires_at = self.clock + timedelta(seconds=lease_seconds)
        checkpoint = self.checkpoints[pair[0]]
        return ClaimedCheckpoint(
            **checkpoint, dataset=pair[1], attempt=state.attempt, lease_token=token,
            dataset_row=self.datasets_by_name.get(pair[1]),
        )  # fmt: skip

    def heartbeat(self, claim: ClaimedCheckpoint, lease_seconds: float) -> bool:
        return self.pairs[(claim.name, claim.dataset)].lease_token == claim.lease_token

    def pair_gates(self, claims: Sequence[ClaimedCheckpoint]) -> dict[tuple[str, str], PairGate]:
        """As the SQL: each scope's latest gate, each dataset's latest promotion, and the champion's latest
        succeeded run per dataset version with its overall metrics."""
        in_force = {(g["checkpoint_name"], g["dataset"]): g for g in self.gates}
        champions = {p["dataset"]: p for p in self.promotions}
        baselines = []
        latest: dict[tuple[str, str], int] = {}
        for run_id, (claim, record) in enumerate(self.runs, start=1):
            champion = champions.get(claim.dataset)
            if champion and champion["checkpoint_id"] == claim.checkpoint_id and record.status == "succeeded":
                latest[(claim.dataset, record.dataset_sha256 or "")] = run_id
        for (dataset, version), run_id in latest.items():
            claim, record = self.runs[run_id - 1]
            baselines += [
                {"dataset": dataset, "dataset_sha256": version, "run_id": run_id, "checkpoint_name": claim.name,
                 "metric": metric, "value": value}
                for metric, label, value in record.metrics if label == ""
            ]  # fmt: skip
        return gates_for_claims(claims, list(in_force.values()), list(champions.values()), baselines)

    def finish_many(self, results: Sequence[tuple[ClaimedCheckpoint, RunRecord]]) -> list[int | LeaseLost]:
        written: list[int | LeaseLost] = []
        for claim, record in results:
            try:
                written.append(self.finish(claim, record))
            except LeaseLost as exc:
                written.append(exc)
        return written

    def finish(self, claim: ClaimedCheckpoint, record: RunRecord) -> int:
        state = self.pairs[(claim.name, claim.dataset)]
        if self.steal_on_finish:
            state.lease_token = "stolen"
        if state.status != "running" or state.lease_token != claim.lease_token:
            raise LeaseLost(f"{claim.label}: lease lost to another worker; result discarded")
        state.status, state.lease_token, state.lease_owner, state.lease_expires_at = record.job_status, None, None, None
        state.dataset_fingerprint = record.dataset_sha256
        self.runs.append((claim, record))
        return len(self.runs)

    def release(self, pair: tuple[str, str], token: str) -> None:
        self.released.append((pair, token))
        state = self.pairs[pair]
        if state.lease_token == token and state.status == "running":
            state.status, state.lease_token, state.lease_owner, state.lease_expires_at = "pending", None, None, None


class FakeRegistry(FakeRepository):
    """The FakeRepository plus what the registry commands use, as a context manager like Repository."""

    def __enter__(self) -> FakeRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_schema(self) -> int:
        return 3

    def datasets(self) -> list[dict[str, Any]]:
        return [self.datasets_by_name[name] for name in sorted(self.datasets_by_name)]

    def dataset_pairs(self, name: str) -> list[dict[str, Any]]:
        return [
            {
                "checkpoint_id": p.checkpoint_id,
                "checkpoint_name": p.checkpoint_name,
                "status": p.status,
                "dataset_fingerprint": p.dataset_fingerprint,
            }
            for p in self.pairs.values()
            if p.dataset == name
        ]

    def add_dataset(self, definition: dict[str, Any]) -> None:
        if definition["name"] in self.datasets_by_name:
            raise UsageError(f"a dataset named '{definition['name']}' is already registered")
        self.datasets_by_name[definition["name"]] = dict(definition)

    def attach(self, checkpoint: str, dataset: str) -> tuple[int, str]:
        self.check_datasets_exist([dataset])
        row = self.checkpoints.get(checkpoint) or next(
            (r for r in self.checkpoints.values() if str(r["checkpoint_id"]) == checkpoint), None
        )
        if row is None:
            raise UsageError(f"no checkpoint named or numbered '{checkpoint}'")
        if (row["name"], dataset) in self.pairs:
            raise UsageError("already attached")
        self.pairs[(row["name"], dataset)] = Pair(row["name"], dataset, row["checkpoint_id"])
        return row["checkpoint_id"], row["name"]


@dataclass
class FakeChunk:
    low_key: int
    high_key: int
    planned_rows: int
    status: str = "pending"
    attempt: int = 0
    lease_token: str | None = None
    rows_scored: int | None = None
    rows_skipped: int | None = None
    error: str | None = None


@dataclass
class FakeScoringRepository:
    """An in-memory stand-in for db.scoring.ScoringRepository: one job, its input rows, runs, chunks, output.

    The contract of the SQL: a run starts only when none is active (compare-and-set), chunks are claimed
    when pending, finished only by the token that holds them, and a chunk reads the rows of its key range
    that have no prediction from the checkpoint (every row when rescoring).
    """

    job: Any  # ScoringJob
    rows: dict[int, list[object]]  # key -> feature values (None: NULL, str: text)
    verdicts: list[tuple[str, str, str]] = field(default_factory=lambda: [("breast_cancer", "succeeded", "pass")])
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    chunks: dict[tuple[int, int], FakeChunk] = field(default_factory=dict)
    output: list[tuple[object, ...]] = field(default_factory=list)
    steal_before_finish: bool = False
    closed: int = 0

    def close(self) -> None:
        self.closed += 1

    def __enter__(self) -> FakeScoringRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_schema(self) -> int:
        return 4

    def scoring_job(self, name: str) -> Any:
        return self.job if name == self.job.name else None

    def scoring_job_names(self) -> list[str]:
        return [self.job.name]

    def checkpoint_verdicts(self, checkpoint_id: int) -> list[tuple[str, str, str]]:
        return list(self.verdicts)

    def check_output(self, job: Any) -> None:
        pass

    def check_input(self, job: Any) -> None:
        pass

    def _scored(self, key: int) -> bool:
        return any(row[0] == key and row[2] == self.job.checkpoint_id for row in self.output)

    def plan(self, job: Any, checkpoint_id: int, rescore: bool, limit: int | None) -> list[Any]:
        from ckpt_eval.db.scoring import ChunkPlan

        keys = sorted(k for k in self.rows if rescore or not self._scored(k))[:limit]
        size = job.chunk_rows
        return [
            ChunkPlan(n, keys[start], keys[min(start + size, len(keys)) - 1], len(keys[start : start + size]))
            for n, start in enumerate(range(0, len(keys), size))
        ]

    def start_run(self, job: Any, plan: Sequence[Any], **fields: Any) -> int | None:
        if self.job.active_run is not None:
            return None
        run_id = len(self.runs) + 1
        self.runs[run_id] = {
            "scoring_run_id": run_id,
            "status": "running",
            "planned_rows": sum(c.planned_rows for c in plan),
            **fields,
        }
        for chunk in plan:
            self.chunks[(run_id, chunk.chunk_no)] = FakeChunk(chunk.low_key, chunk.high_key, chunk.planned_rows)
        self._set_active(run_id)
        return run_id

    def _set_active(self, run_id: int | None) -> None:
        from dataclasses import replace

        self.job = replace(self.job, active_run=run_id)

    def scoring_run(self, run_id: int) -> dict[str, Any] | None:
        return self.runs.get(run_id)

    def claimable_chunks(self, run_id: int, limit: int) -> list[int]:
        return [n for (r, n), c in sorted(self.chunks.items()) if r == run_id and c.status == "pending"][:limit]

    def claim_chunk(self, run_id: int, chunk_no: int, owner: str, token: str, lease_seconds: float) -> Any:
        from ckpt_eval.db.scoring import ClaimedChunk

        chunk = self.chunks[(run_id, chunk_no)]
        if chunk.status != "pending":
            return None
        chunk.status, chunk.lease_token, chunk.attempt = "running", token, chunk.attempt + 1
        return ClaimedChunk(run_id, chunk_no, chunk.low_key, chunk.high_key, chunk.planned_rows, chunk.attempt, token)

    def heartbeat_chunk(self, claimed: Any, lease_seconds: float) -> bool:
        return self.chunks[(claimed.scoring_run_id, claimed.chunk_no)].lease_token == claimed.lease_token

    def release_chunk(self, claimed: Any) -> None:
        chunk = self.chunks[(claimed.scoring_run_id, claimed.chunk_no)]
        if chunk.lease_token == claimed.lease_token and chunk.status == "running":
            chunk.status, chunk.lease_token = "pending", None

    def read_chunk(self, job: Any, claimed: Any, rescore: bool, consume: Any) -> Any:
        import csv
        import io

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for key in sorted(self.rows):
            if claimed.low_key <= key <= claimed.high_key and (rescore or not self._scored(key)):
                writer.writerow([key, *("" if v is None else v for v in self.rows[key])])
        return consume([text.getvalue().encode()])

    def finish_chunk(self, job: Any, claimed: Any, *, failed: bool, data: Any, rows_scored: int,
                     rows_skipped: int, error: str | None) -> bool:  # fmt: skip
        chunk = self.chunks[(claimed.scoring_run_id, claimed.chunk_no)]
        if self.steal_before_finish:
            chunk.lease_token = "stolen"
        if chunk.status != "running" or chunk.lease_token != claimed.lease_token:
            return False
        chunk.status = "failed" if failed else "done"
        chunk.rows_scored, chunk.rows_skipped, chunk.error = rows_scored, rows_skipped, error
        if not failed:
            self.output.extend(decode_binary_copy(b"".join(data(datetime(2026, 1, 1, tzinfo=UTC)))))
        return True

    def run_progress(self, run_id: int) -> Any:
        from ckpt_eval.db.scoring import RunProgress

        mine = [c for (r, _), c in self.chunks.items() if r == run_id]
        open_chunks = [c for c in mine if c.status in ("pending", "running")]
        return RunProgress(
            len(mine), len(open_chunks), sum(c.status == "failed" for c in mine),
            sum(c.rows_scored or 0 for c in mine), sum(c.rows_skipped or 0 for c in mine),
            sum(c.planned_rows for c in open_chunks),
        )  # fmt: skip

    def complete_run(self, job: Any, run_id: int) -> str | None:
        progress = self.run_progress(run_id)
        if progress.open_chunks:
            return None
        status = "failed" if progress.failed_chunks else "done"
        if self.runs[run_id]["status"] == "running":
            self.runs[run_id].update(status=status, rows_scored=progress.rows_scored)
        if self.job.active_run == run_id:
            self._set_active(None)
        return status


def decode_binary_copy(data: bytes) -> list[tuple[object, ...]]:
    """The rows of a binary COPY stream of the scoring output layout (what the server would store)."""
    import struct

    from ckpt_eval.copy_format import SIGNATURE, TRAILER

    assert data.startswith(SIGNATURE), "no binary COPY signature"
    assert data.endswith(TRAILER), "no binary COPY trailer"
    body, position, rows = data[len(SIGNATURE) : -len(TRAILER)], 0, []

    def take(size: int) -> bytes:
        nonlocal position
        chunk = body[position : position + size]
        assert len(chunk) == size, "truncated tuple"
        position += size
        return chunk

    while position < len(body):
        (fields,) = struct.unpack(">h", take(2))
        values: list[object] = []
        for kind in ("i8", "i8", "i8", "i4", "float8[]", "f8", "timestamptz")[:fields]:
            (length,) = struct.unpack(">i", take(4))
            if length == -1:
                values.append(None)
                continue
            raw = take(length)
            if kind == "text":
                values.append(raw.decode("utf-8"))
            elif kind == "float8[]":
                ndim, _, element, size, lower = struct.unpack(">iiiii", raw[:20])
                assert (ndim, element, lower) == (1, 701, 1)
                values.append([struct.unpack(">d", raw[24 + 12 * i : 32 + 12 * i])[0] for i in range(size)])
            elif kind == "timestamptz":
                values.append(datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=struct.unpack(">q", raw)[0]))
            else:
                values.append(struct.unpack({"i8": ">q", "i4": ">i", "f8": ">d"}[kind], raw)[0])
        rows.append(tuple(values))
    return rows
