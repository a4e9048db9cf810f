"""Datasets held in memory as arrays (idx files, digits, breast_cancer): converted once, prepared once.

The raw features (uint8 pixels, or float64 measurements) and int64 labels are kept as loaded. The
model inputs, scaled as the checkpoints were trained (``scale``: pixels / 255 or / 16), are
converted once per dataset and shared by every checkpoint evaluated on it; an architecture whose
preparation is the identity gets views of that tensor, one with a mean/std gets one prepared copy
per distinct preparation (cached). Batches are views: nothing is copied per batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..architectures import Architecture


def content_sha256(pixels: np.ndarray, labels: np.ndarray) -> str:
    """The fingerprint of idx and digits data (unchanged since v2: upgraded deployments keep theirs)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def float_content_sha256(features: np.ndarray, labels: np.ndarray) -> str:
    """The fingerprint of float features (breast_cancer): their float64 bytes, then the int64 labels."""
    digest = hashlib.sha256(b"ckpt-eval float features v1\n")
    digest.update(np.ascontiguousarray(features, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def _preparation_key(architecture: Architecture | None) -> tuple[object, object] | None:
    if architecture is None or architecture.spec.input.is_identity:
        return None
    return (architecture.spec.input.mean, architecture.spec.input.std)


@dataclass(eq=False)
class ArrayDataset:
    """An EvaluationData whose samples are all in memory."""

    name: str
    kind: str
    split: str
    features: np.ndarray  # (N, *raw shape): uint8 pixels or float64 measurements
    labels: np.ndarray  # (N,) int64 in [0, num_classes)
    num_classes: int
    scale: float  # inputs = features / scale (1.0: as they are)
    sample_shape: tuple[int, ...]
    sha256: str
    class_names: tuple[str, ...] | None = None
    _prepared: dict[object, torch.Tensor] = field(default_factory=dict, repr=False)  # torch imported on first use

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_samples(self) -> int:
        return len(self)

    def fingerprint(self) -> str:
        return self.sha256

    @cached_property
    def inputs(self) -> torch.Tensor:
        """All inputs, (N, *sample_shape) float32: converted on first use, then kept (4 bytes a value)."""
        import torch

        scaled = self.features.astype(np.float32)
        if self.scale != 1.0:
            scaled /= np.float32(self.scale)
        return torch.from_numpy(scaled).reshape(len(self), *self.sample_shape)

    @cached_property
    def targets(self) -> torch.Tensor:
        """The labels as an int64 tensor sharing the array's memory."""
        import torch

        return torch.from_numpy(self.labels)

    def prepared(self, architecture: Architecture | None) -> torch.Tensor:
        """The inputs as ``architecture`` prepares them: once per distinct preparation, then kept."""
        key = _preparation_key(architecture)
        if key is None:
            return self.inputs
        if key not in self._prepared:
            assert architecture is not None
            self._prepared[key] = architecture.prepare(self.inputs).contiguous()
        return self._prepared[key]

    def batches(
        self, batch_size: int, architecture: Architecture | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (prepared inputs float32, labels int64): views, nothing is copied per batch."""
        if batch_size < 1:
            raise ValueError("batch size must be positive")
        inputs, targets = self.prepared(architecture), self.targets
        for start in range(0, len(self), batch_size):
            yield inputs[start : start + batch_size], targets[start : start + batch_size]
