"""The evaluation job: claim pending (checkpoint, dataset) pairs, evaluate them, record each result exactly once.

Pairs that share a dataset and an architecture are claimed in groups (at most ``group_size``) and
evaluated together, one pass over the data for the whole group (runs.py). Each pair keeps its own
lease (one heartbeat thread extends them all) and its own fence: the results known together (those
of one pass) are written in one transaction, in which each pair's result is written only if its own
lease token still holds.

Before claiming, the job makes pairs of checkpoint rows inserted the version-2 way, and checks the
datasets whose pairs are all finished for a new version (a changed fingerprint queues those pairs
again); a dataset that pending pairs will read anyway is fingerprinted by that read instead.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .allocator import retain_freed_memory
from .config import CLAIM_BATCH, Settings, Worker
from .datasets import TableReader, open_dataset
from .db.repository import Candidate, ClaimedCheckpoint, Repository, RunRecord
from .errors import CkptEvalError, LeaseLost
from .isolation import CheckpointParser
from .runs import dataset_definition, evaluate_group
from .text import quoted

log = logging.getLogger(__name__)

EMBEDDED_KINDS = ("digits", "breast_cancer")


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: which checkpoints and datasets, and whether to queue finished pairs again."""

    ids: tuple[int, ...] = ()
    force: bool = False
    failed: bool = False
    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    checkpoint_id: int
    name: str
    dataset: str
    attempt: int
    run_id: int | None
    status: str  # succeeded | failed | lost
    verdict: str | None
    accuracy: float | None
    f1_macro: float | None
    loss: float | None
    error: str | None
    duration_seconds: float
    verdict_reasons: str | None = None  # the failed gate requirements, in words

    @property
    def ok(self) -> bool:
        return self.status == "succeeded" and self.verdict == "pass"


@dataclass(frozen=True)
class JobSummary:
    outcomes: tuple[Outcome, ...]

    @property
    def recorded(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status != "lost")

    @property
    def all_passed(self) -> bool:
        return all(o.ok for o in self.recorded)


class Heartbeat:
    """Extends the leases of claimed pairs from a separate connection while the main thread evaluates.

    One thread and one connection for a whole group. A pair whose lease was taken over is marked
    lost (and stops being extended); a pair that was finished is dropped with ``finished``.
    """

    def __init__(
        self,
        repository: Repository,
        claims: ClaimedCheckpoint | Sequence[ClaimedCheckpoint],
        lease_seconds: float,
        interval: float,
    ) -> None:
        self._repository = repository
        self._claims = [claims] if isinstance(claims, ClaimedCheckpoint) else list(claims)
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._lost_tokens: set[str] = set()
        self.lost = threading.Event()  # set when any lease of the group is lost
        first = self._claims[0] if self._claims else None
        name = f"heartbeat-{first.checkpoint_id}-{first.dataset[:40]}" if first else "heartbeat"
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def is_lost(self, claim: ClaimedCheckpoint) -> bool:
        return claim.lease_token in self._lost_tokens

    def finished(self, claim: ClaimedCheckpoint) -> None:
        """Stop extending ``claim``'s lease (its result is about to be written, or it was handed back)."""
        with self._guard:
            self._claims = [c for c in self._claims if c.lease_token != claim.lease_token]

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._guard:
                claims = list(self._claims)
            for claim in claims:
                if self._stop.is_set():
                    return
                try:
                    if not self._repository.heartbeat(claim, self._lease_seconds):
                        with self._guard:
                            still_ours = any(c.lease_token == claim.lease_token for c in self._claims)
                            self._claims = [c for c in self._claims if c.lease_token != claim.lease_token]
                        if still_ours:  # not a pair finished meanwhile
                            log.warning("%s: lease lost to another worker", claim.label)
                            self._lost_tokens.add(claim.lease_token)
                            self.lost.set()
                except CkptEvalError as exc:
                    # The finish step re-checks the token; keep trying until the lease would be gone anyway.
                    log.warning("%s: heartbeat failed: %s", claim.label, exc)


def _metric(record: RunRecord, name: str) -> float | None:
    for metric, label, value in record.metrics:
        if metric == name and label == "":
            return value
    return None


class Job:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        heartbeat_repository: Callable[[], Repository],
        parser: CheckpointParser,
        worker: Worker | None = None,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
        read_table: TableReader | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.heartbeat_repository = heartbeat_repository
        self.parser = parser
        self.read_table = read_table
        self.worker = worker or Worker.current()
        self.on_outcome = on_outcome
        # Lease token -> pair of every claim made and not yet recorded, registered before the claim
        # is sent: an interrupt while it commits must still find it to hand it back.
        self._held: dict[str, tuple[str, str]] = {}

    def prepare(self, selection: Selection) -> None:
        """Validate the selection, adopt version-2 rows, queue pairs again when asked or when their data changed."""
        ids = selection.ids or None
        datasets = selection.datasets or None
        if selection.ids:
            self.repository.check_ids_exist(selection.ids)
        if selection.datasets:
            self.repository.check_datasets_exist(selection.datasets)
        adopted = self.repository.adopt_registered()
        if adopted:
            log.info("made %d (checkpoint, dataset) pair(s) of checkpoints registered with a dataset", adopted)
        if selection.force or selection.failed:
            for checkpoint_id, name, dataset in self.repository.running_elsewhere(ids, datasets):
                log.warning(
                    "checkpoint %d %s on %s is being evaluated by another worker; left alone",
                    checkpoint_id,
                    quoted(name),
                    quoted(dataset, 60),
                )
            queued = self.repository.requeue(ids, force=selection.force, failed=selection.failed, datasets=datasets)
            log.info("queued %d pair(s) again", queued)
        self.refresh_dataset_versions(selection)

    def refresh_dataset_versions(self, selection: Selection) -> None:
        """Fingerprint the datasets whose pairs are all finished; a new version queues its pairs again.

        One read per dataset (for a table: the rows streamed once, hashed, not kept). A dataset that
        cannot be read now is left for its runs to report. Data embedded in an installed package
        changes only with the package; it is not read (nor scikit-learn imported) just to check.
        """
        for name in self.repository.datasets_to_check(selection.ids or None, selection.datasets or None):
            row = self.repository.dataset(name)
            if row is None or row["kind"] in EMBEDDED_KINDS:
                continue
            try:
                data = open_dataset(dataset_definition(row), self.settings.data_dir, self.read_table)
                fingerprint = data.fingerprint()
            except CkptEvalError as exc:
                log.warning("dataset %s: cannot check its version: %s", quoted(name, 60), exc)
                continue
            self._record_dataset_version(name, fingerprint)

    def run(self, selection: Selection) -> JobSummary:
        # From the start: reading, hashing and loading checkpoints allocate buffers of their size too.
        retain_freed_memory()
        self.prepare(selection)
        outcomes: list[Outcome] = []
        ids: Sequence[int] | None = selection.ids or None
        datasets: Sequence[str] | None = selection.datasets or None
        tried: set[tuple[str, str]] = set()
        try:
            while True:
                candidates = [c for c in self.repository.candidates(ids, CLAIM_BATCH, datasets) if c.pair not in tried]
                if not candidates:
                    break
                for group in self._claimed_groups(candidates, tried):
                    outcomes.extend(self._evaluate_and_record(group))
        except BaseException:
            # Interrupted (or a database failure), wherever it struck: hand back the pairs claimed and
            # not recorded, so the next run takes them at once instead of waiting for their leases.
            self._release_held()
            raise
        return JobSummary(tuple(outcomes))

    def _claimed_groups(
        self, candidates: Sequence[Candidate], tried: set[tuple[str, str]]
    ) -> Iterator[list[ClaimedCheckpoint]]:
        """Groups of claimed pairs sharing a dataset and an architecture, at most ``group_size`` each.

        A group is claimed only when the previous one has been evaluated (a generator), so no lease
        waits on another group's evaluation.
        """
        by_kind: dict[tuple[str, str | None], list[Candidate]] = {}
        for candidate in candidates:
            by_kind.setdefault((candidate.dataset, candidate.arch), []).append(candidate)
        for members in by_kind.values():
            queue = deque(members)
            while queue:
                group: list[ClaimedCheckpoint] = []
                while queue and len(group) < self.settings.group_size:
                    candidate = queue.popleft()
                    tried.add(candidate.pair)
                    token = uuid.uuid4().hex
                    self._held[token] = candidate.pair
                    claim = self.repository.claim(candidate.pair, self.worker.owner, token, self.settings.lease_seconds)
                    if claim is None:
                        del self._held[token]
                        shown = f"{quoted(candidate.name)} on {quoted(candidate.dataset, 60)}"
                        log.debug("%s claimed by another worker", shown)
                        continue
                    group.append(claim)
                if group:
                    yield group

    def _evaluate_and_record(self, claims: Sequence[ClaimedCheckpoint]) -> list[Outcome]:
        for claim in claims:
            log.info("evaluating %s (arch %s, attempt %d)", claim.label, quoted(claim.arch, 60), claim.attempt)
        outcomes: list[Outcome] = []
        versions: dict[str, str] = {}
        lease, interval = self.settings.lease_seconds, self.settings.heartbeat_seconds
        heartbeat_repo = self.heartbeat_repository()
        try:
            with Heartbeat(heartbeat_repo, claims, lease, interval) as beat:
                gates = self.repository.pair_gates(claims)
                batches = evaluate_group(
                    claims, self.settings, self.worker, beat.is_lost, self.parser, self.read_table, gates
                )
                for batch in batches:
                    for claim, _ in batch:
                        beat.finished(claim)
                    for (claim, record), outcome in zip(batch, self._record(batch), strict=True):
                        self._held.pop(claim.lease_token, None)
                        if record is not None and record.dataset_sha256 is not None and outcome.status != "lost":
                            versions[claim.dataset] = record.dataset_sha256
                        outcomes.append(outcome)
                        self.on_outcome(outcome)
        finally:
            heartbeat_repo.close()
        for dataset, fingerprint in versions.items():
            self._record_dataset_version(dataset, fingerprint)
        return outcomes

    def _record(self, batch: Sequence[tuple[ClaimedCheckpoint, RunRecord | None]]) -> list[Outcome]:
        """Write the batch's results in one transaction, each fenced by its lease token; a lost lease writes nothing."""
        to_write = [(claim, record) for claim, record in batch if record is not None]
        written = iter(self.repository.finish_many(to_write))
        outcomes = []
        for claim, record in batch:
            if record is None:
                outcomes.append(self._lost(claim, "lease lost during evaluation; stopped without writing"))
                continue
            run_id = next(written)
            if isinstance(run_id, LeaseLost):
                outcomes.append(self._lost(claim, str(run_id)))
                continue
            outcomes.append(self._outcome(claim, record, run_id))
        return outcomes

    def _outcome(self, claim: ClaimedCheckpoint, record: RunRecord, run_id: int) -> Outcome:
        outcome = Outcome(
            checkpoint_id=claim.checkpoint_id,
            name=claim.name,
            dataset=claim.dataset,
            attempt=claim.attempt,
            run_id=run_id,
            status=record.status,
            verdict=record.verdict,
            accuracy=_metric(record, "accuracy"),
            f1_macro=_metric(record, "f1_macro"),
            loss=_metric(record, "loss"),
            error=record.error,
            duration_seconds=record.duration_seconds,
            verdict_reasons=record.verdict_reasons,
        )
        if record.status == "failed":
            log.error("%s failed: %s", claim.label, record.error)
        else:
            log.info(
                "%s: accuracy %.4f, macro-F1 %.4f, verdict %s%s",
                claim.label,
                outcome.accuracy,
                outcome.f1_macro,
                record.verdict,
                f" ({record.verdict_reasons})" if record.verdict_reasons else "",
            )
        return outcome

    def _record_dataset_version(self, dataset: str, fingerprint: str) -> None:
        requeued = self.repository.record_dataset_version(dataset, fingerprint)
        if requeued:
            log.info("dataset %s has a new version: %d pair(s) queued again", quoted(dataset, 60), requeued)

    def _lost(self, claim: ClaimedCheckpoint, reason: str) -> Outcome:
        log.warning("%s: %s", claim.label, reason)
        return Outcome(
            claim.checkpoint_id,
            claim.name,
            claim.dataset,
            claim.attempt,
            None,
            "lost",
            None,
            None,
            None,
            None,
            reason,
            0.0,
        )

    def _release_held(self) -> None:
        """Hand back every held pair; never masks what is being raised (an unreleased lease expires on its own).

        The release is fenced by the lease token, so a pair whose result was written meanwhile, or
        whose claim never committed, is left as it is. The interrupt may have cut the job's
        connection in the middle of a statement: what fails there is tried once more on a new one.
        """
        held, self._held = self._held, {}
        for opener in (lambda: self.repository, self.heartbeat_repository):
            if not held:
                return
            repository = None
            try:
                repository = opener()
                for token, pair in list(held.items()):
                    repository.release(pair, token)
                    del held[token]
            except Exception:
                log.debug("could not hand back %d pair(s)", len(held), exc_info=True)
            finally:
                if repository is not None and repository is not self.repository:
                    repository.close()
