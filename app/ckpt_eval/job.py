"""The evaluation job: claim pending (checkpoint, dataset) pairs, evaluate each, record the result exactly once.

Before claiming, the job makes pairs of checkpoint rows inserted the version-2 way, and checks the
datasets whose pairs are all finished for a new version (a changed fingerprint queues those pairs
again); a dataset that pending pairs will read anyway is fingerprinted by that read instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import __version__
from .architectures import Architecture, get_architecture
from .checkpoints import load_checkpoint
from .config import CLAIM_BATCH, Settings, Worker
from .datasets import IN_MEMORY_KINDS, DatasetDefinition, TableReader, check_compatible, open_dataset
from .db.repository import ClaimedCheckpoint, Repository, RunRecord
from .errors import CkptEvalError, DatasetError, LeaseLost
from .evaluate import EvaluationAborted, evaluate_model
from .isolation import CheckpointParser, ParserUnavailable
from .metrics import Gate, Metrics, apply_gate
from .text import printable, quoted

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
    """Extends the lease from a separate connection while the main thread evaluates."""

    def __init__(self, repository: Repository, claim: ClaimedCheckpoint, lease_seconds: float, interval: float) -> None:
        self._repository = repository
        self._claim = claim
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{claim.checkpoint_id}-{claim.dataset[:40]}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._repository.heartbeat(self._claim, self._lease_seconds):
                    log.warning("%s: lease lost to another worker", self._claim.label)
                    self.lost.set()
                    return
            except CkptEvalError as exc:
                # The finish step re-checks the token; keep trying until the lease would be gone anyway.
                log.warning("%s: heartbeat failed: %s", self._claim.label, exc)


def dataset_definition(row: Mapping[str, Any]) -> DatasetDefinition:
    """A ckpt_eval.datasets row as the datasets package's definition (arrays become tuples)."""

    def names(value: Sequence[str] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(value)

    return DatasetDefinition(
        name=row["name"],
        kind=row["kind"],
        source=row.get("source"),
        split=row.get("split") or "test",
        feature_columns=names(row.get("feature_columns")),
        label_column=row.get("label_column"),
        class_names=names(row.get("class_names")),
        fingerprint=row.get("fingerprint"),
    )


def evaluate_claim(
    claim: ClaimedCheckpoint,
    settings: Settings,
    worker: Worker,
    should_stop: Callable[[], bool],
    parser: CheckpointParser,
    read_table: TableReader | None = None,
) -> RunRecord:
    """Evaluate one claimed pair. A bad checkpoint, architecture or dataset becomes a failed RunRecord."""
    gate = Gate.from_registry(claim.min_accuracy, claim.min_f1_macro)
    started_wall = datetime.now().astimezone()
    started = time.monotonic()
    dataset_sha256 = checkpoint_sha256 = None
    architecture: Architecture | None = None
    metrics: Metrics | None = None
    error: str | None = None
    try:
        if claim.dataset_row is None:
            raise DatasetError(f"dataset {quoted(claim.dataset, 60)} is not registered (ckpt-eval dataset list)")
        architecture = get_architecture(claim.arch)
        data = open_dataset(dataset_definition(claim.dataset_row), settings.data_dir, read_table)
        if data.kind in IN_MEMORY_KINDS:  # a streamed dataset's version is known once it has been read whole
            dataset_sha256 = data.fingerprint()
        # Before any byte of the checkpoint is read: an architecture that cannot take this data fails here.
        check_compatible(architecture, data)
        loaded = load_checkpoint(settings.checkpoint_root, claim.path, claim.arch, claim.sha256, parser, should_stop)
        checkpoint_sha256 = loaded.sha256
        log.debug("loaded %s (%d bytes, sha256 %s) into %s", loaded.path, loaded.size, loaded.sha256, claim.arch)
        metrics = evaluate_model(loaded.model, data, architecture, settings.batch_size, should_stop)
        dataset_sha256 = data.fingerprint()
    except (EvaluationAborted, ParserUnavailable):
        raise
    except CkptEvalError as exc:
        error = printable(exc, 2000)
    except Exception as exc:  # a defect must fail this checkpoint's run, not the whole job
        log.debug("%s: unexpected error", claim.label, exc_info=True)
        error = f"internal error: {exc.__class__.__name__}: {printable(exc, 300)}"
    duration = time.monotonic() - started
    finished_wall = started_wall + timedelta(seconds=duration)
    common = {
        "dataset_sha256": dataset_sha256,
        "checkpoint_sha256": checkpoint_sha256,
        "started_at": started_wall,
        "finished_at": finished_wall,
        "duration_seconds": duration,
        "worker_host": worker.host,
        "worker_pid": worker.pid,
        "app_version": __version__,
        "min_accuracy": gate.min_accuracy,
        "min_f1_macro": gate.min_f1_macro,
        "arch_package": architecture.package if architecture else None,
        "arch_version": architecture.version if architecture else None,
    }
    if metrics is None:
        return RunRecord(
            status="failed",
            verdict="fail",
            verdict_reasons=None,
            error=error,
            n_samples=None,
            confusion_matrix=None,
            metrics=(),
            **common,  # type: ignore[arg-type]
        )
    verdict = apply_gate(metrics, gate)
    return RunRecord(
        status="succeeded",
        verdict=verdict.label,
        verdict_reasons="; ".join(verdict.reasons) or None,
        error=None,
        n_samples=metrics.n_samples,
        confusion_matrix=json.dumps(metrics.confusion),
        metrics=metrics.rows(),
        **common,  # type: ignore[arg-type]
    )


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
            requeued = self.repository.record_dataset_version(name, fingerprint)
            if requeued:
                log.info("dataset %s has a new version: %d pair(s) queued again", quoted(name, 60), requeued)

    def run(self, selection: Selection) -> JobSummary:
        self.prepare(selection)
        outcomes: list[Outcome] = []
        ids: Sequence[int] | None = selection.ids or None
        datasets: Sequence[str] | None = selection.datasets or None
        tried: set[tuple[str, str]] = set()
        while True:
            pairs = [p for p in self.repository.candidates(ids, CLAIM_BATCH, datasets) if p not in tried]
            if not pairs:
                break
            for pair in pairs:
                tried.add(pair)
                token = uuid.uuid4().hex
                claim = self.repository.claim(pair, self.worker.owner, token, self.settings.lease_seconds)
                if claim is None:
                    log.debug("%s on %s claimed by another worker", quoted(pair[0]), quoted(pair[1], 60))
                    continue
                try:
                    outcome = self._evaluate_and_record(claim)
                except BaseException:
                    # Interrupted (or a database failure): hand the pair back so the next
                    # run takes it at once instead of waiting for the lease to expire.
                    self._release_quietly(claim)
                    raise
                outcomes.append(outcome)
                self.on_outcome(outcome)
        return JobSummary(tuple(outcomes))

    def _evaluate_and_record(self, claim: ClaimedCheckpoint) -> Outcome:
        log.info("evaluating %s (arch %s, attempt %d)", claim.label, quoted(claim.arch, 60), claim.attempt)
        heartbeat_repo = self.heartbeat_repository()
        try:
            with Heartbeat(heartbeat_repo, claim, self.settings.lease_seconds, self.settings.heartbeat_seconds) as beat:
                try:
                    record = evaluate_claim(
                        claim, self.settings, self.worker, beat.lost.is_set, self.parser, self.read_table
                    )
                except EvaluationAborted:
                    return self._lost(claim, "lease lost during evaluation; stopped without writing")
        finally:
            heartbeat_repo.close()
        try:
            run_id = self.repository.finish(claim, record)
        except LeaseLost as exc:
            return self._lost(claim, str(exc))
        if record.dataset_sha256 is not None:
            requeued = self.repository.record_dataset_version(claim.dataset, record.dataset_sha256)
            if requeued:
                log.info("dataset %s has a new version: %d pair(s) queued again", quoted(claim.dataset, 60), requeued)
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

    def _release_quietly(self, claim: ClaimedCheckpoint) -> None:
        try:
            self.repository.release(claim)
        except Exception:  # the lease expires on its own; never mask the interrupt
            log.debug("could not release %s", claim.label, exc_info=True)
