"""Batch scoring: predictions for the rows of a warehouse table, written back exactly once.

A scoring job (ckpt_eval.scoring_jobs) names a checkpoint, an input (a registered table dataset:
its source and feature columns), the input's integer row key, and an output table. A scoring run
scores the rows without a prediction from the checkpoint yet (every row with ``rescore``), planned
as chunks of consecutive keys when the run starts; rows that arrive later are the next run's.
Workers on any number of hosts share the job's run: each claims chunks (lease and fencing token,
as evaluation pairs), reads a chunk's rows in bounded pieces, predicts, and writes the chunk's
predictions and its completion in one fenced transaction. The worker that closes the last chunk
closes the run.

A bad row (a NULL or non-numeric feature) fails its chunk with the reason recorded, or, with
``skip_bad_rows``, is left without a prediction and counted; the other chunks go on either way.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from . import __version__
from .architectures import Architecture, get_architecture
from .config import Settings, Worker
from .copy_format import SIGNATURE, TRAILER, prediction_tuples
from .datasets.tabular import record_chunks
from .db.scoring import ClaimedChunk, ScoringJob, ScoringRepository
from .errors import CheckpointError, CkptEvalError, ConfigError, DatasetError, UsageError
from .isolation import CheckpointParser
from .text import printable, quoted

log = logging.getLogger(__name__)

MAX_REASONS = 10  # skipped rows named in a chunk's error text; the rest are counted
MAX_ERROR_CHARS = 2000
CLAIM_WINDOW = 16  # claimable chunks listed at a time; tried in random order to spread workers


class GateRefused(CkptEvalError):
    """The job's checkpoint has not passed its gate (and the operator did not force it)."""

    exit_code = 3


@dataclass(frozen=True)
class ScoringOptions:
    rescore: bool = False
    limit: int | None = None
    force: bool = False
    skip_bad_rows: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class ChunkResult:
    chunk_no: int
    status: str  # done | failed | lost
    rows_scored: int
    rows_skipped: int
    error: str | None
    seconds: float
    model_failed: bool = False  # the model itself failed: no other chunk is claimed


@dataclass(frozen=True)
class ScoringSummary:
    job: str
    scoring_run_id: int | None
    started: bool  # this worker started the run (False: joined one, or nothing to do)
    planned_rows: int
    chunks: tuple[ChunkResult, ...] = ()
    run_status: str | None = None  # done | failed once closed (by any worker); running; None: no run
    dry_run: bool = False

    @property
    def rows_scored(self) -> int:
        return sum(c.rows_scored for c in self.chunks if c.status == "done")

    @property
    def rows_skipped(self) -> int:
        return sum(c.rows_skipped for c in self.chunks if c.status == "done")

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.chunks)


# ---------------------------------------------------------------------------------------------- pure part


@dataclass
class Predictions:
    """A chunk's predictions so far (arrays grow piece by piece) and the rows left without one."""

    keys: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(k) for k in self.keys)

    def skip(self, key: int, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"key {key}: {reason}")

    def summary(self) -> str | None:
        if not self.skipped:
            return None
        more = self.skipped - len(self.reasons)
        text = f"skipped {self.skipped} row(s): " + "; ".join(self.reasons) + (f"; and {more} more" if more else "")
        return printable(text, MAX_ERROR_CHARS)


class BadRow(DatasetError):
    """A row of the input that cannot be scored; fails its chunk unless bad rows are skipped."""


def parse_rows(records: list[bytes], features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Keys (int64), float32 features of the good rows, and (key, reason) of each bad row.

    ``records`` are CSV lines of COPY output: the key, then the feature columns in order. A NULL,
    non-numeric, non-finite or out-of-float32-range feature makes its row bad (the first such
    column is named).
    """
    width = len(features) + 1
    frame = pd.read_csv(
        io.BytesIO(b"\n".join(records)),
        header=None,
        names=list(range(width)),
        dtype={0: np.int64},
        keep_default_na=False,
        na_values=[""],
        engine="c",
    )
    keys = frame[0].to_numpy(dtype=np.int64)
    block = frame.iloc[:, 1:]
    if all(dtype.kind in "fiu" for dtype in block.dtypes):
        values = block.to_numpy(dtype=np.float64)
    else:
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        as_float32 = values.astype(np.float32)
    bad_cells = ~np.isfinite(as_float32)
    bad_rows = bad_cells.any(axis=1)
    if not bad_rows.any():
        return keys, as_float32, []
    reasons = []
    for row in np.flatnonzero(bad_rows):
        column = int(np.argmax(bad_cells[row]))
        raw = block.iat[row, column]
        if raw is None or (isinstance(raw, float) and np.isnan(raw) and pd.isna(raw)):
            text = "NULL"
        else:
            text = quoted(str(raw), 40)
        kind = "NULL feature" if text == "NULL" else f"value {text} is not a finite number"
        reasons.append((int(keys[row]), f"{kind} in column {quoted(features[column], 60)}"))
    good = ~bad_rows
    return keys[good], np.ascontiguousarray(as_float32[good]), reasons


class Predictor:
    """A loaded model's class probabilities for prepared feature rows, in batches, in inference mode."""

    def __init__(self, model: object, architecture: Architecture, batch_size: int) -> None:
        from .inference import inference_view

        self.view = inference_view(model)  # type: ignore[arg-type]
        self.architecture = architecture
        self.batch_size = batch_size

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        num_classes = self.architecture.num_classes
        indices, probabilities = [], []
        with torch.inference_mode():
            inputs = self.architecture.prepare(torch.from_numpy(features))
            for start in range(0, len(inputs), self.batch_size):
                try:
                    logits = self.view(inputs[start : start + self.batch_size])
                except Exception as exc:  # the model's own code (a plugin's): its chunks fail, not the job
                    detail = f"{exc.__class__.__name__}: {printable(exc, 300)}"
                    raise CheckpointError(f"the forward pass failed: {detail}") from None
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != num_classes:
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise CheckpointError(f"model output has shape {shape}, expected (N, {num_classes})")
                probs = torch.softmax(logits.double(), dim=1)
                indices.append(probs.argmax(dim=1).numpy().astype(np.int32))
                probabilities.append(probs.numpy())
        if not indices:
            return np.empty(0, np.int32), np.empty((0, num_classes))
        return np.concatenate(indices), np.concatenate(probabilities)


def score_blocks(
    blocks: Iterable[bytes],
    features: tuple[str, ...],
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    skip_bad_rows: bool,
) -> Predictions:
    """A chunk's predictions from its CSV blocks, parsed and predicted one bounded piece at a time."""
    result = Predictions()
    for records in record_chunks(blocks, "input"):
        keys, values, bad = parse_rows(records, features)
        if bad and not skip_bad_rows:
            key, reason = bad[0]
            more = f" (and {len(bad) - 1} more bad row(s) in the same piece)" if len(bad) > 1 else ""
            raise BadRow(f"row with key {key}: {reason}{more}; --skip-bad-rows scores the others")
        for key, reason in bad:
            result.skip(key, reason)
        if len(keys):
            indices, probabilities = predict(values)
            result.keys.append(keys)
            result.indices.append(indices)
            result.probabilities.append(probabilities)
    return result


def copy_blocks(
    predictions: Predictions, scoring_run_id: int, checkpoint_id: int, scored_at: datetime
) -> Iterator[bytes]:
    """A chunk's predictions as one binary COPY stream: the signature, a block per piece, the trailer."""
    yield SIGNATURE
    for keys, indices, probabilities in zip(
        predictions.keys, predictions.indices, predictions.probabilities, strict=True
    ):
        yield prediction_tuples(
            keys, indices, probabilities, scoring_run_id=scoring_run_id, checkpoint_id=checkpoint_id,
            scored_at=scored_at,
        )  # fmt: skip
    yield TRAILER


# ---------------------------------------------------------------------------------------------- the worker


class _ChunkLease:
    """Extends a claimed chunk's lease from another connection while the chunk is scored."""

    def __init__(self, repository: ScoringRepository, chunk: ClaimedChunk, lease_seconds: float) -> None:
        self._repository = repository
        self._chunk = chunk
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-chunk-{chunk.chunk_no}", daemon=True)

    def __enter__(self) -> _ChunkLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._lease_seconds / 3):
            try:
                if not self._repository.heartbeat_chunk(self._chunk, self._lease_seconds):
                    log.warning("%s: lease lost to another worker", self._chunk.label)
                    self.lost.set()
                    return
            except CkptEvalError as exc:
                log.warning("%s: heartbeat failed: %s", self._chunk.label, exc)


class Scorer:
    """One worker's part in a scoring job: start or join the job's run, score chunks until none is left."""

    def __init__(
        self,
        settings: Settings,
        repository: ScoringRepository,
        lease_repository: Callable[[], ScoringRepository],
        parser: CheckpointParser | None,
        worker: Worker | None = None,
        on_chunk: Callable[[ChunkResult], None] = lambda result: None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.lease_repository = lease_repository
        self.parser = parser
        self.worker = worker or Worker.current()
        self.on_chunk = on_chunk

    # -- checks ---------------------------------------------------------------------------------------
    def load_job(self, name: str) -> ScoringJob:
        job = self.repository.scoring_job(name)
        if job is None:
            known = ", ".join(quoted(n, 60) for n in self.repository.scoring_job_names()[:20]) or "none"
            raise UsageError(f"no scoring job {quoted(name, 60)} (scoring jobs: {known})")
        if job.checkpoint_id is None:
            raise ConfigError(f"{job.label}: checkpoint {quoted(job.checkpoint_name)} is not registered")
        if job.dataset_kind is None:
            raise ConfigError(f"{job.label}: input dataset {quoted(job.input_dataset, 60)} is not registered")
        if job.dataset_kind != "table" or not job.source or not job.feature_columns:
            raise ConfigError(
                f"{job.label}: input dataset {quoted(job.input_dataset, 60)} must be a table dataset with feature "
                f"columns (it is of kind {quoted(job.dataset_kind, 30)})"
            )
        return job

    def check_gate(self, job: ScoringJob, options: ScoringOptions) -> None:
        if options.force or job.allow_ungated:
            return
        assert job.checkpoint_id is not None
        verdicts = self.repository.checkpoint_verdicts(job.checkpoint_id)
        failing = [f"{quoted(d, 60)}: {s}/{v}" for d, s, v in verdicts if (s, v) != ("succeeded", "pass")]
        if not verdicts or failing:
            why = "it has no evaluation yet" if not verdicts else "its latest runs: " + ", ".join(failing)
            raise GateRefused(
                f"{job.label}: checkpoint {quoted(job.checkpoint_name)} has not passed its gate ({why}); "
                "--force scores with it anyway"
            )

    def check_architecture(self, job: ScoringJob) -> Architecture:
        assert job.arch is not None
        architecture = get_architecture(job.arch)
        if architecture.input_shape != (len(job.feature_columns),):
            raise ConfigError(
                f"{job.label}: architecture {quoted(job.arch, 60)} expects inputs of shape "
                f"{architecture.input_shape}, the input dataset has {len(job.feature_columns)} feature column(s)"
            )
        return architecture

    # -- the job ----------------------------------------------------------------------------------------
    def run(self, name: str, options: ScoringOptions) -> ScoringSummary:
        job = self.load_job(name)
        self.check_gate(job, options)
        architecture = self.check_architecture(job)
        self.repository.check_output(job)
        assert job.checkpoint_id is not None
        if job.active_run is None or self._closed_if_finished(job, job.active_run):
            if options.dry_run:
                plan = self.repository.plan(job, job.checkpoint_id, options.rescore, options.limit)
                return ScoringSummary(job.name, None, False, sum(c.planned_rows for c in plan), dry_run=True)
            self.repository.check_input(job)
            plan = self.repository.plan(job, job.checkpoint_id, options.rescore, options.limit)
            if not plan:
                log.info("%s: nothing to score", job.label)
                return ScoringSummary(job.name, None, False, 0)
        else:
            plan = []
        if options.dry_run:  # a run is in progress: what is left of it
            assert job.active_run is not None
            progress = self.repository.run_progress(job.active_run)
            return ScoringSummary(
                job.name, job.active_run, False, progress.open_rows, run_status="running", dry_run=True
            )
        model = self._load_model(job)
        joined = self._start_or_join(job, plan, model[1], options)
        if joined is None:
            return ScoringSummary(job.name, None, False, 0)
        run_id, started = joined
        if not started and (options.rescore or options.limit is not None):
            log.warning("%s: joined scoring run %d; --rescore and --limit apply to a new run only", job.label, run_id)
        run = self.repository.scoring_run(run_id)
        rescore = bool(run and run["rescore"])
        if run and run["checkpoint_sha256"] != model[1]:
            raise CheckpointError(
                f"{job.label}: scoring run {run_id} was started with checkpoint sha256 {run['checkpoint_sha256']}, "
                f"the file has {model[1]} now: one run scores with one model"
            )
        from .evaluate import use_threads

        use_threads(self.settings.torch_threads)
        predictor = Predictor(model[0], architecture, self.settings.batch_size)
        results = self._score_chunks(job, run_id, rescore, predictor, options)
        status = self.repository.complete_run(job, run_id)
        planned = int(run["planned_rows"]) if run else 0
        return ScoringSummary(job.name, run_id, started, planned, tuple(results), status or "running")

    def _closed_if_finished(self, job: ScoringJob, run_id: int) -> bool:
        """A run whose chunks are all finished but which nobody closed (a worker died in between): close it."""
        status = self.repository.complete_run(job, run_id)
        if status is not None:
            log.info("%s: closed scoring run %d (%s)", job.label, run_id, status)
            return True
        return False

    def _load_model(self, job: ScoringJob) -> tuple[object, str]:
        from .checkpoints import load_checkpoint

        assert job.path is not None
        assert job.arch is not None
        assert self.parser is not None
        if not job.sha256:
            raise CheckpointError(f"checkpoint {quoted(job.checkpoint_name)}: no sha256 is recorded")
        loaded = load_checkpoint(self.settings.checkpoint_root, job.path, job.arch, job.sha256, self.parser)
        return loaded.model, loaded.sha256

    @staticmethod
    def _class_names(job: ScoringJob) -> tuple[str, ...] | None:
        """The names a run records for its predicted indices (the view shows them): the dataset's, else the
        architecture's."""
        if job.class_names:
            return tuple(job.class_names)
        from .architectures import ArchitectureError, get_architecture

        try:
            return get_architecture(job.arch or "").class_names
        except ArchitectureError:
            return None  # the model load reports it

    def _start_or_join(
        self, job: ScoringJob, plan: list, sha256: str, options: ScoringOptions
    ) -> tuple[int, bool] | None:
        """(run id, started here), or None when another worker's run took the rows and has finished."""
        if plan:
            run_id = self.repository.start_run(
                job, plan, checkpoint_sha256=sha256, rescore=options.rescore, owner=self.worker.owner,
                app_version=__version__, class_names=self._class_names(job),
            )  # fmt: skip
            if run_id is not None:
                log.info(
                    "%s: started scoring run %d: %d row(s) in %d chunk(s)",
                    job.label, run_id, sum(c.planned_rows for c in plan), len(plan),
                )  # fmt: skip
                return run_id, True
        current = self.repository.scoring_job(job.name)
        if current is None or current.active_run is None:
            log.info("%s: another worker's scoring run took the rows and finished: nothing left", job.label)
            return None
        log.info("%s: joined scoring run %d", job.label, current.active_run)
        return current.active_run, False

    def _score_chunks(
        self, job: ScoringJob, run_id: int, rescore: bool, predictor: Predictor, options: ScoringOptions
    ) -> list[ChunkResult]:
        results: list[ChunkResult] = []
        while True:
            candidates = self.repository.claimable_chunks(run_id, CLAIM_WINDOW)
            if not candidates:
                return results
            random.shuffle(candidates)  # workers starting together try different chunks first
            for chunk_no in candidates:
                token = uuid.uuid4().hex
                chunk = self.repository.claim_chunk(
                    run_id, chunk_no, self.worker.owner, token, self.settings.lease_seconds
                )
                if chunk is None:
                    continue
                log.info("scoring %s, %d row(s) planned (attempt %d)", chunk.label, chunk.planned_rows, chunk.attempt)
                result = self._score_chunk(job, chunk, rescore, predictor, options)
                results.append(result)
                self.on_chunk(result)
                if result.model_failed:
                    log.error("%s: the model failed; no more chunks are claimed", job.label)
                    return results

    def _score_chunk(
        self, job: ScoringJob, chunk: ClaimedChunk, rescore: bool, predictor: Predictor, options: ScoringOptions
    ) -> ChunkResult:
        assert job.checkpoint_id is not None
        started = time.monotonic()
        lease_repository = self.lease_repository()
        try:
            with _ChunkLease(lease_repository, chunk, self.settings.lease_seconds) as lease:
                error: str | None = None
                model_failed = False
                try:
                    predictions = self.repository.read_chunk(
                        job, chunk, rescore,
                        lambda blocks: score_blocks(blocks, job.feature_columns, predictor, options.skip_bad_rows),
                    )  # fmt: skip
                except (BadRow, CheckpointError) as exc:
                    predictions, error = Predictions(), printable(str(exc), MAX_ERROR_CHARS)
                    model_failed = not isinstance(exc, BadRow)
                if lease.lost.is_set():
                    return self._lost(chunk, started)
                written = self.repository.finish_chunk(
                    job,
                    chunk,
                    failed=error is not None,
                    data=lambda now: copy_blocks(predictions, chunk.scoring_run_id, job.checkpoint_id or 0, now),
                    rows_scored=predictions.count,
                    rows_skipped=predictions.skipped,
                    error=error or predictions.summary(),
                )
        except BaseException:
            self._release_quietly(chunk)
            raise
        finally:
            lease_repository.close()
        if not written:
            return self._lost(chunk, started)
        seconds = time.monotonic() - started
        if error is not None:
            log.error("%s failed: %s", chunk.label, error)
            return ChunkResult(chunk.chunk_no, "failed", 0, 0, error, seconds, model_failed)
        log.info(
            "%s: %d row(s) scored%s in %.2f s",
            chunk.label, predictions.count, f", {predictions.skipped} skipped" if predictions.skipped else "", seconds,
        )  # fmt: skip
        summary = predictions.summary()
        return ChunkResult(chunk.chunk_no, "done", predictions.count, predictions.skipped, summary, seconds)

    def _lost(self, chunk: ClaimedChunk, started: float) -> ChunkResult:
        log.warning("%s: lease lost to another worker; nothing written", chunk.label)
        return ChunkResult(chunk.chunk_no, "lost", 0, 0, "lease lost", time.monotonic() - started)

    def _release_quietly(self, chunk: ClaimedChunk) -> None:
        for opener in (lambda: self.repository, self.lease_repository):
            repository = None
            try:
                repository = opener()
                repository.release_chunk(chunk)
                return
            except Exception:  # the lease expires on its own; never mask what is being raised
                log.debug("could not hand back %s", chunk.label, exc_info=True)
            finally:
                if repository is not None and repository is not self.repository:
                    repository.close()
