"""The architecture registry: what a checkpoint's ``arch`` names, and how its inputs are prepared.

Skeleton of the contract (docs: /work/wt/ISSUE10-SPEC.md); the registry behind ``get_architecture``
becomes the ``ckpt_eval.architectures`` entry-point group (plugins branch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from .errors import CheckpointError
from .text import quoted

if TYPE_CHECKING:
    import torch
    from torch import nn


class ArchitectureError(CheckpointError):
    """An architecture that is not installed, or whose plugin failed to load (exit 65)."""


@dataclass(frozen=True)
class InputSpec:
    """One sample's input: its shape, dtype and preparation ((x - mean) / std after the dataset's own scaling)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0

    @property
    def is_identity(self) -> bool:
        return self.mean == 0.0 and self.std == 1.0


@dataclass(frozen=True)
class ArchitectureSpec:
    """What a plugin publishes under the ``ckpt_eval.architectures`` entry-point group."""

    name: str
    build: Callable[[], nn.Module]
    input: InputSpec
    num_classes: int
    class_names: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class Architecture:
    """An installed architecture: its spec and the package (and version) that provided it."""

    spec: ArchitectureSpec
    package: str
    version: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input.shape

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """(inputs - mean) / std per feature or channel; the inputs themselves when that is the identity."""
        import torch

        if self.spec.input.is_identity:
            return inputs
        mean = torch.as_tensor(self.spec.input.mean, dtype=inputs.dtype)
        std = torch.as_tensor(self.spec.input.std, dtype=inputs.dtype)
        if mean.ndim == 1 and inputs.ndim > 2:  # per channel of an image batch (N, C, H, W)
            shape = (1, -1) + (1,) * (inputs.ndim - 2)
            mean, std = mean.reshape(shape), std.reshape(shape)
        return (inputs - mean) / std


def _builtin() -> dict[str, Architecture]:
    from . import __version__
    from .models import BUILTIN_SPECS

    return {spec.name: Architecture(spec, "ckpt-eval", __version__) for spec in BUILTIN_SPECS}


def get_architecture(name: str) -> Architecture:
    registry = _builtin()
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ArchitectureError(f"unknown architecture {quoted(name, 60)} (installed: {known})") from None


def build_model(name: str) -> nn.Module:
    return get_architecture(name).spec.build()


@lru_cache(maxsize=64)
def state_spec(name: str) -> dict[str, tuple[tuple[int, ...], object]]:
    """The architecture's state-dict layout (key -> shape, dtype), read from a module built without memory."""
    import torch

    with torch.device("meta"):
        model = build_model(name)
    return {key: (tuple(value.shape), value.dtype) for key, value in model.state_dict().items()}
