"""From claimed pairs to run records: what a group of (checkpoint, dataset) pairs evaluates to.

The pairs of a group that share an architecture and a dataset are evaluated together: the dataset
is opened and checked once, each checkpoint is loaded (in isolation, against its own sha256), and
one pass over the data serves all the loaded models (evaluate.py). Whatever goes wrong with one
checkpoint (a missing file, a hash mismatch, a hostile file, a failing forward pass, a lost lease)
is that pair's own result; only what concerns them all (the dataset, the architecture) fails them
all. Loaded models are held within a memory budget: past it, the models loaded so far make one
pass, and the next ones another.

Records come out as soon as they are known, in batches (a pair that failed to load on its own, the
pairs of one pass together), so the job writes each batch in one transaction, each pair fenced by
its own token, while the rest of the group is still being evaluated.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import __version__
from .architectures import Architecture, get_architecture
from .checkpoints import CheckpointRequest, load_checkpoints
from .config import Settings, Worker
from .datasets import IN_MEMORY_KINDS, DatasetDefinition, EvaluationData, TableReader, check_compatible, open_dataset
from .db.repository import ClaimedCheckpoint, RunRecord
from .errors import CkptEvalError, DatasetError, EvaluationAborted
from .gates import PairGate, apply_rules, default_rules, results_to_json
from .isolation import CheckpointParser
from .metrics import Gate, Metrics
from .text import printable, quoted

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

IsLost = Callable[[ClaimedCheckpoint], bool]
# None: the pair's lease was lost while it was being evaluated; nothing may be written for it.
GroupResult = tuple[ClaimedCheckpoint, RunRecord | None]
# Results known at the same moment (those of one pass over the data): written in one transaction.
ResultBatch = list[GroupResult]


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


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (what holding it loaded costs)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _Attempt:
    """One pair of the group: when its evaluation started, and what is known so far."""

    claim: ClaimedCheckpoint
    started_wall: datetime
    started: float
    stop: Callable[[], bool]  # True once the pair's lease is lost
    checkpoint_sha256: str | None = None
    dataset_sha256: str | None = None  # the streamed dataset's version its pass read
    model: nn.Module | None = None


class _Recorder:
    """Builds each pair's RunRecord from what the group shares and what is the pair's own."""

    def __init__(self, worker: Worker, gates: Mapping[tuple[str, str], PairGate] | None = None) -> None:
        self.worker = worker
        self.gates = gates or {}
        self.architecture: Architecture | None = None
        self.in_memory_version: str | None = None  # an in-memory dataset's version, known before any pass

    def start(self, claim: ClaimedCheckpoint, is_lost: IsLost) -> _Attempt:
        return _Attempt(claim, datetime.now().astimezone(), time.monotonic(), functools.partial(is_lost, claim))

    def failed(self, attempt: _Attempt, error: str) -> RunRecord:
        return RunRecord(
            status="failed",
            verdict="fail",
            verdict_reasons=None,
            error=error,
            n_samples=None,
            confusion_matrix=None,
            metrics=(),
            **self._common(attempt),
        )

    def succeeded(self, attempt: _Attempt, metrics: Metrics) -> RunRecord:
        claim = attempt.claim
        gate = self.gates.get((claim.name, claim.dataset)) or PairGate(
            default_rules(claim.min_accuracy, claim.min_f1_macro), dataset=claim.dataset
        )
        common = self._common(attempt)
        verdict = apply_rules(metrics.overall(), gate, common["dataset_sha256"])
        return RunRecord(
            status="succeeded",
            verdict=verdict.label,
            verdict_reasons=printable("; ".join(verdict.reasons), 4000) or None,
            error=None,
            n_samples=metrics.n_samples,
            confusion_matrix=json.dumps(metrics.confusion),
            metrics=metrics.rows(),
            gate_results=results_to_json(verdict.results),
            gate_note=verdict.note,
            curves=metrics.curves_json(),
            **common,
        )

    @staticmethod
    def _gate(claim: ClaimedCheckpoint) -> Gate:
        return Gate.from_registry(claim.min_accuracy, claim.min_f1_macro)

    def _common(self, attempt: _Attempt) -> dict[str, Any]:
        gate = self._gate(attempt.claim)
        duration = time.monotonic() - attempt.started
        return {
            # The version the pair saw: the pass's read of a streamed dataset, else the in-memory one.
            "dataset_sha256": attempt.dataset_sha256 or self.in_memory_version,
            "checkpoint_sha256": attempt.checkpoint_sha256,
            "started_at": attempt.started_wall,
            "finished_at": attempt.started_wall + timedelta(seconds=duration),
            "duration_seconds": duration,
            "worker_host": self.worker.host,
            "worker_pid": self.worker.pid,
            "app_version": __version__,
            "min_accuracy": gate.min_accuracy,
            "min_f1_macro": gate.min_f1_macro,
            "arch_package": self.architecture.package if self.architecture else None,
            "arch_version": self.architecture.version if self.architecture else None,
        }


def _error_text(exc: Exception, what: str) -> str:
    if isinstance(exc, CkptEvalError):
        return printable(exc, 2000)
    log.debug("%s: unexpected error", what, exc_info=exc)
    return f"internal error: {exc.__class__.__name__}: {printable(exc, 300)}"


def evaluate_group(
    claims: Sequence[ClaimedCheckpoint],
    settings: Settings,
    worker: Worker,
    is_lost: IsLost,
    parser: CheckpointParser,
    read_table: TableReader | None = None,
    gates: Mapping[tuple[str, str], PairGate] | None = None,
) -> Iterator[ResultBatch]:
    """Each claimed pair with its RunRecord (None when its lease was lost), in batches as they are known.

    ``gates`` holds each pair's gate (Repository.pair_gates); a pair missing from it is gated by its
    checkpoint's two threshold columns alone.

    Pairs of different architectures or datasets make separate passes. ParserUnavailable (the
    parser cannot start at all) and interrupts are raised: they concern the job, not a pair.
    """
    partitions: dict[tuple[str, str], list[ClaimedCheckpoint]] = {}
    for claim in claims:
        partitions.setdefault((claim.dataset, claim.arch), []).append(claim)
    for members in partitions.values():
        yield from _evaluate_partition(members, settings, worker, is_lost, parser, read_table, gates)


def _evaluate_partition(
    claims: Sequence[ClaimedCheckpoint],
    settings: Settings,
    worker: Worker,
    is_lost: IsLost,
    parser: CheckpointParser,
    read_table: TableReader | None,
    gates: Mapping[tuple[str, str], PairGate] | None,
) -> Iterator[ResultBatch]:
    recorder = _Recorder(worker, gates)
    first = claims[0]
    shared = recorder.start(first, is_lost)
    try:
        if first.dataset_row is None:
            raise DatasetError(f"dataset {quoted(first.dataset, 60)} is not registered (ckpt-eval dataset list)")
        recorder.architecture = get_architecture(first.arch)
        data = open_dataset(dataset_definition(first.dataset_row), settings.data_dir, read_table)
        if data.kind in IN_MEMORY_KINDS:  # a streamed dataset's version is known once it has been read whole
            recorder.in_memory_version = data.fingerprint()
        # Before any byte of a checkpoint is read: an architecture that cannot take this data fails here.
        check_compatible(recorder.architecture, data)
    except Exception as exc:  # the dataset or the architecture: every pair of the partition fails alike
        error = _error_text(exc, first.label)
        yield [
            (claim, recorder.failed(recorder.start(claim, is_lost) if claim is not first else shared, error))
            for claim in claims
        ]
        return
    architecture = recorder.architecture
    attempts: dict[str, _Attempt] = {}

    def requests() -> Iterator[tuple[ClaimedCheckpoint, CheckpointRequest]]:
        for claim in claims:
            attempt = shared if claim is first else recorder.start(claim, is_lost)
            attempts[claim.lease_token] = attempt
            yield claim, CheckpointRequest(claim.path, claim.arch, claim.sha256, should_stop=attempt.stop)

    # The parser works on the next checkpoint while the worker builds this one's module.
    loading = load_checkpoints(settings.checkpoint_root, requests(), parser)
    try:
        loaded: list[_Attempt] = []
        held = 0
        for claim, result in loading:
            attempt = attempts[claim.lease_token]
            if isinstance(result, EvaluationAborted):
                yield [(claim, None)]
            elif isinstance(result, Exception):
                yield [(claim, recorder.failed(attempt, _error_text(result, claim.label)))]
            else:
                log.debug("loaded %s (%d bytes, sha256 %s)", result.path, result.size, result.sha256)
                attempt.checkpoint_sha256, attempt.model = result.sha256, result.model
                loaded.append(attempt)
                held += model_bytes(result.model)
                if held >= settings.group_memory_bytes:  # evaluate what is loaded before loading more
                    yield _one_pass(loaded, data, architecture, settings, recorder)
                    loaded, held = [], 0
        if loaded:
            yield _one_pass(loaded, data, architecture, settings, recorder)
    finally:
        loading.close()


def _one_pass(
    loaded: Sequence[_Attempt],
    data: EvaluationData,
    architecture: Architecture,
    settings: Settings,
    recorder: _Recorder,
) -> ResultBatch:
    from .evaluate import ModelFailure, evaluate_models, use_threads  # torch: imported when the first model runs

    use_threads(settings.torch_threads)
    models = [attempt.model for attempt in loaded]
    stops = [attempt.stop for attempt in loaded]
    try:
        results = evaluate_models(models, data, architecture, settings.batch_size, stops)  # type: ignore[arg-type]
        del models
        if data.kind not in IN_MEMORY_KINDS:
            version = data.fingerprint()  # the version this pass read (and only its pairs saw)
            for attempt in loaded:
                attempt.dataset_sha256 = version
    except Exception as exc:  # the data failed mid-pass (a bad row of a table): every model of the pass
        error = _error_text(exc, loaded[0].claim.label)
        for attempt in loaded:
            attempt.model = None
        return [(attempt.claim, recorder.failed(attempt, error)) for attempt in loaded]
    batch: ResultBatch = []
    for attempt, result in zip(loaded, results, strict=True):
        attempt.model = None  # released as soon as its result is known
        if isinstance(result, ModelFailure):
            if isinstance(result.error, EvaluationAborted):
                batch.append((attempt.claim, None))
            else:
                error = _error_text(result.error, attempt.claim.label)  # type: ignore[arg-type]
                batch.append((attempt.claim, recorder.failed(attempt, error)))
        else:
            batch.append((attempt.claim, recorder.succeeded(attempt, result)))
    return batch
