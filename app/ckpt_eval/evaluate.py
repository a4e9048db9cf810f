"""Run a loaded model over a whole dataset in inference mode, batch by batch.

The inputs are the dataset's once-converted tensor (views per batch), the allocator keeps freed
activation buffers for the next batch (allocator.py), and the metrics accumulate into one
confusion matrix: per batch only the forward pass, its loss and argmax remain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .allocator import retain_freed_memory
from .architectures import get_architecture
from .datasets import Dataset
from .errors import CheckpointError
from .metrics import MetricAccumulator, Metrics

DEFAULT_BATCH_SIZE = 256


class EvaluationAborted(Exception):
    """The caller asked to stop between batches (the lease was lost, or a signal arrived)."""


def check_compatible(arch: str, dataset: Dataset) -> None:
    architecture = get_architecture(arch)
    if architecture.input_shape != dataset.input_shape:
        expected = "x".join(map(str, architecture.input_shape[1:]))
        actual = "x".join(map(str, dataset.input_shape[1:]))
        raise CheckpointError(f"architecture {arch} expects {expected} inputs, dataset {dataset.name} has {actual}")
    if architecture.num_classes != dataset.num_classes:
        raise CheckpointError(
            f"architecture {arch} has {architecture.num_classes} classes, "
            f"dataset {dataset.name} has {dataset.num_classes}"
        )


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    architecture: object = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Metrics:
    retain_freed_memory()
    accumulator = MetricAccumulator(dataset.num_classes)
    model.eval()
    with torch.inference_mode():
        for inputs, labels in dataset.batches(batch_size):
            if should_stop():
                raise EvaluationAborted
            logits = model(inputs)
            if logits.ndim != 2 or logits.shape[1] != dataset.num_classes:
                raise CheckpointError(
                    f"model output has shape {tuple(logits.shape)}, expected (N, {dataset.num_classes})"
                )
            loss = F.cross_entropy(logits, labels, reduction="sum")
            accumulator.update(labels.numpy(), logits.argmax(dim=1).numpy(), loss.item())
            on_batch(len(labels))
    return accumulator.result()
