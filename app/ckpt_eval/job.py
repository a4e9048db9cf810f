"""The evaluation job: claim pending checkpoints, evaluate each, record the result exactly once."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import __version__
from .architectures import get_architecture
from .checkpoints import load_checkpoint
from .config import CLAIM_BATCH, Settings, Worker
from .datasets import check_compatible, load_dataset
from .db.repository import ClaimedCheckpoint, Repository, RunRecord
from .errors import CkptEvalError, LeaseLost
from .evaluate import EvaluationAborted, evaluate_model
from .isolation import CheckpointParser, ParserUnavailable
from .metrics import Gate, Metrics, apply_gate
from .text import printable, quoted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: which checkpoints, and whether to queue finished ones again."""

    ids: tuple[int, ...] = ()
    force: bool = False
    failed: bool = False


@dataclass(frozen=True)
class Outcome:
    checkpoint_id: int
    name: str
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
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.checkpoint_id}", daemon=True)

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
                    log.warning("checkpoint %d: lease lost to another worker", self._claim.checkpoint_id)
                    self.lost.set()
                    return
            except CkptEvalError as exc:
                # The finish step re-checks the token; keep trying until the lease would be gone anyway.
                log.warning("checkpoint %d: heartbeat failed: %s", self._claim.checkpoint_id, exc)


def evaluate_claim(
    claim: ClaimedCheckpoint,
    settings: Settings,
    worker: Worker,
    should_stop: Callable[[], bool],
    parser: CheckpointParser,
) -> RunRecord:
    """Evaluate one claimed checkpoint. A bad checkpoint or dataset becomes a failed RunRecord."""
    gate = Gate.from_registry(claim.min_accuracy, claim.min_f1_macro)
    started_wall = datetime.now().astimezone()
    started = time.monotonic()
    dataset_sha256 = checkpoint_sha256 = None
    metrics: Metrics | None = None
    error: str | None = None
    try:
        dataset = load_dataset(claim.dataset, settings.data_dir)
        dataset_sha256 = dataset.fingerprint()
        log.debug("dataset %s: %s samples, sha256 %s", dataset.name, dataset.n_samples, dataset_sha256)
        architecture = get_architecture(claim.arch)
        check_compatible(architecture, dataset)
        loaded = load_checkpoint(settings.checkpoint_root, claim.path, claim.arch, claim.sha256, parser, should_stop)
        checkpoint_sha256 = loaded.sha256
        log.debug("loaded %s (%d bytes, sha256 %s) into %s", loaded.path, loaded.size, loaded.sha256, claim.arch)
        metrics = evaluate_model(loaded.model, dataset, architecture, settings.batch_size, should_stop)
    except (EvaluationAborted, ParserUnavailable):
        raise
    except CkptEvalError as exc:
        error = printable(exc, 2000)
    except Exception as exc:  # a defect must fail this checkpoint's run, not the whole job
        log.debug("checkpoint %d: unexpected error", claim.checkpoint_id, exc_info=True)
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
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.heartbeat_repository = heartbeat_repository
        self.parser = parser
        self.worker = worker or Worker.current()
        self.on_outcome = on_outcome

    def prepare(self, selection: Selection) -> None:
        """Validate ids and queue finished checkpoints again when asked (--force / --failed)."""
        ids = selection.ids or None
        if selection.ids:
            self.repository.check_ids_exist(selection.ids)
        if selection.force or selection.failed:
            for checkpoint_id, name in self.repository.running_elsewhere(ids):
                log.warning(
                    "checkpoint %d (%s) is being evaluated by another worker; left alone", checkpoint_id, quoted(name)
                )
            queued = self.repository.requeue(ids, force=selection.force, failed=selection.failed)
            log.info("queued %d checkpoint(s) again", queued)

    def run(self, selection: Selection) -> JobSummary:
        self.prepare(selection)
        outcomes: list[Outcome] = []
        ids: Sequence[int] | None = selection.ids or None
        tried: set[str] = set()
        while True:
            names = [n for n in self.repository.candidates(ids, CLAIM_BATCH) if n not in tried]
            if not names:
                break
            for name in names:
                tried.add(name)
                token = uuid.uuid4().hex
                claim = self.repository.claim(name, self.worker.owner, token, self.settings.lease_seconds)
                if claim is None:
                    log.debug("checkpoint %s claimed by another worker", quoted(name))
                    continue
                try:
                    outcome = self._evaluate_and_record(claim)
                except BaseException:
                    # Interrupted (or a database failure): hand the checkpoint back so the next
                    # run takes it at once instead of waiting for the lease to expire.
                    self._release_quietly(claim)
                    raise
                outcomes.append(outcome)
                self.on_outcome(outcome)
        return JobSummary(tuple(outcomes))

    def _evaluate_and_record(self, claim: ClaimedCheckpoint) -> Outcome:
        log.info(
            "evaluating checkpoint %d %s (arch %s, dataset %s, attempt %d)",
            claim.checkpoint_id,
            quoted(claim.name),
            quoted(claim.arch, 60),
            quoted(claim.dataset, 60),
            claim.attempt,
        )
        heartbeat_repo = self.heartbeat_repository()
        try:
            with Heartbeat(heartbeat_repo, claim, self.settings.lease_seconds, self.settings.heartbeat_seconds) as beat:
                try:
                    record = evaluate_claim(claim, self.settings, self.worker, beat.lost.is_set, self.parser)
                except EvaluationAborted:
                    return self._lost(claim, "lease lost during evaluation; stopped without writing")
        finally:
            heartbeat_repo.close()
        try:
            run_id = self.repository.finish(claim, record)
        except LeaseLost as exc:
            return self._lost(claim, str(exc))
        outcome = Outcome(
            checkpoint_id=claim.checkpoint_id,
            name=claim.name,
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
            log.error("checkpoint %d %s failed: %s", claim.checkpoint_id, quoted(claim.name), record.error)
        else:
            log.info(
                "checkpoint %d %s: accuracy %.4f, macro-F1 %.4f, verdict %s%s",
                claim.checkpoint_id,
                quoted(claim.name),
                outcome.accuracy,
                outcome.f1_macro,
                record.verdict,
                f" ({record.verdict_reasons})" if record.verdict_reasons else "",
            )
        return outcome

    def _lost(self, claim: ClaimedCheckpoint, reason: str) -> Outcome:
        log.warning("checkpoint %d %s: %s", claim.checkpoint_id, quoted(claim.name), reason)
        return Outcome(
            claim.checkpoint_id, claim.name, claim.attempt, None, "lost", None, None, None, None, reason, 0.0
        )

    def _release_quietly(self, claim: ClaimedCheckpoint) -> None:
        try:
            self.repository.release(claim)
        except Exception:  # the lease expires on its own; never mask the interrupt
            log.debug("could not release checkpoint %d", claim.checkpoint_id, exc_info=True)
