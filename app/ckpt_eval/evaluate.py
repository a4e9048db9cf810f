"""Run loaded models over a whole dataset in inference mode: one pass over the data for all of them.

Models of one architecture evaluated on one dataset share the pass: each batch is read (and, for a
streamed dataset, parsed and checked) once and given to every model in turn, while it is still in
the cache. Each model's outputs and metrics are exactly what evaluating it alone gives: its own
forward pass on the same batches, in the same order, accumulated the same way. A model whose
forward pass fails, or whose caller asks it to stop (its lease was lost), leaves the pass; the
others go on.

The inputs come prepared from the dataset (in-memory kinds: views of one tensor converted and
prepared once per process; streamed kinds: one bounded chunk at a time), the allocator keeps freed
activation buffers for the next batch (allocator.py), the models run as their exact inference
views (inference.py), and the metrics accumulate into one confusion matrix per model (plus, for
two classes, the log-odds histogram and log loss): per batch only the forward pass, its loss and
argmax remain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from .allocator import retain_freed_memory
from .architectures import Architecture
from .datasets import EvaluationData
from .errors import CheckpointError, CkptEvalError, EvaluationAborted
from .inference import inference_view
from .metrics import MetricAccumulator, Metrics
from .text import printable

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 512

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EvaluationAborted",
    "ModelFailure",
    "evaluate_model",
    "evaluate_models",
    "use_threads",
]


@cache
def use_threads(threads: int) -> None:
    """PyTorch's intra-op threads for this process (0: its default, one per core); set once."""
    if threads:
        torch.set_num_threads(threads)


def _never() -> bool:
    return False


@dataclass(frozen=True)
class ModelFailure:
    """Why one model of a pass has no metrics: its own error (the others are unaffected)."""

    error: BaseException


class _Member:
    """One model in a pass: its inference view, its stop condition, its metrics so far."""

    def __init__(self, model: nn.Module, should_stop: Callable[[], bool], num_classes: int) -> None:
        self.view = inference_view(model)
        self.should_stop = should_stop
        self.accumulator = MetricAccumulator(num_classes)
        self.failure: ModelFailure | None = None

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, binary: bool) -> None:
        if self.should_stop():
            raise EvaluationAborted
        logits = self.view(inputs)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != num_classes:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise CheckpointError(f"model output has shape {shape}, expected (N, {num_classes})")
        loss = F.cross_entropy(logits, labels, reduction="sum")
        self.accumulator.update(
            labels.numpy(), logits.argmax(dim=1).numpy(), loss.item(), logits.numpy() if binary else None
        )


def evaluate_models(
    models: Sequence[nn.Module],
    data: EvaluationData,
    architecture: Architecture,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: Sequence[Callable[[], bool]] | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[Metrics | ModelFailure]:
    """Metrics of each of ``models`` on every sample of ``data``, in one pass over the data.

    A model's own failure (a wrong output, an error in its forward pass, ``should_stop[i]``
    returning True: EvaluationAborted) becomes its ``ModelFailure`` and it leaves the pass. An
    error of the data itself (a bad row of a streamed table) is raised: it concerns every model.
    """
    retain_freed_memory()
    stops = list(should_stop) if should_stop is not None else [_never] * len(models)
    if len(stops) != len(models):
        raise ValueError("one stop condition per model")
    num_classes = architecture.num_classes
    binary = num_classes == 2
    members = [_Member(model, stop, num_classes) for model, stop in zip(models, stops, strict=True)]
    active = list(members)
    with torch.inference_mode():
        for inputs, labels in data.batches(batch_size, architecture):
            for member in active:
                try:
                    member.step(inputs, labels, num_classes, binary)
                except (CkptEvalError, EvaluationAborted) as exc:
                    member.failure = ModelFailure(exc)
                except Exception as exc:  # the model's own code failed: its run, not the others'
                    log.debug("forward pass failed", exc_info=True)
                    member.failure = ModelFailure(
                        CheckpointError(f"the forward pass failed: {exc.__class__.__name__}: {printable(exc, 300)}")
                    )
            active = [member for member in active if member.failure is None]
            if not active:
                break
            on_batch(len(labels))
    results: list[Metrics | ModelFailure] = []
    for member in members:
        if member.failure is not None:
            results.append(member.failure)
        else:
            try:
                results.append(member.accumulator.result())
            except ValueError:  # no batch at all (an empty dataset is refused earlier; be safe)
                results.append(ModelFailure(CheckpointError("no samples were evaluated")))
    return results


def evaluate_model(
    model: nn.Module,
    data: EvaluationData,
    architecture: Architecture,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: Callable[[], bool] = _never,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Metrics:
    """Metrics of one model; its failure is raised (EvaluationAborted when ``should_stop`` says so)."""
    (result,) = evaluate_models([model], data, architecture, batch_size, [should_stop], on_batch)
    if isinstance(result, ModelFailure):
        raise result.error
    return result
