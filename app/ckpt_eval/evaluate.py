"""Run a loaded model over a whole dataset in inference mode, batch by batch.

The inputs come prepared from the dataset (in-memory kinds: views of one tensor converted and
prepared once per process; streamed kinds: one bounded chunk at a time), the allocator keeps freed
activation buffers for the next batch (allocator.py), and the metrics accumulate into one
confusion matrix (plus, for two classes, the log-odds histogram and log loss): per batch only the
forward pass, its loss and argmax remain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .allocator import retain_freed_memory
from .architectures import Architecture
from .datasets import EvaluationData
from .errors import CheckpointError
from .metrics import MetricAccumulator, Metrics

DEFAULT_BATCH_SIZE = 256


class EvaluationAborted(Exception):
    """The caller asked to stop between batches (the lease was lost, or a signal arrived)."""


def evaluate_model(
    model: nn.Module,
    data: EvaluationData,
    architecture: Architecture,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Metrics:
    """Metrics of ``model`` on every sample of ``data``; EvaluationAborted when ``should_stop`` says so."""
    retain_freed_memory()
    num_classes = architecture.num_classes
    accumulator = MetricAccumulator(num_classes)
    binary = num_classes == 2
    model.eval()
    with torch.inference_mode():
        for inputs, labels in data.batches(batch_size, architecture):
            if should_stop():
                raise EvaluationAborted
            logits = model(inputs)
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise CheckpointError(f"model output has shape {tuple(logits.shape)}, expected (N, {num_classes})")
            loss = F.cross_entropy(logits, labels, reduction="sum")
            accumulator.update(
                labels.numpy(), logits.argmax(dim=1).numpy(), loss.item(), logits.numpy() if binary else None
            )
            on_batch(len(labels))
    return accumulator.result()
